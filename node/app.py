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

from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from node import COMMAND, audit, jobs, log_privacy, pynetdicom_tuning, retention
from node.analysis import SeriesAnalyser
from node.audit import Events
from node.classify.factory import build_analyser
from node.config import Settings
from node.db.migrate import check_schema, upgrade
from node.db.models import JobKind
from node.db.session import (
    display_url,
    make_engine,
    make_session_factory,
    receive_session_factory,
    sqlite_path,
)
from node.deliver.base import Sender
from node.deliver.deliverer import Deliverer
from node.deliver.dimse import DimseSender
from node.deliver.stow import StowSender
from node.errors import DatabaseError, ListenError
from node.health import HEALTH_FILE, HealthMonitor
from node.metrics import NodeMetrics
from node.readiness import check_database, check_dicom, check_model, check_spool, check_workers, report
from node.receive.ingest import Ingest
from node.receive.reconcile import reconcile
from node.receive.scp import StorageSCP
from node.receive.senders import open_to_anyone
from node.receive.spool import Spool
from node.routing import Router, reload_rules
from node.rules import RulesHolder
from node.tracker import CompletionTracker
from node.web.auth import auth_warnings
from node.web.health import health_routes
from node.web.metrics import metrics_routes
from node.web.server import WebServer, build_app
from node.web.stow import stow_routes
from node.workers import JobWorker

logger = logging.getLogger(__name__)


def open_database(settings: Settings) -> sessionmaker[Session]:
    """Engine + migrations + session factory: creates the database where needed and migrates it.

    Only `run` (the service) and `db upgrade` open the database this way; every other command uses
    open_existing_database."""
    engine = make_engine(settings.resolved_database_url)
    upgrade(engine)
    return make_session_factory(engine)


