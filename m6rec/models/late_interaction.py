"""Token-level late interaction: the encoder itself as a multi-segment CTR scorer (the ``full`` profile).

:class:`LateInteractionScorer` runs a Hugging Face BERT-style encoder's lower ``L - k`` layers per
segment (profile, each history event, the question about the candidate) and the top ``k`` over their
concatenation, with learned segment-type embeddings; with ``k = L`` it is the full cross-encoder (every
layer sees every token), which the tests check. :func:`train_token_ranker` fine-tunes every encoder
weight this way.

Training and serving build the segments with the same function, :func:`m6rec.text.textify.behaviour_segments`.
The question segment of every catalogue item is run through the lower ``L - k`` layers once after
training and cached per pronoun (:class:`CandidateStates`); a request runs its context segments through
the lower layers once and only the top ``k`` layers per candidate.

This is a GPU job at full size (every step runs the whole encoder over ~12 segments per example); the
CPU profiles use the pooled :class:`~m6rec.models.ranking.SegmentRanker` instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from transformers.masking_utils import create_bidirectional_mask

from m6rec.data.marts import RecData, events_of
from m6rec.evaluation.metrics import ctr_metrics
from m6rec.files import staged
from m6rec.models.backbones import Encoder, load_encoder
from m6rec.models.segments import CANDIDATE, HISTORY, PROFILE
from m6rec.text.textify import PRONOUNS, ItemText, TextStyle, behaviour_segments, question_text
from m6rec.training.trainer import TrainConfig, Trainer, TrainResult

# --- the scorer ---------------------------------------------------------------------------------------


class LateInteractionScorer(nn.Module):
    """Lower ``L - top_k`` encoder layers per segment, top ``top_k`` over the concatenation."""

    def __init__(self, encoder: Encoder, top_k: int) -> None:
        super().__init__()
        if not 0 <= top_k <= encoder.num_layers:
            raise ValueError(f"top_k must be in 0..{encoder.num_layers}, got {top_k}")
        self.bert = encoder.model
        self.tokenizer = encoder.tokenizer
        self.top_k = top_k
        self.split = encoder.num_layers - top_k
        hidden = encoder.hidden_size
        self.segment_emb = nn.Embedding(3, hidden)
        nn.init.zeros_(self.segment_emb.weight)
        self.head = nn.Linear(hidden, 1)

    def _layers(
        self, hidden: torch.Tensor, mask2d: torch.Tensor, layers: Sequence[nn.Module]
    ) -> torch.Tensor:
        if not layers:
            return hidden
        # transformers' public mask builder, as BertModel's forward calls it for an encoder (its own
        # private wrapper changed signature in 5.25)
        mask = create_bidirectional_mask(config=self.bert.config, inputs_embeds=hidden, attention_mask=mask2d)
        for layer in layers:
            out = layer(hidden, mask)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden

    def lower(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Per-segment states after the lower layers (the cacheable part): [N, T, H]."""
        hidden = self.bert.embeddings(input_ids=input_ids, token_type_ids=torch.zeros_like(input_ids))
        return self._layers(hidden, attention_mask, self.bert.encoder.layer[: self.split])

    def upper(self, states: list[torch.Tensor], types: list[list[int]]) -> torch.Tensor:
        """Concatenate each example's segment states (already unpadded), add segment-type embeddings,
        run the top layers and score the candidate: one logit per example."""
        seqs, type_ids, cand = [], [], []
        for segs, kinds in zip(states, types, strict=True):
            seqs.append(torch.cat(segs))
            type_ids.append(
                torch.cat(
                    [torch.full((len(s),), k, dtype=torch.long) for s, k in zip(segs, kinds, strict=True)]
                )
            )
            cand.append(type_ids[-1] == CANDIDATE)
        hidden = nn.utils.rnn.pad_sequence(seqs, batch_first=True)
        device = hidden.device
        mask = nn.utils.rnn.pad_sequence(
            [torch.ones(len(s), dtype=torch.long) for s in seqs], batch_first=True
        ).to(device)
        types_t = nn.utils.rnn.pad_sequence(type_ids, batch_first=True).to(device)
        cand_mask = nn.utils.rnn.pad_sequence(cand, batch_first=True).to(device).float()
        hidden = hidden + self.segment_emb(types_t)
        hidden = self._layers(hidden, mask, self.bert.encoder.layer[self.split :])
        pooled = (hidden * cand_mask[..., None]).sum(1) / cand_mask.sum(1, keepdim=True).clamp(min=1)
        return self.head(pooled).squeeze(-1)

    def encode_segments(self, texts: Sequence[str], max_length: int = 64) -> list[torch.Tensor]:
        """Lower-layer states of each text, unpadded (what gets cached for items)."""
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        device = self.head.weight.device
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        states = self.lower(ids, mask)
        return [states[i, : int(mask[i].sum())] for i in range(len(texts))]

    def forward(
        self, examples: Sequence[Sequence[str]], types: Sequence[Sequence[int]], max_length: int = 64
    ) -> torch.Tensor:
        """Score examples given as segment texts (nothing cached): the training path."""
        flat = [t for ex in examples for t in ex]
        states = self.encode_segments(flat, max_length)
        grouped, start = [], 0
        for ex in examples:
            grouped.append(states[start : start + len(ex)])
            start += len(ex)
        return self.upper(grouped, [list(t) for t in types])

    @torch.no_grad()
    def rank_candidates(
        self,
        context: Sequence[str],
        context_types: Sequence[int],
        candidate_states: Sequence[torch.Tensor],
        max_length: int = 64,
    ) -> torch.Tensor:
        """Serving path: context segments through the lower layers once, cached candidate states,
        top layers for each (context + candidate) pair. Returns one logit per candidate."""
        context_states = self.encode_segments(context, max_length)
        kinds = [*context_types, CANDIDATE]
        return self.upper([[*context_states, c] for c in candidate_states], [kinds] * len(candidate_states))


