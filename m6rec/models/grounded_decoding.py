"""Decoding constrained to the facts of the behaviour text: the language model writes the explanation,
but what it states in a fact slot can only be true.

A 135M-parameter model tuned on a few dozen explanations learns their shape ("he rated <title> <n>
stars, and it shares its genre (<genres>)") long before it learns to fill the slots right: measured
on valid events, half of its tuned explanations cited a wrong rating or a genre the item does not have
(bench/results/explanations.json holds the served numbers). So the slots are constrained while it
decodes (greedy; many explanations decode together, one key/value cache for the batch):

- **title**: right after a citing verb ("rated", "liked", "watched", ...), the next tokens must spell
  the display title ("Heat (1995)") of a history item that is evidence for the candidate (liked or
  unrated, sharing a genre; the recent likes when none shares one): a token trie over those titles,
  the model's own logits choosing inside it — the model still decides *which* item to cite. After
  "liked"/"loved"/"enjoyed" only items the user did not rate as a dislike; with none, the clause that
  would cite one is dropped. A list ("she liked Heat (1995) and ...") is a slot again, without the
  items already cited, at most two; with none left, the list ends there. A title the token budget cuts
  short is dropped with its clause;
- **rating**: after "rated <title>", the item's rating as the history gives it ("5 stars");
- **genres**: after "genre (" / "genres (", the genres the candidate shares with the cited item, and
  the sentence's end (the tuned format ends there; a model made to write a list it did not choose
  otherwise rambles on with numbers and years the rules rightly catch). When the cited item shares
  none, the clause announcing a shared genre is dropped: "he rated Heat (1995) 5 stars."

Outside the slots the model decodes freely; the factuality rules (:mod:`m6rec.evaluation.explanations`)
still check everything it writes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from m6rec.models.backbones import CausalLM, left_padded, mask_positions
from m6rec.text.explanations import display_title, find_evidence, shared_genres
from m6rec.text.textify import DEFAULT_STYLE, Event, ItemText, TextStyle, rating_amount

__all__ = ["CitableFacts", "citable_facts", "grounded_continuations"]

CITING_VERB = re.compile(r"\b(rated|liked|loved|enjoyed|watched|saw)$")
LIKE_VERBS = ("liked", "loved", "enjoyed")
LIST_AND = " and"  # what follows a filled title slot when the model lists another title
MAX_LISTED = 2  # titles in one list, as the explanations it was tuned on write them
GENRE_LIST = re.compile(r"\bgenres? \($")


@dataclass
class CitableFacts:
    """What one explanation may state: the history items it may cite (with their ratings and genres)
    and the candidate (its genres)."""

    items: list[Event]
    candidate: ItemText
    style: TextStyle = DEFAULT_STYLE
    disliked: list[Event] = field(default_factory=list)  # of ``items``: rated below the like rule

    def citable(self, verb: str, cited: Sequence[Event] = ()) -> list[Event]:
        """The items a title slot after ``verb`` may spell: rated ones after "rated", none the user
        disliked after a verb of liking, none already cited in the same list."""
        out = [e for e in self.items if all(e is not c for c in cited)]
        if verb == "rated":
            return [e for e in out if e.rating is not None]
        if verb in LIKE_VERBS:
            return [e for e in out if all(e is not d for d in self.disliked)]
        return out

    def shared_genres(self, cited: Event | None) -> list[str]:
        """The candidate's genres the cited item has (without one: those any citable item has); empty
        when none is shared — then no genre list may be written."""
        pool = [cited] if cited is not None else self.items
        return shared_genres(self.candidate, [e.item for e in pool])


def citable_facts(
    candidate: ItemText,
    history: Sequence[Event],
    is_like: Callable[[float], bool],
    style: TextStyle = DEFAULT_STYLE,
) -> CitableFacts:
    """The evidence of :func:`m6rec.text.explanations.find_evidence` — items that share a genre (liked,
    then unrated) — else the recent likes, else every history item (its rating stated as it is)."""
    found = find_evidence(candidate, history, is_like)
    items = found.sharing_liked + found.sharing_watched or found.recent_liked
    if not items:
        seen = {display_title(candidate)}
        for e in reversed(history):
            title = display_title(e.item)
            if title not in seen:
                seen.add(title)
                items.append(e)
    disliked = [e for e in items if e.rating is not None and not is_like(e.rating)]
    return CitableFacts(items=items, candidate=candidate, style=style, disliked=disliked)


@dataclass
class _Node:
    children: dict[int, _Node] = field(default_factory=dict)
    event: Event | None = None  # set where a title's tokens end


def _title_trie(lm: CausalLM, items: Sequence[Event]) -> _Node:
    root = _Node()
    for e in items:
        node = root
        for token in lm.tokenizer.encode(" " + display_title(e.item), add_special_tokens=False):
            node = node.children.setdefault(token, _Node())
        node.event = e
    return root


def _without_open_clause(text: str) -> str:
    """Ends ``text`` before a clause that cannot be completed truthfully: " it fits her history (most
    recently she liked" -> " it fits her history."; with no parenthesis to close it at, nothing is kept."""
    cut = text.rfind(" (")
    return text[:cut].rstrip(" ,") + "." if cut > 0 else ""


