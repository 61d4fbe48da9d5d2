"""Workspace as code: parse and validate a workspace folder's files.

A workspace folder (see docs/workspaces.md)::

    workspace.yml        name, slug, description, config, automations, customDomains, roles
    flows/<name>.py      one flow script per file
    settings.yml         optional initial settings: name -> any JSON value
    pages/<name>.html    optional pages, each with an optional pages/<name>.yml

:func:`parse_bundle` turns the folder's files (relative POSIX path -> text)
into a :class:`WorkspaceBundle`; :func:`bundle_to_files` is its inverse. Every
problem is a :class:`SpecError` naming the file, line, column and field. This
module is pure logic: no database, no HTTP, no file system (see ``folder.py``).
"""

from __future__ import annotations

import base64
import binascii
import difflib
import re
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from croniter import croniter
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from flowlink.events.types import LISTENABLE_NATIVE_EVENTS, UNLISTENABLE_NATIVE_EVENTS

from .domains import DomainError, normalize_domain
from .pages import PageSpec, parse_pages
from .templating import TemplateProblem, check_template, is_template
from .yamlsource import (
    SecretValue,
    SourceMap,
    SpecError,
    dump_yaml,
    format_path,
    load_yaml,
    to_plain,
)

__all__ = [
    "ACTIONS",
    "BUILTIN_ROLES",
    "CONDITION_KEYS",
    "EVENT_TYPE_RE",
    "FILES_DIR",
    "FLOW_NAME_RE",
    "LISTENABLE_NATIVE_EVENTS",
    "SETTINGS_FILE",
    "SLUG_RE",
    "SUBJECTS",
    "UNLISTENABLE_NATIVE_EVENTS",
    "WORKSPACE_FILE",
    "WORKSPACE_SCHEMA",
    "AutomationSpec",
    "RoleRule",
    "SecretValue",
    "SpecError",
    "WorkspaceBundle",
    "WorkspaceSpec",
    "bundle_to_files",
    "classify_path",
    "file_path_problem",
    "is_valid_hostname",
    "parse_bundle",
    "parse_settings",
    "parse_spec",
    "spec_to_yaml",
    "split_secrets",
    "validate_script",
]

SLUG_RE = r"^[a-z0-9][a-z0-9-]{1,62}$"
FLOW_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"  # also used for settings and automation names
EVENT_TYPE_RE = r"^[A-Za-z0-9._-]{1,128}$"

_SLUG = re.compile(SLUG_RE)
_NAME = re.compile(FLOW_NAME_RE)
_EVENT = re.compile(EVENT_TYPE_RE)

_HOST_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_INSTANCE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}")

ACTIONS: tuple[str, ...] = ("read", "create", "update", "delete", "execute", "manage")
SUBJECTS: tuple[str, ...] = (
    "workspace",
    "flows",
    "executions",
    "settings",
    "events",
    "automations",
    "pages",
    "apps",
    "sync_configs",
    "tokens",
    "files",
)
BUILTIN_ROLES: tuple[str, ...] = ("owner", "editor", "operator", "viewer", "visitor")
# Condition keys a custom role rule may use, per subject (values are glob patterns);
# ``name`` is accepted everywhere as the name of the resource (flow, setting, event type...).
CONDITION_KEYS: dict[str, tuple[str, ...]] = {
    "workspace": (),
    "flows": ("flow", "name"),
    "executions": ("flow", "name"),
    "settings": ("setting", "name"),
    "events": ("type", "name"),
    "automations": ("automation", "flow", "name"),
    "pages": ("page", "name"),
    "apps": ("app", "name"),
    "sync_configs": ("sync_config", "name"),
    "tokens": ("role", "name"),
    "files": ("path", "name"),
}

WORKSPACE_FILE = "workspace.yml"
SETTINGS_FILE = "settings.yml"
FILES_DIR = "files/"
FILE_PATH_MAX_DEPTH = 8
FILE_PATH_MAX_LENGTH = 512


def file_path_problem(path: Any) -> str | None:
    """Why ``path`` is not a valid workspace file path (``reports/q1.csv``), or None."""
    if not isinstance(path, str) or not path:
        return "a file path is required"
    if len(path) > FILE_PATH_MAX_LENGTH:
        return f"a file path has at most {FILE_PATH_MAX_LENGTH} characters"
    segments = path.split("/")
    if len(segments) > FILE_PATH_MAX_DEPTH:
        return f"a file path is at most {FILE_PATH_MAX_DEPTH} folders deep"
    for segment in segments:
        if segment in ("", ".", ".."):
            return f"invalid file path {path!r}: empty, '.' or '..' parts are not allowed"
        if not _matches(_NAME, segment):
            return (
                f"invalid file path {path!r}: each part uses letters, digits, '_', '.' and '-',"
                " starting with a letter or digit"
            )
    return None


