"""The API's JSON response: stored data that is not fit for JSON never makes it fail."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

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
