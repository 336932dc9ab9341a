"""Conversational recommendation: what a dialogue says, read with the catalogue.

M6-Rec writes a conversation as text (``USER: ... SYSTEM: ...``) and lets one model answer it. Here the
dialogue is read into what the recommender can act on: the catalogue titles the user names (liked, or
disliked when negated: "not Heat", "I hated Heat"), the titles the system already offered (never offered
again: "not that one"), a time constraint on the last user turn ("something older" / "newer" than what
was offered last), and the dialogue itself as one text for the text encoder. No model is trained on
dialogues; :class:`~m6rec.serving.engine.Engine.chat` retrieves with the named items as history plus
the text, then ranks.

Titles are found with :class:`m6rec.text.titles.TitleIndex`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from m6rec.text.titles import TitleIndex, normalise

NEGATIONS = ("not", "no", "hated", "disliked", "didn't like", "did not like", "don't like", "nothing like")
OLDER = re.compile(r"\b(older|earlier|classic|from before|less recent)\b")
NEWER = re.compile(r"\b(newer|more recent|recent|latest|modern)\b")


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
