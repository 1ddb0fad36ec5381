"""The README and docs/ agree with the code: the command's name, the README's commands in order, the
examples they show, what is not implemented, and the licence."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from node.cli import main

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
README = (REPO / "README.md").read_text(encoding="utf-8")
DOCS = {path: path.read_text(encoding="utf-8") for path in sorted((REPO / "docs").glob("*.md"))}
USER_FACING = {
    REPO / "README.md": README,
    **DOCS,
    **{p: p.read_text(encoding="utf-8") for p in sorted((REPO / "deploy").rglob("*")) if p.is_file()},
    **{p: p.read_text(encoding="utf-8") for p in sorted((REPO / "rules").glob("*.yaml"))},
}
SUBCOMMANDS = "run|rules|audit|deliveries|series|db|train|evaluate|crossval|health|--help|--config"
# `node run`, $ node audit ..., bin/node, "node", "run" ...: the old command name, as a command.
OLD_COMMAND = re.compile(
    rf"(^|[`($]|\$ |:\s+|bin/|exec \S+ )node ({SUBCOMMANDS})\b|\"node\", \"run\"|bin/node\b"
)


def shell_blocks(text: str) -> list[str]:
    return re.findall(r"```(?:sh|bash|console)?\n(.*?)```", text, re.S)


def test_no_document_names_the_old_command() -> None:
    hits = [
        f"{path.relative_to(REPO)}:{n}: {line.strip()}"
        for path, text in USER_FACING.items()
        for n, line in enumerate(text.splitlines(), 1)
        if OLD_COMMAND.search(line) and "old name" not in line  # deployment.md: the rename itself
    ]
    assert hits == []


def test_readme_runs_only_commands_the_install_provides() -> None:
    scripts = set(PYPROJECT["project"]["scripts"])
    used = set(re.findall(r"\.venv/bin/([\w.-]+)", README))
    assert used <= scripts | {"python", "pip", "ruff", "mypy", "activate"}, used - scripts
    assert "dicom-node" in used


def test_readme_installs_the_test_extras_before_running_the_tests() -> None:
    """After the README's install (`pip install -e .`), `python -m pytest` said "No module named pytest"."""
    text = "\n".join(shell_blocks(README)) + "\n" + README
    first_test = min(
        (m.start() for m in re.finditer(r"-m pytest|scripts/test|\.ci/run", README)), default=None
    )
    assert first_test is not None, "the README says how to run the tests"
    before = README[:first_test]
    assert (
        re.search(r"pip install (-e )?['\"]?\.\[test\]", before) or ".ci/run" in README[first_test:][:20]
    ), "the tests are run before the test extras are installed"
    assert "[test]" in text


def test_readme_ci_command_says_it_needs_root_or_skip_apt() -> None:
    line = next(line for line in README.splitlines() if ".ci/run" in line and "bash" in line)
    assert "CI_SKIP_APT=1" in README and ("sudo" in line or "root" in README)


def test_named_rules_files_exist() -> None:
    named = {
        match
        for text in [README, *DOCS.values()]
        for match in re.findall(r"\brules/[\w.-]+\.(?:yaml|json)\b", text)
    }
    missing = sorted(name for name in named if not (REPO / name).is_file())
    assert missing == []


def test_dry_run_is_not_called_headers_only() -> None:
    """The dry run classifies the pixels unless --no-classify: docs must not say it reads headers only."""
    for path, text in [(REPO / "README.md", README), *DOCS.items()]:
        for paragraph in re.split(r"\n\s*\n", text):
            if re.search(r"headers?\s+only", paragraph, re.I):
                assert "--no-classify" in paragraph, f"{path.name}: {paragraph[:300]}"


def test_stow_rs_ingress_is_only_mentioned_as_not_implemented() -> None:
    """STOW-RS out (`kind: dicomweb` destinations) exists; receiving over STOW-RS is not there yet."""
    for path, text in [(REPO / "README.md", README), *DOCS.items()]:
        for paragraph in re.split(r"\n\s*\n", text):
            receiving = re.search(r"endpoint|ingress|receiv|ingest", paragraph, re.I)
            if re.search(r"STOW", paragraph) and receiving:
                assert re.search(r"not (yet )?implemented", paragraph), f"{path.name}: {paragraph[:200]}"


def test_rules_check_without_a_path_is_documented() -> None:
    rules_doc = DOCS[REPO / "docs" / "rules.md"]
    assert "rules/rules.yaml" not in rules_doc
    assert re.search(r"rules_path.{0,300}give a rules file", rules_doc, re.S)


def test_the_error_examples_in_the_rules_docs_are_what_the_command_prints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each file shown under "Errors" (a ```yaml block) gives exactly the output shown after it."""
    section = DOCS[REPO / "docs" / "rules.md"].split("## Errors", 1)[1].split("\n## ", 1)[0]
    examples = re.findall(
        r"```yaml\n(.*?)```\s*```\n\$ dicom-node rules check (\S+)\n(.*?)```", section, re.S
    )
    assert len(examples) >= 2
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NODE_CONFIG", raising=False)
    for rules_text, name, shown in examples:
        Path(name).write_text(rules_text, encoding="utf-8")
        assert main(["rules", "check", name]) == 1
        assert capsys.readouterr().err == shown, name


# --- licence -------------------------------------------------------------------------------------


def test_licence_file_and_metadata_agree() -> None:
    licence = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert "LICENSE" in PYPROJECT["project"]["license-files"]


def test_the_default_install_has_no_gpl_dependency() -> None:
    names = [
        re.split(r"[<>=\[; ]", dep, maxsplit=1)[0].lower() for dep in PYPROJECT["project"]["dependencies"]
    ]
    assert "pylibjpeg-libjpeg" not in names
    assert {"python-gdcm", "pyjpegls"} <= set(names)
    assert PYPROJECT["project"]["optional-dependencies"]["gpl-decoders"] == ["pylibjpeg-libjpeg>=2.1"]
    for extra in ("test", "postgres"):
        assert not any("libjpeg" in dep for dep in PYPROJECT["project"]["optional-dependencies"][extra])


def test_readme_explains_the_licence_and_the_licences_that_matter() -> None:
    section = README.split("## Licence", 1)[1].split("\n## ", 1)[0]
    for name in (
        "Apache-2.0",
        "pylibjpeg-libjpeg",
        "GPL",
        "gpl-decoders",
        "python-gdcm",
        "pyjpegls",
        "torch",
        "MONAI",
        "pydicom",
        "pynetdicom",
        "CC BY-NC",
        "docs/model-card.md",
    ):
        assert name in section, name


def test_model_card_states_the_training_data_licences_of_the_starter_weights() -> None:
    card = DOCS[REPO / "docs" / "model-card.md"]
    assert "CC BY-NC" in card and "NSCLC-Radiomics" in card
    assert re.search(r"none of (its|the) training (series|data)[^.]*non-commercial", card, re.I)
