"""The grounded explanation of a recommendation, written from the data alone: the history items that
share the candidate's genres (liked ones first), else the request's query, else the recent likes and
the candidate's popularity.

One source of truth for two users: the service's template (``method: "history"``, and the fallback
when the language model's answer is caught false) and the targets the explainer language model is
tuned on (:mod:`m6rec.models.explainer_tuning`), so what the tuned model learns to write is exactly
what the service would say without it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from m6rec.text.textify import (
    DEFAULT_STYLE,
    Event,
    ItemText,
    Profile,
    TextStyle,
    clean_title,
    pronoun,
    rating_amount,
)

__all__ = [
    "Evidence",
    "display_title",
    "explanation_reason",
    "find_evidence",
    "history_explanation",
    "possessive",
    "rated_reason",
    "shared_genres",
]

MAX_CITED = 3  # history items one explanation names at most


def possessive(he: str) -> str:
    return {"he": "his", "she": "her"}.get(he, "their")


def display_title(item: ItemText) -> str:
    """ "The Shawshank Redemption (1994)": the cleaned title and its year."""
    title, year = clean_title(item.title, item.release_year)
    return f"{title} ({year})" if year is not None else title


def _key(item: ItemText) -> tuple[str, int | None]:
    return clean_title(item.title, item.release_year)


@dataclass
class Evidence:
    """What the history offers to explain a candidate, newest first: liked (rated above the like rule)
    items that share a genre with it, unrated ones that do, and every liked item."""

    sharing_liked: list[Event] = field(default_factory=list)
    sharing_watched: list[Event] = field(default_factory=list)
    recent_liked: list[Event] = field(default_factory=list)


def find_evidence(
    candidate: ItemText, history: Sequence[Event], is_like: Callable[[float], bool]
) -> Evidence:
    """The history's evidence for ``candidate`` (each item once, the candidate itself never); an item
    rated below the like rule is never evidence."""
    cand_key, cand_genres = _key(candidate), set(candidate.genres)
    seen: set[tuple[str, int | None]] = set()
    found = Evidence()
    for e in reversed(history):
        key = _key(e.item)
        if key in seen or key == cand_key:
            continue
        seen.add(key)
        liked = e.rating is not None and is_like(e.rating)
        disliked = e.rating is not None and not liked
        shares = bool(set(e.item.genres) & cand_genres)
        if liked:
            found.recent_liked.append(e)
        if shares and liked:
            found.sharing_liked.append(e)
        elif shares and not disliked:
            found.sharing_watched.append(e)
    return found


def shared_genres(candidate: ItemText, cited: Sequence[ItemText]) -> list[str]:
    """The candidate's genres (in its order) that any of the cited items has."""
    return [g for g in candidate.genres if any(g in item.genres for item in cited)]


def _shared(candidate: ItemText, cited: Sequence[ItemText]) -> str:
    shared = shared_genres(candidate, cited)
    genre_word = "genre" if len(shared) == 1 else "genres"
    return f"its {genre_word} ({', '.join(shared)})"


def explanation_reason(
    candidate: ItemText,
    history: Sequence[Event],
    profile: Profile | None,
    is_like: Callable[[float], bool],
    query: str | None = None,
) -> str:
    """What follows "He will like <candidate> because": e.g. "he liked Heat (1995) and Ronin (1998),
    which share its genres (Action, Thriller)." Only facts of ``history`` (newest last) and the
    catalogue: a cited item is in the history, a shared genre is the candidate's and the cited items',
    "liked" means ``is_like(rating)`` (the marts' rule), an item rated below it is never cited."""
    he = pronoun(profile)
    found = find_evidence(candidate, history, is_like)
    cited, verb = (
        (found.sharing_liked, "liked") if found.sharing_liked else (found.sharing_watched, "watched")
    )
    if cited:
        items = [e.item for e in cited[:MAX_CITED]]
        names = [display_title(item) for item in items]
        listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
        share = "shares" if len(names) == 1 else "share"
        return f"{he} {verb} {listed}, which {share} {_shared(candidate, items)}."
    if query:
        genres = f" ({', '.join(candidate.genres)})" if candidate.genres else ""
        return f'it matches the request "{query}"{genres}.'
    pct = candidate.popularity_percentile
    popular = (
        ""
        if pct is None or pct != pct
        else f" and is among the top {max(1, round(100 - pct))}% most popular titles"
    )
    if found.recent_liked:
        liked_names = " and ".join(display_title(e.item) for e in found.recent_liked[:2])
        recent = f" (most recently {he} liked {liked_names})"
    else:
        recent = ""
    return f"it fits the pattern of {possessive(he)} recent history{recent}{popular}."


def rated_reason(
    candidate: ItemText,
    history: Sequence[Event],
    profile: Profile | None,
    is_like: Callable[[float], bool],
    style: TextStyle = DEFAULT_STYLE,
) -> str:
    """The explainer language model's tuning target: one history item, with the rating the history
    gives it, e.g. "he rated Heat (1995) 5 stars, and it shares its genres (Action, Crime)." — the
    rating is copied from the behaviour text ("... and rated it 5 stars"), where "liked" would ask a
    135M-parameter model to apply the like rule itself (its commonest false claim, measured). Without
    such an item, :func:`explanation_reason`."""
    he = pronoun(profile)
    found = find_evidence(candidate, history, is_like)
    if found.sharing_liked:
        e = found.sharing_liked[0]
        said = f"{he} rated {display_title(e.item)} {rating_amount(e.rating, style)}"
    elif found.sharing_watched:
        e = found.sharing_watched[0]
        said = f"{he} watched {display_title(e.item)}"
    else:
        return explanation_reason(candidate, history, profile, is_like)
    return f"{said}, and it shares {_shared(candidate, [e.item])}."


def history_explanation(
    candidate: ItemText,
    history: Sequence[Event],
    profile: Profile | None,
    is_like: Callable[[float], bool],
    query: str | None = None,
) -> str:
    """The whole template sentence: "He will like <title (year)> because <reason>"."""
    head = f"{pronoun(profile).capitalize()} will like {display_title(candidate)} because"
    return f"{head} {explanation_reason(candidate, history, profile, is_like, query)}"
