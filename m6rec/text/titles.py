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

MAX_TITLE_WORDS = 20  # "Dr. Strangelove or: How I Learned to Stop Worrying and Love the Bomb" has 13
MIN_TITLE_CHARS = 4


WORD = re.compile(r"[a-z0-9']+")


def _lower(text: str) -> str:
    return text.lower().replace("’", "'")  # the same length: offsets stay those of ``text``


def normalise(text: str) -> str:
    """Lowercase words joined by single spaces (punctuation dropped, apostrophes kept)."""
    return " ".join(WORD.findall(_lower(text)))


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
        return [(a, b, hits) for a, b, _, _, _, hits in self.spans(text)]

    def spans(self, text: str) -> list[tuple[int, int, int, int, str, list[int]]]:
        """:meth:`find` with more: ``(start word, end word, start char, end char, key, item indices)``;
        the characters are ``text``'s own, so a caller can cut the title out."""
        tokens = list(WORD.finditer(_lower(text)))
        words = [t.group() for t in tokens]
        found, i = [], 0
        while i < len(words):
            for n in range(min(MAX_TITLE_WORDS, len(words) - i), 0, -1):
                key = " ".join(words[i : i + n])
                hit = self.keys.get(key)
                if hit:
                    found.append((i, i + n, tokens[i].start(), tokens[i + n - 1].end(), key, hit))
                    i += n
                    break
            else:
                i += 1
        return found
