"""Serving m6rec with BentoML.

* :mod:`m6rec.serving.service` — the ``M6Rec`` BentoML service (``bentoml serve
  m6rec.serving.service:M6Rec``), its pydantic request/response schemas and the framework-free
  :class:`~m6rec.serving.service.Engine` that answers requests over a loaded bundle.
* :mod:`m6rec.serving.packaging` — put a model bundle into the BentoML model store
  (:func:`~m6rec.serving.packaging.import_bundle`), build the Bento from ``bentofile.yaml``
  (:func:`~m6rec.serving.packaging.build_bento`) and list what a Bento holds.

Nothing here is imported by the rest of the library; importing this package does not import BentoML.
"""
