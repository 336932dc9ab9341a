"""The explainer's tuning and check (m6rec.models.explainer_tuning) on tiny random causal LMs and the
synthetic marts: which events become cases, that the loss covers the continuation only, that tuning
lowers it and leaves a plain (merged) model, and that every target it is tuned on passes the check."""

from __future__ import annotations

import pytest
import torch
from transformers import PreTrainedModel

from m6rec.evaluation.explanations import check_explanation
from m6rec.models import backbones as bb
from m6rec.models.explainer_tuning import (
    ExplainerTuningConfig,
    _decoder_stack,
    _lower_states,
    _pad_rows,
    _pad_states,
    _token_rows,
    _upper_layers_only,
    check_explainer,
    continuation_loss,
    explanation_cases,
    tune_explainer,
)
from m6rec.models.generation import explanation_prompt
from m6rec.text.explanations import history_explanation, rated_reason
from m6rec.text.textify import Event, ItemText
from m6rec.text.titles import TitleIndex
from tests.synthetic import synthetic_rec_data


@pytest.fixture
def lm(causal_tokenizer) -> bb.CausalLM:
    return bb.tiny_causal_lm(seed=0, tokenizer=causal_tokenizer, num_layers=3)


def test_cases_are_train_events_for_tuning_and_valid_events_for_the_check() -> None:
    data = synthetic_rec_data(n_users=24, length=12)  # 10 train events, 1 valid, 1 test per user
    texts = data.item_texts()
    train = explanation_cases(data, "train", 5, seed=3, max_events=4)
    assert len(train) == 5 and train == explanation_cases(data, "train", 5, seed=3, max_events=4)
    for case in train:
        user = data.events[data.events["user_id"] == case.user_id].sort_values("position")
        last_train = user[user["split"] == "train"].iloc[-1]
        assert case.candidate == texts[int(last_train["item_idx"])] and case.now_ts == int(last_train["ts"])
        before = user[user["position"] < last_train["position"]].tail(4)
        assert [e.item for e in case.history] == [texts[i] for i in before["item_idx"]]
    valid = explanation_cases(data, "valid", 100, seed=3)
    assert len(valid) == 24  # every user, at most n
    for case in valid:
        user = data.events[data.events["user_id"] == case.user_id].sort_values("position")
        target = user[user["split"] == "valid"].iloc[0]
        assert case.candidate == texts[int(target["item_idx"])]
        assert len(case.history) == 10  # the whole train history, never the test event
    with pytest.raises(ValueError, match="'train' or 'valid'"):
        explanation_cases(data, "test", 5)


def test_every_tuning_target_passes_the_check() -> None:
    """The model is taught only statements the rules accept, and each cites evidence."""
    data = synthetic_rec_data(n_users=24, length=12)
    catalogue = data.item_texts()
    index = TitleIndex.build([t.title for t in catalogue], [t.release_year for t in catalogue])
    is_like = data.contract.is_like
    cited = 0
    for case in explanation_cases(data, "train", 24, max_events=10):
        for reason in (
            rated_reason(case.candidate, case.history, case.profile, is_like),
            history_explanation(case.candidate, case.history, case.profile, is_like),
        ):
            check = check_explanation(
                f"He will like it because {reason}",
                case.candidate,
                case.history,
                catalogue=catalogue,
                index=index,
                is_like=is_like,
            )
            assert not check.is_false, (reason, check.false_claims)
            assert check.cites_evidence, reason
            cited += " rated " in reason
    assert cited > 0  # some targets cite a rated item of a shared genre


def test_the_target_cites_the_newest_liked_item_of_a_shared_genre_with_its_rating() -> None:
    heat, ronin = ItemText("Heat", 1995, ("Action", "Crime")), ItemText("Ronin", 1998, ("Action", "Thriller"))
    fargo, cand = (
        ItemText("Fargo", 1996, ("Crime", "Drama")),
        ItemText("Face/Off", 1997, ("Action", "Sci-Fi")),
    )
    history = [Event(heat, 1, 5.0), Event(ronin, 2, 2.0), Event(fargo, 3, 4.0)]
    like = lambda r: r > 3  # noqa: E731
    assert (
        rated_reason(cand, history, None, like)
        == "they rated Heat (1995) 5 stars, and it shares its genre (Action)."
    )
    assert rated_reason(cand, [Event(ronin, 2, None)], None, like) == (
        "they watched Ronin (1998), and it shares its genre (Action)."
    )
    assert rated_reason(cand, [Event(ronin, 2, 2.0)], None, like).startswith("it fits the pattern")


def test_loss_is_the_cross_entropy_of_the_continuation_only(lm) -> None:
    prompts = ["Hello there, because", "A longer prompt than the other one, because"]
    targets = [" he liked it.", " of the genre"]
    ids, mask, is_target, longest = _pad_rows(lm, _token_rows(lm, prompts, targets, max_length=64))
    assert ids.shape[0] == 2 and bool((is_target <= mask.bool()).all())
    loss = continuation_loss(lm.model, ids, mask, is_target, longest).detach()
    # by hand: each row alone, unpadded, with HF's own shifted loss over the target tokens (+ eos)
    total, count = 0.0, 0
    for prompt, target in zip(prompts, targets, strict=True):
        p = lm.tokenizer.encode(prompt, add_special_tokens=False)
        t = lm.tokenizer.encode(target, add_special_tokens=False) + [lm.tokenizer.eos_token_id]
        labels = torch.tensor([[-100] * len(p) + t])
        with torch.no_grad():
            out = lm.model(input_ids=torch.tensor([p + t]), labels=labels)
        total += float(out.loss) * len(t)
        count += len(t)
    assert float(loss) == pytest.approx(total / count, rel=1e-4)
    short = _pad_rows(lm, _token_rows(lm, prompts, targets, max_length=8))[0]
    assert short.shape[1] <= 8  # prompts lose their oldest tokens, targets are kept


