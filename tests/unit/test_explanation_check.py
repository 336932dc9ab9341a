"""The explanation rules on hand-written sentences: each false one is caught for the reason it is false,
each true one passes, and evidence is recognised only where it is cited."""

from __future__ import annotations

import pytest

from m6rec.evaluation.explanations import check_explanation, summarise
from m6rec.text.textify import Event, ItemText

STAR_WARS = ItemText("Star Wars (1977)", 1977, ("Action", "Adventure", "Romance", "Sci-Fi", "War"))
EMPIRE = ItemText(
    "Empire Strikes Back, The (1980)", 1980, ("Action", "Adventure", "Drama", "Romance", "Sci-Fi", "War")
)
SCHINDLER = ItemText("Schindler's List (1993)", 1993, ("Drama", "War"))
TOY_STORY = ItemText("Toy Story (1995)", 1995, ("Animation", "Children's", "Comedy"))
HEAT = ItemText("Heat (1995)", 1995, ("Action", "Crime", "Thriller"))
GODFATHER = ItemText("Godfather, The (1972)", 1972, ("Action", "Crime", "Drama"))
CATALOGUE = [STAR_WARS, EMPIRE, SCHINDLER, TOY_STORY, HEAT, GODFATHER]
HISTORY = [
    Event(STAR_WARS, 100, 5.0),
    Event(EMPIRE, 200, 5.0),
    Event(GODFATHER, 300, 4.0),
    Event(TOY_STORY, 400, 2.0),
]


def check(text: str, candidate: ItemText, **kwargs):
    return check_explanation(text, candidate, HISTORY, catalogue=CATALOGUE, **kwargs)


FALSE = [
    # the issue's own example: Schindler's List is not sci-fi
    (
        SCHINDLER,
        "He will like Schindler's List (1993; Drama, War) because it's a classic sci-fi film that's both "
        "a movie and a moviegoer's favorite.",
        "Sci-Fi",
    ),
    (HEAT, "He will like Heat (1995) because it is a romantic comedy.", "Comedy"),
    (HEAT, "He will like Heat (1995) because he watched Schindler's List.", "not in the user's history"),
    (HEAT, "He will like Heat (1995) because he rated The Godfather 5 stars.", "rated 5"),
    (HEAT, "He will like Heat (1995) because he loved Toy Story.", "liked Toy Story"),
    (HEAT, "He will like Heat (1995) because it came out in 1987, like his favourites.", "1987"),
    (HEAT, "He will like Heat (1995) because he likes documentaries.", "Documentary"),
    (HEAT, "He will like Heat (1995) because he gave it 4 stars.", "no one cited item"),
]
TRUE = [
    (HEAT, "He will like Heat (1995) because he liked The Godfather, another crime film.", True),
    (
        HEAT,
        "He will like Heat (1995) because he rated The Godfather 4 stars and it is an action thriller.",
        True,
    ),
    (
        SCHINDLER,
        "He will like Schindler's List (1993) because he loved Star Wars and The Empire Strikes Back, "
        "which are war films.",
        True,
    ),
    (HEAT, "He will like Heat (1995) because it is a gripping crime thriller from 1995.", True),
    (
        EMPIRE,
        "He will like The Empire Strikes Back because he enjoyed Star Wars (1977), a sci-fi adventure.",
        True,
    ),
    (HEAT, "He will like Heat (1995) because it is a great movie.", False),  # true, but cites nothing
]


@pytest.mark.parametrize(("candidate", "text", "why"), FALSE)
def test_false_statements_are_caught(candidate: ItemText, text: str, why: str) -> None:
    result = check(text, candidate)
    assert result.is_false, text
    assert any(why in claim for claim in result.false_claims), result.false_claims


@pytest.mark.parametrize(("candidate", "text", "evidence"), TRUE)
def test_true_statements_pass_and_evidence_is_recognised(
    candidate: ItemText, text: str, evidence: bool
) -> None:
    result = check(text, candidate)
    assert not result.is_false, result.false_claims
    assert result.cites_evidence is evidence, result.evidence


def test_the_query_counts_as_evidence_and_the_rates_summarise() -> None:
    text = 'He will like Toy Story (1995) because it matches the request "an animated film for kids".'
    with_query = check(text, TOY_STORY, query="an animated film for kids")
    assert with_query.cites_evidence and not with_query.is_false
    bare = check("He will like Heat (1995) because it is a romantic comedy.", HEAT)
    assert summarise([with_query, bare]) == {"n": 2, "false_statement_rate": 0.5, "evidence_rate": 0.5}


