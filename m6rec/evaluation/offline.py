"""Offline evaluation: every model beside the baselines of the same run, on the same split.

Retrieval is full ranking over the whole catalogue with the user's history excluded (RecBole's
leave-one-out protocol); CTR is AUC/logloss on the test-split examples; beyond accuracy: catalogue
coverage, intra-list diversity (genres) and novelty of the top-10 lists.
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from m6rec.data.eval_inputs import build_eval_inputs
from m6rec.data.marts import RecData
from m6rec.evaluation.metrics import (
    catalogue_coverage,
    ctr_metrics,
    intra_list_diversity,
    novelty,
    rank_of_targets,
    ranking_metrics,
    topk,
)
from m6rec.models.baselines import ItemKNN, Popularity, SASRecBaseline
from m6rec.models.late_interaction import (
    LateInteractionScorer,
    TokenRankerConfig,
    example_segments,
    predict_token_ctr,
)
from m6rec.models.ranking import SegmentRanker, ctr_tensors, predict_ctr
from m6rec.models.retrieval import SequentialRetriever, evaluate_retrieval, query_windows, score_windows
from m6rec.text.textify import TextStyle

KS = (10, 20, 50)
TABLE_COLUMNS = [
    "ndcg@10",
    "hit@10",
    "mrr@10",
    "ndcg@20",
    "hit@20",
    "hit@50",
    "coverage@10",
    "diversity@10",
    "novelty@10",
]


@dataclass
class EvaluationReport:
    retrieval: dict[str, dict[str, float]] = field(default_factory=dict)  # model -> test metrics
    ctr: dict[str, dict[str, float]] = field(default_factory=dict)
    validation: dict[str, float] = field(default_factory=dict)  # what the promotion gate compares
    ndcg_curves: dict[str, list[float]] = field(default_factory=dict)  # NDCG@K for K = 1..50
    top10_popularity: dict[str, list[int]] = field(default_factory=dict)  # popularity ranks recommended
    seconds: dict[str, float] = field(default_factory=dict)

    def markdown(self) -> str:
        lines = ["| model | " + " | ".join(TABLE_COLUMNS) + " |", "|---" * (len(TABLE_COLUMNS) + 1) + "|"]
        for name, row in self.retrieval.items():
            lines.append(
                f"| {name} | " + " | ".join(f"{row.get(c, float('nan')):.4f}" for c in TABLE_COLUMNS) + " |"
            )
        lines += ["", "| CTR model (test split) | auc | logloss | examples |", "|---|---|---|---|"]
        for name, row in self.ctr.items():
            lines.append(f"| {name} | {row['auc']:.4f} | {row['logloss']:.4f} | {int(row['n'])} |")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "retrieval": self.retrieval,
            "ctr": self.ctr,
            "validation": self.validation,
            "seconds": self.seconds,
        }


def genre_features(data: RecData) -> np.ndarray:
    genres = sorted({g for gs in data.items["genres"] for g in gs})
    index = {g: i for i, g in enumerate(genres)}
    feats = np.zeros((data.n_items, max(len(genres), 1)), dtype=np.float32)
    for i, gs in enumerate(data.items["genres"]):
        feats[i, [index[g] for g in gs]] = 1.0
    return feats


def ranking_report(
    scores: np.ndarray, targets: np.ndarray, exclude: list[np.ndarray], data: RecData, features: np.ndarray
) -> tuple[dict[str, float], list[float], list[int]]:
    """Accuracy and beyond-accuracy metrics, the NDCG@1..50 curve and the top-10 popularity ranks."""
    ranks = rank_of_targets(scores, targets, exclude)
    metrics = ranking_metrics(ranks, KS)
    lists = topk(scores, 10, exclude)
    counts = data.items["n_train_interactions"].to_numpy()
    metrics.update(
        {
            "coverage@10": catalogue_coverage(lists, data.n_items),
            "diversity@10": intra_list_diversity(lists, features),
            "novelty@10": novelty(lists, counts, data.n_users),
        }
    )
    curve = [float(np.mean(np.where(ranks <= k, 1.0 / np.log2(ranks + 1.0), 0.0))) for k in range(1, 51)]
    pop = data.items["popularity_rank"].to_numpy()[np.asarray(lists).ravel()]
    return metrics, curve, pop.astype(int).tolist()


def evaluate(
    data: RecData,
    retriever: SequentialRetriever,
    ranker: SegmentRanker,
    ctr_examples: pd.DataFrame,
    *,
    baselines: tuple[str, ...] = ("pop", "itemknn", "sasrec"),
    sasrec_budget_s: float | None = 180,
    token_ranker: tuple[LateInteractionScorer, TokenRankerConfig] | None = None,
    style: TextStyle | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> EvaluationReport:
    """``token_ranker`` (with the ``style`` it was trained on) adds its CTR row and valid AUC."""
    report = EvaluationReport()
    features = genre_features(data)
    start = time.perf_counter()
    windows, targets, exclude = query_windows(data, "test", retriever.config.max_len)
    name = "m6rec retriever"
    metrics, curve, pop = ranking_report(score_windows(retriever, windows), targets, exclude, data, features)
    report.retrieval[name], report.ndcg_curves[name], report.top10_popularity[name] = metrics, curve, pop
    report.validation.update(
        {
            f"retriever_valid_{k}": v
            for k, v in evaluate_retrieval(retriever, data, "valid").items()
            if k in ("ndcg@10", "hit@10")
        }
    )
    report.seconds[name] = time.perf_counter() - start
    test = build_eval_inputs(data.events, data.n_items, data.item_index, "test")
    valid = build_eval_inputs(data.events, data.n_items, data.item_index, "valid")
    factories = {
        "pop": ("Pop", Popularity),
        "itemknn": ("ItemKNN", ItemKNN),
        "sasrec": ("SASRec (IDs)", lambda: SASRecBaseline(max_train_seconds=sasrec_budget_s)),
    }
    for key in baselines:
        label, factory = factories[key]
        t0 = time.perf_counter()
        model = factory()
        if isinstance(model, SASRecBaseline):
            model.fit(test.train_sequences, data.n_items, valid=valid)
        else:
            model.fit(test.train_sequences, data.n_items)
        metrics, curve, pop = ranking_report(
            model.score(test.histories), test.targets, test.histories, data, features
        )
        report.retrieval[label], report.ndcg_curves[label], report.top10_popularity[label] = (
            metrics,
            curve,
            pop,
        )
        report.seconds[label] = time.perf_counter() - t0
        log(f"{label}: ndcg@10={metrics['ndcg@10']:.4f} ({report.seconds[label]:.0f}s)")

    for split in ("valid", "test"):
        frame = ctr_examples[ctr_examples["split"] == split]
        tensors = ctr_tensors(frame, data)
        labels = tensors["labels"].numpy()
        probs = predict_ctr(ranker, tensors)
        if split == "valid":
            report.validation["ranker_valid_auc"] = ctr_metrics(labels, probs)["auc"]
            continue
        report.ctr["m6rec segment ranker"] = {**ctr_metrics(labels, probs), "n": len(labels)}
        item_mean = tensors["cand_mean"].numpy()
        prior = float(np.nanmean(data.items["mean_train_rating"].to_numpy(dtype=float, na_value=np.nan)))
        baseline = (np.where(np.isnan(item_mean), prior, item_mean) - 1.0) / 4.0
        report.ctr["item mean rating (baseline)"] = {
            **ctr_metrics(labels, np.clip(baseline, 1e-3, 1 - 1e-3)),
            "n": len(labels),
        }
    if token_ranker is not None:
        scorer, config = token_ranker
        for split in ("valid", "test"):
            frame = ctr_examples[ctr_examples["split"] == split]
            segments = example_segments(frame, data, style or TextStyle(), config.history)
            probs = predict_token_ctr(scorer, segments, config.max_length)
            metrics = ctr_metrics(frame["label"].to_numpy(), probs)
            if split == "valid":
                report.validation["token_ranker_valid_auc"] = metrics["auc"]
            else:
                report.ctr[f"m6rec token ranker (late interaction, k={config.top_k})"] = {
                    **metrics,
                    "n": len(frame),
                }
    return report


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def plots(report: EvaluationReport) -> dict[str, str]:
    """Base64 PNGs: NDCG@K per model, and how popular the recommended items are."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, curve in report.ndcg_curves.items():
        ax.plot(range(1, len(curve) + 1), curve, label=name)
    ax.set(xlabel="K", ylabel="NDCG@K (test)", title="Full-ranking NDCG@K")
    ax.legend(fontsize=8)
    out["ndcg_at_k"] = _png(fig)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(
        list(report.top10_popularity.values()), bins=30, label=list(report.top10_popularity), histtype="step"
    )
    ax.set(
        xlabel="popularity rank of recommended item (1 = most popular)",
        ylabel="count in top-10 lists",
        title="Popularity of recommended items",
    )
    ax.legend(fontsize=8)
    out["recommended_popularity"] = _png(fig)
    plt.close(fig)
    return out


def model_card(report: EvaluationReport, manifest: dict[str, Any]) -> str:
    return "\n".join(
        [
            "# m6rec model card",
            "",
            "Behaviour written as text (M6-Rec), read by one pretrained encoder; a two-tower retriever over",
            "cached segment states and a late-interaction CTR ranker. Data: the warehouse's marts.",
            "",
            f"- encoder: `{manifest.get('encoder')}`",
            f"- profile: `{manifest.get('profile')}`",
            f"- trained: {manifest.get('created_at', 'n/a')}",
            "",
            "## Offline evaluation (leave-one-out test split, full ranking, history excluded)",
            "",
            report.markdown(),
            "",
            "## Intended use and limits",
            "",
            "Ranks catalogue items for a user's history or a free-text request. Trained on explicit ratings;",
            "popularity and per-item ID features make it favour items seen in training; unseen items are",
            "scored from their text alone. Offline metrics on one split are not online outcomes.",
        ]
    )
