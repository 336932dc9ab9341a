"""Parameter-efficient tuning (m6rec.models.tuning) on tiny random backbones: parameter counts, what requires
grad, zero-initialised adapters, soft options, LoRA through peft."""

from __future__ import annotations

import copy

import pytest
import torch

from m6rec.models import backbones as bb
from m6rec.models.tuning import (
    AdaptedFFN,
    OptionTuningModel,
    apply_tuning,
    count_parameters,
    default_lora_targets,
    trainable_state_dict,
)

H, LAYERS = 32, 2


@pytest.fixture
def lm(causal_tokenizer) -> bb.CausalLM:
    return bb.tiny_causal_lm(seed=0, tokenizer=causal_tokenizer, hidden_size=H, num_layers=LAYERS)


def _batch(lm: bb.CausalLM, texts=("A user. Will he like Heat?", "Hi")):
    enc = lm.tokenizer(list(texts), padding=True, return_tensors="pt", add_special_tokens=False)
    return enc["input_ids"], enc["attention_mask"]


def _adapter_params(rank: int, dim: int = H) -> int:
    return dim * rank + rank + rank * dim + dim  # down (W, b) + up (W, b)


# --------------------------------------------------------------------------------------------------
# option tuning


def test_option_tuning_counts_and_only_prompt_and_adapters_train(lm):
    base_total = sum(p.numel() for p in lm.model.parameters())
    model, report = apply_tuning(lm, "option", num_prompt_tokens=6, num_options=2, adapter_rank=4)
    assert isinstance(model, OptionTuningModel)
    expected = 6 * H + LAYERS * _adapter_params(4)
    assert report.trainable_parameters == expected
    assert report.total_parameters == base_total + expected
    assert report.trainable_percent == pytest.approx(100 * expected / (base_total + expected))
    assert count_parameters(model) == (expected, base_total + expected)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert "prompt" in trainable
    assert all(name == "prompt" or ".adapter." in name for name in trainable), trainable
    assert sum(".adapter.down.weight" in n for n in trainable) == LAYERS  # one adapter per FFN block
    assert not any(p.requires_grad for p in model.backbone.get_input_embeddings().parameters())
    assert set(trainable_state_dict(model)) == set(trainable)
    # the layers' MLPs are wrapped, attention is not
    assert all(isinstance(layer.mlp, AdaptedFFN) for layer in model.backbone.model.layers)


def test_option_tuning_default_size_is_about_one_percent_of_a_smollm2_shaped_model():
    """Counts on the SmolLM2-135M shape without its weights (the meta device allocates nothing)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        tie_word_embeddings=True,
    )
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    _, report = apply_tuning(model, "option")
    assert report.trainable_parameters == 20 * 576 + 30 * _adapter_params(32, 576) == 1_135_680
    assert 0.7 < report.trainable_percent < 1.2


@pytest.mark.parametrize("mode", ["parallel", "sequential"])
def test_zero_initialised_adapters_leave_the_base_model_unchanged(lm, mode):
    base = copy.deepcopy(lm.model)
    ids, mask = _batch(lm)
    model, _ = apply_tuning(lm, "option", num_prompt_tokens=4, adapter_rank=8, adapter_mode=mode)
    with torch.no_grad():
        before = base(input_ids=ids, attention_mask=mask).logits
        after = model.backbone(input_ids=ids, attention_mask=mask).logits
        assert torch.allclose(before, after, atol=1e-6)
        # ... and the test can fail: a non-zero up-projection changes the outputs
        for adapter in model.adapters:
            torch.nn.init.normal_(adapter.up.weight, std=0.5)
        changed = model.backbone(input_ids=ids, attention_mask=mask).logits
    assert not torch.allclose(before, changed, atol=1e-3)


def test_option_logits_start_as_the_lm_logits_of_the_option_words(lm):
    """With tied embeddings and options initialised from the No/Yes embeddings, the class logits are the
    base LM's next-token logits of No/Yes given [soft prompt; input] at the last position."""
    base = copy.deepcopy(lm.model)
    ids, mask = _batch(lm)
    model, _ = apply_tuning(
        lm, "option", num_prompt_tokens=5, option_init_ids=[lm.no_token_id, lm.yes_token_id], adapter_rank=4
    )
    with torch.no_grad():
        logits = model(ids, mask)
        emb = base.get_input_embeddings()(ids)
        full = torch.cat([model.prompt.unsqueeze(0).expand(len(ids), -1, -1), emb], dim=1)
        full_mask = torch.cat([torch.ones(len(ids), 5, dtype=mask.dtype), mask], dim=1)
        positions = (full_mask.cumsum(-1) - 1).clamp(min=0)
        ref = base(inputs_embeds=full, attention_mask=full_mask, position_ids=positions).logits[:, -1]
    assert logits.shape == (2, 2)
    assert torch.allclose(logits, ref[:, [lm.no_token_id, lm.yes_token_id]], atol=1e-4)


