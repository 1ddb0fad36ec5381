"""The private dictionary is one list: the code (node/writeback/private.py ELEMENTS), its page
(docs/private-dictionary.md) and the dcmtk dictionary file (deploy/dcmtk/dicom-node.dic) agree."""

from __future__ import annotations

import re
from pathlib import Path

from node.writeback import private

REPO = Path(__file__).resolve().parents[2]


def test_the_page_lists_exactly_the_elements_the_code_writes() -> None:
    page = (REPO / "docs" / "private-dictionary.md").read_text(encoding="utf-8")
    table = [line for line in page.splitlines() if re.match(r"\| \(0077,", line)]
    assert table == private.markdown_rows()
    assert private.PRIVATE_CREATOR in page and "0x0077" in page


def test_the_dcmtk_dictionary_file_is_generated_from_the_same_table() -> None:
    shipped = (REPO / "deploy" / "dcmtk" / "dicom-node.dic").read_text(encoding="utf-8")
    assert shipped == private.dcmtk_dictionary()


def test_offsets_are_unique_and_fit_a_block() -> None:
    offsets = [e.offset for e in private.ELEMENTS]
    assert len(set(offsets)) == len(offsets) and all(0 < o <= 0xFF for o in offsets)
    assert len({e.keyword for e in private.ELEMENTS}) == len(offsets)
    assert {e.vr for e in private.ELEMENTS} <= {"CS", "LO", "LT", "DS", "UT"}
