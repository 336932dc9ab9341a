"""m6rec: M6-Rec style recommenders — behaviour as text, one pretrained language model.

The library, grouped by role (it imports nothing from Dagster or dbt):

* :mod:`m6rec.data` — behaviour-log readers, the DuckDB warehouse, the marts in memory, evaluation inputs
* :mod:`m6rec.text` — behaviour written as text, the one wording training and serving share
* :mod:`m6rec.models` — backbones, cached segment states, retrieval, ranking, late interaction,
  generation, parameter-efficient tuning, baselines
* :mod:`m6rec.training` — the training loop and the named training profiles
* :mod:`m6rec.evaluation` — metrics, the same-run offline evaluation, zero-shot evaluation
* :mod:`m6rec.serving` — the model bundle, the recommender API, the BentoML service and its packaging
* :mod:`m6rec.files` — atomic writes (a killed run never leaves a half-written file or folder)
"""
