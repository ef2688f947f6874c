"""The one description of a finished generation: text, token ids, why it ended, usage, timings, seed, model.

The token loop (generation.loop) builds it; the last streamed chunk carries it (`chunk.response`),
`gpt2cy.generation.complete(...)` returns it, and `gpt2cy generate --json`, `--jsonl`, the REPL's stats line
and the HTTP server print it. `to_dict()` is close to OpenAI's completion object: the usage names are
OpenAI's (https://platform.openai.com/docs/api-reference/completions/object), the text and finish reason
sit at the top level instead of in `choices[0]` (one prompt, one completion), and the timings are
llama.cpp server's idea (its `/completion` reply, tools/server/README.md in ggml-org/llama.cpp).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Optional, Tuple

# "stop": a stop string; "length": the token limit or the end of the context; "eos": <|endoftext|>;
# "interrupted": cut short by the caller (Ctrl-C, or the stream closed) with the text released so far.
FINISH_REASONS = ("stop", "length", "eos", "interrupted")


@dataclass(frozen=True)
class Usage:
    """Token counts, with OpenAI's names. cached_tokens: prompt tokens found in the KV cache (not run again)."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.total_tokens,
                "prompt_tokens_details": {"cached_tokens": self.cached_tokens}}


@dataclass(frozen=True)
class Timings:
    """Wall time of the two phases and their speed.

    prompt_ms / prompt_tps: the prefill of the prompt tokens that were not cached, and those tokens per second.
    gen_ms / gen_tps: from the end of the prefill to the last token, and generated tokens per second.
    load_ms: loading the model, when the caller measured it (the command line does); else None.
    """
    prompt_ms: float = 0.0
    prompt_tps: float = 0.0
    gen_ms: float = 0.0
    gen_tps: float = 0.0
    load_ms: Optional[float] = None

    def replace(self, **changes) -> "Timings":
        """A copy with some fields changed."""
        return replace(self, **changes)

    def to_dict(self) -> dict:
        d = {"prompt_ms": round(self.prompt_ms, 3), "prompt_tps": round(self.prompt_tps, 3),
             "gen_ms": round(self.gen_ms, 3), "gen_tps": round(self.gen_tps, 3)}
        if self.load_ms is not None:
            d["load_ms"] = round(self.load_ms, 3)
        return d


@dataclass(frozen=True)
class Response:
    """A finished (or interrupted) generation.

    text: the text released to the caller (stop strings left out; it is exactly the join of the streamed
        chunks' text). token_ids: every token sampled, in order (a stop string's tokens included).
    finish_reason: one of FINISH_REASONS. seed: the seed of the random stream, also when none was given
        (one was drawn): pass it back to repeat the run. model: the model's name.
    """
    text: str
    token_ids: Tuple[int, ...]
    finish_reason: str
    usage: Usage
    timings: Timings
    seed: Optional[int]
    model: str

    def replace(self, **changes) -> "Response":
        """A copy with some fields changed (e.g. timings=r.timings.replace(load_ms=...))."""
        return replace(self, **changes)

    def to_dict(self) -> dict:
        """JSON-ready: {"object", "model", "text", "tokens", "finish_reason", "usage", "timings", "seed"}."""
        return {"object": "text_completion", "model": self.model, "text": self.text,
                "tokens": list(self.token_ids), "finish_reason": self.finish_reason,
                "usage": self.usage.to_dict(), "timings": self.timings.to_dict(), "seed": self.seed}


def model_name(model) -> str:
    """What a response calls the model: its config's name, else its directory's name, else "gpt2"."""
    cfg = getattr(model, "config", None)
    name = getattr(cfg, "name", "") or ""
    if not name:
        path = getattr(model, "path", None)
        name = os.path.basename(os.path.normpath(path)) if path else ""
    return name or "gpt2"
