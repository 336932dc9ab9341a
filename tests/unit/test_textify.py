"""Exact wording of the behaviour text (m6rec.text.textify)."""

from __future__ import annotations

import math

import pytest

from m6rec.text.textify import (
    Event,
    ItemText,
    Profile,
    TextStyle,
    behaviour_segments,
    behaviour_text,
    clean_title,
    event_parts,
    event_text,
    item_text,
    popularity_text,
    profile_text,
    pronoun,
    question_text,
    relative_time,
    user_query_segments,
    user_query_text,
)

DAY = 86_400
NOW = 893_286_638  # an ML-100K-era timestamp (1998)

TOY = ItemText("Toy Story", 1995, ("Animation", "Children's", "Comedy"), popularity_percentile=99.5)
HEAT = ItemText("Heat", 1995, ("Action", "Crime", "Thriller"), popularity_percentile=80)
FARGO = ItemText("Fargo (1996)", genres="Crime|Drama|Thriller")
TECHNICIAN = Profile(age=24, gender="M", occupation="technician")


def words(text: str) -> int:
    return len(text.split())


# --------------------------------------------------------------------------------------------------
# items


def test_item_text_full_and_partial():
    assert item_text(TOY) == "Toy Story (1995; Animation, Children's, Comedy)"
    assert item_text(ItemText("Heat")) == "Heat"
    assert item_text(ItemText("Heat", release_year=1995)) == "Heat (1995)"
    assert item_text(ItemText("Heat", genres=["Action", "unknown"])) == "Heat (Action)"
    # a title year moves into the parenthesis; "|"-separated genres are accepted
    assert item_text(FARGO) == "Fargo (1996; Crime, Drama, Thriller)"
    # float/NaN years from a dataframe
    assert item_text(ItemText("Heat", release_year=1995.0)) == "Heat (1995)"
    assert item_text(ItemText("Heat", release_year=math.nan, genres=None)) == "Heat"


def test_clean_title():
    assert clean_title("Shawshank Redemption, The (1994)") == ("The Shawshank Redemption", 1994)
    assert clean_title("Toy Story (1995)", 1996) == ("Toy Story", 1996)
    assert clean_title("City of Lost Children, The (Cité des enfants perdus, La) (1995)") == (
        "The City of Lost Children (Cité des enfants perdus, La)",
        1995,
    )
    assert clean_title("Good, the Bad and the Ugly, The") == ("The Good, the Bad and the Ugly", None)
    assert clean_title("Seven (Se7en)") == ("Seven (Se7en)", None)
    assert clean_title("(1995)") == ("(1995)", None)  # never empties a title
    once = clean_title("Shawshank Redemption, The (1994)")
    assert clean_title(*once) == once  # idempotent


def test_popularity_only_with_flag():
    pop = TextStyle(with_popularity=True)
    assert item_text(TOY) == "Toy Story (1995; Animation, Children's, Comedy)"
    assert (
        item_text(TOY, pop) == "Toy Story (1995; Animation, Children's, Comedy; a very popular title, top 1%)"
    )
    assert item_text(HEAT, pop) == "Heat (1995; Action, Crime, Thriller; a well-known title, top 25%)"
    assert item_text(ItemText("Heat"), pop) == "Heat"  # unknown popularity: nothing said
    assert popularity_text(96) == "a popular title, top 5%"
    assert popularity_text(90) == "a popular title, top 10%"
    assert popularity_text(60, "product") == "a moderately known product, top 50%"
    assert popularity_text(10) == "a little-known title, bottom 50%"
    assert popularity_text(None) == ""


def test_attributes_rendered_but_never_ids():
    item = ItemText("Espresso Maker", attributes={"item_id": 4711, "brand": "Acme", "productId": 9, "id": 1})
    assert item_text(item) == "Espresso Maker (brand: Acme)"
    assert "4711" not in item_text(item)


# --------------------------------------------------------------------------------------------------
# profile and time


@pytest.mark.parametrize(
    ("profile", "expected", "pron"),
    [
        (TECHNICIAN, "A 24-year-old male technician.", "he"),
        (Profile(18, "F", "engineer"), "An 18-year-old female engineer.", "she"),
        (Profile(35, "female", None), "A 35-year-old female user.", "she"),
        (Profile(None, "M", None), "A male user.", "he"),
        (Profile(80, None, "retired"), "An 80-year-old retiree.", "they"),
        (Profile(None, None, "Educator"), "An educator.", "they"),
        (Profile(31, "X", "other"), "A 31-year-old user.", "they"),
        (Profile(None, None, "none"), "A user.", "they"),
        (Profile(math.nan, math.nan, math.nan), "A user.", "they"),
        (Profile(), "A user.", "they"),
        (None, "A user.", "they"),
    ],
)
def test_profile_text(profile, expected, pron):
    assert profile_text(profile) == expected
    assert pronoun(profile) == pron


