"""The model bundle: one folder that holds everything serving needs, and the manifest that is the
train/serve contract (every value training depended on is read by serving from it, nowhere else).

Layout (one folder, written atomically by :func:`save_bundle`):
  manifest.json     which model serves each task (kind, config, evaluation row), encoder, text styles,
                    the data contract (``contract``: dbt vars, like threshold, CTR history length, the
                    fingerprint of the marts trained on; m6rec.data.marts.DataContract), versions, metrics
  items.parquet     the catalogue the models score (item_idx order)
  segments.pt       the items' and profiles' sentence embeddings (SegmentCache): free-text queries and
                    the frozen-feature models
  lm_segments.pt    when a tuned-LM model serves: the lower-layer segment states it reads
                    (LowerLayerCache)
  retriever.pt      the serving retriever's weights (m6rec.models.registry rebuilds it from its kind)
  ranker.pt         the serving CTR model's weights
  encoder/          the text encoder (HF folder), for free-text queries and new users' profiles
  explainer/        optional: a causal LM checkpoint for "... because" explanations
  token_ranker/     optional (``full`` profile): the token-level late-interaction ranker, with the
                    cached lower-layer states of every item's question segment; ranks instead of
                    ranker.pt when present
  index/            catalogues of ``IndexConfig.exact_below`` items or more: the ANN index over each
                    item's retriever vector and sentence embedding (free-text queries), concatenated,
                    with its measured recall (m6rec.serving.item_index); smaller catalogues are
                    scanned exactly and have no index/
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from m6rec.data.marts import RecData
from m6rec.files import staged
from m6rec.models.backbones import Encoder
from m6rec.models.late_interaction import CandidateStates, load_token_ranker
from m6rec.models.lm_layers import LowerLayerCache
from m6rec.models.retrieval import Window, collate, query_windows
from m6rec.models.segments import SegmentCache
from m6rec.serving.item_index import IndexConfig, build_if_large, index_settings
from m6rec.text.textify import TextStyle

BUNDLE_FORMAT = 3  # 3: the manifest's ``contract``
ITEM_COLUMNS = [
    "item_id",
    "item_idx",
    "title",
    "release_year",
    "genres",
    "attributes",
    "n_train_interactions",
    "mean_train_rating",
    "popularity_rank",
    "popularity_percentile",
    "is_cold",
    "watched_next_ids",
]


def save_bundle(
    path: str | Path,
    *,
    data: RecData,
    cache: SegmentCache,
    encoder: Encoder,
    retriever: nn.Module,
    retriever_spec: dict[str, Any],
    ranker: nn.Module,
    ranker_spec: dict[str, Any],
    style: TextStyle,
    segment_style: TextStyle | None = None,
    lm_cache: LowerLayerCache | None = None,
    metrics: dict[str, Any] | None = None,
    explainer_dir: str | Path | None = None,
    explainer_check: dict[str, Any] | None = None,
    token_ranker_dir: str | Path | None = None,
    index_config: IndexConfig | None = None,
    probe_users: np.ndarray | None = None,
) -> Path:
    """Write every artefact into a temp folder beside ``path``, then swap it in. ``*_spec`` is the
    model's ``{"kind", "config"}`` (:func:`m6rec.models.registry.describe`) plus its evaluation row
    ``"name"``; ``explainer_check`` the factuality check of the explainer's explanations (what the
    promotion gate and ``/model_info`` read). With a token-level ranker, every item's question segment
    goes through its lower layers here, once. A catalogue large enough for an ANN index gets its search
    effort tuned on user vectors like the served ones: ``probe_users`` (``[n, dim]``) when given, else
    the retriever's vectors of the validation users in ``data`` (:func:`validation_user_vectors`)."""
    with staged(path) as tmp:
        tmp.mkdir()
        data.items[ITEM_COLUMNS].to_parquet(tmp / "items.parquet", index=False)
        cache.save(tmp / "segments.pt")
        if lm_cache is not None:
            lm_cache.save(tmp / "lm_segments.pt")
        torch.save(retriever.state_dict(), tmp / "retriever.pt")
        torch.save(ranker.state_dict(), tmp / "ranker.pt")
        encoder.model.save_pretrained(tmp / "encoder")
        encoder.tokenizer.save_pretrained(tmp / "encoder")
        if explainer_dir is not None:
            shutil.copytree(explainer_dir, tmp / "explainer")
        token_config = None
        if token_ranker_dir is not None:
            shutil.copytree(token_ranker_dir, tmp / "token_ranker")
            scorer, token_config = load_token_ranker(tmp / "token_ranker")
            states = CandidateStates.build(scorer, data.item_texts(), style, token_config.max_length)
            states.save(tmp / "token_ranker" / "candidates.pt")
        index_config = index_config or IndexConfig()
        spaces = [serving_item_vectors(retriever), cache.item_states.float().cpu().numpy()]
        if probe_users is None and len(spaces[0]) >= index_config.exact_below and len(data.events):
            probe_users = validation_user_vectors(retriever, data, index_config.recall_queries)
        index = build_if_large(spaces, index_config, probe_users)
        if index is not None:
            index.save(tmp / "index")
        manifest = {
            "format": BUNDLE_FORMAT,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "encoder": encoder.name,
            "style": asdict(style),
            "contract": data.contract.to_dict(),
            "segment_style": asdict(segment_style or style),
            "retriever": retriever_spec,
            "ranker": ranker_spec,
            "token_ranker": asdict(token_config) if token_config else None,
            "n_items": int(len(data.items)),
            "item_index": {  # "ann": None = exact scan
                "settings": index_settings(index_config),
                "ann": index.info if index else None,
            },
            "explainer": explainer_dir is not None,
            "explainer_check": explainer_check if explainer_dir is not None else None,
            "metrics": metrics or {},
            "versions": {p: package_version(p) for p in ("m6rec", "torch", "transformers")},
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, default=float))
    return Path(path)


