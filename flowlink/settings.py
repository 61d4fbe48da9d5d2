"""Server settings, read once from the environment."""

from __future__ import annotations

import ipaddress
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DATABASE_URL = "sqlite:///flowlink.db"
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_PUBLIC_BODY_BYTES = 1024 * 1024


@dataclass(frozen=True)
class ServerSettings:
    """Everything a server or worker process needs to know about its deployment."""

    database_url: str = DEFAULT_DATABASE_URL
    secret_key: str | None = None
    worker_concurrency: int = 16
    warm_runners: int = 4
    lease_seconds: float = 15.0
    default_max_runtime: float = 3600.0
    runner_memory_mb: int = 2048
    runner_cpu_seconds: int = 3600
    runner_open_files: int = 256
    runner_processes: int = 64
    runner_cgroups: bool = True
    poll_interval: float = 0.5
    log_max_lines: int = 100_000
    log_max_bytes: int = 20 * 1024 * 1024
    apply_max_settings: int = 2_000
    event_trigger_depth: int = 20
    scheduler_interval: float = 5.0
    event_retention_days: float = 3 * 365
    event_inactive_days: float = 15
    event_inactive_min_events: int = 100
    event_deleted_workspace_days: float = 183
    event_cleanup_interval: float = 3600.0
    link_timeout: float = 30.0
    link_poll: float = 55.0
    link_backoff_max: float = 30.0
    link_refresh: float = 2.0
    # Addresses or CIDR networks of reverse proxies whose X-Forwarded-For/-Proto are believed.
    trusted_proxies: tuple[str, ...] = ()
    # Request bodies: any route, and routes (or requests) without credentials.
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_public_body_bytes: int = DEFAULT_MAX_PUBLIC_BODY_BYTES
    # Refused unauthenticated requests: one event per source and window, with a count.
    rejection_window: float = 60.0

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> ServerSettings:
        """Build settings from ``FLOWLINK_*`` environment variables."""
        env = dict(os.environ if environ is None else environ)

        def number(name: str, default: float) -> float:
            raw = env.get(name)
            if raw is None or raw == "":
                return default
            try:
                return float(raw)
            except ValueError as exc:
                raise ValueError(f"{name} must be a number, got {raw!r}") from exc

        def switch(name: str, default: bool) -> bool:
            raw = (env.get(name) or "").strip().lower()
            if raw in ("", "auto"):
                return default
            if raw in ("1", "on", "true", "yes"):
                return True
            if raw in ("0", "off", "false", "no"):
                return False
            raise ValueError(f"{name} must be auto, on or off, got {env.get(name)!r}")

        return cls(
            database_url=env.get("FLOWLINK_DATABASE_URL") or DEFAULT_DATABASE_URL,
            secret_key=env.get("FLOWLINK_SECRET_KEY") or None,
            worker_concurrency=int(number("FLOWLINK_WORKER_CONCURRENCY", 16)),
            warm_runners=int(number("FLOWLINK_WARM_RUNNERS", 4)),
            lease_seconds=number("FLOWLINK_LEASE_SECONDS", 15.0),
            default_max_runtime=number("FLOWLINK_MAX_RUNTIME", 3600.0),
            runner_memory_mb=int(number("FLOWLINK_RUNNER_MEMORY_MB", 2048)),
            runner_cpu_seconds=int(number("FLOWLINK_RUNNER_CPU_SECONDS", 3600)),
            runner_open_files=int(number("FLOWLINK_RUNNER_OPEN_FILES", 256)),
            runner_processes=int(number("FLOWLINK_RUNNER_PROCESSES", 64)),
            runner_cgroups=switch("FLOWLINK_RUNNER_CGROUPS", True),
            poll_interval=number("FLOWLINK_POLL_INTERVAL", 0.5),
            log_max_lines=int(number("FLOWLINK_LOG_MAX_LINES", 100_000)),
            log_max_bytes=int(number("FLOWLINK_LOG_MAX_BYTES", 20 * 1024 * 1024)),
            apply_max_settings=int(number("FLOWLINK_APPLY_MAX_SETTINGS", 2_000)),
            event_trigger_depth=int(number("FLOWLINK_EVENT_TRIGGER_DEPTH", 20)),
            scheduler_interval=number("FLOWLINK_SCHEDULER_INTERVAL", 5.0),
            event_retention_days=number("FLOWLINK_EVENT_RETENTION_DAYS", 3 * 365),
            event_inactive_days=number("FLOWLINK_EVENT_INACTIVE_DAYS", 15),
            event_inactive_min_events=int(number("FLOWLINK_EVENT_INACTIVE_MIN_EVENTS", 100)),
            event_deleted_workspace_days=number("FLOWLINK_EVENT_DELETED_WORKSPACE_DAYS", 183),
            event_cleanup_interval=number("FLOWLINK_EVENT_CLEANUP_INTERVAL", 3600.0),
            link_timeout=number("FLOWLINK_LINK_TIMEOUT", 30.0),
            link_poll=number("FLOWLINK_LINK_POLL", 55.0),
            link_backoff_max=number("FLOWLINK_LINK_BACKOFF_MAX", 30.0),
            link_refresh=number("FLOWLINK_LINK_REFRESH", 2.0),
            trusted_proxies=_trusted_proxies_env(env.get("FLOWLINK_TRUSTED_PROXIES", "")),
            max_body_bytes=int(number("FLOWLINK_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES)),
            max_public_body_bytes=int(
                number("FLOWLINK_MAX_PUBLIC_BODY_BYTES", DEFAULT_MAX_PUBLIC_BODY_BYTES)
            ),
            rejection_window=number("FLOWLINK_REJECTION_WINDOW", 60.0),
        )


def _trusted_proxies_env(value: str) -> tuple[str, ...]:
    try:
        return trusted_proxies(value)
    except ValueError as exc:
        raise ValueError(f"FLOWLINK_TRUSTED_PROXIES: {exc}") from exc


def trusted_proxies(value: str | Iterable[str]) -> tuple[str, ...]:
    """Trusted proxies as CIDR networks, from addresses or networks (a string: comma-separated).

    Raises ValueError naming the first entry that is neither.
    """
    items = value.split(",") if isinstance(value, str) else list(value)
    networks = []
    for item in items:
        text = item.strip()
        if not text:
            continue
        try:
            networks.append(str(ipaddress.ip_network(text, strict=False)))
        except ValueError as exc:
            raise ValueError(
                f"trusted proxy {text!r} is not an IP address or CIDR network"
            ) from exc
    return tuple(networks)


def sqlite_path(database_url: str) -> Path | None:
    """The file behind a ``sqlite:///`` URL, or None for other stores."""
    if not database_url.startswith("sqlite"):
        return None
    path = database_url.split(":///", 1)[-1]
    if not path or path == ":memory:":
        return None
    return Path(path).resolve()


def resolve_secret_key(settings: ServerSettings) -> str:
    """The server's secret key: ``FLOWLINK_SECRET_KEY`` or a 0600 key file beside the store."""
    if settings.secret_key:
        return settings.secret_key
    key_file = secret_key_path(settings)
    if key_file.exists():
        return key_file.read_text().strip()
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return key


def secret_key_path(settings: ServerSettings) -> Path:
    """Where the secret key file lives when ``FLOWLINK_SECRET_KEY`` is not set."""
    db_file = sqlite_path(settings.database_url)
    base = db_file.parent if db_file else Path.cwd()
    stem = db_file.name if db_file else "flowlink"
    return base / f"{stem}.secret"
