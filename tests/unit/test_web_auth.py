"""node.web.auth: PBKDF2 hashes, basic and bearer checks, configuration mistakes, startup warnings."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest

from node.config import WebAuthSettings, WebSettings
from node.errors import ConfigError
from node.web.auth import Authenticator, auth_warnings, hash_password


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _settings(**auth: object) -> WebAuthSettings:
    return WebAuthSettings.model_validate(auth)


def test_hash_password_is_salted_and_verifies_only_the_right_password() -> None:
    first, second = hash_password("pw", iterations=1000), hash_password("pw", iterations=1000)
    assert first != second and first.startswith("pbkdf2_sha256$1000$")
    auth = Authenticator(_settings(kind="basic", users=[{"username": "alice", "password_hash": first}]))
    assert auth.check(_basic("alice", "pw")).user == "alice"
    assert auth.check(_basic("alice", "pw")).ok  # second time: from the cache of verified pairs
    assert not auth.check(_basic("alice", "pW")).ok
    assert not auth.check(_basic("bob", "pw")).ok
    assert auth.check(None).problem == "no Authorization header"
    assert not auth.check("Basic !!!notbase64").ok
    assert not auth.check("Bearer whatever").ok  # bearer not accepted with kind basic
    assert auth.challenge() == 'Basic realm="dicom-node", charset="UTF-8"'


def test_password_file_and_tokens_file(tmp_path: Path) -> None:
    password, tokens = tmp_path / "pw", tmp_path / "tokens"
    password.write_text("from-a-file\n")
    tokens.write_text("first-token\n\nsecond-token\n")
    auth = Authenticator(
        _settings(
            kind="basic_or_bearer",
            users=[{"username": "svc", "password_file": str(password)}],
            tokens_file=str(tokens),
        )
    )
    assert auth.check(_basic("svc", "from-a-file")).ok
    assert auth.check("Bearer second-token").user == "token:2"
    assert not auth.check("Bearer third-token").ok
    tokens.write_text("third-token-rotated\n")  # rotation: read again when the file changes
    assert auth.check("Bearer third-token-rotated").ok
    assert not auth.check("Bearer first-token").ok
    assert "Basic" in auth.challenge() and "Bearer" in auth.challenge()


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        (
            {"kind": "basic", "users": [{"username": "a", "password_hash": "plain-text"}]},
            "invalid password_hash",
        ),
        ({"kind": "basic", "users": [{"username": "a"}]}, "exactly one of password_hash and password_file"),
        ({"kind": "basic", "users": [{"username": "a", "password_file": "/nonexistent/pw"}]}, "cannot read"),
        ({"kind": "bearer", "tokens_file": "/nonexistent/tokens"}, "web.auth.tokens_file"),
    ],
)
def test_configuration_mistakes_are_config_errors(auth: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Authenticator(_settings(**auth))


def test_auth_warnings(tmp_path: Path) -> None:
    assert auth_warnings(WebSettings.model_validate({"auth": {"kind": "none"}}))[0].startswith(
        "web.auth.kind is none"
    )
    assert "every STOW-RS request will be refused" in auth_warnings(WebSettings())[0]
    tokens = tmp_path / "tokens"
    tokens.write_text("t\n")
    tokens.chmod(0o644)
    warned = auth_warnings(
        WebSettings.model_validate({"auth": {"kind": "bearer", "tokens_file": str(tokens)}})
    )
    assert warned == [f"web.auth.tokens_file {tokens} is readable by group or others"]
    tokens.chmod(0o600)
    assert (
        auth_warnings(WebSettings.model_validate({"auth": {"kind": "bearer", "tokens_file": str(tokens)}}))
        == []
    )
    assert not Authenticator(_settings(kind="basic_or_bearer")).check(_basic("a", "b")).ok
    assert Authenticator(_settings(kind="none")).check(None).ok


def test_cli_hash_password_reads_stdin_and_prints_a_usable_hash(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from node.cli import main

    monkeypatch.setattr("sys.stdin", io.StringIO("correct horse\n"))
    assert main(["web", "hash-password"]) == 0
    encoded = capsys.readouterr().out.strip()
    auth = Authenticator(_settings(kind="basic", users=[{"username": "u", "password_hash": encoded}]))
    assert auth.check(_basic("u", "correct horse")).ok
    assert not auth.check(_basic("u", "correct horse\n")).ok
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    assert main(["web", "hash-password"]) == 2
