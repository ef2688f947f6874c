"""Log-probabilities of tokens: recorded while sampling, shaped as OpenAI's two logprobs objects.

The figures are the model's own distribution at each position: log-softmax of the raw logits (in
float64), before temperature, top-k/p, penalties or biases, as OpenAI and vLLM report them. A token's
text is its UTF-8 string, or "bytes:\\xNN..." when it holds part of a character (OpenAI's spelling).

    legacy (completions):  {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
    chat:                  {"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}], "refusal"}
"""
from __future__ import annotations

import codecs
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

# (token id, its logprob, [(alternative id, logprob)] best first); None for a prompt's first token
Entry = Optional[Tuple[int, float, List[Tuple[int, float]]]]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """float64 log-probabilities of one row of logits [V] (or rows [T, V])."""
    x = np.asarray(logits, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True)))


def entry(logits: np.ndarray, token: int, top_n: int) -> Entry:
    """What one position records: the token's log-probability and the top_n alternatives."""
    lp = log_softmax(logits)
    top: List[Tuple[int, float]] = []
    if top_n > 0:
        k = min(top_n, lp.shape[0])
        ids = np.argpartition(-lp, k - 1)[:k]
        ids = ids[np.lexsort((ids, -lp[ids]))]            # best first; ties: lower id first
        top = [(int(i), float(lp[i])) for i in ids]
    return int(token), float(lp[token]), top


def prompt_entries(logits: np.ndarray, ids: Sequence[int], top_n: int) -> List[Entry]:
    """Entries of a prompt's tokens from Model.logits(ids) [T, V]: position t-1 predicts token t; the first
    token has nothing before it (None, as OpenAI gives null)."""
    out: List[Entry] = [None]
    for t in range(1, len(ids)):
        out.append(entry(logits[t - 1], ids[t], top_n))
    return out


class Recorder:
    """A sampler that also records each picked token's Entry (from the raw logits it is given).

    The engine thread appends; the request's coroutine reads the entries of the tokens it has seen (a
    chunk is queued after its token was recorded)."""

    def __init__(self, sampler: Callable, top_n: int):
        self.sampler = sampler
        self.top_n = top_n
        self.entries: List[Entry] = []

    @property
    def seed(self):
        return getattr(self.sampler, "seed", None)

    def __call__(self, logits, ids):
        token = self.sampler(logits, ids)
        self.entries.append(entry(logits, token, self.top_n))
        return token


def token_text(tokenizer, token: int) -> str:
    b = tokenizer.decode_single_token_bytes(token)
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{c:02x}" for c in b)


class Offsets:
    """Character offsets of tokens in the text they decode to, fed one token at a time (a token that ends
    inside a character starts where the text so far ends)."""

    def __init__(self, tokenizer, start: int = 0):
        self._bytes = tokenizer.decode_single_token_bytes
        self._dec = codecs.getincrementaldecoder("utf-8")("replace")
        self.pos = start

    def feed(self, token: int) -> int:
        at = self.pos
        self.pos += len(self._dec.decode(self._bytes(token)))
        return at


def legacy(tokenizer, entries: Sequence[Entry], token_ids: Sequence[int], offsets: Offsets) -> dict:
    """OpenAI's completions logprobs object for these tokens (offsets continue across calls)."""
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for tid, e in zip(token_ids, entries):
        out["tokens"].append(token_text(tokenizer, tid))
        out["text_offset"].append(offsets.feed(tid))
        if e is None:
            out["token_logprobs"].append(None)
            out["top_logprobs"].append(None)
        else:
            out["token_logprobs"].append(e[1])
            out["top_logprobs"].append({token_text(tokenizer, i): lp for i, lp in e[2]})
    return out


def chat(tokenizer, entries: Sequence[Entry]) -> dict:
    """OpenAI's chat logprobs object for these tokens."""
    def one(tid, lp):
        return {"token": token_text(tokenizer, tid), "logprob": lp,
                "bytes": list(tokenizer.decode_single_token_bytes(tid))}
    content = [{**one(e[0], e[1]), "top_logprobs": [one(i, lp) for i, lp in e[2]]} for e in entries if e]
    return {"content": content, "refusal": None}


def released(tokenizer, token_ids: Sequence[int], text_len: int) -> int:
    """How many of the generated tokens reach into the released text (a stop string's tokens, and
    <|endoftext|>, do not): those whose first character lies before text_len."""
    offsets = Offsets(tokenizer)
    n = 0
    for tid in token_ids:
        at = offsets.feed(tid)
        if at >= text_len or tid == tokenizer.eot_token:
            break
        n += 1
    return n
