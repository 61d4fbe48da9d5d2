"""Settings at apply, through a real server: bulk creation, the per-apply limit, all or nothing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

from flowlink.store.models import Event, Setting, Workspace
from flowlink.workspaces.service import count_top_level_keys
from tests.conftest import LiveServer, make_settings, start_live_server

WORKSPACE = "name: Many\nslug: many\n"


@pytest.fixture
def limited(database_url: str) -> Iterator[LiveServer]:
    """A server whose applies create at most 50 settings each."""
    started = start_live_server(make_settings(database_url, apply_max_settings=50))
    yield started.live
    started.stop()


def settings_yml(names: range, prefix: str = "s") -> str:
    return "".join(f"{prefix}{n:03d}: {{n: {n}, tags: [a, b], ok: true}}\n" for n in names)


def counts(server: LiveServer) -> tuple[int, int]:
    """(settings of workspace ``many``, settings.updated events of it)."""
    with server.store.read() as session:
        workspace = session.scalar(select(Workspace).where(Workspace.slug == "many"))
        if workspace is None:
            return 0, 0
        settings = session.scalar(select(func.count()).where(Setting.workspace_id == workspace.id))
        events = session.scalar(
            select(func.count()).where(
                Event.workspace_id == workspace.id, Event.type == "settings.updated"
            )
        )
        return int(settings or 0), int(events or 0)


def apply(server: LiveServer, settings: str, flow: str | None = None) -> object:
    files = {"workspace.yml": WORKSPACE, "settings.yml": settings}
    if flow is not None:
        files["flows/f.py"] = flow
    return server.client.post("/api/v1/workspaces/many/apply", json={"files": files})


def test_apply_over_the_limit_changes_nothing(limited: LiveServer) -> None:
    response = apply(limited, settings_yml(range(51)))
    assert response.status_code == 422  # type: ignore[attr-defined]
    error = response.json()["error"]  # type: ignore[attr-defined]
    assert error["details"] == {
        "file": "settings.yml",
        "field": "settings",
        "count": 51,
        "limit": 50,
    }
    assert "settings.yml would create 51 settings" in error["message"]
    assert "FLOWLINK_APPLY_MAX_SETTINGS" in error["message"]
    # all or nothing: not even the workspace was created
    assert limited.client.get("/api/v1/workspaces/many").status_code == 404
    assert counts(limited) == (0, 0)


def test_settings_are_created_in_bulk_and_never_overwritten(limited: LiveServer) -> None:
    first = apply(limited, settings_yml(range(50)))
    assert first.status_code == 200, first.text  # type: ignore[attr-defined]
    changes = first.json()["changes"]["settings"]  # type: ignore[attr-defined]
    assert changes == [f"+s{n:03d}" for n in range(50)]
    assert counts(limited) == (50, 50)
    value = limited.client.get("/api/v1/workspaces/many/settings/s007").json()["value"]
    assert value == {"n": 7, "tags": ["a", "b"], "ok": True}
    with limited.store.read() as session:
        payloads = session.scalars(
            select(Event.payload).where(Event.type == "settings.updated")
        ).all()
    assert sorted(p["name"] for p in payloads) == [f"s{n:03d}" for n in range(50)]
    assert all(p["created"] is True for p in payloads)
    # a flow changed one; the next apply keeps it and only counts the new settings
    limited.client.put("/api/v1/workspaces/many/settings/s007", json={"value": "changed"})
    second = apply(limited, settings_yml(range(100)))
    assert second.status_code == 200, second.text  # type: ignore[attr-defined]
    assert second.json()["changes"]["settings"] == [  # type: ignore[attr-defined]
        f"+s{n:03d}" for n in range(50, 100)
    ]
    assert limited.client.get("/api/v1/workspaces/many/settings/s007").json()["value"] == (
        "changed"
    )
    assert counts(limited) == (100, 101)
    again = apply(limited, settings_yml(range(100)))
    assert again.json()["changed"] is False  # type: ignore[attr-defined]
    assert counts(limited) == (100, 101)


def test_a_failing_apply_leaves_settings_as_they_were(limited: LiveServer) -> None:
    assert apply(limited, settings_yml(range(10))).status_code == 200  # type: ignore[attr-defined]
    bad = apply(limited, settings_yml(range(20)), flow="def handler(:\n")
    assert bad.status_code == 422  # type: ignore[attr-defined]
    assert counts(limited) == (10, 10)
    taken = apply(limited, settings_yml(range(10)) + "Bad name!: 1\n")
    assert taken.status_code == 422  # type: ignore[attr-defined]
    assert counts(limited) == (10, 10)


def test_too_many_settings_are_refused_before_the_full_parse(limited: LiveServer) -> None:
    # a duplicate key is found only by the full parse: the count comes first
    response = apply(limited, settings_yml(range(60)) + "s000: 1\n")
    assert response.status_code == 422  # type: ignore[attr-defined]
    assert response.json()["error"]["details"]["count"] == 61  # type: ignore[attr-defined]
    assert apply(limited, settings_yml(range(50))).status_code == 200  # type: ignore[attr-defined]
    response = apply(limited, settings_yml(range(120)))
    error = response.json()["error"]  # type: ignore[attr-defined]
    assert "would create at least 70 settings" in error["message"], error
    assert counts(limited) == (50, 50)


def test_count_top_level_keys() -> None:
    assert count_top_level_keys("a: 1\nb: [1, 2]\nc: {d: {e: 1}}\n'f': |\n  text\n") == 4
    assert count_top_level_keys("{a: 1, b: 2}") == 2
    assert count_top_level_keys("- a\n- b\n") == 0
    assert count_top_level_keys("a: [1\n") == 0
    assert count_top_level_keys("") == 0
