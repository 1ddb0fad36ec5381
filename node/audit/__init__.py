"""The audit trail: rows written with the state change they record (write), and the read side (query).

from node import audit
audit.record(session, audit.Events.SERIES_COMPLETE, "...", series_uid=uid)
"""

from __future__ import annotations

from node.audit.write import Events, Where, record, record_core

__all__ = ["Events", "Where", "record", "record_core"]