def _matches(pattern: re.Pattern[str], value: str) -> bool:
    # fullmatch: "$" alone would also accept a trailing newline
    return pattern.fullmatch(value) is not None


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class AutomationSpec:
    """A trigger binding: *when* (events, schedules, endpoint) -> which flow."""

    slug: str
    flow: str
    events: tuple[str, ...] = ()
    schedules: tuple[str, ...] = ()
    endpoint: bool = False
    public: bool = False
    description: str | None = None


@dataclass(frozen=True)
class RoleRule:
    """A custom role rule: allow ``action`` on ``subject`` when ``conditions`` (globs) match."""

    action: str
    subject: str
    conditions: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkspaceSpec:
    """The validated content of a workspace.yml (``config_value`` untemplated)."""

    slug: str
    name: str
    description: str | None = None
    config_value: Mapping[str, Any] = field(default_factory=dict)
    config_schema: Mapping[str, Any] = field(default_factory=dict)
    automations: Mapping[str, AutomationSpec] = field(default_factory=dict)
    custom_domains: tuple[str, ...] = ()
    roles: Mapping[str, tuple[RoleRule, ...]] = field(default_factory=dict)
    source_text: str = ""
    # app instances: slug -> {"app", "version", "config"} (see flowlink.apps.service)
    apps: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkspaceBundle:
    """A whole workspace folder: spec, flow scripts, initial settings and pages.

    ``pages`` are the templates (``pages/<slug>.html``), ``page_meta`` the texts of the
    optional ``pages/<slug>.yml`` and ``page_specs`` both parsed (see ``workspaces.pages``).
    """

    spec: WorkspaceSpec
    flows: Mapping[str, str] = field(default_factory=dict)
    settings: Mapping[str, Any] = field(default_factory=dict)
    pages: Mapping[str, str] = field(default_factory=dict)
    page_meta: Mapping[str, str] = field(default_factory=dict)
    page_specs: Mapping[str, PageSpec] = field(default_factory=dict)
    # Secret settings (``name: !secret value``): name -> value, None when only declared.
    secrets: Mapping[str, str | None] = field(default_factory=dict)
    # Workspace files (``files/<path>``): path -> content.
    files: Mapping[str, bytes] = field(default_factory=dict)


# --------------------------------------------------------------------------- schema

_STRING = {"type": "string"}
_OPTIONAL_TEXT = {"type": ["string", "null"]}
_MAPPING = {"type": ["object", "null"]}

WORKSPACE_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "flowlink workspace.yml",
    "type": "object",
    "required": ["name", "slug"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 200},
        "slug": _STRING,
        "description": _OPTIONAL_TEXT,
        "config": {
            "type": ["object", "null"],
            "additionalProperties": False,
            "properties": {"value": _MAPPING, "schema": _MAPPING},
        },
        "automations": {
            "type": ["object", "null"],
            "additionalProperties": {
                "type": "object",
                "required": ["flow"],
                "additionalProperties": False,
                "properties": {
                    "flow": _STRING,
                    "description": _OPTIONAL_TEXT,
                    "public": {"type": "boolean"},
                    "when": {
                        "type": ["object", "null"],
                        "additionalProperties": False,
                        "properties": {
                            "events": {"type": ["array", "null"], "items": _STRING},
                            "schedules": {"type": ["array", "null"], "items": _STRING},
                            "endpoint": {"type": "boolean"},
                        },
                    },
                },
            },
        },
        "customDomains": {"type": ["array", "null"], "items": _STRING},
        "apps": {
            "type": ["object", "null"],
            "additionalProperties": {
                "type": "object",
                "required": ["app", "version"],
                "additionalProperties": False,
                "properties": {
                    "app": _STRING,
                    "version": {"type": ["string", "number"]},
                    "config": _MAPPING,
                },
            },
        },
        "roles": {
            "type": ["object", "null"],
            "additionalProperties": {
                "type": ["array", "null"],
                "items": {
                    "type": "object",
                    "required": ["action", "subject"],
                    "additionalProperties": False,
                    "properties": {
                        "action": {"enum": list(ACTIONS)},
                        "subject": {"enum": list(SUBJECTS)},
                        "conditions": {"type": ["object", "null"], "additionalProperties": _STRING},
                    },
                },
            },
        },
    },
}

