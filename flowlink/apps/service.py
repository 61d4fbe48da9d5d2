"""Publishing apps, installing, upgrading and uninstalling instances, resolving their flows.

An **app** is a workspace published under its slug; each **version** is an immutable
snapshot of the workspace's flows, config (value and schema), automations, pages and its
own installed instances. An **instance** is an app version installed into a workspace under
a slug, with a config validated against the version's ``config.schema``.

An execution of an instance's flow carries an *app context* (``Execution.app``):
``{"instance": full slug, "depth", "app", "version", "versionId", "config"}``. The full slug
chains nested instances (``toolbox.helper``); depth is 1 for an instance of the workspace,
2 for an instance installed inside that app, and so on.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from sqlalchemy import select
from sqlalchemy.orm import Session

from flowlink.errors import Conflict, Invalid, NotFound
from flowlink.events.service import record
from flowlink.store.models import (
    App,
    AppInstance,
    AppVersion,
    Automation,
    Flow,
    Page,
    Workspace,
    utcnow,
)
from flowlink.timestamps import format_timestamp
from flowlink.workspaces.spec import WorkspaceBundle
from flowlink.workspaces.templating import render_over
from flowlink.workspaces.yamlsource import SpecError

__all__ = [
    "APP_ENV_PREFIX",
    "INSTANCE_RE",
    "VERSION_RE",
    "InstanceSpec",
    "app_source",
    "check_schema",
    "get_version",
    "install",
    "instance_page",
    "instance_view",
    "list_apps",
    "list_instances",
    "list_versions",
    "publish",
    "resolve_flow",
    "sync_instances",
    "uninstall",
    "version_view",
]

VERSION_RE = r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}$"
INSTANCE_RE = r"^[a-z0-9][a-z0-9_-]{0,62}$"
APP_ENV_PREFIX = "APP_CONFIG_"
"""Environment variables ``APP_CONFIG_<appSlug>_<KEY>`` supply an instance's ``config.KEY``."""
_VERSION = re.compile(VERSION_RE)
_INSTANCE = re.compile(INSTANCE_RE)


@dataclass(frozen=True)
class InstanceSpec:
    """An instance as declared in workspace.yml (``apps:``) or sent to the API."""

    slug: str
    app: str
    version: str
    config: Mapping[str, Any] = field(default_factory=dict)


# --- publishing -------------------------------------------------------------------------------


def check_schema(schema: Mapping[str, Any], where: str) -> None:
    """Refuse a ``config.schema`` that is not a valid JSON Schema (2020-12)."""
    try:
        Draft202012Validator.check_schema(dict(schema))
    except SchemaError as exc:
        path = ".".join(str(p) for p in exc.path)
        raise Invalid(
            f"{where}: config.schema is not a valid JSON Schema: {exc.message}"
            + (f" (at {path})" if path else ""),
            details={"file": "workspace.yml", "field": "config.schema"},
        ) from None


def _snapshot(session: Session, workspace: Workspace) -> dict[str, Any]:
    flows = {
        f.name: f.script
        for f in session.scalars(
            select(Flow).where(Flow.workspace_id == workspace.id).order_by(Flow.name)
        )
    }
    automations = {
        a.slug: a.spec
        for a in session.scalars(select(Automation).where(Automation.workspace_id == workspace.id))
    }
    pages = {
        p.slug: {"template": p.template, "meta": p.meta_text, "spec": p.spec}
        for p in session.scalars(select(Page).where(Page.workspace_id == workspace.id))
    }
    apps = {
        i.slug: {"app": i.app_slug, "version": i.version, "config": i.config_value}
        for i in list_instances(session, workspace)
    }
    return {
        "flows": flows,
        "config": {"value": workspace.config_value, "schema": workspace.config_schema},
        "automations": automations,
        "pages": pages,
        "apps": apps,
    }


