"""Every trainable model kind by name, and how to rebuild one from its saved config.

The pipeline trains several retrievers and CTR scorers side by side and serves the best of each task;
what it writes (and what a bundle ships) is ``kind`` + ``config`` + a state dict. :func:`build_model`
turns a kind and its config back into the module, given the caches and, for the kinds that tune the
encoder's own top layers, the encoder they were copied from. One table, used by training, evaluation
and serving alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from m6rec.data.marts import RecData
from m6rec.models.lm_layers import LowerLayerCache
from m6rec.models.lm_ranking import LMRankerConfig, new_lm_ranker
from m6rec.models.lm_retrieval import LMRetrieverConfig, new_lm_retriever
from m6rec.models.ranking import RankerConfig, new_ranker
from m6rec.models.retrieval import RetrieverConfig, new_retriever
from m6rec.models.segments import SegmentCache


@dataclass(frozen=True)
class ModelKind:
    task: str  # "retrieval" | "ctr"
    config_class: type
    uses_lm_cache: bool  # reads the lower-layer cache and tunes the encoder's top layers
    build: Callable[[Any, RecData, SegmentCache, LowerLayerCache | None, nn.Module | None], nn.Module]


MODEL_KINDS: dict[str, ModelKind] = {
    "frozen_retriever": ModelKind(
        "retrieval", RetrieverConfig, False, lambda cfg, data, cache, lm, enc: new_retriever(cfg, data, cache)
    ),
    "segment_ranker": ModelKind(
        "ctr", RankerConfig, False, lambda cfg, data, cache, lm, enc: new_ranker(cfg, data, cache)
    ),
    "lm_retriever": ModelKind(
        "retrieval",
        LMRetrieverConfig,
        True,
        lambda cfg, data, cache, lm, enc: new_lm_retriever(cfg, data, lm, enc),
    ),
    "lm_ranker": ModelKind(
        "ctr", LMRankerConfig, True, lambda cfg, data, cache, lm, enc: new_lm_ranker(cfg, data, lm, enc)
    ),
}


def kind_of(config: Any) -> str:
    """The kind whose config class ``config`` is."""
    for name, kind in MODEL_KINDS.items():
        if type(config) is kind.config_class:
            return name
    raise TypeError(f"no model kind has config class {type(config).__name__}")


def describe(kind: str, config: Any) -> dict[str, Any]:
    """What to save beside a model's weights: ``{"kind": ..., "config": {...}}``."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {sorted(MODEL_KINDS)}")
    return {"kind": kind, "config": asdict(config)}


def build_model(
    spec: dict[str, Any],
    data: RecData,
    cache: SegmentCache,
    lm_cache: LowerLayerCache | None = None,
    encoder_model: nn.Module | None = None,
) -> nn.Module:
    """A fresh module of ``spec["kind"]`` with ``spec["config"]`` (load its state dict next)."""
    kind = MODEL_KINDS.get(spec.get("kind", ""))
    if kind is None:
        raise ValueError(f"unknown model kind {spec.get('kind')!r}; choose one of {sorted(MODEL_KINDS)}")
    if kind.uses_lm_cache and (lm_cache is None or encoder_model is None):
        raise ValueError(f"a {spec['kind']} needs the lower-layer cache and the encoder it was tuned from")
    return kind.build(kind.config_class(**spec["config"]), data, cache, lm_cache, encoder_model)


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """The evaluation's parameter columns for any trained model: the tuned-LM kinds count themselves
    (``lm_trainable_parameters``: pretrained weights, or adapters on them, that receive gradients);
    the frozen-feature kinds tune no LM weight."""
    counts = getattr(model, "parameter_counts", None)
    if counts is not None:
        return counts()
    return {
        "lm_trainable_parameters": 0,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total_parameters": sum(p.numel() for p in model.parameters()),
    }
