"""Reading IV contrast: the description vocabulary (explicit, implied, both, oral only), the
Contrast/Bolus attributes, and the two combined."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from pydicom.dataset import Dataset

from node.classify.labels import CONTRAST
from node.classify.prior.attributes import attribute_number, attribute_text
from node.classify.prior.combine import Vote, combine_votes, match_vote
from node.classify.prior.confidences import (
    CONTRAST_EXPLICIT,
    CONTRAST_IMPLIED,
    CONTRAST_TAG,
    CONTRAST_TAG_IV,
    CONTRAST_TAG_NONE,
    CONTRAST_USAGE,
    DESCRIPTION_SOURCES,
    STUDY_LEVEL_CONTRAST_PENALTY,
    STUDY_LEVEL_SOURCES,
)
from node.classify.prior.results import PriorAnswer
from node.classify.prior.text import TextMatch, scan_text, shortened, shown_text, words_of

ContrastSays = Literal["yes", "no", "both", "oral"]
_CONTRAST_TABLE: dict[tuple[str, ...], tuple[ContrastSays, bool]] = {}  # phrase -> (says, explicit)


def _said(phrases: Iterable[tuple[str, ...]], says: ContrastSays, explicit: bool = True) -> None:
    for phrase in phrases:
        _CONTRAST_TABLE[phrase] = (says, explicit)


_AGENT_WORDS = tuple("CONTRAST CON CONT CONTR ENHANCED ENHANCEMENT KM KONTRASTU CONTRASTE".split())
_NEGATORS = tuple("WITHOUT WO <WO> <CMINUS> NO NON OHNE BEZ SANS SIN".split())
_WITH = tuple("W WITH <CPLUS> MIT Z AVEC CON".split())
_said(
    [
        (w,)
        for w in "WITHOUT WO <WO> <CMINUS> NONCON NONCONTRAST NONCONT NC NCCT UNENHANCED NONENHANCED".split()
    ]
    + [(w,) for w in "PRECONTRAST PLAIN NATIVE NATIV NATYWNE NATYWNA".split()]
    + [(n, a) for n in _NEGATORS for a in _AGENT_WORDS]
    + [(n, "IV", a) for n in _NEGATORS for a in _AGENT_WORDS]
    + [(n, "IV") for n in _NEGATORS]
    + [("W", "O"), ("PRE", "CONTRAST"), ("PRE", "CON")],
    "no",
)
_said(
    [(w,) for w in "W WITH <CPLUS> CE CECT CONTRAST ENHANCED POSTCONTRAST KONTRAST KONTRASTEM".split()]
    + [(w, a) for w in _WITH + ("POST", "IV") for a in _AGENT_WORDS]
    + [(w, "IV") for w in _WITH],
    "yes",
)
# A contrast phase, an angiography or a perfusion study implies IV contrast.
_said(
    [(w,) for w in "ARTERIAL PORTAL VENOUS PV PVP DELAYED NEPHROGRAPHIC EXCRETORY ARTERIELL TETNICZA".split()]
    + [(w,) for w in "CTA CTPA CTV ANGIO ANGIOGRAPHY ANGIOGRAM PE PERFUSION UROGRAM UROGRAPHY".split()]
    + [("ENTEROGRAPHY",)],
    "yes",
    explicit=False,
)
_said([("WWO",), ("WWWO",), ("PRE", "POST"), ("PRE", "AND", "POST"), ("PRE", "POST", "CONTRAST")], "both")
# Oral (or rectal) contrast says nothing about IV contrast.
_ROUTES = ("ORAL", "RECTAL")
_said(
    [(r,) for r in _ROUTES]
    + [(r, a) for r in _ROUTES for a in _AGENT_WORDS]
    + [(w, r) for w in _WITH + _NEGATORS for r in _ROUTES]
    + [(w, r, a) for w in _WITH + _NEGATORS for r in _ROUTES for a in _AGENT_WORDS],
    "oral",
)


def contrast_from_text(text: str) -> TextMatch:
    """What a free-text value says about IV contrast: "yes", "no", or None with a note when it says
    both (W/WO), only oral contrast, or nothing."""
    hits = scan_text(words_of(text), _CONTRAST_TABLE)
    if not hits:
        return TextMatch(None, ())
    shown = tuple(shown_text(key) for key, _ in hits)
    says = {s for _, (s, _) in hits}
    if "both" in says or {"yes", "no"} <= says:
        return TextMatch(None, shown, "says both with and without contrast")
    for label in ("yes", "no"):
        if label in says:
            explicit = any(e for _, (s, e) in hits if s == label)
            if explicit:
                return TextMatch(label, shown)
            return TextMatch(label, shown, "implied", CONTRAST_EXPLICIT - CONTRAST_IMPLIED)
    return TextMatch(None, shown, "oral contrast only: says nothing about IV contrast")


_NONE_AGENTS = frozenset(
    {"NONE", "NO", "N/A", "NA", "0", "-", "NIL", "NON", "NOT APPLIED", "NO CONTRAST", "WITHOUT"}
)
_ORAL_WORDS = frozenset({"ORAL", "PO", "RECTAL", "BARIUM", "GASTROGRAFIN", "ENTERAL"})
_IV_WORDS = frozenset({"IV", "INTRAVENOUS", "INTRAVASCULAR", "VENOUS", "INTRAARTERIAL", "ARTERIAL", "IA"})


def _contrast_tag_votes(header: Dataset) -> list[Vote]:
    votes: list[Vote] = []
    # Enhanced CT / MR: the Contrast/Bolus Usage functional group says YES or NO per agent.
    groups = []
    for outer in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        seq = header.get(outer)
        if seq:
            groups.append(seq[0])
    for group in groups:
        for usage in group.get("ContrastBolusUsageSequence", None) or ():
            administered = str(usage.get("ContrastBolusAgentAdministered", "")).strip().upper()
            if administered in ("YES", "NO"):
                label = "yes" if administered == "YES" else "no"
                evidence = f"ContrastBolusUsageSequence ContrastBolusAgentAdministered {administered}"
                votes.append(Vote(label, CONTRAST_USAGE, "ContrastBolusUsageSequence", evidence))
                return votes

    filled: list[tuple[str, str]] = []  # (keyword, value) of the Contrast/Bolus attributes present
    for keyword in ("ContrastBolusAgent", "ContrastBolusRoute", "ContrastBolusIngredient"):
        value = attribute_text(header, keyword)
        if value:
            filled.append((keyword, value))
    for item in header.get("ContrastBolusAgentSequence", None) or ():
        meaning = str(item.get("CodeMeaning", "")).strip()
        filled.append(("ContrastBolusAgentSequence", meaning or "(coded agent)"))
        for route in item.get("ContrastBolusAdministrationRouteSequence", None) or ():
            filled.append(
                ("ContrastBolusAdministrationRouteSequence", str(route.get("CodeMeaning", "")).strip())
            )
    volume = attribute_number(header.get("ContrastBolusVolume"))
    # Some scanners write volume 0 by default alongside an agent: a zero volume is not evidence.
    if volume is not None and volume > 0:
        filled.append(("ContrastBolusVolume", f"{volume:g}"))
    if not filled:
        return votes

    said = "; ".join(f"{k} '{shortened(v)}'" for k, v in filled)
    agent = next((v for k, v in filled if k == "ContrastBolusAgent"), "")
    quantity = {"ContrastBolusVolume", "ContrastBolusIngredient"} & {k for k, _ in filled}
    if agent and " ".join(agent.upper().split()) in _NONE_AGENTS and not quantity:
        evidence = f"ContrastBolusAgent '{shortened(agent)}' says none"
        return [Vote("no", CONTRAST_TAG_NONE, "ContrastBolusAgent", evidence)]
    words = {w for _, v in filled for w in words_of(v)}
    iv = bool(words & _IV_WORDS)
    oral = bool(words & _ORAL_WORDS)
    source = filled[0][0]
    if oral and not iv:
        return [Vote(None, 0.0, source, f"{said}: oral/rectal contrast only, says nothing about IV contrast")]
    confidence = CONTRAST_TAG_IV if iv else CONTRAST_TAG
    return [Vote("yes", confidence, source, f"{said} -> yes" + (" (intravenous)" if iv else ""))]


def contrast_answer(header: Dataset) -> PriorAnswer:
    votes = _contrast_tag_votes(header)
    # Descriptions weigh by what they say (explicit or implied) and by level (series or study).
    for keyword, _ in DESCRIPTION_SOURCES:
        text = attribute_text(header, keyword)
        if not text:
            continue
        match = contrast_from_text(text)
        if not match.words:
            continue
        confidence = CONTRAST_EXPLICIT - match.penalty
        if keyword in STUDY_LEVEL_SOURCES:
            confidence -= STUDY_LEVEL_CONTRAST_PENALTY
        votes.append(match_vote(match, keyword, confidence))
    # Absent Contrast/Bolus attributes are not evidence of no contrast: many scanners never fill them.
    return combine_votes(votes, nothing="no contrast attributes and no contrast words in descriptions")


assert set(CONTRAST) == {"yes", "no"}