def publish(
    session: Session, workspace: Workspace, version: str, published_by: str | None
) -> AppVersion:
    """Publish the workspace as version ``version`` of the app of the same slug (409 if taken)."""
    if not isinstance(version, str) or not _VERSION.match(version):
        raise Invalid(
            f"invalid version {version!r}: 1-64 of letters, digits, '.', '+', '_' and '-',"
            " starting with a letter or digit (e.g. 1.0.0)",
            details={"field": "version"},
        )
    check_schema(workspace.config_schema or {}, workspace.slug)
    app = session.scalar(select(App).where(App.slug == workspace.slug))
    if app is None:
        app = App(slug=workspace.slug, workspace_id=workspace.id)
        session.add(app)
        session.flush()
    elif app.workspace_id not in (None, workspace.id):
        raise Conflict(
            f"app {workspace.slug!r} is published from another workspace",
            details={"app": workspace.slug},
        )
    app.workspace_id = workspace.id
    taken = session.scalar(
        select(AppVersion.id).where(AppVersion.app_id == app.id, AppVersion.version == version)
    )
    if taken:
        raise Conflict(
            f"app {app.slug!r} already has a version {version!r}: versions never change,"
            " publish a new one",
            details={"app": app.slug, "version": version},
        )
    row = AppVersion(
        app_id=app.id,
        version=version,
        snapshot=_snapshot(session, workspace),
        published_by=published_by,
        published_at=utcnow(),
    )
    session.add(row)
    session.flush()
    record(
        session,
        workspace,
        "apps.published",
        {"app": app.slug, "version": version, "publishedBy": published_by},
    )
    return row


def list_apps(session: Session) -> list[tuple[App, list[AppVersion]]]:
    """Every app with its versions (oldest first)."""
    apps = list(session.scalars(select(App).order_by(App.slug)))
    return [(app, list_versions(session, app.slug)) for app in apps]


def list_versions(session: Session, app_slug: str) -> list[AppVersion]:
    """The versions of an app, oldest first (NotFound for an unknown app)."""
    app = session.scalar(select(App).where(App.slug == app_slug))
    if app is None:
        raise NotFound(f"app {app_slug!r} not found", details={"app": app_slug})
    return list(
        session.scalars(
            select(AppVersion)
            .where(AppVersion.app_id == app.id)
            .order_by(AppVersion.published_at, AppVersion.version)
        )
    )


def get_version(session: Session, app_slug: str, version: str) -> AppVersion:
    """A published version, or NotFound naming what is missing."""
    row = session.scalar(
        select(AppVersion)
        .join(App, App.id == AppVersion.app_id)
        .where(App.slug == app_slug, AppVersion.version == version)
    )
    if row is None:
        known = session.scalar(select(App.id).where(App.slug == app_slug))
        what = f"app {app_slug!r} has no version {version!r}" if known else f"no app {app_slug!r}"
        raise NotFound(what, details={"app": app_slug, "version": version})
    return row


def version_view(app_slug: str, row: AppVersion) -> dict[str, Any]:
    """The API representation of a version (without its snapshot's scripts)."""
    snapshot = row.snapshot or {}
    return {
        "app": app_slug,
        "version": row.version,
        "published_by": row.published_by,
        "published_at": format_timestamp(row.published_at),
        "flows": sorted(snapshot.get("flows", {})),
        "config_schema": (snapshot.get("config") or {}).get("schema") or {},
    }


# --- instance config --------------------------------------------------------------------------


def _instance_config(
    snapshot: Mapping[str, Any],
    app_slug: str,
    given: Mapping[str, Any],
    host_config: Mapping[str, Any],
    environ: Mapping[str, str],
    where: str,
) -> dict[str, Any]:
    """Render, complete (environment, schema defaults) and validate an instance's config."""
    field_ = f"{where}.config"
    if not isinstance(given, Mapping):
        raise Invalid(f"{field_}: expected a mapping", details={"field": field_})
    try:
        config = render_over(given, host_config, file="workspace.yml", field=field_)
    except SpecError as error:
        raise Invalid(str(error), details=error.to_dict()) from None
    prefix = f"{APP_ENV_PREFIX}{app_slug}_"
    for name, value in sorted(environ.items()):
        if name.startswith(prefix) and len(name) > len(prefix):
            config.setdefault(name[len(prefix) :], value)
    schema = dict((snapshot.get("config") or {}).get("schema") or {})
    for key, prop in (schema.get("properties") or {}).items():
        if isinstance(prop, Mapping) and "default" in prop:
            config.setdefault(key, prop["default"])
    if schema:
        errors = sorted(
            Draft202012Validator(schema).iter_errors(config), key=lambda e: list(e.absolute_path)
        )
        if errors:
            first = errors[0]
            path = ".".join(str(p) for p in first.absolute_path)
            target = f"{field_}.{path}" if path else field_
            rule = f"{first.validator}: {first.validator_value!r}"
            raise Invalid(
                f"{target}: {first.message} (schema rule {rule})",
                details={"file": "workspace.yml", "field": target, "rule": str(first.validator)},
            )
    return config


