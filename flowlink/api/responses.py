"""The API's JSON response: stored data that is not fit for JSON never makes it fail."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from flowlink.jsonsafe import repair


class SafeJSONResponse(JSONResponse):
    """``JSONResponse`` that repairs what it cannot encode instead of answering 500.

    New input is refused at the boundaries, but a row stored before (a lone surrogate, a
    NaN) must not make every list that contains it fail: such strings are served with
    U+FFFD and such numbers as ``null``.
    """

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except (ValueError, UnicodeEncodeError):
            return super().render(repair(content))


class ApiRoute(APIRoute):
    """A route of the API: its response model sends the fields the answer has.

    A field a view leaves out where it does not apply (a token's secret outside the answer
    that created it, an execution's ``script`` in a list) stays out instead of being sent
    as ``null``; the model still drops every field it does not declare.
    """

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        kwargs["response_model_exclude_unset"] = True
        super().__init__(path, endpoint, **kwargs)
