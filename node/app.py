"""Wires the node together and runs it until SIGTERM/SIGINT; SIGHUP reloads the rules.

Start-up order matters for "nothing is lost": migrate the database, put back jobs a crash left
running, start the workers, re-arm completion timers from the database, and only then listen.
Shutdown is the reverse: stop accepting, let associations in progress finish, stop the workers
(a delivery in progress finishes its send; anything cut short is requeued at the next start).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from node import audit, jobs, pynetdicom_tuning, retention
from node.analysis import SeriesAnalyser
from node.audit import Events
from node.classify.factory import build_analyser
from node.config import Settings
from node.db.migrate import upgrade
from node.db.models import JobKind
from node.db.session import make_engine, make_session_factory
from node.deliver.deliverer import Deliverer
from node.deliver.dimse import DimseSender
from node.health import HEALTH_FILE, HealthMonitor
from node.receive.ingest import Ingest
from node.receive.scp import StorageSCP
from node.receive.spool import Spool
from node.routing import Router, reload_rules
from node.rules import RulesHolder
from node.tracker import CompletionTracker
from node.workers import JobWorker

logger = logging.getLogger(__name__)


def open_database(settings: Settings) -> sessionmaker[Session]:
    """Engine + migrations + session factory; used by the service and by every CLI command."""
    engine = make_engine(settings.resolved_database_url)
    upgrade(engine)
    return make_session_factory(engine)


@dataclass
class NodeService:
    settings: Settings
    # None: built from settings.classify (the classifier, or no analysis when disabled).
    analyser: SeriesAnalyser | None = None
    route_workers: int = 1

    def __post_init__(self) -> None:
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        if self.analyser is None:
            self.analyser, self.route_workers = build_analyser(self.settings.classify)
        self.sessions = open_database(self.settings)
        self.spool = Spool(self.settings.resolved_spool_dir)
        self.rules = RulesHolder(self.settings.rules_path)
        self.stop_event = threading.Event()
        # Set by a second SIGTERM/SIGINT: stop without waiting for the drain.
        self.force_stop = threading.Event()
        self.stopped = threading.Event()
        self.wake_router = threading.Event()
        self.wake_delivery = threading.Event()
        self.tracker = CompletionTracker(self.sessions, self.settings.completion, self.wake_router.set)
        self.ingest = Ingest(self.sessions, self.spool, self.settings.receive, self.settings.completion)
        route, forward = self.settings.route, self.settings.forward
        self.router = Router(
            self.spool,
            self.rules,
            self.analyser,
            self.wake_delivery,
            jobs.RetryPolicy(
                route.max_attempts,
                route.backoff_initial_seconds,
                route.backoff_factor,
                route.backoff_max_seconds,
            ),
        )
        senders = {"dimse": DimseSender(forward, self.settings.receive.ae_title)}
        self.deliverer = Deliverer(
            self.spool,
            senders,
            jobs.RetryPolicy(
                forward.max_attempts,
                forward.backoff_initial_seconds,
                forward.backoff_factor,
                forward.backoff_max_seconds,
            ),
        )
        self.scp = StorageSCP(self.settings.receive, self.ingest, self.sessions, self.tracker.instance_stored)
        self.workers: list[JobWorker] = []
        self.health: HealthMonitor | None = None
        self.port: int | None = None
        self._retention_timer: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> int:
        pynetdicom_tuning.install(self.settings.receive.poll_delay_seconds)
        with self.sessions() as session:
            recovered = jobs.recover_interrupted(session)
            audit.record(
                session,
                Events.NODE_STARTED,
                f"node started; {recovered} interrupted jobs requeued",
                details={
                    "ae_title": self.settings.receive.ae_title,
                    "pid": os.getpid(),
                    "rules": str(self.settings.rules_path) if self.settings.rules_path else None,
                },
            )
            session.commit()
        for n in range(self.route_workers):
            self.workers.append(
                self._worker(
                    f"router-{n}", [JobKind.ROUTE], self.router.handle, self.router.on_crash, self.wake_router
                )
            )
        for n in range(self.settings.forward.workers):
            self.workers.append(
                self._worker(
                    f"delivery-{n}",
                    [JobKind.DELIVER],
                    self.deliverer.handle,
                    self.deliverer.on_crash,
                    self.wake_delivery,
                )
            )
        for worker in self.workers:
            worker.start()
        self.health = HealthMonitor(
            self.settings.data_dir / HEALTH_FILE,
            self.workers,
            self.settings.health,
            self._ping_database,
            self.stop_event,
        )
        self.health.start()
        self.tracker.start()
        if self.settings.retention.keep_seconds is not None:
            self._retention_timer = threading.Thread(
                target=self._retention_loop, name="retention", daemon=True
            )
            self._retention_timer.start()
        self.port = self.scp.start()
        (self.settings.data_dir / "node.pid").write_text(str(os.getpid()))
        return self.port

    def _worker(
        self, name: str, kinds: list[str], handler: Any, on_crash: Any, wakeup: threading.Event
    ) -> JobWorker:
        return JobWorker(name, kinds, self.sessions, handler, on_crash, wakeup, self.stop_event)

    def _ping_database(self) -> None:
        with self.sessions() as session:
            session.execute(text("SELECT 1"))

    def _retention_loop(self) -> None:
        keep = self.settings.retention.keep_seconds
        assert keep is not None
        while not self.stop_event.wait(self.settings.retention.sweep_interval_seconds):
            try:
                with self.sessions() as session:
                    retention.sweep(session, self.spool, keep)
            except Exception:  # process boundary: a failed sweep is retried at the next interval
                logger.exception("retention sweep failed")

    def reload_rules(self) -> str:
        with self.sessions() as session:
            return reload_rules(self.rules, session)

    def stop(self, drain_seconds: float = 30.0) -> None:
        logger.info("stopping: refusing new associations, draining those in progress")
        self.scp.stop(drain_seconds, self.force_stop)
        self.tracker.shutdown()
        self.stop_event.set()
        self.wake_router.set()
        self.wake_delivery.set()
        deadline = time.monotonic() + drain_seconds
        for worker in self.workers:
            # Forced: a job cut short stays `running` and is requeued at the next start.
            while worker.is_alive() and time.monotonic() < deadline and not self.force_stop.is_set():
                worker.join(0.1)
        if self.health is not None:
            self.health.join(max(0.0, deadline - time.monotonic()))
            self.health.remove_file()
        self.spool.close()
        close = getattr(self.analyser, "close", None)
        if close is not None:
            close()
        with self.sessions() as session:
            audit.record(session, Events.NODE_STOPPED, "node stopped")
            session.commit()
        (self.settings.data_dir / "node.pid").unlink(missing_ok=True)
        self.stopped.set()

    # -- running as a process ---------------------------------------------------------------------

    def run_until_signalled(self) -> None:
        """Block until SIGTERM or SIGINT; SIGHUP reloads the rules. Restores previous handlers after."""
        should_exit = threading.Event()

        def _exit(signum: int, _frame: FrameType | None) -> None:
            if should_exit.is_set():
                name = signal.Signals(signum).name
                logger.warning("received %s again: aborting associations in progress", name)
                self.force_stop.set()
                return
            logger.info("received %s", signal.Signals(signum).name)
            should_exit.set()

        def _hup(_signum: int, _frame: FrameType | None) -> None:
            # The reload runs on its own thread: a signal handler must not block on the database.
            threading.Thread(target=lambda: logger.info(self.reload_rules()), daemon=True).start()

        previous = {
            signal.SIGTERM: signal.signal(signal.SIGTERM, _exit),
            signal.SIGINT: signal.signal(signal.SIGINT, _exit),
            signal.SIGHUP: signal.signal(signal.SIGHUP, _hup),
        }
        try:
            self.start()
            while not should_exit.wait(1.0):
                pass
        finally:
            self.stop()
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def pid_file(settings: Settings) -> Path:
    return settings.data_dir / "node.pid"
