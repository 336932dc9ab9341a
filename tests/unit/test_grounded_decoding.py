"""Decoding grounded in the history's facts (m6rec.models.grounded_decoding): a scripted "model" that
always wants to write a given (partly false) sentence shows what the slots let through."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from m6rec.models import backbones as bb
from m6rec.models.grounded_decoding import citable_facts, grounded_continuations
from m6rec.text.textify import Event, ItemText

ALIEN = ItemText("Alien", 1979, ("Horror", "Sci-Fi"))
FARGO = ItemText("Fargo", 1996, ("Crime", "Drama"))
HEAT = ItemText("Heat", 1995, ("Action", "Crime", "Thriller"))
STAR_WARS = ItemText("Star Wars", 1977, ("Action", "Sci-Fi"))
CANDIDATE = ItemText("Aliens", 1986, ("Action", "Sci-Fi", "Thriller"))
LIKE = lambda rating: rating > 3  # noqa: E731


class ScriptedLM(nn.Module):
    """Wants to write ``script`` token by token (then end-of-sequence), whatever it is fed: the
    scripted token gets the top logit, every other token the same lower one."""

    def __init__(self, tokenizer, prompt_tokens: int, script: str) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(max_position_embeddings=512)
        self.vocab = len(tokenizer)
        self.prompt_tokens = prompt_tokens
        self.script = tokenizer.encode(script, add_special_tokens=False)
        self.eos = tokenizer.eos_token_id

    def forward(self, input_ids, cache=None, use_cache=True, **_):
        seen = (cache or 0) + input_ids.shape[1]
        step = seen - self.prompt_tokens
        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits[:, -1, self.script[step] if step < len(self.script) else self.eos] = 10.0
        return SimpleNamespace(logits=logits, cache=seen)


@pytest.fixture
def tokenizer(causal_tokenizer):
    return causal_tokenizer


PROMPT = "A user. Will they like Aliens (1986)? Yes. They will like it because"


def _scripted(tokenizer, script: str) -> bb.CausalLM:
    return bb.CausalLM(
        model=ScriptedLM(tokenizer, len(tokenizer.encode(PROMPT, add_special_tokens=False)), script),
        tokenizer=tokenizer,
        name="scripted",
        hidden_size=1,
        num_layers=1,
        max_length=512,
    )


def _continue(tokenizer, script: str, history: list[Event], max_new_tokens: int = 40) -> str:
    facts = citable_facts(CANDIDATE, history, LIKE)
    return grounded_continuations(
        _scripted(tokenizer, script), [PROMPT], [facts], max_new_tokens=max_new_tokens
    )[0]


def test_the_rating_and_the_shared_genres_come_from_the_history(tokenizer) -> None:
    history = [Event(FARGO, 1, 5.0), Event(ALIEN, 2, 5.0)]
    out = _continue(tokenizer, " he rated Alien (1979) 4 stars, and it shares its genre (Horror", history)
    assert out == " he rated Alien (1979) 5 stars, and it shares its genre (Sci-Fi)."


def test_a_title_outside_the_evidence_cannot_be_cited(tokenizer) -> None:
    history = [Event(FARGO, 1, 5.0), Event(STAR_WARS, 2, 4.0), Event(ALIEN, 3, 1.0)]
    out = _continue(tokenizer, " he liked Heat (1995), a great film.", history)
    # Heat was never watched, Alien was disliked, Fargo shares no genre: Star Wars is the only citable item
    assert out.startswith(" he liked Star Wars (1977)") and "Heat" not in out


def test_without_evidence_or_slots_the_model_writes_freely(tokenizer) -> None:
    script = " it is a classic of its kind."
    assert _continue(tokenizer, script, []) == script
    assert _continue(tokenizer, script, [Event(ALIEN, 1, 5.0)]) == script  # no citing verb, no genre list


def test_forced_tokens_count_toward_the_budget(tokenizer) -> None:
    title = len(tokenizer.encode(" he rated Alien (1979)", add_special_tokens=False))
    out = _continue(
        tokenizer, " he rated Alien (1979) 4 stars", [Event(ALIEN, 2, 5.0)], max_new_tokens=title + 2
    )
    assert len(tokenizer.encode(out, add_special_tokens=False)) <= title + 2
    assert out.startswith(" he rated Alien (1979) 5")  # the forced rating, cut by the budget
    assert _continue(tokenizer, " he rated Alien (1979)", [Event(ALIEN, 2, 5.0)], max_new_tokens=4) == ""


def test_citable_facts_are_the_evidence_else_the_recent_likes() -> None:
    history = [Event(FARGO, 1, 5.0), Event(STAR_WARS, 2, None), Event(HEAT, 3, 4.0)]
    facts = citable_facts(CANDIDATE, history, LIKE)
    assert [e.item for e in facts.items] == [HEAT, STAR_WARS]  # liked first, then unrated; newest first
    assert facts.shared_genres(facts.items[0]) == ["Action", "Thriller"]
    assert [e.item for e in citable_facts(CANDIDATE, [Event(FARGO, 1, 5.0)], LIKE).items] == [FARGO]


def test_no_shared_genre_drops_the_clause_that_claims_one(tokenizer) -> None:
    history = [Event(FARGO, 1, 5.0)]  # liked, but Crime/Drama: nothing in common with the candidate
    out = _continue(tokenizer, " he rated Fargo (1996) 5 stars, and it shares its genre (Crime", history)
    assert out == " he rated Fargo (1996) 5 stars."
    disliked_only = citable_facts(CANDIDATE, [Event(ALIEN, 1, 1.0), Event(ALIEN, 2, 1.0)], LIKE)
    assert [e.item for e in disliked_only.items] == [ALIEN]  # every history item, once, rating as it is


def test_a_listed_title_is_a_slot_too_and_the_list_ends_when_nothing_is_left(tokenizer) -> None:
    history = [Event(FARGO, 1, 2.0), Event(STAR_WARS, 2, 5.0), Event(HEAT, 3, 4.0)]
    script = " it fits his history (most recently he liked Heat (1995) and Fargo (1996)) and more."
    out = _continue(tokenizer, script, history)
    # Fargo shares no genre and was disliked: the second title of the list is Star Wars, as the data says
    assert out.startswith(" it fits his history (most recently he liked Heat (1995) and Star Wars (1977))")
    out = _continue(tokenizer, script, history[2:])  # one citable item: the list closes after it
    assert out == " it fits his history (most recently he liked Heat (1995))."


def test_a_verb_of_liking_never_cites_a_disliked_item(tokenizer) -> None:
    disliked = [Event(ALIEN, 1, 1.0), Event(HEAT, 2, 2.0)]  # no evidence: every item is citable ...
    script = " it fits his history (most recently he liked Alien (1979))."
    assert _continue(tokenizer, script, disliked) == " it fits his history."  # ... but not as liked
    assert _continue(tokenizer, " he watched Alien (1979) twice.", disliked).startswith(" he watched")


def test_lists_stop_at_two_titles_and_a_title_cut_by_the_budget_is_dropped(tokenizer) -> None:
    history = [Event(HEAT, 1, 5.0), Event(STAR_WARS, 2, 5.0), Event(ALIEN, 3, 5.0)]
    script = (
        " it fits his history (most recently he liked Alien (1979) and Star Wars (1977) and Heat (1995))."
    )
    assert _continue(tokenizer, script, history) == (
        " it fits his history (most recently he liked Alien (1979) and Star Wars (1977))."
    )
    budget = len(
        tokenizer.encode(" it fits his history (most recently he liked Alien", add_special_tokens=False)
    )
    assert _continue(tokenizer, script, history, max_new_tokens=budget) == " it fits his history."


def test_rows_decoded_together_fill_their_own_slots(tokenizer) -> None:
    histories = [
        [Event(FARGO, 1, 5.0), Event(ALIEN, 2, 5.0)],  # Alien shares Sci-Fi
        [Event(FARGO, 1, 5.0)],  # nothing shared
        [Event(ALIEN, 1, 1.0), Event(HEAT, 2, 2.0)],  # only disliked items
        [Event(STAR_WARS, 1, 4.0), Event(HEAT, 2, 5.0)],
    ]
    script = " he rated Alien (1979) 4 stars, and it shares its genre (Horror"
    facts = [citable_facts(CANDIDATE, h, LIKE) for h in histories]
    together = grounded_continuations(_scripted(tokenizer, script), [PROMPT] * 4, facts, max_new_tokens=40)
    alone = [_continue(tokenizer, script, h) for h in histories]
    assert together == alone
    assert together[0] == " he rated Alien (1979) 5 stars, and it shares its genre (Sci-Fi)."
    assert len(set(together)) == 4
    with pytest.raises(ValueError, match="2 prompts but 1 fact sets"):
        grounded_continuations(_scripted(tokenizer, script), [PROMPT] * 2, facts[:1])


def test_a_padded_batch_decodes_as_each_prompt_alone(tokenizer) -> None:
    """Prompts of different lengths share a left-padded batch and one key/value cache: a real (tiny,
    random) Llama writes the same greedy continuations as it does for each prompt on its own."""
    lm = bb.tiny_causal_lm(seed=3, tokenizer=tokenizer)
    prompts = [PROMPT, "He rated Heat (1995) 5 stars. " + PROMPT, "Fargo (1996). " * 6 + PROMPT]
    histories = [[Event(HEAT, 1, 5.0)], [Event(STAR_WARS, 1, 4.0), Event(ALIEN, 2, 5.0)], []]
    facts = [citable_facts(CANDIDATE, h, LIKE) for h in histories]
    alone = [
        grounded_continuations(lm, [p], [f], max_new_tokens=12)[0]
        for p, f in zip(prompts, facts, strict=True)
    ]
    assert all(alone)
    assert grounded_continuations(lm, prompts, facts, max_new_tokens=12) == alone
    assert grounded_continuations(lm, prompts, facts, max_new_tokens=12, batch_size=2) == alone
