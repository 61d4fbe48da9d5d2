"""The base of every request body model."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

# The largest id or sequence number a store column holds (a signed 64-bit integer): bigger
# query values are refused with 422 instead of overflowing the database driver.
MAX_ID = 2**63 - 1


class RequestBody(BaseModel):
    """A JSON request body: an unknown field (a typo such as ``max_runtme``) is refused with
    422 naming it instead of being ignored, and so is a non-finite number."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
