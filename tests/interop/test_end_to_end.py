"""The issue's end-to-end checks with real peers: storescu -> node -> Orthanc and storescp."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from sqlalchemy import select

from node.db.models import Instance
from node.deliveries import retry_job
from tests.interop.e2e import all_delivered, events, jobs_in, pixels_by_sop, storescu, write_rules
from tests.nodeutil import make_settings, running_node, wait_for
from tests.peers import ct_files, free_port, require_binary, run_orthanc, run_storescp

pytestmark = pytest.mark.interop


def test_two_ct_series_reach_orthanc_and_storescp_byte_identical(tmp_path: Path) -> None:
    files = ct_files("itkelastix_chest") + ct_files("lidc0001_full")
    with run_storescp(tmp_path / "storescp") as scp, run_orthanc(tmp_path / "orthanc") as orthanc:
        rules = write_rules(
            tmp_path / "rules.yaml",
            {
                "pacs": {"ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port},
                "archive": {"ae_title": scp.ae_title, "host": "127.0.0.1", "port": scp.port},
            },
        )
        settings = make_settings(tmp_path, rules_path=str(rules), completion={"quiet_seconds": 1.0})
        with running_node(settings) as node:
            storescu(node.port, files)
            wait_for(lambda: all_delivered(node, 4), timeout=180, what="4 deliveries (2 series x 2 peers)")
            assert len(events(node, "series.complete")) == 2

        sent = pixels_by_sop(files)
        at_storescp = pixels_by_sop(scp.files())
        assert at_storescp == sent
        at_orthanc = {
            uid: bytes(pydicom.dcmread(pydicom.filebase.DicomBytesIO(data)).PixelData)
            for uid, data in orthanc.rest.files_by_sop_instance_uid().items()
        }
        assert at_orthanc == sent


def test_compressed_copy_arrives_decompressed_at_uncompressed_only_peer(tmp_path: Path) -> None:
    dcmcrle = require_binary("dcmcrle")
    import subprocess

    originals = ct_files("itkelastix_chest")[:12]
    compressed = []
    for f in originals:
        target = tmp_path / "rle" / f.name
        target.parent.mkdir(exist_ok=True)
        subprocess.run([dcmcrle, str(f), str(target)], check=True)
        compressed.append(target)
    assert pydicom.dcmread(compressed[0]).file_meta.TransferSyntaxUID == pydicom.uid.RLELossless
    with run_storescp(tmp_path / "storescp", accept="uncompressed") as scp:
        rules = write_rules(
            tmp_path / "rules.yaml",
            {
                "plain": {"ae_title": scp.ae_title, "host": "127.0.0.1", "port": scp.port},
            },
        )
        settings = make_settings(tmp_path, rules_path=str(rules), completion={"quiet_seconds": 0.5})
        with running_node(settings) as node:
            storescu(node.port, compressed, extra=("-xr",))
            with node.sessions() as session:
                stored = set(session.scalars(select(Instance.transfer_syntax_uid)))
            assert stored == {pydicom.uid.RLELossless}  # the node received and keeps RLE as sent
            wait_for(
                lambda: all_delivered(node, 1), timeout=120, what="delivery to the uncompressed-only peer"
            )
        received = {str(pydicom.dcmread(f).SOPInstanceUID): pydicom.dcmread(f) for f in scp.files()}
        assert len(received) == len(originals)
        for f in originals:
            source = pydicom.dcmread(f)
            got = received[str(source.SOPInstanceUID)]
            assert not got.file_meta.TransferSyntaxUID.is_compressed
            assert np.array_equal(got.pixel_array, source.pixel_array)


def test_destination_down_then_up_is_retried_with_backoff(tmp_path: Path) -> None:
    files = ct_files("kits00072_arterial_slab")
    port = free_port()
    rules = write_rules(
        tmp_path / "rules.yaml", {"late": {"ae_title": "STORESCP", "host": "127.0.0.1", "port": port}}
    )
    settings = make_settings(
        tmp_path,
        rules_path=str(rules),
        completion={"quiet_seconds": 0.5},
        forward={"max_attempts": 20, "backoff_initial_seconds": 0.2, "backoff_max_seconds": 1.0},
    )
    with running_node(settings) as node:
        storescu(node.port, files)
        wait_for(lambda: len(events(node, "delivery.retry")) >= 2, timeout=60, what="two failed attempts")
        with run_storescp(tmp_path / "storescp", port=port) as scp:
            wait_for(lambda: all_delivered(node, 1), timeout=60, what="delivery once the peer is up")
            assert len(scp.files()) == len(files)
        attempts = events(node, "delivery.attempt")
        assert attempts[0].details["error"] and "refused" in attempts[0].message.lower() + str(
            attempts[0].details
        )


def test_rejecting_destination_dead_letters_then_requeue_delivers(tmp_path: Path) -> None:
    files = ct_files("kits00072_arterial_slab")
    dicom_port, http_port = free_port(), free_port()
    rules = write_rules(
        tmp_path / "rules.yaml", {"strict": {"ae_title": "ORTHANC", "host": "127.0.0.1", "port": dicom_port}}
    )
    settings = make_settings(
        tmp_path,
        rules_path=str(rules),
        completion={"quiet_seconds": 0.5},
        forward={"max_attempts": 2, "backoff_initial_seconds": 0.2},
    )
    with running_node(settings) as node:
        with run_orthanc(
            tmp_path / "o1",
            dicom_port=dicom_port,
            http_port=http_port,
            always_allow_store=False,
            dicomweb=False,
        ):
            storescu(node.port, files)
            wait_for(lambda: events(node, "delivery.dead_letter"), timeout=60, what="dead letter")
        [job] = jobs_in(node, "deliver")
        assert job.state == "failed" and job.attempts <= 2
        known = {"node": ("NODE", "127.0.0.1", node.port)}
        with run_orthanc(
            tmp_path / "o2",
            dicom_port=dicom_port,
            http_port=http_port,
            always_allow_store=False,
            known_modalities=known,
            dicomweb=False,
        ) as orthanc:
            with node.sessions() as session:
                retry_job(session, job.id)
            node.wake_delivery.set()
            wait_for(lambda: all_delivered(node, 1), timeout=60, what="delivery after requeue")
            assert len(orthanc.rest.instances()) == len(files)
        assert events(node, "job.requeued")
