"""Are explanations true, and do they cite evidence? Rules over the data, not a judge model.

An explanation ("He will like Heat (1995; Action, Crime, Thriller) because he loved The Godfather,
another crime film.") is split at "because" into clauses. What the data can contradict:

- **titles**: a catalogue title other than the candidate that the user never watched, cited as evidence;
- **years**: a year next to a title (or a bare year) that is neither the candidate's nor a cited item's;
- **genres**: a genre word in a clause about the item ("it's a sci-fi classic") that is not among the
  candidate's genres nor a cited history item's; in a clause about the user ("he likes comedies") one
  that none of the user's history items has;
- **ratings**: "rated X 5 stars" when the history says otherwise, a rating with no cited item to attach
  to, or "loved/liked/enjoyed X" for an item the user rated as a dislike.

Evidence: a cited history item, a genre the candidate shares with an item the user liked, or words of
the request's query. Rules are deliberately literal: what they cannot parse they neither count as
false nor as evidence (tests/unit/test_explanation_check.py holds the hand-written true and false
sentences they were written against).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from m6rec.text.textify import Event, ItemText, clean_title
from m6rec.text.titles import TitleIndex, normalise

# Words that name a genre, by the genre (MovieLens' names; a generic catalogue's genres are matched
# by their own lowercase names too).
GENRE_WORDS: dict[str, tuple[str, ...]] = {
    "Action": ("action",),
    "Adventure": ("adventure", "adventures"),
    "Animation": ("animated", "animation", "cartoon", "cartoons"),
    "Children's": ("children's", "kids", "family film", "family movie"),
    "Comedy": ("comedy", "comedies", "comedic", "funny"),
    "Crime": ("crime",),
    "Documentary": ("documentary", "documentaries"),
    "Drama": ("drama", "dramas", "dramatic"),
    "Fantasy": ("fantasy",),
    "Film-Noir": ("film-noir", "film noir", "noir"),
    "Horror": ("horror", "scary"),
    "Musical": ("musical", "musicals"),
    "Mystery": ("mystery", "mysteries"),
    "Romance": ("romance", "romantic", "romances", "love story"),
    "Sci-Fi": ("sci-fi", "science fiction", "science-fiction", "scifi"),
    "Thriller": ("thriller", "thrillers", "suspense"),
    "War": ("war",),
    "Western": ("western", "westerns"),
}
LIKE_VERBS = r"(?:loved|liked|enjoyed|adored|likes|loves|enjoys)"
USER_PRONOUNS = ("he", "she", "they", "his", "her", "their", "the user")
YEAR = re.compile(r"(?<![\d-])(19\d{2}|20\d{2})(?![\d-]|s\b)")
STARS = re.compile(r"\b([1-5](?:\.5)?)[- ]?stars?\b")
STOPWORDS = {"something", "movie", "movies", "film", "films", "with", "that", "about", "like", "some"}


@dataclass
class ExplanationCheck:
    """What :func:`check_explanation` found: each false statement and each piece of evidence, in words."""

    false_claims: list[str] = field(default_factory=list)
    evidence: list[str] = field(default_factory=list)

    @property
    def is_false(self) -> bool:
        return bool(self.false_claims)

    @property
    def cites_evidence(self) -> bool:
        return bool(self.evidence)


def _norm(text: str) -> str:
    return " ".join(text.lower().replace("’", "'").split())


def _mentions(text: str, phrase: str) -> list[int]:
    """Start offsets of ``phrase`` in ``text`` as whole words (both already normalised)."""
    return [m.start() for m in re.finditer(rf"(?<![\w]){re.escape(phrase)}(?![\w])", text)]


def _genre_terms(text: str, extra: Iterable[str]) -> set[str]:
    """The genres a piece of text names."""
    found = set()
    for genre, words in GENRE_WORDS.items():
        if any(_mentions(text, w) for w in words):
            found.add(genre)
    for genre in extra:
        if genre not in GENRE_WORDS and _mentions(text, _norm(genre)):
            found.add(genre)
    return found


# Clause breaks: sentence ends (not the dot of "Mr." or "Dr."), semicolons, and ", and/but/which ..."
CLAUSE_BREAK = re.compile(
    r"(?<!\bmr)(?<!\bmrs)(?<!\bdr)(?<!\bst)(?<!\bjr)(?<!\bvs)[.;!?](?=\s|$)"
    r"|,\s*(?:and|but|so|which|while)\b|\s(?:and|but)\s(?=(?:he|she|they|it)\b)"
)
PLACEHOLDER = re.compile(r"\x00(\d+)\x00")
TITLE_YEAR = re.compile(r"\s*\((\d{4})[);]")


def _clauses(reason: str) -> list[str]:
    return [p.strip() for p in CLAUSE_BREAK.split(reason) if p and p.strip()]


def _is_about_user(clause: str) -> bool:
    first = clause.split(" ", 1)[0]
    return first in USER_PRONOUNS or clause.startswith("the user")


def _title_variants(item: ItemText) -> set[str]:
    key = normalise(clean_title(item.title, item.release_year)[0])
    return {key, re.sub(r"^(the|a|an) ", "", key)}


def check_explanation(
    text: str,
    candidate: ItemText,
    history: Sequence[Event],
    *,
    catalogue: Sequence[ItemText] = (),
    index: TitleIndex | None = None,
    is_like=lambda rating: rating is None or rating > 3,
    query: str | None = None,
) -> ExplanationCheck:
    """Check one explanation of ``candidate`` for a user with ``history`` (``catalogue``: every item, so
    that a cited title the user never watched is caught, with ``index`` its prebuilt
    :class:`~m6rec.text.titles.TitleIndex` when checking many; ``is_like``: the marts' like rule).

    Every catalogue title in the text is cut out first (a title's own words, years and punctuation —
    "Star Wars", "2001: A Space Odyssey", "Mr. Holland's Opus", "That Darn Cat!" — are neither genre
    claims, nor years, nor clause breaks); a one-word title counts only when capitalised ("the iconic
    show" is not "The Show")."""
    if index is None:
        index = TitleIndex.build([i.title for i in catalogue], [i.release_year for i in catalogue])
    result = ExplanationCheck()
    reason = text.split(" because ", 1)[1] if " because " in text else text
    watched: dict[str, Event] = {}
    for event in history:
        for variant in _title_variants(event.item):
            watched.setdefault(variant, event)
    candidate_keys = _title_variants(candidate)

    # cut every title out: each becomes a placeholder naming what it is (candidate, watched or not)
    mentions: list[tuple[str, Event | None, list[int]]] = []
    pieces, last = [], 0
    for _, _, begin, end, key, hits in index.spans(reason):
        if " " not in key and not reason[begin].isupper():
            continue
        kind = "candidate" if key in candidate_keys else "watched" if key in watched else "other"
        while reason[end : end + 1] in ("!", "?", "."):  # "That Darn Cat!", "L.A.", "Sally..."
            end += 1
        year = TITLE_YEAR.match(reason, end)  # "... (1997)" belongs to the title before it
        if year:
            end = year.end()
            years = {catalogue[i].release_year for i in hits} if catalogue else set()
            if kind == "candidate":
                years = {candidate.release_year}
            if years and int(year.group(1)) not in years:
                named = catalogue[hits[0]].title if catalogue else key
                result.false_claims.append(f"gives {named} the year {year.group(1)}")
        pieces += [reason[last:begin], f"\x00{len(mentions)}\x00"]
        mentions.append((kind, watched.get(key), hits))
        last = end
    reason = _norm("".join(pieces) + reason[last:])

    extra_genres = {g for i in [candidate, *(e.item for e in history)] for g in i.genres}
    history_genres = {g for e in history for g in e.item.genres}
    liked_genres = {g for e in history if is_like(e.rating) for g in e.item.genres}

    for clause in _clauses(reason):
        markers = PLACEHOLDER.findall(clause)
        named_here = [mentions[int(k)] for k in markers]
        cited = [e for kind, e, _ in named_here if kind == "watched" and e is not None]
        plain = PLACEHOLDER.sub(" ", clause)
        for e in cited:
            result.evidence.append(f"cites {e.item.title} from the history")
        for kind, _, hits in named_here:
            if kind == "other":
                for i in hits:
                    result.false_claims.append(
                        f"cites {catalogue[i].title}, which is not in the user's history"
                    )
        # years
        allowed_years = {candidate.release_year} | {e.item.release_year for e in cited}
        for year in YEAR.findall(plain):
            if int(year) not in allowed_years:
                result.false_claims.append(f"year {year} is neither the candidate's nor a cited item's")
        # genres
        named = _genre_terms(plain, extra_genres)
        cited_genres = {g for e in cited for g in e.item.genres}
        if _is_about_user(clause) and not cited:
            allowed, whose = history_genres, "the user's history"
        else:
            allowed, whose = set(candidate.genres) | cited_genres, f"{candidate.title} or a cited item"
        for genre in sorted(named - allowed):
            result.false_claims.append(f"calls {genre} what {whose} is not")
        for genre in sorted(named & set(candidate.genres) & liked_genres):
            result.evidence.append(f"shares {genre} with items the user liked")
        # ratings and likes
        for stars in STARS.findall(plain):
            if len(cited) != 1:
                result.false_claims.append(f"a {stars}-star rating with no one cited item it belongs to")
            elif cited[0].rating is None or abs(float(stars) - float(cited[0].rating)) > 1e-6:
                result.false_claims.append(
                    f"says {cited[0].item.title} was rated {stars}, the history says {cited[0].rating}"
                )
        for marker, (kind, e, _) in zip(markers, named_here, strict=True):
            loved = re.search(rf"{LIKE_VERBS}\s+(?:the\s+)?(?:movie\s+|film\s+)?\x00{marker}\x00", clause)
            if (
                kind == "watched"
                and e is not None
                and loved
                and e.rating is not None
                and not is_like(e.rating)
            ):
                result.false_claims.append(f"says the user liked {e.item.title}, rated {e.rating}")

    if query:
        words = {w for w in re.findall(r"[a-z][a-z'-]{3,}", _norm(query)) if w not in STOPWORDS}
        hits = sorted(w for w in words if _mentions(PLACEHOLDER.sub(" ", reason), w))
        if hits:
            result.evidence.append(f"answers the request ({', '.join(hits)})")
    result.evidence = list(dict.fromkeys(result.evidence))
    result.false_claims = list(dict.fromkeys(result.false_claims))
    return result


def summarise(checks: Sequence[ExplanationCheck]) -> dict[str, float | int]:
    """The two rates the issue's targets are stated in, over a sample of checked explanations."""
    n = len(checks)
    return {
        "n": n,
        "false_statement_rate": round(sum(c.is_false for c in checks) / n, 4) if n else float("nan"),
        "evidence_rate": round(sum(c.cites_evidence for c in checks) / n, 4) if n else float("nan"),
    }
