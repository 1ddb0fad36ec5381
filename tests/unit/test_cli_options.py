"""The command line: global options in any position, the command's name, `rules check` without a path."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from node.cli import build_parser, main

REPO = Path(__file__).resolve().parents[2]
COMMAND = "dicom-node"

# (subcommand words, arguments after them) for a sample of commands, nested and not.
COMMANDS = [
    (["run"], []),
    (["audit", "recent"], []),
    (["audit", "series"], ["1.2.3"]),
    (["rules", "check"], []),
    (["deliveries", "list"], []),
    (["deliveries", "retry"], ["7"]),
    (["series", "complete"], ["1.2.3"]),
    (["db", "upgrade"], []),
    (["health"], []),
    (["train"], ["--manifest", "m.csv", "--out", "o"]),
]
OPTIONS = [
    (["--config", "site.yaml"], "config", Path("site.yaml")),
    (["--data-dir", "/srv/d"], "data_dir", Path("/srv/d")),
    (["-v"], "verbose", True),
]


def argv_with(option: list[str], words: list[str], rest: list[str], position: str) -> list[str]:
    if position == "before":
        return [*option, *words, *rest]
    if position == "after":
        return [*words, *rest, *option]
    # between the command group and its subcommand (audit --config X recent)
    return [words[0], *option, *words[1:], *rest]


CASES = [
    pytest.param(position, option, dest, value, words, rest, id=f"{' '.join(words)}-{option[0]}-{position}")
    for words, rest in COMMANDS
    for option, dest, value in OPTIONS
    # a command without subcommands has no "between"
    for position in (["before", "between", "after"] if len(words) > 1 else ["before", "after"])
]


@pytest.mark.parametrize(("position", "option", "dest", "value", "words", "rest"), CASES)
def test_global_options_work_in_every_position(
    position: str, option: list[str], dest: str, value: object, words: list[str], rest: list[str]
) -> None:
    args = build_parser().parse_args(argv_with(option, words, rest, position))
    assert getattr(args, dest, None) == value


def test_an_option_not_given_does_not_reset_one_given_before() -> None:
    args = build_parser().parse_args(["--config", "a.yaml", "--data-dir", "d", "audit", "recent", "-v"])
    assert (args.config, args.data_dir, args.verbose) == (Path("a.yaml"), Path("d"), True)


@pytest.mark.parametrize("position", ["before", "after"])
def test_config_before_or_after_the_command_is_read(
    position: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`dicom-node --config node.yaml rules check` reads node.yaml's rules_path (it used to be ignored)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NODE_CONFIG", raising=False)
    rules = tmp_path / "site-rules.yaml"
    rules.write_text("version: 1\nfallback: {discard: true}\n", encoding="utf-8")
    config = tmp_path / "node.yaml"
    config.write_text(f"data_dir: {tmp_path / 'data'}\nrules_path: {rules}\n", encoding="utf-8")
    option = ["--config", str(config)]
    argv = [*option, "rules", "check"] if position == "before" else ["rules", "check", *option]
    assert main(argv) == 0
    assert str(rules) in capsys.readouterr().out


def test_rules_check_without_a_path_or_a_rules_path_asks_for_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No undocumented default file (rules/rules.yaml): without a path and without rules_path, exit 2."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NODE_CONFIG", raising=False)
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "rules.yaml").write_text("version: 1\nfallback: {discard: true}\n")
    assert main(["rules", "check"]) == 2
    err = capsys.readouterr().err
    assert "give a rules file" in err and "rules_path" in err
    assert "rules/rules.yaml" not in err


def test_rules_test_without_rules_asks_for_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NODE_CONFIG", raising=False)
    assert main(["rules", "test", "--no-classify", str(tmp_path)]) == 2
    assert "give a rules file" in capsys.readouterr().err


# --- the command's name -------------------------------------------------------------------------


def test_console_script_does_not_collide_with_nodejs() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {COMMAND: "node.cli:main"}


def test_help_names_the_command_as_installed() -> None:
    assert build_parser().prog == COMMAND
    done = subprocess.run(
        [sys.executable, "-m", "node", "--help"], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: {COMMAND} ")
    sub = subprocess.run(
        [sys.executable, "-m", "node", "audit", "recent", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert sub.stdout.startswith(f"usage: {COMMAND} audit recent ")
