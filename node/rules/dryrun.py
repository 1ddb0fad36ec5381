"""`dicom-node rules check` and `dicom-node rules test`: validate a rules file; dry-run it on DICOM files.

The dry run reads headers, groups instances by SeriesInstanceUID, and shows per series which rules
matched, why each did or did not, and where the series would go. Nothing is sent. With an analyser (the
classifier, as configured for the node) each series is also assembled and classified exactly as the
running node would, so rules on prediction.*, prior.* and disagreement.* show their real values.
"""

from __future__ import annotations

import json as jsonlib
import logging
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from node.analysis import AnalysisResult, NoAnalysis, SeriesAnalyser
from node.errors import RulesError
from node.facts import series_facts
from node.rules.decision import Decision, decide
from node.rules.ruleset import RuleSet, load_rules

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------- reading


@dataclass
class _Series:
    uid: str
    first_path: Path
    representative: Dataset
    rep_key: tuple[float, str]
    instances: set[str] = field(default_factory=set)
    files: int = 0
    paths: list[Path] = field(default_factory=list)


@dataclass
class ScanResult:
    series: list[_Series]
    skipped: list[tuple[Path, str]]


def _files(path: Path) -> Iterator[Path]:
    if path.is_file():
        yield path
        return
    for child in sorted(path.rglob("*")):
        if child.is_file():
            yield child


def _instance_number(ds: Dataset) -> float:
    value = ds.get("InstanceNumber")
    try:
        return float(value) if value not in (None, "") else float("inf")
    except (TypeError, ValueError):
        return float("inf")


def scan(path: Path) -> ScanResult:
    """Read the headers of every DICOM file under path; group them by series (first seen first)."""
    path = Path(path)
    series: dict[str, _Series] = {}
    skipped: list[tuple[Path, str]] = []
    for file in _files(path):
        try:
            ds = pydicom.dcmread(file, stop_before_pixels=True)
        except InvalidDicomError:
            skipped.append((file, "not a DICOM file"))
            continue
        except (OSError, ValueError, EOFError, struct.error) as exc:
            skipped.append((file, f"unreadable DICOM: {exc}"))
            continue
        uid = str(ds.get("SeriesInstanceUID", "") or "").strip()
        if not uid:
            skipped.append((file, "no SeriesInstanceUID"))
            continue
        key = (_instance_number(ds), str(file))
        entry = series.get(uid)
        if entry is None:
            entry = series[uid] = _Series(uid, file, ds, key)
        elif key < entry.rep_key:
            entry.representative, entry.rep_key = ds, key
        entry.instances.add(str(ds.get("SOPInstanceUID", "") or file))
        entry.files += 1
        entry.paths.append(file)
    return ScanResult(list(series.values()), skipped)


# ---------------------------------------------------------------------------------------------- output


def _describe(ds: Dataset) -> dict[str, str]:
    return {
        "modality": str(ds.get("Modality", "") or ""),
        "description": str(ds.get("SeriesDescription", "") or ""),
    }


Decisions = list[tuple[_Series, Decision, AnalysisResult | None]]


def _analysis_lines(analysis: AnalysisResult) -> list[str]:
    lines = [f"  analysis: {analysis.summary}"]
    shown = ("classifiable", "classification.", "prediction.", "prior.", "image.", "disagreement.")
    for name, value in sorted(analysis.facts.items()):
        if name.startswith(shown):
            lines.append(f"    {name} = {value!r}")
    timings = analysis.audit.get("timings_ms")
    if timings:
        lines.append("    timings_ms: " + ", ".join(f"{k} {v}" for k, v in timings.items()))
    return lines


def _decision_lines(decision: Decision) -> list[str]:
    if decision.routing is None:
        return [f"  => {decision.summary()}"]
    lines = decision.routing.render_text().splitlines()
    for name, plan in decision.plans.items():
        dest = plan.destination
        lines.append(
            f"  plan {name}: {dest.kind} {dest.address}, generation {plan.generation}"
            + (f", writeback {dest.writeback.mode}" if dest.writeback.mode != "none" else "")
            + (", structured report" if dest.structured_report else "")
        )
    return lines


def _render_text(ruleset: RuleSet, result: ScanResult, decisions: Decisions) -> str:
    lines = [f"rules: {ruleset.source} (sha256 {str(ruleset.sha256)[:12]})"]
    for warning in ruleset.warnings:
        lines.append(f"warning: {warning}")
    for path, why in result.skipped:
        lines.append(f"skipped {path}: {why}")
    for entry, decision, analysis in decisions:
        info = _describe(entry.representative)
        lines.append("")
        lines.append(f"series {entry.uid}")
        lines.append(
            f"  modality {info['modality'] or '-'}, description {info['description']!r}, "
            f"{len(entry.instances)} instances (first file {entry.first_path})"
        )
        if analysis is not None:
            lines.extend(_analysis_lines(analysis))
        lines.extend(_decision_lines(decision))
    lines.append("")
    lines.append(f"{len(decisions)} series, {len(result.skipped)} files skipped")
    return "\n".join(lines) + "\n"


