"""Decoding constrained to the facts of the behaviour text: the language model writes the explanation,
but what it states in a fact slot can only be true.

A 135M-parameter model tuned on a few dozen explanations learns their shape ("he rated <title> <n>
stars, and it shares its genre (<genres>)") long before it learns to fill the slots right: measured
on valid events, half of its tuned explanations cited a wrong rating or a genre the item does not have
(bench/results/explanations.json holds the served numbers). So the slots are constrained while it
decodes (greedy, one sequence, its key/value cache reused):

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

from m6rec.models.backbones import CausalLM
from m6rec.text.explanations import display_title, find_evidence, shared_genres
from m6rec.text.textify import DEFAULT_STYLE, Event, ItemText, TextStyle, rating_amount

__all__ = ["CitableFacts", "citable_facts", "grounded_continuation"]

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


@torch.no_grad()
def grounded_continuation(
    lm: CausalLM,
    prompt: str,
    facts: CitableFacts,
    *,
    model: nn.Module | None = None,
    max_new_tokens: int = 48,
    max_length: int | None = 512,
) -> str:
    """Greedy continuation of ``prompt`` with the fact slots constrained to ``facts`` (see the module
    docstring); stops at end-of-sequence or after ``max_new_tokens`` tokens (forced ones count)."""
    model = lm.model if model is None else model
    backbone = getattr(model, "backbone", model)  # an option-tuned model generates with its LM
    device = next(backbone.parameters()).device
    tok = lm.tokenizer
    eos = tok.eos_token_id
    limit = max_length or lm.max_length
    ids = tok.encode(prompt, add_special_tokens=False)
    ids = ids[max(0, len(ids) - (limit - max_new_tokens)) :]

    def rating_tokens(event: Event | None) -> list[int]:
        if verb != "rated" or event is None or event.rating is None:
            return []
        return tok.encode(" " + rating_amount(event.rating, facts.style), add_special_tokens=False)

    was_training = backbone.training
    backbone.eval()
    try:
        out = backbone(input_ids=torch.tensor([ids], device=device), use_cache=True)
        cache, logits = out.cache, out.logits[0, -1]
        generated: list[int] = []
        forced: list[int] = []
        node: _Node | None = None  # inside a title slot: where in the trie
        verb, cited = "", None
        listed: list[Event] = []  # titles cited in the current list ("X and Y")
        slot_end = -1  # length of the decoded text when the last title slot was filled
        slot_start = 0  # generated tokens before the open title slot
        while len(generated) < max_new_tokens:
            if node is not None and node.event is not None and int(logits.argmax()) not in node.children:
                # the slot is filled: the title is spelled out, or the model does not go on from a whole
                # title ("Heat" when "Heat Wave" is citable too)
                cited, node = node.event, None
                listed.append(cited)
                slot_end = len(tok.decode(generated, skip_special_tokens=True))
                forced = rating_tokens(cited)
            if forced:
                token = forced.pop(0)
            elif node is not None:
                allowed = list(node.children)
                token = allowed[int(logits[allowed].argmax())]
            else:
                token = int(logits.argmax())
            generated.append(token)
            if token == eos:
                break
            if node is not None:
                node = node.children[token]  # a spelled-out title (a leaf) is filled at the next step
            elif not forced:
                text = tok.decode(generated, skip_special_tokens=True)
                if slot_end >= 0 and text[slot_end:] == LIST_AND:  # another title of the same list
                    trie = _title_trie(lm, facts.citable(verb, listed))
                    if len(listed) >= MAX_LISTED or not trie.children:
                        return _close_list(text)
                    node, slot_start = trie, len(generated)
                elif m := CITING_VERB.search(text):
                    verb, listed = m.group(1), []
                    trie = _title_trie(lm, facts.citable(verb))
                    if trie.children:
                        node, slot_start = trie, len(generated)
                    elif verb in LIKE_VERBS and facts.items:  # only disliked items to cite: no such clause
                        return _without_open_clause(text[: m.start()])
                elif m := GENRE_LIST.search(text):  # the list; the sentence ends as the tuned format does
                    shared = facts.shared_genres(cited)
                    if not shared:  # nothing to list: the clause that announced a shared genre goes
                        return _without_last_clause(text[: m.start()])
                    forced = [*tok.encode(", ".join(shared) + ").", add_special_tokens=False), eos]
            out = backbone(input_ids=torch.tensor([[token]], device=device), cache=cache, use_cache=True)
            cache, logits = out.cache, out.logits[0, -1]
    finally:
        backbone.train(was_training)
    if node is not None and node.children:  # the budget ran out inside a title: no half title is stated
        text = tok.decode(generated[:slot_start], skip_special_tokens=True)
        return _close_list(text) if text.endswith(LIST_AND) else _without_open_clause(text)
    return tok.decode(generated, skip_special_tokens=True)