def _close_list(text: str) -> str:
    """ "(most recently he liked Heat (1995) and" -> "(most recently he liked Heat (1995))." """
    text = text[: -len(LIST_AND)] if text.endswith(LIST_AND) else text
    return text + (")" if text.count("(") > text.count(")") else "") + "."


def _without_last_clause(text: str) -> str:
    """ "he rated Heat (1995) 5 stars, and it shares its" -> "he rated Heat (1995) 5 stars." """
    head = text[: text.rfind(",")] if "," in text else ""
    return head.rstrip() + "." if head.strip() else ""


class _Slots:
    """One row's decoding state (see the module docstring): given the model's next-token logits,
    :meth:`choose` picks the token (forced, inside a title trie, or free) and fills the slots; the row is
    done at end-of-sequence, at the token budget, or when a clause cannot be completed truthfully."""

    def __init__(self, lm: CausalLM, facts: CitableFacts, max_new_tokens: int) -> None:
        self.lm, self.facts, self.max_new_tokens = lm, facts, max_new_tokens
        self.generated: list[int] = []
        self.forced: list[int] = []
        self.node: _Node | None = None  # inside a title slot: where in the trie
        self.verb, self.cited = "", None
        self.listed: list[Event] = []  # titles cited in the current list ("X and Y")
        self.slot_end = -1  # length of the decoded text when the last title slot was filled
        self.slot_start = 0  # generated tokens before the open title slot
        self.early: str | None = None  # the text when a clause ended the row before the budget
        self.done = max_new_tokens <= 0

    def _rating_tokens(self, event: Event | None) -> list[int]:
        if self.verb != "rated" or event is None or event.rating is None:
            return []
        text = " " + rating_amount(event.rating, self.facts.style)
        return self.lm.tokenizer.encode(text, add_special_tokens=False)

    def _end(self, text: str) -> int | None:
        self.early, self.done = text, True
        return None

    def choose(self, logits: torch.Tensor) -> int | None:
        """The next token to feed the model, or None when the row is done."""
        tok = self.lm.tokenizer
        node = self.node
        if node is not None and node.event is not None and int(logits.argmax()) not in node.children:
            # the slot is filled: the title is spelled out, or the model does not go on from a whole
            # title ("Heat" when "Heat Wave" is citable too)
            self.cited, self.node = node.event, None
            self.listed.append(self.cited)
            self.slot_end = len(tok.decode(self.generated, skip_special_tokens=True))
            self.forced = self._rating_tokens(self.cited)
        forced = bool(self.forced)
        if forced:
            token = self.forced.pop(0)
        elif self.node is not None:
            allowed = list(self.node.children)
            token = allowed[int(logits[allowed].argmax())]
        else:
            token = int(logits.argmax())
        self.generated.append(token)
        if token == tok.eos_token_id:
            self.done = True
            return None
        if self.node is not None:
            self.node = self.node.children[token]  # a spelled-out title (a leaf) is filled at the next step
        elif not forced:
            text = tok.decode(self.generated, skip_special_tokens=True)
            if self.slot_end >= 0 and text[self.slot_end :] == LIST_AND:  # another title of the same list
                trie = _title_trie(self.lm, self.facts.citable(self.verb, self.listed))
                if len(self.listed) >= MAX_LISTED or not trie.children:
                    return self._end(_close_list(text))
                self.node, self.slot_start = trie, len(self.generated)
            elif m := CITING_VERB.search(text):
                self.verb, self.listed = m.group(1), []
                trie = _title_trie(self.lm, self.facts.citable(self.verb))
                if trie.children:
                    self.node, self.slot_start = trie, len(self.generated)
                elif self.verb in LIKE_VERBS and self.facts.items:  # only disliked items: no such clause
                    return self._end(_without_open_clause(text[: m.start()]))
            elif m := GENRE_LIST.search(text):  # the list; the sentence ends as the tuned format does
                shared = self.facts.shared_genres(self.cited)
                if not shared:  # nothing to list: the clause that announced a shared genre goes
                    return self._end(_without_last_clause(text[: m.start()]))
                self.forced = [
                    *tok.encode(", ".join(shared) + ").", add_special_tokens=False),
                    tok.eos_token_id,
                ]
        if len(self.generated) >= self.max_new_tokens:
            self.done = True
            return None
        return token

    def text(self) -> str:
        """The continuation as decoded, without a half-spelled title the budget cut short."""
        if self.early is not None:
            return self.early
        tok = self.lm.tokenizer
        if self.node is not None and self.node.children:  # the budget ran out inside a title
            text = tok.decode(self.generated[: self.slot_start], skip_special_tokens=True)
            return _close_list(text) if text.endswith(LIST_AND) else _without_open_clause(text)
        return tok.decode(self.generated, skip_special_tokens=True)


