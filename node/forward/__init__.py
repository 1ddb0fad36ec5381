"""Forwarding to destinations: a common protocol (base) and one module per destination kind."""

from __future__ import annotations

from node.forward.base import InstanceFile, OnSent, Sender, SendOutcome, is_delivered

__all__ = ["InstanceFile", "OnSent", "SendOutcome", "Sender", "is_delivered"]
