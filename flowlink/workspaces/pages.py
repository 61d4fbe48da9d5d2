"""Page definitions: ``pages/<slug>.html`` templates and their optional ``pages/<slug>.yml``.

Pure logic (no database, no HTTP). Every problem is a
:class:`~flowlink.workspaces.yamlsource.SpecError` naming the file and line.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import TemplateSyntaxError, nodes
from jinja2.exceptions import TemplateAssertionError

from .page_templates import environment
from .yamlsource import SpecError, load_yaml

__all__ = [
    "ACCESS_MEMBERS",
    "ACCESS_PUBLIC",
    "MAX_EVENTS",
    "MAX_TEMPLATE_CHARS",
    "PageSpec",
    "check_template",
    "page_from_dict",
    "page_to_dict",
    "parse_page_meta",
    "parse_pages",
]

ACCESS_PUBLIC = "public"
ACCESS_MEMBERS = "members"
MAX_EVENTS = 100
MAX_TEMPLATE_CHARS = 256 * 1024
_EVENT = re.compile(r"[A-Za-z0-9._-]{1,128}")
_FIELDS = ("title", "access", "flow", "events", "form")
_FORBIDDEN_TAGS: dict[type[nodes.Node], str] = {
    nodes.Include: "include",
    nodes.Extends: "extends",
    nodes.Import: "import",
    nodes.FromImport: "from ... import",
}


@dataclass(frozen=True)
class PageSpec:
    """A page: its template and what its ``.yml`` says (defaults without one)."""

    slug: str
    template: str
    meta_text: str | None = None
    title: str | None = None
    access: str | tuple[str, ...] = ACCESS_MEMBERS
    flow: str | None = None
    event_types: tuple[str, ...] = ()
    events_limit: int = 20
    form_flow: str | None = None

    @property
    def public(self) -> bool:
        """Whether anyone may see the page without logging in."""
        return self.access == ACCESS_PUBLIC


def check_template(text: str, file: str) -> None:
    """Compile a page template in the sandbox; a problem names ``file`` and its line.

    ``include``, ``extends`` and ``import`` are refused: a page reaches no other file.
    """
    if len(text) > MAX_TEMPLATE_CHARS:
        raise SpecError(f"template too large (at most {MAX_TEMPLATE_CHARS} characters)", file=file)
    env = environment()
    try:
        tree = env.parse(text)
        for kind, tag in _FORBIDDEN_TAGS.items():
            for node in tree.find_all(kind):
                raise SpecError(
                    f"'{{% {tag} %}}' is not allowed: a page cannot reach other files",
                    file=file,
                    line=node.lineno,
                )
        env.compile(text)
    except (TemplateSyntaxError, TemplateAssertionError) as exc:
        raise SpecError(f"template error: {exc.message}", file=file, line=exc.lineno) from None


def _fail(file: str, line: int | None, field_: str, message: str) -> SpecError:
    return SpecError(message, file=file, line=line, field=field_)


def parse_page_meta(
    slug: str,
    template: str,
    text: str | None,
    *,
    flows: Collection[str] | None = None,
    roles: Collection[str] | None = None,
) -> PageSpec:
    """Parse ``pages/<slug>.yml`` (``None``: no file) for the page with ``template``.

    ``flows`` and ``roles`` are the names that exist (``None`` skips that check).
    """
    if text is None:
        return PageSpec(slug=slug, template=template)
    file = f"pages/{slug}.yml"
    data, smap = load_yaml(text, file)
    if data is None:
        return PageSpec(slug=slug, template=template, meta_text=text)
    if not isinstance(data, dict):
        raise SpecError(f"{file} must be a mapping (title, access, flow, events, form)", file=file)

    def line(*path: str | int) -> int | None:
        mark = smap.value_mark(path)
        return mark.line if mark else None

    for key in data:
        if key not in _FIELDS:
            mark = smap.key_mark((key,))
            raise SpecError(
                f"unknown field {key!r} (expected one of: {', '.join(_FIELDS)})",
                file=file,
                line=mark.line if mark else None,
                field=str(key),
            )
    title = data.get("title")
    if title is not None and not isinstance(title, str):
        raise _fail(file, line("title"), "title", "expected a string")
    access: str | tuple[str, ...] = ACCESS_MEMBERS
    raw_access = data.get("access")
    if isinstance(raw_access, str):
        if raw_access not in (ACCESS_PUBLIC, ACCESS_MEMBERS):
            raise _fail(
                file,
                line("access"),
                "access",
                f"expected 'public', 'members' or a list of roles, got {raw_access!r}",
            )
        access = raw_access
    elif isinstance(raw_access, list):
        if not raw_access or not all(isinstance(r, str) for r in raw_access):
            raise _fail(file, line("access"), "access", "expected a non-empty list of role names")
        for index, role in enumerate(raw_access):
            if roles is not None and role not in roles:
                raise _fail(
                    file,
                    line("access", index),
                    f"access[{index}]",
                    f"unknown role {role!r} (known: {', '.join(sorted(roles))})",
                )
        access = tuple(raw_access)
    elif raw_access is not None:
        raise _fail(file, line("access"), "access", "expected 'public', 'members' or a list")
    flow = _flow_field(data, "flow", file, line, flows)
    event_types: tuple[str, ...] = ()
    limit = 20
    events = data.get("events")
    if events is not None:
        if isinstance(events, list):
            events = {"types": events}
        if not isinstance(events, dict) or set(events) - {"types", "limit"}:
            raise _fail(
                file, line("events"), "events", "expected a list of event types or {types, limit}"
            )
        types = events.get("types")
        if not isinstance(types, list) or not types:
            raise _fail(file, line("events"), "events.types", "expected a list of event types")
        for index, event_type in enumerate(types):
            if not isinstance(event_type, str) or not _EVENT.fullmatch(event_type):
                raise _fail(
                    file,
                    line("events", "types", index),
                    f"events.types[{index}]",
                    f"invalid event type {event_type!r}: use 1 to 128 letters, digits, '.',"
                    " '_' and '-'",
                )
        event_types = tuple(types)
        raw_limit = events.get("limit", 20)
        if isinstance(raw_limit, bool) or not isinstance(raw_limit, int):
            raise _fail(file, line("events", "limit"), "events.limit", "expected an integer")
        if not 1 <= raw_limit <= MAX_EVENTS:
            raise _fail(
                file,
                line("events", "limit"),
                "events.limit",
                f"must be between 1 and {MAX_EVENTS}",
            )
        limit = raw_limit
    form = data.get("form")
    form_flow = None
    if form is not None:
        if not isinstance(form, dict) or set(form) != {"flow"}:
            raise _fail(file, line("form"), "form", "expected {flow: <flow name>}")
        form_flow = _flow_field(form, "flow", file, lambda *p: line("form", *p), flows, "form.")
    return PageSpec(
        slug=slug,
        template=template,
        meta_text=text,
        title=title,
        access=access,
        flow=flow,
        event_types=event_types,
        events_limit=limit,
        form_flow=form_flow,
    )


def _flow_field(
    data: Mapping[str, Any],
    key: str,
    file: str,
    line: Any,
    flows: Collection[str] | None,
    prefix: str = "",
) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _fail(file, line(key), prefix + key, "expected a flow name")
    if flows is not None and value not in flows:
        raise _fail(
            file, line(key), prefix + key, f"there is no flows/{value}.py in this workspace"
        )
    return value


def parse_pages(
    templates: Mapping[str, str],
    metas: Mapping[str, str],
    *,
    flows: Collection[str] | None = None,
    roles: Collection[str] | None = None,
) -> dict[str, PageSpec]:
    """Check every page template and ``.yml`` of a folder; a ``.yml`` needs its ``.html``."""
    for slug in sorted(metas):
        if slug not in templates:
            raise SpecError(
                f"pages/{slug}.yml describes a page, but there is no pages/{slug}.html",
                file=f"pages/{slug}.yml",
            )
    pages: dict[str, PageSpec] = {}
    for slug in sorted(templates):
        check_template(templates[slug], f"pages/{slug}.html")
        pages[slug] = parse_page_meta(
            slug, templates[slug], metas.get(slug), flows=flows, roles=roles
        )
    return pages


def page_to_dict(page: PageSpec) -> dict[str, Any]:
    """The stored form of a page's settings (JSON)."""
    return {
        "title": page.title,
        "access": list(page.access) if isinstance(page.access, tuple) else page.access,
        "flow": page.flow,
        "events": {"types": list(page.event_types), "limit": page.events_limit},
        "form": page.form_flow,
    }


def page_from_dict(
    slug: str, template: str, meta_text: str | None, data: Mapping[str, Any]
) -> PageSpec:
    """Inverse of :func:`page_to_dict`."""
    access = data.get("access", ACCESS_MEMBERS)
    events = data.get("events") or {}
    return PageSpec(
        slug=slug,
        template=template,
        meta_text=meta_text,
        title=data.get("title"),
        access=tuple(access) if isinstance(access, list) else access,
        flow=data.get("flow"),
        event_types=tuple(events.get("types") or ()),
        events_limit=int(events.get("limit") or 20),
        form_flow=data.get("form"),
    )
