"""One fuzzing run: start a node once, send N seeded cases, check after each, count, print.

Case i of seed S is drawn from random.Random(f"{S}:{i}") alone, so any case replays by itself
(`Campaign(..., only=[i])`, or `python bench/fuzz_long.py --seed S --case i`). After every case: the node's
answer, a deadline (a case past it is a hang), new ERROR records with a traceback or pynetdicom's
handler-failure status 0xC211 (a crash), and every instance the node stored since the last case read
back with pydicom and dcmtk (an unreadable one is "acknowledged unreadable"). Between batches: a good
peer's C-ECHO and C-STORE must get in, the node's workers must be alive, and the process's RSS is sampled.
"""

from __future__ import annotations

import logging
import random
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import JPEGLosslessSV1
from sqlalchemy import func, select

from node.app import NodeService
from node.db.models import Instance
from tests.fuzz import checks
from tests.fuzz.dataset_mutators import DATASET_MUTATORS, encode
from tests.fuzz.driver import Outcome, StoreChannel, send_stow, send_stream
from tests.fuzz.pdu_mutators import CALLED_AE, CALLING_AE, PDU_MUTATORS, Association
from tests.fuzz.stow_mutators import STOW_MUTATORS, Part10
from tests.nodeutil import make_settings, running_node, synthetic_ct
from tests.rawpeer import (
    CT_IMAGE_STORAGE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    associate_rq,
    c_store_rq,
    p_data_tf,
)
from tests.webutil import part10

# pynetdicom answers 0xC211 when an EVT_C_STORE handler raises: an exception escaped the node's code.
HANDLER_FAILED = 0xC211
# Shares of the families (STOW-RS only when the node's web side is on).
FAMILY_WEIGHTS = {"store": 50, "pdu": 35, "stow": 15}
# Store-family variants beyond the data set mutators, and how often each is drawn (of 100).
STORE_VARIANTS = {
    "valid": 3,
    "explicit_on_implicit": 7,
    "implicit_on_explicit": 4,
    "native_on_jpeg_lossless": 5,
    "implicit_dataset_mutated": 10,
    "command_mismatch": 3,
    "dataset_mutated": 68,
}


# The store family's association: one context per transfer syntax it sends on.
STORE_CONTEXTS = {EXPLICIT_VR_LE: 1, IMPLICIT_VR_LE: 3, str(JPEGLosslessSV1): 5}
STORE_REQUEST = associate_rq(
    CALLED_AE, CALLING_AE, [(cid, CT_IMAGE_STORAGE, [ts]) for ts, cid in STORE_CONTEXTS.items()]
)


@dataclass
class Case:
    index: int
    family: str
    mutation: str
    wire: bytes  # what the case sends, for the report of a finding
    run: Callable[[float], Outcome]


@dataclass
class Finding:
    index: int
    mutation: str
    what: str
    dump: str | None = None  # the file with the case's bytes


