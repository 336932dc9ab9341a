"""The encoder's own top layers tuned over cached lower-layer segment states: the cache, the tuning
modes, the retriever and the CTR scorer (tiny random encoder, synthetic data)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from m6rec.models.backbones import tiny_encoder
from m6rec.models.lm_layers import LowerLayerCache, TopLayers, build_lower_cache
from m6rec.models.lm_ranking import LMRankerConfig, new_lm_ranker, train_lm_ranker
from m6rec.models.lm_retrieval import LMRetrieverConfig, new_lm_retriever, train_lm_retriever
from m6rec.models.ranking import ctr_tensors
from m6rec.models.retrieval import collate, evaluate_retrieval, training_windows
from m6rec.models.segments import build_segment_cache
from m6rec.text.textify import TextStyle
from m6rec.training.trainer import TrainConfig
from tests.synthetic import ctr_frame, synthetic_rec_data

SPLIT = 2  # the tiny encoder has 4 layers: 2 cached, 2 tuned


@pytest.fixture(scope="module")
def setup():
    encoder = tiny_encoder(seed=0)
    data = synthetic_rec_data()
    return encoder, data, build_lower_cache(encoder, data, TextStyle(with_popularity=True), SPLIT)


def test_encode_layers_matches_the_sentence_embedding() -> None:
    encoder = tiny_encoder(seed=0)
    texts = ["Toy Story (1995; Animation)", "A 24-year-old male technician."]
    low, top = encoder.encode_layers(texts, (1, encoder.num_layers))
    assert low.shape == top.shape == (2, encoder.hidden_size)
    torch.testing.assert_close(torch.nn.functional.normalize(top, dim=-1), encoder.encode(texts))
    with pytest.raises(ValueError, match="layer must be in"):
        encoder.encode_layers(texts, (encoder.num_layers + 1,))


def test_cache_round_trip_and_bounds(setup, tmp_path) -> None:
    encoder, data, cache = setup
    assert cache.split == SPLIT and cache.item_states.shape == (40, 32)
    assert cache.profile_states.shape == (24, 32)
    torch.testing.assert_close(cache.item_sentences.norm(dim=-1), torch.ones(40))
    frozen = build_segment_cache(encoder, data, TextStyle(with_popularity=True))  # one pass serves both
    torch.testing.assert_close(cache.sentences().item_states, frozen.item_states)
    torch.testing.assert_close(cache.sentences().profile_states, frozen.profile_states)
    cache.save(tmp_path / "lm.pt")
    again = LowerLayerCache.load(tmp_path / "lm.pt")
    torch.testing.assert_close(again.item_states, cache.item_states)
    assert again.split == SPLIT
    with pytest.raises(ValueError, match="split must be in"):
        build_lower_cache(encoder, data, TextStyle(), encoder.num_layers)


def test_top_layers_start_as_the_pretrained_layers(setup) -> None:
    encoder, _, _ = setup
    top = TopLayers(encoder.model, SPLIT, "full")
    x = torch.randn(3, 5, 32)
    expected = x
    for layer in encoder.model.encoder.layer[SPLIT:]:
        out = layer(expected, attention_mask=None)
        expected = out[0] if isinstance(out, tuple) else out
    torch.testing.assert_close(top(x, None), expected)
    assert top.pretrained_parameters() == sum(
        p.numel() for p in encoder.model.encoder.layer[SPLIT:].parameters()
    )
    # the encoder's own weights are copied, not shared
    encoder_ptrs = {p.data_ptr() for p in encoder.model.parameters()}
    assert not any(p.data_ptr() in encoder_ptrs for p in top.parameters())


def test_lora_trains_adapters_only_and_starts_as_the_base(setup) -> None:
    encoder, _, _ = setup
    lora, full = TopLayers(encoder.model, SPLIT, "lora", lora_rank=4), TopLayers(encoder.model, SPLIT, "full")
    frozen = TopLayers(encoder.model, SPLIT, "frozen")
    x = torch.randn(2, 4, 32)
    torch.testing.assert_close(lora(x, None), full(x, None))  # LoRA's B starts at zero
    names = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert 0 < lora.pretrained_parameters() < full.pretrained_parameters() / 2
    assert frozen.pretrained_parameters() == 0
    with pytest.raises(ValueError, match="unknown tuning"):
        TopLayers(encoder.model, SPLIT, "prefix")


def test_retriever_is_causal_and_text_only_by_default(setup) -> None:
    encoder, data, cache = setup
    torch.manual_seed(0)
    model = new_lm_retriever(LMRetrieverConfig(dim=16, item_hidden=32, max_len=6), data, cache, encoder.model)
    model.eval()
    assert model.id_emb is None and model.pop_emb is None
    batch = collate(training_windows(data, 6)[:4])
    raw = model.item_vectors(normalize=False)
    states = model.user_states(batch, raw)
    changed = {k: v.clone() for k, v in batch.items()}
    changed["items"][:, -1] = (changed["items"][:, -1] + 1) % data.n_items
    after = model.user_states(changed, raw)
    torch.testing.assert_close(after[:, :-1], states[:, :-1])  # no position sees a later event
    assert not torch.allclose(after[:, -1], states[:, -1])
    scores = model.score(batch)
    assert scores.shape == (4, data.n_items) and float(scores.abs().max()) <= 1 + 1e-5


@pytest.mark.parametrize("tuning", ["full", "lora"])
def test_user_vector_path_equals_the_full_tower_at_the_last_event(setup, tuning) -> None:
    encoder, data, cache = setup
    torch.manual_seed(0)
    config = LMRetrieverConfig(dim=16, item_hidden=32, max_len=6, tuning=tuning, lora_rank=4)
    model = new_lm_retriever(config, data, cache, encoder.model)
    with torch.no_grad():  # LoRA's B starts at zero: move it so the adapters matter in this check
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1)
    model.eval()
    assert len(model.top.layers) == 2  # one layer over every position, the last for one position
    windows = training_windows(data, 6)
    batch = collate(windows[:8])
    assert len(set(batch["lengths"].tolist())) > 1  # padded rows: each row's own last position
    raw = model.item_vectors(normalize=False)
    with torch.no_grad():
        full = model.user_states(batch, raw)[torch.arange(8), batch["lengths"]]
        fast = model.user_vectors(batch, raw)
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-4)


def test_sampled_softmax_is_the_full_softmax_when_the_sample_covers_the_catalogue(setup) -> None:
    encoder, data, cache = setup
    config = LMRetrieverConfig(dim=16, item_hidden=32, max_len=6, use_ids=True)
    torch.manual_seed(0)
    full = new_lm_retriever(config, data, cache, encoder.model).eval()
    sampled = new_lm_retriever(
        replace(config, full_softmax_max_items=0, sampled_negatives=50 * data.n_items),
        data,
        cache,
        encoder.model,
    ).eval()
    sampled.load_state_dict(full.state_dict())
    batch = collate(training_windows(data, 6)[:4])
    torch.testing.assert_close(sampled.loss(batch), full.loss(batch))
    # a strict subset: the batch's items and 3 drawn ones, scored as the full model scores them
    few = new_lm_retriever(
        replace(config, full_softmax_max_items=0, sampled_negatives=3), data, cache, encoder.model
    ).eval()
    few.load_state_dict(full.state_dict())
    torch.manual_seed(1)
    loss = few.loss(batch)
    torch.manual_seed(1)
    targets = batch["items"][batch["items"] >= 0]
    classes = torch.unique(torch.cat([targets, torch.randint(data.n_items, (3,))]))
    assert len(classes) < data.n_items
    raw = full.item_vectors(normalize=False)
    states = full.user_states(batch, raw)[:, :-1][batch["items"] >= 0]
    logits = states @ torch.nn.functional.normalize(raw[classes], dim=-1).T / config.temperature
    torch.testing.assert_close(
        loss, torch.nn.functional.cross_entropy(logits, torch.searchsorted(classes, targets))
    )
    few.train()
    few.loss(batch).backward()  # every tower gets gradients through the sampled classes
    assert few.item_head[0].weight.grad.abs().sum() > 0 and few.history_proj.weight.grad.abs().sum() > 0


def test_retriever_learns_and_counts_its_tuned_lm_weights(setup, tmp_path) -> None:
    encoder, data, cache = setup
    config = LMRetrieverConfig(dim=16, item_hidden=32, max_len=8, lm_lr=1e-3)
    before = evaluate_retrieval(new_lm_retriever(config, data, cache, encoder.model), data, "valid")
    train = TrainConfig(
        str(tmp_path / "r"), max_steps=60, lr=1e-2, eval_every=20, patience=10, progress=False
    )
    model, result = train_lm_retriever(data, cache, encoder.model, config, train, batch_size=8)
    assert result.best_metric > before["ndcg@10"]
    counts = model.parameter_counts()
    assert counts["lm_trainable_parameters"] == counts["lm_parameters"] > 0
    # the IDs add-on warm-starts from the text-only weights
    ids, _ = train_lm_retriever(
        data,
        cache,
        encoder.model,
        LMRetrieverConfig(dim=16, item_hidden=32, max_len=8, use_ids=True, lm_lr=0.0),
        TrainConfig(str(tmp_path / "i"), max_steps=1, lr=0.0, eval_every=1, progress=False),
        batch_size=8,
        init=model,
    )
    torch.testing.assert_close(ids.top.state_dict(), model.top.state_dict())
    assert ids.id_emb is not None


def test_ranker_candidate_path_equals_full_forward(setup) -> None:
    encoder, data, cache = setup
    torch.manual_seed(0)
    model = new_lm_ranker(LMRankerConfig(history=5, lora_rank=4, tuning="lora"), data, cache, encoder.model)
    with torch.no_grad():  # LoRA's B starts at zero: move it so the adapters matter in this check
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1)
    model.eval()
    one = ctr_tensors(ctr_frame(data).iloc[[7]], data)
    n = 6
    batch = {k: v.expand(n, *v.shape[1:]).clone() for k, v in one.items()}
    batch["cand_items"] = torch.arange(n)
    batch.pop("cand_mean")
    with torch.no_grad():
        full = model(batch)
        late = model.rank_candidates(batch)
        model.cache_item_vectors()  # serving: item inputs and first-layer candidate projections kept
        served = model.rank_candidates(batch)
        width, *tables = model._candidate_projections
        model._candidate_projections = (width, *(torch.zeros_like(t) for t in tables))
        unkept = model.rank_candidates(batch)  # proves the kept projections are what served read
    torch.testing.assert_close(late, full, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(served, full, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(unkept, full, atol=1e-5, rtol=1e-4)
    # the context never reads the candidate: only the candidate position changes with it
    assert len(set(np.round(full.numpy(), 5))) > 1


def test_ranker_learns(setup, tmp_path) -> None:
    encoder, data, cache = setup
    examples = ctr_frame(data)
    config = LMRankerConfig(history=5, lm_lr=1e-3)
    train = TrainConfig(
        str(tmp_path / "k"), max_steps=40, lr=1e-2, eval_every=20, metric="auc", patience=10, progress=False
    )
    model, result = train_lm_ranker(data, cache, encoder.model, examples, config, train, batch_size=32)
    assert result.best_metric > 0.6  # labels follow item % 5, visible in each item's text and stats
    assert model.parameter_counts()["lm_trainable_parameters"] > 0


def test_cache_tables_are_shared_not_saved_and_old_model_files_still_load(setup, tmp_path) -> None:
    encoder, data, cache = setup
    model = new_lm_retriever(LMRetrieverConfig(use_ids=True), data, cache, encoder.model)
    assert model.item_states.data_ptr() == cache.item_states.data_ptr()  # the cache's memory, no copy
    state = model.state_dict()
    assert not {"item_states", "item_sentences", "profile_states"} & set(state)
    assert {"id_emb.weight", "pop_buckets", "has_id"} <= set(state)
    legacy = {**state, "item_states": cache.item_states.clone(), "profile_states": cache.profile_states}
    again = new_lm_retriever(LMRetrieverConfig(use_ids=True), data, cache, encoder.model)
    again.load_state_dict(legacy)  # a model file written while the tables were saved with the weights
    torch.testing.assert_close(again.state_dict(), state)
    cache.save(tmp_path / "lm.pt")
    mapped = LowerLayerCache.load(tmp_path / "lm.pt", mmap=True)
    torch.testing.assert_close(mapped.item_states, cache.item_states)


def test_item_vectors_in_blocks_equal_one_pass(setup, monkeypatch) -> None:
    encoder, data, cache = setup
    model = new_lm_retriever(LMRetrieverConfig(use_ids=True), data, cache, encoder.model).eval()
    with torch.no_grad():
        whole = model.item_vectors(normalize=False)
        monkeypatch.setattr("m6rec.models.lm_retrieval.ITEM_BLOCK", 7)  # 40 items: 6 blocks
        torch.testing.assert_close(model.item_vectors(normalize=False), whole)
