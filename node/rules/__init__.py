"""Routing rules: a rules file (ruleset), its conditions and fields, their evaluation, and the pure
`decide(facts, analysis, rules)` that the running node and the dry run (`rules test`) both call.

    ruleset = load_rules(Path("rules/example.yaml"))   # RulesError naming file, line, rule and field
    decision = evaluate(ruleset, facts)                 # pure: no I/O, no clock
    decision.destinations                               # {"pacs": ["ct-to-pacs"]}

The semantics (order, stop/continue, discard, fallback, operators) are documented in docs/rules.md.
"""

from __future__ import annotations

from node.rules.decision import NO_RULES, Decision, decide
from node.rules.evaluation import FALLBACK, RoutingDecision, RuleTrace, evaluate
from node.rules.holder import RulesHolder
from node.rules.ruleset import Fallback, Problem, Rule, RuleSet, RulesFileError, load_rules, parse_rules

__all__ = [
    "FALLBACK",
    "NO_RULES",
    "Decision",
    "Fallback",
    "Problem",
    "RoutingDecision",
    "Rule",
    "RuleSet",
    "RuleTrace",
    "RulesFileError",
    "RulesHolder",
    "decide",
    "evaluate",
    "load_rules",
    "parse_rules",
]
