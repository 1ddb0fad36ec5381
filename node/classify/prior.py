"""The metadata prior: what a series' DICOM attributes say about its body part, axis and contrast.

The prior reads the header only and is kept apart from the image model, so that the two can be compared:
a disagreement between them is a result in its own right (routed to QA, shown in the SR). Tags are read
as what they say, even when they are wrong (BodyPartExamined BREAST on a head-and-neck series says
Chest): the image decides what is true. docs/prior.md has the tables, confidences and their reasons.

    prior = read_prior(header)              # header: one instance of the series, stop_before_pixels
    prior.axis.label, prior.axis.confidence, prior.axis.evidence
    facts.update(prior.as_facts())          # prior.body_part, prior.axis_oblique, ... for routing rules

Evidence never quotes a patient-identifying attribute, nor free text beyond the words that matched the
vocabulary (descriptions are free text and sometimes carry names).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydicom.dataset import Dataset

from node.classify.labels import AXES, BODY_PARTS, CONTRAST

UNKNOWN = "unknown"  # how an unknown label appears in facts and audit
PRIOR_VERSION = 1  # bump when the tables or confidences change, so audits can be compared

# ---------------------------------------------------------------------------------------------- confidences

BODY_PART_EXAMINED_CONFIDENCE = 0.8
BODY_PART_NEAR_CONFIDENCE = 0.5  # BodyPartExamined outside the vocabulary, read as its closest class
# Free-text sources, most specific to the series first. Contrast is a property of one series, so the
# study-level texts (a study may hold a plain and an enhanced series) count less for it.
DESCRIPTION_SOURCES: tuple[tuple[str, float], ...] = (
    ("SeriesDescription", 0.7),
    ("ProtocolName", 0.65),
    ("StudyDescription", 0.65),
    ("RequestedProcedureDescription", 0.6),
    ("PerformedProcedureStepDescription", 0.6),
)
STUDY_LEVEL_SOURCES = frozenset(
    {"StudyDescription", "RequestedProcedureDescription", "PerformedProcedureStepDescription"}
)
STUDY_LEVEL_CONTRAST_PENALTY = 0.1
# How indirect a description's words are: an organ inside a class's region, a region only near a class.
KIND_PENALTY = {"region": 0.0, "within": 0.1, "near": 0.2}
CLOSEST_PENALTY = (
    0.1  # combined regions with no class of their own, read as the smallest class containing them
)
CONTRAST_EXPLICIT = 0.7  # W, WO, WITH CONTRAST, NON CON, C+, C-, ...
CONTRAST_IMPLIED = 0.6  # ARTERIAL, PORTAL, CTA, PE, ... (a phase or an angiography implies IV contrast)
CONTRAST_TAG = 0.8  # ContrastBolusAgent / Route / Volume / Ingredient filled in
CONTRAST_TAG_IV = 0.9  # ... and the route (or the agent's text) says intravenous
CONTRAST_TAG_NONE = 0.6  # ContrastBolusAgent says NONE / NO
CONTRAST_USAGE = 0.85  # enhanced CT: ContrastBolusUsageSequence > ContrastBolusAgentAdministered YES/NO
AXIS_TEXT_CONFIDENCE = 0.5  # no IOP: SeriesDescription / ProtocolName say AX, COR, SAG
AXIS_IMAGE_TYPE_CONFIDENCE = 0.3  # no IOP: ImageType AXIAL (a CT acquisition type, often kept on reformats)
AGREE_BONUS = 0.05  # per further source with the same label
CONFLICT_PENALTY = 0.15  # per source with a label that contradicts the winner
MAX_COMBINED = 0.95
MIN_COMBINED = 0.1

DEFAULT_OBLIQUE_TOLERANCE_DEGREES = 10.0
# A gantry-tilted axial acquisition rotates the slice about the patient's left-right axis; scanners tilt
# up to about 30 degrees. Such a series is axial to a radiologist, only flagged oblique.
DEFAULT_GANTRY_TILT_LIMIT_DEGREES = 30.0
AXIS_GANTRY_TILT_CONFIDENCE = 0.9
# Other obliques: (obliquity up to, confidence); 54.7 degrees is the most a nearest axis can be away.
AXIS_OBLIQUE_CONFIDENCE: tuple[tuple[float, float], ...] = ((30.0, 0.6), (45.0, 0.5), (55.0, 0.4))


# ---------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class PriorAnswer:
    """What the header says for one task. label None means unknown (and confidence 0.0)."""

    label: str | None
    confidence: float
    source: str  # the attribute that decided ("none" when nothing did)
    evidence: str  # human-readable: which attributes said what, agreements and conflicts

    @property
    def known(self) -> bool:
        return self.label is not None

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label if self.label is not None else UNKNOWN,
            "confidence": round(self.confidence, 3),
            "source": self.source,
            "evidence": self.evidence,
        }


@dataclass(frozen=True)
class Prior:
    body_part: PriorAnswer
    axis: PriorAnswer
    contrast: PriorAnswer
    # The slice normal's angle to the nearest patient axis; None without Image Orientation (Patient).
    axis_obliquity_degrees: float | None = None
    # True when that angle exceeds the oblique tolerance (the label is still the nearest axis).
    axis_oblique: bool | None = None

    def answer(self, task: str) -> PriorAnswer:
        """The answer for a task name of labels.TASKS ("body_part", "axis", "contrast")."""
        answers = {"body_part": self.body_part, "axis": self.axis, "contrast": self.contrast}
        if task not in answers:
            raise KeyError(f"unknown task {task!r}; expected one of {sorted(answers)}")
        return answers[task]

    def as_facts(self) -> dict[str, Any]:
        """Flat names for routing rules (docs/prior.md): prior.body_part, prior.axis_confidence, ..."""
        facts: dict[str, Any] = {}
        for task in ("body_part", "axis", "contrast"):
            answer = self.answer(task)
            facts[f"prior.{task}"] = answer.label if answer.label is not None else UNKNOWN
            facts[f"prior.{task}_confidence"] = round(answer.confidence, 3)
            facts[f"prior.{task}_source"] = answer.source
        facts["prior.axis_obliquity_degrees"] = (
            None if self.axis_obliquity_degrees is None else round(self.axis_obliquity_degrees, 2)
        )
        facts["prior.axis_oblique"] = self.axis_oblique
        return facts

    def as_audit(self) -> dict[str, Any]:
        """JSON-serialisable record of the prior, evidence included."""
        axis = self.axis.as_dict()
        axis["obliquity_degrees"] = (
            None if self.axis_obliquity_degrees is None else round(self.axis_obliquity_degrees, 2)
        )
        axis["oblique"] = self.axis_oblique
        return {
            "version": PRIOR_VERSION,
            "body_part": self.body_part.as_dict(),
            "axis": axis,
            "contrast": self.contrast.as_dict(),
        }


# ---------------------------------------------------------------------------------------------- text


@dataclass(frozen=True)
class TextMatch:
    """What one free-text value says for one task."""

    label: str | None  # None: nothing, or nothing usable (see note)
    words: tuple[str, ...]  # the words of the text that matched the vocabulary, upper case
    note: str = ""  # why the label is indirect or missing ("closest class", "both ...", "oral only")
    penalty: float = 0.0  # confidence to subtract because the match is indirect


_NOT_ALNUM_BEFORE = r"(?<![A-Z0-9])"
_NOT_ALNUM_AFTER = r"(?![A-Z0-9])"
# Forms whose meaning lives in punctuation, rewritten to marker tokens before splitting into words.
_MARKERS: tuple[tuple[re.Pattern[str], str], ...] = (
    # W/O, W\O, W.O., W/0: without (but not W/ORAL)
    (re.compile(_NOT_ALNUM_BEFORE + r"W\s?[/\\.]\s?[O0]\.?" + _NOT_ALNUM_AFTER), " <WO> "),
    # C+ and +C: with contrast
    (re.compile(_NOT_ALNUM_BEFORE + r"C\s?\+"), " <CPLUS> "),
    (re.compile(r"\+\s?C" + _NOT_ALNUM_AFTER), " <CPLUS> "),
    # C- means without contrast in head CT; C-SPINE, C-T SPINE and "C- SPINE" are not that.
    (
        re.compile(
            _NOT_ALNUM_BEFORE + r"C\s?-(?![A-Z0-9])(?!\s*(?:SPINE|SPINAL|SP|T|L|TL)" + _NOT_ALNUM_AFTER + ")"
        ),
        " <CMINUS> ",
    ),
)
# How the markers are shown in evidence.
_MARKER_TEXT = {"<WO>": "W/O", "<CPLUS>": "C+", "<CMINUS>": "C-"}
_WORD_RE = re.compile(r"<[A-Z]+>|[A-Z0-9]+")
V = TypeVar("V")
_LONGEST: dict[int, int] = {}  # id(phrase table) -> its longest phrase; the tables are module constants


def words_of(text: str) -> list[str]:
    """Upper-case words of a free-text value, split on anything not a letter or digit, with W/O, C+
    and C- rewritten to the markers <WO>, <CPLUS> and <CMINUS> first."""
    upper = text.upper()
    for pattern, marker in _MARKERS:
        upper = pattern.sub(marker, upper)
    return _WORD_RE.findall(upper)


def _shown(phrase: Sequence[str]) -> str:
    """A matched phrase as the evidence quotes it."""
    return " ".join(_MARKER_TEXT.get(word, word) for word in phrase)


def _match_at(
    words: Sequence[str], i: int, table: dict[tuple[str, ...], V]
) -> tuple[tuple[str, ...], V] | None:
    """The longest phrase of `table` starting at words[i]."""
    longest = _LONGEST.setdefault(id(table), max(len(k) for k in table))
    for n in range(min(longest, len(words) - i), 0, -1):
        key = tuple(words[i : i + n])
        if key in table:
            return key, table[key]
    return None


def _scan(words: Sequence[str], table: dict[tuple[str, ...], V]) -> list[tuple[tuple[str, ...], V]]:
    """Longest-first, left-to-right, non-overlapping phrase matches of `table` in `words`."""
    found: list[tuple[tuple[str, ...], V]] = []
    i = 0
    while i < len(words):
        hit = _match_at(words, i, table)
        if hit is None:
            i += 1
        else:
            found.append(hit)
            i += len(hit[0])
    return found


# ---- body part

Kind = Literal["region", "within", "near"]

# Regions ("atoms") that the 16 classes are made of.
CLASS_ATOMS: dict[str, frozenset[str]] = {
    "Head": frozenset({"HEAD"}),
    "Head and face": frozenset({"HEAD", "FACE"}),
    "Face/Orbits/Sinus": frozenset({"FACE"}),
    "Temporal bone": frozenset({"TEMPORAL"}),
    "Head and neck": frozenset({"HEAD", "NECK"}),
    "Neck": frozenset({"NECK"}),
    "C-spine": frozenset({"CSPINE"}),
    "C and T spine": frozenset({"CSPINE", "TSPINE"}),
    "T-spine": frozenset({"TSPINE"}),
    "T and L spine": frozenset({"TSPINE", "LSPINE"}),
    "L-spine": frozenset({"LSPINE"}),
    "Chest": frozenset({"CHEST"}),
    "Chest-abdomen-pelvis": frozenset({"CHEST", "ABDOMEN", "PELVIS"}),
    "Abdomen": frozenset({"ABDOMEN"}),
    "Abdomen-pelvis": frozenset({"ABDOMEN", "PELVIS"}),
    "Pelvis": frozenset({"PELVIS"}),
}
assert tuple(CLASS_ATOMS) == BODY_PARTS

_CAP = ("CHEST", "ABDOMEN", "PELVIS")
_AP = ("ABDOMEN", "PELVIS")

# Description words -> (atoms, kind). "region": the words name a class's region (or a plain synonym of
# it); "within": an organ inside one; "near": the closest class, not containing it. Phrases are space
# separated word sequences as words_of() splits them (so "C-SPINE" is "C SPINE", "A/P" is "A P").
# A few common non-English words (German, Polish, French, Spanish) are included: real traffic has them.
_BODY_PHRASES: dict[str, tuple[tuple[str, ...], Kind]] = {}


def _add(phrases: str, atoms: tuple[str, ...], kind: Kind = "region") -> None:
    for phrase in phrases.split(","):
        _BODY_PHRASES[phrase.strip()] = (atoms, kind)


_add(
    "HEAD,BRAIN,CRANIUM,CRANIAL,SKULL,CCT,KOPF,SCHAEDEL,SCHADEL,GLOWA,GLOWY,TETE,CRANE,CABEZA,CRANEO",
    ("HEAD",),
)
_add("CEREBRAL,CEREBRUM,STROKE,HIRN,CERVEAU,CEREBRO,MOZGU,MOZG", ("HEAD",), "within")
_add("FACE,FACIAL,FACIAL BONES,MAXILLOFACIAL,MAXFAC,MAX FAC,MIDFACE,MID FACE", ("FACE",))
_add("SINUS,SINUSES,PARANASAL,PNS,NNH,ORBIT,ORBITS,ORBITAL,ZATOK", ("FACE",))
_add(
    "MAXILLA,MANDIBLE,MANDIBULAR,ZYGOMA,ZYGOMATIC,NASAL,NOSE,DENTAL,DENTASCAN,TMJ,JAW,EYE,EYES",
    ("FACE",),
    "within",
)
_add(
    "TEMPORAL BONE,TEMPORAL BONES,TEMPORALBONE,T BONE,T BONES,TBONE,TBONES,PETROUS,FELSENBEIN", ("TEMPORAL",)
)
_add("IAC,IACS,INTERNAL AUDITORY,INTERNAL AUDITORY CANAL,INNER EAR,MASTOID,MASTOIDS", ("TEMPORAL",))
_add("EAR,EARS", ("TEMPORAL",), "within")
_add("NECK,HALS,SZYI,CUELLO,COU", ("NECK",))
_add(
    "LARYNX,LARYNGEAL,THYROID,PHARYNX,HYPOPHARYNX,OROPHARYNX,NASOPHARYNX,PAROTID,SUBMANDIBULAR",
    ("NECK",),
    "within",
)
_add("CAROTID,CAROTIDS", ("NECK",), "within")
_add("HEADNECK,HEAD NECK,HEAD AND NECK,H N", ("HEAD", "NECK"))
_add("CSPINE,HWS", ("CSPINE",))
_add("TSPINE,BWS", ("TSPINE",))
_add("LSPINE,LWS,LSSPINE,LUMBAR,LUMBOSACRAL", ("LSPINE",))
_add("CTSPINE,CERVICOTHORACIC", ("CSPINE", "TSPINE"))
_add("TLSPINE,THORACOLUMBAR", ("TSPINE", "LSPINE"))
_add("CHEST,THORAX,THX,LUNG,LUNGS,PULMONARY,HRCT,PE,CTPA,TORAX,KLATKI,KLATKA,POUMON,POUMONS", ("CHEST",))
_add(
    "THORACIC,HEART,CARDIAC,CORONARY,CORONARIES,CALCIUM SCORE,MEDIASTINUM,RIB,RIBS,STERNUM",
    ("CHEST",),
    "within",
)
_add("THORACIC AORTA,SERCA,SERCE", ("CHEST",), "within")
_add("BREAST,BREASTS,MAMMA", ("CHEST",), "near")
_add("ABDOMEN,ABD,ABDO,ABDOM,ABDOMINAL,BAUCH,BRZUCHA,BRZUCH,BRZUSZNEJ,ABDOMINALE", ("ABDOMEN",))
_add("LIVER,HEPATIC,PANCREAS,PANCREATIC,KIDNEY,KIDNEYS,RENAL,ADRENAL,ADRENALS,SPLEEN", ("ABDOMEN",), "within")
_add("STOMACH,GASTRIC,BILIARY,GALLBLADDER,ABDOMINAL AORTA,LEBER,NIERE,NIEREN", ("ABDOMEN",), "within")
_add("PELVIS,PELVIC,PEL,PELV,BECKEN,MIEDNICA,MIEDNICY,BASSIN", ("PELVIS",))
_add(
    "HIP,HIPS,SACRUM,COCCYX,BLADDER,PROSTATE,UTERUS,OVARY,OVARIES,RECTUM,ACETABULUM,SI JOINTS,SIJ",
    ("PELVIS",),
    "within",
)
_add("ABDOMENPELVIS,ABDPELVIS,ABDPEL,A P,ABD PEL,ABDOMEN PELVIS", _AP)
_add("ENTEROGRAPHY,COLONOGRAPHY,UROGRAM,UROGRAPHY,KUB,APPENDIX,APPENDICITIS", _AP, "within")
_add("CAP,TAP,C A P,CHESTABDPELVIS,CHESTABDOMENPELVIS,CHEST ABDOMEN PELVIS", _CAP)
_add("WHOLEBODY,WHOLE BODY,GANZKOERPER", _CAP, "near")

# Spine levels: the words before SPINE ("C T SPINE" from C-T SPINE, "CERVICAL AND THORACIC SPINE") or
# after it ("SPINE LUMBAR"). Single letters count only next to SPINE. "CT SPINE" is a CT of the spine
# (no level): CT is not a level word, while C-T SPINE splits into C, T.
_LEVELS: dict[str, str] = {
    "C": "C",
    "T": "T",
    "D": "T",
    "L": "L",
    "CERVICAL": "C",
    "THORACIC": "T",
    "DORSAL": "T",
    "LUMBAR": "L",
    "LUMBOSACRAL": "L",
    "TL": "TL",
    "CTL": "CTL",
    "LS": "L",
    "CERVICOTHORACIC": "CT",
    "THORACOLUMBAR": "TL",
}
_LEVEL_WORDS_AFTER = frozenset({"CERVICAL", "THORACIC", "DORSAL", "LUMBAR", "LUMBOSACRAL"})
_CONNECTORS = frozenset({"AND", "TO", "UND", "I"})
_SPINE_WORDS = frozenset({"SPINE", "SPINAL", "SP", "WS"})
_LEVEL_ATOM = {"C": "CSPINE", "T": "TSPINE", "L": "LSPINE"}


def _spine_at(words: Sequence[str], i: int) -> tuple[int, frozenset[str]] | None:
    """A spine phrase starting at words[i]: (number of words, atoms), or None."""
    j = i
    levels = ""
    while j < len(words) and (words[j] in _LEVELS or (levels and words[j] in _CONNECTORS)):
        levels += _LEVELS.get(words[j], "")
        j += 1
    if levels and j < len(words) and words[j] in _SPINE_WORDS:
        return j + 1 - i, frozenset(_LEVEL_ATOM[c] for c in levels)
    if words[i] in _SPINE_WORDS:
        j = i + 1
        levels = ""
        while j < len(words) and (words[j] in _LEVEL_WORDS_AFTER or (levels and words[j] in _CONNECTORS)):
            levels += _LEVELS.get(words[j], "")
            j += 1
        if levels:
            return j - i, frozenset(_LEVEL_ATOM[c] for c in levels)
    return None


_BODY_TABLE: dict[tuple[str, ...], tuple[tuple[str, ...], Kind]] = {
    tuple(phrase.split()): entry for phrase, entry in _BODY_PHRASES.items()
}
_KIND_ORDER: dict[Kind, int] = {"region": 0, "within": 1, "near": 2}


def class_for_atoms(atoms: Iterable[str]) -> tuple[str | None, bool]:
    """The class made of exactly these regions (closest=False), else the smallest class containing them
    all (closest=True), else (None, False)."""
    wanted = frozenset(atoms)
    if not wanted:
        return None, False
    for name, class_atoms in CLASS_ATOMS.items():
        if class_atoms == wanted:
            return name, False
    supersets = [(len(a), BODY_PARTS.index(n), n) for n, a in CLASS_ATOMS.items() if a >= wanted]
    if supersets:
        return min(supersets)[2], True
    return None, False


def body_part_from_text(text: str) -> TextMatch:
    """What a free-text value (a description, or a BodyPartExamined that is not a defined term) says
    about the body part."""
    words = words_of(text)
    matched: list[tuple[tuple[str, ...], frozenset[str], Kind]] = []
    i = 0
    while i < len(words):
        spine = _spine_at(words, i)
        if spine is not None:
            n, atoms = spine
            matched.append((tuple(words[i : i + n]), atoms, "region"))
            i += n
            continue
        hit = _match_at(words, i, _BODY_TABLE)
        if hit is None:
            i += 1
            continue
        key, (atoms_tuple, word_kind) = hit
        matched.append((key, frozenset(atoms_tuple), word_kind))
        i += len(key)
    if not matched:
        return TextMatch(None, ())
    shown = tuple(_shown(key) for key, _, _ in matched)
    atoms = frozenset().union(*(a for _, a, _ in matched))
    # An organ word adds nothing indirect when a region word already covers it ("ABDOMEN PELVIS
    # ENTEROGRAPHY" is a region match).
    covered = frozenset().union(*(a for _, a, k in matched if k == "region"))
    indirect = [k for _, a, k in matched if k != "region" and not a <= covered]
    kind: Kind = max(indirect, key=lambda k: _KIND_ORDER[k]) if indirect else "region"
    label, closest = class_for_atoms(atoms)
    if label is None:
        spans = ", ".join(sorted(atoms))
        return TextMatch(None, shown, f"spans {spans}: no single class")
    notes = []
    if kind == "within":
        notes.append("an organ within the region")
    elif kind == "near":
        notes.append("outside the vocabulary; closest class")
    if closest:
        notes.append("no class of its own; smallest class containing it")
    penalty = KIND_PENALTY[kind] + (CLOSEST_PENALTY if closest else 0.0)
    return TextMatch(label, shown, "; ".join(notes), penalty)


# BodyPartExamined defined terms (PS3.16 Annex L) and common non-standard values -> (atoms, kind).
# Terms whose region lies in no class, or spans several (NECKCHEST, SPINE, KNEE...), map to no atoms:
# the prior then says unknown and the evidence says why.
_BODY_PART_EXAMINED: dict[str, tuple[tuple[str, ...], Kind]] = {
    "HEAD": (("HEAD",), "region"),
    "SKULL": (("HEAD",), "region"),
    "BRAIN": (("HEAD",), "region"),
    "HEADNECK": (("HEAD", "NECK"), "region"),
    "NECK": (("NECK",), "region"),
    "CSPINE": (("CSPINE",), "region"),
    "CTSPINE": (("CSPINE", "TSPINE"), "region"),
    "TSPINE": (("TSPINE",), "region"),
    "TLSPINE": (("TSPINE", "LSPINE"), "region"),
    "LSPINE": (("LSPINE",), "region"),
    "LSSPINE": (("LSPINE",), "region"),
    "CHEST": (("CHEST",), "region"),
    "THORAX": (("CHEST",), "region"),
    "LUNG": (("CHEST",), "region"),
    "CHESTABDPELVIS": (_CAP, "region"),
    "CHESTABDOMEN": (("CHEST", "ABDOMEN"), "region"),  # no class: read as Chest-abdomen-pelvis (closest)
    "ABDOMEN": (("ABDOMEN",), "region"),
    "ABDOMENPELVIS": (_AP, "region"),
    "PELVIS": (("PELVIS",), "region"),
    # within a class's region
    "ORBIT": (("FACE",), "within"),
    "MAXILLA": (("FACE",), "within"),
    "JAW": (("FACE",), "within"),
    "ZYGOMA": (("FACE",), "within"),
    "TMJ": (("FACE",), "within"),
    "EYE": (("FACE",), "within"),
    "IAC": (("TEMPORAL",), "region"),
    "EAR": (("TEMPORAL",), "within"),
    "LARYNX": (("NECK",), "within"),
    "PAROTID": (("NECK",), "within"),
    "SUBMANDIBULAR": (("NECK",), "within"),
    "THYROID": (("NECK",), "within"),
    "HEART": (("CHEST",), "within"),
    "MEDIASTINUM": (("CHEST",), "within"),
    "BRONCHUS": (("CHEST",), "within"),
    "RIB": (("CHEST",), "within"),
    "STERNUM": (("CHEST",), "within"),
    "ESOPHAGUS": (("CHEST",), "within"),
    "LIVER": (("ABDOMEN",), "within"),
    "GALLBLADDER": (("ABDOMEN",), "within"),
    "PANCREAS": (("ABDOMEN",), "within"),
    "KIDNEY": (("ABDOMEN",), "within"),
    "ADRENAL": (("ABDOMEN",), "within"),
    "SPLEEN": (("ABDOMEN",), "within"),
    "STOMACH": (("ABDOMEN",), "within"),
    "DUODENUM": (("ABDOMEN",), "within"),
    "ABDOMINALAORTA": (("ABDOMEN",), "within"),
    "COLON": (_AP, "within"),
    "URETER": (_AP, "within"),
    "BLADDER": (("PELVIS",), "within"),
    "PROSTATE": (("PELVIS",), "within"),
    "RECTUM": (("PELVIS",), "within"),
    "HIP": (("PELVIS",), "within"),
    "ILIUM": (("PELVIS",), "within"),
    "SACRUM": (("PELVIS",), "within"),
    "SSPINE": (("PELVIS",), "within"),
    "COCCYX": (("PELVIS",), "within"),
    "UTERUS": (("PELVIS",), "within"),
    # near: not inside any class, read as the closest one
    "BREAST": (("CHEST",), "near"),
    "CLAVICLE": (("CHEST",), "near"),
    "SCAPULA": (("CHEST",), "near"),
    "WHOLEBODY": (_CAP, "near"),
    # no class near them
    "NECKCHEST": (("NECK", "CHEST"), "region"),
    "NECKCHESTABDOMEN": (("NECK", "CHEST", "ABDOMEN"), "region"),
    "NECKCHESTABDPELV": (("NECK", "CHEST", "ABDOMEN", "PELVIS"), "region"),
    "SPINE": ((), "region"),
    "WHOLESPINE": ((), "region"),
    "EXTREMITY": ((), "region"),
    "SHOULDER": ((), "region"),
    "ARM": ((), "region"),
    "ELBOW": ((), "region"),
    "WRIST": ((), "region"),
    "HAND": ((), "region"),
    "FINGER": ((), "region"),
    "THUMB": ((), "region"),
    "LEG": ((), "region"),
    "THIGH": ((), "region"),
    "FEMUR": ((), "region"),
    "KNEE": ((), "region"),
    "ANKLE": ((), "region"),
    "FOOT": ((), "region"),
    "TOE": ((), "region"),
}


def body_part_from_examined(value: str) -> TextMatch:
    """What a BodyPartExamined value says: a defined term by table, anything else as free text."""
    term = value.strip().upper()
    if term in _BODY_PART_EXAMINED:
        atoms, kind = _BODY_PART_EXAMINED[term]
        if not atoms:
            return TextMatch(None, (term,), "a body part outside the vocabulary, with no class near it")
        label, closest = class_for_atoms(atoms)
        if label is None:
            return TextMatch(None, (term,), f"spans {', '.join(atoms)}: no single class")
        if kind == "near":
            note = "outside the vocabulary; closest class"
            penalty = BODY_PART_EXAMINED_CONFIDENCE - BODY_PART_NEAR_CONFIDENCE
        else:
            note = "an organ within the region" if kind == "within" else ""
            penalty = KIND_PENALTY[kind]
        if closest:
            note = "; ".join(filter(None, [note, "no class of its own; smallest class containing it"]))
            penalty += CLOSEST_PENALTY
        return TextMatch(label, (term,), note, penalty)
    return body_part_from_text(value)


# ---- contrast

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
    hits = _scan(words_of(text), _CONTRAST_TABLE)
    if not hits:
        return TextMatch(None, ())
    shown = tuple(_shown(key) for key, _ in hits)
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


# ---------------------------------------------------------------------------------------------- combining


@dataclass(frozen=True)
class _Vote:
    label: str | None  # None: the source was read but says nothing usable (the evidence says why)
    confidence: float
    source: str
    evidence: str


def _clamp(value: float) -> float:
    return round(min(MAX_COMBINED, max(MIN_COMBINED, value)), 3)


def _combine(
    votes: Sequence[_Vote],
    related: Callable[[str, str], bool] | None = None,
    *,
    nothing: str = "no evidence in the header",
) -> PriorAnswer:
    """One answer from several sources: the label with the highest summed confidence wins; its best
    source's confidence rises a little per agreeing source and falls per contradicting one. Labels that
    `related(a, b)` calls compatible (Abdomen and Abdomen-pelvis) neither agree nor contradict."""
    usable = [v for v in votes if v.label is not None]
    silent = [v.evidence for v in votes if v.label is None]
    if not usable:
        return PriorAnswer(None, 0.0, "none", "; ".join(silent) if silent else nothing)
    scores: dict[str, float] = {}
    for v in usable:
        assert v.label is not None
        scores[v.label] = scores.get(v.label, 0.0) + v.confidence
    order = {v.label: i for i, v in reversed(list(enumerate(usable)))}
    winner = max(
        scores,
        key=lambda label: (
            scores[label],
            max(v.confidence for v in usable if v.label == label),
            -order[label],
        ),
    )
    supporters = [v for v in usable if v.label == winner]
    best = max(supporters, key=lambda v: v.confidence)  # first of the best: sources are in priority order
    agree = [v for v in supporters if v is not best]
    others = [v for v in usable if v.label != winner]
    overlap = [v for v in others if related is not None and v.label is not None and related(winner, v.label)]
    conflict = [v for v in others if v not in overlap]
    confidence = _clamp(best.confidence + AGREE_BONUS * len(agree) - CONFLICT_PENALTY * len(conflict))
    parts = [best.evidence]
    if agree:
        parts.append("agrees: " + "; ".join(v.evidence for v in agree))
    if overlap:
        parts.append("overlaps: " + "; ".join(v.evidence for v in overlap))
    if conflict:
        parts.append("conflicts: " + "; ".join(v.evidence for v in conflict))
    if silent:
        parts.append("also: " + "; ".join(silent))
    return PriorAnswer(winner, confidence, best.source, " | ".join(parts))


def _text_value(header: Dataset, keyword: str) -> str:
    value = header.get(keyword)
    if value is None:
        return ""
    if not isinstance(value, str):  # a multi-valued LO read as MultiValue
        try:
            value = " ".join(str(v) for v in value)
        except TypeError:
            value = str(value)
    return value.strip()


def _quote(words: Sequence[str]) -> str:
    return ", ".join(f"'{w}'" for w in words)


# ---------------------------------------------------------------------------------------------- body part


# Coarse regions of the body each class lies in: a spine class lies in its part of the trunk, the temporal
# bone in the head. Two sources naming classes that share one (C-spine and Neck, Abdomen and Abdomen-
# pelvis) overlap rather than conflict.
COARSE_REGIONS: dict[str, frozenset[str]] = {
    "Head": frozenset({"head"}),
    "Head and face": frozenset({"head", "face"}),
    "Face/Orbits/Sinus": frozenset({"face"}),
    "Temporal bone": frozenset({"head"}),
    "Head and neck": frozenset({"head", "face", "neck"}),
    "Neck": frozenset({"neck"}),
    "C-spine": frozenset({"neck"}),
    "C and T spine": frozenset({"neck", "chest"}),
    "T-spine": frozenset({"chest"}),
    "T and L spine": frozenset({"chest", "abdomen"}),
    "L-spine": frozenset({"abdomen"}),
    "Chest": frozenset({"chest"}),
    "Chest-abdomen-pelvis": frozenset({"chest", "abdomen", "pelvis"}),
    "Abdomen": frozenset({"abdomen"}),
    "Abdomen-pelvis": frozenset({"abdomen", "pelvis"}),
    "Pelvis": frozenset({"pelvis"}),
}
assert tuple(COARSE_REGIONS) == BODY_PARTS


def body_parts_overlap(a: str, b: str) -> bool:
    """Whether two body-part classes share anatomy (so that two sources naming them do not conflict)."""
    return bool(CLASS_ATOMS[a] & CLASS_ATOMS[b]) or bool(COARSE_REGIONS[a] & COARSE_REGIONS[b])


def _body_part(header: Dataset) -> PriorAnswer:
    votes: list[_Vote] = []
    examined = _text_value(header, "BodyPartExamined")
    if examined:
        match = body_part_from_examined(examined)
        if match.words:
            confidence = BODY_PART_EXAMINED_CONFIDENCE - match.penalty
            votes.append(_match_vote(match, "BodyPartExamined", confidence))
        else:
            note = f"BodyPartExamined '{_short(examined, 16)}': no body part word of the vocabulary"
            votes.append(_Vote(None, 0.0, "BodyPartExamined", note))
    for keyword, base in DESCRIPTION_SOURCES:
        text = _text_value(header, keyword)
        if not text:
            continue
        match = body_part_from_text(text)
        if match.words:
            votes.append(_match_vote(match, keyword, base - match.penalty))
    return _combine(
        votes, body_parts_overlap, nothing="no body part words in BodyPartExamined or descriptions"
    )


def _match_vote(match: TextMatch, source: str, confidence: float) -> _Vote:
    said = f"{source} {_quote(match.words)}"
    if match.label is None:
        return _Vote(None, 0.0, source, f"{said}: {match.note}")
    note = f" ({match.note})" if match.note else ""
    return _Vote(match.label, round(confidence, 3), source, f"{said} -> {match.label}{note}")


# ---------------------------------------------------------------------------------------------- contrast

_NONE_AGENTS = frozenset(
    {"NONE", "NO", "N/A", "NA", "0", "-", "NIL", "NON", "NOT APPLIED", "NO CONTRAST", "WITHOUT"}
)
_ORAL_WORDS = frozenset({"ORAL", "PO", "RECTAL", "BARIUM", "GASTROGRAFIN", "ENTERAL"})
_IV_WORDS = frozenset({"IV", "INTRAVENOUS", "INTRAVASCULAR", "VENOUS", "INTRAARTERIAL", "ARTERIAL", "IA"})


def _short(value: str, limit: int = 40) -> str:
    value = " ".join(value.split())
    return value if len(value) <= limit else value[: limit - 3] + "..."


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _contrast_tag_votes(header: Dataset) -> list[_Vote]:
    votes: list[_Vote] = []
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
                votes.append(_Vote(label, CONTRAST_USAGE, "ContrastBolusUsageSequence", evidence))
                return votes

    filled: list[tuple[str, str]] = []  # (keyword, value) of the Contrast/Bolus attributes present
    for keyword in ("ContrastBolusAgent", "ContrastBolusRoute", "ContrastBolusIngredient"):
        value = _text_value(header, keyword)
        if value:
            filled.append((keyword, value))
    for item in header.get("ContrastBolusAgentSequence", None) or ():
        meaning = str(item.get("CodeMeaning", "")).strip()
        filled.append(("ContrastBolusAgentSequence", meaning or "(coded agent)"))
        for route in item.get("ContrastBolusAdministrationRouteSequence", None) or ():
            filled.append(
                ("ContrastBolusAdministrationRouteSequence", str(route.get("CodeMeaning", "")).strip())
            )
    volume = _number(header.get("ContrastBolusVolume"))
    # Some scanners write volume 0 by default alongside an agent: a zero volume is not evidence.
    if volume is not None and volume > 0:
        filled.append(("ContrastBolusVolume", f"{volume:g}"))
    if not filled:
        return votes

    said = "; ".join(f"{k} '{_short(v)}'" for k, v in filled)
    agent = next((v for k, v in filled if k == "ContrastBolusAgent"), "")
    quantity = {"ContrastBolusVolume", "ContrastBolusIngredient"} & {k for k, _ in filled}
    if agent and " ".join(agent.upper().split()) in _NONE_AGENTS and not quantity:
        evidence = f"ContrastBolusAgent '{_short(agent)}' says none"
        return [_Vote("no", CONTRAST_TAG_NONE, "ContrastBolusAgent", evidence)]
    words = {w for _, v in filled for w in words_of(v)}
    iv = bool(words & _IV_WORDS)
    oral = bool(words & _ORAL_WORDS)
    source = filled[0][0]
    if oral and not iv:
        return [
            _Vote(None, 0.0, source, f"{said}: oral/rectal contrast only, says nothing about IV contrast")
        ]
    confidence = CONTRAST_TAG_IV if iv else CONTRAST_TAG
    return [_Vote("yes", confidence, source, f"{said} -> yes" + (" (intravenous)" if iv else ""))]


def _contrast(header: Dataset) -> PriorAnswer:
    votes = _contrast_tag_votes(header)
    # Descriptions weigh by what they say (explicit or implied) and by level (series or study).
    for keyword, _ in DESCRIPTION_SOURCES:
        text = _text_value(header, keyword)
        if not text:
            continue
        match = contrast_from_text(text)
        if not match.words:
            continue
        confidence = CONTRAST_EXPLICIT - match.penalty
        if keyword in STUDY_LEVEL_SOURCES:
            confidence -= STUDY_LEVEL_CONTRAST_PENALTY
        votes.append(_match_vote(match, keyword, confidence))
    # Absent Contrast/Bolus attributes are not evidence of no contrast: many scanners never fill them.
    return _combine(votes, nothing="no contrast attributes and no contrast words in descriptions")


# ---------------------------------------------------------------------------------------------- axis

_AXIS_OF_INDEX = ("sagittal", "coronal", "axial")  # LPS x, y, z: the axis the slice normal runs along
_PATIENT_AXIS = ("x", "y", "z")
assert set(_AXIS_OF_INDEX) == set(AXES)


@dataclass(frozen=True)
class Orientation:
    """The plane of one Image Orientation (Patient)."""

    label: str
    obliquity_degrees: float  # angle between the slice normal and the nearest patient axis
    normal: tuple[float, float, float]
    # angle between the normal and the patient's y-z plane: 0 when the plane is turned only about the
    # left-right (x) axis, which is what a gantry tilt does to an axial slice
    off_x_rotation_degrees: float


def orientation_of(iop: Sequence[Any]) -> Orientation | None:
    """The plane of an Image Orientation (Patient) value, or None when it is not 6 finite numbers
    making two non-parallel directions."""
    if len(iop) != 6:
        return None
    values = [_number(v) for v in iop]
    if any(v is None for v in values):
        return None
    row = [float(v) for v in values[:3] if v is not None]
    col = [float(v) for v in values[3:] if v is not None]
    normal = (
        row[1] * col[2] - row[2] * col[1],
        row[2] * col[0] - row[0] * col[2],
        row[0] * col[1] - row[1] * col[0],
    )
    length = math.sqrt(sum(c * c for c in normal))
    if length < 1e-6:
        return None
    unit = (normal[0] / length, normal[1] / length, normal[2] / length)
    index = max(range(3), key=lambda i: abs(unit[i]))
    obliquity = math.degrees(math.acos(min(1.0, abs(unit[index]))))
    off_x = math.degrees(math.asin(min(1.0, abs(unit[0]))))
    return Orientation(_AXIS_OF_INDEX[index], obliquity, unit, off_x)


def _iop_of(header: Dataset) -> tuple[Any, str] | None:
    """Image Orientation (Patient) of the header and where it was found (top level, or the enhanced
    multi-frame functional groups)."""
    iop = header.get("ImageOrientationPatient")
    if iop is not None:
        return iop, "ImageOrientationPatient"
    for outer in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        seq = header.get(outer)
        if not seq:
            continue
        planes = seq[0].get("PlaneOrientationSequence")
        if planes and planes[0].get("ImageOrientationPatient") is not None:
            return planes[0].ImageOrientationPatient, f"{outer}[0].PlaneOrientationSequence"
    return None


def _per_frame_iops(header: Dataset) -> list[Any]:
    out = []
    for frame in header.get("PerFrameFunctionalGroupsSequence", None) or ():
        planes = frame.get("PlaneOrientationSequence")
        if planes and planes[0].get("ImageOrientationPatient") is not None:
            out.append(planes[0].ImageOrientationPatient)
    return out


def _axis(
    header: Dataset,
    iops: Iterable[Sequence[Any]] | None,
    tolerance: float,
    tilt_limit: float,
) -> tuple[PriorAnswer, float | None, bool | None]:
    found = _iop_of(header)
    orientation = orientation_of(found[0]) if found is not None else None
    if found is None or orientation is None:
        answer = _axis_without_iop(header)
        if found is not None:
            answer = PriorAnswer(
                answer.label,
                answer.confidence,
                answer.source,
                f"{found[1]} is malformed; " + answer.evidence,
            )
        return answer, None, None

    where = found[1]
    n = tuple(round(c, 2) + 0.0 for c in orientation.normal)  # + 0.0: no "-0.00"
    axis_name = _PATIENT_AXIS[_AXIS_OF_INDEX.index(orientation.label)]
    evidence = (
        f"normal ({n[0]:.2f}, {n[1]:.2f}, {n[2]:.2f}) is {orientation.obliquity_degrees:.1f}° "
        f"from the patient {axis_name} axis ({orientation.label})"
    )
    oblique = orientation.obliquity_degrees > tolerance
    if not oblique:
        confidence = 1.0 - 0.05 * (orientation.obliquity_degrees / tolerance if tolerance > 0 else 0.0)
        evidence += f", within the {tolerance:g}° tolerance"
    elif (
        orientation.label == "axial"
        and orientation.obliquity_degrees <= tilt_limit
        and orientation.off_x_rotation_degrees <= tolerance
    ):
        confidence = AXIS_GANTRY_TILT_CONFIDENCE
        evidence += (
            f"; beyond the {tolerance:g}° tolerance but a rotation about the left-right axis within "
            f"{tilt_limit:g}°, as a gantry tilt makes: axial, flagged oblique"
        )
        tilt = _number(header.get("GantryDetectorTilt"))
        if tilt is not None and tilt != 0.0:
            evidence += f" (GantryDetectorTilt {tilt:g})"
    else:
        confidence = _oblique_confidence(orientation.obliquity_degrees)
        evidence += f"; oblique (beyond the {tolerance:g}° tolerance): nearest plane"

    image_type = [str(v).strip().upper() for v in (header.get("ImageType") or ())]
    if "LOCALIZER" in image_type:
        confidence = min(confidence, 0.5)
        evidence += "; ImageType LOCALIZER: a projection image, its plane is the projection's"
    # Several orientations in one series (a stack of reformats, a localizer mixed in) weaken the answer.
    seen = [orientation_of(v) for v in (list(iops) if iops is not None else _per_frame_iops(header))]
    labels = sorted({o.label for o in seen if o is not None})
    if len(labels) > 1:
        confidence = min(confidence, 0.5)
        evidence += f"; the series has several planes ({', '.join(labels)})"
    return (
        PriorAnswer(orientation.label, round(confidence, 3), where, evidence),
        orientation.obliquity_degrees,
        oblique,
    )


def _oblique_confidence(obliquity_degrees: float) -> float:
    """Beyond the tolerance and not a gantry tilt: the nearer the plane is to halfway between two axes
    (at most 54.7 degrees from the nearest), the less its nearest axis means."""
    for limit, confidence in AXIS_OBLIQUE_CONFIDENCE:
        if obliquity_degrees <= limit:
            return confidence
    return AXIS_OBLIQUE_CONFIDENCE[-1][1]


_AXIS_WORDS: dict[tuple[str, ...], str] = {}
for _label, _words in (
    ("axial", "AX,AXIAL,AXI,TRA,TRANS,TRANSVERSE,TRANSAXIAL,AXIALE,TRANSVERSAL"),
    ("coronal", "COR,CORONAL,CORO,KORONAR,CORONALE"),
    ("sagittal", "SAG,SAGITTAL,SAGITAL,SAGITTALE"),
):
    for _w in _words.split(","):
        _AXIS_WORDS[(_w,)] = _label


def _axis_without_iop(header: Dataset) -> PriorAnswer:
    votes: list[_Vote] = []
    for keyword in ("SeriesDescription", "ProtocolName"):
        text = _text_value(header, keyword)
        if not text:
            continue
        hits = _scan(words_of(text), _AXIS_WORDS)
        said = {label for _, label in hits}
        shown = _quote([_shown(k) for k, _ in hits])
        if len(said) == 1:
            label = said.pop()
            votes.append(_Vote(label, AXIS_TEXT_CONFIDENCE, keyword, f"{keyword} {shown} -> {label}"))
        elif said:
            votes.append(_Vote(None, 0.0, keyword, f"{keyword} {shown}: several planes"))
    image_type = [str(v).strip().upper() for v in (header.get("ImageType") or ())]
    if "LOCALIZER" in image_type:
        votes.append(_Vote(None, 0.0, "ImageType", "ImageType LOCALIZER: a projection, no slice plane"))
    elif "AXIAL" in image_type:
        votes.append(_Vote("axial", AXIS_IMAGE_TYPE_CONFIDENCE, "ImageType", "ImageType 'AXIAL' -> axial"))
    answer = _combine(
        votes, nothing="no ImageOrientationPatient, and no plane words in ImageType or descriptions"
    )
    if answer.label is None:
        return answer
    return PriorAnswer(
        answer.label, answer.confidence, answer.source, "no ImageOrientationPatient; " + answer.evidence
    )


# ---------------------------------------------------------------------------------------------- entry point


def read_prior(
    header: Dataset,
    *,
    iops: Iterable[Sequence[Any]] | None = None,
    oblique_tolerance_degrees: float = DEFAULT_OBLIQUE_TOLERANCE_DEGREES,
    gantry_tilt_limit_degrees: float = DEFAULT_GANTRY_TILT_LIMIT_DEGREES,
) -> Prior:
    """What the header of a series says about its body part, axis and contrast.

    header: the representative instance (read with stop_before_pixels). iops: the Image Orientation
    (Patient) values seen across the series, if known (an enhanced multi-frame header's per-frame values
    are used otherwise). A slice normal more than `oblique_tolerance_degrees` from its nearest patient
    axis is flagged oblique; the label stays the nearest axis, and a rotation about the left-right axis
    up to `gantry_tilt_limit_degrees` (a gantry tilt) keeps a high confidence.
    """
    axis, obliquity, oblique = _axis(header, iops, oblique_tolerance_degrees, gantry_tilt_limit_degrees)
    return Prior(
        body_part=_body_part(header),
        axis=axis,
        contrast=_contrast(header),
        axis_obliquity_degrees=obliquity,
        axis_oblique=oblique,
    )


assert set(CONTRAST) == {"yes", "no"}
