"""Few-shot like-prediction with SmolLM2-135M on ML-100K, the TALLRec protocol (Bao et al., 2023).

Usage: python bench/smollm2_fewshot.py [WAREHOUSE.duckdb] [--shots 64 256] [--methods lora option]
       [--eval-size 500] [--epochs 64:3,256:1] [--valid-size 0] [--patience 2] [--threads 1]
       [--output PATH]

* Examples: ``marts.ctr_examples`` (label = rating > 3, history = the last 10 events before the
  target), rendered by m6rec.text.textify and put in SmolLM2's chat template (m6rec.models.generation).
* Train: N examples sampled from the train split, balanced (N/2 likes, N/2 dislikes) as TALLRec does,
  seeded. Without ``--valid-size``: a fixed number of epochs, the last weights are evaluated. With
  ``--valid-size N``: N seeded examples of the *valid* split (one per user, never the test users'
  test events) are scored after every epoch (``--valid-every`` steps); training stops when the valid
  AUC has not improved for ``--patience`` checks (converged) or at ``--epochs`` / the time budget, and
  the best-on-valid weights are evaluated on test. The valid AUC of every check is written out, so
  whether a run converged is read from the JSON, not assumed. ``--run-dir DIR`` keeps each
  configuration's checkpoint in DIR/<method>-<shots>, and a rerun with the same settings and a larger
  ``--max-train-seconds`` resumes there (constant learning rate: the continued run is the run that was
  not stopped).
* Evaluation: a fixed seeded sample of ``--eval-size`` test-split examples (one per user; the test
  split has 943), AUC of P(Yes) over {No, Yes}. The untuned model is evaluated the same way (zero-shot).
* LoRA as TALLRec: r=8, alpha=16, dropout 0.05 on q_proj and v_proj (``--lora-targets`` changes it).
  Option tuning: m6rec.models.tuning defaults (20 soft-prompt tokens whose last 2 are the No/Yes options,
  initialised from the No/Yes embeddings; rank-32 parallel FFN adapters).

The warehouse is copied to a temporary file first (the pipeline may rewrite it) and read from the copy.
Writes JSON (machine, versions, command, per-configuration seconds, AUCs, trainable parameters) after
every configuration, prints a table and one explanation generated for a test user.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from m6rec.data.marts import events_of, load_rec_data  # noqa: E402
from m6rec.data.warehouse import connect  # noqa: E402
from m6rec.evaluation.metrics import ctr_metrics  # noqa: E402
from m6rec.files import write_atomic  # noqa: E402
from m6rec.models.backbones import load_causal_lm  # noqa: E402
from m6rec.models.generation import (  # noqa: E402
    FewShotConfig,
    balanced_sample,
    ctr_behaviour_texts,
    explain,
    finetune_like_head,
    like_probabilities,
    like_prompts,
)

TALLREC_LLAMA7B_AUC = {64: 0.6748, 256: 0.7198}  # TALLRec Table 2, MovieLens-100K, LLaMA-7B + LoRA


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "warehouse",
        nargs="?",
        default=os.environ.get("M6REC_DUCKDB_PATH", str(ROOT / "data" / "warehouse.duckdb")),
    )
    ap.add_argument(
        "--cache", default=str(ROOT / "data" / "cache"), help="where the SmolLM2 checkpoint is cached"
    )
    ap.add_argument("--shots", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--methods", nargs="+", default=["lora", "option"], choices=["lora", "option", "full"])
    ap.add_argument("--eval-size", type=int, default=500)
    ap.add_argument("--epochs", default="64:3,256:1", help="epochs per shot count, e.g. 64:3,256:1")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--lora-r", type=int, default=8)
    ap.add_argument("--lora-targets", nargs="+", default=["q_proj", "v_proj"])
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument(
        "--valid-size", type=int, default=0, help="valid-split examples for early stopping (0: none)"
    )
    ap.add_argument("--valid-every", type=int, default=None, help="steps between valid checks (an epoch)")
    ap.add_argument("--patience", type=int, default=2, help="valid checks without a better AUC, then stop")
    ap.add_argument(
        "--run-dir",
        default=None,
        help="keep each configuration's checkpoints in RUN_DIR/<method>-<shots> and resume from one "
        "found there (a run stopped by --max-train-seconds goes on with a larger budget)",
    )
    ap.add_argument("--max-train-seconds", type=float, default=600.0, help="per configuration (safety stop)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-zero-shot", action="store_true")
    ap.add_argument("--output", default=str(ROOT / "bench" / "results" / "smollm2_fewshot.json"))
    return ap.parse_args(argv)


def machine() -> dict:
    import accelerate
    import peft
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "accelerate": accelerate.__version__,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    epochs = {int(k): int(v) for k, v in (pair.split(":") for pair in args.epochs.split(","))}
    t_all = time.perf_counter()
    report: dict = {
        "benchmark": "smollm2_fewshot",
        "protocol": "TALLRec on ML-100K: label = rating > 3, last 10 events as history, balanced N-shot "
        "train sample from the train split, AUC of P(Yes) on a fixed sample of the test split",
        "command": " ".join(
            ["python", "bench/smollm2_fewshot.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "machine": machine(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("output",)},
        "reference": {"TALLRec LLaMA-7B AUC": TALLREC_LLAMA7B_AUC},
        "results": [],
    }
    out_path = Path(args.output)
    out_path.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        report["seconds_total"] = round(time.perf_counter() - t_all, 1)
        write_atomic(out_path, json.dumps(report, indent=2, default=str))

    # ---- data (from a copy of the warehouse) --------------------------------------------------------
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "warehouse.duckdb"
        shutil.copyfile(args.warehouse, copy)
        data = load_rec_data(copy)
        with connect(copy, read_only=True) as conn:
            test = conn.execute(
                "select * from marts.ctr_examples where split = 'test' order by example_id"
            ).df()
            train = conn.execute(
                "select * from marts.ctr_examples where split = 'train' order by example_id"
            ).df()
            valid = conn.execute(
                "select * from marts.ctr_examples where split = 'valid' order by example_id"
            ).df()
    items = dict(zip(data.items["item_id"], data.item_texts(), strict=True))
    profiles = dict(zip(data.users["user_id"], data.profiles(), strict=True))
    rng = np.random.default_rng(args.seed)
    eval_rows = test.iloc[np.sort(rng.choice(len(test), min(args.eval_size, len(test)), replace=False))]
    eval_labels = eval_rows["label"].to_numpy()
    report["eval"] = {
        "split": "test",
        "examples": len(eval_rows),
        "of": len(test),
        "positive_rate": round(float(eval_labels.mean()), 4),
        "seed": args.seed,
    }
    print(f"eval: {len(eval_rows)} of {len(test)} test examples, {eval_labels.mean():.1%} likes", flush=True)
    valid_rng = np.random.default_rng(args.seed + 1)  # its own draw: independent of --eval-size
    valid_rows = valid.iloc[
        np.sort(valid_rng.choice(len(valid), min(args.valid_size, len(valid)), replace=False))
    ]
    if len(valid_rows):
        report["valid"] = {
            "split": "valid",
            "examples": len(valid_rows),
            "of": len(valid),
            "positive_rate": round(float(valid_rows["label"].mean()), 4),
            "patience": args.patience,
            "every_steps": args.valid_every or "one epoch",
        }

    lm = load_causal_lm("smollm2", args.cache)
    eval_prompts = like_prompts(lm, ctr_behaviour_texts(eval_rows, items, profiles))
    valid_prompts = (
        like_prompts(lm, ctr_behaviour_texts(valid_rows, items, profiles)) if len(valid_rows) else None
    )
    n_tokens = [len(lm.tokenizer.encode(p, add_special_tokens=False)) for p in eval_prompts]
    report["eval"]["prompt_tokens_mean"] = round(float(np.mean(n_tokens)), 1)
    report["eval"]["prompt_tokens_max"] = int(np.max(n_tokens))
    print(f"prompt tokens: mean {np.mean(n_tokens):.0f}, max {np.max(n_tokens)}", flush=True)

    def evaluate(lm, model=None) -> tuple[dict, float]:
        t0 = time.perf_counter()
        probs = like_probabilities(lm, eval_prompts, model=model, batch_size=8, max_length=args.max_length)
        seconds = time.perf_counter() - t0
        metrics = ctr_metrics(eval_labels, probs)
        metrics.pop("gauc", None)  # one test example per user: GAUC is undefined
        metrics["mean_p_yes"] = float(probs.mean())
        return {k: round(v, 4) for k, v in metrics.items()}, seconds

    # ---- one explanation (untuned model, greedy) ----------------------------------------------------
    liked = eval_rows[eval_rows["label"] == 1].iloc[0]
    user_idx = int(data.users.index[data.users["user_id"] == liked["user_id"]][0])
    seq = data.events[(data.events["user_idx"] == user_idx) & (data.events["split"] != "test")]
    history = events_of(seq.tail(10), data.item_texts())
    t0 = time.perf_counter()
    text = explain(
        lm,
        profiles[liked["user_id"]],
        history,
        items[liked["target_item_id"]],
        int(liked["target_ts"]),
        max_new_tokens=48,
    )
    report["explanation"] = {
        "user_id": str(liked["user_id"]),
        "target_item_id": str(liked["target_item_id"]),
        "target_rating": float(liked["target_rating"]),
        "text": text,
        "seconds": round(time.perf_counter() - t0, 1),
        "settings": "untuned SmolLM2-135M, greedy, max_new_tokens=48, last 10 events before the test event",
    }
    print(
        f"\nexplanation for user {liked['user_id']} (rated the target {liked['target_rating']:g}):"
        f"\n  {text}\n",
        flush=True,
    )
    save()

    # ---- zero-shot ----------------------------------------------------------------------------------
    if not args.skip_zero_shot:
        metrics, seconds = evaluate(lm)
        report["results"].append(
            {
                "config": "zero-shot",
                "method": "none",
                "shots": 0,
                **metrics,
                "eval_seconds": round(seconds, 1),
            }
        )
        print(f"zero-shot: {metrics} ({seconds:.0f} s)", flush=True)
        save()

    # ---- few-shot -----------------------------------------------------------------------------------
    train_labels = train["label"].to_numpy()
    for method in args.methods:
        for shots in args.shots:
            t0 = time.perf_counter()
            rows = train.iloc[balanced_sample(train_labels, shots, seed=args.seed)]
            lm = load_causal_lm("smollm2", args.cache)  # fresh weights for every configuration
            prompts = like_prompts(lm, ctr_behaviour_texts(rows, items, profiles))
            tuning = (
                {"r": args.lora_r, "alpha": 2 * args.lora_r, "target_modules": args.lora_targets}
                if method == "lora"
                else {}
            )
            n_epochs = epochs.get(shots, 1)
            with contextlib.ExitStack() as stack:
                run_dir = (
                    str(Path(args.run_dir) / f"{method}-{shots}")
                    if args.run_dir
                    else stack.enter_context(tempfile.TemporaryDirectory())
                )
                config = FewShotConfig(
                    output_dir=run_dir,
                    resume=bool(args.run_dir),
                    method=method,
                    epochs=n_epochs,
                    batch_size=args.batch_size,
                    lr=args.lr,
                    max_length=args.max_length,
                    seed=args.seed,
                    # with a valid set: early stopping on its AUC; without: only checks the time budget
                    eval_every=(args.valid_every if valid_prompts else 8),
                    patience=args.patience,
                    max_seconds=args.max_train_seconds,
                    tuning=tuning,
                )
                fit = finetune_like_head(
                    lm,
                    prompts,
                    rows["label"].tolist(),
                    config,
                    valid_prompts=valid_prompts,
                    valid_labels=valid_rows["label"].tolist() if valid_prompts else None,
                    log=print,
                )
                # every check of the run, those before a resume included (the Trainer appends them;
                # its history holds this process's only): a checkpoint is saved at every check, so a
                # resumed run went on from the last check before its own
                metrics_log = (Path(run_dir) / "metrics.jsonl").read_text()
                checks = [json.loads(line) for line in metrics_log.splitlines()]
                before = len(checks) - len(fit.train.history)
                resumed_from_step = checks[before - 1]["step"] if before > 0 else None
            metrics, eval_seconds = evaluate(lm, fit.model)
            record = {
                "config": f"{method}-{shots}",
                "method": method,
                "shots": shots,
                **metrics,
                "tallrec_llama7b_auc": TALLREC_LLAMA7B_AUC.get(shots),
                "epochs_planned": n_epochs,
                "steps": fit.train.steps,
                "batch_size": args.batch_size,
                "lr": args.lr,
                "stopped": fit.train.stopped,
                "train_seconds": round(fit.train.seconds, 1),
                "train_loss_last": round(checks[-1]["train_loss"], 4) if checks else None,
                **(
                    {
                        # one entry per valid check: the mean train loss since the last check and the
                        # valid AUC; the test row above uses the weights of the best check
                        "checks": [
                            {
                                "step": h["step"],
                                "train_loss": round(h["train_loss"], 4),
                                "valid_auc": round(h["auc"], 4),
                            }
                            for h in checks
                        ],
                        "resumed_from_step": resumed_from_step,
                        "best_step": fit.train.best_step,
                        "best_valid_auc": round(fit.train.best_metric, 4),
                        "converged": fit.train.stopped == "early_stopping",
                    }
                    if valid_prompts
                    else {
                        # the mean train loss of every 8 steps (one entry per check): where it stops falling
                        "train_loss_per_8_steps": [round(h["train_loss"], 4) for h in checks],
                    }
                ),
                "eval_seconds": round(eval_seconds, 1),
                "seconds": round(time.perf_counter() - t0, 1),
                "tuning": fit.report.as_dict(),
            }
            report["results"].append(record)
            print(
                f"{record['config']}: auc {metrics['auc']:.4f} logloss {metrics['logloss']:.4f} "
                f"({record['steps']} steps, train {record['train_seconds']:.0f} s, "
                f"eval {eval_seconds:.0f} s; {fit.report})",
                flush=True,
            )
            save()
            del fit, lm

    # ---- table ---------------------------------------------------------------------------------------
    save()
    print(f"\n{'config':<12} {'AUC':>7} {'logloss':>8} {'TALLRec-7B':>10} {'trainable':>12} {'seconds':>8}")
    for r in report["results"]:
        ref = r.get("tallrec_llama7b_auc")
        trainable = r.get("tuning", {}).get("trainable_parameters", 0)
        print(
            f"{r['config']:<12} {r['auc']:>7.4f} {r['logloss']:>8.4f} {ref if ref else '-':>10} "
            f"{trainable:>12,} {r.get('seconds', r['eval_seconds']):>8.0f}"
        )
    print(f"\nwrote {out_path} ({report['seconds_total']:.0f} s in all)")


if __name__ == "__main__":
    main()
