"""Workspaces, flows and settings in the store; applying and exporting workspace folders."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from sqlalchemy import bindparam, func, insert, select
from sqlalchemy.orm import Session

from flowlink import atrest
from flowlink.errors import Conflict, Invalid, NotFound
from flowlink.events.service import event_row, record, record_rows
from flowlink.store.models import (
    Flow,
    Setting,
    Workspace,
    new_id,
    utcnow,
)
from flowlink.timestamps import format_timestamp
from flowlink.workspaces import page_store as pages
from flowlink.workspaces.files import apply_files, list_files
from flowlink.workspaces.spec import (
    FLOW_NAME_RE,
    SETTINGS_FILE,
    SLUG_RE,
    AutomationSpec,
    RoleRule,
    SpecError,
    WorkspaceBundle,
    WorkspaceSpec,
    bundle_to_files,
    parse_bundle,
    validate_script,
)
from flowlink.workspaces.templating import render_config

_SLUG = re.compile(SLUG_RE)
_NAME = re.compile(FLOW_NAME_RE)
SECRET_MASK = "********"
"""What the API, the CLI and exports show in place of a secret's value."""


def spec_error_to_invalid(error: SpecError) -> Invalid:
    """Turn a workspace-as-code error into the API's validation error."""
    return Invalid(str(error), details=error.to_dict())


def check_slug(slug: str) -> None:
    """Reject a workspace slug outside ``^[a-z0-9][a-z0-9-]{1,62}$``."""
    if not isinstance(slug, str) or not _SLUG.match(slug):
        raise Invalid(
            f"invalid workspace slug {slug!r}: 2-63 of a-z 0-9 -, starting with a letter or digit",
            details={"field": "slug"},
        )


def check_name(kind: str, name: str) -> None:
    """Reject a flow, setting or automation name outside the allowed pattern."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise Invalid(
            f"invalid {kind} name {name!r}: 1-128 of A-Z a-z 0-9 _ . -, starting with a letter"
            " or digit",
            details={"field": "name"},
        )


# --- workspaces -------------------------------------------------------------------------------


def find_workspace(session: Session, slug: str) -> Workspace | None:
    """The workspace with this slug, or None."""
    return session.scalar(select(Workspace).where(Workspace.slug == slug))


def workspace_by_id(session: Session, workspace_id: str | None) -> Workspace | None:
    """The workspace with this id (None for no id or an unknown one)."""
    return session.get(Workspace, workspace_id) if workspace_id else None


def get_workspace(session: Session, slug: str) -> Workspace:
    """The workspace with this slug, or NotFound."""
    workspace = find_workspace(session, slug)
    if workspace is None:
        raise NotFound(f"workspace {slug!r} not found", details={"workspace": slug})
    return workspace


def list_workspaces(session: Session) -> list[Workspace]:
    """All workspaces, by slug."""
    return list(session.scalars(select(Workspace).order_by(Workspace.slug)))


def create_workspace(
    session: Session, slug: str, name: str | None = None, description: str | None = None
) -> Workspace:
    """Create an empty workspace."""
    check_slug(slug)
    if session.scalar(select(Workspace.id).where(Workspace.slug == slug)):
        raise Conflict(f"workspace {slug!r} already exists", details={"workspace": slug})
    workspace = Workspace(slug=slug, name=name or slug, description=description, spec={})
    session.add(workspace)
    session.flush()
    record(session, workspace, "workspaces.created", {"slug": slug, "name": workspace.name})
    return workspace


def delete_workspace(session: Session, slug: str) -> None:
    """Delete a workspace and everything in it (its events stay, for retention)."""
    workspace = get_workspace(session, slug)
    record(
        session,
        workspace,
        "workspaces.deleted",
        {"slug": slug, "deletedAt": format_timestamp(utcnow())},
    )
    session.delete(workspace)


def workspace_view(workspace: Workspace) -> dict[str, Any]:
    """The API representation of a workspace."""
    return {
        "id": workspace.id,
        "slug": workspace.slug,
        "name": workspace.name,
        "description": workspace.description,
        "config": masked_config(workspace),
        "automations": workspace.spec.get("automations", {}),
        "custom_domains": workspace.spec.get("customDomains", []),
        "version": workspace.version,
        "created_at": format_timestamp(workspace.created_at),
        "updated_at": format_timestamp(workspace.updated_at),
    }


def masked_config(workspace: Workspace) -> dict[str, Any]:
    """The rendered config as the API shows it: values from the environment are masked.

    Keys supplied by ``WORKSPACE_CONFIG_<slug>_<KEY>`` (those ``workspace.yml`` does not
    define) are masked, and so is every templated value whose template names one of them.
    Only flows (``system.config``) see the real values.
    """
    rendered = dict(workspace.config_rendered or {})
    raw = workspace.config_value or {}
    from_env = [key for key in rendered if key not in raw]
    if not from_env:
        return rendered
    names = re.compile(
        r"(?<![A-Za-z0-9_])(" + "|".join(map(re.escape, from_env)) + r")(?![A-Za-z0-9_])"
    )

    def mask(template: Any, value: Any) -> Any:
        if isinstance(template, str):
            return SECRET_MASK if "{{" in template and names.search(template) else value
        if isinstance(template, Mapping) and isinstance(value, Mapping):
            return {k: mask(template.get(k), v) for k, v in value.items()}
        if isinstance(template, list) and isinstance(value, list) and len(template) == len(value):
            return [mask(t, v) for t, v in zip(template, value, strict=True)]
        return value

    return {
        key: SECRET_MASK if key in from_env else mask(raw.get(key), value)
        for key, value in rendered.items()
    }


# --- apply / export ---------------------------------------------------------------------------


@dataclass
class ApplyResult:
    """What an apply changed."""

    workspace: Workspace
    created: bool
    changes: dict[str, list[str]] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        """Whether anything at all changed."""
        return self.created or any(self.changes.values())

    def view(self) -> dict[str, Any]:
        """The API representation."""
        return {
            "workspace": workspace_view(self.workspace),
            "created": self.created,
            "changed": self.changed,
            "changes": self.changes,
        }


def parse_files(files: Mapping[str, str]) -> WorkspaceBundle:
    """Parse a workspace folder's files, mapping spec errors onto Invalid."""
    try:
        return parse_bundle(files)
    except SpecError as error:
        raise spec_error_to_invalid(error) from error