@torch.no_grad()
def grounded_continuations(
    lm: CausalLM,
    prompts: Sequence[str],
    facts: Sequence[CitableFacts],
    *,
    model: nn.Module | None = None,
    max_new_tokens: int = 48,
    max_length: int | None = 512,
    batch_size: int = 32,
) -> list[str]:
    """Greedy continuations of ``prompts``, each with its fact slots constrained to its ``facts`` (see the
    module docstring); a row stops at end-of-sequence or after ``max_new_tokens`` tokens (forced ones
    count). Rows decode together, ``batch_size`` at a time (left-padded, one key/value cache): one row's
    one-token step is mostly the reading of the weights, so a step for many rows costs far less than as
    many steps for one."""
    if len(prompts) != len(facts):
        raise ValueError(f"{len(prompts)} prompts but {len(facts)} fact sets")
    model = lm.model if model is None else model
    backbone = getattr(model, "backbone", model)  # an option-tuned model generates with its LM
    device = next(backbone.parameters()).device
    tok = lm.tokenizer
    pad = tok.pad_token_id
    keep = (max_length or lm.max_length) - max_new_tokens
    encoded = [tok.encode(p, add_special_tokens=False) for p in prompts]
    encoded = [ids[max(0, len(ids) - keep) :] for ids in encoded]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))  # little padding in a batch
    texts: list[str] = [""] * len(prompts)
    was_training = backbone.training
    backbone.eval()
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            slots = [_Slots(lm, facts[i], max_new_tokens) for i in rows]
            ids, mask = left_padded([encoded[i] for i in rows], pad)
            ids, mask = ids.to(device), mask.to(device)
            positions = mask_positions(mask)
            out = backbone(
                input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1
            )
            cache, logits = out.cache, out.logits[:, -1]
            while True:
                fed = [s.choose(logits[j]) if not s.done else None for j, s in enumerate(slots)]
                live = torch.tensor([t is not None for t in fed], device=device)
                if not live.any():
                    break
                step = torch.tensor([[pad if t is None else t] for t in fed], device=device)
                mask = torch.cat([mask, live.long()[:, None]], dim=1)
                positions = positions[:, -1:] + 1
                out = backbone(
                    input_ids=step, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True
                )
                cache, logits = out.cache, out.logits[:, -1]
            for i, s in zip(rows, slots, strict=True):
                texts[i] = s.text()
    finally:
        backbone.train(was_training)
    return texts