def _render_json(ruleset: RuleSet, result: ScanResult, decisions: Decisions) -> str:
    out = {
        "rules": ruleset.source,
        "rules_sha256": ruleset.sha256,
        "warnings": ruleset.warnings,
        "skipped": [{"path": str(p), "reason": why} for p, why in result.skipped],
        "series": [
            {
                "series_uid": entry.uid,
                **_describe(entry.representative),
                "instance_count": len(entry.instances),
                "decision": decision.to_audit(redact=False),
                "analysis": None
                if analysis is None
                else {"summary": analysis.summary, "facts": analysis.facts, "details": analysis.audit},
            }
            for entry, decision, analysis in decisions
        ],
    }
    return jsonlib.dumps(out, indent=2) + "\n"


def dry_run(
    rules_path: Path,
    dicom_path: Path,
    json: bool = False,
    analyser: SeriesAnalyser | None = None,
    *,
    calling_ae: str | None = None,
    called_ae: str | None = None,
) -> str:
    """Evaluate the rules on every series found under dicom_path; the report as text or JSON.

    Raises RulesError for an invalid rules file and FileNotFoundError for a missing dicom_path.
    """
    ruleset = load_rules(Path(rules_path))
    result, decisions = decide_folder(
        ruleset, dicom_path, analyser, calling_ae=calling_ae, called_ae=called_ae
    )
    render = _render_json if json else _render_text
    return render(ruleset, result, decisions)


def decide_folder(
    ruleset: RuleSet,
    dicom_path: Path,
    analyser: SeriesAnalyser | None = None,
    *,
    calling_ae: str | None = None,
    called_ae: str | None = None,
) -> tuple[ScanResult, Decisions]:
    """What the node would decide for every series under dicom_path: the same facts (node.facts.series_facts),
    the same analysis (the node's analyser, or none) and the same `decide` as the running node."""
    dicom_path = Path(dicom_path)
    if not dicom_path.exists():
        raise FileNotFoundError(f"{dicom_path}: no such file or folder")
    result = scan(dicom_path)
    decisions: Decisions = []
    for entry in result.series:
        facts = series_facts(
            entry.representative, len(entry.instances), calling_ae=calling_ae, called_ae=called_ae
        )
        analysed = analyser.analyse(entry.uid, entry.representative, entry.paths) if analyser else None
        decision = decide(
            facts, analysed or NoAnalysis().analyse(entry.uid, entry.representative, []), ruleset
        )
        decisions.append((entry, decision, analysed))
    return result, decisions


def check(path: Path) -> tuple[bool, str]:
    """Validate a rules file (or every *.yaml / *.yml in a folder): (ok, message for the user)."""
    path = Path(path)
    files = sorted([*path.glob("*.yaml"), *path.glob("*.yml")]) if path.is_dir() else [path]
    if not files:
        return False, f"{path}: no *.yaml rules files in this folder"
    ok = True
    messages = []
    for file in files:
        try:
            ruleset = load_rules(file)
        except RulesError as exc:
            ok = False
            messages.append(str(exc))
            continue
        fallback = ruleset.fallback
        action = "discard" if fallback.discard else "send_to " + ", ".join(fallback.send_to or [])
        counts = f"{len(ruleset.destinations)} destinations, {len(ruleset.rules)} rules"
        messages.append(f"{file}: OK: {counts}, fallback {action}")
        messages.extend(f"{file}: warning: {w}" for w in ruleset.warnings)
    return ok, "\n".join(messages)


# ---------------------------------------------------------------------------------------------- commands


def cmd_rules_check(path: Path) -> int:
    """`dicom-node rules check PATH`: 0 if valid (report on stdout), 1 if not (errors on stderr)."""
    ok, message = check(path)
    print(message, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def cmd_rules_test(
    rules: Path,
    data: Path,
    as_json: bool,
    analyser: SeriesAnalyser | None = None,
    *,
    calling_ae: str | None = None,
    called_ae: str | None = None,
) -> int:
    """`dicom-node rules test PATH`: 0 with a report on stdout; 1 for invalid rules, 2 for unusable data."""
    try:
        ruleset = load_rules(Path(rules))
        result, decisions = decide_folder(ruleset, data, analyser, calling_ae=calling_ae, called_ae=called_ae)
    except RulesError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except FileNotFoundError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    render = _render_json if as_json else _render_text
    sys.stdout.write(render(ruleset, result, decisions))
    if not decisions:
        print(f"{data}: no DICOM series found", file=sys.stderr)
        return 2
    return 0
