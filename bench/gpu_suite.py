"""The GPU suite: the ``full`` profile's models and SmolLM2 LoRA 256-shot on one GPU, each in a time
budget, with samples/s, model FLOPs utilisation (MFU) and quality.

- LM retriever, every encoder layer tuned over segment states (``full``: ``lm_top_layers`` = all);
- LM CTR scorer, likewise;
- the token-level ranker (the encoder fine-tuned over the behaviour text's tokens, k = 1);
- SmolLM2-135M Yes/No with LoRA on 256 balanced train examples (TALLRec), early-stopped on sampled
  valid examples' AUC, AUC on sampled test examples;
- the explainer: SmolLM2 LoRA-tuned on explanations built from the data (``full``: every layer, 512
  explanations), its grounded explanations of valid events checked (false-statement / evidence rates).

Reads the marts as Parquet (``m6rec.data.marts.save_rec_data`` + ``ctr_examples.parquet``), so it runs
where there is no warehouse; bench/gpu_suite.sh packs them and the weights here and runs this there.
Model FLOPs per sample: 6 x tuned non-embedding parameters x positions (full tuning: forward 2N, backward
4N), 4 x for LoRA on a frozen base; MFU = achieved model FLOP/s / the card's dense bf16 peak.

Usage: python bench/gpu_suite.py --data DIR [--encoder minilm|PATH|tiny] [--lm smollm2|PATH|tiny]
       [--budget-s 90] [--out bench/results/gpu_suite.json]
``--encoder tiny --lm tiny`` runs the same code path on tiny random models (a CPU check of the script).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from m6rec.data.marts import read_rec_data  # noqa: E402
from m6rec.evaluation.metrics import ctr_metrics  # noqa: E402
from m6rec.models.backbones import (  # noqa: E402
    load_causal_lm,
    load_encoder,
    pick_device,
    tiny_causal_lm,
    tiny_encoder,
)
from m6rec.models.explainer_tuning import check_explainer, explanation_cases, tune_explainer  # noqa: E402
from m6rec.models.generation import (  # noqa: E402
    FewShotConfig,
    balanced_sample,
    ctr_behaviour_texts,
    explanation_prompt,
    finetune_like_head,
    like_probabilities,
    like_prompts,
)
from m6rec.models.late_interaction import (  # noqa: E402
    example_segments,
    predict_token_ctr,
    train_token_ranker,
)
from m6rec.models.lm_layers import build_lower_cache  # noqa: E402
from m6rec.models.lm_ranking import train_lm_ranker  # noqa: E402
from m6rec.models.lm_retrieval import train_lm_retriever  # noqa: E402
from m6rec.models.ranking import ctr_tensors, predict_ctr  # noqa: E402
from m6rec.models.retrieval import evaluate_retrieval  # noqa: E402
from m6rec.text.textify import TextStyle  # noqa: E402
from m6rec.training.profiles import get_profile  # noqa: E402
from m6rec.training.trainer import TrainConfig  # noqa: E402

TEXT_STYLE = TextStyle(with_popularity=True)
SEGMENT_STYLE = replace(TEXT_STYLE, with_watched_next=True)
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L4": 121.0, "A10": 125.0}
TALLREC_LLAMA7B_AUC_256 = 0.7198


def peak_tflops() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


def throughput(result, batch_size: int, flops_per_sample: float) -> dict:
    samples = result.steps_per_second * batch_size
    achieved = samples * flops_per_sample
    peak = peak_tflops()
    return {
        "steps": result.steps,
        "train_seconds": round(result.seconds, 1),
        "samples_per_second": round(samples, 1),
        "model_tflops_per_second": round(achieved / 1e12, 6),
        "mfu": round(achieved / (peak * 1e12), 4) if peak else "not measured (no GPU peak known)",
        "device": result.device,
    }


def layer_params(layers) -> int:
    return sum(p.numel() for p in layers.parameters())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True, help="folder: items/users/events/ctr_examples .parquet")
    parser.add_argument("--encoder", default="minilm")
    parser.add_argument("--lm", default="smollm2")
    parser.add_argument("--cache", default=str(REPO / "data" / "cache"))
    parser.add_argument("--budget-s", type=float, default=90)
    parser.add_argument("--shots", type=int, default=256)
    parser.add_argument("--eval-examples", type=int, default=500)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "gpu_suite.json"))
    args = parser.parse_args()
    start = time.perf_counter()
    device = pick_device()
    tiny = args.encoder == "tiny"
    profile = get_profile("smoke" if tiny else "full")
    data = read_rec_data(args.data)
    examples = pd.read_parquet(Path(args.data) / "ctr_examples.parquet")
    encoder = tiny_encoder() if tiny else load_encoder(args.encoder, args.cache)
    encoder.to(device)
    report: dict = {
        "command": "python bench/gpu_suite.py " + " ".join(sys.argv[1:]),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "platform": platform.platform(),
        "torch": torch.__version__,
        "profile": profile.name,
        "budget_s_per_model": args.budget_s,
        "models": {},
    }

    def save() -> None:
        report["seconds_total"] = round(time.perf_counter() - start, 1)
        Path(args.out).write_text(json.dumps(report, indent=2, default=float) + "\n")

    # the models' checkpoints: removed when the suite ends (the results file is what it leaves)
    checkpoints = tempfile.TemporaryDirectory(prefix="m6rec-gpu-suite-")

    def train_config(name: str, metric: str, **changes) -> TrainConfig:
        return TrainConfig(
            output_dir=str(Path(checkpoints.name) / name),
            max_steps=100_000,
            lr=1e-3,
            eval_every=profile.lm_eval_every,
            metric=metric,
            patience=profile.patience,
            max_seconds=args.budget_s,
            resume=False,
            progress=False,
            **changes,
        )

    # --- the full profile: every encoder layer tuned over segment states ------------------------------
    lm_cache = build_lower_cache(encoder, data, SEGMENT_STYLE, profile.lm_split(encoder.num_layers))
    model, result = train_lm_retriever(
        data,
        lm_cache,
        encoder.model,
        profile.lm_retriever,
        train_config("lm_retriever", "ndcg@10", lr_decay=profile.lm_lr_decay),
        batch_size=profile.lm_batch_size,
    )
    positions = profile.lm_retriever.max_len + 1
    report["models"]["m6rec LM retriever (text only, every layer tuned)"] = {
        **throughput(result, profile.lm_batch_size, 6 * layer_params(model.top.layers) * positions),
        "test": evaluate_retrieval(model, data, "test"),
        "best_valid_ndcg@10": result.best_metric,
        **model.parameter_counts(),
    }
    save()
    del model
    ctr_train = examples[examples["split"].isin(["train", "valid"])]
    test = examples[examples["split"] == "test"]
    ranker, result = train_lm_ranker(
        data,
        lm_cache,
        encoder.model,
        ctr_train,
        profile.lm_ranker,
        train_config("lm_ranker", "auc", lr_decay=profile.lm_lr_decay),
        batch_size=profile.lm_ranker_batch_size,
    )
    tensors = ctr_tensors(test, data)
    report["models"]["m6rec LM scorer (every layer tuned)"] = {
        **throughput(
            result,
            profile.lm_ranker_batch_size,
            6 * layer_params(ranker.top.layers) * (profile.lm_ranker.history + 2),
        ),
        "test_auc": ctr_metrics(tensors["labels"].numpy(), predict_ctr(ranker, tensors))["auc"],
        "best_valid_auc": result.best_metric,
        **ranker.parameter_counts(),
    }
    save()
    del ranker
    config = profile.token_ranker
    cfg = replace(train_config("token_ranker", "auc"), lr=config.lr, weight_decay=0.01)
    scorer, result = train_token_ranker(data, encoder, ctr_train, config, cfg, TEXT_STYLE)
    segments = example_segments(test, data, TEXT_STYLE, config.history)
    probs = predict_token_ctr(scorer, segments, config.max_length)
    tokens = float(np.mean([min(len(encoder.tokenizer.encode(" ".join(s))), 512) for s in segments[:200]]))
    report["models"][f"m6rec token ranker (late interaction, k={config.top_k})"] = {
        **throughput(result, config.batch_size, 6 * layer_params(scorer.bert.encoder.layer) * tokens),
        "tokens_per_sample": round(tokens, 1),
        "test_auc": ctr_metrics(test["label"].to_numpy(), probs)["auc"],
        "best_valid_auc": result.best_metric,
    }
    save()
    del scorer

    # --- SmolLM2 LoRA, 256-shot (TALLRec) -------------------------------------------------------------
    lm = tiny_causal_lm() if args.lm == "tiny" else load_causal_lm(args.lm, args.cache)
    lm.to(device)
    items = dict(zip(data.items["item_id"], data.item_texts(), strict=True))
    profiles = dict(zip(data.users["user_id"], data.profiles(), strict=True))
    train = examples[examples["split"] == "train"]
    rows = train.iloc[balanced_sample(train["label"].to_numpy(), args.shots, seed=0)]
    eval_rows = test.sample(min(len(test), args.eval_examples), random_state=0)
    # early stopping on the valid split's AUC, best weights kept: "enough steps to converge", read from
    # the record's `stopped` / `best_valid_auc` rather than assumed
    valid = examples[examples["split"] == "valid"]
    valid_rows = valid.sample(min(len(valid), args.eval_examples), random_state=1)

    prompts, eval_prompts, valid_prompts = (
        like_prompts(lm, ctr_behaviour_texts(frame, items, profiles, style=TEXT_STYLE, max_events=10))
        for frame in (rows, eval_rows, valid_rows)
    )
    zero = ctr_metrics(eval_rows["label"].to_numpy(), like_probabilities(lm, eval_prompts, batch_size=32))
    with tempfile.TemporaryDirectory() as run_dir:
        fit = finetune_like_head(
            lm,
            prompts,
            rows["label"].tolist(),
            FewShotConfig(
                output_dir=run_dir,
                method="lora",
                epochs=20,
                batch_size=16,
                lr=5e-4,
                max_seconds=args.budget_s,
                patience=3,
                tuning={"r": 8},
            ),
            valid_prompts=valid_prompts,
            valid_labels=valid_rows["label"].tolist(),
        )
    tuned = ctr_metrics(
        eval_rows["label"].to_numpy(), like_probabilities(lm, eval_prompts, model=fit.model, batch_size=32)
    )
    prompt_tokens = float(np.mean([len(lm.tokenizer.encode(p)) for p in prompts]))
    base = sum(p.numel() for n, p in fit.model.named_parameters() if "lora_" not in n and "embed" not in n)
    report["models"][f"{lm.name} Yes/No, LoRA r=8, {args.shots}-shot"] = {
        **throughput(fit.train, 16, 4 * base * prompt_tokens),
        "prompt_tokens_mean": round(prompt_tokens, 1),
        "zero_shot_auc": zero["auc"],
        "test_auc": tuned["auc"],
        "eval_examples": len(eval_rows),
        "valid_examples": len(valid_rows),
        "best_valid_auc": fit.train.best_metric,
        "best_step": fit.train.best_step,
        "stopped": fit.train.stopped,  # "early_stopping": converged on valid
        "tallrec_llama7b_auc": TALLREC_LLAMA7B_AUC_256,
        "tuning": fit.report.as_dict(),
    }
    save()
    del lm, fit

    # --- the explainer: LoRA on explanations built from the data, then the grounded check -------------
    explainer = tiny_causal_lm() if args.lm == "tiny" else load_causal_lm(args.lm, args.cache)
    explainer.to(device)  # fresh weights: the Yes/No LoRA above changed its LM in place
    tuning = replace(
        profile.explainer_tuning,
        max_seconds=args.budget_s,
        check_users=min(profile.explainer_tuning.check_users, 100),  # the suite's 9 minutes
    )
    cases = explanation_cases(data, "train", tuning.examples, max_events=tuning.max_events)
    tuned = tune_explainer(explainer, cases, data.contract.is_like, tuning, style=TEXT_STYLE)
    valid = explanation_cases(data, "valid", tuning.check_users, seed=1, max_events=tuning.max_events)
    check = check_explainer(
        explainer,
        valid,
        data.item_texts(),
        data.contract.is_like,
        style=TEXT_STYLE,
        max_events=tuning.max_events,
        max_new_tokens=tuning.max_new_tokens,
        grounded=tuning.grounded,
    )
    prompts = [
        explanation_prompt(
            explainer,
            c.profile,
            c.history,
            c.candidate,
            c.now_ts,
            style=TEXT_STYLE,
            max_events=tuning.max_events,
        )[0]
        for c in cases
    ]
    tokens = float(np.mean([len(explainer.tokenizer.encode(p)) for p in prompts]))
    base = sum(p.numel() for n, p in explainer.model.named_parameters() if "embed" not in n)
    report["models"][f"{explainer.name} explainer, LoRA on {len(cases)} explanations"] = {
        # 4 x base x prompt tokens for LoRA on a frozen base (the continuation's few tokens not counted)
        **throughput(tuned.train, tuning.batch_size, 4 * base * tokens),
        "tuning": tuned.report.as_dict(),
        "valid_false_statement_rate": check.summary["false_statement_rate"],
        "valid_evidence_rate": check.summary["evidence_rate"],
        "checked_explanations": check.summary["n"],
        "check_seconds": round(check.seconds, 1),
        "decoding": "grounded" if tuning.grounded else "free",
    }
    save()
    print(json.dumps(report, indent=2, default=float))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