Draft202012Validator.check_schema(WORKSPACE_SCHEMA)
_VALIDATOR = Draft202012Validator(WORKSPACE_SCHEMA)

_TYPE_NAMES = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "boolean": "true or false",
    "integer": "an integer",
    "number": "a number",
}


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"the string {value!r}" if len(value) <= 40 else "a string"
    return f"the number {value!r}"


def _one_of(options: Collection[str]) -> str:
    return ", ".join(options)


def _unknown(kind: str, value: str, options: Collection[str]) -> str:
    close = difflib.get_close_matches(value, list(options), n=1)
    if close:
        return f"unknown {kind} {value!r} (did you mean {close[0]!r}?)"
    return f"unknown {kind} {value!r} (expected one of: {_one_of(options)})"


def _schema_error(error: ValidationError, smap: SourceMap) -> SpecError:
    path = tuple(error.absolute_path)
    keyword = error.validator
    instance = error.instance
    if keyword == "additionalProperties" and isinstance(instance, dict):
        allowed = list(error.schema.get("properties", {}))
        extra = next((k for k in instance if k not in allowed), None)
        if extra is not None:
            return smap.error((*path, extra), _unknown("field", extra, allowed), at_key=True)
    if keyword == "required" and isinstance(instance, dict):
        missing = next((r for r in error.validator_value if r not in instance), None)
        if missing is not None:
            return smap.error(
                path,
                f"missing required field {missing!r}",
                at_key=True,
                field=format_path((*path, missing)),
            )
    if keyword == "type":
        expected = error.validator_value
        names = [expected] if isinstance(expected, str) else list(expected)
        wanted = " or ".join(_TYPE_NAMES.get(n, n) for n in names if n != "null")
        return smap.error(path, f"expected {wanted}, got {_describe(instance)}")
    if keyword == "enum" and path:
        kind = str(path[-1])
        return smap.error(path, _unknown(kind, str(instance), error.validator_value))
    if keyword == "minLength":
        return smap.error(path, "must not be empty")
    if keyword == "maxLength":
        return smap.error(path, f"too long (at most {error.validator_value} characters)")
    return smap.error(path, error.message)


# --------------------------------------------------------------------------- checks


def is_valid_hostname(host: str) -> bool:
    """True for a DNS hostname like ``www.example.org`` (ASCII/punycode, no trailing dot)."""
    host = host.lower()
    if not host or len(host) > 253:
        return False
    labels = host.split(".")
    if labels[-1].isdigit():
        return False
    return all(_matches(_HOST_LABEL, label) for label in labels)


def _checks(
    data: dict[str, Any], smap: SourceMap, flows: Collection[str] | None
) -> Iterator[SpecError]:
    """Rules JSON Schema does not express well; tolerant of wrongly typed parts."""
    name = data.get("name")
    if isinstance(name, str) and name and not name.strip():
        yield smap.error(("name",), "must not be blank")
    slug = data.get("slug")
    if isinstance(slug, str) and not _matches(_SLUG, slug):
        yield smap.error(
            ("slug",),
            f"invalid slug {slug!r}: use 2 to 63 lowercase letters, digits and '-', "
            "starting with a letter or digit",
        )
    config = data.get("config")
    if isinstance(config, dict) and isinstance(config.get("value"), dict):
        yield from _template_checks(config["value"], ("config", "value"), smap)
    automations = data.get("automations")
    if isinstance(automations, dict):
        apps_ = data.get("apps")
        instances = list(apps_) if isinstance(apps_, dict) else []
        for slug_, automation in automations.items():
            yield from _automation_checks(slug_, automation, smap, flows, instances)
    domains = data.get("customDomains")
    if isinstance(domains, list):
        seen: set[str] = set()
        for index, host in enumerate(domains):
            path = ("customDomains", index)
            if not isinstance(host, str):
                continue
            try:
                canonical = normalize_domain(host)
            except DomainError as exc:
                yield smap.error(path, str(exc))
                continue
            if canonical in seen:
                yield smap.error(path, f"duplicate custom domain {host!r}")
            seen.add(canonical)
    apps = data.get("apps")
    if isinstance(apps, dict):
        for slug_, instance in apps.items():
            if not _matches(_INSTANCE, slug_):
                yield smap.error(
                    ("apps", slug_),
                    f"invalid app instance slug {slug_!r}: 1-63 of a-z 0-9 _ -, starting with"
                    " a letter or digit (no '.')",
                    at_key=True,
                )
            version = instance.get("version") if isinstance(instance, dict) else None
            if isinstance(version, str) and not _matches(_VERSION, version):
                yield smap.error(
                    ("apps", slug_, "version"),
                    f"invalid version {version!r}: letters, digits, '.', '+', '_' and '-'",
                )
            config_ = instance.get("config") if isinstance(instance, dict) else None
            if isinstance(config_, dict):
                yield from _template_checks(config_, ("apps", slug_, "config"), smap)
    roles = data.get("roles")
    if isinstance(roles, dict):
        for role in roles:
            if not _matches(_NAME, role):
                yield smap.error(
                    ("roles", role),
                    f"invalid role name {role!r}: use letters, digits, '_', '.' and '-'",
                    at_key=True,
                )
            elif role in BUILTIN_ROLES:
                yield smap.error(
                    ("roles", role),
                    f"role {role!r} shadows the built-in role of that name "
                    f"(built-in roles: {_one_of(BUILTIN_ROLES)})",
                    at_key=True,
                )
            rules = roles[role]
            if isinstance(rules, list):
                yield from _rule_checks(role, rules, smap)


