"""Offline evaluation: every model beside the baselines of the same run, on the same split.

Retrieval is full ranking over the whole catalogue with the user's history excluded (RecBole's
leave-one-out protocol); CTR is AUC/logloss on the test-split examples; beyond accuracy: catalogue
coverage, intra-list diversity (genres) and novelty of the top-10 lists.
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from m6rec.data.eval_inputs import EvalInputs, build_eval_inputs
from m6rec.data.marts import RecData
from m6rec.evaluation.metrics import (
    catalogue_coverage,
    ctr_metrics,
    intra_list_diversity,
    ndcg_ci95,
    ndcg_gains,
    novelty,
    rank_of_targets,
    ranking_metrics,
    ranks_in_chunks,
    sample_users,
    topk,
)
from m6rec.evaluation.significance import ALPHA, auc_lead_p, mean_lead_p
from m6rec.models.baselines import ItemKNN, Popularity, SASRecBaseline
from m6rec.models.late_interaction import (
    LateInteractionScorer,
    TokenRankerConfig,
    example_segments,
    predict_token_ctr,
)
from m6rec.models.ranking import ctr_tensors, predict_ctr
from m6rec.models.registry import parameter_counts
from m6rec.models.retrieval import (
    EVAL_CHUNK,
    catalogue_vectors,
    query_windows,
    score_windows,
)
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


# The rows of every evaluation table (pipeline, benchmarks, docs), named in one place.
LM_TEXT_ONLY = "m6rec LM retriever (text only)"
LM_WITH_IDS = "m6rec LM retriever + item IDs"
FROZEN_RETRIEVER_ROW = "m6rec frozen-feature retriever (+ item IDs)"
LM_SCORER = "m6rec LM scorer"
SEGMENT_RANKER_ROW = "m6rec segment ranker (frozen features + item IDs)"
ITEM_MEAN_ROW = "item mean rating (baseline)"
ITEMKNN_ROW = "ItemKNN (tuned on valid)"
ITEMKNN_GRID = [
    {"k": k, "shrink": shrink} for k in (5, 10, 20, 50, 100, 200) for shrink in (0.0, 10.0, 100.0)
]
TOKEN_RANKER_PREFIX = "m6rec token ranker"
GATE_METRICS = {"retrieval": "retrieval_valid_ndcg@10", "ctr": "ctr_valid_auc"}


@dataclass
class EvaluationReport:
    retrieval: dict[str, dict[str, float]] = field(default_factory=dict)  # model -> test metrics
    ctr: dict[str, dict[str, float]] = field(default_factory=dict)
    valid: dict[str, dict[str, float]] = field(default_factory=dict)  # task -> m6rec model -> valid metric
    serving: dict[str, str] = field(default_factory=dict)  # task -> the m6rec model that serves it
    selection: dict[str, str] = field(default_factory=dict)  # task -> why that model serves
    validation: dict[str, float] = field(default_factory=dict)  # what the promotion gate compares
    parameters: dict[str, dict[str, int]] = field(default_factory=dict)  # model -> parameter counts
    baseline_params: dict[str, dict[str, float]] = field(default_factory=dict)  # e.g. tuned ItemKNN's
    # task -> baseline -> its metric on the valid split: the absolute floor of the promotion gate
    valid_baselines: dict[str, dict[str, float]] = field(default_factory=dict)
    ndcg_curves: dict[str, list[float]] = field(default_factory=dict)  # NDCG@K for K = 1..50
    top10_popularity: dict[str, list[int]] = field(default_factory=dict)  # popularity ranks recommended
    seconds: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> EvaluationReport:
        """A report back from :meth:`to_dict`'s JSON (the fields it holds)."""
        return cls(**{k: v for k, v in saved.items() if k in cls.__dataclass_fields__})

    def pick_winners(
        self,
        lm_rows: Collection[str] = (),
        lead_p: Callable[[str, str, str], float] | None = None,
    ) -> None:
        """Per task, the m6rec model with the best validation metric serves, unless it tunes no LM weight
        (not in ``lm_rows``) and its lead over the best model that does is within noise: the one-sided
        p-value ``lead_p(task, leader, best_lm)`` (a paired bootstrap on the valid split) is at least
        ``ALPHA``. Then the fine-tuned LM serves: it is the recommender this workflow builds, and a
        choice made on noise would flip between runs. ``selection`` says why; the serving model's valid
        metric is the one gated."""
        for task, scores in self.valid.items():
            if not scores:
                continue
            leader = max(scores, key=lambda name: (scores[name], name))
            winner, why = leader, "best on valid"
            tuned = [name for name in scores if name in lm_rows]
            if leader not in lm_rows and tuned and lead_p is not None:
                best_lm = max(tuned, key=lambda name: (scores[name], name))
                p = lead_p(task, leader, best_lm)
                margin = scores[leader] - scores[best_lm]
                lead = f"led {best_lm} on valid by {margin:.4f} (paired bootstrap p = {p:.3f}"
                if p >= ALPHA:
                    winner = best_lm
                    why = f"fine-tuned LM: {leader} {lead} >= {ALPHA}, within noise)"
                else:
                    why = f"best on valid: it {lead} < {ALPHA})"
            self.serving[task] = winner
            self.selection[task] = why
            self.validation[GATE_METRICS[task]] = scores[winner]

    def markdown(self) -> str:
        params = ["LM weights tuned", "trainable", "total"]
        lines = [
            "| model | " + " | ".join(TABLE_COLUMNS + params) + " |",
            "|---" * (len(TABLE_COLUMNS) + len(params) + 1) + "|",
        ]
        for name, row in self.retrieval.items():
            lines.append(
                f"| {name} | "
                + " | ".join(f"{row.get(c, float('nan')):.4f}" for c in TABLE_COLUMNS)
                + " | "
                + " | ".join(self._counts(name))
                + " |"
            )
        lines += [
            "",
            "| CTR model (test split) | auc | logloss | examples | " + " | ".join(params) + " |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, row in self.ctr.items():
            lines.append(
                f"| {name} | {row['auc']:.4f} | {row['logloss']:.4f} | {int(row['n'])} | "
                + " | ".join(self._counts(name))
                + " |"
            )
        if self.serving:
            lines += ["", "Serving: " + "; ".join(f"{task}: {name}" for task, name in self.serving.items())]
            lines += [f"- {task}: {why}" for task, why in self.selection.items()]
        return "\n".join(lines)

    def _counts(self, name: str) -> list[str]:
        counts = self.parameters.get(name)
        if counts is None:
            return ["", "", ""]
        keys = ("lm_trainable_parameters", "trainable_parameters", "total_parameters")
        return [f"{counts[k]:,}" if k in counts else "" for k in keys]

    def to_dict(self) -> dict[str, Any]:
        return {
            "retrieval": self.retrieval,
            "ctr": self.ctr,
            "valid": self.valid,
            "serving": self.serving,
            "selection": self.selection,
            "validation": self.validation,
            "parameters": self.parameters,
            "baseline_params": self.baseline_params,
            "valid_baselines": self.valid_baselines,
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
    score_rows: Callable[[int, int], np.ndarray],
    targets: np.ndarray,
    exclude: Sequence[np.ndarray],
    data: RecData,
    features: np.ndarray,
    chunk: int = EVAL_CHUNK,
) -> tuple[dict[str, float], list[float], list[int]]:
    """Accuracy and beyond-accuracy metrics (with the number of users and the 95% interval of
    NDCG@10), the NDCG@1..50 curve and the top-10 popularity ranks. ``score_rows(start, stop)`` scores
    users ``start..stop-1`` over the catalogue; ``chunk`` users at a time keeps memory at
    ``chunk × n_items`` scores."""
    ranks, top = [], []
    for start in range(0, len(targets), chunk):
        stop = min(start + chunk, len(targets))
        scores = score_rows(start, stop)
        ranks.append(rank_of_targets(scores, targets[start:stop], exclude[start:stop]))
        top.append(topk(scores, 10, exclude[start:stop]))
    ranks = np.concatenate(ranks)
    lists = np.concatenate(top)
    metrics = ranking_metrics(ranks, KS)
    metrics.update({"users": len(ranks), "ndcg@10_ci95": ndcg_ci95(ranks)})
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


def tune_itemknn(valid: EvalInputs, grid: Sequence[dict[str, float]] = ITEMKNN_GRID) -> dict[str, float]:
    """ItemKNN's neighbourhood size and shrinkage picked on the valid split (fit on train, ranked on
    valid), as a practitioner would before comparing with it. The whole grid shares one pass over the
    co-occurrence counts (``ItemKNN.fit_grid``): at 10⁵ items a fit is minutes, not ~1 s as on ML-100K."""
    best, best_ndcg = grid[0], -1.0
    for params, model in ItemKNN.fit_grid(valid.train_sequences, valid.n_items, grid):
        ranks = ranks_in_chunks(
            lambda a, b, model=model: model.score(valid.histories[a:b]), valid.targets, valid.histories
        )
        ndcg = ranking_metrics(ranks)["ndcg@10"]
        if ndcg > best_ndcg:
            best, best_ndcg = params, ndcg
    return {**best, "valid_ndcg@10": best_ndcg}


def evaluate(
    data: RecData,
    retrievers: Mapping[str, nn.Module],
    ctr_models: Mapping[str, nn.Module],
    ctr_examples: pd.DataFrame,
    *,
    baselines: tuple[str, ...] = ("pop", "itemknn", "sasrec"),
    sasrec_budget_s: float | None = 180,
    token_ranker: tuple[LateInteractionScorer, TokenRankerConfig] | None = None,
    style: TextStyle | None = None,
    extra_ctr: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    log: Callable[[str], None] = lambda _: None,
    max_eval_users: int | None = None,
    seed: int = 0,
) -> EvaluationReport:
    """Every m6rec retriever and CTR model (by row name) beside the baselines of the same run, on the
    same split; the best m6rec model per task on valid is the one that serves (``report.serving``).
    ``max_eval_users``: retrieval is ranked for a seeded sample of that many users (the same for every
    row; each row reports ``users`` and ``ndcg@10_ci95``) instead of all of them.
    ``token_ranker`` (with the ``style`` it was trained on) adds its CTR row; ``extra_ctr`` adds rows
    scored elsewhere as ``(labels, probabilities)`` on their own test examples (e.g. the explainer LM's
    Yes/No answers on a sample)."""
    report = EvaluationReport()
    features = genre_features(data)
    report.valid = {"retrieval": {}, "ctr": {}}
    report.valid_baselines = {"retrieval": {}, "ctr": {}}
    valid_gains: dict[str, np.ndarray] = {}  # per valid user, for the paired test of pick_winners
    valid_probs: dict[str, np.ndarray] = {}
    users = {
        split: sample_users(data.holdout(split)["user_id"].astype(str), max_eval_users, seed)
        for split in ("valid", "test")
    }
    for name, model in retrievers.items():
        start = time.perf_counter()
        windows, targets, exclude = query_windows(data, "test", model.config.max_len, users["test"])
        items = catalogue_vectors(model)
        metrics, curve, pop = ranking_report(
            lambda a, b, model=model, windows=windows, items=items: score_windows(
                model, windows[a:b], item_vecs_raw=items
            ),
            targets,
            exclude,
            data,
            features,
        )
        report.retrieval[name], report.ndcg_curves[name], report.top10_popularity[name] = metrics, curve, pop
        windows, targets, exclude = query_windows(data, "valid", model.config.max_len, users["valid"])
        valid_gains[name] = ndcg_gains(
            ranks_in_chunks(
                lambda a, b, model=model, windows=windows, items=items: score_windows(
                    model, windows[a:b], item_vecs_raw=items
                ),
                targets,
                exclude,
                EVAL_CHUNK,
            )
        )
        report.valid["retrieval"][name] = float(valid_gains[name].mean())
        report.parameters[name] = parameter_counts(model)
        report.seconds[name] = time.perf_counter() - start
        log(f"{name}: ndcg@10={metrics['ndcg@10']:.4f} (valid {report.valid['retrieval'][name]:.4f})")
    test = build_eval_inputs(data.events, data.n_items, data.item_index, "test", users["test"])
    valid = build_eval_inputs(data.events, data.n_items, data.item_index, "valid", users["valid"])
    for key in baselines:
        t0 = time.perf_counter()
        if key == "pop":
            label, model = "Pop", Popularity().fit(test.train_sequences, data.n_items)
            on_valid = Popularity().fit(valid.train_sequences, data.n_items)
            ranks = ranks_in_chunks(
                lambda a, b, on_valid=on_valid: on_valid.score(valid.histories[a:b]),
                valid.targets,
                valid.histories,
            )
            report.valid_baselines["retrieval"][label] = ranking_metrics(ranks)["ndcg@10"]
        elif key == "itemknn":
            params = tune_itemknn(valid)
            report.baseline_params[ITEMKNN_ROW] = params
            label = ITEMKNN_ROW
            report.valid_baselines["retrieval"][label] = params["valid_ndcg@10"]
            model = ItemKNN(k=int(params["k"]), shrink=float(params["shrink"])).fit(
                test.train_sequences, data.n_items
            )
        elif key == "sasrec":
            label, model = "SASRec (IDs)", SASRecBaseline(max_train_seconds=sasrec_budget_s)
            model.fit(test.train_sequences, data.n_items, valid=valid)
        else:
            raise ValueError(f"unknown baseline {key!r}; choose from pop, itemknn, sasrec")
        metrics, curve, pop = ranking_report(
            lambda a, b, model=model: model.score(test.histories[a:b]),
            test.targets,
            test.histories,
            data,
            features,
        )
        report.retrieval[label], report.ndcg_curves[label], report.top10_popularity[label] = (
            metrics,
            curve,
            pop,
        )
        report.seconds[label] = time.perf_counter() - t0
        log(f"{label}: ndcg@10={metrics['ndcg@10']:.4f} ({report.seconds[label]:.0f}s)")

    tensors = {
        split: ctr_tensors(ctr_examples[ctr_examples["split"] == split], data) for split in ("valid", "test")
    }
    labels = {split: t["labels"].numpy() for split, t in tensors.items()}
    for name, model in ctr_models.items():
        valid_probs[name] = predict_ctr(model, tensors["valid"])
        report.valid["ctr"][name] = ctr_metrics(labels["valid"], valid_probs[name])["auc"]
        report.parameters[name] = parameter_counts(model)
        probs = predict_ctr(model, tensors["test"])
        report.ctr[name] = {**ctr_metrics(labels["test"], probs), "n": len(probs)}
        log(f"{name}: test auc={report.ctr[name]['auc']:.4f} (valid {report.valid['ctr'][name]:.4f})")
    prior = float(np.nanmean(data.items["mean_train_rating"].to_numpy(dtype=float, na_value=np.nan)))
    item_mean = {}
    for split, split_tensors in tensors.items():
        means = split_tensors["cand_mean"].numpy()
        item_mean[split] = np.clip((np.where(np.isnan(means), prior, means) - 1.0) / 4.0, 1e-3, 1 - 1e-3)
    report.ctr[ITEM_MEAN_ROW] = {**ctr_metrics(labels["test"], item_mean["test"]), "n": len(labels["test"])}
    if len(np.unique(labels["valid"])) == 2:
        report.valid_baselines["ctr"][ITEM_MEAN_ROW] = ctr_metrics(labels["valid"], item_mean["valid"])["auc"]
    if token_ranker is not None:
        scorer, config = token_ranker
        name = f"{TOKEN_RANKER_PREFIX} (late interaction, k={config.top_k})"
        for split in ("valid", "test"):
            frame = ctr_examples[ctr_examples["split"] == split]
            segments = example_segments(frame, data, style or TextStyle(), config.history)
            probs = predict_token_ctr(scorer, segments, config.max_length)
            metrics = ctr_metrics(frame["label"].to_numpy(), probs)
            if split == "valid":
                report.valid["ctr"][name] = metrics["auc"]
                valid_probs[name] = probs
            else:
                report.ctr[name] = {**metrics, "n": len(frame)}
    for name, (row_labels, probs) in (extra_ctr or {}).items():
        report.ctr[name] = {**ctr_metrics(np.asarray(row_labels), np.asarray(probs)), "n": len(probs)}
    lm_rows = {name for name, counts in report.parameters.items() if counts["lm_trainable_parameters"] > 0}
    # the token ranker is the encoder itself with its top layers tuned (late interaction at token level)
    lm_rows |= {name for name in report.valid["ctr"] if name.startswith(TOKEN_RANKER_PREFIX)}

    def lead_p(task: str, leader: str, other: str) -> float:
        if task == "retrieval":
            return mean_lead_p(valid_gains[leader], valid_gains[other], seed=seed)
        if len(np.unique(labels["valid"])) < 2:
            return 1.0  # no AUC on valid, so no evidence of a lead
        return auc_lead_p(labels["valid"], valid_probs[leader], valid_probs[other], seed=seed)

    report.pick_winners(lm_rows, lead_p)
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
            "Behaviour written as text (M6-Rec), read by one pretrained encoder whose own top layers are",
            "fine-tuned over cached segment states (profile, history items, candidate): a retriever (user",
            "tower over the history, item tower over each item's text) and a late-interaction CTR scorer,",
            "trained beside frozen-feature models; per task the best on the valid split serves.",
            "Data: the warehouse's marts.",
            "",
            f"- encoder: `{manifest.get('encoder')}`",
            *(f"- serving {task}: {name}" for task, name in report.serving.items()),
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
            "popularity (and, in the ID add-on rows, per-item ID features) make it favour items seen in",
            "training; unseen items are scored from their text alone. Offline metrics on one split are not",
            "online outcomes.",
        ]
    )
