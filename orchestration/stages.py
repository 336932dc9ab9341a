"""What one stage hands the next, in one place, so that the stage modules in ``defs/`` never import each
other: the asset and check keys a stage depends on, the artefact keys in the
:class:`~orchestration.defs.resources.ArtifactStore`, the text style every model trains with, and how the
trained retriever and ranker are written and read back."""

import json
from dataclasses import asdict

import dagster as dg

from m6rec.text.textify import TextStyle
from orchestration.defs.resources import ArtifactStore

RAW_KEYS = {name: dg.AssetKey(["raw", name]) for name in ("ratings", "items", "users")}
MARTS = {
    name: dg.AssetKey(["marts", name])
    for name in ("item_catalogue", "user_profiles", "splits", "ctr_examples")
}
# The marts with blocking GX suites (orchestration/defs/quality.py): every training asset depends on all
# of them, so a failed suite on any one stops all training in that run (not only the branch below it).
GATED_MARTS = [MARTS["splits"], MARTS["ctr_examples"], MARTS["item_catalogue"]]
GATED_MART_CHECKS = [dg.AssetCheckKey(key, f"{key.path[-1]}_suite") for key in GATED_MARTS]
# The assets after the marts, from the segment cache to the promotion gate.
MODEL_ASSETS = {
    name: dg.AssetKey(name)
    for name in (
        "segment_cache",
        "retriever",
        "ranker",
        "token_ranker",
        "explainer",
        "item_index",
        "offline_evaluation",
        "promoted_model",
    )
}

# Keys in the artefact store.
SEGMENT_CACHE = "segment_cache.pt"
RETRIEVER, RANKER = "retriever", "ranker"  # model.pt + config.json; run/ holds the trainer's checkpoints
TOKEN_RANKER = "token_ranker"  # m6rec.models.late_interaction.save_token_ranker's folder
EXPLAINER = "explainer"  # a causal LM checkpoint folder
CANDIDATE, CHAMPION = "candidate", "champion"  # bundles: the one just trained, the one promoted
BENTO_RECORD = "bento.json"  # which Bento was built from which champion

TEXT_STYLE = TextStyle(with_popularity=True)


def save_trained(store: ArtifactStore, name: str, model, config) -> None:
    """A trained retriever or ranker: its weights and its config, each written atomically."""
    import torch

    with store.replace(f"{name}/model.pt") as tmp:
        torch.save(model.state_dict(), tmp)
    store.write(f"{name}/config.json", json.dumps(asdict(config)))


def load_trained(store: ArtifactStore, data, cache):
    """The retriever and ranker as the training assets left them (eval mode)."""
    import torch

    from m6rec.models.ranking import RankerConfig, new_ranker
    from m6rec.models.retrieval import RetrieverConfig, new_retriever

    models = []
    for name, config_class, new in (
        (RETRIEVER, RetrieverConfig, new_retriever),
        (RANKER, RankerConfig, new_ranker),
    ):
        model = new(config_class(**store.read_json(f"{name}/config.json")), data, cache)
        model.load_state_dict(
            torch.load(store.path(f"{name}/model.pt"), map_location="cpu", weights_only=True)
        )
        models.append(model.eval())
    return tuple(models)
