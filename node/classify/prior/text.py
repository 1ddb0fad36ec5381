"""Free text as the vocabularies read it: upper-case words (W/O, C+ and C- kept as markers), longest-first
phrase scanning against a table, and how matched words are quoted in evidence."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar


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


def shown_text(phrase: Sequence[str]) -> str:
    """A matched phrase as the evidence quotes it."""
    return " ".join(_MARKER_TEXT.get(word, word) for word in phrase)


def match_at(
    words: Sequence[str], i: int, table: dict[tuple[str, ...], V]
) -> tuple[tuple[str, ...], V] | None:
    """The longest phrase of `table` starting at words[i]."""
    longest = _LONGEST.setdefault(id(table), max(len(k) for k in table))
    for n in range(min(longest, len(words) - i), 0, -1):
        key = tuple(words[i : i + n])
        if key in table:
            return key, table[key]
    return None


def scan_text(words: Sequence[str], table: dict[tuple[str, ...], V]) -> list[tuple[tuple[str, ...], V]]:
    """Longest-first, left-to-right, non-overlapping phrase matches of `table` in `words`."""
    found: list[tuple[tuple[str, ...], V]] = []
    i = 0
    while i < len(words):
        hit = match_at(words, i, table)
        if hit is None:
            i += 1
        else:
            found.append(hit)
            i += len(hit[0])
    return found


def quote_words(words: Sequence[str]) -> str:
    return ", ".join(f"'{w}'" for w in words)


def shortened(value: str, limit: int = 40) -> str:
    value = " ".join(value.split())
    return value if len(value) <= limit else value[: limit - 3] + "..."
