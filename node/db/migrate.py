"""Run Alembic migrations programmatically (no alembic.ini needed at run time), and check a schema."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy.engine import Engine

from node import COMMAND
from node.db.session import display_url
from node.errors import DatabaseError

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest revision, reusing the engine's connection."""
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def head_revision() -> str:
    """The newest schema revision this version of the node knows."""
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None, "no migrations found"
    return head


def current_revision(engine: Engine) -> str | None:
    """The database's schema revision; None where there is no node schema (no alembic_version table)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def check_schema(engine: Engine) -> None:
    """Raise DatabaseError unless the database has the newest schema. Changes nothing."""
    url = display_url(engine.url.render_as_string(hide_password=False))
    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return
    if current is None:
        raise DatabaseError(
            f"no node database at {url}: it has no node schema. `{COMMAND} run` or `{COMMAND} db upgrade` "
            "creates one; check --config, --data-dir or database_url"
        )
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    try:
        older = any(rev.revision == current for rev in script.iterate_revisions(head, "base"))
    except CommandError:
        older = False
    if older:
        raise DatabaseError(
            f"the database at {url} has schema revision {current}, older than this version's {head}: "
            f"run `{COMMAND} db upgrade` (with the same --config / --data-dir) to migrate it"
        )
    raise DatabaseError(
        f"the database at {url} has schema revision {current}, which this version of the node does not "
        f"know (newest: {head}); it was written by a newer version: upgrade the node"
    )