def _rule_checks(role: str, rules: list[Any], smap: SourceMap) -> Iterator[SpecError]:
    """Condition keys must fit the rule's subject (unknown actions/subjects fail the schema)."""
    for index, rule in enumerate(rules):
        if not isinstance(rule, dict) or rule.get("subject") not in CONDITION_KEYS:
            continue
        conditions = rule.get("conditions")
        if not isinstance(conditions, dict):
            continue
        allowed = CONDITION_KEYS[rule["subject"]]
        for key in conditions:
            if key not in allowed:
                known = ", ".join(allowed) if allowed else "none"
                yield smap.error(
                    ("roles", role, index, "conditions", key),
                    f"unknown condition {key!r} in role {role!r} for subject "
                    f"{rule['subject']!r} (known: {known})",
                    at_key=True,
                )


def _template_checks(
    value: Any, path: tuple[str | int, ...], smap: SourceMap
) -> Iterator[SpecError]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _template_checks(item, (*path, key), smap)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _template_checks(item, (*path, index), smap)
    elif isinstance(value, str) and is_template(value):
        try:
            check_template(value)
        except TemplateProblem as exc:
            where = f" (template line {exc.lineno})" if exc.lineno > 1 else ""
            yield smap.error(path, f"{exc.message}{where}")


def _automation_checks(
    slug: str,
    automation: Any,
    smap: SourceMap,
    flows: Collection[str] | None,
    instances: Collection[str] = (),
) -> Iterator[SpecError]:
    """An automation's flow is a flow of the folder or ``<instance>.<flow>`` of an app."""
    base = ("automations", slug)
    if not _matches(_NAME, slug):
        yield smap.error(
            base,
            f"invalid automation name {slug!r}: use up to 128 letters, digits, '_', '.' "
            "and '-', starting with a letter or digit",
            at_key=True,
        )
    if not isinstance(automation, dict):
        return
    flow = automation.get("flow")
    if (
        isinstance(flow, str)
        and flows is not None
        and flow not in flows
        and flow.partition(".")[0] not in instances
    ):
        yield smap.error(
            (*base, "flow"),
            f"automation {slug!r} uses flow {flow!r}, but there is no flows/{flow}.py",
        )
    when = automation.get("when")
    when = when if isinstance(when, dict) else {}
    events = when.get("events")
    if isinstance(events, list):
        for index, event in enumerate(events):
            if event in LISTENABLE_NATIVE_EVENTS:
                continue
            if isinstance(event, str) and (
                event in UNLISTENABLE_NATIVE_EVENTS or event.endswith(".*")
            ):
                yield smap.error(
                    (*base, "when", "events", index),
                    f"automation {slug!r} cannot listen to the native event {event!r}; it may"
                    f" listen to any custom event and to the native events"
                    f" {', '.join(LISTENABLE_NATIVE_EVENTS)}",
                )
            elif isinstance(event, str) and not _matches(_EVENT, event):
                yield smap.error(
                    (*base, "when", "events", index),
                    f"invalid event type {event!r}: use 1 to 128 letters, digits, '.', '_' and '-'",
                )
    schedules = when.get("schedules")
    if isinstance(schedules, list):
        for index, expression in enumerate(schedules):
            if isinstance(expression, str) and not _valid_cron(expression):
                yield smap.error(
                    (*base, "when", "schedules", index),
                    f"automation {slug!r}: invalid cron expression {expression!r}",
                )
    if automation.get("public") is True and when.get("endpoint") is not True:
        yield smap.error(
            (*base, "public"),
            f"automation {slug!r} is public but has no endpoint (set when.endpoint: true)",
            at_key=True,
        )


