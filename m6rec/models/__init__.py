"""The models.

* :mod:`~m6rec.models.backbones` — packaged MiniLM and SmolLM2 loaded offline; tiny random backbones for tests
* :mod:`~m6rec.models.segments` — what retrieval and ranking share: the cached segment states of every
  item and profile, the segment embeddings and the feature buckets (rating, time gap, popularity)
* :mod:`~m6rec.models.retrieval` — the two-tower retriever over cached segments (contrastive)
* :mod:`~m6rec.models.ranking` — the pooled-segment CTR ranker (the CPU profiles)
* :mod:`~m6rec.models.late_interaction` — the token-level late-interaction scorer and its fine-tuning
  (the ``full`` profile), with the cached question states of every item
* :mod:`~m6rec.models.generation` — the causal LM as a recommender: Yes/No scoring, explanations,
  zero-shot ranking
* :mod:`~m6rec.models.tuning` — option tuning, LoRA and full fine-tuning
* :mod:`~m6rec.models.baselines` — Pop, ItemKNN and SASRec, evaluated on the same splits
"""
