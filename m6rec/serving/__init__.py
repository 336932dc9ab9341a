"""Serving: the trained model as one bundle folder, the inference API over it, and the BentoML service.

* :mod:`~m6rec.serving.bundle` — the bundle (layout, manifest: the train/serve contract) and
  :func:`~m6rec.serving.bundle.save_bundle`
* :mod:`~m6rec.serving.recommender` — :class:`~m6rec.serving.recommender.Recommender`: a loaded bundle's
  retrieval, ranking, similar items and behaviour text (no web framework)
* :mod:`~m6rec.serving.schemas` — the pydantic request/response schemas of every endpoint
* :mod:`~m6rec.serving.engine` — :class:`~m6rec.serving.engine.Engine`: requests in, responses out
  (catalogue checks, explanations, batching), testable without a server
* :mod:`~m6rec.serving.middleware` — the ASGI guard that keeps malformed JSON a 400 on batchable endpoints
* :mod:`~m6rec.serving.service` — the ``M6Rec`` BentoML service (``bentoml serve
  m6rec.serving.service:M6Rec``): the model loaded once in ``__init__``, one method per endpoint
* :mod:`~m6rec.serving.packaging` — a bundle into the BentoML model store, ``bentoml build`` of the Bento,
  what a Bento holds

Only :mod:`~m6rec.serving.service` and :mod:`~m6rec.serving.packaging` use BentoML, and the rest of the
library imports nothing from here; importing this package does not import BentoML.
"""
