"""The rule set in force in a running node, swapped atomically on reload."""

from __future__ import annotations

import threading
from pathlib import Path

from node.rules.ruleset import RuleSet, load_rules


class RulesHolder:
    """The rule set in force. Reloading swaps it atomically; work in flight keeps the set it took."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._rules: RuleSet | None = load_rules(path) if path is not None else None

    @property
    def current(self) -> RuleSet | None:
        with self._lock:
            return self._rules

    def reload(self) -> RuleSet | None:
        """Load the file again. Raises RulesError (the old set stays in force) when it is invalid."""
        if self.path is None:
            return None
        rules = load_rules(self.path)
        with self._lock:
            self._rules = rules
        return rules
