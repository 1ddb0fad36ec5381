"""Talk to a node's HTTP side with curl (a real client, as operators use it) and parse /metrics."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

# (sample name, sorted label items) -> value
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def curl(url: str) -> tuple[int, str]:
    """(HTTP status, body) of a GET with the curl binary."""
    result = subprocess.run(
        ["curl", "-s", "-S", "--noproxy", "*", "--max-time", "30", "-w", "\n%{http_code}", url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    body, _, status = result.stdout.rpartition("\n")
    return int(status), body


def get_json(url: str) -> tuple[int, dict[str, Any]]:
    status, body = curl(url)
    return status, json.loads(body)


def scrape(base_url: str) -> Samples:
    """Every sample of GET /metrics, parsed with prometheus-client's own parser."""
    status, body = curl(base_url + "/metrics")
    assert status == 200, body
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 when the node has not produced it yet (a counter never incremented)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)
