"""The champion/challenger gate on the same data: both bundles are scored on the current valid split,
through the serving path, and the decision is a pure function of what is recorded.

Why not compare stored numbers: the champion's metrics were measured on *its* data. After new logs
arrive (a new catalogue, other users) those numbers say nothing about the current split, and a
champion that does not even know the current items would win on them. So:

- both bundles rank the current valid events among the items both of them know (an item the champion
  never saw cannot be scored by it: such events and candidates are left out of the comparison, and how
  much was left out is reported as ``coverage``);
- a champion that cannot serve the current catalogue (it fails to load, or covers less than
  ``min_coverage`` of the valid events) is replaced when the challenger clears an absolute floor: it
  beats the same run's baselines (Pop and tuned ItemKNN for retrieval, the item-mean rating for CTR) on
  the valid split;
- otherwise the challenger must not be worse than the champion on any gated metric, on the same events.

Whatever the metrics say, a challenger whose language-model explainer was caught stating something
false in more than ``max_false_explanations`` of its checked explanations (the bundle's
``explainer_check``, measured on valid events by the training run) is not promoted: the explanations
are served, so they are gated like the rankings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from m6rec.data.marts import RecData
from m6rec.evaluation.metrics import ctr_metrics, sample_users
from m6rec.evaluation.offline import GATE_METRICS
from m6rec.serving.recommender import HistoryEvent, RankJob, Recommender, RecommendQuery
from m6rec.text.textify import Profile

MIN_COVERAGE = 0.5  # below this share of the valid events, a champion "cannot serve" the current data
MAX_FALSE_EXPLANATIONS = 0.05  # the share of checked LM explanations that may state something false


@dataclass
class SameDataEvaluation:
    """Both bundles' gated metrics on the same events, and how much of the valid split those are."""

    challenger: dict[str, float] = field(default_factory=dict)
    champion: dict[str, float] = field(default_factory=dict)
    events: int = 0  # valid retrieval events both could score
    ctr_examples: int = 0  # valid CTR examples both could score
    coverage: float = 0.0  # events / all valid events
    catalogue_overlap: float = 0.0  # current items the champion knows / current items


@dataclass
class GateDecision:
    promote: bool
    # "explanations fail the check", "first model", "same data", "champion cannot serve",
    # "challenger below floor"
    rule: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _rating(value: Any) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def valid_retrieval_events(
    data: RecData, known: set[str], users: set[str] | None = None
) -> list[tuple[str, list[HistoryEvent], str]]:
    """``(user, train history, target)`` of every valid event (of ``users``, when given) whose target
    both bundles know; history events of items outside ``known`` are dropped (the same history for both
    models)."""
    out = []
    frame = data.events if users is None else data.events[data.events["user_id"].astype(str).isin(users)]
    for user_id, events in frame.groupby("user_id", sort=False):
        valid = events[events["split"] == "valid"]
        if valid.empty or valid["item_id"].iloc[0] not in known:
            continue
        train = events[(events["split"] == "train") & events["item_id"].isin(known)]
        history = [
            HistoryEvent(str(r.item_id), _rating(r.rating), int(r.ts)) for r in train.itertuples(index=False)
        ]
        if history:
            out.append((str(user_id), history, str(valid["item_id"].iloc[0])))
    return out


def retrieval_ndcg(
    rec: Recommender,
    events: list[tuple[str, list[HistoryEvent], str]],
    candidates: list[str],
    profiles: Mapping[str, Profile],
    batch_size: int = 128,
) -> float:
    """NDCG@10 of the retriever of ``rec`` when it ranks ``candidates`` (history excluded) for each
    event: the served scoring path, restricted to items every compared bundle knows."""
    columns = np.asarray([rec.index[i] for i in candidates], dtype=np.int64)
    position = {item: j for j, item in enumerate(candidates)}
    gains = []
    for start in range(0, len(events), batch_size):
        chunk = events[start : start + batch_size]
        queries = [RecommendQuery(history, profile=profiles.get(user)) for user, history, _ in chunk]
        scores = rec.retrieve_scores_batch(queries)[:, columns]
        for row, (_, history, target) in zip(scores, chunk, strict=True):
            seen = [position[e.item_id] for e in history if e.item_id in position]
            row[seen] = -np.inf
            target_score = row[position[target]]
            rank = int((row > target_score).sum())
            gains.append(1.0 / np.log2(rank + 2) if rank < 10 else 0.0)
    return float(np.mean(gains)) if gains else float("nan")


