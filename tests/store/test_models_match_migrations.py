"""The ORM models and the migration chain describe the same schema, on both backends."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from flowlink.store.engine import Store
from flowlink.store.models import Base

# Full-text search is written in each dialect's own SQL by migration 0002 and has no model:
# SQLite's FTS5 table ``events_fts`` (and the shadow tables FTS5 makes for it), PostgreSQL's
# expression index ``ix_events_fulltext``. Alembic's bookkeeping table is not a model either.
NOT_MODELLED_TABLES = ("alembic_version", "events_fts")
NOT_MODELLED_INDEXES = ("ix_events_fulltext",)


def _include(obj: Any, name: str | None, kind: str, reflected: bool, _compare_to: Any) -> bool:
    if kind == "table" and reflected and name is not None:
        return not name.startswith(NOT_MODELLED_TABLES)
    if kind == "index" and reflected:
        return name not in NOT_MODELLED_INDEXES
    return True


def _differences(store: Store) -> list[Any]:
    with store.engine.connect() as connection:
        context = MigrationContext.configure(
            connection,
            opts={
                "compare_type": True,
                "compare_server_default": False,
                "include_object": _include,
            },
        )
        return list(compare_metadata(context, Base.metadata))


def test_models_match_the_migrated_store(store: Store) -> None:
    differences = _differences(store)
    assert differences == [], "models and migrations disagree:\n" + "\n".join(
        repr(d) for d in differences
    )
