"""The whole graph in-process with the smoke profile (tiny random backbones) on MovieLens-100K (the
``smoke_run`` fixture): evaluation beside the baselines, the bundle's data contract, the Bento
(the promotion gate across two real runs is in test_pipeline_faults.py)."""

from __future__ import annotations

import json

import dagster as dg
import pytest

from m6rec.data.warehouse import connect, read_build_info
from m6rec.evaluation import offline
from tests.pipeline import asset_metadata

pytestmark = pytest.mark.slow


def tuned_rows(evaluation: dict) -> set[str]:
    """The evaluation's rows whose model tuned LM weights."""
    return {row for row, n in evaluation["parameters"].items() if n["lm_trainable_parameters"] > 0}


def test_whole_graph_succeeds_with_evaluation_beside_baselines(smoke_run) -> None:
    home, result = smoke_run
    assert result.success
    report = asset_metadata(result, "offline_evaluation")
    table = report["report"]
    for row in (
        offline.LM_TEXT_ONLY,
        offline.LM_WITH_IDS,
        offline.FROZEN_RETRIEVER_ROW,
        "Pop",
        offline.ITEMKNN_ROW,
        offline.LM_SCORER,
        offline.SEGMENT_RANKER_ROW,
        "m6rec token ranker (late interaction, k=1)",
        offline.ITEM_MEAN_ROW,
    ):
        assert f"| {row} |" in table
    assert "Yes/No (zero-shot, 16 sampled test examples) |" in table
    assert 0.0 <= report["test_ndcg@10"] <= 1.0 and 0.0 <= report["test_ctr_auc"] <= 1.0
    assert report["ndcg_at_k_plot"].startswith("![NDCG@K](data:image/png;base64,")
    tuned, frozen = asset_metadata(result, "lm_retriever"), asset_metadata(result, "frozen_retriever")
    assert tuned["profile"] == "smoke" and tuned["device"] == "cpu"
    assert tuned["lm_trainable_parameters"] > 0 and frozen["lm_trainable_parameters"] == 0
    assert asset_metadata(result, "lm_ranker")["lm_trainable_parameters"] > 0
    champion = home / "artifacts" / "champion"
    evaluation = json.loads((champion / "evaluation.json").read_text())
    assert set(evaluation["validation"]) == set(offline.GATE_METRICS.values())
    # per task the best m6rec model on valid serves (or, when that one tunes no LM weight and leads within
    # noise, the best fine-tuned LM), the evaluation says why, and the bundle says which
    for task, scores in evaluation["valid"].items():
        lm = {
            row: v
            for row, v in scores.items()
            if row.startswith("m6rec token") or row in tuned_rows(evaluation)
        }
        serving, why = evaluation["serving"][task], evaluation["selection"][task]
        assert serving == max(scores, key=lambda row: (scores[row], row)) or (
            serving == max(lm, key=lambda row: (lm[row], row)) and "within noise" in why
        )
        assert report[f"serving_{task}_why"] == why
    manifest = json.loads((champion / "manifest.json").read_text())
    assert manifest["retriever"]["name"] == evaluation["serving"]["retrieval"]
    assert (champion / "token_ranker").is_dir() == evaluation["serving"]["ctr"].startswith("m6rec token")
    uses_lm = manifest["retriever"]["kind"].startswith("lm_") or manifest["ranker"]["kind"].startswith("lm_")
    # the served CTR model's bfloat16 check: its float32 AUC is the evaluation's own valid AUC of it
    if not evaluation["serving"]["ctr"].startswith("m6rec token"):
        check = manifest["ranker"]["precision"]
        assert check["split"] == "valid" and check["examples"] > 0 and isinstance(check["accepted"], bool)
        valid_auc = evaluation["valid"]["ctr"][manifest["ranker"]["name"]]
        assert check["fp32_auc"] == pytest.approx(valid_auc, abs=1e-5)
        assert asset_metadata(result, "item_index")["bf16_check_accepted"] == check["accepted"]
    assert (champion / "lm_segments.pt").exists() == uses_lm
    # the train/serve contract: what the published marts were built with (marts.build_info)
    with connect(home / "warehouse.duckdb", read_only=True) as conn:
        build = read_build_info(conn)
    assert manifest["contract"]["source"] == "marts.build_info"
    assert manifest["contract"]["marts_fingerprint"] == build["fingerprint"]
    assert manifest["contract"]["dbt_vars"] == build["dbt_vars"]
    assert manifest["contract"]["ctr_history_length"] == build["dbt_vars"]["ctr_history_length"]
    assert "m6rec model card" in (champion / "model_card.md").read_text()
    assert asset_metadata(result, "promoted_model")["promoted"] is True
    # the explainer is LoRA-tuned on data-built explanations and checked on valid events; the bundle
    # carries the check, and the gate read it
    explainer = asset_metadata(result, "explainer")
    assert explainer["lm_trainable_parameters"] > 0 and explainer["train_steps"] > 0
    assert explainer["checked_explanations"] == 4
    check = manifest["explainer_check"]
    assert check["split"] == "valid" and check["n"] == 4 and check["max_events"] == 5
    assert check["false_statement_rate"] == explainer["valid_false_statement_rate"]
    promotion = json.loads((home / "artifacts" / "promotion.json").read_text())
    assert promotion["inputs"]["explanations"]["false_statement_rate"] == check["false_statement_rate"]
    # smoke fine-tunes the (tiny) encoder at token level, as full does
    token = asset_metadata(result, "token_ranker")
    assert token["top_layers"] == 1 and token["steps"] > 0 and token["trainable_parameters"] > 0


