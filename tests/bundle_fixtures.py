"""Tiny model bundles for tests (random weights, synthetic catalogue): built in well under a second.

``build_tiny_bundle(path)`` writes a bundle with :func:`m6rec.serving.bundle.save_bundle` exactly as the
training pipeline does; ``explainer=True`` adds a tiny random causal LM (built-in tokenizer, no files
needed) as ``explainer/``. The ``tiny_bundle`` fixture is module-scoped so a test module builds it once.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from m6rec.data.marts import DataContract
from m6rec.models.backbones import builtin_causal_tokenizer, tiny_causal_lm, tiny_encoder
from m6rec.models.lm_layers import build_lower_cache
from m6rec.models.lm_ranking import LMRankerConfig
from m6rec.models.lm_retrieval import LMRetrieverConfig
from m6rec.models.ranking import RankerConfig
from m6rec.models.registry import build_model, describe, kind_of
from m6rec.models.retrieval import RetrieverConfig
from m6rec.serving.bundle import save_bundle
from m6rec.serving.item_index import IndexConfig
from m6rec.serving.recommender import HistoryEvent, RecommendQuery
from m6rec.text.textify import Profile, TextStyle
from tests.synthetic import synthetic_rec_data

TINY_METRICS = {"ndcg@10": 0.5, "recall@10": 0.75, "auc": 0.61}
MODEL_CARD = "# m6rec tiny test model\n\nRandom weights on a synthetic catalogue; for tests only.\n"
EVALUATION = '{"ndcg@10": 0.5, "baselines": {"pop": {"ndcg@10": 0.25}}}\n'


def tiny_models(kind: str = "lm", seed: int = 0):
    """The synthetic data, tiny encoder, caches and untrained serving models a tiny bundle holds:
    ``(data, encoder, cache, lm_cache, specs, retriever, ranker)``; deterministic in ``seed``.
    ``kind="lm"``: the tuned-LM retriever and CTR scorer (the pipeline's usual winners); ``"frozen"``: the
    frozen-feature retriever and the segment ranker."""
    data = synthetic_rec_data()
    encoder = tiny_encoder(seed=seed)
    style = TextStyle(with_popularity=True, with_watched_next=True)
    lm_cache = build_lower_cache(encoder, data, style, split=2)
    cache = lm_cache.sentences()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "lm":
            configs = (LMRetrieverConfig(dim=32, item_hidden=64, max_len=8), LMRankerConfig())
        else:
            configs = (RetrieverConfig(dim=32, heads=2, max_len=8), RankerConfig(dim=32, heads=2))
        specs = [describe(kind_of(config), config) for config in configs]
        retriever, ranker = (build_model(spec, data, cache, lm_cache, encoder.model).eval() for spec in specs)
    return data, encoder, cache, lm_cache, specs, retriever, ranker


# what the pipeline's explainer asset records: the service explains with the same prompt and decoding
EXPLAINER_CHECK = {
    "split": "valid",
    "n": 4,
    "false_statement_rate": 0.0,
    "evidence_rate": 0.5,
    "max_events": 5,
    "decoding": "grounded",
}


def build_tiny_bundle(
    path: str | Path,
    *,
    explainer: bool = False,
    seed: int = 0,
    kind: str = "lm",
    contract: DataContract | None = None,
    index_config: IndexConfig | None = None,
) -> Path:
    """Write a tiny bundle (40 items ``i0``..``i39`` titled "Movie number N", genres cycling through
    Action/Comedy/Drama/Horror) of :func:`tiny_models` to ``path``, with a model card and an evaluation
    summary beside it. ``contract``: the marts' build values to record instead of the defaults;
    ``index_config``: e.g. ``IndexConfig(exact_below=1)`` to ship ANN graphs even for 40 items."""
    path = Path(path)
    data, encoder, cache, lm_cache, specs, retriever, ranker = tiny_models(kind, seed)
    if contract is not None:
        data = dataclasses.replace(data, contract=contract)
    explainer_dir = None
    if explainer:
        lm = tiny_causal_lm(seed=seed, tokenizer=builtin_causal_tokenizer())
        explainer_dir = path.with_name(path.name + "-explainer")
        lm.model.save_pretrained(explainer_dir)
        lm.tokenizer.save_pretrained(explainer_dir)
    save_bundle(
        path,
        data=data,
        cache=cache,
        encoder=encoder,
        retriever=retriever,
        retriever_spec={**specs[0], "name": f"tiny {specs[0]['kind']}"},
        ranker=ranker,
        ranker_spec={**specs[1], "name": f"tiny {specs[1]['kind']}"},
        style=TextStyle(with_popularity=True),
        segment_style=TextStyle(with_popularity=True, with_watched_next=True),
        lm_cache=lm_cache if kind == "lm" else None,
        metrics=dict(TINY_METRICS),
        explainer_dir=explainer_dir,
        explainer_check=EXPLAINER_CHECK if explainer else None,
        index_config=index_config,
    )
    (path / "MODEL_CARD.md").write_text(MODEL_CARD, encoding="utf-8")
    (path / "evaluation.json").write_text(EVALUATION, encoding="utf-8")
    return path


def mixed_queries() -> list[RecommendQuery]:
    """Recommend queries over a tiny bundle's catalogue that take every path: a short history, a long
    one with a profile, a free-text query alone, retrieval only (``rerank=0``)."""
    return [
        RecommendQuery([HistoryEvent("i1", 5.0, 100), HistoryEvent("i2", None, 200)], k=4),
        RecommendQuery(
            [HistoryEvent(f"i{i}", float(1 + i % 5), 100 * i) for i in range(3, 15)],
            k=6,
            profile=Profile(age=30, gender="M", occupation="writer"),
        ),
        RecommendQuery([], k=3, query="Movie number 7"),
        RecommendQuery([HistoryEvent("i9", 4.0)], k=2, rerank=0),
    ]


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny bundle with a tiny explainer LM, built once per test module."""
    return build_tiny_bundle(tmp_path_factory.mktemp("bundle") / "model", explainer=True)
