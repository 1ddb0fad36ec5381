"""`decide(facts, analysis, rules) -> Decision`: where a series goes, why, and each destination's frozen plan.

Pure: no I/O, no clock, no database. The running node (node.routing.Router) and the dry run
(`rules test`, node.rules.dryrun) both call it, so that for the same series and rules they reach the
same decision (tests/integration/test_decision_parity.py). The router then writes the decision, its
audit rows and one delivery job per plan in one transaction; the deliverer reads only the plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from node.analysis import AnalysisResult
from node.deliver.destinations import DeliveryOptions, Destination
from node.deliver.plan import DeliveryPlan
from node.facts import SeriesFacts
from node.results import frozen_results
from node.rules.evaluation import FALLBACK, RoutingDecision, evaluate
from node.rules.ruleset import RuleSet

NO_RULES = "no rules file configured: the series stays in the spool"


@dataclass(frozen=True)
class Decision:
    """The outcome of routing one series generation."""

    series_uid: str
    generation: int
    # How the rules were evaluated (traces: which rule matched, and why); None without a rules file.
    routing: RoutingDecision | None
    # One frozen plan per chosen destination, by destination name (sorted).
    plans: dict[str, DeliveryPlan] = field(default_factory=dict)

    @property
    def destinations(self) -> list[str]:
        return list(self.plans)

    @property
    def rules_sha256(self) -> str | None:
        return self.routing.rules_sha256 if self.routing is not None else None

    def summary(self) -> str:
        """One line for the audit row and the dry run."""
        if self.routing is None:
            return NO_RULES
        if self.routing.discarded:
            why = FALLBACK if self.routing.fallback_used else f"rule {self.routing.stopped_by!r}"
            return f"discarded ({why})"
        if not self.plans:
            return "destinations: none"
        return "destinations: " + ", ".join(self.plans)

    def to_audit(self, redact: bool = True) -> dict[str, Any]:
        """JSON-ready explanation: the rule trace, and each plan as it was frozen. Identifying values
        (patient ID, names, birth date) that a rule tested are "<redacted>" unless redact is False."""
        if self.routing is None:
            return {
                "series_uid": self.series_uid,
                "generation": self.generation,
                "rules": None,
                "reason": NO_RULES,
                "destinations": {},
                "plans": {},
            }
        out = self.routing.to_audit(redact)
        out["generation"] = self.generation
        out["rules"] = self.routing.rules_source
        out["plans"] = {name: plan.to_json() for name, plan in self.plans.items()}
        return out


def decide(facts: SeriesFacts, analysis: AnalysisResult, rules: RuleSet | None) -> Decision:
    """Evaluate the rules on the series' facts plus what the analysis found; freeze a plan per destination.

    `rules` None (no rules file configured) decides nothing: the series is kept, not forwarded.
    """
    if rules is None:
        return Decision(facts.series_uid, facts.generation, None)
    routing = evaluate(rules, facts.with_extra(analysis.facts))
    results = frozen_results(analysis)
    plans = {}
    for name, chosen_by in sorted(routing.destinations.items()):
        destination = _with_rule_options(rules, name, chosen_by)
        wants_results = destination.writeback.mode != "none" or destination.structured_report
        plans[name] = DeliveryPlan(
            destination=destination,
            rules=tuple(chosen_by),
            rules_sha256=rules.sha256,
            rules_source=rules.source,
            generation=facts.generation,
            results=results if wants_results else None,
        )
    return Decision(facts.series_uid, facts.generation, routing, plans)


def _with_rule_options(rules: RuleSet, name: str, chosen_by: list[str]) -> Destination:
    """The destination with the `deliver:` overrides of the rules that chose it: for each field, the
    first of those rules (in file order) that sets it decides; unset fields keep the destination's."""
    writeback = structured_report = None
    for rule_name in chosen_by:
        rule = rules.rule(rule_name)
        options = rule.deliver if rule is not None else None
        if options is None:
            continue
        writeback = writeback if writeback is not None else options.writeback
        if structured_report is None:
            structured_report = options.structured_report
    destination = rules.destination(name)
    options = DeliveryOptions(writeback=writeback, structured_report=structured_report)
    merged = destination.with_options(options)
    assert isinstance(merged, type(destination))
    return merged