def ctr_jobs(
    examples: pd.DataFrame, known: set[str], profiles: Mapping[str, Profile], split: str = "valid"
) -> tuple[list[RankJob], np.ndarray]:
    """The CTR examples of ``split`` (the gate's: valid) whose target both bundles know, as rank jobs
    (history restricted to ``known``), and their labels."""
    jobs, labels = [], []
    for row in examples[examples["split"] == split].itertuples(index=False):
        if row.target_item_id not in known:
            continue
        history = [
            HistoryEvent(str(i), _rating(r), int(t))
            for i, r, t in zip(row.history_item_ids, row.history_ratings, row.history_ts, strict=True)
            if i in known
        ]
        jobs.append(
            RankJob(history, [str(row.target_item_id)], profiles.get(row.user_id), int(row.target_ts))
        )
        labels.append(int(row.label))
    return jobs, np.asarray(labels)


def ctr_auc(rec: Recommender, jobs: list[RankJob], labels: np.ndarray, batch_size: int = 256) -> float:
    if len(np.unique(labels)) < 2:
        return float("nan")
    probs = np.concatenate(
        [np.concatenate(rec.rank_batch(jobs[s : s + batch_size])) for s in range(0, len(jobs), batch_size)]
    )
    return float(ctr_metrics(labels, probs)["auc"])


def evaluate_same_data(
    challenger: Recommender,
    champion: Recommender,
    data: RecData,
    ctr_examples: pd.DataFrame,
    log: Callable[[str], None] = lambda _: None,
    max_users: int | None = None,
    seed: int = 0,
) -> SameDataEvaluation:
    """Both bundles' gated metrics (:data:`~m6rec.evaluation.offline.GATE_METRICS`) on the current valid
    split, over the events and candidate items both of them know; with ``max_users``, on a seeded sample
    of that many users (coverage is then counted within the sample)."""
    current = [str(i) for i in data.items["item_id"]]
    known = set(current) & set(map(str, champion.index)) & set(map(str, challenger.index))
    candidates = [i for i in current if i in known]
    profiles = dict(zip(data.users["user_id"], data.profiles(), strict=True))
    valid = data.events[data.events["split"] == "valid"]
    users = sample_users(valid["user_id"].astype(str), max_users, seed)
    if users is not None:
        valid = valid[valid["user_id"].astype(str).isin(users)]
        ctr_examples = ctr_examples[ctr_examples["user_id"].astype(str).isin(users)]
    events = valid_retrieval_events(data, known, users)
    all_valid = len(valid)
    result = SameDataEvaluation(
        events=len(events),
        coverage=len(events) / all_valid if all_valid else 0.0,
        catalogue_overlap=len(candidates) / len(current) if current else 0.0,
    )
    jobs, labels = ctr_jobs(ctr_examples, known, profiles)
    result.ctr_examples = len(jobs)
    for side, rec in (("challenger", challenger), ("champion", champion)):
        metrics = getattr(result, side)
        if events and len(candidates) > 10:
            metrics[GATE_METRICS["retrieval"]] = retrieval_ndcg(rec, events, candidates, profiles)
        if jobs:
            auc = ctr_auc(rec, jobs, labels)
            if not np.isnan(auc):
                metrics[GATE_METRICS["ctr"]] = auc
        log(f"{side} on the same {len(events)} valid events / {len(jobs)} CTR examples: {metrics}")
    return result


