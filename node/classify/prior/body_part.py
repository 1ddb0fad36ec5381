"""Reading the body part: from descriptions (words and spine levels), from BodyPartExamined, and
combined over the header's sources."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pydicom.dataset import Dataset

from node.classify.labels import BODY_PARTS
from node.classify.prior.attributes import attribute_text
from node.classify.prior.body_vocabulary import (
    BODY_PART_EXAMINED,
    BODY_TABLE,
    CLASS_ATOMS,
    COARSE_REGIONS,
    CONNECTORS,
    LEVEL_ATOM,
    LEVEL_WORDS_AFTER,
    LEVELS,
    SPINE_WORDS,
    Kind,
)
from node.classify.prior.combine import Vote, combine_votes, match_vote
from node.classify.prior.confidences import (
    BODY_PART_EXAMINED_CONFIDENCE,
    BODY_PART_NEAR_CONFIDENCE,
    CLOSEST_PENALTY,
    DESCRIPTION_SOURCES,
    KIND_PENALTY,
)
from node.classify.prior.results import PriorAnswer
from node.classify.prior.text import TextMatch, match_at, shortened, shown_text, words_of


def _spine_at(words: Sequence[str], i: int) -> tuple[int, frozenset[str]] | None:
    """A spine phrase starting at words[i]: (number of words, atoms), or None."""
    j = i
    levels = ""
    while j < len(words) and (words[j] in LEVELS or (levels and words[j] in CONNECTORS)):
        levels += LEVELS.get(words[j], "")
        j += 1
    if levels and j < len(words) and words[j] in SPINE_WORDS:
        return j + 1 - i, frozenset(LEVEL_ATOM[c] for c in levels)
    if words[i] in SPINE_WORDS:
        j = i + 1
        levels = ""
        while j < len(words) and (words[j] in LEVEL_WORDS_AFTER or (levels and words[j] in CONNECTORS)):
            levels += LEVELS.get(words[j], "")
            j += 1
        if levels:
            return j - i, frozenset(LEVEL_ATOM[c] for c in levels)
    return None


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
        hit = match_at(words, i, BODY_TABLE)
        if hit is None:
            i += 1
            continue
        key, (atoms_tuple, word_kind) = hit
        matched.append((key, frozenset(atoms_tuple), word_kind))
        i += len(key)
    if not matched:
        return TextMatch(None, ())
    shown = tuple(shown_text(key) for key, _, _ in matched)
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


def body_part_from_examined(value: str) -> TextMatch:
    """What a BodyPartExamined value says: a defined term by table, anything else as free text."""
    term = value.strip().upper()
    if term in BODY_PART_EXAMINED:
        atoms, kind = BODY_PART_EXAMINED[term]
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


def body_parts_overlap(a: str, b: str) -> bool:
    """Whether two body-part classes share anatomy (so that two sources naming them do not conflict)."""
    return bool(CLASS_ATOMS[a] & CLASS_ATOMS[b]) or bool(COARSE_REGIONS[a] & COARSE_REGIONS[b])


def body_part_answer(header: Dataset) -> PriorAnswer:
    votes: list[Vote] = []
    examined = attribute_text(header, "BodyPartExamined")
    if examined:
        match = body_part_from_examined(examined)
        if match.words:
            confidence = BODY_PART_EXAMINED_CONFIDENCE - match.penalty
            votes.append(match_vote(match, "BodyPartExamined", confidence))
        else:
            note = f"BodyPartExamined '{shortened(examined, 16)}': no body part word of the vocabulary"
            votes.append(Vote(None, 0.0, "BodyPartExamined", note))
    for keyword, base in DESCRIPTION_SOURCES:
        text = attribute_text(header, keyword)
        if not text:
            continue
        match = body_part_from_text(text)
        if match.words:
            votes.append(match_vote(match, keyword, base - match.penalty))
    return combine_votes(
        votes, body_parts_overlap, nothing="no body part words in BodyPartExamined or descriptions"
    )
