"""The peer policy of tests/conftest.py: a missing peer skips locally and fails under CI=true."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.conftest import in_ci, peer_missing, require_peer
from tests.pgserver import PostgresUnavailable, find_bindir

ABSENT = "no-such-program-for-node-tests"


@pytest.mark.parametrize("value", ["true", "TRUE", "1", "yes"])
def test_ci_values_that_mean_ci(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    assert in_ci()


@pytest.mark.parametrize("value", ["", "false", "0"])
def test_ci_values_that_do_not(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    assert not in_ci()


def test_missing_peer_skips_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=rf"{ABSENT} not found on PATH \(apt-get install pkg\)"):
        require_peer(ABSENT, package="pkg")


def test_missing_peer_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=rf"CI=true and a required peer is missing: {ABSENT}"):
        require_peer(ABSENT)
    with pytest.raises(pytest.fail.Exception, match="the Orthanc plugin"):
        peer_missing("the Orthanc plugin is absent")


def test_present_peer_is_found_in_search_dirs_first(tmp_path: Path) -> None:
    fake = tmp_path / "python3"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert require_peer("python3", search_dirs=[tmp_path]) == str(fake)
    assert Path(require_peer(Path(sys.executable).name, search_dirs=[tmp_path / "nothing"])).is_file()


def test_postgres_bindir_must_hold_the_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PG_BINDIR", str(tmp_path))
    monkeypatch.setattr("glob.glob", lambda pattern: [])
    with pytest.raises(PostgresUnavailable, match="apt-get install postgresql"):
        find_bindir()