def clears_floor(
    challenger_valid: Mapping[str, float], valid_baselines: Mapping[str, Mapping[str, float]]
) -> tuple[bool, list[str]]:
    """Whether the challenger beats every baseline of its run on the valid split, per gated task; the
    comparisons as text (the metadata shows them)."""
    lines, ok = [], True
    for task, metric in GATE_METRICS.items():
        if metric not in challenger_valid:
            continue
        for name, value in (valid_baselines.get(task) or {}).items():
            beats = challenger_valid[metric] > value
            ok &= beats
            lines.append(
                f"{metric} {challenger_valid[metric]:.4f} {'>' if beats else '<='} {name} {value:.4f}"
            )
    return ok, lines


def decide(
    *,
    challenger_valid: Mapping[str, float],
    valid_baselines: Mapping[str, Mapping[str, float]],
    same_data: SameDataEvaluation | None,
    champion_error: str | None,
    has_champion: bool,
    tolerance: float = 0.0,
    min_coverage: float = MIN_COVERAGE,
    explanations: Mapping[str, Any] | None = None,
    max_false_explanations: float = MAX_FALSE_EXPLANATIONS,
) -> GateDecision:
    """The gate's rule, from recorded numbers only (so the metadata reproduces it). ``explanations``: the
    challenger's explainer check (``false_statement_rate``, ``n``), None without a language-model
    explainer."""
    if explanations is not None:
        rate = float(explanations["false_statement_rate"])
        if not rate <= max_false_explanations:  # NaN (nothing checked) fails too
            return GateDecision(
                False,
                "explanations fail the check",
                f"the challenger's explainer stated something false in {rate:.1%} of "
                f"{explanations.get('n', '?')} checked valid explanations (> {max_false_explanations:.1%})",
            )
    if not has_champion:
        return GateDecision(True, "first model", "no champion yet")
    if champion_error is None and same_data is not None and same_data.coverage < min_coverage:
        champion_error = (
            f"it knows the items of {same_data.coverage:.0%} of the current valid events "
            f"(< {min_coverage:.0%})"
        )
    if champion_error is not None or same_data is None:
        why = champion_error or "it could not be scored"
        floor_ok, floor = clears_floor(challenger_valid, valid_baselines)
        if floor_ok:
            return GateDecision(
                True,
                "champion cannot serve",
                f"champion cannot serve the current data ({why}); the challenger clears the floor: "
                + ("; ".join(floor) or "no baselines in this run"),
            )
        return GateDecision(
            False,
            "challenger below floor",
            f"champion cannot serve the current data ({why}), but the challenger does not clear the "
            "floor: " + "; ".join(floor),
        )
    shared = [k for k in same_data.champion if k in same_data.challenger]
    if not shared:
        return GateDecision(True, "same data", "no gated metric could be computed for both on the same data")
    worse = [
        f"{k}: {same_data.challenger[k]:.4f} < {same_data.champion[k]:.4f} - {tolerance}"
        for k in shared
        if same_data.challenger[k] < same_data.champion[k] - tolerance
    ]
    detail = f"on the same {same_data.events} valid events ({same_data.coverage:.0%} of them)"
    if worse:
        return GateDecision(False, "same data", f"challenger is worse {detail} on " + "; ".join(worse))
    return GateDecision(True, "same data", f"challenger is not worse {detail} on {', '.join(shared)}")


def metrics_table(same_data: SameDataEvaluation) -> str:
    """Both models on the same data, as the markdown table of the gate's metadata."""
    keys = sorted(set(same_data.challenger) | set(same_data.champion))
    lines = ["| metric (same valid events) | challenger | champion |", "|---|---|---|"]
    for k in keys:
        ch, cp = same_data.challenger.get(k, float("nan")), same_data.champion.get(k, float("nan"))
        lines.append(f"| {k} | {ch:.4f} | {cp:.4f} |")
    return "\n".join(lines)