def test_the_upper_layers_over_cached_lower_states_give_the_same_loss(lm) -> None:
    """The lower layers' states, computed once per example without padding, then left-padded into a
    batch and run through the upper layers only: the loss (and so the gradients) of the whole model."""
    prompts = ["Hello there, because", "A longer prompt than the other one, because", "Short, because"]
    targets = [" he liked it.", " of the genre", " yes"]
    rows = _token_rows(lm, prompts, targets, max_length=64)
    ids, mask, is_target, longest = _pad_rows(lm, rows)
    whole = continuation_loss(lm.model, ids, mask, is_target, longest).detach()
    stack = _decoder_stack(lm.model)
    layers, norm = stack.layers, stack.norm
    for split in (1, 2):
        states = _lower_states(lm, stack, rows, split)
        assert [len(x) for x in states] == [len(p) + len(t) for p, t in rows]
        with _upper_layers_only(stack, split):
            cached = continuation_loss(lm.model, ids, mask, is_target, longest, states=_pad_states(states))
            assert len(stack.layers) == 3 - split
        assert float(cached.detach()) == pytest.approx(float(whole), rel=1e-4)
    assert stack.layers is layers and stack.norm is norm and len(layers) == 3  # restored after use
    with _upper_layers_only(stack, 1):
        wrong = continuation_loss(lm.model, ids, mask, is_target, longest, states=_pad_states(states))
    assert abs(float(wrong.detach()) - float(whole)) > 1e-3  # states of the wrong split: a different loss


def test_tuning_learns_the_targets_on_the_top_layers_and_merges(lm) -> None:
    data = synthetic_rec_data(n_users=8, length=8)
    cases = explanation_cases(data, "train", 8, max_events=3)
    is_like = data.contract.is_like
    prompts = [
        explanation_prompt(lm, c.profile, c.history, c.candidate, c.now_ts, max_events=3)[0] for c in cases
    ]
    targets = [" " + rated_reason(c.candidate, c.history, c.profile, is_like) for c in cases]
    batch = _pad_rows(lm, _token_rows(lm, prompts, targets, max_length=512))
    with torch.no_grad():
        before = float(continuation_loss(lm.model, *batch))
    config = ExplainerTuningConfig(examples=8, epochs=6, batch_size=4, lr=1e-2, top_layers=1, max_events=3)
    result = tune_explainer(lm, cases, is_like, config)
    assert result.train.steps == 12 and result.examples == 8
    assert 0 < result.report.trainable_parameters < result.report.total_parameters
    assert isinstance(lm.model, PreTrainedModel) and lm.model is result.model  # merged: no peft left
    assert not any("lora" in name for name, _ in lm.model.named_parameters())
    with torch.no_grad():
        after = float(continuation_loss(lm.model, *batch))
    assert after < before - 0.2  # a 32-wide random LM tied to a 49k vocabulary learns slowly
    with pytest.raises(ValueError, match="no explanation cases"):
        tune_explainer(lm, [], is_like, config)


def test_top_layers_bound_what_lora_touches(lm) -> None:
    data = synthetic_rec_data(n_users=4, length=8)
    cases = explanation_cases(data, "train", 4, max_events=3)
    one = tune_explainer(
        bb.tiny_causal_lm(seed=0, tokenizer=lm.tokenizer, num_layers=3),
        cases,
        data.contract.is_like,
        ExplainerTuningConfig(epochs=1, top_layers=1, max_events=3),
    )
    every = tune_explainer(
        lm, cases, data.contract.is_like, ExplainerTuningConfig(epochs=1, top_layers=0, max_events=3)
    )
    assert every.report.trainable_parameters == 3 * one.report.trainable_parameters


def test_check_runs_the_rules_on_what_the_model_writes(lm) -> None:
    data = synthetic_rec_data(n_users=6, length=8)
    catalogue = data.item_texts()
    cases = explanation_cases(data, "valid", 4, max_events=3)
    result = check_explainer(lm, cases, catalogue, data.contract.is_like, max_events=3, max_new_tokens=6)
    assert result.summary["n"] == 4 and len(result.explanations) == 4
    index = TitleIndex.build([t.title for t in catalogue], [t.release_year for t in catalogue])
    for text, case, check in zip(result.explanations, cases, result.checks, strict=True):
        assert text.split(" because", 1)[0].endswith(")")  # "He will like <item text> because ..."
        again = check_explanation(
            text,
            case.candidate,
            case.history,
            catalogue=catalogue,
            index=index,
            is_like=data.contract.is_like,
        )
        assert again == check
    record = result.to_dict(examples=2)
    assert record["n"] == 4 and len(record["examples"]) == 2
    assert record["false_statement_rate"] == result.summary["false_statement_rate"]
