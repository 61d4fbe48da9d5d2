"""Rendering page templates in Jinja2's immutable sandbox, with autoescaping.

A template sees only the values it is given (``config``, ``data``, ``events``, ...), as plain
JSON values: no loader (no file access), no network, no attribute access to internals (the
sandbox refuses ``__class__`` and friends, and calling anything unsafe).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from jinja2 import ChainableUndefined, Template, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

__all__ = ["RenderError", "environment", "render"]


class RenderError(Exception):
    """A template failed at render time (the message is safe to show)."""


@functools.cache
def environment() -> ImmutableSandboxedEnvironment:
    """The one sandboxed environment of page templates (no loader: no other files)."""
    env = ImmutableSandboxedEnvironment(
        autoescape=True,
        undefined=ChainableUndefined,
        loader=None,
        auto_reload=False,
    )
    env.globals = {"range": env.globals["range"]}  # the sandbox's bounded range only
    return env


@functools.lru_cache(maxsize=1024)
def _compiled(text: str) -> Template:
    return environment().from_string(text)


def render(text: str, values: Mapping[str, Any]) -> str:
    """Render a page template with ``values``; :class:`RenderError` on any template failure."""
    try:
        return _compiled(text).render(**values)
    except TemplateError as exc:
        raise RenderError(f"{type(exc).__name__}: {exc.message or exc}") from None
    except (TypeError, ValueError, ArithmeticError, LookupError, RecursionError) as exc:
        raise RenderError(f"{type(exc).__name__}: {exc}") from None
