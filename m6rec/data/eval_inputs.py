"""Per-user histories and targets for full-ranking evaluation, shared by every model and baseline.

The protocol is RecBole's time-ordered leave-one-out (`LS: valid_and_test, order: TO`): models train
on the train split; a valid target is ranked after the user's train events, a test target after
train + valid events. Held-out cold-item events (split 'cold') belong to no history: they exist only
for the zero-shot evaluation.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

HISTORY_SPLITS = {"valid": ("train",), "test": ("train", "valid")}
"""The splits whose events form a user's history when a target of the given split is ranked."""


@dataclass(frozen=True)
class EvalInputs:
    """What every model gets for one evaluated split (all item ids are catalogue ``item_idx``)."""

    split: str
    n_items: int
    user_ids: list[str]
    """Users with a target in ``split``, in sorted order; row i of every array below is user i."""
    histories: list[np.ndarray]
    """Each user's history in time order: the model input, and the items excluded from ranking."""
    targets: np.ndarray
    """The held-out item per user."""
    train_user_ids: list[str]
    train_sequences: list[np.ndarray]
    """Train-split events of every user with any, in time order: what models are fitted on."""


def _sequences(frame: pd.DataFrame) -> tuple[list[str], list[np.ndarray]]:
    """Split a frame sorted by (user_id, position) into one item_idx array per user."""
    if frame.empty:
        return [], []
    users = frame["user_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    items = frame["item_idx"].to_numpy(dtype=np.int64)
    return [str(u) for u in users[starts]], np.split(items, starts[1:])


def build_eval_inputs(
    splits: pd.DataFrame,
    n_items: int,
    item_index: Mapping[str, int],
    split: str = "test",
    users: Collection[str] | None = None,
) -> EvalInputs:
    """Build histories, targets and train sequences from ``marts.splits`` rows for ``split``; with
    ``users``, only those users' targets are ranked (a sampled evaluation; fitting still sees every
    user's train events).

    ``splits`` needs columns user_id, item_id, position and split; ``item_index`` maps item_id to
    item_idx in [0, n_items). Unknown items fail loudly rather than being dropped, because a silently
    shorter history would change the ranking protocol.
    """
    if split not in HISTORY_SPLITS:
        raise ValueError(f"split must be one of {sorted(HISTORY_SPLITS)}, got {split!r}")
    missing = {"user_id", "item_id", "position", "split"} - set(splits.columns)
    if missing:
        raise ValueError(f"splits frame lacks columns {sorted(missing)}")
    frame = splits.loc[
        splits["split"].isin(("train", "valid", "test")), ["user_id", "item_id", "position", "split"]
    ]
    frame = frame.assign(user_id=frame["user_id"].astype(str), item_idx=frame["item_id"].map(item_index))
    unknown = frame.loc[frame["item_idx"].isna(), "item_id"].unique()
    if len(unknown):
        raise KeyError(f"{len(unknown)} item ids are not in the item index, e.g. {list(unknown[:5])}")
    idx = frame["item_idx"].astype(np.int64)
    if len(idx) and (idx.min() < 0 or idx.max() >= n_items):
        raise ValueError(f"item_idx outside [0, {n_items}): min {idx.min()}, max {idx.max()}")
    frame = frame.sort_values(["user_id", "position"], kind="stable")

    target_rows = frame[frame["split"] == split]
    if users is not None:
        target_rows = target_rows[target_rows["user_id"].isin(set(users))]
    if target_rows["user_id"].duplicated().any():
        raise ValueError(f"some users have more than one {split!r} event; expected leave-one-out splits")
    targets = dict(zip(target_rows["user_id"], target_rows["item_idx"].astype(np.int64), strict=True))
    hist_users, hist_seqs = _sequences(frame[frame["split"].isin(HISTORY_SPLITS[split])])
    by_user = dict(zip(hist_users, hist_seqs, strict=True))
    user_ids = sorted(targets)
    empty = np.zeros(0, dtype=np.int64)
    train_user_ids, train_sequences = _sequences(frame[frame["split"] == "train"])
    return EvalInputs(
        split=split,
        n_items=n_items,
        user_ids=user_ids,
        histories=[by_user.get(u, empty) for u in user_ids],
        targets=np.array([targets[u] for u in user_ids], dtype=np.int64),
        train_user_ids=train_user_ids,
        train_sequences=train_sequences,
    )
