"""What one stage hands the next, in one place, so that the stage modules in ``defs/`` never import each
other: the asset and check keys a stage depends on, the artefact keys in the
:class:`~orchestration.defs.resources.ArtifactStore`, the text style every model trains with, and how the
trained retriever and ranker are written and read back."""

import json

import dagster as dg

from m6rec.evaluation.offline import (
    FROZEN_RETRIEVER_ROW,
    LM_SCORER,
    LM_TEXT_ONLY,
    LM_WITH_IDS,
    SEGMENT_RANKER_ROW,
)
from m6rec.text import textify
from orchestration.defs.resources import ArtifactStore

# Write-audit-publish: a load and a dbt build land in this run's audit schemas first (``*_AUDIT_KEYS``,
# checked there by the blocking suites); the publish steps copy a passing set over ``raw.*``/``marts.*``.
RAW_KEYS = {name: dg.AssetKey(["raw", name]) for name in ("ratings", "items", "users")}
RAW_AUDIT_KEYS = {name: dg.AssetKey(["raw_audit", name]) for name in RAW_KEYS}
MART_NAMES = (
    "item_catalogue",
    "user_profiles",
    "user_events",
    "splits",
    "ctr_examples",
    "cold_items",
    "item_transitions",
)
MARTS = {name: dg.AssetKey(["marts", name]) for name in MART_NAMES}
MARTS_AUDIT_KEYS = {name: dg.AssetKey(["marts_audit", name]) for name in MART_NAMES}
# An incremental build (daily drops only) rebuilds these for the users the drops touch; publish merges them
# by user_id. The other marts are rebuilt whole every time.
PER_USER_MARTS = ("user_events", "splits", "ctr_examples", "user_profiles")
# ... and these by key: the build emits each key it moved with the key's new row, and publish replaces
# those keys, keeping the rows that match the condition (a pair count of 0 means the pair is gone).
KEYED_MARTS = {"item_transitions": (("item_id", "next_item_id"), "n > 0")}
# Daily drops: staged in the run's audit schema, checked, then appended to raw.ratings.
RAW_DROPS_AUDIT_KEY = dg.AssetKey(["raw_audit", "ratings_drop"])
RAW_DROPS_KEY = dg.AssetKey(["raw", "ratings_drops"])
# dbt writes the marts of one run into this schema (the var read by transforms/macros/generate_schema_name).
MARTS_AUDIT_VAR = "marts_audit_schema"
# Training reads the published marts; every training asset depends on all of them, so nothing trains on
# a set whose suites failed (it is never published) or on a half-published one (one transaction).
GATED_MARTS = [MARTS[name] for name in ("splits", "ctr_examples", "item_catalogue")]
# The assets after the marts, from the segment cache to the promotion gate.
MODEL_ASSETS = {
    name: dg.AssetKey(name)
    for name in (
        "segment_cache",
        "lm_retriever",
        "lm_retriever_ids",
        "lm_ranker",
        "frozen_retriever",
        "segment_ranker",
        "token_ranker",
        "explainer",
        "offline_evaluation",
        "item_index",
        "promoted_model",
    )
}

# Keys in the artefact store.
SEGMENT_CACHE = "segment_cache.pt"  # sentence embeddings (SegmentCache): frozen-feature models, queries
LM_CACHE = "lm_segment_cache.pt"  # lower-layer states (LowerLayerCache): the tuned LM models
CACHE_RECORD = "segment_cache.json"  # the marts fingerprint both caches were computed from
# Trained models: <key>/model.pt + <key>/model.json ({"kind", "config", "marts_fingerprint"}); <key>/run: the
# trainer's checkpoints. Each is one row of the evaluation (ROW_NAMES).
LM_RETRIEVER, LM_RETRIEVER_IDS, LM_RANKER = "lm_retriever", "lm_retriever_ids", "lm_ranker"
FROZEN_RETRIEVER, SEGMENT_RANKER = "frozen_retriever", "segment_ranker"
RETRIEVERS = (LM_RETRIEVER, LM_RETRIEVER_IDS, FROZEN_RETRIEVER)
CTR_MODELS = (LM_RANKER, SEGMENT_RANKER)
ROW_NAMES = {
    LM_RETRIEVER: LM_TEXT_ONLY,
    LM_RETRIEVER_IDS: LM_WITH_IDS,
    FROZEN_RETRIEVER: FROZEN_RETRIEVER_ROW,
    LM_RANKER: LM_SCORER,
    SEGMENT_RANKER: SEGMENT_RANKER_ROW,
}
TOKEN_RANKER = "token_ranker"  # m6rec.models.late_interaction.save_token_ranker's folder
EXPLAINER = "explainer"  # a causal LM checkpoint folder
EXPLAINER_YES_NO = "explainer_yes_no.json"  # its Yes/No like-probabilities on a test sample
EXPLAINER_CHECK = "explainer_check.json"  # the factuality check of its explanations on valid events
EVALUATION, MODEL_CARD = "evaluation.json", "model_card.md"  # the run's report, before any bundle
CANDIDATE, CHAMPION = "candidate", "champion"  # bundles: the one just trained, the one promoted
BENTO_RECORD = "bento.json"  # which Bento was built from which champion
PROMOTION_RECORD = "promotion.json"  # the last gate decision and every input it was made from