@dataclass
class Report:
    seed: int
    cases: int = 0
    elapsed_s: float = 0.0
    stopped_early: str | None = None
    answers: Counter[tuple[str, str]] = field(default_factory=Counter)
    crashes: list[Finding] = field(default_factory=list)
    hangs: list[Finding] = field(default_factory=list)
    acknowledged_unreadable: list[Finding] = field(default_factory=list)
    acknowledged: Counter[str] = field(default_factory=Counter)
    good_peer_checks: int = 0
    good_peer_failures: list[str] = field(default_factory=list)
    refused_slots: int = 0
    library_tracebacks: Counter[str] = field(default_factory=Counter)  # handled inside pynetdicom
    refused_during: Counter[str] = field(default_factory=Counter)  # the case running when it happened
    seconds: Counter[str] = field(default_factory=Counter)  # wall time per family and in the checks
    rss_kib: list[tuple[int, int]] = field(default_factory=list)  # (cases done, VmRSS)

    def to_json(self) -> dict[str, Any]:
        """The report as JSON values (bench/fuzz_long.py --workers: each worker hands its report over)."""
        # Not dataclasses.asdict: it rebuilds a Counter from (key, value) pairs, counting the pairs.
        data: dict[str, Any] = {
            name: getattr(self, name)
            for name in ("seed", "cases", "elapsed_s", "stopped_early", "good_peer_checks", "refused_slots")
        }
        for name in ("acknowledged", "library_tracebacks", "refused_during", "seconds"):
            data[name] = dict(getattr(self, name))
        for name in ("crashes", "hangs", "acknowledged_unreadable"):
            data[name] = [vars(finding) for finding in getattr(self, name)]
        data["answers"] = [[m, a, n] for (m, a), n in self.answers.items()]
        data["good_peer_failures"] = self.good_peer_failures
        data["rss_kib"] = self.rss_kib
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Report:
        report = cls(data["seed"])
        for name in ("cases", "elapsed_s", "stopped_early", "good_peer_checks", "refused_slots"):
            setattr(report, name, data[name])
        report.answers = Counter({(m, a): n for m, a, n in data["answers"]})
        for name in ("acknowledged", "library_tracebacks", "refused_during", "seconds"):
            setattr(report, name, Counter(data[name]))
        for name in ("crashes", "hangs", "acknowledged_unreadable"):
            setattr(report, name, [Finding(**f) for f in data[name]])
        report.good_peer_failures = list(data["good_peer_failures"])
        report.rss_kib = [(int(n), int(r)) for n, r in data["rss_kib"]]
        return report

    @classmethod
    def merged(cls, reports: list[Report]) -> Report:
        """One report over workers that ran side by side, each with its own node: counts add up, the
        elapsed time is the longest, the RSS samples are the first worker's (each worker prints its own)."""
        total = cls(reports[0].seed)
        for report in reports:
            total.cases += report.cases
            total.elapsed_s = max(total.elapsed_s, report.elapsed_s)
            total.stopped_early = total.stopped_early or report.stopped_early
            total.good_peer_checks += report.good_peer_checks
            total.refused_slots += report.refused_slots
            for name in ("answers", "acknowledged", "library_tracebacks", "refused_during", "seconds"):
                getattr(total, name).update(getattr(report, name))
            for name in ("crashes", "hangs", "acknowledged_unreadable", "good_peer_failures"):
                getattr(total, name).extend(getattr(report, name))
        total.rss_kib = list(reports[0].rss_kib)
        return total

    def lines(self) -> Iterator[str]:
        rate = self.cases / self.elapsed_s if self.elapsed_s else 0.0
        yield f"fuzz seed {self.seed}: {self.cases} cases in {self.elapsed_s:.1f} s ({rate:.0f}/s)"
        yield "wall time: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.most_common())
        if self.stopped_early:
            yield f"stopped early: {self.stopped_early}"
        yield (
            f"crashes {len(self.crashes)}, hangs {len(self.hangs)}, acknowledged unreadable "
            f"{len(self.acknowledged_unreadable)}, refused-slot events {self.refused_slots}, "
            f"good peer in {self.good_peer_checks - len(self.good_peer_failures)}/{self.good_peer_checks}"
        )
        if self.rss_kib:
            first, peak, last = self.rss_kib[0][1], max(r for _, r in self.rss_kib), self.rss_kib[-1][1]
            yield f"RSS MiB: first {first / 1024:.0f}, peak {peak / 1024:.0f}, last {last / 1024:.0f}"
            step = max(len(self.rss_kib) // 10, 1)
            yield "RSS over time (cases: MiB): " + ", ".join(
                f"{n}: {r / 1024:.0f}" for n, r in self.rss_kib[::step]
            )
        for title, findings in (
            ("crash", self.crashes),
            ("hang", self.hangs),
            ("acknowledged unreadable", self.acknowledged_unreadable),
        ):
            by_mutation = Counter(f.mutation for f in findings)
            if by_mutation:
                yield f"{title} by mutation: " + ", ".join(f"{m} {n}" for m, n in by_mutation.most_common())
            for finding in findings[:20]:
                where = f" (bytes: {finding.dump})" if finding.dump else ""
                yield f"  {title} case {finding.index} {finding.mutation}: {finding.what[:300]}{where}"
        if self.refused_during:
            yield "refused-slot events during: " + ", ".join(
                f"{m} {n}" for m, n in self.refused_during.most_common()
            )
        if self.library_tracebacks:
            yield "tracebacks pynetdicom logged and handled (not crashes), by mutation: " + ", ".join(
                f"{m} {n}" for m, n in self.library_tracebacks.most_common()
            )
        for failure in self.good_peer_failures[:10]:
            yield f"  {failure}"
        if self.acknowledged:
            yield "acknowledged (stored) by mutation: " + ", ".join(
                f"{m} {n}" for m, n in self.acknowledged.most_common()
            )
        families = Counter(m.split("/")[0] for m, _ in self.answers.elements())
        yield "cases by family: " + ", ".join(f"{f} {n}" for f, n in families.most_common())
        yield "answers (mutation: answer count), most common:"
        for (mutation, answer), count in self.answers.most_common(40):
            yield f"  {mutation}: {answer} x{count}"


@dataclass(frozen=True)
class _Record:
    """What the run needs of a log record. Not the LogRecord itself: one with exc_info holds a traceback,
    its frames and through them the association it was logged for (in a 100,000-case run, the kept
    records were the fuzzer's own RSS growth, not the node's)."""

    name: str
    levelno: int
    message: str
    traceback: str | None  # the formatted stack of exc_info, if any


class _Records(logging.Handler):
    """Collects the WARNING-and-above records a run needs to look at (crashes, refused connections);
    `take` hands over those since the last call."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self._records: list[_Record] = []
        self._lock_records = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        stack = "".join(traceback.format_tb(record.exc_info[2])) if record.exc_info else None
        summary = _Record(record.name, record.levelno, record.getMessage(), stack)
        with self._lock_records:
            self._records.append(summary)

    def take(self) -> list[_Record]:
        with self._lock_records:
            taken, self._records = self._records, []
        return taken


# Tracebacks that pynetdicom logs and handles itself, counted apart from crashes: decode_bytes when
# an AE title is not ASCII (it then decodes another way), and its own debug-logging handler
# standard_pdu_recv_handler on an A-ASSOCIATE-RQ with an empty syntax (evt.trigger catches it; the
# node's reader then aborts the association), and a command set it cannot turn into a DIMSE message
# (it logs "Received an invalid DIMSE message" and aborts).
def _library_traceback(record: _Record) -> bool:
    if record.name == "pynetdicom.utils":
        return True
    if record.name == "pynetdicom.dimse":  # "Received an invalid DIMSE message": pynetdicom aborts (Evt19)
        return True
    return record.name == "pynetdicom.events" and (
        "standard_pdu_recv_handler" in record.message
        or record.traceback is not None
        and "_handlers.py" in record.traceback
    )


def _crash_record(record: _Record) -> bool:
    """A traceback logged by the receive side or pynetdicom (a route job that fails is not one)."""
    if record.levelno < logging.ERROR or _library_traceback(record):
        return False
    receive_side = record.name.startswith(("pynetdicom", "node.receive", "node.web", "node.pynetdicom"))
    return receive_side and (record.traceback is not None or "Exception" in record.message)


# The node stores an instance only before it answers success (0x0000, or a STOW-RS 200/202), so only
# such a case needs the database check; the one every CHECK_EVERY cases (and between batches) catches an
# instance stored without its answer reaching the fuzzer (it is then put down to the case it ran in).
CHECK_EVERY = 25


def _may_have_stored(outcome: Outcome) -> bool:
    return 0x0000 in outcome.statuses or outcome.http_status in (200, 202) or outcome.hang


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _uid(rng: random.Random) -> str:
    return f"2.25.{rng.getrandbits(96)}"


def base_dataset(rng: random.Random) -> Dataset:
    ds = synthetic_ct(
        series_uid=_uid(rng), study_uid=_uid(rng), number=rng.randint(1, 500), rows=rng.choice([16, 32, 64])
    )
    ds.SOPInstanceUID = _uid(rng)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def _pick(rng: random.Random, weights: dict[str, int]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


class Campaign:
    def __init__(
        self,
        work: Path,
        seed: int,
        cases: int,
        *,
        deadline_s: float = 15.0,
        batch: int = 200,
        time_limit_s: float | None = None,
        stow: bool = True,
        families: set[str] | None = None,
        only: list[int] | None = None,
        dump_dir: Path | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.work = work
        self.seed = seed
        self.cases = cases
        self.deadline_s = deadline_s
        self.batch = batch
        self.time_limit_s = time_limit_s
        self.stow = stow and (families is None or "stow" in families)
        self.families = families or set(FAMILY_WEIGHTS)
        self.only = only
        self.dump_dir = dump_dir
        self.progress = progress
        self.report = Report(seed)
        self._port = 0
        self._web_port = 0
        self._channel: StoreChannel | None = None
        self._dcmdump = checks.DcmdumpPool()
        self._started = time.monotonic()

    # --- cases ---------------------------------------------------------------------------------

    def make_case(self, index: int) -> Case:
        rng = random.Random(f"{self.seed}:{index}")
        weights = {
            k: v for k, v in FAMILY_WEIGHTS.items() if k in self.families and (k != "stow" or self.stow)
        }
        family = _pick(rng, weights)
        if family == "store":
            return self._store_case(index, rng)
        if family == "pdu":
            return self._pdu_case(index, rng)
        return self._stow_case(index, rng)

    def _store_case(self, index: int, rng: random.Random) -> Case:
        ds = base_dataset(rng)
        variant = _pick(rng, STORE_VARIANTS)
        transfer, explicit, mutation = EXPLICIT_VR_LE, True, variant
        sop_in_command = str(ds.SOPInstanceUID)
        if variant == "implicit_dataset_mutated":
            transfer, explicit = IMPLICIT_VR_LE, False
        encoded = encode(ds, explicit=explicit)
        data = encoded.data
        if variant in ("dataset_mutated", "implicit_dataset_mutated"):
            name = rng.choice(sorted(DATASET_MUTATORS))
            data = DATASET_MUTATORS[name](rng, encoded)
            mutation = f"{variant}:{name}"
        elif variant == "explicit_on_implicit":
            transfer, data = IMPLICIT_VR_LE, encode(ds, explicit=True).data
        elif variant == "implicit_on_explicit":
            data = encode(ds, explicit=False).data
        elif variant == "native_on_jpeg_lossless":
            transfer = str(JPEGLosslessSV1)
        elif variant == "command_mismatch":
            sop_in_command = _uid(rng)
        context_id = STORE_CONTEXTS[transfer]
        command = c_store_rq(rng.randint(1, 0xFFFF), CT_IMAGE_STORAGE, sop_in_command)
        fragment = rng.randint(1, max(len(data), 1)) if rng.random() < 0.2 else None

        def run(deadline_s: float) -> Outcome:
            assert self._channel is not None
            return self._channel.store(context_id, command, data, deadline_s, fragment)

        wire = (
            STORE_REQUEST + p_data_tf([(context_id, 0x03, command)]) + p_data_tf([(context_id, 0x02, data)])
        )
        return Case(index, "store", f"store/{mutation}", wire, run)

    def _pdu_case(self, index: int, rng: random.Random) -> Case:
        ds = base_dataset(rng)
        association = Association(str(ds.SOPInstanceUID), encode(ds, explicit=True).data)
        name = rng.choice(sorted(PDU_MUTATORS))
        pdus = PDU_MUTATORS[name](rng, association)

        def run(deadline_s: float) -> Outcome:
            return send_stream(self._port, pdus, deadline_s)

        return Case(index, "pdu", f"pdu/{name}", b"".join(pdus), run)

    def _stow_case(self, index: int, rng: random.Random) -> Case:
        parts = []
        study = _uid(rng)
        for _ in range(rng.randint(1, 3)):
            ds = base_dataset(rng)
            ds.StudyInstanceUID = study
            data = part10(ds)
            parts.append(Part10(data, len(data) - len(encode(ds, explicit=True).data)))
        name = _pick(rng, {n: (6 if n == "part_dicom_mutated" else 1) for n in STOW_MUTATORS})
        request = STOW_MUTATORS[name](rng, parts)

        def run(deadline_s: float) -> Outcome:
            return send_stow(self._web_port, request, deadline_s)

        return Case(
            index, "stow", f"stow/{name}", (request.content_type or "").encode() + b"\n" + request.body, run
        )

    # --- the run -------------------------------------------------------------------------------

    def settings_overrides(self) -> dict[str, Any]:
        return {
            # Short protocol timers: a peer that stops talking is dropped well inside a case's deadline.
            "receive": {"negotiation_timeout": 3.0, "network_timeout": 5.0, "dimse_timeout": 5.0},
            # Receiving is under test; routing the garbage that gets in would only add load.
            "completion": {"quiet_seconds": 3600.0},
            "web": {"enabled": self.stow, "auth": {"kind": "none"}},
        }

    def run(self) -> Report:
        records = _Records()
        root = logging.getLogger()
        root.addHandler(records)
        thread_errors: list[str] = []
        previous_hook = threading.excepthook

        def on_thread_error(args: threading.ExceptHookArgs) -> None:
            thread_errors.append(
                f"thread {args.thread.name if args.thread else '?'}: {args.exc_type.__name__}: "
                f"{args.exc_value}"
            )
            previous_hook(args)

        threading.excepthook = on_thread_error
        # The node runs in this process: a shorter GIL switch interval lets the fuzzer's thread and
        # the node's many threads take turns faster (measured: about twice the cases per second).
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(0.0005)
        try:
            settings = make_settings(self.work, **self.settings_overrides())
            with running_node(settings) as service:
                self._port = int(service.port or 0)
                self._web_port = int(service.web_port) if self.stow else 0
                self._channel = StoreChannel(self._port, STORE_REQUEST)
                try:
                    self._loop(service, records, thread_errors)
                finally:
                    self._channel.close()
        finally:
            sys.setswitchinterval(switch_interval)
            threading.excepthook = previous_hook
            root.removeHandler(records)
        return self.report

    @contextmanager
    def _timed(self) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            self.report.elapsed_s = time.monotonic() - start

    def _loop(self, service: NodeService, records: _Records, thread_errors: list[str]) -> None:
        report = self.report
        last_instance = self._last_instance_id(service)
        indexes = self.only if self.only is not None else range(self.cases)
        start = self._started = time.monotonic()
        with self._timed():
            report.rss_kib.append((0, rss_kib()))
            for done, index in enumerate(indexes, start=1):
                case = self.make_case(index)
                records.take()  # logged between cases: no case's doing
                began = time.monotonic()
                outcome = case.run(self.deadline_s)
                report.seconds[case.family] += time.monotonic() - began
                report.cases += 1
                report.answers[(case.mutation, outcome.answer)] += 1
                if outcome.hang:
                    report.hangs.append(
                        self._finding(case, f"no answer within {self.deadline_s} s: {outcome.answer}")
                    )
                for record in records.take():
                    if record.levelno >= logging.ERROR and _library_traceback(record):
                        report.library_tracebacks[case.mutation] += 1
                    if _crash_record(record):
                        report.crashes.append(self._finding(case, f"{record.name}: {record.message}"))
                    if "closed at once" in record.message:
                        report.refused_slots += 1
                        report.refused_during[case.mutation] += 1
                if HANDLER_FAILED in outcome.statuses:
                    report.crashes.append(self._finding(case, "handler failed: status 0xC211"))
                while thread_errors:
                    report.crashes.append(self._finding(case, thread_errors.pop()))
                began = time.monotonic()
                if _may_have_stored(outcome) or done % CHECK_EVERY == 0:
                    last_instance = self._check_stored(service, case.mutation, last_instance, case)
                report.seconds["checks"] += time.monotonic() - began
                if done % self.batch == 0:
                    last_instance = self._between_batches(service, done, last_instance)
                if self.time_limit_s is not None and time.monotonic() - start > self.time_limit_s:
                    report.stopped_early = f"time limit {self.time_limit_s:.0f} s reached"
                    break
            self._between_batches(service, report.cases, last_instance)

    def _between_batches(self, service: NodeService, done: int, last_instance: int) -> int:
        report = self.report
        report.good_peer_checks += 1
        problem = checks.good_peer_problem(self._port)
        alive, detail = service.liveness()
        if problem is None and not alive:
            problem = f"node not live: {detail}"
        if problem is not None:
            report.good_peer_failures.append(f"after {done} cases: {problem}")
        if "closed at once" in (problem or "") or "not established" in (problem or ""):
            report.refused_slots += 1
        last_instance = self._check_stored(service, "good_peer", last_instance, None)
        self._collect_dcmdump()
        report.rss_kib.append((done, rss_kib()))
        if self.progress is not None:
            r = self.report
            self.progress(
                f"{done} cases, {self._elapsed():.0f} s: crashes {len(r.crashes)}, hangs {len(r.hangs)}, "
                f"ack-unreadable {len(r.acknowledged_unreadable)}, RSS {r.rss_kib[-1][1] // 1024} MiB"
            )
        return last_instance

    def _elapsed(self) -> float:
        return time.monotonic() - self._started

    @staticmethod
    def _last_instance_id(service: NodeService) -> int:
        with service.sessions() as session:
            return int(session.scalar(select(func.max(Instance.id))) or 0)

    def _check_stored(self, service: NodeService, mutation: str, after: int, case: Case | None) -> int:
        with service.sessions() as session:
            rows = session.execute(
                select(Instance.id, Instance.path).where(Instance.id > after).order_by(Instance.id)
            ).all()
        for instance_id, relative in rows:
            after = max(after, int(instance_id))
            self.report.acknowledged[mutation] += 1
            path = service.spool.absolute(relative)
            problem = checks.pydicom_problem(path)
            if problem is not None:
                self._unreadable((case, mutation), problem)
            else:  # dcmdump in the background: its verdict comes in a few cases later
                for key, late in self._dcmdump.start((case, mutation), path):
                    self._unreadable(key, late)
        return after

    def _unreadable(self, key: object, problem: str) -> None:
        case, mutation = key  # type: ignore[misc]
        finding = self._finding(case, problem) if case is not None else Finding(-1, mutation, problem)
        self.report.acknowledged_unreadable.append(finding)

    def _collect_dcmdump(self) -> None:
        for key, problem in self._dcmdump.done():
            self._unreadable(key, problem)

    def _finding(self, case: Case, what: str) -> Finding:
        dump = None
        if self.dump_dir is not None:
            self.dump_dir.mkdir(parents=True, exist_ok=True)
            dump = (
                self.dump_dir / f"case-{case.index}-{case.mutation.replace('/', '_').replace(':', '_')}.bin"
            )
            dump.write_bytes(case.wire)
        return Finding(case.index, case.mutation, what, str(dump) if dump else None)
