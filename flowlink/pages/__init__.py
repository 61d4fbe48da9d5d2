"""Pages: sandboxed Jinja2 templates of a workspace served to admins and end users.

``domains`` checks and matches custom domains, ``spec`` parses ``pages/<slug>.yml`` and checks
templates, ``render`` renders them, ``service`` stores pages and decides who sees them.
"""
