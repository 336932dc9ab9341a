"""Catalogue titles found in free text: what a user names in a dialogue, what an explanation cites.

Titles are found by exact word n-grams over a normalised title index (no scan of the catalogue per
text), the longest match first, titles of at least four characters (so "Up" or "It" in a sentence are
not taken for films); a title is also known without its leading article and without its year, as
people say "Empire Strikes Back".
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from m6rec.text.textify import clean_title

MAX_TITLE_WORDS = 10
MIN_TITLE_CHARS = 4


def normalise(text: str) -> str:
    """Lowercase words joined by single spaces (punctuation dropped, apostrophes kept)."""
    return " ".join(re.findall(r"[a-z0-9']+", text.lower().replace("’", "'")))


@dataclass
class TitleIndex:
    """Normalised title (year and a trailing ", The" folded in) -> catalogue indices; also keyed without
    a leading article."""

    keys: dict[str, list[int]] = field(default_factory=dict)

    @classmethod
    def build(cls, titles: Sequence[str], years: Sequence[int | None]) -> TitleIndex:
        index = cls()
        for i, (title, year) in enumerate(zip(titles, years, strict=True)):
            clean, _ = clean_title(str(title), year)
            key = normalise(clean)
            for variant in {key, re.sub(r"^(the|a|an) ", "", key)}:
                if len(variant) >= MIN_TITLE_CHARS:
                    index.keys.setdefault(variant, []).append(i)
        return index

    def find(self, text: str) -> list[tuple[int, int, list[int]]]:
        """``(start word, end word, item indices)`` of each title named in ``text``, longest match first
        and not overlapping."""
        words = normalise(text).split()
        found, i = [], 0
        while i < len(words):
            for n in range(min(MAX_TITLE_WORDS, len(words) - i), 0, -1):
                hit = self.keys.get(" ".join(words[i : i + n]))
                if hit:
                    found.append((i, i + n, hit))
                    i += n
                    break
            else:
                i += 1
        return found
