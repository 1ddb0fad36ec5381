"""The migrations build exactly the schema the models describe, on SQLite and PostgreSQL (a column or
index added to node/db/models.py without a migration, or the other way round, fails here)."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Engine

from node.db.models import Base


def test_migrated_schema_equals_the_models(db_engine: Engine) -> None:
    with db_engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert differences == []
