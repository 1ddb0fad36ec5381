"""The fuzzer's parts: the mutators change what they are given, deterministically per seed, and the
readability checks do tell a complete file from a damaged one (so the short run's 0 can fail)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.fuzz import checks
from tests.fuzz.dataset_mutators import DATASET_MUTATORS, elements, encode
from tests.fuzz.pdu_mutators import PDU_MUTATORS, Association
from tests.fuzz.stow_mutators import CONTENT_TYPE, STOW_MUTATORS, Part10, body
from tests.nodeutil import synthetic_ct
from tests.webutil import part10


@pytest.mark.parametrize("name", sorted(DATASET_MUTATORS))
def test_dataset_mutator_changes_and_repeats(name: str) -> None:
    encoded = encode(synthetic_ct(rows=32), explicit=True)
    first = [DATASET_MUTATORS[name](random.Random(f"s:{i}"), encoded) for i in range(20)]
    again = [DATASET_MUTATORS[name](random.Random(f"s:{i}"), encoded) for i in range(20)]
    assert first == again
    assert any(out != encoded.data for out in first)


def test_element_walker_finds_pixel_data_last() -> None:
    for explicit in (True, False):
        found = elements(encode(synthetic_ct(rows=16), explicit=explicit))
        assert found[-1].tag == (0x7FE0, 0x0010) and found[-1].length == 16 * 16 * 2


@pytest.mark.parametrize("name", sorted(PDU_MUTATORS))
def test_pdu_mutator_changes_the_association(name: str) -> None:
    ds = synthetic_ct()
    association = Association(str(ds.SOPInstanceUID), encode(ds, explicit=True).data)
    valid = b"".join(association.pdus())
    outputs = [b"".join(PDU_MUTATORS[name](random.Random(f"p:{i}"), association)) for i in range(20)]
    assert any(out != valid for out in outputs)


@pytest.mark.parametrize("name", sorted(STOW_MUTATORS))
def test_stow_mutator_changes_the_request(name: str) -> None:
    ds = synthetic_ct()
    data = part10(ds)
    parts = [Part10(data, len(data) - len(encode(ds, explicit=True).data))]
    valid = (CONTENT_TYPE, body([data]), None)
    outputs = [STOW_MUTATORS[name](random.Random(f"w:{i}"), parts) for i in range(20)]
    assert any((o.content_type, o.body, o.declared_length) != valid for o in outputs)


def test_checks_pass_a_complete_file(tmp_path: Path) -> None:
    path = tmp_path / "good.dcm"
    path.write_bytes(part10(synthetic_ct(rows=32)))
    assert checks.pydicom_problem(path) is None
    assert checks.dcmtk_problem(path) is None


def test_checks_catch_short_pixel_data(tmp_path: Path) -> None:
    path = tmp_path / "short.dcm"
    path.write_bytes(part10(synthetic_ct(rows=32))[:-1000])
    assert "pixel data" in (checks.pydicom_problem(path) or "")
    if checks.shutil.which("dcmdump"):
        assert checks.dcmtk_problem(path) is not None


def test_checks_catch_a_wrong_pixel_data_length_that_parses(tmp_path: Path) -> None:
    ds = synthetic_ct(rows=32)
    ds.PixelData = ds.PixelData[:-100]  # consistent encoding, inconsistent image
    path = tmp_path / "inconsistent.dcm"
    path.write_bytes(part10(ds))
    assert "pixel data is" in (checks.pydicom_problem(path) or "")