@torch.no_grad()
def serving_item_vectors(retriever: nn.Module) -> np.ndarray:
    """The unit item vectors serving scores against, as the service computes them (eval mode)."""
    was_training = retriever.training
    retriever.eval()
    try:
        return retriever.item_vectors().float().cpu().numpy()
    finally:
        retriever.train(was_training)


def validation_user_vectors(retriever: nn.Module, data: RecData, n: int, seed: int = 0) -> np.ndarray:
    """The retriever's unit user vectors over the histories before up to ``n`` seeded validation
    events (each a served request's history: the last ``max_len`` events, the user's profile)."""
    holdout = data.holdout("valid")
    if holdout.empty:
        return np.zeros((0, 0), dtype=np.float32)
    users = holdout["user_id"].astype(str).unique()
    picked = np.random.default_rng(seed).choice(users, size=min(n, len(users)), replace=False)
    windows = query_windows(data, "valid", retriever.config.max_len, users=set(picked))[0][:n]
    return unit_user_vectors(retriever, windows)


@torch.no_grad()
def unit_user_vectors(retriever: nn.Module, windows: Sequence[Window], batch_size: int = 256) -> np.ndarray:
    """``[len(windows), dim]``: the retriever's unit user vector after each window (in eval mode; the
    item tower runs once for all of them)."""
    if not windows:
        return np.zeros((0, 0), dtype=np.float32)
    was_training = retriever.training
    retriever.eval()
    try:
        device = next(retriever.parameters()).device
        raw = retriever.item_vectors(normalize=False)
        out = []
        for start in range(0, len(windows), batch_size):
            batch = {k: v.to(device) for k, v in collate(windows[start : start + batch_size]).items()}
            out.append(F.normalize(retriever.user_vectors(batch, raw), dim=-1).float().cpu().numpy())
    finally:
        retriever.train(was_training)
    return np.concatenate(out)


def package_version(package: str) -> str:
    """The installed version of a distribution, or "not installed" (e.g. m6rec inside a Bento's src/)."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"
