"""The CLI's saved login (server URL, admin user, password and token) in the config folder.

A module of its own so that the CLI client reads it without importing the server.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flowlink.access.service import AdminCredentials


def credentials_path() -> Path:
    """Where the CLI keeps the server URL and token saved by ``init --save`` or ``make run``."""
    base = os.environ.get("FLOWLINK_CONFIG_DIR") or os.path.join(
        os.path.expanduser("~"), ".config", "flowlink"
    )
    return Path(base) / "credentials.json"


def save_credentials(server: str, credentials: AdminCredentials) -> Path:
    """Save the admin login for the CLI, readable by this user only."""
    path = credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "server": server,
        "user": credentials.user,
        "password": credentials.password,
        "token": credentials.token,
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2)
    return path


def load_credentials() -> dict[str, Any]:
    """The saved CLI credentials, or an empty dict."""
    path = credentials_path()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