# --- installing -------------------------------------------------------------------------------


def _check_instance(spec: InstanceSpec) -> None:
    if not isinstance(spec.slug, str) or not _INSTANCE.match(spec.slug):
        raise Invalid(
            f"invalid app instance slug {spec.slug!r}: 1-63 of a-z 0-9 _ -, starting with a"
            " letter or digit (no '.')",
            details={"field": f"apps.{spec.slug}"},
        )


def list_instances(session: Session, workspace: Workspace) -> list[AppInstance]:
    """The app instances of a workspace, by slug."""
    return list(
        session.scalars(
            select(AppInstance)
            .where(AppInstance.workspace_id == workspace.id)
            .order_by(AppInstance.slug)
        )
    )


def find_instance(session: Session, workspace: Workspace, slug: str) -> AppInstance | None:
    """The instance with this slug, or None."""
    return session.scalar(
        select(AppInstance).where(
            AppInstance.workspace_id == workspace.id, AppInstance.slug == slug
        )
    )


def install(
    session: Session,
    workspace: Workspace,
    spec: InstanceSpec,
    environ: Mapping[str, str] | None = None,
) -> tuple[AppInstance, str | None]:
    """Install, upgrade or reconfigure an instance; returns it and what changed.

    The change is ``installed``, ``upgraded``, ``configured`` or None (nothing changed);
    native events ``workspaces.app.installed`` / ``workspaces.app.configured`` record it.
    """
    _check_instance(spec)
    where = f"apps.{spec.slug}"
    if spec.app == workspace.slug:
        raise Invalid(
            f"{where}.app: a workspace cannot install its own app", details={"field": where}
        )
    version = get_version(session, spec.app, spec.version)
    config = _instance_config(
        version.snapshot,
        spec.app,
        spec.config,
        workspace.config_rendered or {},
        os.environ if environ is None else environ,
        where,
    )
    instance = find_instance(session, workspace, spec.slug)
    payload = {"slug": spec.slug, "app": spec.app, "version": spec.version}
    if instance is None:
        instance = AppInstance(
            workspace_id=workspace.id,
            slug=spec.slug,
            app_version_id=version.id,
            app_slug=spec.app,
            version=spec.version,
            config_value=dict(spec.config),
            config_rendered=config,
        )
        session.add(instance)
        session.flush()
        record(session, workspace, "workspaces.app.installed", payload)
        return instance, "installed"
    change: str | None = None
    if instance.app_slug != spec.app or instance.version != spec.version:
        change = "upgraded"
        payload["previousVersion"] = instance.version
    elif instance.config_value != dict(spec.config) or instance.config_rendered != config:
        change = "configured"
    if change is None:
        return instance, None
    instance.app_version_id = version.id
    instance.app_slug = spec.app
    instance.version = spec.version
    instance.config_value = dict(spec.config)
    instance.config_rendered = config
    instance.updated_at = utcnow()
    record(session, workspace, "workspaces.app.configured", {**payload, "change": change})
    return instance, change


def uninstall(session: Session, workspace: Workspace, slug: str) -> None:
    """Remove an instance (executions already running keep their version and config)."""
    instance = find_instance(session, workspace, slug)
    if instance is None:
        raise NotFound(
            f"app instance {slug!r} not found in workspace {workspace.slug!r}",
            details={"workspace": workspace.slug, "instance": slug},
        )
    session.delete(instance)
    record(
        session,
        workspace,
        "workspaces.app.uninstalled",
        {"slug": slug, "app": instance.app_slug, "version": instance.version},
    )


def sync_part(
    session: Session, workspace: Workspace, bundle: WorkspaceBundle, environ: Mapping[str, str]
) -> list[str]:
    """Apply's part for apps: sync the instances ``workspace.yml`` declares (an ``ApplyPart``)."""
    spec = bundle.spec
    declared = {
        slug: InstanceSpec(
            slug=slug, app=i["app"], version=i["version"], config=i.get("config") or {}
        )
        for slug, i in spec.apps.items()
    }
    if spec.config_schema:
        check_schema(spec.config_schema, spec.slug)
    return sync_instances(session, workspace, declared, environ)


