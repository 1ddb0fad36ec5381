"""The frozen plan of one delivery: everything the deliverer needs, fixed when the route step decided.

The route step (node.routing, calling node.rules.decide) writes one plan per destination into the
delivery job (`jobs.plan`, JSON). The deliverer reads only its job and this plan: a rules reload
afterwards changes nothing already queued, and a delivery can always say which rules file (by digest)
and which rules sent it where it went. `dicom-node deliveries retry ID --replan` asks the router to decide
again with the rules in force and replaces the plans of the deliveries it still chooses.

    plan = DeliveryPlan(destination, rules=("ct-to-pacs",), rules_sha256="ab12...", generation=1)
    plan.destination.writeback / .structured_report     # what the copies carry (a rule may override)
    plan.results                                        # the classification to write back, or None
    job.plan = plan.to_json()                       # stored with the job
    DeliveryPlan.from_json(job.plan)                # PlanError if missing or malformed
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from node.deliver.destinations import Destination, destination_from_json
from node.errors import NodeError

# Version 2 added `results`; version 1 plans (no write-back) are still read.
PLAN_VERSION = 2
READABLE_VERSIONS = (1, 2)


class PlanError(NodeError):
    """A delivery job whose plan is missing or cannot be read (the message says which and why)."""


@dataclass(frozen=True)
class DeliveryPlan:
    """Where one series generation goes and why, as decided (the destination's settings as they were)."""

    destination: Destination
    # The rules that chose this destination ("fallback" when the fallback did).
    rules: tuple[str, ...]
    # Digest and path of the rules file that decided (None only for plans made without a file).
    rules_sha256: str | None
    rules_source: str | None
    # The series generation to deliver (1 for the first completion, +1 per follow-up).
    generation: int
    # What the analysis found, frozen for the write-back and the Structured Report (node.results):
    # set only when the destination gets either; None otherwise.
    results: dict[str, Any] | None = None

    @property
    def destination_name(self) -> str:
        return self.destination.name

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form, stored in `jobs.plan` and shown in the audit trail."""
        return {
            "version": PLAN_VERSION,
            "destination": self.destination.model_dump(mode="json"),
            "rules": list(self.rules),
            "rules_sha256": self.rules_sha256,
            "rules_source": self.rules_source,
            "generation": self.generation,
            "results": self.results,
        }

    @classmethod
    def from_json(cls, data: Any, job_id: int | None = None) -> DeliveryPlan:
        """The plan stored with a job. Raises PlanError naming the job and the problem."""
        where = f"delivery {job_id}" if job_id is not None else "delivery plan"
        if data is None:
            raise PlanError(
                f"{where} has no frozen plan (queued by a node version before plans existed); "
                "`deliveries retry ID --replan` decides it again with the rules in force"
            )
        if not isinstance(data, dict):
            raise PlanError(f"{where}: the plan is not a JSON object")
        version = data.get("version")
        if version not in READABLE_VERSIONS:
            raise PlanError(
                f"{where}: plan version {version!r} is not supported (expected one of {READABLE_VERSIONS})"
            )
        try:
            destination = destination_from_json(data.get("destination"))
            rules = tuple(str(r) for r in data.get("rules") or ())
            generation = int(data["generation"])
        except (KeyError, TypeError, ValueError, ValidationError) as exc:
            raise PlanError(f"{where}: malformed plan: {exc}") from exc
        results = data.get("results")
        if results is not None and not isinstance(results, dict):
            raise PlanError(f"{where}: malformed plan: results is not a JSON object")
        sha = data.get("rules_sha256")
        source = data.get("rules_source")
        return cls(
            destination=destination,
            rules=rules,
            rules_sha256=str(sha) if sha is not None else None,
            rules_source=str(source) if source is not None else None,
            generation=generation,
            results=results,
        )

