"""Tiny model bundles for tests (random weights, synthetic catalogue): built in well under a second.

``build_tiny_bundle(path)`` writes a bundle with :func:`m6rec.serving.bundle.save_bundle` exactly as the
training pipeline does; ``explainer=True`` adds a tiny random causal LM (built-in tokenizer, no files
needed) as ``explainer/``. The ``tiny_bundle`` fixture is module-scoped so a test module builds it once.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from m6rec.models.backbones import builtin_causal_tokenizer, tiny_causal_lm, tiny_encoder
from m6rec.models.ranking import RankerConfig, new_ranker
from m6rec.models.retrieval import RetrieverConfig, new_retriever
from m6rec.models.segments import build_segment_cache
from m6rec.serving.bundle import save_bundle
from m6rec.text.textify import TextStyle
from tests.synthetic import synthetic_rec_data

TINY_METRICS = {"ndcg@10": 0.5, "recall@10": 0.75, "auc": 0.61}
MODEL_CARD = "# m6rec tiny test model\n\nRandom weights on a synthetic catalogue; for tests only.\n"
EVALUATION = '{"ndcg@10": 0.5, "baselines": {"pop": {"ndcg@10": 0.25}}}\n'


def build_tiny_bundle(path: str | Path, *, explainer: bool = False, seed: int = 0) -> Path:
    """Write a tiny bundle (40 items ``i0``..``i39`` titled "Movie number N", genres cycling through
    Action/Comedy/Drama/Horror) to ``path``, with a model card and an evaluation summary beside it."""
    path = Path(path)
    data = synthetic_rec_data()
    encoder = tiny_encoder(seed=seed)
    cache = build_segment_cache(encoder, data)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        retriever = new_retriever(RetrieverConfig(dim=32, heads=2, max_len=8), data, cache).eval()
        ranker = new_ranker(RankerConfig(dim=32, heads=2), data, cache).eval()
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
        ranker=ranker,
        style=TextStyle(with_popularity=True),
        metrics=dict(TINY_METRICS),
        explainer_dir=explainer_dir,
    )
    (path / "MODEL_CARD.md").write_text(MODEL_CARD, encoding="utf-8")
    (path / "evaluation.json").write_text(EVALUATION, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny bundle with a tiny explainer LM, built once per test module."""
    return build_tiny_bundle(tmp_path_factory.mktemp("bundle") / "model", explainer=True)
