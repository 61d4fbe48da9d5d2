"""Custom domains: the rules a ``customDomains`` entry must follow and ``Host`` matching."""

from __future__ import annotations

import functools
import ipaddress
import re

import idna

__all__ = ["DomainError", "host_key", "normalize_domain"]

_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_JUNK = re.compile(r"[:/?#@\[\]\\]")


class DomainError(ValueError):
    """A malformed custom domain; the message states the rule it breaks."""


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def normalize_domain(raw: str) -> str:
    """The canonical form of a custom domain (lowercase ASCII, IDNA), or :class:`DomainError`.

    Rules: a bare hostname (no scheme, port, path, user or trailing dot), no wildcard, not an
    IP address, not ``localhost``, labels of 1-63 letters, digits and '-' (not at either
    end) after IDNA encoding, at most 253 characters.
    """
    if not raw or raw != raw.strip() or any(c.isspace() for c in raw):
        raise DomainError(f"invalid custom domain {raw!r}: must be a hostname without spaces")
    if "*" in raw:
        raise DomainError(
            f"invalid custom domain {raw!r}: wildcards are not allowed; list each host"
        )
    if _is_ip(raw):
        raise DomainError(
            f"invalid custom domain {raw!r}: an IP address is not a domain; use a hostname"
        )
    if _JUNK.search(raw):
        raise DomainError(
            f"invalid custom domain {raw!r}: give the bare hostname, without scheme, port,"
            " path or user (e.g. ops.example.com)"
        )
    if raw.endswith("."):
        raise DomainError(f"invalid custom domain {raw!r}: remove the trailing dot")
    try:
        host = idna.encode(raw, uts46=True).decode("ascii").lower()
    except (idna.IDNAError, UnicodeError) as exc:
        raise DomainError(
            f"invalid custom domain {raw!r}: not a valid (internationalized) hostname: {exc}"
        ) from None
    labels = host.split(".")
    if host == "localhost" or labels[-1] == "localhost":
        raise DomainError(f"invalid custom domain {raw!r}: localhost always names this machine")
    if len(host) > 253:
        raise DomainError(f"invalid custom domain {raw!r}: longer than 253 characters")
    for label in labels:
        if _LABEL.fullmatch(label) is None:
            raise DomainError(
                f"invalid custom domain {raw!r}: label {label!r} must be 1-63 letters, digits"
                " and '-', not starting or ending with '-'"
            )
    if labels[-1].isdigit():
        raise DomainError(f"invalid custom domain {raw!r}: the last label cannot be numeric")
    return host


def host_key(header: str | None) -> str | None:
    """The canonical domain of a ``Host`` header (port dropped), or None when it cannot be one.

    ``None`` for IP addresses, ``localhost`` and anything malformed: such hosts never name a
    custom domain, so the caller skips the lookup. Every request asks, for the few hosts a
    server answers: the answers are kept (IDNA costs tens of microseconds a call).
    """
    if not header:
        return None
    return _host_key(header)


@functools.lru_cache(maxsize=1024)
def _host_key(header: str) -> str | None:
    host = header.strip()
    if host.startswith("["):
        return None  # IPv6 literal
    host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    host = host.rstrip(".")
    if not host or _is_ip(host):
        return None
    try:
        return normalize_domain(host)
    except DomainError:
        return None