def test_the_built_bento_holds_service_model_and_dockerfile(smoke_run) -> None:
    home, result = smoke_run
    meta = asset_metadata(result, "bento")
    assert meta["rebuilt"] is True and meta["bento_tag"].startswith("m6rec:")
    contents = meta["contents"]
    for part in (
        "src/m6rec/serving/service.py",
        "env/docker/Dockerfile",
        "model_card.md",
        "evaluation.json",
        "retriever.pt",
        "ranker.pt",
        "segments.pt",
        "encoder/model.safetensors",
    ):
        assert part in contents, (part, contents)


def test_zero_shot_run_ranks_held_out_items_from_text(tmp_path) -> None:
    """With the dbt var zero_shot on, the cold items never reach training and offline_evaluation ranks
    them from text: every retriever's item tower, the content baseline, random, and on a sample the
    explainer LM's likelihood form."""
    from m6rec.evaluation.zero_shot import CONTENT_ROW, RANDOM_ROW
    from tests import SHARED_CACHE

    with pytest.MonkeyPatch.context() as mp:
        for name, value in {
            "M6REC_HOME": tmp_path,
            "M6REC_DUCKDB_PATH": tmp_path / "warehouse.duckdb",
            "M6REC_CACHE": SHARED_CACHE,
            "M6REC_PROFILE": "smoke",
            "BENTOML_HOME": tmp_path / "bentoml",
        }.items():
            mp.setenv(name, str(value))
        from orchestration.definitions import defs

        job = defs().resolve_job_def("m6rec_pipeline")
        config = {"ops": {"m6rec_dbt": {"config": {"zero_shot": True, "cold_item_fraction": 0.2}}}}
        result = job.execute_in_process(
            run_config=config, instance=dg.DagsterInstance.ephemeral(), raise_on_error=False
        )
    assert result.success
    meta = asset_metadata(result, "offline_evaluation")
    table = meta["zero_shot"]
    for row in (offline.LM_TEXT_ONLY, offline.FROZEN_RETRIEVER_ROW, CONTENT_ROW, RANDOM_ROW):
        assert f"| {row} |" in table
    assert "likelihood (zero-shot) |" in table
    evaluation = json.loads((tmp_path / "artifacts" / "evaluation.json").read_text())
    zero_shot = evaluation["zero_shot"]
    assert zero_shot["n_cold_items"] > 0 and zero_shot["sample"]["n_events"] == 3
    assert 0.0 <= meta[f"zero_shot_hr@50 ({offline.LM_TEXT_ONLY})"] <= 1.0
