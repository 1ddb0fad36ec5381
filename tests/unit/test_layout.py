"""The package layout keeps the flow's contracts (DESIGN.md, issue 7), checked on the source itself:

- delivery executes a frozen plan: node.deliver imports nothing of the rules or the router;
- the inference path (node.classify) imports nothing of the training code (node.training);
- no module imports another module's underscore (private) names;
- only node.pynetdicom_tuning reaches into pynetdicom's private modules.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("node", "tests", "bench", "deploy", "training")


def python_files(*roots: str) -> Iterator[Path]:
    for root in roots:
        yield from sorted((REPO / root).rglob("*.py"))


def imports(path: Path) -> Iterator[tuple[str, list[str]]]:
    """(module, names) of every import in a file; `import a.b` gives ("a.b", [])."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []


def imported_modules(path: Path) -> set[str]:
    found = set()
    for module, names in imports(path):
        found.add(module)
        found.update(f"{module}.{name}" for name in names)
    return found


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("node/deliver", ("node.rules", "node.routing")),
        ("node/classify", ("node.training",)),
        ("node/receive", ("node.rules", "node.routing", "node.deliver", "node.training")),
    ],
)
def test_package_does_not_import(package: str, forbidden: tuple[str, ...]) -> None:
    offenders = {
        f"{path.relative_to(REPO)} imports {module}"
        for path in python_files(package)
        for module in imported_modules(path)
        if any(module == f or module.startswith(f + ".") for f in forbidden)
    }
    assert not offenders, sorted(offenders)


def test_no_module_imports_another_modules_private_names() -> None:
    offenders = [
        f"{path.relative_to(REPO)}: from {module} import {name}"
        for path in python_files(*SOURCES)
        for module, names in imports(path)
        if module.split(".")[0] in ("node", "tests", "bench")
        for name in names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert not offenders, offenders


def test_only_the_tuning_module_reaches_into_pynetdicom_internals() -> None:
    """Every change to pynetdicom's behaviour lives in node/pynetdicom_tuning.py (its private modules and
    names are imported nowhere else in the node)."""
    offenders = [
        f"{path.relative_to(REPO)}: {module} {names}"
        for path in python_files("node")
        if path.name != "pynetdicom_tuning.py"
        for module, names in imports(path)
        if module.startswith("pynetdicom")
        and (any(part.startswith("_") for part in module.split(".")) or any(n.startswith("_") for n in names))
    ]
    assert not offenders, offenders
