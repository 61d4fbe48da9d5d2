"""The base of every response model (``flowlink/<domain>/views.py``).

A response model lists what a client may see: a field a domain view carries but the model
does not declare (an internal mark, a key) is dropped, never sent.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class View(BaseModel):
    """A JSON answer of the API, or a part of one (snake_case keys, ``Timestamp`` times)."""

    model_config = ConfigDict(extra="ignore")