# behaviour sentences (explainer, token ranker); the item segments the retrieval and CTR models cache
TEXT_STYLE, SEGMENT_STYLE = textify.PIPELINE_STYLE, textify.SEGMENT_STYLE


def save_trained(store: ArtifactStore, key: str, model, config, data) -> None:
    """A trained model: its weights and ``{"kind", "config", "marts_fingerprint"}``, each written
    atomically; the fingerprint of the marts it trained on (``data``) lets :func:`load_trained` refuse
    it beside other data. Its run's checkpoints go: a checkpoint exists only for a run that was
    interrupted (and resumes from it)."""
    import torch

    from m6rec.models.registry import describe, kind_of

    with store.replace(f"{key}/model.pt") as tmp:
        torch.save(model.state_dict(), tmp)
    spec = {**describe(kind_of(config), config), "marts_fingerprint": data.contract.marts_fingerprint}
    store.write(f"{key}/model.json", json.dumps(spec))
    store.remove(f"{key}/run")


class StaleModelError(RuntimeError):
    """A trained model (or evaluation) belongs to other marts than the published ones: another run
    published new data between this run's training and its evaluation or bundle."""


def check_same_marts(what: str, trained_on: str | None, data) -> None:
    """Raise :class:`StaleModelError` naming ``what`` when it was made from other marts than ``data``
    (a ``None`` on either side — data without a build record — is not compared)."""
    current = data.contract.marts_fingerprint
    if trained_on and current and trained_on != current:
        raise StaleModelError(
            f"{what} was made from marts {trained_on}, but the published marts are now {current}: another "
            "run published new data meanwhile. Nothing was bundled or promoted; launch `retrain` to train "
            "on the current marts."
        )


def save_caches(store: ArtifactStore, cache, data) -> None:
    """The lower-layer cache, its pooled sentence vectors, and which marts (``data``) they came from."""
    cache.save(store.path(LM_CACHE))
    cache.sentences().save(store.path(SEGMENT_CACHE))
    store.write(CACHE_RECORD, json.dumps({"marts_fingerprint": data.contract.marts_fingerprint}))


def load_cache(store: ArtifactStore, key: str, data):
    """``SEGMENT_CACHE`` or ``LM_CACHE`` as the ``segment_cache`` asset saved it; refused when it was
    computed from other marts than ``data`` (:func:`check_same_marts`)."""
    from m6rec.models.lm_layers import LowerLayerCache
    from m6rec.models.segments import SegmentCache

    recorded = store.read_json(CACHE_RECORD).get("marts_fingerprint") if store.exists(CACHE_RECORD) else None
    check_same_marts("the segment cache", recorded, data)
    return (LowerLayerCache if key == LM_CACHE else SegmentCache).load(store.path(key))


def trained_keys(store: ArtifactStore, keys) -> list[str]:
    """Those of ``keys`` that a training asset has written (a profile may switch a model off)."""
    return [key for key in keys if store.exists(f"{key}/model.json")]


def load_trained(store: ArtifactStore, key: str, data, cache, lm_cache=None, encoder_model=None):
    """One model as its training asset left it (eval mode), and its spec; a model trained on other marts
    than ``data`` is refused (:func:`check_same_marts`)."""
    import torch

    from m6rec.models.registry import build_model

    spec = store.read_json(f"{key}/model.json")
    check_same_marts(key, spec.get("marts_fingerprint"), data)
    model = build_model(spec, data, cache, lm_cache, encoder_model)
    model.load_state_dict(torch.load(store.path(f"{key}/model.pt"), map_location="cpu", weights_only=True))
    return model.eval(), spec