def open_existing_database(settings: Settings) -> sessionmaker[Session]:
    """Session factory on a database that already exists with the newest schema; creates and migrates
    nothing. Raises DatabaseError naming the URL (password hidden): no such SQLite file, no node schema,
    a schema older (run `db upgrade`) or newer than this version, or a database that cannot be reached."""
    url = settings.resolved_database_url
    shown = display_url(url)
    path = sqlite_path(url)
    if path is not None and not path.is_file():
        raise DatabaseError(
            f"no node database at {shown}: the file does not exist. `{COMMAND} run` or "
            f"`{COMMAND} db upgrade` creates it; check --config, --data-dir or database_url"
        )
    engine = make_engine(url)
    try:
        check_schema(engine)
    except sa_exc.SQLAlchemyError as exc:
        engine.dispose()
        reason = getattr(exc, "orig", None) or exc
        raise DatabaseError(f"cannot open the database at {shown}: {reason}") from None
    except DatabaseError:
        engine.dispose()
        raise
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
        self._stopping = False
        # Prometheus metrics of this node only (its own registry): GET /metrics, docs/metrics.md.
        self.metrics = NodeMetrics()
        self.metrics.watch_queue(self.sessions)
        self.wake_router = threading.Event()
        self.wake_delivery = threading.Event()
        self.tracker = CompletionTracker(
            self.sessions, self.settings.completion, self.wake_router.set, metrics=self.metrics
        )
        self.ingest = Ingest(
            receive_session_factory(
                self.settings.resolved_database_url,
                self.sessions,
                self.settings.receive.database_wait_seconds,
            ),
            self.spool,
            self.settings.receive,
            self.settings.completion,
            metrics=self.metrics,
        )
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
            metrics=self.metrics,
        )
        senders: dict[str, Sender] = {"dimse": DimseSender(forward, self.settings.receive.ae_title)}
        senders["dicomweb"] = StowSender()
        self.deliverer = Deliverer(
            self.spool,
            senders,
            jobs.RetryPolicy(
                forward.max_attempts,
                forward.backoff_initial_seconds,
                forward.backoff_factor,
                forward.backoff_max_seconds,
            ),
            metrics=self.metrics,
        )
        self.scp = StorageSCP(
            self.settings.receive, self.ingest, self.sessions, self.tracker.instance_stored, self.metrics
        )
        self.metrics.watch_associations(self.scp.active_associations)
        self.workers: list[JobWorker] = []
        self.health: HealthMonitor | None = None
        self.port: int | None = None
        self.tls_port: int | None = None
        self.web: WebServer | None = None
        self.web_port: int | None = None
        self._retention_timer: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> int:
        pynetdicom_tuning.install(self.settings.receive.poll_delay_seconds)
        log_privacy.install()
        # Before the listener and the tracker: rows lost with un-fsync'd commits (power loss) come back.
        reconcile(self.sessions, self.spool, self.ingest)
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
        self._log_rules()
        receive = self.settings.receive
        try:
            self.port = self.scp.start()
            # receive.tls: the TLS port (None without TLS); self.port is it too when tls_only.
            self.tls_port = self.scp.tls_port
        except OSError as exc:
            raise ListenError(receive.host, receive.port, exc.strerror or str(exc)) from None
        open_warning = open_to_anyone(receive)
        if open_warning:
            logger.warning("receive: %s", open_warning)
        if self.settings.web.enabled:
            self.web = self._build_web()
            self.web_port = self.web.start()  # raises ListenError when the port is in use
        (self.settings.data_dir / "node.pid").write_text(str(os.getpid()))
        return self.port

    def _worker(
        self, name: str, kinds: list[str], handler: Any, on_crash: Any, wakeup: threading.Event
    ) -> JobWorker:
        return JobWorker(name, kinds, self.sessions, handler, on_crash, wakeup, self.stop_event)

    # -- the HTTP side ---------------------------------------------------------------------------

    def stow_routes(self) -> list[Any]:
        """The STOW-RS routes wired to this node's ingest, spool, tracker and metrics (ConfigError for
        unusable auth settings)."""
        return stow_routes(
            self.ingest,
            self.spool,
            self.settings.web,
            on_stored=self.tracker.instance_stored,
            sessions=self.sessions,
            max_instance_bytes=self.settings.receive.max_instance_bytes,
            metrics=self.metrics,
        )

    def _build_web(self) -> WebServer:
        routes = [*health_routes(self.liveness, self.readiness), *metrics_routes(self.metrics)]
        # STOW-RS in: built at start, so that unusable auth settings stop the node (ConfigError).
        extra = self.stow_routes()
        for warning in auth_warnings(self.settings.web):
            logger.warning("web: %s", warning)
        return WebServer(self.settings.web, build_app(routes, extra))

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        """GET /health/live: the process and its loops turn (node.health.HealthMonitor.liveness)."""
        problems = self.health.liveness() if self.health is not None else None
        workers = self.health.last.workers if self.health is not None and self.health.last else []
        if problems is None:
            problems = ["the health monitor has not reported yet"]
        return not problems, {"alive": not problems, "problems": problems, "workers": workers}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """GET /health/ready: database, spool, model, DICOM listener and workers (node.readiness)."""
        return report(
            {
                "database": check_database(self._ping_database),
                "spool": check_spool(self.spool.tmp_dir, self.settings.health.spool_min_free_bytes),
                "model": check_model(self.settings.classify.enabled, self.analyser),
                "dicom": check_dicom(self.port, self._stopping),
                "workers": check_workers(self.health.liveness() if self.health is not None else None),
            }
        )

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

    def _log_rules(self) -> None:
        """Say which rules are in force; without rules, that received series are kept, not forwarded."""
        ruleset = self.rules.current
        if ruleset is None:
            logger.warning(
                "no rules file configured (rules_path in the config, or --rules): received series are "
                "stored and kept, and NOT forwarded"
            )
            return
        logger.info(
            "rules: %s (%d rules, %d destinations, sha256 %s)",
            ruleset.source,
            len(ruleset.rules),
            len(ruleset.destinations),
            (ruleset.sha256 or "")[:12],
        )

    def reload_rules(self) -> str:
        """Reload the rules file (SIGHUP); audited, and logged once: the new rules, or why they were refused
        (the old rules stay in force)."""
        before = self.rules.current
        with self.sessions() as session:
            message = reload_rules(self.rules, session)  # logs a refused file itself
        if self.rules.current is not before or self.rules.path is None:
            self._log_rules()
        return message

    def stop(self, drain_seconds: float = 30.0) -> None:
        logger.info("stopping: refusing new associations, draining those in progress")
        self._stopping = True
        if self.web is not None:
            self.web.request_stop()  # no new HTTP requests; those in flight finish while the SCP drains
        self.scp.stop(drain_seconds, self.force_stop)
        if self.web is not None:
            self.web.join(self.force_stop)
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
            threading.Thread(target=self.reload_rules, daemon=True).start()

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
