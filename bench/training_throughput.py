"""Training throughput of every model m6rec trains, on this machine: samples/s and tokens/s, and on a
GPU the model-FLOPs utilisation (MFU) against the card's peak.

Each model trains for a fixed number of optimisation steps on ML-100K with the settings its profile
uses; the Trainer times forward + backward + optimiser only (no evaluation, no checkpoints). The first
step is a warm-up and is timed too, so figures are slightly conservative.

- retriever, segment ranker: cached segment states (the CPU profiles); samples = training windows /
  CTR examples; "segments/s" counts the cached history segments read.
- token ranker (the ``full`` profile): MiniLM fine-tuned at token level as a late-interaction scorer
  (k = 1); tokens = non-padding tokens of all segments of the batch.
- SmolLM2-135M Yes/No with LoRA (TALLRec-style, r = 8 on q/v): tokens = prompt tokens.

Model FLOPs per token: 6 x parameters for full fine-tuning (forward 2N, backward 4N); 4 x parameters
for LoRA on a frozen base (the activation gradients are still computed, the weight gradients are not).
Embedding parameters are left out. MFU = model FLOP/s / the card's dense bf16 peak; on a CPU there is
no published peak here, so MFU is reported as not measured and the achieved GFLOP/s are given instead.

Usage: python bench/training_throughput.py [--threads 1] [--steps 20] [--only retriever,...]
Needs the warehouse and segment cache of a `make run` (data/). Writes bench/results/training_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import duckdb  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from m6rec.data.marts import load_rec_data  # noqa: E402
from m6rec.models.backbones import load_causal_lm, load_encoder  # noqa: E402
from m6rec.models.late_interaction import TokenRankerConfig, example_segments, train_token_ranker  # noqa: E402
from m6rec.models.ranking import train_ranker  # noqa: E402
from m6rec.models.retrieval import train_retriever, training_windows  # noqa: E402
from m6rec.models.segments import SegmentCache  # noqa: E402
from m6rec.text.textify import TextStyle  # noqa: E402
from m6rec.training.profiles import get_profile  # noqa: E402
from m6rec.training.trainer import TrainConfig  # noqa: E402

STYLE = TextStyle(with_popularity=True)  # what the pipeline trains with
# Dense bf16 peaks (TFLOP/s, without sparsity) from the vendors' data sheets.
PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L4": 121.0, "A10": 125.0}


def train_config(out: Path, steps: int, lr: float, metric: str = "auc") -> TrainConfig:
    return TrainConfig(
        output_dir=str(out),
        max_steps=steps,
        lr=lr,
        eval_every=steps,
        metric=metric,
        resume=False,
        progress=False,
    )


def non_embedding_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if "embed" not in n)


def peak_tflops() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def row(result, batch: int, *, tokens_per_sample: float | None = None, flops_per_token: float | None = None):
    samples = result.steps_per_second * batch
    out = {
        "steps": result.steps,
        "batch_size": batch,
        "step_seconds": round(result.step_seconds, 2),
        "samples_per_second": round(samples, 2),
        "device": result.device,
    }
    if tokens_per_sample is not None:
        tokens = samples * tokens_per_sample
        out["tokens_per_sample"] = round(tokens_per_sample, 1)
        out["tokens_per_second"] = round(tokens, 1)
        if flops_per_token is not None:
            achieved = tokens * flops_per_token
            out["model_gflops_per_second"] = round(achieved / 1e9, 2)
            peak = peak_tflops()
            out["mfu"] = round(achieved / (peak * 1e12), 4) if peak else "not measured (no GPU peak)"
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", default=str(REPO / "data" / "warehouse.duckdb"))
    parser.add_argument("--segments", default=str(REPO / "data" / "artifacts" / "segment_cache.pt"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20, help="steps for the cached-segment models")
    parser.add_argument("--token-steps", type=int, default=6)
    parser.add_argument("--llm-steps", type=int, default=4)
    parser.add_argument("--only", default="retriever,segment_ranker,token_ranker,smollm2_lora")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "training_throughput.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    only = set(args.only.split(","))
    data = load_rec_data(args.db)
    with duckdb.connect(args.db, read_only=True) as conn:
        examples = conn.execute("select * from marts.ctr_examples where split in ('train', 'valid')").df()
    valid_few = examples[examples["split"] == "valid"].head(32)  # the final evaluation is not timed
    profile = get_profile("default")
    report: dict = {
        "command": "python bench/training_throughput.py " + " ".join(sys.argv[1:]),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "torch_threads": args.threads,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "torch": torch.__version__,
        },
        "models": {},
    }
    checkpoints = tempfile.TemporaryDirectory(prefix="m6rec-throughput-")  # removed when the run ends
    tmp = Path(checkpoints.name)
    if only & {"retriever", "segment_ranker"}:
        cache = SegmentCache.load(args.segments)
    if "retriever" in only:
        cfg = profile.retriever
        windows = training_windows(data, cfg.max_len)
        mean_window = sum(len(w.items) for w in windows) / len(windows)  # history segments per sample
        _, result = train_retriever(
            data, cache, cfg, train_config(tmp / "r", args.steps, 1e-3, "ndcg@10"), batch_size=64
        )
        report["models"]["retriever (cached segments, default profile)"] = {
            **row(result, 64),
            "segments_per_second": round(result.steps_per_second * 64 * mean_window, 1),
        }
        print(report["models"], flush=True)
    if "segment_ranker" in only:
        train = examples[examples["split"] == "train"]
        sample = train.sample(args.steps * 256, random_state=0)
        frame = pd.concat([sample, valid_few])
        mean_history = float(sample["history_length"].mean())
        _, result = train_ranker(
            data, cache, frame, profile.ranker, train_config(tmp / "s", args.steps, 1e-3), batch_size=256
        )
        report["models"]["segment ranker (cached segments, default profile)"] = {
            **row(result, 256),
            # profile + up to 10 history segments + the candidate per example
            "segments_per_second": round(result.steps_per_second * 256 * (2 + mean_history), 1),
        }
        print(report["models"], flush=True)
    if "token_ranker" in only:
        config = get_profile("full").token_ranker
        assert config is not None
        batch = config.batch_size
        config = TokenRankerConfig(**{**config.__dict__, "max_train_examples": args.token_steps * batch})
        encoder = load_encoder("minilm")
        train = examples[examples["split"] == "train"].sample(config.max_train_examples, random_state=0)
        segments = example_segments(train, data, STYLE, config.history)
        lengths = [
            min(len(ids), config.max_length)
            for segs in segments
            for ids in encoder.tokenizer(segs, add_special_tokens=True)["input_ids"]
        ]
        tokens_per_sample = sum(lengths) / len(segments)
        params = non_embedding_params(encoder.model)
        scorer, result = train_token_ranker(
            data,
            encoder,
            pd.concat([train, valid_few]),
            config,
            train_config(tmp / "t", args.token_steps, config.lr),
            STYLE,
        )
        report["models"]["token ranker (MiniLM token-level, k=1, full profile)"] = {
            **row(result, batch, tokens_per_sample=tokens_per_sample, flops_per_token=6 * params),
            "non_embedding_parameters": params,
        }
        print(report["models"], flush=True)
    if "smollm2_lora" in only:
        from m6rec.models.generation import (
            FewShotConfig,
            ctr_behaviour_texts,
            finetune_like_head,
            like_prompts,
        )

        lm = load_causal_lm("smollm2", REPO / "data" / "cache")
        batch = 8
        train = examples[examples["split"] == "train"].sample(args.llm_steps * batch, random_state=0)
        items = dict(zip(data.items["item_id"], data.item_texts(), strict=True))
        profiles = dict(zip(data.users["user_id"], data.profiles(), strict=True))
        prompts = like_prompts(lm, ctr_behaviour_texts(train, items, profiles, style=STYLE, max_events=10))
        tokens_per_sample = sum(len(lm.tokenizer(p)["input_ids"]) for p in prompts) / len(prompts)
        params = non_embedding_params(lm.model)
        result = finetune_like_head(
            lm,
            prompts,
            train["label"].tolist(),
            FewShotConfig(
                output_dir=str(tmp / "l"),
                method="lora",
                epochs=1,
                batch_size=batch,
                tuning={"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]},
            ),
        ).train
        report["models"]["SmolLM2-135M Yes/No, LoRA r=8 q/v"] = {
            **row(result, batch, tokens_per_sample=tokens_per_sample, flops_per_token=4 * params),
            "non_embedding_parameters": params,
        }
        print(report["models"], flush=True)
    out = Path(args.out)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