def _valid_cron(expression: str) -> bool:
    if not expression.strip():
        return False
    try:
        return bool(croniter.is_valid(expression))
    except Exception:
        return False


def _first(errors: list[SpecError]) -> SpecError | None:
    """The first error in document order (ties broken by message)."""
    big = 1 << 62
    return min(
        errors,
        key=lambda e: (e.line or big, e.column or big, e.field or "", e.message),
        default=None,
    )


# --------------------------------------------------------------------------- parsing


def parse_spec(
    text: str, *, flows: Collection[str] | None = None, file: str = WORKSPACE_FILE
) -> WorkspaceSpec:
    """Parse and validate a workspace.yml.

    ``flows`` are the flow names available; an automation naming another flow
    is an error (``None`` skips that check). Raises :class:`SpecError` for the
    first problem in document order.
    """
    data, smap = load_yaml(text, file)
    if data is None:
        raise SpecError(
            f"{file} is empty; it needs at least 'name' and 'slug'", file=file, line=1, column=1
        )
    if not isinstance(data, dict):
        raise smap.error(
            (),
            f"{file} must be a mapping with at least 'name' and 'slug', got {_describe(data)}",
        )
    problems = [_schema_error(e, smap) for e in _VALIDATOR.iter_errors(data)]
    problems.extend(_checks(data, smap, flows))
    first = _first(problems)
    if first is not None:
        raise first
    return _build_spec(data, text)


def _build_spec(data: dict[str, Any], text: str) -> WorkspaceSpec:
    config = data.get("config") or {}
    automations: dict[str, AutomationSpec] = {}
    for slug, automation in (data.get("automations") or {}).items():
        when = automation.get("when") or {}
        automations[slug] = AutomationSpec(
            slug=slug,
            flow=automation["flow"],
            events=tuple(when.get("events") or ()),
            schedules=tuple(when.get("schedules") or ()),
            endpoint=bool(when.get("endpoint", False)),
            public=bool(automation.get("public", False)),
            description=automation.get("description"),
        )
    roles = {
        role: tuple(
            RoleRule(
                action=rule["action"],
                subject=rule["subject"],
                conditions=dict(rule.get("conditions") or {}),
            )
            for rule in rules or ()
        )
        for role, rules in (data.get("roles") or {}).items()
    }
    return WorkspaceSpec(
        slug=data["slug"],
        name=data["name"],
        description=data.get("description"),
        config_value=config.get("value") or {},
        config_schema=config.get("schema") or {},
        automations=automations,
        custom_domains=tuple(normalize_domain(h) for h in data.get("customDomains") or ()),
        roles=roles,
        source_text=text,
        apps={
            slug: {
                "app": instance["app"],
                "version": str(instance["version"]),
                "config": dict(instance.get("config") or {}),
            }
            for slug, instance in (data.get("apps") or {}).items()
        },
    )


def parse_settings(text: str, file: str = SETTINGS_FILE) -> dict[str, Any]:
    """Parse a settings.yml: setting name -> any JSON value (an empty file: no settings).

    A value tagged ``!secret`` is a :class:`SecretValue` (see :func:`split_secrets`).
    """
    data, smap = load_yaml(text, file, secrets=True)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise smap.error(
            (), f"{file} must be a mapping of setting name to value, got {_describe(data)}"
        )
    for name in data:
        if not _matches(_NAME, name):
            raise smap.error(
                (name,),
                f"invalid setting name {name!r}: use up to 128 letters, digits, '_', '.' "
                "and '-', starting with a letter or digit",
                at_key=True,
            )
    return data


