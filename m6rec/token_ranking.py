"""The token-level CTR ranker (the ``full`` profile): the encoder itself fine-tuned as a
:class:`~m6rec.ranking.LateInteractionScorer` over the behaviour text's segments.

Training and serving build the segments with the same function, :func:`m6rec.textify.behaviour_segments`
(profile, one segment per history event, the question about the candidate). The question segment of
every catalogue item is run through the lower ``L - k`` layers once after training and cached per
pronoun (:class:`CandidateStates`); a request runs its context segments through the lower layers once
and only the top ``k`` layers per candidate.

This is a GPU job at full size (every step runs the whole encoder over ~12 segments per example); the
CPU profiles use the pooled :class:`~m6rec.ranking.SegmentRanker` instead.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from m6rec.backbones import Encoder, load_encoder
from m6rec.data import RecData, events_of
from m6rec.files import replace_folder
from m6rec.metrics import ctr_metrics
from m6rec.ranking import CANDIDATE, HISTORY, PROFILE, LateInteractionScorer
from m6rec.textify import PRONOUNS, ItemText, TextStyle, behaviour_segments, question_text
from m6rec.trainer import TrainConfig, Trainer, TrainResult


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
    return trainer.accelerator.unwrap_model(trainer.model), result


# --- on disk ------------------------------------------------------------------------------------------
# <dir>/encoder/      the fine-tuned encoder (HF folder: loads with AutoModel like any checkpoint)
# <dir>/late.pt       segment-type embeddings and the head
# <dir>/config.json   TokenRankerConfig
# <dir>/candidates.pt cached lower-layer states of every item's question segment, per pronoun


def save_token_ranker(scorer: LateInteractionScorer, config: TokenRankerConfig, path: str | Path) -> Path:
    """Write into a temp folder beside ``path``, then swap it in."""
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp-{int(time.time() * 1000)}")
    tmp.mkdir(parents=True)
    scorer.bert.save_pretrained(tmp / "encoder")
    scorer.tokenizer.save_pretrained(tmp / "encoder")
    torch.save(
        {"segment_emb": scorer.segment_emb.state_dict(), "head": scorer.head.state_dict()}, tmp / "late.pt"
    )
    (tmp / "config.json").write_text(json.dumps(asdict(config)))
    replace_folder(tmp, path)
    return path


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
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        torch.save({who: {"flat": f, "offsets": o} for who, (f, o) in self.states.items()}, tmp)
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> CandidateStates:
        raw = torch.load(path, map_location="cpu", weights_only=True)
        return cls({who: (v["flat"], v["offsets"]) for who, v in raw.items()})
