"""Response models of apps, their versions and installed instances."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from flowlink.timestamps import Timestamp
from flowlink.views import View


class VersionView(View):
    """A published version of an app (without its scripts)."""

    app: str
    version: str
    published_by: str | None
    published_at: Timestamp
    flows: list[str]
    config_schema: dict[str, Any] = Field(description="The JSON Schema of an instance's config")


class VersionList(View):
    """Versions of one app, oldest first."""

    items: list[VersionView]


class AppView(View):
    """A published app with its versions."""

    app: str
    versions: list[VersionView]


class AppList(View):
    """Every published app."""

    items: list[AppView]


class InstanceView(View):
    """An installed app instance; ``change`` only in the answer of an install."""

    slug: str
    app: str
    version: str
    config: dict[str, Any] | None = Field(description="The rendered config (free-form)")
    created_at: Timestamp
    updated_at: Timestamp
    change: str | None = Field(None, description="installed, upgraded, configured, unchanged")


class InstanceList(View):
    """The app instances of a workspace."""

    items: list[InstanceView]
