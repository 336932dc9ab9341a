"""The m6rec BentoML service: ``bentoml serve m6rec.serving.service:M6Rec``.

One ``@bentoml.service`` class (:class:`M6Rec`) loads the model bundle once in ``__init__`` (CUDA when
available, else CPU) from the BentoML model store — ``m6rec:latest`` unless ``$M6REC_MODEL_TAG`` names
another tag — and exposes JSON endpoints (all ``POST``):

* ``/recommend``      history of item ids (optional ratings / timestamps) and/or a free-text ``query``
                      -> top-``k`` items with scores and optional explanations
* ``/recommend_batch`` an array of ``/recommend`` bodies -> one answer (or 400 entry) each; adaptive
                      batching merges concurrent calls into one model pass
* ``/rank``           history + candidate ids -> like probabilities, in the candidates' order
* ``/explain``        history + one item id -> explanation text, its source, and the behaviour text
* ``/similar_items``  one item id -> the ``k`` most similar catalogue items
* ``/model_info``     bundle manifest (metrics, configs), model tag and library versions

plus BentoML's built-in ``/livez``, ``/readyz``, ``/metrics`` and the OpenAPI docs at ``/``.

Every request body is a strict pydantic model (:mod:`m6rec.serving.schemas`); every client mistake,
including ids the catalogue does not have, is an HTTP 400 naming the field. The request handling lives
in :class:`~m6rec.serving.engine.Engine` (no BentoML involved); :class:`M6Rec` only wires it to BentoML.
"""

import logging
import os
from typing import Any

import bentoml
import torch

from m6rec.serving.engine import Engine, default_threads, default_workers, env_int
from m6rec.serving.middleware import JsonBodyGuard
from m6rec.serving.packaging import DEFAULT_MODEL_TAG, MODEL_TAG_ENV
from m6rec.serving.schemas import (
    MAX_BATCH,
    BatchItem,
    ExplainRequest,
    ExplainResponse,
    ModelInfo,
    RankRequest,
    RankResponse,
    RecommendBatch,
    RecommendRequest,
    RecommendResponse,
    SimilarItemsRequest,
    SimilarItemsResponse,
)

logger = logging.getLogger(__name__)


def _pick_device() -> str:
    wanted = os.environ.get("M6REC_DEVICE", "").strip()
    if wanted:
        return wanted
    return "cuda" if torch.cuda.is_available() else "cpu"


def _packaged_model() -> Any:
    """When serving a built Bento: the exact model version it packaged. (BentoML pins only Hugging Face
    models on load; a ``m6rec:latest`` reference would otherwise pick the newest model in a local store.)"""
    bento = getattr(M6Rec, "bento", None)
    if bento is None:
        return None
    wanted = M6Rec.inner.bundle.tag.name
    for info in bento.info.services:
        if info.name == M6Rec.name:
            for model in info.models:
                if model.tag.name == wanted:
                    return bentoml.models.get(model.tag)
    return None


WORKERS = env_int("M6REC_WORKERS", default_workers())


@bentoml.service(
    name="m6rec",
    traffic={"timeout": 120, "max_concurrency": 64},
    # Worker processes, each with the whole model (M6REC_WORKERS, default: one per CPU core, at most 4;
    # torch threads per worker: M6REC_TORCH_THREADS, default: the cores shared among the workers).
    # docs/benchmarks.md has latency figures for 1 and 2 workers on 2 cores.
    workers=WORKERS,
)
class M6Rec:
    """m6rec recommendations over HTTP (see the module docstring for the endpoints)."""

    bundle = bentoml.models.BentoModel(os.environ.get(MODEL_TAG_ENV) or DEFAULT_MODEL_TAG)

    def __init__(self) -> None:
        torch.set_num_threads(env_int("M6REC_TORCH_THREADS", default_threads(WORKERS)))
        stored = _packaged_model() or self.bundle  # resolved from the model store once, here
        device = _pick_device()
        self.engine = Engine(
            stored.path, device=device, model_tag=str(stored.tag), model_labels=dict(stored.info.labels)
        )
        logger.info(
            "m6rec model %s loaded on %s (%d items, explainer %s)",
            stored.tag,
            device,
            self.engine.n_items,
            self.engine.explainer_status,
        )

    @bentoml.api
    def recommend(self, request: RecommendRequest, /) -> RecommendResponse:
        """Top-k items for a history of item ids and/or a free-text query."""
        return self.engine.recommend(request)

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH, max_latency_ms=60_000)
    def recommend_batch(self, requests: RecommendBatch, /) -> list[BatchItem]:
        """Several recommend requests in one body (a JSON array), one answer each in the same order:
        ``{"status": 200, "result": ...}`` or ``{"status": 400, "error": ...}``. Adaptive batching merges
        concurrent calls into one model pass, so clients sending one-element arrays share it too."""
        return self.engine.recommend_many(requests)

    @bentoml.api
    def rank(self, request: RankRequest, /) -> RankResponse:
        """Like probabilities of the candidates (in the given order) for this history."""
        return self.engine.rank(request)

    @bentoml.api
    def explain(self, request: ExplainRequest, /) -> ExplainResponse:
        """Why this user would like this item, with the behaviour text the models read."""
        return self.engine.explain(request)

    @bentoml.api
    def similar_items(self, request: SimilarItemsRequest, /) -> SimilarItemsResponse:
        """The k catalogue items closest to one item (retriever item vectors, cosine)."""
        return self.engine.similar_items(request)

    @bentoml.api
    def model_info(self) -> ModelInfo:
        """The served model: tag, manifest metrics and configs, explainer status, versions, limits."""
        return self.engine.model_info()


M6Rec.add_asgi_middleware(JsonBodyGuard, paths=frozenset({"/recommend_batch"}))