def render_workspace_config(
    slug: str,
    value: Mapping[str, Any],
    environ: Mapping[str, str],
    source_text: str | None = None,
) -> Any:
    """Render ``config.value`` with templating and environment overrides."""
    try:
        return render_config(slug, value, environ, source_text=source_text)
    except SpecError as error:
        raise spec_error_to_invalid(error) from error


ApplyPart = Callable[[Session, Workspace, WorkspaceBundle, Mapping[str, str]], list[str]]
"""A higher domain's share of an apply: sync its tables for the workspace, return the changes.

``apply_bundle`` takes them by name (``{"automations": ..., "apps": ...}``) from the caller,
so the domains that build on workspaces (apps, automations) are synced in the same
transaction without workspaces importing them.
"""


def automation_spec(automation: AutomationSpec) -> dict[str, Any]:
    """An automation's declaration as stored in ``workspaces.spec`` and ``automations.spec``."""
    return {
        "flow": automation.flow,
        "when": {
            "events": list(automation.events),
            "schedules": list(automation.schedules),
            "endpoint": automation.endpoint,
        },
        "public": automation.public,
        "description": automation.description,
    }


def apply_bundle(
    session: Session,
    bundle: WorkspaceBundle,
    environ: Mapping[str, str],
    *,
    expected_slug: str | None = None,
    max_new_settings: int | None = None,
    secret_key: str | None = None,
    parts: Mapping[str, ApplyPart],
) -> ApplyResult:
    """Create or update a workspace from a parsed folder, all or nothing, idempotently.

    Flows and automations are declarative (those missing from the folder are removed);
    settings from ``settings.yml`` are initial values: created when missing, never overwritten
    (flows own settings at run time). ``max_new_settings`` bounds the settings one apply
    creates (and so the time it holds the store's write lock). Secret settings (``!secret``)
    are encrypted with ``secret_key``, the server's secret key. ``parts`` sync the tables of
    the domains built on workspaces (see :data:`ApplyPart`).
    """
    spec = bundle.spec
    if expected_slug is not None and spec.slug != expected_slug:
        raise Invalid(
            f"workspace.yml declares slug {spec.slug!r} but was applied to {expected_slug!r}",
            details={"file": "workspace.yml", "field": "slug"},
        )
    rendered = render_workspace_config(
        spec.slug, spec.config_value, environ, spec.source_text or None
    )
    workspace = find_workspace(session, spec.slug)
    created = workspace is None
    if workspace is None:
        workspace = Workspace(slug=spec.slug, name=spec.name, spec={}, version=0)
        session.add(workspace)
        session.flush()
    result = ApplyResult(workspace=workspace, created=created)

    new_spec = {
        "automations": {slug: automation_spec(a) for slug, a in spec.automations.items()},
        "customDomains": list(spec.custom_domains),
        **({"apps": {slug: dict(i) for slug, i in spec.apps.items()}} if spec.apps else {}),
        "roles": {
            name: [
                {"action": r.action, "subject": r.subject, "conditions": dict(r.conditions)}
                for r in rules
            ]
            for name, rules in spec.roles.items()
        },
    }
    meta_changed = (
        workspace.name != spec.name
        or workspace.description != spec.description
        or workspace.spec != new_spec
        or workspace.source_text != spec.source_text
    )
    config_changed = (
        workspace.config_value != dict(spec.config_value)
        or workspace.config_rendered != rendered
        or workspace.config_schema != dict(spec.config_schema)
    )
    workspace.name = spec.name
    workspace.description = spec.description
    workspace.spec = new_spec
    workspace.source_text = spec.source_text
    workspace.config_value = dict(spec.config_value)
    workspace.config_schema = dict(spec.config_schema)
    workspace.config_rendered = rendered

    result.changes["domains"] = pages.claim_domains(session, workspace, spec.custom_domains)
    result.changes["flows"] = _sync_flows(session, workspace, bundle.flows)
    result.changes["pages"] = pages.sync_pages(session, workspace, bundle.page_specs)
    for name, part in parts.items():
        result.changes[name] = part(session, workspace, bundle, environ)
    result.changes["settings"] = _apply_settings(
        session, workspace, bundle.settings, limit=max_new_settings
    )
    if bundle.secrets:
        result.changes["settings"] += _apply_secrets(session, workspace, bundle.secrets, secret_key)
    if bundle.files:
        result.changes["files"] = apply_files(session, workspace, bundle.files)
    if meta_changed and not created:
        result.changes["workspace"] = ["name/description/spec"]
    if config_changed:
        result.changes["config"] = sorted(rendered)

    if created:
        record(session, workspace, "workspaces.created", {"slug": spec.slug, "name": spec.name})
    if result.changed:
        workspace.version += 1
        workspace.updated_at = utcnow()
        if not created:
            record(
                session,
                workspace,
                "workspaces.updated",
                {"slug": spec.slug, "changes": result.changes, "version": workspace.version},
            )
        if config_changed:
            record(session, workspace, "workspaces.configured", {"keys": sorted(rendered)})
    session.flush()
    return result