@pytest.mark.parametrize(
    ("days", "expected"),
    [
        (-2, "today"),  # future events clamp to today
        (0, "today"),
        (0.99, "today"),
        (1, "yesterday"),
        (1.5, "yesterday"),
        (2, "2 days ago"),
        (3, "3 days ago"),
        (13, "13 days ago"),
        (14, "2 weeks ago"),
        (20, "2 weeks ago"),
        (59, "8 weeks ago"),
        (60, "2 months ago"),
        (150, "5 months ago"),
        (364, "12 months ago"),
        (365, "a year ago"),
        (800, "2 years ago"),
    ],
)
def test_relative_time(days, expected):
    assert relative_time(NOW - int(days * DAY), NOW) == expected


# --------------------------------------------------------------------------------------------------
# events and question


def test_event_text_rating_present_absent_and_verb():
    seen = Event(TOY, NOW - 3 * DAY, 5)
    assert event_text(seen, NOW, "he") == (
        "3 days ago he watched Toy Story (1995; Animation, Children's, Comedy) and rated it 5 stars."
    )
    assert event_text(Event(HEAT, NOW - DAY, None), NOW, "she") == (
        "Yesterday she watched Heat (1995; Action, Crime, Thriller)."
    )
    assert event_text(Event(HEAT, NOW, 1), NOW) == (
        "Today they watched Heat (1995; Action, Crime, Thriller) and rated it 1 star."
    )
    assert event_text(Event(HEAT, NOW - 20 * DAY, 3.5), NOW, "he") == (
        "2 weeks ago he watched Heat (1995; Action, Crime, Thriller) and rated it 3.5 stars."
    )
    assert event_text(Event(HEAT, None, 4.0), NOW, "he") == (
        "He watched Heat (1995; Action, Crime, Thriller) and rated it 4 stars."
    )
    assert (
        event_text(Event(HEAT, NOW - DAY, math.nan), None, "he")
        == "He watched Heat (1995; Action, Crime, Thriller)."
    )
    shop = TextStyle(verb="bought")
    assert event_text(Event(ItemText("Espresso Maker"), NOW - 2 * DAY, 4), NOW, "she", shop) == (
        "2 days ago she bought Espresso Maker and rated it 4 stars."
    )


def test_event_parts_recompose():
    event = Event(TOY, NOW - 3 * DAY, 5)
    prefix, item, suffix = event_parts(event, NOW, "he")
    assert (prefix, item, suffix) == (
        "3 days ago he watched",
        "Toy Story (1995; Animation, Children's, Comedy)",
        " and rated it 5 stars.",
    )
    assert f"{prefix} {item}{suffix}" == event_text(event, NOW, "he")


def test_question_text():
    assert question_text(HEAT, "he") == "Will he like Heat (1995; Action, Crime, Thriller)?"
    assert question_text(ItemText("Heat"), "they") == "Will they like Heat?"


# --------------------------------------------------------------------------------------------------
# whole behaviour

HISTORY = [
    Event(TOY, NOW - 3 * DAY, 5),
    Event(ItemText("Shawshank Redemption, The (1994)", genres=["Drama"]), NOW - 400 * DAY, 4),  # oldest
    Event(FARGO, NOW - DAY, None),
]
EXPECTED = (
    "A 24-year-old male technician. "
    "A year ago he watched The Shawshank Redemption (1994; Drama) and rated it 4 stars. "
    "3 days ago he watched Toy Story (1995; Animation, Children's, Comedy) and rated it 5 stars. "
    "Yesterday he watched Fargo (1996; Crime, Drama, Thriller). "
    "Will he like Heat (1995; Action, Crime, Thriller)?"
)


def test_behaviour_text_m6rec_example_sorted_by_time():
    assert behaviour_text(TECHNICIAN, HISTORY, HEAT, NOW) == EXPECTED


def test_behaviour_segments_join_to_text():
    segments = behaviour_segments(TECHNICIAN, HISTORY, HEAT, NOW)
    assert len(segments) == 1 + len(HISTORY) + 1
    assert segments[0] == "A 24-year-old male technician."
    assert segments[-1] == "Will he like Heat (1995; Action, Crime, Thriller)?"
    assert segments[1].startswith("A year ago he watched The Shawshank Redemption")
    assert " ".join(segments) == behaviour_text(TECHNICIAN, HISTORY, HEAT, NOW)


def test_empty_history_and_unknown_user():
    assert (
        behaviour_text(Profile(), [], HEAT, NOW)
        == "A user. Will they like Heat (1995; Action, Crime, Thriller)?"
    )
    assert user_query_text(None, [], NOW) == "A user."


def test_ties_keep_given_order():
    a, b = ItemText("A Film"), ItemText("B Film")
    text = behaviour_text(Profile(), [Event(b, NOW, 3), Event(a, NOW, 4)], HEAT, NOW)
    assert text.index("B Film") < text.index("A Film")


