"""Ends associations that stay open longer than receive.max_association_seconds.

Why: every open association holds one of receive.max_associations slots (and one per host). A peer
that keeps an association open for hours, sending an instance now and then, keeps others out; the idle
limit (receive.network_timeout, pynetdicom's idle timer) does not catch it. Once a second, this thread
A-ABORTs any established association older than the limit and audits it as association.aborted. An
instance not yet acknowledged is not stored; the sender keeps it (PS3.4 B.2: no response, no storage).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable

from pynetdicom import evt
from pynetdicom.ae import ApplicationEntity
from pynetdicom.association import Association

from node.pynetdicom_tuning import established

logger = logging.getLogger(__name__)

# (association, why): writes the association.aborted audit row.
OnAborted = Callable[[Association, str], None]


class AssociationWatchdog:
    def __init__(self, ae: ApplicationEntity, max_seconds: float, on_aborted: OnAborted) -> None:
        self._ae = ae
        self._max_seconds = max_seconds
        self._on_aborted = on_aborted
        self._opened: weakref.WeakKeyDictionary[Association, float] = weakref.WeakKeyDictionary()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def on_accepted(self, event: evt.Event) -> None:
        """EVT_ACCEPTED: the association's clock starts."""
        self._opened[event.assoc] = time.monotonic()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="association-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def check(self) -> int:
        """Abort every established association open longer than the limit; returns how many."""
        now = time.monotonic()
        aborted = 0
        for assoc in established(self._ae):
            opened = self._opened.get(assoc)
            if opened is None or now - opened < self._max_seconds:
                continue
            why = (
                f"association open for {now - opened:.0f} s, longer than receive.max_association_seconds "
                f"({self._max_seconds:g} s)"
            )
            logger.warning("aborting association from %s: %s", assoc.requestor.address, why)
            self._opened.pop(assoc, None)
            assoc.abort()
            self._on_aborted(assoc, why)
            aborted += 1
        return aborted

    def _run(self) -> None:
        while not self._stop.wait(min(1.0, self._max_seconds / 4)):
            try:
                self.check()
            except Exception:  # the thread must survive one bad round
                logger.exception("association watchdog round failed")