# --- token-level fine-tuning --------------------------------------------------------------------------


@dataclass
class TokenRankerConfig:
    top_k: int = 1  # encoder layers over the concatenation; k = L is the full cross-encoder
    history: int = 10  # most recent events in the context (as marts.ctr_examples keeps)
    max_length: int = 64  # tokens per segment
    lr: float = 5e-5
    batch_size: int = 32
    max_steps: int = 20_000
    max_train_examples: int | None = None  # a seeded sample of the train split; None = all


def segment_types(n_segments: int) -> list[int]:
    """``[profile, history..., candidate]`` as segment-type ids."""
    return [PROFILE] + [HISTORY] * (n_segments - 2) + [CANDIDATE]


def example_segments(
    examples: pd.DataFrame, data: RecData, style: TextStyle, history: int
) -> list[list[str]]:
    """marts.ctr_examples rows -> each example's segment texts, the candidate's question last."""
    texts, profiles, index = data.item_texts(), data.profiles(), data.item_index
    users = dict(zip(data.users["user_id"], data.users["user_idx"], strict=True))
    out = []
    for row in examples.itertuples(index=False):
        frame = pd.DataFrame(
            {
                "item_idx": [index[i] for i in row.history_item_ids],
                "ts": list(row.history_ts),
                "rating": list(row.history_ratings),
            }
        )
        out.append(
            behaviour_segments(
                profiles[users[row.user_id]],
                events_of(frame, texts),
                texts[index[row.target_item_id]],
                int(row.target_ts),
                max_events=history,
                style=style,
            )
        )
    return out


@torch.no_grad()
def predict_token_ctr(
    scorer: LateInteractionScorer, segments: Sequence[list[str]], max_length: int, batch_size: int = 64
) -> np.ndarray:
    was_training = scorer.training
    scorer.eval()
    out = [
        torch.sigmoid(
            scorer(chunk, [segment_types(len(s)) for s in chunk], max_length=max_length).float()
        ).cpu()
        for chunk in (segments[s : s + batch_size] for s in range(0, len(segments), batch_size))
    ]
    scorer.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros(0)


