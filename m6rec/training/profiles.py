"""Named training profiles: what each model trains with, from a seconds-long smoke test to a GPU run.

- ``smoke``: tiny random-weight encoder, a few dozen steps (tests, CI).
- ``default``: the packaged MiniLM run once per segment and cached; the towers, ranker heads and
  adapters train over the cached states, each inside a wall-clock budget (the CPU demo).
- ``full``: the same models, wider, trained to convergence without a time budget, plus the token-level
  ranker: the encoder itself fine-tuned as a late-interaction scorer over the behaviour text (a GPU job).

``smoke`` trains a tiny token-level ranker too, so tests cover that path end to end.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from m6rec.models.late_interaction import TokenRankerConfig
from m6rec.models.ranking import RankerConfig
from m6rec.models.retrieval import RetrieverConfig


@dataclass(frozen=True)
class TrainingProfile:
    """What every model of one pipeline run trains with (the ``model_settings.profile`` resource setting)."""

    name: str
    encoder: str
    retriever: RetrieverConfig
    ranker: RankerConfig
    retriever_steps: int
    ranker_steps: int
    eval_every: int
    patience: int
    budget_s: float | None  # per model
    batch_size: int = 64
    ranker_batch_size: int = 256
    sasrec_budget_s: float | None = None
    baselines: tuple[str, ...] = ("pop", "itemknn", "sasrec")
    token_ranker: TokenRankerConfig | None = None  # None: no token-level fine-tuning (CPU profiles)
    extra: dict = field(default_factory=dict)


PROFILES = {
    "smoke": TrainingProfile(
        name="smoke",
        encoder="tiny",
        retriever=RetrieverConfig(dim=32, heads=2, max_len=20),
        ranker=RankerConfig(dim=32, heads=2),
        retriever_steps=30,
        ranker_steps=30,
        eval_every=15,
        patience=2,
        budget_s=60,
        sasrec_budget_s=10,
        baselines=("pop", "itemknn"),
        token_ranker=TokenRankerConfig(
            top_k=1, history=5, max_length=32, lr=1e-3, batch_size=8, max_steps=20, max_train_examples=400
        ),
    ),
    "default": TrainingProfile(
        name="default",
        encoder="minilm",
        retriever=RetrieverConfig(),
        ranker=RankerConfig(),
        retriever_steps=5000,
        ranker_steps=20000,
        eval_every=100,
        patience=5,
        budget_s=300,
        sasrec_budget_s=180,
    ),
    "full": TrainingProfile(
        name="full",
        encoder="minilm",
        retriever=RetrieverConfig(dim=256, layers=3, heads=8, max_len=100),
        ranker=RankerConfig(dim=256, layers=3, heads=8),
        retriever_steps=50_000,
        ranker_steps=50_000,
        eval_every=250,
        patience=10,
        budget_s=None,
        batch_size=128,
        ranker_batch_size=1024,
        token_ranker=TokenRankerConfig(top_k=1, history=10, max_length=64, lr=5e-5, batch_size=32),
    ),
}


def get_profile(name: str, **overrides) -> TrainingProfile:
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}")
    return replace(PROFILES[name], **overrides) if overrides else PROFILES[name]
