"""Evaluation.

* :mod:`~m6rec.evaluation.metrics` — ranking metrics (full ranking, history excluded), CTR metrics,
  beyond-accuracy metrics
* :mod:`~m6rec.evaluation.offline` — every model beside the baselines of the same run, on the same split:
  the report, its plots and the model card
* :mod:`~m6rec.evaluation.zero_shot` — held-out cold items ranked from their text alone
* :mod:`~m6rec.evaluation.explanations` — rules that find false statements and cited evidence in an
  explanation (the service checks its language model's with them)
"""
