"""Conversational recommendation: what a dialogue says, read with the catalogue.

M6-Rec writes a conversation as text (``USER: ... SYSTEM: ...``) and lets one model answer it. Here the
dialogue is read into what the recommender can act on: the catalogue titles the user names (liked, or
disliked when negated: "not Heat", "I hated Heat"), the titles the system already offered (never offered
again: "not that one"), a time constraint on the last user turn ("something older" / "newer" than what
was offered last), and the dialogue itself as one text for the text encoder. No model is trained on
dialogues; :class:`~m6rec.serving.engine.Engine.chat` retrieves with the named items as history plus
the text, then ranks.

Titles are found by exact word n-grams over a normalised title index (no scan of the catalogue per
request), the longest match first, titles of at least four characters (so "Up" or "It" in a sentence
are not taken for films).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from m6rec.text.textify import clean_title

MAX_TITLE_WORDS = 10
MIN_TITLE_CHARS = 4
NEGATIONS = ("not", "no", "hated", "disliked", "didn't like", "did not like", "don't like", "nothing like")
OLDER = re.compile(r"\b(older|earlier|classic|from before|less recent)\b")
NEWER = re.compile(r"\b(newer|more recent|recent|latest|modern)\b")


def normalise(text: str) -> str:
    """Lowercase words joined by single spaces (punctuation dropped, apostrophes kept)."""
    return " ".join(re.findall(r"[a-z0-9']+", text.lower().replace("’", "'")))


@dataclass
class TitleIndex:
    """Normalised title (year and a trailing ", The" folded in) -> catalogue indices; also keyed without
    a leading article, as people say "Empire Strikes Back"."""

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


@dataclass
class Turn:
    role: str  # "user" or "system"
    text: str


@dataclass
class Understanding:
    """What the dialogue asks for, in catalogue indices."""

    liked: list[int] = field(default_factory=list)
    disliked: list[int] = field(default_factory=list)
    offered: list[int] = field(default_factory=list)  # by the system, in any earlier turn
    last_offered: list[int] = field(default_factory=list)  # by the system's last turn
    constraint: str | None = None  # "older" / "newer" than ``last_offered``
    text: str = ""


def _negated(words: list[str], start: int) -> bool:
    before = " ".join(words[max(0, start - 4) : start])
    return any(re.search(rf"\b{re.escape(n)}\b", before) for n in NEGATIONS)


def understand(turns: Sequence[Turn], titles: TitleIndex) -> Understanding:
    """Read a dialogue (oldest turn first). A title in several items (remakes) counts for each."""
    out = Understanding()
    for turn in turns:
        words = normalise(turn.text).split()
        for start, _, items in titles.find(turn.text):
            if turn.role == "system":
                out.offered.extend(items)
            elif _negated(words, start):
                out.disliked.extend(items)
            else:
                out.liked.extend(items)
    named = set(out.liked) | set(out.disliked)  # "since you liked X, how about Y?" offers only Y
    out.offered = [i for i in out.offered if i not in named]
    system_turns = [t for t in turns if t.role == "system"]
    if system_turns:
        last = [i for _, _, items in titles.find(system_turns[-1].text) for i in items]
        out.last_offered = [i for i in last if i not in named]
    user_turns = [t for t in turns if t.role == "user"]
    if user_turns and out.last_offered:
        last = normalise(user_turns[-1].text)
        out.constraint = "older" if OLDER.search(last) else "newer" if NEWER.search(last) else None
    out.liked = [i for i in dict.fromkeys(out.liked) if i not in out.disliked]
    out.offered = list(dict.fromkeys(out.offered))
    # M6-Rec's dialogue text, the newest turn first (the text encoder keeps the start of a long text)
    out.text = " ".join(f"{t.role.upper()}: {t.text}" for t in reversed(turns))
    return out