def _sync_flows(session: Session, workspace: Workspace, flows: Mapping[str, str]) -> list[str]:
    existing = {
        f.name: f for f in session.scalars(select(Flow).where(Flow.workspace_id == workspace.id))
    }
    changes: list[str] = []
    for name, script in flows.items():
        flow = existing.pop(name, None)
        if flow is None:
            session.add(Flow(workspace_id=workspace.id, name=name, script=script))
            changes.append(f"+{name}")
        elif flow.script != script:
            flow.script = script
            flow.updated_at = utcnow()
            changes.append(f"~{name}")
    for name, flow in existing.items():
        session.delete(flow)
        changes.append(f"-{name}")
    return changes


def _apply_settings(
    session: Session,
    workspace: Workspace,
    settings: Mapping[str, Any],
    *,
    limit: int | None = None,
) -> list[str]:
    """``settings.yml`` holds initial values: missing settings are created, existing ones kept.

    The one function that writes settings at apply. One query finds the names that exist;
    the missing settings and their ``settings.updated`` events are each written with one
    bulk statement, so a large ``settings.yml`` holds the store's write lock briefly.
    """
    if not settings:
        return []
    existing = set(
        session.scalars(select(Setting.name).where(Setting.workspace_id == workspace.id))
    )
    missing = [name for name in settings if name not in existing]
    if limit is not None and len(missing) > limit:
        raise too_many_settings(len(missing), limit)
    for name in missing:
        check_name("setting", name)
    if not missing:
        return []
    now = utcnow()
    session.execute(
        insert(Setting),
        [
            {
                "id": new_id(),
                "workspace_id": workspace.id,
                "name": name,
                "value": settings[name],
                "secret": False,
                "created_at": now,
                "updated_at": now,
            }
            for name in missing
        ],
    )
    record_rows(
        session,
        [
            event_row(
                workspace.id, workspace.slug, "settings.updated", {"name": name, "created": True}
            )
            for name in missing
        ],
    )
    return [f"+{name}" for name in missing]


