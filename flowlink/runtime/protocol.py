"""Wire format between the worker and a runner.

Every message is a JSON object encoded as UTF-8 and prefixed by its length as a
4-byte big-endian unsigned integer. See ``docs/runtime.md`` for the messages.
"""

from __future__ import annotations

import json
import re
import socket
import struct
from typing import Any

from flowlink.jsonsafe import repair

__all__ = [
    "MAX_FRAME",
    "FrameDecoder",
    "ProtocolError",
    "encode",
    "recv_message",
    "send_message",
]

#: Largest accepted frame (a bigger length prefix is treated as a protocol error).
MAX_FRAME = 64 * 1024 * 1024

_HEADER = struct.Struct(">I")
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_loads = json.loads
# What may hide a value the store cannot take: a surrogate (raw, as the runner's encoder
# writes it, or escaped), a NUL, NaN/Infinity, or an exponent large enough to overflow a float.
_SUSPECT = re.compile(
    rb"\xed[\xa0-\xbf]|\\u[dD][89a-fA-F]|\\u0000|NaN|Infinity|[0-9][eE]\+?[0-9]{3}"
)


class ProtocolError(Exception):
    """The peer sent something that is not a valid frame."""


def encode(message: dict[str, Any]) -> bytes:
    """Return the framed bytes for ``message`` (raises TypeError/ValueError if not JSON)."""
    body = _dumps(message).encode("utf-8", "surrogatepass")
    if len(body) > MAX_FRAME:
        raise ValueError(f"message too large ({len(body)} bytes, limit {MAX_FRAME})")
    return _HEADER.pack(len(body)) + body


class FrameDecoder:
    """Incremental decoder: feed it received bytes, get complete messages back."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Add ``data`` and return every message that is now complete."""
        buf = self._buf
        buf += data
        out: list[dict[str, Any]] = []
        pos = 0
        end = len(buf)
        while end - pos >= 4:
            (size,) = _HEADER.unpack_from(buf, pos)
            if size > MAX_FRAME:
                raise ProtocolError(f"frame of {size} bytes exceeds the {MAX_FRAME} byte limit")
            if end - pos - 4 < size:
                break
            try:
                msg = _loads(bytes(buf[pos + 4 : pos + 4 + size]))
            except ValueError as exc:
                raise ProtocolError(f"invalid JSON frame: {exc}") from None
            if not isinstance(msg, dict):
                raise ProtocolError("frame is not a JSON object")
            if _SUSPECT.search(buf, pos + 4, pos + 4 + size):
                # A script's log line, output or message is repaired (U+FFFD, null), not lost.
                msg = repair(msg)
            out.append(msg)
            pos += 4 + size
        if pos:
            del buf[:pos]
        return out

    @property
    def pending(self) -> int:
        """Number of buffered bytes that do not form a complete frame yet."""
        return len(self._buf)


def send_message(sock: socket.socket, message: dict[str, Any]) -> None:
    """Encode and send one message (blocking)."""
    sock.sendall(encode(message))


def recv_message(
    sock: socket.socket, decoder: FrameDecoder, backlog: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """Blocking receive of the next message; ``None`` on EOF.

    ``backlog`` holds messages already decoded but not consumed yet; it is
    filled and drained by this function (pass the same list every time).
    """
    while not backlog:
        data = sock.recv(262144)
        if not data:
            return None
        backlog.extend(decoder.feed(data))
    return backlog.pop(0)