def split_secrets(settings: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str | None]]:
    """Separate parsed settings into plain settings and secrets (``!secret`` values)."""
    plain = {k: v for k, v in settings.items() if not isinstance(v, SecretValue)}
    secrets = {k: v.value for k, v in settings.items() if isinstance(v, SecretValue)}
    return plain, secrets


def validate_script(name: str, script: str, file: str | None = None) -> None:
    """Check a flow's name and that its script compiles.

    A problem is a :class:`SpecError` naming ``file`` (default ``flows/<name>.py``)
    and, for a syntax error, its line and column.
    """
    file = file or f"flows/{name}.py"
    if not isinstance(name, str) or not _matches(_NAME, name):
        raise SpecError(
            f"invalid flow name {name!r}: use up to 128 letters, digits, '_', '.' and '-', "
            "starting with a letter or digit",
            file=file,
        )
    if not isinstance(script, str):
        raise SpecError(f"a flow script must be text, got {type(script).__name__}", file=file)
    try:
        compile(script, file, "exec", dont_inherit=True)
    except SyntaxError as exc:
        raise SpecError(
            f"syntax error: {exc.msg}", file=file, line=exc.lineno, column=exc.offset
        ) from None
    except (ValueError, RecursionError, MemoryError, OverflowError) as exc:
        raise SpecError(f"invalid Python script: {exc}", file=file) from None


_KINDS = ("workspace", "settings", "flow", "page", "page_meta", "file")


def classify_path(path: str) -> tuple[str, str]:
    """Classify a folder path: ``("workspace"|"settings", "")`` or ``(kind, name)``.

    ``kind`` is ``flow`` (``flows/<name>.py``), ``page`` (``pages/<name>.html``),
    ``page_meta`` (``pages/<name>.yml``) or ``file`` (``files/<path>``).

    Raises :class:`SpecError` naming the file for anything else.
    """
    if path == WORKSPACE_FILE:
        return "workspace", ""
    if path == SETTINGS_FILE:
        return "settings", ""
    if path.startswith(FILES_DIR):
        problem = file_path_problem(path[len(FILES_DIR) :])
        if problem:
            raise SpecError(problem, file=path)
        return "file", path[len(FILES_DIR) :]
    for folder, suffix, kind in (("flows/", ".py", "flow"), ("pages/", ".html", "page")):
        if not path.startswith(folder):
            continue
        rest = path[len(folder) :]
        if "/" in rest or "\\" in rest:
            raise SpecError(f"{kind} files cannot be in subfolders of {folder}", file=path)
        if kind == "page" and rest.endswith(".yml"):
            suffix, kind = ".yml", "page_meta"
        if not rest.endswith(suffix):
            raise SpecError(
                f"unexpected file in {folder}: {kind} files are named {folder}<name>{suffix}"
                + (f" (and {folder}<name>.yml)" if kind == "page" else ""),
                file=path,
            )
        name = rest[: -len(suffix)]
        if not _matches(_NAME, name):
            raise SpecError(
                f"invalid {kind} name {name!r}: use up to 128 letters, digits, '_', '.' and '-', "
                "starting with a letter or digit",
                file=path,
            )
        return kind, name
    raise SpecError(
        "unexpected file: a workspace folder holds workspace.yml, settings.yml, "
        "flows/<name>.py, pages/<name>.html, pages/<name>.yml and files/<path>",
        file=path,
    )