def too_many_settings(count: int, limit: int, *, at_least: bool = False) -> Invalid:
    """The error of an apply that would create more than ``limit`` settings."""
    return Invalid(
        f"settings.yml would create {'at least ' if at_least else ''}{count} settings; one"
        f" apply creates at most {limit} (FLOWLINK_APPLY_MAX_SETTINGS): apply them in parts,"
        " or write them with PUT .../settings/{name}",
        details={"file": SETTINGS_FILE, "field": "settings", "count": count, "limit": limit},
    )


def precheck_new_settings(
    session: Session, workspace: Workspace | None, files: Mapping[str, str], limit: int
) -> None:
    """Refuse, before the costly parse, a ``settings.yml`` with too many new settings.

    Counting the top-level keys with libyaml's event parser costs a few percent of the full
    parse (which keeps line numbers for errors and holds the GIL for seconds on a large
    file). Settings that exist may be among them, so only a count that exceeds the limit
    even if they all are is refused; the apply itself checks the exact number.
    """
    text = files.get(SETTINGS_FILE)
    if not isinstance(text, str) or len(text) < limit:  # each entry takes 2+ characters
        return
    entries = count_top_level_keys(text)
    if entries <= limit:
        return
    existing = 0
    if workspace is not None:
        existing = int(
            session.scalar(select(func.count()).where(Setting.workspace_id == workspace.id)) or 0
        )
    if entries - existing > limit:
        raise too_many_settings(entries - existing, limit, at_least=existing > 0)


