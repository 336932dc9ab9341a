"""Training.

* :mod:`~m6rec.training.trainer` — the one training loop (``accelerate``: device, bf16, accumulation,
  early stopping, checkpoint/resume) every model trains with
* :mod:`~m6rec.training.profiles` — the named training profiles
  (:class:`~m6rec.training.profiles.TrainingProfile`): ``smoke``, ``default`` (CPU), ``full`` (GPU)
"""