def sync_instances(
    session: Session,
    workspace: Workspace,
    specs: Mapping[str, InstanceSpec],
    environ: Mapping[str, str],
) -> list[str]:
    """Make the workspace's instances those of its workspace.yml (``+``, ``~``, ``-`` slugs)."""
    changes: list[str] = []
    existing = {i.slug for i in list_instances(session, workspace)}
    for slug, spec in specs.items():
        _, change = install(session, workspace, spec, environ)
        if change is not None:
            changes.append(("+" if change == "installed" else "~") + slug)
        existing.discard(slug)
    for slug in sorted(existing):
        uninstall(session, workspace, slug)
        changes.append(f"-{slug}")
    return changes


def instance_view(instance: AppInstance) -> dict[str, Any]:
    """The API representation of an instance (its rendered config included)."""
    return {
        "slug": instance.slug,
        "app": instance.app_slug,
        "version": instance.version,
        "config": instance.config_rendered,
        "created_at": format_timestamp(instance.created_at),
        "updated_at": format_timestamp(instance.updated_at),
    }


# --- running ----------------------------------------------------------------------------------


def _child_context(
    session: Session, workspace: Workspace, parent: Mapping[str, Any] | None, slug: str
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The app context and snapshot of instance ``slug`` seen from ``parent`` (None: root)."""
    if parent is None:
        instance = find_instance(session, workspace, slug)
        if instance is None:
            return None
        version = session.get(AppVersion, instance.app_version_id)
        if version is None:
            return None
        context = {
            "instance": slug,
            "depth": 1,
            "app": instance.app_slug,
            "version": instance.version,
            "versionId": version.id,
            "config": instance.config_rendered,
        }
        return context, version.snapshot
    parent_version = session.get(AppVersion, parent.get("versionId"))
    declared = ((parent_version.snapshot if parent_version else {}).get("apps") or {}).get(slug)
    if not isinstance(declared, Mapping):
        return None
    version = get_version(session, str(declared["app"]), str(declared["version"]))
    full = f"{parent['instance']}.{slug}"
    config = _instance_config(
        version.snapshot,
        str(declared["app"]),
        declared.get("config") or {},
        parent.get("config") or {},
        os.environ,
        f"apps.{full}",
    )
    context = {
        "instance": full,
        "depth": int(parent.get("depth", 1)) + 1,
        "app": declared["app"],
        "version": declared["version"],
        "versionId": version.id,
        "config": config,
    }
    return context, version.snapshot


def resolve_flow(
    session: Session, workspace: Workspace, context: Mapping[str, Any] | None, name: str
) -> tuple[str, dict[str, Any]] | None:
    """The script and app context of flow ``name`` called from ``context`` (None: the host).

    Inside an instance, ``name`` is first a flow of its app; ``a.b`` is flow ``b`` of the
    instance ``a`` installed there (recursively, for nested instances). The host's own flows
    are looked up by the caller first. None when nothing matches.
    """
    if context is not None:
        version = session.get(AppVersion, context.get("versionId"))
        flows = (version.snapshot if version else {}).get("flows") or {}
        if name in flows:
            return str(flows[name]), dict(context)
    head, dot, rest = name.partition(".")
    if not dot or not rest:
        return None
    child = _child_context(session, workspace, context, head)
    if child is None:
        return None
    return resolve_flow(session, workspace, child[0], rest)


def instance_page(
    session: Session, workspace: Workspace, instance_slug: str, page_slug: str
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The stored page ``page_slug`` of instance ``instance_slug`` (from its version) and the
    instance's config, or None."""
    instance = find_instance(session, workspace, instance_slug)
    if instance is None:
        return None
    version = session.get(AppVersion, instance.app_version_id)
    page = ((version.snapshot if version else {}).get("pages") or {}).get(page_slug)
    if not isinstance(page, Mapping):
        return None
    return dict(page), dict(instance.config_rendered or {})


def app_source(app: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The event source fields of an execution running in an app instance (None if not)."""
    if not app:
        return None
    return {"appInstanceFullSlug": app["instance"], "appInstanceDepth": int(app["depth"])}