def test_style_verb_and_popularity_reach_every_segment():
    style = TextStyle(verb="bought", item_noun="product", with_popularity=True)
    profile = Profile(gender="F")
    history = [Event(ItemText("Kettle", popularity_percentile=97), NOW - 2 * DAY, None)]
    candidate = ItemText("Toaster", popularity_percentile=20)
    assert behaviour_text(profile, history, candidate, NOW, style=style) == (
        "A female user. 2 days ago she bought Kettle (a popular product, top 5%). "
        "Will she like Toaster (a little-known product, bottom 50%)?"
    )


def test_user_query_text_same_wording_without_question():
    expected = EXPECTED[: EXPECTED.index(" Will he like")]
    assert user_query_text(TECHNICIAN, HISTORY, NOW) == expected
    assert (
        user_query_segments(TECHNICIAN, HISTORY, NOW)
        == behaviour_segments(TECHNICIAN, HISTORY, HEAT, NOW)[:-1]
    )


def test_budget_drops_oldest_events_first_never_mid_item():
    full = behaviour_text(TECHNICIAN, HISTORY, HEAT, NOW)
    segments = behaviour_segments(TECHNICIAN, HISTORY, HEAT, NOW)
    # fits exactly: nothing dropped
    assert behaviour_text(TECHNICIAN, HISTORY, HEAT, NOW, words(full), words) == full
    # one word short: the oldest event (Shawshank) goes, whole
    one_short = behaviour_text(TECHNICIAN, HISTORY, HEAT, NOW, words(full) - 1, words)
    assert one_short == " ".join([segments[0], segments[2], segments[3], segments[4]])
    assert "Shawshank" not in one_short and "Toy Story" in one_short
    # room for the profile, the newest event and the question only
    newest = [segments[0], segments[3], segments[4]]
    budget = words(" ".join(newest))
    assert behaviour_text(TECHNICIAN, HISTORY, HEAT, NOW, budget, words) == " ".join(newest)
    assert behaviour_text(TECHNICIAN, HISTORY, HEAT, NOW, budget + 3, words) == " ".join(newest)
    # too small for any event: profile and question survive intact (over budget rather than cut)
    assert behaviour_text(TECHNICIAN, HISTORY, HEAT, NOW, 3, words) == " ".join([segments[0], segments[-1]])


def test_budget_matches_linear_oldest_first_reference():
    history = [
        Event(ItemText(f"Film Number {'X' * (i % 4)} {i}"), NOW - (40 - i) * DAY, i % 5 + 1)
        for i in range(25)
    ]
    count = len  # characters as "tokens"
    for budget in range(40, 1400, 37):
        got = behaviour_text(TECHNICIAN, history, HEAT, NOW, budget, count)
        # reference: drop the oldest one at a time until it fits
        kept = list(history)
        while kept and count(behaviour_text(TECHNICIAN, kept, HEAT, NOW)) > budget:
            kept = kept[1:]
        assert got == behaviour_text(TECHNICIAN, kept, HEAT, NOW), budget


def test_max_events_keeps_most_recent():
    segments = behaviour_segments(TECHNICIAN, HISTORY, HEAT, NOW, max_events=1)
    assert segments == [
        "A 24-year-old male technician.",
        "Yesterday he watched Fargo (1996; Crime, Drama, Thriller).",
        "Will he like Heat (1995; Action, Crime, Thriller)?",
    ]
    assert behaviour_segments(TECHNICIAN, HISTORY, HEAT, NOW, max_events=0) == [segments[0], segments[-1]]


def test_user_query_budget():
    full = user_query_text(TECHNICIAN, HISTORY, NOW)
    cut = user_query_text(TECHNICIAN, HISTORY, NOW, words(full) - 1, words)
    assert cut == full.replace(
        "A year ago he watched The Shawshank Redemption (1994; Drama) and rated it 4 stars. ", ""
    )


def test_max_tokens_without_counter_is_an_error():
    with pytest.raises(ValueError, match="count_tokens"):
        behaviour_text(TECHNICIAN, HISTORY, HEAT, NOW, max_tokens=10)


def test_no_digits_but_years_ratings_and_ages():
    # Inputs carry no identifiers; every number in the text is a year, age, rating or time.
    text = behaviour_text(TECHNICIAN, HISTORY, HEAT, NOW)
    import re

    assert sorted(set(re.findall(r"\d+", text))) == ["1994", "1995", "1996", "24", "3", "4", "5"]


def test_max_events_keeps_the_most_recent_and_all_of_a_shorter_history() -> None:
    history = [Event(ItemText(title=f"Movie {i}"), ts=i * 86_400, rating=4) for i in range(3)]
    segments = lambda n: behaviour_segments(None, history, ItemText(title="Heat"), 10 * 86_400, max_events=n)  # noqa: E731
    assert len(segments(10)) == 2 + 3  # a shorter history than the cap is kept whole
    assert len(segments(5)) == 2 + 3
    assert len(segments(3)) == 2 + 3
    assert [s.split(" watched ")[1][:7] for s in segments(2)[1:-1]] == ["Movie 1", "Movie 2"]
    assert len(segments(0)) == 2
