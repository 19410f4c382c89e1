"""Whole-word multi-pattern matching of captions against a list of entries (concepts, metadata).

One Aho-Corasick automaton (pyahocorasick) finds every occurrence of every entry in a single pass
over the text, so the cost grows with the caption length and the number of hits, not with the
number of entries (MetaCLIP's metadata has 500k entries). A hit counts only when it is a whole
word or phrase: the characters just before and after it are the text's start/end or not
alphanumeric, so "cat" matches "a cat." and "cat's" but not "category"; "red car" matches
"a red car" as one phrase. Runs of whitespace (double spaces, newlines) count as one space in
entries and texts alike, so "red\ncar" is the phrase too.

Shared by the text-based filter and MetaCLIP balancing (per-entry match counts).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import ahocorasick
import fsspec
import numpy as np

logger = logging.getLogger(__name__)


def read_entries(path: str | Path) -> list[str]:
    """Entries from a file: a JSON list of strings (``.json``, MetaCLIP's metadata) or a text file
    with one entry per line, where blank lines and lines starting with ``#`` are ignored.

    Raises ValueError naming the file when it is missing, unreadable or has no entries.
    """
    path = str(path)
    try:
        with fsspec.open(path, "r", encoding="utf-8") as f:
            content = f.read()
    except FileNotFoundError:
        raise ValueError(f"entry file {path!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"entry file {path!r} cannot be read as UTF-8 text: {exc}") from None
    if path.endswith(".json"):
        try:
            data = json.loads(content)
        except json.JSONDecodeError as exc:
            raise ValueError(f"entry file {path!r} is not valid JSON: {exc}") from None
        if not isinstance(data, list) or not all(isinstance(e, str) for e in data):
            raise ValueError(f"entry file {path!r}: expected a JSON list of strings")
        entries = [e.strip() for e in data if e.strip()]
    else:
        lines = (line.strip() for line in content.splitlines())
        entries = [line for line in lines if line and not line.startswith("#")]
    if not entries:
        raise ValueError(f"entry file {path!r} has no entries (blank lines and '#' comments are ignored)")
    return entries


def _is_word_char(ch: str) -> bool:
    return ch.isalnum()


class PhraseMatcher:
    """Finds which entries occur in a text as whole words or phrases.

    ``entries`` keep their order: ``matches`` returns indices into it. With ``case_insensitive``
    (the default) entries and texts are lowercased before matching. Whitespace runs are collapsed
    to one space and entries are stripped; entries equal after this share one pattern and are all
    reported. ``source`` names where the entries came from (a file, a parameter) in errors.
    """

    def __init__(self, entries: Sequence[str], *, case_insensitive: bool = True, source: str = "entries"):
        if not entries:
            raise ValueError(f"{source}: the list of entries is empty; at least one entry is needed")
        self.entries = list(entries)
        self.case_insensitive = case_insensitive
        patterns: dict[str, list[int]] = {}
        for i, entry in enumerate(self.entries):
            if not isinstance(entry, str):
                raise ValueError(f"{source}: entry {i} is {type(entry).__name__}, expected a string")
            key = self._normalize(entry)
            if not key:
                raise ValueError(f"{source}: entry {i} is blank")
            patterns.setdefault(key, []).append(i)
        self._automaton = ahocorasick.Automaton(ahocorasick.STORE_ANY, ahocorasick.KEY_STRING)
        for key, indices in patterns.items():
            # The value carries the key length so a hit's start is known without a lookup.
            self._automaton.add_word(key, (len(key), tuple(indices)))
        self._automaton.make_automaton()
        logger.debug("%s: %d entries, %d distinct patterns", source, len(self.entries), len(patterns))

    def __len__(self) -> int:
        return len(self.entries)

    def _normalize(self, text: str) -> str:
        text = " ".join(text.split())
        return text.lower() if self.case_insensitive else text

    def matches(self, text: str | None) -> list[int]:
        """Sorted indices of the entries occurring in ``text`` as whole words; [] for None or ''."""
        if not text:
            return []
        text = self._normalize(text)
        last = len(text) - 1
        found: set[int] = set()
        for end, (length, indices) in self._automaton.iter(text):
            start = end - length + 1
            if start > 0 and _is_word_char(text[start - 1]):
                continue
            if end < last and _is_word_char(text[end + 1]):
                continue
            found.update(indices)
        return sorted(found)

    def matches_batch(self, texts: Iterable[str | None]) -> list[list[int]]:
        """``matches`` of each text."""
        return [self.matches(t) for t in texts]

    def entry_counts(self, texts: Iterable[str | None]) -> np.ndarray:
        """For each entry, how many texts match it (an int64 array aligned with ``entries``).

        A text counts once per entry however often the entry occurs in it, as MetaCLIP counts.
        """
        counts = np.zeros(len(self.entries), dtype=np.int64)
        for text in texts:
            hit = self.matches(text)
            if hit:
                counts[hit] += 1
        return counts
