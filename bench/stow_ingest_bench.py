"""STOW-RS ingest benchmark: the node's endpoint against Orthanc's own STOW-RS, same files, same run.

The same CT files go, 10 instances per request over one keep-alive HTTP connection, to Orthanc's
DICOMweb plugin and to the node's STOW-RS endpoint (which acknowledges only after fsync and a
database commit, as C-STORE does). The node serves in a child process, so its peak RSS is its own.
Prints images/s (median of --repeat runs) and the node / Orthanc ratio.

    python bench/stow_ingest_bench.py [--series cptacgbm_c3n01192_head lidc0001_full] [--repeat 3]
    python bench/stow_ingest_bench.py --large-mb 2048   # one streamed upload of that size: peak RSS

--large-mb sends one request of that many MB (generated while it is sent, chunked, ~512 KiB CT
instances with fresh UIDs) and prints the node's peak RSS: the body is streamed to disk part by part.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import print_medians  # noqa: E402
from tests.peers import ct_files, run_orthanc  # noqa: E402

BOUNDARY = "bench-stow-boundary"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
TOKEN = "bench-token-0123456789"
PER_REQUEST = 10


def serve(work: Path) -> int:
    """Child mode: a NodeService with the STOW-RS routes on a free port; prints the port, runs until
    stdin closes, then prints its peak RSS."""
    from tests.nodeutil import make_settings, running_node
    from tests.webutil import serve as serve_app
    from tests.webutil import stow_app

    # A bearer token: a basic-auth password costs one PBKDF2 check (~0.5 s) per client, then a cached HMAC.
    tokens = work / "tokens"
    tokens.write_text(TOKEN + "\n")
    tokens.chmod(0o600)
    web = {"max_request_bytes": 8 * 1024**3, "auth": {"kind": "bearer", "tokens_file": str(tokens)}}
    settings = make_settings(
        work,
        web=web,
        completion={"quiet_seconds": 60.0},
        retention={"keep_seconds": None},
        log_level="WARNING",
    )
    with running_node(settings) as service, serve_app(stow_app(service)) as url:
        print(f"URL {url}", flush=True)
        sys.stdin.read()
    print(f"PEAK_RSS_MB {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}", flush=True)
    return 0


class NodeChild:
    def __init__(self, work: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(work)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("URL "):
            raise RuntimeError(f"the node did not start: {line!r}")
        self.url = line.split()[1]

    def stop(self) -> float:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        out = self.proc.stdout.read()
        self.proc.wait(timeout=60)
        return float(out.split("PEAK_RSS_MB")[1].split()[0])


def bodies(files: list[Path]) -> list[bytes]:
    out = []
    for start in range(0, len(files), PER_REQUEST):
        body = BytesIO()
        for path in files[start : start + PER_REQUEST]:
            body.write(f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode())
            body.write(path.read_bytes())
            body.write(b"\r\n")
        body.write(f"--{BOUNDARY}--\r\n".encode())
        out.append(body.getvalue())
    return out


def upload_rate(url: str, requests_bodies: list[bytes], count: int, token: str | None) -> float:
    with requests.Session() as session:
        if token:
            session.headers["Authorization"] = f"Bearer {token}"
        start = time.perf_counter()
        for body in requests_bodies:
            answer = session.post(url, data=body, headers={"Content-Type": CONTENT_TYPE}, timeout=300)
            if answer.status_code != 200:
                raise RuntimeError(f"{url}: HTTP {answer.status_code}: {answer.text[:500]}")
        return count / (time.perf_counter() - start)


def large_body(megabytes: int) -> Iterator[bytes]:
    """Parts of ~512 KiB synthetic CT instances, each with its own UIDs, generated as they are sent."""
    from tests.nodeutil import synthetic_ct
    from tests.webutil import part10

    template_uid = "1.2.826.0.1.3680043.8.498.9" + "0" * 30
    ds = synthetic_ct(series_uid="1.2.826.0.1.3680043.8.498.1" + "7" * 20, rows=512)
    ds.SOPInstanceUID = template_uid
    ds.file_meta.MediaStorageSOPInstanceUID = template_uid
    template = part10(ds)
    head = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    count = megabytes * 1024**2 // len(template)
    for index in range(count):
        uid = ("1.2.826.0.1.3680043.8.498.9" + str(index + 1).zfill(30)).encode()
        yield head + template.replace(template_uid.encode(), uid) + b"\r\n"
    yield f"--{BOUNDARY}--\r\n".encode()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--series", nargs="+", default=["cptacgbm_c3n01192_head", "lidc0001_full"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--large-mb", type=int, default=0)
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve)
    if args.large_mb:
        with tempfile.TemporaryDirectory(prefix="bench-stow-") as tmp:
            node = NodeChild(Path(tmp))
            start = time.perf_counter()
            answer = requests.post(
                node.url + "/studies",
                data=large_body(args.large_mb),
                headers={"Content-Type": CONTENT_TYPE, "Authorization": f"Bearer {TOKEN}"},
                timeout=3600,
            )
            elapsed = time.perf_counter() - start
            stored = answer.text.count('"00081155"')
            peak = node.stop()
        print(
            f"one {args.large_mb} MB request: HTTP {answer.status_code}, {stored} instances stored "
            f"in {elapsed:.1f} s ({args.large_mb / elapsed:.0f} MB/s); node peak RSS {peak:.0f} MB"
        )
        return 0 if answer.status_code == 200 else 1

    files = [f for name in args.series for f in ct_files(name)]
    payload = bodies(files)
    size_mb = sum(map(len, payload)) / 1024**2
    print(
        f"{len(files)} CT instances ({size_mb:.0f} MB) from {', '.join(args.series)}, {PER_REQUEST} per "
        f"request; {args.repeat} runs each, median shown"
    )
    rates: dict[str, list[float]] = {"orthanc": [], "node": []}
    peaks: list[float] = []
    for run in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="bench-stow-") as tmp:
            work = Path(tmp)
            with run_orthanc(work / "orthanc") as orthanc:
                rates["orthanc"].append(
                    upload_rate(orthanc.dicomweb_root + "/studies", payload, len(files), None)
                )
            (work / "node").mkdir()
            node = NodeChild(work / "node")
            try:
                rates["node"].append(upload_rate(node.url + "/studies", payload, len(files), TOKEN))
            finally:
                peaks.append(node.stop())
        print(f"run {run + 1}: " + ", ".join(f"{k} {v[-1]:.0f}/s" for k, v in rates.items()))
    median = print_medians(rates, "receiver (STOW-RS)")
    print(f"\nnode / orthanc = {median['node'] / median['orthanc']:.2f}")
    print(f"node peak RSS: {max(peaks):.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