def _check_text(path: str, text: Any) -> str:
    if not isinstance(text, str):
        raise SpecError(f"expected text, got {type(text).__name__}", file=path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        line = text.count("\n", 0, exc.start) + 1
        raise SpecError(
            "contains characters that are not valid UTF-8", file=path, line=line
        ) from None
    return text


def parse_bundle(files: Mapping[str, str]) -> WorkspaceBundle:
    """Parse and validate a workspace folder given as relative POSIX path -> text.

    ``workspace.yml`` is required; ``settings.yml``, ``flows/<name>.py`` and
    ``pages/<name>.html`` are optional; anything else is an error naming the
    file. Checks run in a fixed order (paths, workspace.yml, flows by name,
    settings.yml) and the first problem is raised as :class:`SpecError`.
    """
    kinds: dict[str, dict[str, str]] = {kind: {} for kind in _KINDS}
    blobs: dict[str, bytes] = {}
    for path in sorted(files):
        kind, name = classify_path(path)
        if kind == "file":
            blobs[name] = _decode_file(path, files[path])
        else:
            kinds[kind][name] = _check_text(path, files[path])
    if "" not in kinds["workspace"]:
        raise SpecError("missing workspace.yml", file=WORKSPACE_FILE)
    flows = dict(sorted(kinds["flow"].items()))
    spec = parse_spec(kinds["workspace"][""], flows=flows.keys())
    for name, script in flows.items():
        validate_script(name, script)
    settings_text = kinds["settings"].get("")
    settings = parse_settings(settings_text) if settings_text is not None else {}
    settings, secrets = split_secrets(settings)
    pages = dict(sorted(kinds["page"].items()))
    page_meta = dict(sorted(kinds["page_meta"].items()))
    page_specs = parse_pages(
        pages, page_meta, flows=flows.keys(), roles=(*BUILTIN_ROLES, *spec.roles)
    )
    return WorkspaceBundle(
        spec=spec,
        flows=flows,
        settings=settings,
        pages=pages,
        page_meta=page_meta,
        page_specs=page_specs,
        secrets=secrets,
        files=blobs,
    )


def _decode_file(path: str, text: Any) -> bytes:
    """A ``files/`` entry of an apply: its content, base64 (binary files travel as text)."""
    if not isinstance(text, str):
        raise SpecError(f"expected base64 text, got {type(text).__name__}", file=path)
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise SpecError(
            "files/ entries are sent base64-encoded; this one is not valid base64", file=path
        ) from None


# --------------------------------------------------------------------------- writing


def spec_to_yaml(spec: WorkspaceSpec) -> str:
    """Generate a workspace.yml for ``spec`` (ignoring ``source_text``); it parses back equal."""
    doc: dict[str, Any] = {"name": spec.name, "slug": spec.slug}
    if spec.description is not None:
        doc["description"] = spec.description
    if spec.config_value or spec.config_schema:
        config: dict[str, Any] = {"value": to_plain(spec.config_value)}
        if spec.config_schema:
            config["schema"] = to_plain(spec.config_schema)
        doc["config"] = config
    if spec.automations:
        automations: dict[str, Any] = {}
        for slug, automation in spec.automations.items():
            entry: dict[str, Any] = {"flow": automation.flow}
            if automation.description is not None:
                entry["description"] = automation.description
            if automation.public:
                entry["public"] = True
            when: dict[str, Any] = {}
            if automation.events:
                when["events"] = list(automation.events)
            if automation.schedules:
                when["schedules"] = list(automation.schedules)
            if automation.endpoint:
                when["endpoint"] = True
            if when:
                entry["when"] = when
            automations[slug] = entry
        doc["automations"] = automations
    if spec.custom_domains:
        doc["customDomains"] = list(spec.custom_domains)
    if spec.apps:
        doc["apps"] = {slug: to_plain(dict(instance)) for slug, instance in spec.apps.items()}
    if spec.roles:
        doc["roles"] = {
            role: [
                {
                    "action": rule.action,
                    "subject": rule.subject,
                    **({"conditions": dict(rule.conditions)} if rule.conditions else {}),
                }
                for rule in rules
            ]
            for role, rules in spec.roles.items()
        }
    return dump_yaml(doc)


def bundle_to_files(bundle: WorkspaceBundle) -> dict[str, str]:
    """The files of a workspace folder for ``bundle`` (inverse of :func:`parse_bundle`).

    workspace.yml is ``spec.source_text`` when set, else generated; settings.yml
    is written only when there are settings.
    """
    spec = bundle.spec
    files = {WORKSPACE_FILE: spec.source_text or spec_to_yaml(spec)}
    for name in sorted(bundle.flows):
        path = f"flows/{name}.py"
        classify_path(path)
        files[path] = bundle.flows[name]
    if bundle.settings or bundle.secrets:
        secrets = {k: SecretValue(v) for k, v in bundle.secrets.items()}
        files[SETTINGS_FILE] = dump_yaml(dict(sorted({**bundle.settings, **secrets}.items())))
    for name in sorted(bundle.pages):
        path = f"pages/{name}.html"
        classify_path(path)
        files[path] = bundle.pages[name]
    for name in sorted(bundle.page_meta):
        path = f"pages/{name}.yml"
        classify_path(path)
        files[path] = bundle.page_meta[name]
    for name in sorted(bundle.files):
        path = FILES_DIR + name
        classify_path(path)
        files[path] = base64.b64encode(bundle.files[name]).decode("ascii")
    return files
