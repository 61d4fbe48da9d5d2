"""The client's address: ``X-Forwarded-For`` and ``X-Forwarded-Proto`` from trusted proxies only.

Without configured trusted proxies (the default) the forwarded headers are ignored and the
client is the peer of the TCP connection. With them, a request whose peer is a trusted proxy
gets the address that proxy saw: ``X-Forwarded-For`` is read from the right, skipping trusted
proxies, and the first address that is not one is the client. A malformed entry ends the walk
(the last trusted hop stays the client), so a forged value never reaches the login throttle
or an event.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_address(value: str) -> Address | None:
    """An IP address from a forwarded entry (``1.2.3.4``, ``1.2.3.4:80``, ``[::1]:80``)."""
    text = value.strip()
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


class ForwardedHeaders:
    """ASGI middleware: the client address and scheme as seen by the first untrusted hop."""

    def __init__(self, app: ASGIApp, trusted: Iterable[str]) -> None:
        self.app = app
        self.networks: tuple[Network, ...] = tuple(ipaddress.ip_network(n) for n in trusted)

    def trusts(self, address: Address | None) -> bool:
        """Whether ``address`` is one of the trusted proxies."""
        return address is not None and any(address in network for network in self.networks)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and self.networks and scope.get("client"):
            self._rewrite(scope)
        await self.app(scope, receive, send)

    def _rewrite(self, scope: Scope) -> None:
        peer = parse_address(str(scope["client"][0]))
        if not self.trusts(peer):
            return
        forwarded: list[str] = []
        proto = None
        for name, value in scope["headers"]:
            if name == b"x-forwarded-for":
                forwarded.extend(value.decode("latin-1").split(","))
            elif name == b"x-forwarded-proto":
                proto = value.decode("latin-1").strip().lower()
        client = peer
        for entry in reversed(forwarded):
            if not self.trusts(client):
                break
            hop = parse_address(entry)
            if hop is None:
                break
            client = hop
        if client != peer:
            scope["client"] = (str(client), 0)
        if proto in ("http", "https"):
            scope["scheme"] = proto if scope["type"] == "http" else proto.replace("http", "ws")
