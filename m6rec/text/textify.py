"""Behaviour as text — the single source of the wording used by training and serving alike.

M6-Rec style: the user profile, then the history (oldest first) with relative time and rating, then
the candidate::

    A 24-year-old male technician. 3 days ago he watched Toy Story (1995; Animation, Children's,
    Comedy) and rated it 5 stars. Yesterday he watched Heat (1995; Action, Crime, Thriller). Will he
    like Casino (1995; Drama, Thriller)?

Inputs are plain dataclasses that carry no identifiers, so no raw ID can reach the text. Everything is
pure Python (no torch, no pandas); missing values (``None``, NaN, ``pd.NA``) are skipped gracefully.

Segments: :func:`behaviour_segments` returns ``[profile, event_1, ..., event_n, question]`` — the units
the late-interaction ranker encodes separately — and :func:`behaviour_text` is exactly
``" ".join(behaviour_segments(...))``. :func:`event_parts` splits an event sentence into
``(prefix, item, suffix)`` so that item text can be cached once per item.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DEFAULT_STYLE",
    "Event",
    "ItemText",
    "Profile",
    "TextStyle",
    "behaviour_segments",
    "behaviour_text",
    "clean_title",
    "event_parts",
    "event_text",
    "item_text",
    "popularity_text",
    "profile_text",
    "pronoun",
    "question_text",
    "rating_amount",
    "relative_time",
    "user_query_segments",
    "user_query_text",
]

DAY = 86_400


# --------------------------------------------------------------------------------------------------
# inputs


@dataclass
class ItemText:
    """What the text may say about an item. ``popularity_percentile`` is a percentile rank in [0, 100]
    where 100 is the most popular item (so 97 reads "top 3%"). ``attributes`` are extra ``key: value``
    facts for non-movie catalogues (keys that look like identifiers are never rendered).
    ``watched_next`` names the titles other users most often watched right after this one
    (collaborative signal as text; shown only when ``TextStyle.with_watched_next``)."""

    title: str
    release_year: int | None = None
    genres: Sequence[str] = ()
    popularity_percentile: float | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)
    watched_next: Sequence[str] = ()


@dataclass
class Profile:
    """``gender``: 'M'/'male' -> he, 'F'/'female' -> she, anything else or missing -> they."""

    age: int | None = None
    gender: str | None = None
    occupation: str | None = None


@dataclass
class Event:
    """One interaction; ``ts`` in seconds since the epoch (or any consistent unit of seconds)."""

    item: ItemText
    ts: int | None = None
    rating: float | None = None


@dataclass(frozen=True)
class TextStyle:
    """Wording knobs. ``verb``: "watched" for movies, e.g. "bought" or "read" elsewhere. ``item_noun`` is
    used by the popularity phrase ("a popular title, top 5%"), shown only when ``with_popularity``.
    ``with_watched_next`` adds "often watched next: A, B" (the item's ``watched_next`` titles): the item
    segments the retrieval and CTR models cache read it; whole behaviour sentences leave it out."""

    verb: str = "watched"
    item_noun: str = "title"
    with_popularity: bool = False
    rating_unit: str = "star"
    with_watched_next: bool = False


DEFAULT_STYLE = TextStyle()
PIPELINE_STYLE = TextStyle(
    with_popularity=True
)  # the pipeline's behaviour sentences (explainer, token ranker)
# Item segments the pipeline's retrieval and CTR models cache also say what is "often watched next".
SEGMENT_STYLE = TextStyle(with_popularity=True, with_watched_next=True)


# --------------------------------------------------------------------------------------------------
# small helpers


def _missing(x: Any) -> bool:
    if x is None:
        return True
    try:
        return bool(x != x)  # NaN
    except TypeError:  # pd.NA refuses bool()
        return True
    except ValueError:  # an array: not a missing scalar
        return False


def _as_int(x: Any) -> int | None:
    if _missing(x):
        return None
    try:
        return int(round(float(x)))
    except (TypeError, ValueError):
        return None


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _article(word: str) -> str:
    """'a' or 'an' for the word that follows (numbers read aloud: an 8-, an 11-, an 18-, an 80-...)."""
    w = word.lower()
    number = re.match(r"[0-9]+", w)  # ASCII digits only: str.isdigit() also accepts "²"
    if number:
        digits = number.group()
        return "an" if digits.startswith("8") or digits in ("11", "18") else "a"
    if w.startswith(("uni", "use", "usu", "uti", "eu", "one")):
        return "a"
    if w.startswith(("hour", "honest", "honor", "honour")):
        return "an"
    return "an" if w[:1] in "aeiou" else "a"


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


# --------------------------------------------------------------------------------------------------
# items

_YEAR_SUFFIX = re.compile(r"\s*\((\d{4})\)\s*$")
_TRAILING_ARTICLE = re.compile(r"^(?P<body>.+?), (?P<art>The|A|An)(?P<rest>\s*\(.*\))?$")
_SKIP_GENRES = {"", "unknown", "(no genres listed)"}


def clean_title(title: str, release_year: int | None = None) -> tuple[str, int | None]:
    """Normalise a catalogue title: a trailing "(1995)" moves into the year (when no year is given) and
    MovieLens' "Shawshank Redemption, The" becomes "The Shawshank Redemption". Idempotent."""
    title = " ".join(str(title).split())
    year = _as_int(release_year)
    m = _YEAR_SUFFIX.search(title)
    if m and title[: m.start()].strip():
        title = title[: m.start()].strip()
        if year is None:
            year = int(m.group(1))
    m = _TRAILING_ARTICLE.match(title)
    if m:
        title = f"{m['art']} {m['body']}{m['rest'] or ''}"
    return title, year


def popularity_text(percentile: float | None, noun: str = "title") -> str:
    """Verbalised popularity bucket: 99.5 -> "a very popular title, top 1%"; below the median ->
    "a little-known title, bottom 50%". Buckets (not exact ranks) so the text generalises."""
    pct = None if _missing(percentile) else float(percentile)  # type: ignore[arg-type]
    if pct is None:
        return ""
    top = 100.0 - min(max(pct, 0.0), 100.0)
    if top <= 1:
        return f"a very popular {noun}, top 1%"
    if top <= 5:
        return f"a popular {noun}, top 5%"
    if top <= 10:
        return f"a popular {noun}, top 10%"
    if top <= 25:
        return f"a well-known {noun}, top 25%"
    if top <= 50:
        return f"a moderately known {noun}, top 50%"
    return f"a little-known {noun}, bottom 50%"


def _genres(genres: Sequence[str] | str | None) -> list[str]:
    """Accepts a sequence (list, tuple, numpy array) or a "A|B" / "A, B" string; drops unknowns."""
    if isinstance(genres, str):
        parts: list[Any] = re.split(r"\s*[|,]\s*", genres)
    else:
        try:
            parts = list(genres)  # type: ignore[arg-type]
        except TypeError:  # None, NaN, pd.NA
            return []
    return [str(g).strip() for g in parts if not _missing(g) and str(g).strip().lower() not in _SKIP_GENRES]


def _is_id_key(key: str) -> bool:
    k = str(key).lower().replace("-", "_").replace(" ", "_")
    return (
        k == "id" or k.endswith("_id") or (k.endswith("id") and k[:-2].endswith(("item", "user", "product")))
    )


def item_text(item: ItemText, style: TextStyle = DEFAULT_STYLE) -> str:
    """ "Toy Story (1995; Animation, Children's, Comedy)"; the parenthesis holds whatever is known:
    year, genres, the popularity phrase (``style.with_popularity``), extra attributes and the titles
    often watched next (``style.with_watched_next``)."""
    title, year = clean_title(item.title or "", item.release_year)
    if not title:
        title = f"an untitled {style.item_noun}"
    details: list[str] = []
    if year is not None:
        details.append(str(year))
    genres = _genres(item.genres)
    if genres:
        details.append(", ".join(genres))
    if style.with_popularity:
        pop = popularity_text(item.popularity_percentile, style.item_noun)
        if pop:
            details.append(pop)
    for key, value in (item.attributes or {}).items():
        if _is_id_key(key) or _missing(value) or str(value).strip() == "":
            continue
        details.append(f"{key}: {value}")
    if style.with_watched_next:
        followers = [clean_title(t)[0] for t in item.watched_next or () if not _missing(t)]
        followers = [t for t in followers if t]
        if followers:
            details.append(f"often {style.verb} next: {', '.join(followers)}")
    return f"{title} ({'; '.join(details)})" if details else title


# --------------------------------------------------------------------------------------------------
# users and events

OCCUPATION_NOUNS: dict[str, str | None] = {
    "": None,
    "none": None,
    "other": None,
    "unknown": None,
    "other or not specified": None,
    "entertainment": "entertainment worker",
    "healthcare": "healthcare worker",
    "marketing": "marketing professional",
    "retired": "retiree",
    "salesman": "salesperson",
    "self-employed": "self-employed person",
    "unemployed": "unemployed person",
    "customer service": "customer service worker",
}
_HE = {"m", "male", "man"}
_SHE = {"f", "female", "woman"}


def _gender_key(gender: Any) -> str:
    return "" if _missing(gender) else str(gender).strip().lower()


PRONOUNS = ("he", "she", "they")


def pronoun(profile: Profile | None) -> str:
    """One of :data:`PRONOUNS`."""
    key = _gender_key(profile.gender) if profile is not None else ""
    return "he" if key in _HE else "she" if key in _SHE else "they"


def profile_text(profile: Profile | None) -> str:
    """ "A 24-year-old male technician." ; "An 18-year-old user." ; "A female user." ; "A user." """
    words: list[str] = []
    if profile is not None:
        age = _as_int(profile.age)
        if age is not None and age > 0:
            words.append(f"{age}-year-old")
        key = _gender_key(profile.gender)
        if key in _HE:
            words.append("male")
        elif key in _SHE:
            words.append("female")
        occ = None if _missing(profile.occupation) else " ".join(str(profile.occupation).split()).lower()
        noun = OCCUPATION_NOUNS.get(occ, occ) if occ is not None else None
    else:
        noun = None
    words.append(noun or "user")
    return f"{_capitalise(_article(words[0]))} {' '.join(words)}."


def relative_time(event_ts: int | float, now_ts: int | float) -> str:
    """How long before ``now_ts`` the event happened, in whole days: "today" (< 24 h, also for events
    after ``now_ts``), "yesterday", "3 days ago" (2-13 days), "2 weeks ago" (14-59 days),
    "5 months ago" (60-364 days), "a year ago", "2 years ago"."""
    days = max(0, int((float(now_ts) - float(event_ts)) // DAY))
    if days == 0:
        return "today"
    if days == 1:
        return "yesterday"
    if days < 14:
        return f"{days} days ago"
    if days < 60:
        return f"{days // 7} weeks ago"
    if days < 365:
        return f"{days // 30} months ago"
    years = days // 365
    return "a year ago" if years == 1 else f"{years} years ago"


def rating_amount(rating: float, style: TextStyle = DEFAULT_STYLE) -> str:
    """ "5 stars", "1 star", "4.5 stars": a rating as every text says it."""
    value = float(rating)
    unit = style.rating_unit if value == 1 else f"{style.rating_unit}s"
    return f"{_number(value)} {unit}"


def _rating_phrase(rating: Any, style: TextStyle) -> str:
    if _missing(rating):
        return ""
    return f" and rated it {rating_amount(rating, style)}"


def event_parts(
    event: Event, now_ts: int | None, pronoun: str = "they", style: TextStyle = DEFAULT_STYLE
) -> tuple[str, str, str]:
    """``(prefix, item, suffix)`` with ``event_text == f"{prefix} {item}{suffix}"``, e.g.
    ("3 days ago he watched", "Toy Story (1995; ...)", " and rated it 5 stars.")."""
    if _missing(event.ts) or _missing(now_ts):
        prefix = f"{_capitalise(pronoun)} {style.verb}"
    else:
        prefix = f"{_capitalise(relative_time(event.ts, now_ts))} {pronoun} {style.verb}"  # type: ignore[arg-type]
    return prefix, item_text(event.item, style), _rating_phrase(event.rating, style) + "."


def event_text(
    event: Event, now_ts: int | None, pronoun: str = "they", style: TextStyle = DEFAULT_STYLE
) -> str:
    """ "3 days ago he watched Toy Story (1995; Animation, Children's, Comedy) and rated it 5 stars." """
    prefix, item, suffix = event_parts(event, now_ts, pronoun, style)
    return f"{prefix} {item}{suffix}"


def question_text(candidate: ItemText, pronoun: str = "they", style: TextStyle = DEFAULT_STYLE) -> str:
    """ "Will he like Heat (1995; Action, Crime, Thriller)?" """
    return f"Will {pronoun} like {item_text(candidate, style)}?"


# --------------------------------------------------------------------------------------------------
# whole behaviour


def _ordered(history: Sequence[Event]) -> list[Event]:
    """Oldest first. Sorted stably by ``ts`` when every event has one (ties keep the given order)."""
    events = list(history)
    if all(not _missing(e.ts) for e in events):
        events.sort(key=lambda e: e.ts)  # type: ignore[arg-type, return-value]
    return events


def _segments(
    profile: Profile | None,
    history: Sequence[Event],
    tail: str | None,
    now_ts: int | None,
    style: TextStyle,
    max_events: int | None,
    max_tokens: int | None,
    count_tokens: Callable[[str], int] | None,
) -> list[str]:
    if max_tokens is not None and count_tokens is None:
        raise ValueError("max_tokens needs count_tokens (a callable str -> number of tokens)")
    pron = pronoun(profile)
    events = _ordered(history)
    if max_events is not None:
        events = events[max(0, len(events) - max_events) :]  # the most recent max_events (all if fewer)
    head = [profile_text(profile)]
    tails = [tail] if tail else []
    body = [event_text(e, now_ts, pron, style) for e in events]

    def build(keep: int) -> list[str]:
        return head + body[len(body) - keep :] + tails if keep else head + tails

    if max_tokens is None or count_tokens is None or count_tokens(" ".join(build(len(body)))) <= max_tokens:
        return build(len(body))
    # Largest number of most recent events that fits (token counts grow with the number kept).
    lo, hi = 0, len(body) - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count_tokens(" ".join(build(mid))) <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    return build(lo)


def behaviour_segments(
    profile: Profile | None,
    history: Sequence[Event],
    candidate: ItemText,
    now_ts: int | None,
    *,
    max_tokens: int | None = None,
    count_tokens: Callable[[str], int] | None = None,
    max_events: int | None = None,
    style: TextStyle = DEFAULT_STYLE,
) -> list[str]:
    """``[profile, event_1 (oldest), ..., event_n, question]``. History is ordered by ``ts`` (stable);
    ``max_events`` keeps the most recent ones; with ``max_tokens``, the oldest events are dropped
    until ``count_tokens(" ".join(segments)) <= max_tokens`` — whole events only, the profile and the
    question are always kept (so the result can still exceed the budget when they alone do)."""
    tail = question_text(candidate, pronoun(profile), style)
    return _segments(profile, history, tail, now_ts, style, max_events, max_tokens, count_tokens)


def behaviour_text(
    profile: Profile | None,
    history: Sequence[Event],
    candidate: ItemText,
    now_ts: int | None,
    max_tokens: int | None = None,
    count_tokens: Callable[[str], int] | None = None,
    *,
    max_events: int | None = None,
    style: TextStyle = DEFAULT_STYLE,
) -> str:
    """The behaviour as one string: ``" ".join(behaviour_segments(...))``."""
    return " ".join(
        behaviour_segments(
            profile,
            history,
            candidate,
            now_ts,
            max_tokens=max_tokens,
            count_tokens=count_tokens,
            max_events=max_events,
            style=style,
        )
    )


def user_query_segments(
    profile: Profile | None,
    history: Sequence[Event],
    now_ts: int | None,
    *,
    max_tokens: int | None = None,
    count_tokens: Callable[[str], int] | None = None,
    max_events: int | None = None,
    style: TextStyle = DEFAULT_STYLE,
) -> list[str]:
    """``[profile, event_1, ..., event_n]`` — :func:`behaviour_segments` without the question."""
    return _segments(profile, history, None, now_ts, style, max_events, max_tokens, count_tokens)


def user_query_text(
    profile: Profile | None,
    history: Sequence[Event],
    now_ts: int | None,
    max_tokens: int | None = None,
    count_tokens: Callable[[str], int] | None = None,
    *,
    max_events: int | None = None,
    style: TextStyle = DEFAULT_STYLE,
) -> str:
    """The retrieval user-tower text: same wording as :func:`behaviour_text`, no candidate question."""
    return " ".join(
        user_query_segments(
            profile,
            history,
            now_ts,
            max_tokens=max_tokens,
            count_tokens=count_tokens,
            max_events=max_events,
            style=style,
        )
    )
