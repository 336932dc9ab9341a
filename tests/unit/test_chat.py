"""Conversational recommendation: the dialogue reader on hand-written turns, and /chat's engine on the
tiny bundle (named titles become history; offered and turned-down items never come back; "older")."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from m6rec.serving.dialogue import Turn, understand
from m6rec.serving.engine import Engine
from m6rec.serving.schemas import ChatRequest
from m6rec.text.titles import TitleIndex
from tests.bundle_fixtures import build_tiny_bundle

TITLES = [
    "Star Wars (1977)",
    "Empire Strikes Back, The (1980)",
    "Heat (1995)",
    "Alien (1979)",
    "Aliens (1986)",
    "Up (2009)",
]
YEARS = [1977, 1980, 1995, 1979, 1986, 2009]


def test_the_dialogue_names_likes_dislikes_offers_and_a_constraint() -> None:
    index = TitleIndex.build(TITLES, YEARS)
    turns = [
        Turn("user", "I loved Star Wars and Empire Strikes Back, but not Heat. Cheer me up!"),
        Turn("system", "How about Alien (1979) or Aliens (1986)?"),
        Turn("user", "Not that one, something older please"),
    ]
    said = understand(turns, index)
    assert said.liked == [0, 1] and said.disliked == [2]  # "up" is too short to be taken for a title
    assert said.offered == [3, 4] and said.last_offered == [3, 4] and said.constraint == "older"
    assert said.text.startswith("USER: Not that one") and "SYSTEM: How about Alien" in said.text


def test_no_constraint_without_an_offer_and_the_longest_title_wins() -> None:
    index = TitleIndex.build(["Alien", "Alien Resurrection"], [1979, 1997])
    said = understand([Turn("user", "Something newer than Alien Resurrection")], index)
    assert said.liked == [1] and said.constraint is None


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    bundle: Path = build_tiny_bundle(tmp_path_factory.mktemp("bundle") / "model")
    return Engine(bundle, device="cpu", model_tag="m6rec:test")


def chat(engine: Engine, *turns: tuple[str, str], **kw):
    body = {"turns": [{"role": r, "text": t} for r, t in turns], **kw}
    return engine.chat(ChatRequest.model_validate(body))


def test_chat_recommends_from_named_titles_and_follows_up(engine: Engine) -> None:
    first = chat(engine, ("user", "I really liked Movie number 12 and Movie number 3."), k=3)
    assert first.understood.liked == ["i12", "i3"]
    ids = [i.item_id for i in first.items]
    assert len(ids) == 3 and not {"i12", "i3"} & set(ids)
    assert first.reply.startswith("Since you liked Movie number 12") and first.items[0].title in first.reply

    offered = "How about Movie number 25 (2005) or Movie number 30 (1980)?"
    second = chat(
        engine,
        ("user", "I really liked Movie number 12 and Movie number 3."),
        ("system", offered),
        ("user", "Not that one. Something older?"),
        k=3,
    )
    assert second.understood.constraint == "older"
    assert second.understood.already_offered == ["i25", "i30"]
    ids = [i.item_id for i in second.items]
    assert len(ids) == 3 and not {"i25", "i30", "i12", "i3"} & set(ids)
    assert all(engine._years[engine.rec.index[i]] < 2005 for i in ids), ids
    assert second.reply.startswith("Something older than Movie number 25 (2005): how about")


def test_chat_from_text_alone_and_bad_requests(engine: Engine) -> None:
    plain = chat(engine, ("user", "something with action"), k=5)
    assert len(plain.items) == 5 and plain.understood.liked == []
    with pytest.raises(ValidationError, match="unknown_item|unknown item"):
        chat(engine, ("user", "hi"), history=[{"item_id": "nope"}])
    with pytest.raises(ValidationError, match="k_too_large|larger than"):
        chat(engine, ("user", "hi"), k=500)
    with pytest.raises(ValidationError):
        ChatRequest.model_validate({"turns": [{"role": "assistant", "text": "hi"}]})
    with pytest.raises(ValidationError):
        ChatRequest.model_validate({"turns": []})
