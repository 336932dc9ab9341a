"""The models.

* :mod:`~m6rec.models.backbones` — packaged MiniLM and SmolLM2 loaded offline; tiny random backbones for tests
* :mod:`~m6rec.models.lm_layers` — M6-Rec on a CPU: the encoder's lower layers cached once per segment,
  its own top layers tuned (fully or with LoRA) over the concatenated segments
* :mod:`~m6rec.models.lm_retrieval` — the tuned LM as a retriever (causal user tower, text item tower)
* :mod:`~m6rec.models.lm_ranking` — the tuned LM as a late-interaction CTR scorer
* :mod:`~m6rec.models.segments` — the frozen sentence states of every item and profile, and the
  feature buckets (rating, time gap, popularity) every segment model shares
* :mod:`~m6rec.models.retrieval` — the frozen-feature retriever (a baseline), and the training windows,
  batches and full-ranking evaluation every retriever uses
* :mod:`~m6rec.models.ranking` — the frozen-feature CTR ranker (a baseline), and the CTR example tensors
* :mod:`~m6rec.models.late_interaction` — the token-level late-interaction scorer and its fine-tuning
  (the ``full`` profile), with the cached question states of every item
* :mod:`~m6rec.models.generation` — the causal LM as a recommender: Yes/No scoring, explanations,
  zero-shot ranking
* :mod:`~m6rec.models.tuning` — option tuning, LoRA and full fine-tuning of a whole HF model
* :mod:`~m6rec.models.baselines` — Pop, ItemKNN and SASRec, evaluated on the same splits
* :mod:`~m6rec.models.registry` — every trainable model kind, rebuilt from ``{"kind", "config"}``
"""
