"""Response models of workspaces, their flows, settings and files."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from flowlink.timestamps import Timestamp
from flowlink.views import View


class WorkspaceSummary(View):
    """A workspace as a caller without ``read workspace`` sees it in the list."""

    id: str
    slug: str
    name: str | None


class WorkspaceView(WorkspaceSummary):
    """A workspace with its rendered config (values from the environment masked)."""

    description: str | None
    config: dict[str, Any] = Field(description="The rendered config (free-form, from YAML)")
    automations: dict[str, Any] = Field(description="The automations as declared (free-form)")
    custom_domains: list[str]
    version: int
    created_at: Timestamp
    updated_at: Timestamp


class WorkspaceList(View):
    """The workspaces the caller can see."""

    items: list[Annotated[WorkspaceView | WorkspaceSummary, Field(union_mode="left_to_right")]]


class ApplyResultView(View):
    """What an apply changed; new webhook keys are shown here once."""

    workspace: WorkspaceView
    created: bool
    changed: bool
    changes: dict[str, list[str]]
    webhook_keys: dict[str, str] = Field(description="automation -> its new webhook key")


class ExportView(View):
    """The workspace as folder files (path -> text)."""

    files: dict[str, str]


class FlowView(View):
    """A flow with its script."""

    id: str
    name: str
    script: str
    description: str | None
    created_at: Timestamp
    updated_at: Timestamp


class FlowList(View):
    """The flows of a workspace."""

    items: list[FlowView]


class SettingView(View):
    """A setting; a secret one's value is masked."""

    name: str
    secret: bool
    value: Any = Field(description="Any JSON value (free-form)")
    created_at: Timestamp
    updated_at: Timestamp


class SettingList(View):
    """The settings of a workspace."""

    items: list[SettingView]


class FileView(View):
    """A workspace file without its content."""

    path: str
    size: int
    sha256: str = Field(description="SHA-256 of the content (also the download's ETag)")
    content_type: str
    created_at: Timestamp
    updated_at: Timestamp


class FileList(View):
    """The files of a workspace."""

    items: list[FileView]
