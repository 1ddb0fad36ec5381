"""Forwarding real CT series to dcmtk storescp: every instance arrives, pixel data as it should be."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLSLossless,
    RLELossless,
)

from node.config import ForwardSettings
from node.deliver.base import InstanceFile
from node.deliver.destinations import DimseDestination
from node.deliver.dimse import DimseSender
from node.pynetdicom_tuning import install
from tests.peers import StoreScp, ct_files, instance_files, require_binary, run_storescp

pytestmark = pytest.mark.interop


@pytest.fixture(autouse=True)
def tuned_pynetdicom() -> None:
    """DimseSender relies on node.pynetdicom_tuning.install() (NodeService.start calls it)."""
    install()


SETTINGS = ForwardSettings(dimse_timeout=10.0, acse_timeout=5.0, network_timeout=10.0)


def to(scp: StoreScp) -> DimseDestination:
    return DimseDestination(name="storescp", ae_title=scp.ae_title, host="127.0.0.1", port=scp.port)


def received_by_uid(scp: StoreScp) -> dict[str, Path]:
    out = {}
    for path in scp.files():
        out[str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = path
    return out


def send(scp: StoreScp, files: list[InstanceFile], fast_path: bool = True) -> list[int]:
    acknowledged: list[int] = []
    outcome = DimseSender(SETTINGS, "NODE", fast_path=fast_path).send(
        to(scp), files, lambda f, s: acknowledged.append(f.instance_id)
    )
    assert outcome.ok, outcome.error
    assert outcome.sent == acknowledged == [f.instance_id for f in files]
    assert set(outcome.statuses.values()) == {0}
    return acknowledged


@pytest.mark.parametrize(
    ("series", "fast_path"),
    [("itkelastix_chest", True), ("lidc0001_full", True), ("itkelastix_chest", False)],
)
def test_series_arrives_byte_identical(tmp_path: Path, series: str, fast_path: bool) -> None:
    files = instance_files(ct_files(series))
    with run_storescp(tmp_path / "in") as scp:
        send(scp, files, fast_path)
        got = received_by_uid(scp)
    assert set(got) == {f.sop_instance_uid for f in files}
    for f in files:
        assert bytes(dcmread(got[f.sop_instance_uid]).PixelData) == bytes(dcmread(f.path).PixelData)


def test_explicit_series_to_implicit_only_peer(tmp_path: Path) -> None:
    """lidc0001_full is stored Explicit VR LE; a peer accepting only Implicit gets it re-encoded."""
    files = instance_files(ct_files("lidc0001_full")[:20])
    assert {f.transfer_syntax_uid for f in files} == {ExplicitVRLittleEndian}
    with run_storescp(tmp_path / "in", accept="implicit") as scp:
        send(scp, files)
        got = received_by_uid(scp)
    for f in files:
        received = dcmread(got[f.sop_instance_uid])
        assert received.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
        assert bytes(received.PixelData) == bytes(dcmread(f.path).PixelData)


def compressed_copies(tmp_path: Path, tool: str, count: int) -> list[Path]:
    binary = require_binary(tool)
    out_dir = tmp_path / tool
    out_dir.mkdir()
    copies = []
    for source in ct_files("itkelastix_chest")[:count]:
        target = out_dir / source.name
        subprocess.run([binary, str(source), str(target)], check=True, capture_output=True)
        copies.append(target)
    return copies


@pytest.mark.parametrize(("tool", "syntax"), [("dcmcrle", RLELossless), ("dcmcjpls", JPEGLSLossless)])
def test_compressed_copy_decompressed_for_uncompressed_peer(tmp_path: Path, tool: str, syntax: str) -> None:
    copies = compressed_copies(tmp_path, tool, 8)
    files = instance_files(copies)
    assert {f.transfer_syntax_uid for f in files} == {syntax}
    originals = {str(dcmread(p).SOPInstanceUID): p for p in ct_files("itkelastix_chest")[:8]}
    with run_storescp(tmp_path / "in", accept="uncompressed") as scp:
        send(scp, files)
        got = received_by_uid(scp)
    assert set(got) == set(originals)
    for uid, path in got.items():
        received = dcmread(path)
        assert not received.file_meta.TransferSyntaxUID.is_compressed
        np.testing.assert_array_equal(received.pixel_array, dcmread(originals[uid]).pixel_array)


def test_compressed_copy_sent_as_stored_when_accepted(tmp_path: Path) -> None:
    files = instance_files(compressed_copies(tmp_path, "dcmcrle", 5))
    with run_storescp(tmp_path / "in", accept="all") as scp:
        send(scp, files)
        got = received_by_uid(scp)
    for f in files:
        received = dcmread(got[f.sop_instance_uid])
        assert received.file_meta.TransferSyntaxUID == RLELossless
        assert bytes(received.PixelData) == bytes(dcmread(f.path).PixelData)
