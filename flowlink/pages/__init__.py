"""Pages: serving a workspace's sandboxed Jinja2 templates to admins and end users.

Pages are declared with the workspace (``flowlink.workspaces.pages`` parses them,
``page_templates`` renders, ``domains`` matches custom domains, ``page_store`` stores them);
``service`` decides who sees a page and runs its handler flow.
"""
