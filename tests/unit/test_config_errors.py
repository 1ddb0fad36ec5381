"""Config file errors name the file, the line and the field, with "did you mean", like rules errors.

A newcomer saw `recieve: Extra inputs are not permitted` and had to find the line themselves.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from node.cli import main
from node.config import load_settings
from node.errors import ConfigError


def config_error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "node.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    return str(caught.value)


def test_unknown_top_level_key(tmp_path: Path) -> None:
    message = config_error(tmp_path, "data_dir: /tmp/x\nrecieve:\n  port: 104\n")
    assert message == (
        f"{tmp_path / 'node.yaml'}:2: field 'recieve': unknown key 'recieve' (did you mean 'receive'?)"
    )


def test_unknown_nested_key_gets_the_keys_of_its_own_section(tmp_path: Path) -> None:
    message = config_error(tmp_path, "receive:\n  ae_title: NODE\n  prot: 104\n")
    assert message.endswith(":3: field 'receive.prot': unknown key 'prot' (did you mean 'port'?)")


def test_unknown_key_in_a_list_item(tmp_path: Path) -> None:
    text = "receive:\n  allowed_callers:\n    - ae_title: CT1\n    - ae_titel: CT2\n"
    message = config_error(tmp_path, text)
    assert message.endswith(
        ":4: field 'receive.allowed_callers[1].ae_titel': unknown key 'ae_titel' (did you mean 'ae_title'?)"
    )


def test_wrong_type_names_what_was_given(tmp_path: Path) -> None:
    message = config_error(tmp_path, "forward:\n  workers: many\n")
    assert message.endswith(":2: field 'forward.workers': expected a whole number; got the text 'many'")


def test_a_section_that_is_not_a_mapping(tmp_path: Path) -> None:
    message = config_error(tmp_path, "completion: 30\n")
    assert message.endswith(":1: field 'completion': expected a mapping of settings; got 30")


def test_bad_choice_suggests_the_close_one(tmp_path: Path) -> None:
    message = config_error(tmp_path, "receive:\n  duplicate_policy: replce\n")
    assert (
        ":2: field 'receive.duplicate_policy': expected 'replace' or 'keep_first'; got the text 'replce'"
        in message
    )
    assert "(did you mean 'replace'?)" in message


def test_out_of_range_and_validator_messages(tmp_path: Path) -> None:
    message = config_error(tmp_path, "receive:\n  port: 70000\n  ae_title: 'WAY TOO LONG FOR AN AE'\n")
    assert "2 problems" in message
    assert ":2: field 'receive.port': must be less than or equal to 65535; got 70000" in message
    assert ":3: field 'receive.ae_title': invalid AE title 'WAY TOO LONG FOR AN AE'" in message


def test_several_problems_are_listed_together_in_file_order(tmp_path: Path) -> None:
    text = "forward:\n  workers: 0\n  max_atempts: 3\nrecieve: {}\nclassify:\n  enabled: maybe\n"
    message = config_error(tmp_path, text)
    lines = message.splitlines()
    assert lines[0] == f"{tmp_path / 'node.yaml'}: 4 problems:"
    assert [line.split(": field ")[0].rsplit(":", 1)[1] for line in lines[1:]] == ["2", "3", "4", "6"]
    assert "did you mean 'max_attempts'" in lines[2]
    assert "expected true or false; got the text 'maybe'" in lines[4]


def test_yaml_syntax_error_and_duplicate_keys_have_lines(tmp_path: Path) -> None:
    assert ":3: not valid YAML" in config_error(tmp_path, "receive:\n  port: 1\n bad: [\n")
    duplicate = config_error(tmp_path, "receive:\n  port: 1\n  port: 2\n")
    assert ":3: not valid YAML" in duplicate and "duplicate key 'port'" in duplicate


def test_the_command_prints_the_located_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "node.yaml"
    config.write_text("recieve:\n  port: 104\n", encoding="utf-8")
    assert main(["--config", str(config), "audit", "recent"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        f"configuration error: {config}:1: field 'recieve': unknown key 'recieve' (did you mean 'receive'?)"
    )


def test_yaml_1_1_words_keep_their_meaning_for_booleans(tmp_path: Path) -> None:
    """The YAML 1.2 loader (shared with the rules) reads `yes` as text; pydantic still takes it as true."""
    path = tmp_path / "node.yaml"
    path.write_text("classify:\n  enabled: no\n  fp16: yes\nreceive:\n  ae_title: 'NODE'\n", encoding="utf-8")
    settings = load_settings(path)
    assert settings.classify.enabled is False and settings.classify.fp16 is True


def test_relative_paths_are_relative_to_the_file_and_overrides_merge(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "node.yaml"
    path.parent.mkdir()
    path.write_text("data_dir: data\nreceive:\n  ae_title: SITE\n  port: 104\n", encoding="utf-8")
    settings = load_settings(path, {"receive": {"port": 11113}})
    assert settings.data_dir == (tmp_path / "etc" / "data").resolve()
    assert (settings.receive.ae_title, settings.receive.port) == ("SITE", 11113)
