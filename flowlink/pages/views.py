"""Response models of pages."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from flowlink.timestamps import Timestamp
from flowlink.views import View


class PageView(View):
    """A page: its URL, title, access and data sources."""

    slug: str
    url: str
    title: str | None
    access: str | list[str] = Field(description="public, members, or a list of roles")
    flow: str | None
    events: Any = Field(description="The event types the page shows (as declared)")
    form: Any = Field(description="The page's form flow (as declared)")
    updated_at: Timestamp


class PageList(View):
    """The pages of a workspace."""

    items: list[PageView]
