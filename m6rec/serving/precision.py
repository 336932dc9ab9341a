"""The arithmetic the served CTR model runs in: float32, or bfloat16 for its transformer layers (the tuned
LM scorer's top layers, the segment ranker's transformer; the token-level ranker stays float32).

The rerank of a ``recommend`` request (50 candidates through those layers) is most of its model time,
and on CPUs with AVX512-BF16 or AMX (and on GPUs) bfloat16 runs those matmuls several times faster.
Lower precision moves probabilities slightly, so it is measured, not assumed: when a bundle is written,
:func:`bf16_check` scores the validation CTR examples both ways and the manifest keeps the two AUCs
(``ranker.precision``); the service's ``auto`` setting serves bfloat16 only where that check passed and
the hardware runs it natively (:func:`pick_scoring_dtype`)."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from m6rec.evaluation.metrics import ctr_metrics
from m6rec.models.ranking import predict_ctr

PRECISION_SETTINGS = ("auto", "fp32", "bf16")
# The largest valid-AUC change bfloat16 may cost for ``auto`` to serve in it.
MAX_AUC_CHANGE = 0.001
MAX_CHECK_EXAMPLES = 20_000  # validation examples the check scores (seeded sample past it)


def supports_scoring_dtype(model: torch.nn.Module) -> bool:
    """Whether a CTR model can serve its layers in another dtype (``set_scoring_dtype``: the tuned LM
    scorer and the segment ranker)."""
    return hasattr(model, "set_scoring_dtype")


@torch.no_grad()
def bf16_check(ranker: torch.nn.Module, valid: dict[str, torch.Tensor], seed: int = 0) -> dict[str, Any]:
    """Validation AUC of ``ranker`` in float32 and with its transformer layers in bfloat16 (on a copy:
    the ranker itself is left as it is), over ``valid`` (:func:`m6rec.models.ranking.ctr_tensors` of the
    valid split; a seeded sample of :data:`MAX_CHECK_EXAMPLES` past that). ``accepted``: the AUC moved
    by at most :data:`MAX_AUC_CHANGE`."""
    n = len(valid["labels"])
    if n > MAX_CHECK_EXAMPLES:
        pick = np.random.default_rng(seed).choice(n, MAX_CHECK_EXAMPLES, replace=False)
        keep = torch.from_numpy(np.sort(pick))
        valid = {k: v[keep] for k, v in valid.items()}
    labels = valid["labels"].numpy()
    full = predict_ctr(ranker, valid)
    # a copy whose catalogue-sized buffers (cached states, statistics) stay shared with the original
    half_model = copy.deepcopy(ranker, memo={id(t): t for t in ranker.buffers()})
    half_model.set_scoring_dtype(torch.bfloat16)
    half = predict_ctr(half_model, valid)
    auc_full, auc_half = ctr_metrics(labels, full)["auc"], ctr_metrics(labels, half)["auc"]
    change = auc_half - auc_full
    return {
        "dtype": "bf16",
        "split": "valid",
        "examples": int(len(labels)),
        "fp32_auc": round(float(auc_full), 6),
        "bf16_auc": round(float(auc_half), 6),
        "auc_change": round(float(change), 6),
        "max_abs_probability_change": round(float(np.abs(half - full).max()), 6) if len(full) else 0.0,
        "accepted": bool(np.isfinite(change) and abs(change) <= MAX_AUC_CHANGE),
    }


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bfloat16 matmuls natively (else they are emulated, slower than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    return False


def check_setting(setting: str) -> str:
    """``setting`` (``M6REC_PRECISION``) when it is one of :data:`PRECISION_SETTINGS`, else a ValueError
    naming it: the service checks it before it loads a bundle (minutes at 10⁶ items), not after."""
    if setting not in PRECISION_SETTINGS:
        raise ValueError(f"M6REC_PRECISION={setting!r}: use one of {', '.join(PRECISION_SETTINGS)}")
    return setting


def pick_scoring_dtype(
    setting: str, model: torch.nn.Module, check: dict[str, Any] | None, device: torch.device
) -> tuple[torch.dtype, str]:
    """The dtype the served scorer runs in and why. ``setting`` (``M6REC_PRECISION``): ``fp32``;
    ``bf16`` (forced, whatever the check says); ``auto`` (bfloat16 when the bundle's check accepted it
    and the device runs it natively)."""
    check_setting(setting)
    if not supports_scoring_dtype(model):
        return torch.float32, f"the serving CTR model ({type(model).__name__}) runs in float32 only"
    if setting == "fp32":
        return torch.float32, "M6REC_PRECISION=fp32"
    if setting == "bf16":
        return torch.bfloat16, "M6REC_PRECISION=bf16 (forced)"
    if not check:
        return torch.float32, "the bundle has no bfloat16 check (ranker.precision)"
    if not check.get("accepted"):
        return torch.float32, (
            f"the bundle's bfloat16 check moved the valid AUC by {check.get('auc_change')} "
            f"(allowed: {MAX_AUC_CHANGE})"
        )
    if not native_bf16(device):
        return torch.float32, f"{device} has no native bfloat16 matmuls (AVX512-BF16, AMX or a GPU)"
    return torch.bfloat16, (
        f"auto: valid AUC {check['bf16_auc']} in bfloat16 vs {check['fp32_auc']} in float32, "
        f"native on {device}"
    )
