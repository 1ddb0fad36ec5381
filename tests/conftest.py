"""Root fixtures: the peer policy (skip locally, fail under CI), PostgreSQL, and DB-agnostic database URLs.

Peer policy, in one place: a test that needs an external program (dcmtk, Orthanc, PostgreSQL) calls
`require_peer("storescp", package="dcmtk")`. Where the program is absent the test is skipped with a clear
reason, except under CI (environment CI=true), where it fails: `.ci/run` installs every peer, so a
missing one is a broken CI machine, and CI must not go green by skipping. Import it from anywhere in the
tests as `from tests.conftest import require_peer, peer_missing, in_ci`.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import pytest

from tests.pgserver import PostgresServer, PostgresUnavailable

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

logger = logging.getLogger(__name__)


# --- peer policy ---------------------------------------------------------------------------------


def in_ci() -> bool:
    """True when the environment says CI (CI=true/1/yes, as GitHub, GitLab and `.ci/run` set it)."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def peer_missing(reason: str) -> NoReturn:
    """A required external peer is absent: skip with `reason`, or fail under CI."""
    if in_ci():
        pytest.fail(f"CI=true and a required peer is missing: {reason}", pytrace=False)
    pytest.skip(reason)


def require_peer(
    binary_name: str, *, package: str | None = None, search_dirs: Iterable[str | os.PathLike[str]] = ()
) -> str:
    """Absolute path of an external program, looked up in `search_dirs` first, then on PATH.

    Absent: the calling test is skipped (locally) or failed (CI=true), with a reason naming the package.
    """
    for directory in search_dirs:
        candidate = Path(directory) / binary_name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(binary_name)
    if found:
        return found
    hint = f" (apt-get install {package})" if package else ""
    peer_missing(f"{binary_name} not found on PATH{hint}")


def pytest_report_header(config: pytest.Config) -> str:
    policy = "missing peers FAIL (CI=true)" if in_ci() else "missing peers are skipped (CI not set)"
    return f"peer policy: {policy}"


# --- PostgreSQL ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL cluster for the whole session (see tests/pgserver.py)."""
    try:
        server = PostgresServer.start()
    except PostgresUnavailable as exc:
        peer_missing(str(exc))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    """SQLAlchemy URL of the database `node_test` on the session's server (shared by the session)."""
    return postgres_server.create_database("node_test")


_db_counter = itertools.count(1)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.interop)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database, fresh for each test: a SQLite file always; PostgreSQL when it can run.

    Tests taking this fixture run once per backend (ids `[sqlite]` and `[postgres]`).
    """
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'node.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database(f"node_test_{next(_db_counter)}")


@pytest.fixture
def db_engine(db_url: str) -> Iterator[Engine]:
    """An engine on `db_url` with the schema migrated to head; disposed after the test."""
    from node.db.migrate import upgrade
    from node.db.session import make_engine

    engine = make_engine(db_url)
    upgrade(engine)
    try:
        yield engine
    finally:
        engine.dispose()
