"""The outcome of evaluating routing rules for one series, and the pure evaluation itself.

Re-exported by node.rules; see docs/rules.md for the semantics of order, stop/continue, discard and fallback.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from node.facts import SeriesFacts
from node.rules.conditions import REDACTED, ConditionTrace, GroupTrace, LeafTrace, show

if TYPE_CHECKING:
    from node.rules import RuleSet

FALLBACK = "fallback"  # the pseudo rule name under which the fallback's destinations are recorded


@dataclass(frozen=True)
class RuleTrace:
    """What one rule did for one series."""

    name: str
    evaluated: bool
    matched: bool
    action: str  # "send_to pacs, research" or "discard"
    on_match: str
    condition: ConditionTrace | None = None
    note: str | None = None

    def to_audit(self, redact: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"rule": self.name, "matched": self.matched}
        if not self.evaluated:
            out["evaluated"] = False
        if self.condition is not None:
            out["when"] = self.condition.to_audit(redact)
        if self.note:
            out["note"] = self.note
        return out


@dataclass(frozen=True)
class RoutingDecision:
    """Where a series goes and why. `destinations` maps a destination name to the rules that chose it."""

    series_uid: str
    destinations: dict[str, list[str]]
    discarded: bool
    fallback_used: bool
    rules: tuple[RuleTrace, ...]
    stopped_by: str | None = None
    # Destinations chosen by `continue` rules before a discard rule matched (and so not used).
    dropped: dict[str, list[str]] = field(default_factory=dict)
    rules_source: str | None = None
    rules_sha256: str | None = None

    @property
    def destination_names(self) -> list[str]:
        return list(self.destinations)

    @property
    def matched_rules(self) -> list[str]:
        return [r.name for r in self.rules if r.matched]

    def to_audit(self, redact: bool = True) -> dict[str, Any]:
        """Compact JSON-serialisable explanation. Identifying values (patient ID, names, birth date) are
        replaced by "<redacted>" unless redact is False (an interactive dry run)."""
        out: dict[str, Any] = {
            "series_uid": self.series_uid,
            "destinations": {k: list(v) for k, v in self.destinations.items()},
            "discarded": self.discarded,
            "fallback_used": self.fallback_used,
            "matched_rules": self.matched_rules,
            "stopped_by": self.stopped_by,
            "rules_sha256": self.rules_sha256,
            "trace": [r.to_audit(redact) for r in self.rules],
        }
        if self.dropped:
            out["dropped"] = {k: list(v) for k, v in self.dropped.items()}
        return out

    def summary(self) -> str:
        if self.discarded:
            why = FALLBACK if self.fallback_used else f"rule {self.stopped_by!r}"
            return f"discarded ({why})"
        parts = [f"{name} ({', '.join(by)})" for name, by in self.destinations.items()]
        return "send to " + ", ".join(parts)

    def render_text(self, redact: bool = False) -> str:
        lines = []
        for trace in self.rules:
            if not trace.evaluated:
                lines.append(f"  rule {trace.name}: not evaluated ({trace.note})")
                continue
            verdict = "MATCHED" if trace.matched else "no match"
            consequence = f" -> {trace.action} ({trace.on_match})" if trace.matched else ""
            lines.append(f"  rule {trace.name}: {verdict}{consequence}")
            if trace.condition is None:
                lines.append("      (no condition: matches every series)")
            else:
                rendered = trace.condition.render("      ")
                if redact:
                    rendered = [_redact_line(trace.condition, line) for line in rendered]
                lines.extend(rendered)
        if self.fallback_used:
            lines.append("  no rule matched: fallback applies")
        if self.dropped:
            lines.append(f"  dropped by the discard: {', '.join(self.dropped)}")
        lines.append(f"  => {self.summary()}")
        return "\n".join(lines)


def _redact_line(condition: ConditionTrace, line: str) -> str:
    stack: list[ConditionTrace] = [condition]
    while stack:
        item = stack.pop()
        if isinstance(item, GroupTrace):
            stack.extend(item.children)
        elif isinstance(item, LeafTrace) and item.identifying and item.actual is not None:
            line = line.replace(f"actual {show(item.actual)}", f"actual {REDACTED}")
    return line


def evaluate(ruleset: RuleSet, facts: SeriesFacts) -> RoutingDecision:
    """Decide where a series goes. Pure: reads only the rule set and the facts.

    Rules run in order. A matching rule adds its destinations; with on_match: stop (the default) later rules
    are not evaluated, with continue they are. A matching discard rule stops and the series goes nowhere,
    even to destinations that earlier continue rules chose. If no rule matched, the fallback applies.
    """
    chosen: dict[str, list[str]] = {}
    traces: list[RuleTrace] = []
    stopped_by: str | None = None
    discarded = False
    matched_any = False
    for rule in ruleset.rules:
        action = "discard" if rule.discard else "send_to " + ", ".join(rule.send_to or [])
        if stopped_by is not None:
            traces.append(
                RuleTrace(
                    rule.name,
                    False,
                    False,
                    action,
                    rule.on_match,
                    note=f"rule {stopped_by!r} stopped evaluation",
                )
            )
            continue
        condition = rule.when.evaluate(facts) if rule.when is not None else None
        matched = condition.result if condition is not None else True
        traces.append(RuleTrace(rule.name, True, matched, action, rule.on_match, condition))
        if not matched:
            continue
        matched_any = True
        if rule.discard:
            discarded = True
            stopped_by = rule.name
            continue
        for name in rule.send_to or []:
            chosen.setdefault(name, []).append(rule.name)
        if rule.on_match == "stop":
            stopped_by = rule.name
    if not matched_any:
        if ruleset.fallback.discard:
            discarded = True
        else:
            chosen = {name: [FALLBACK] for name in ruleset.fallback.send_to or []}
    dropped: dict[str, list[str]] = {}
    if discarded and chosen:
        dropped, chosen = chosen, {}
    return RoutingDecision(
        series_uid=facts.series_uid,
        destinations=chosen,
        discarded=discarded,
        fallback_used=not matched_any,
        rules=tuple(traces),
        stopped_by=stopped_by,
        dropped=dropped,
        rules_source=ruleset.source,
        rules_sha256=ruleset.sha256,
    )
