"""Behaviour logs in, marts out (to Python).

* :mod:`~m6rec.data.sources` — log readers: the generic CSV/Parquet folder, RecBole atomic files,
  GroupLens ``u.*`` files, each into the raw data contract
* :mod:`~m6rec.data.tabular` — strict delimited-text and Parquet readers that name file, line, column, value
* :mod:`~m6rec.data.movielens` — the default data set, MovieLens-100K from the RecBole wheel
* :mod:`~m6rec.data.warehouse` — the embedded DuckDB file: lock-aware connections, the atomic raw swap
* :mod:`~m6rec.data.marts` — the marts in memory (:class:`~m6rec.data.marts.RecData`) as the models see them
* :mod:`~m6rec.data.eval_inputs` — per-user histories and targets for full-ranking evaluation
"""
