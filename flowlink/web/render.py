"""Templates (Jinja2, autoescaped) and the small formatting helpers the pages share."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from functools import lru_cache
from importlib import resources
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer

from flowlink import __version__
from flowlink.execution_status import ExecutionStatus
from flowlink.timestamps import format_timestamp

STATUSES = tuple(ExecutionStatus)


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str, ensure_ascii=False)


def highlight_python(script: str) -> Markup:
    """A script as highlighted HTML (Pygments escapes the text itself)."""
    return Markup(highlight(script, PythonLexer(), HtmlFormatter(cssclass="hl", linenos=False)))


@lru_cache(maxsize=1)
def highlight_css() -> str:
    """Pygments colours for light mode and, under ``prefers-color-scheme: dark``, dark mode."""
    light = HtmlFormatter(style="friendly").get_style_defs(".hl")
    dark = HtmlFormatter(style="monokai").get_style_defs(".hl")
    return f"{light}\n@media (prefers-color-scheme: dark) {{\n{dark}\n}}\n"


@lru_cache(maxsize=1)
def environment() -> Environment:
    """The console's Jinja2 environment: autoescape always on, undefined names are errors."""
    folder = str(resources.files("flowlink.web") / "templates")
    env = Environment(
        loader=FileSystemLoader(folder),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["pretty"] = _pretty
    env.filters["compact"] = lambda value: json.dumps(
        value, separators=(",", ":"), default=str, ensure_ascii=False
    )
    env.filters["python"] = highlight_python
    env.filters["timestamp"] = lambda value: (
        format_timestamp(value) if isinstance(value, datetime) else value
    )
    env.globals["version"] = __version__
    env.globals["statuses"] = STATUSES
    return env


def render(
    request: Request, template: str, values: dict[str, Any], *, status: int = 200
) -> HTMLResponse:
    """Render a page; ``user``, ``csrf`` and ``ws`` default to what the request carries."""
    data = {
        "request": request,
        "user": getattr(request.state, "user", None),
        "csrf": getattr(request.state, "csrf", ""),
        "ws": None,
        "nav": None,
        **values,
    }
    html = environment().get_template(template).render(data)
    return HTMLResponse(
        html,
        status_code=status,
        headers={
            "Cache-Control": "no-store",
            "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
            "style-src 'self'; script-src 'self'; frame-ancestors 'none'",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "same-origin",
        },
    )


def histogram(
    times: list[datetime], start: datetime, end: datetime, buckets: int = 48
) -> dict[str, Any]:
    """Bars for an SVG chart of ``times`` between ``start`` and ``end`` (heights 0-100)."""
    span = max((end - start).total_seconds(), 1.0)
    counts = [0] * buckets
    for moment in times:
        offset = (moment - start).total_seconds()
        if 0 <= offset <= span:
            counts[min(int(offset / span * buckets), buckets - 1)] += 1
    top = max(counts) or 1
    step = span / buckets
    bars = [
        {
            "index": i,
            "count": count,
            "height": round(count / top * 100, 1),
            "label": format_timestamp(start + timedelta(seconds=i * step)),
        }
        for i, count in enumerate(counts)
    ]
    return {
        "bars": bars,
        "top": top,
        "start": format_timestamp(start),
        "end": format_timestamp(end),
        "total": len(times),
    }