def train_token_ranker(
    data: RecData,
    encoder: Encoder,
    examples: pd.DataFrame,
    config: TokenRankerConfig,
    train_config: TrainConfig,
    style: TextStyle,
    *,
    log: Callable[[str], None] | None = None,
) -> tuple[LateInteractionScorer, TrainResult]:
    """Fine-tune every encoder weight plus the segment-type embeddings and the head on the train-split
    CTR examples (binary cross-entropy on TALLRec labels); early-stopped on valid AUC."""
    torch.manual_seed(train_config.seed)
    scorer = LateInteractionScorer(encoder, config.top_k)
    for p in scorer.parameters():
        p.requires_grad_(True)
    train = examples[examples["split"] == "train"]
    if config.max_train_examples is not None and len(train) > config.max_train_examples:
        train = train.sample(config.max_train_examples, random_state=train_config.seed)
    valid = examples[examples["split"] == "valid"]
    train_segments = example_segments(train, data, style, config.history)
    valid_segments = example_segments(valid, data, style, config.history)
    labels = torch.tensor(train["label"].to_numpy(), dtype=torch.float32)
    valid_labels = valid["label"].to_numpy()
    loader = DataLoader(list(range(len(train_segments))), batch_size=config.batch_size, shuffle=True)

    def loss(model: LateInteractionScorer, idx: torch.Tensor) -> torch.Tensor:
        chosen = [train_segments[i] for i in idx.tolist()]
        logits = model(chosen, [segment_types(len(s)) for s in chosen], max_length=config.max_length)
        return F.binary_cross_entropy_with_logits(logits.float(), labels[idx.cpu()].to(logits.device))

    def evaluate(model: LateInteractionScorer) -> dict[str, float]:
        probs = predict_token_ctr(model, valid_segments, config.max_length)
        return ctr_metrics(valid_labels, probs)

    trainer = Trainer(scorer, loss, loader, evaluate, train_config, log=log)
    result = trainer.fit()
    return trainer.trained_model, result


# --- on disk ------------------------------------------------------------------------------------------
# <dir>/encoder/      the fine-tuned encoder (HF folder: loads with AutoModel like any checkpoint)
# <dir>/late.pt       segment-type embeddings and the head
# <dir>/config.json   TokenRankerConfig
# <dir>/candidates.pt cached lower-layer states of every item's question segment, per pronoun


def save_token_ranker(scorer: LateInteractionScorer, config: TokenRankerConfig, path: str | Path) -> Path:
    """Write into a temp folder beside ``path``, then swap it in."""
    with staged(path) as tmp:
        tmp.mkdir()
        scorer.bert.save_pretrained(tmp / "encoder")
        scorer.tokenizer.save_pretrained(tmp / "encoder")
        torch.save(
            {"segment_emb": scorer.segment_emb.state_dict(), "head": scorer.head.state_dict()},
            tmp / "late.pt",
        )
        (tmp / "config.json").write_text(json.dumps(asdict(config)))
    return Path(path)


def load_token_ranker(
    path: str | Path, device: str | torch.device | None = None
) -> tuple[LateInteractionScorer, TokenRankerConfig]:
    path = Path(path)
    config = TokenRankerConfig(**json.loads((path / "config.json").read_text()))
    scorer = LateInteractionScorer(load_encoder(path / "encoder"), config.top_k)
    parts = torch.load(path / "late.pt", map_location="cpu", weights_only=True)
    scorer.segment_emb.load_state_dict(parts["segment_emb"])
    scorer.head.load_state_dict(parts["head"])
    return scorer.to(device or "cpu").eval(), config


class CandidateStates:
    """Lower-layer states of each item's question segment ("Will she like X?"), one set per pronoun,
    stored ragged (flat ``[tokens, hidden]`` float16 + offsets) so padding costs nothing."""

    def __init__(self, states: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.states = states

    @classmethod
    @torch.no_grad()
    def build(
        cls,
        scorer: LateInteractionScorer,
        items: Sequence[ItemText],
        style: TextStyle,
        max_length: int,
        batch_size: int = 256,
    ) -> CandidateStates:
        was_training = scorer.training
        scorer.eval()
        states = {}
        for who in PRONOUNS:
            texts = [question_text(item, who, style) for item in items]
            parts = []
            for s in range(0, len(texts), batch_size):
                chunk = scorer.encode_segments(texts[s : s + batch_size], max_length)
                parts += [x.half().cpu() for x in chunk]
            lengths = torch.tensor([len(p) for p in parts], dtype=torch.long)
            offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
            states[who] = (torch.cat(parts), offsets)
        scorer.train(was_training)
        return cls(states)

    def get(self, who: str, items: Sequence[int], device: torch.device | str = "cpu") -> list[torch.Tensor]:
        flat, offsets = self.states[who]
        return [flat[offsets[i] : offsets[i + 1]].to(device=device, dtype=torch.float32) for i in items]

    def save(self, path: str | Path) -> None:
        with staged(path) as tmp:
            torch.save({who: {"flat": f, "offsets": o} for who, (f, o) in self.states.items()}, tmp)

    @classmethod
    def load(cls, path: str | Path) -> CandidateStates:
        raw = torch.load(path, map_location="cpu", weights_only=True)
        return cls({who: (v["flat"], v["offsets"]) for who, v in raw.items()})