def count_top_level_keys(text: str) -> int:
    """The number of keys of a YAML document's top-level mapping (0 if not a mapping/invalid)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    depth = 0
    nodes = 0
    try:
        for event in yaml.parse(text, Loader=loader):
            if isinstance(event, yaml.NodeEvent):
                if depth == 0 and not isinstance(event, yaml.MappingStartEvent):
                    return 0
                if depth == 1:
                    nodes += 1
                if isinstance(event, yaml.CollectionStartEvent):
                    depth += 1
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
            elif isinstance(event, yaml.DocumentEndEvent):
                break
    except yaml.YAMLError:
        return 0  # the full parse reports it, with its line
    return nodes // 2


def _apply_secrets(
    session: Session,
    workspace: Workspace,
    secrets: Mapping[str, str | None],
    secret_key: str | None,
) -> list[str]:
    """Secrets from ``settings.yml``: created when missing; an existing plain setting of that
    name becomes a secret (its value kept, now encrypted); existing secrets are kept."""
    changes = []
    for name, value in secrets.items():
        setting = find_setting(session, workspace, name)
        if setting is None:
            put_setting(session, workspace, name, value, secret=True, secret_key=secret_key)
            changes.append(f"+{name}")
        elif not setting.secret:
            put_setting(session, workspace, name, setting.value, secret=True, secret_key=secret_key)
            changes.append(f"*{name}")
    return changes


def export_files(session: Session, slug: str) -> dict[str, str]:
    """The workspace as folder files (``workspace.yml``, ``flows/*.py``, ``settings.yml``,
    ``files/``, ``pages/*.html`` and ``pages/*.yml``).

    Secret settings are written as ``name: !secret`` without their value.
    """
    workspace = get_workspace(session, slug)
    flows = {f.name: f.script for f in list_flows(session, workspace)}
    stored = list_settings(session, workspace)
    settings = {s.name: s.value for s in stored if not s.secret}
    secrets: dict[str, str | None] = {s.name: None for s in stored if s.secret}
    blobs = {f.path: f.content for f in list_files(session, workspace)}
    templates, metas = pages.stored_pages(session, workspace)
    bundle = WorkspaceBundle(
        spec=stored_spec(workspace),
        flows=flows,
        settings=settings,
        pages=templates,
        page_meta=metas,
        secrets=secrets,
        files=blobs,
    )
    return bundle_to_files(bundle)


def stored_spec(workspace: Workspace) -> WorkspaceSpec:
    """The workspace's definition as a spec, rebuilt from the store."""
    automations = {
        slug: AutomationSpec(
            slug=slug,
            flow=a["flow"],
            events=tuple(a["when"]["events"]),
            schedules=tuple(a["when"]["schedules"]),
            endpoint=bool(a["when"]["endpoint"]),
            public=bool(a.get("public")),
            description=a.get("description"),
        )
        for slug, a in workspace.spec.get("automations", {}).items()
    }
    roles = {
        name: tuple(RoleRule(r["action"], r["subject"], r.get("conditions") or {}) for r in rules)
        for name, rules in workspace.spec.get("roles", {}).items()
    }
    return WorkspaceSpec(
        slug=workspace.slug,
        name=workspace.name,
        description=workspace.description,
        config_value=workspace.config_value,
        config_schema=workspace.config_schema,
        automations=automations,
        custom_domains=tuple(workspace.spec.get("customDomains", [])),
        roles=roles,
        apps=workspace.spec.get("apps", {}),
        source_text=workspace.source_text or "",
    )


def rerender_all(session: Session, environ: Mapping[str, str]) -> None:
    """Re-render every workspace's config (environment overrides may have changed)."""
    for workspace in list_workspaces(session):
        try:
            rendered = render_config(workspace.slug, workspace.config_value, environ)
        except SpecError:
            continue  # keep the last good rendering; the next apply reports the error
        if rendered != workspace.config_rendered:
            workspace.config_rendered = rendered
            record(session, workspace, "workspaces.configured", {"keys": sorted(rendered)})


# --- flows ------------------------------------------------------------------------------------


def list_flows(session: Session, workspace: Workspace) -> list[Flow]:
    """All flows of a workspace, by name."""
    return list(
        session.scalars(select(Flow).where(Flow.workspace_id == workspace.id).order_by(Flow.name))
    )


_FLOW_BY_NAME = select(Flow).where(
    Flow.workspace_id == bindparam("workspace_id"), Flow.name == bindparam("name")
)  # built once: every start of a flow looks its flow up


_FLOWS_READ_KEY = "flowlink_flows_read"  # session.info: flows read at once (``flows_read_once``)


def find_flow(session: Session, workspace: Workspace, name: str) -> Flow | None:
    """The flow with this name, or None."""
    read: dict[tuple[str, str], Flow | None] | None = session.info.get(_FLOWS_READ_KEY)
    if read is not None and (workspace.id, name) in read:
        return read[(workspace.id, name)]
    return session.scalar(_FLOW_BY_NAME, {"workspace_id": workspace.id, "name": name})


@contextlib.contextmanager
def flows_read_once(session: Session, workspace: Workspace, names: Iterable[str]) -> Iterator[None]:
    """Within the block, ``find_flow`` finds these flows of the workspace without a query:
    they are read at once, in one query. For a batch of starts, where each start would read
    its flow again (a round trip each on PostgreSQL); the block must not change flows."""
    wanted = sorted(set(names))
    read: dict[tuple[str, str], Flow | None] = {(workspace.id, name): None for name in wanted}
    for part in range(0, len(wanted), 1000):
        for flow in session.scalars(
            select(Flow).where(
                Flow.workspace_id == workspace.id, Flow.name.in_(wanted[part : part + 1000])
            )
        ):
            read[(workspace.id, flow.name)] = flow
    session.info[_FLOWS_READ_KEY] = read
    try:
        yield
    finally:
        session.info.pop(_FLOWS_READ_KEY, None)


def get_flow(session: Session, workspace: Workspace, name: str) -> Flow:
    """The flow with this name, or NotFound."""
    flow = find_flow(session, workspace, name)
    if flow is None:
        raise NotFound(
            f"flow {name!r} not found in workspace {workspace.slug!r}",
            details={"workspace": workspace.slug, "flow": name},
        )
    return flow


def put_flow(
    session: Session, workspace: Workspace, name: str, script: str, description: str | None = None
) -> tuple[Flow, bool]:
    """Create or replace a flow; returns it and whether it was created.

    Records ``flows.updated`` (``name``, ``created``) in the same transaction.
    """
    check_name("flow", name)
    try:
        validate_script(name, script, file=f"flows/{name}.py")
    except SpecError as error:
        raise spec_error_to_invalid(error) from error
    flow = find_flow(session, workspace, name)
    created = flow is None
    if flow is None:
        flow = Flow(workspace_id=workspace.id, name=name, script=script, description=description)
        session.add(flow)
    else:
        flow.script = script
        flow.description = description
        flow.updated_at = utcnow()
    record(session, workspace, "flows.updated", {"name": name, "created": created})
    session.flush()
    return flow, created


def delete_flow(session: Session, workspace: Workspace, name: str) -> None:
    """Delete a flow (its past executions keep their script snapshot); records
    ``flows.deleted``."""
    session.delete(get_flow(session, workspace, name))
    record(session, workspace, "flows.deleted", {"name": name})


def flow_view(flow: Flow) -> dict[str, Any]:
    """The API representation of a flow."""
    return {
        "id": flow.id,
        "name": flow.name,
        "script": flow.script,
        "description": flow.description,
        "created_at": format_timestamp(flow.created_at),
        "updated_at": format_timestamp(flow.updated_at),
    }


# --- settings ---------------------------------------------------------------------------------


def list_settings(session: Session, workspace: Workspace) -> list[Setting]:
    """All settings of a workspace, by name."""
    return list(
        session.scalars(
            select(Setting).where(Setting.workspace_id == workspace.id).order_by(Setting.name)
        )
    )


def find_setting(session: Session, workspace: Workspace, name: str) -> Setting | None:
    """The setting with this name, or None."""
    return session.scalar(
        select(Setting).where(Setting.workspace_id == workspace.id, Setting.name == name)
    )


def get_setting(session: Session, workspace: Workspace, name: str) -> Setting:
    """The setting with this name, or NotFound."""
    setting = find_setting(session, workspace, name)
    if setting is None:
        raise NotFound(
            f"setting {name!r} not found in workspace {workspace.slug!r}",
            details={"workspace": workspace.slug, "setting": name},
        )
    return setting


def setting_write_action(
    session: Session, workspace: Workspace, name: str, secret: bool | None
) -> str:
    """The access action writing setting ``name`` needs: a secret one needs ``manage``."""
    existing = find_setting(session, workspace, name)
    if secret or (existing is not None and existing.secret):
        return "manage"
    return "update" if existing is not None else "create"


def put_setting(
    session: Session,
    workspace: Workspace,
    name: str,
    value: Any,
    *,
    execution_id: str | None = None,
    secret: bool | None = None,
    secret_key: str | None = None,
) -> None:
    """Create or overwrite a setting; records ``settings.updated`` (never with the value).

    ``secret`` makes it a secret setting (None: keep its kind; new settings are plain); a
    secret's value is encrypted at rest with ``secret_key``, the server's secret key.
    """
    check_name("setting", name)
    setting = find_setting(session, workspace, name)
    created = setting is None
    is_secret = bool(setting.secret if secret is None and setting is not None else secret)
    stored = seal_secret(value, secret_key) if is_secret else value
    if setting is None:
        setting = Setting(workspace_id=workspace.id, name=name, value=stored, secret=is_secret)
        session.add(setting)
    else:
        setting.value = stored
        setting.secret = is_secret
        setting.updated_at = utcnow()
    payload: dict[str, Any] = {"name": name, "created": created}
    if is_secret:
        payload["secret"] = True
    record(session, workspace, "settings.updated", payload, execution_id=execution_id)
    session.flush()


def delete_setting(
    session: Session, workspace: Workspace, name: str, *, execution_id: str | None = None
) -> None:
    """Delete a setting."""
    session.delete(get_setting(session, workspace, name))
    record(
        session,
        workspace,
        "settings.updated",
        {"name": name, "deleted": True},
        execution_id=execution_id,
    )


def seal_secret(value: Any, secret_key: str | None) -> str | None:
    """A secret's value as stored: its JSON, encrypted (None stays None: declared, not set)."""
    if value is None:
        return None
    if not secret_key:
        raise Invalid("secret settings need the server's secret key", details={"field": "secret"})
    return atrest.encrypt(secret_key, json.dumps(value), purpose=atrest.SECRET_SETTINGS)


def setting_value(setting: Setting, secret_key: str | None) -> Any:
    """A setting's real value (decrypted for a secret); only flows are given secrets' values."""
    if not setting.secret or setting.value is None:
        return setting.value
    if not secret_key:
        raise Invalid("secret settings need the server's secret key", details={"field": "secret"})
    plain = atrest.decrypt(
        secret_key,
        str(setting.value),
        purpose=atrest.SECRET_SETTINGS,
        what=f"the secret setting {setting.name!r}",
    )
    return json.loads(plain)


def setting_view(setting: Setting) -> dict[str, Any]:
    """The API representation of a setting; a secret's value is masked, for everyone."""
    value = setting.value
    if setting.secret:
        value = SECRET_MASK if value is not None else None
    return {
        "name": setting.name,
        "secret": bool(setting.secret),
        "value": value,
        "created_at": format_timestamp(setting.created_at),
        "updated_at": format_timestamp(setting.updated_at),
    }
