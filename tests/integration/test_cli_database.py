"""Commands other than `run` and `db upgrade` open existing databases only, and name the one they opened.

A newcomer ran `audit series UID` with a config that was not read: the command created an empty
./node-data/node.db and answered "not found". Now: no database is created or migrated by a read (or
requeue) command; a missing database, a database without the node's schema, or one at an older schema is
refused with a message naming the URL (password hidden) and what to run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import Engine, make_url

from node.cli import main
from node.db.migrate import alembic_config
from node.db.session import make_engine
from tests.peers import free_port

READ_COMMANDS = [
    ["audit", "series", "1.2.826.0.1.3680043.8.498.99"],
    ["audit", "recent"],
    ["deliveries", "list"],
    ["deliveries", "retry", "42"],
    ["series", "complete", "1.2.826.0.1.3680043.8.498.99"],
]
IDS = [" ".join(c[:2]) for c in READ_COMMANDS]


def config_for(tmp_path: Path, database_url: str | None = None) -> Path:
    config = tmp_path / "node.yaml"
    lines = [f"data_dir: {tmp_path / 'data'}", "classify: {enabled: false}"]
    if database_url:
        lines.append(f"database_url: '{database_url}'")
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return config


def display_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def tables(url: str) -> list[str]:
    engine = make_engine(url)
    try:
        return sorted(inspect(engine).get_table_names())
    finally:
        engine.dispose()


@pytest.mark.parametrize("argv", READ_COMMANDS, ids=IDS)
def test_a_missing_sqlite_database_is_not_created(
    argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    data_dir = tmp_path / "wrong-place"
    assert main([*argv, "--data-dir", str(data_dir)]) == 2
    err = capsys.readouterr().err
    assert f"sqlite:///{data_dir / 'node.db'}" in err
    assert "no node database" in err and "db upgrade" in err
    assert not data_dir.exists()
    assert not (tmp_path / "node-data").exists()


@pytest.mark.parametrize("argv", READ_COMMANDS, ids=IDS)
def test_an_empty_database_is_refused_and_left_empty(
    argv: list[str], db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SQLite: the file must exist; PostgreSQL: the node's schema must exist. Neither is created."""
    if db_url.startswith("sqlite"):
        Path(db_url.split("///", 1)[1]).touch()  # an empty file, as the old read commands left behind
    config = config_for(tmp_path, db_url)
    assert main([*argv, "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert display_url(db_url) in err
    assert "no node schema" in err and "db upgrade" in err
    assert tables(db_url) == []


def test_an_older_schema_is_refused_with_the_upgrade_hint(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = make_engine(db_url)
    command.upgrade(alembic_config(db_url), "0001")
    config = config_for(tmp_path, db_url)
    try:
        assert main(["audit", "recent", "--config", str(config)]) == 2
        err = capsys.readouterr().err
        assert display_url(db_url) in err
        assert "schema revision 0001" in err and f"{head_revision()}" in err
        assert "dicom-node db upgrade" in err
        assert current_revision(engine) == "0001"  # nothing migrated behind the operator's back

        assert main(["db", "upgrade", "--config", str(config)]) == 0
        assert current_revision(engine) == head_revision()
        assert main(["audit", "recent", "--config", str(config)]) == 0
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["audit", "series", "1.2.826.0.1.3680043.8.498.99"], "not found"),
        (["deliveries", "retry", "42"], "not found"),
        (["series", "complete", "1.2.826.0.1.3680043.8.498.99"], "not known"),
    ],
    ids=["audit series", "deliveries retry", "series complete"],
)
def test_not_found_names_the_database(
    argv: list[str], expected: str, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = config_for(tmp_path, db_url)
    assert main(["db", "upgrade", "--config", str(config)]) == 0
    capsys.readouterr()
    assert main([*argv, "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert f"(database: {display_url(db_url)})" in err


def test_db_upgrade_creates_the_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data_dir = tmp_path / "new"
    assert main(["db", "upgrade", "--data-dir", str(data_dir)]) == 0
    assert f"sqlite:///{data_dir / 'node.db'}" in capsys.readouterr().out
    assert "audit_events" in tables(f"sqlite:///{data_dir / 'node.db'}")


def test_the_password_is_hidden_in_messages(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("psycopg")
    url = f"postgresql+psycopg://node:s3cret-pw@127.0.0.1:{free_port()}/node"
    config = config_for(tmp_path, url)
    assert main(["audit", "recent", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"postgresql+psycopg://node:***@127.0.0.1:{url.rsplit(':', 1)[1]}" in err
    assert "s3cret-pw" not in err