def test_options_are_the_last_prompt_embeddings_and_get_gradients(lm):
    model, _ = apply_tuning(lm, "option", num_prompt_tokens=5, num_options=3, adapter_rank=4)
    assert model.options.shape == (3, H)
    assert model.options.data_ptr() == model.prompt[2:].data_ptr()
    ids, mask = _batch(lm)
    loss = torch.nn.functional.cross_entropy(model(ids, mask), torch.tensor([0, 2]))
    loss.backward()
    assert model.prompt.grad is not None and model.prompt.grad[2:].abs().sum() > 0  # as class vectors
    assert model.prompt.grad[:2].abs().sum() > 0  # as prompt tokens
    up_grads = [a.up.weight.grad for a in model.adapters]
    assert all(g is not None and g.abs().sum() > 0 for g in up_grads)
    assert all(p.grad is None for n, p in model.backbone.named_parameters() if ".adapter." not in n)


def test_option_model_is_padding_invariant(lm):
    model, _ = apply_tuning(lm, "option", num_prompt_tokens=4, adapter_rank=4)
    for adapter in model.adapters:  # make the adapters matter
        torch.nn.init.normal_(adapter.up.weight, std=0.1)
    texts = ["A 24-year-old male technician. Will he like Heat?", "Hi"]
    ids, mask = _batch(lm, texts)
    assert (mask == 0).any()  # the short text is left-padded
    with torch.no_grad():
        batched = model(ids, mask)
        single = torch.cat([model(*_batch(lm, [t])) for t in texts])
    assert torch.allclose(batched, single, atol=1e-5)


def test_option_tuning_on_an_encoder():
    enc = bb.tiny_encoder(seed=0, hidden_size=H, num_layers=LAYERS)
    base = copy.deepcopy(enc.model)
    batch = enc.tokenize(["a user who likes heat", "toy story"])
    model, report = apply_tuning(enc, "option", num_prompt_tokens=4, num_options=3, adapter_rank=4)
    assert report.trainable_parameters == 4 * H + LAYERS * _adapter_params(4)
    assert all(isinstance(layer.output, AdaptedFFN) for layer in model.backbone.encoder.layer)
    assert not isinstance(model.backbone.encoder.layer[0].attention.output, AdaptedFFN)  # FFN only
    with torch.no_grad():
        same = torch.allclose(
            base(**batch).last_hidden_state, model.backbone(**batch).last_hidden_state, atol=1e-6
        )
        logits = model(batch["input_ids"], batch["attention_mask"])
        one = enc.tokenize(["toy story"])
        single = model(one["input_ids"], one["attention_mask"])
    assert same
    assert (batch["attention_mask"][1] == 0).any()  # the short text is right-padded
    assert logits.shape == (2, 3)
    assert torch.allclose(logits[1], single[0], atol=1e-5)  # right padding handled (last real token)


def test_option_settings_are_checked(lm):
    with pytest.raises(ValueError, match="num_options"):
        apply_tuning(lm, "option", num_prompt_tokens=2, num_options=3)
    with pytest.raises(ValueError, match="option_init_ids"):
        apply_tuning(bb.tiny_causal_lm(seed=1, tokenizer=lm.tokenizer), "option", option_init_ids=[1, 2, 3])
    with pytest.raises(ValueError, match="unknown tuning method"):
        apply_tuning(lm, "prefix")


# --------------------------------------------------------------------------------------------------
# LoRA and full fine-tuning


def test_lora_counts_match_the_targeted_projections(lm):
    targets = default_lora_targets(lm.model)
    assert targets == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    r = 4
    expected = sum(
        r * (m.in_features + m.out_features)
        for name, m in lm.model.named_modules()
        if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets
    )
    base_total = sum(p.numel() for p in lm.model.parameters())
    model, report = apply_tuning(lm, "lora", r=r)
    assert report.trainable_parameters == expected
    assert report.total_parameters == base_total + expected
    assert model.get_nb_trainable_parameters() == (expected, base_total + expected)  # peft's own count
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert report.settings["alpha"] == 2 * r and report.settings["target_modules"] == targets
    # LoRA's B starts at zero too: the outputs are the base model's
    ids, mask = _batch(lm)
    fresh = bb.tiny_causal_lm(seed=0, tokenizer=lm.tokenizer, hidden_size=H, num_layers=LAYERS)
    with torch.no_grad():
        assert torch.allclose(
            model(input_ids=ids, attention_mask=mask).logits,
            fresh.model(input_ids=ids, attention_mask=mask).logits,
            atol=1e-6,
        )


def test_lora_with_chosen_targets(lm):
    model, report = apply_tuning(lm, "lora", r=2, target_modules=["q_proj", "v_proj"])
    per_layer = 2 * (H + H) + 2 * (H + lm.model.config.head_dim)  # q: H->H, v: H->kv_heads*head_dim
    assert report.trainable_parameters == LAYERS * per_layer


def test_full_fine_tuning_trains_everything(lm):
    for p in lm.model.parameters():
        p.requires_grad_(False)
    model, report = apply_tuning(lm, "full")
    assert model is lm.model
    assert (
        report.trainable_parameters
        == report.total_parameters
        == sum(p.numel() for p in lm.model.parameters())
    )
    assert report.trainable_percent == 100.0
    with pytest.raises(TypeError):
        apply_tuning(lm, "full", r=8)