def test_the_service_replaces_a_caught_explanation_by_the_template(tmp_path, monkeypatch) -> None:
    """method "auto" serves the language model's answer only when the rules find nothing false in it;
    method "language_model" returns it as it is."""
    from m6rec.serving.engine import Engine
    from m6rec.serving.schemas import ExplainRequest
    from tests.bundle_fixtures import build_tiny_bundle

    engine = Engine(build_tiny_bundle(tmp_path / "model", explainer=True), device="cpu")
    history = [{"item_id": "i1", "rating": 5}]
    answers = {
        "false": "He will like Movie number 5 (1985) because it is a documentary.",
        "true": "He will like Movie number 5 (1985) because he liked Movie number 1.",
    }
    for kind, text in answers.items():
        monkeypatch.setattr(
            engine, "lm_explanations", lambda history, ids, profile, text=text: [text] * len(ids)
        )
        auto = engine.explain(ExplainRequest.model_validate({"history": history, "item_id": "i5"}))
        forced = engine.explain(
            ExplainRequest.model_validate({"history": history, "item_id": "i5", "method": "language_model"})
        )
        assert forced.source == "language_model" and forced.explanation == text
        if kind == "false":
            assert auto.source == "history" and "documentary" not in auto.explanation
        else:
            assert auto.source == "language_model" and auto.explanation == text


def test_recommend_has_the_top_items_explained_in_one_batch(tmp_path, monkeypatch) -> None:
    """``/recommend`` with ``explain``: the language model writes the top ``lm_explain_top`` items'
    explanations in one call; one the rules catch, and every item below the top, gets the template."""
    from m6rec.serving.engine import Engine
    from m6rec.serving.schemas import RecommendRequest
    from tests.bundle_fixtures import build_tiny_bundle

    engine = Engine(build_tiny_bundle(tmp_path / "model", explainer=True), device="cpu", lm_explain_top=3)
    calls: list[list[str]] = []

    def written(history, ids, profile) -> list[str]:
        calls.append(list(ids))
        titles = [engine._display(engine.rec.index[i]) for i in ids]
        return [f"He will like {titles[0]} because it is a documentary."] + [
            f"He will like {t} because he liked Movie number 1." for t in titles[1:]
        ]

    monkeypatch.setattr(engine, "lm_explanations", written)
    history = [{"item_id": "i1", "rating": 5}]
    top = engine.recommend(RecommendRequest.model_validate({"history": history, "k": 5, "explain": True}))
    assert calls == [[item.item_id for item in top.items[:3]]]
    assert [item.explanation_source for item in top.items] == [
        "history",
        *["language_model"] * 2,
        *["history"] * 2,
    ]
    assert "documentary" not in top.items[0].explanation
    assert top.items[1].explanation.endswith("because he liked Movie number 1.")


def test_titles_are_not_read_as_claims() -> None:
    """A title's own words, years and punctuation are not genre claims, years or clause breaks."""
    space = ItemText("2001: A Space Odyssey (1968)", 1968, ("Drama", "Mystery", "Sci-Fi", "Thriller"))
    cat = ItemText("That Darn Cat! (1997)", 1997, ("Children's", "Comedy", "Mystery"))
    opus = ItemText("Mr. Holland's Opus (1995)", 1995, ("Drama",))
    show = ItemText("Show, The (1995)", 1995, ("Documentary",))
    history = [Event(space, 1, 5.0), Event(cat, 2, 4.0), Event(opus, 3, 5.0)]
    catalogue = [*CATALOGUE, space, cat, opus, show, ItemText("That Darn Cat! (1965)", 1965, ("Comedy",))]
    text = (
        "He will like Schindler's List (1993) because he liked 2001: A Space Odyssey (1968), "
        "That Darn Cat! (1997) and Mr. Holland's Opus (1995), which share its genre (Drama), "
        "and it is an iconic show."
    )
    result = check_explanation(text, SCHINDLER, history, catalogue=catalogue)
    assert not result.is_false, result.false_claims
    assert {
        "cites That Darn Cat! (1997) from the history",
        "cites 2001: A Space Odyssey (1968) from the history",
    } <= set(result.evidence)
