"""OpenAI's wire format: request bodies checked into a GenerationSpec, results shaped as OpenAI's objects.

Request fields follow the API reference (https://platform.openai.com/docs/api-reference/completions/create
and .../chat/create), plus llama-server's extensions top_k, min_p, repeat_penalty, repeat_last_n and
ignore_eos. Every bad field is an APIError(400) that names it (`param`), before anything is queued; a
prompt that does not fit says how many tokens it has and how many the context holds. Fields GPT-2 cannot
honour (tools, suffix, best_of > n, a response_format other than text) are refused rather than ignored.

Defaults are OpenAI's: temperature 1, top_p 1, n 1, max_tokens 16 for completions and "until a stop or the
end of the context" for chat; top_k 0 and repeat_penalty 1 (off), so a plain OpenAI request samples from
the model's whole distribution. finish_reason "eos" (<|endoftext|>) is reported as OpenAI's "stop".
"""
from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..errors import ContextLengthError, InvalidTokenError
from ..generation.chat import ROLES, render_messages
from ..generation.loop import context_size, prepare_prompt
from ..generation.sampling import SamplingParams

MAX_CHOICES = 64          # prompts x n in one request
MAX_STOP = 4              # OpenAI's limit on stop sequences
MAX_TOP_LOGPROBS = 20     # alternatives per token (OpenAI: 5 for completions, 20 for chat)
SEED_MOD = 2 ** 63        # OpenAI seeds are any int64; ours are non-negative

# Fields a GPT-2 server cannot honour: refused when present and not null/default
_UNSUPPORTED = ("suffix", "tools", "tool_choice", "functions", "function_call", "audio", "modalities",
                "prediction", "parallel_tool_calls")


class APIError(Exception):
    """An error to send as OpenAI's error object {"error": {message, type, param, code}} with a status."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: Optional[str] = None, code: Optional[str] = None,
                 headers: Optional[Dict[str, str]] = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: Optional[str] = None,
               code: Optional[str] = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad(param: str, message: str, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


# -- field checks ---------------------------------------------------------------------------------
def kind_of(v) -> str:
    """How an error message names a JSON value's type."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "an array"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


def number(body: dict, name: str, default, lo=None, hi=None, lo_open=False):
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise bad(name, f"invalid type for '{name}': expected a finite number, got {kind_of(v)}", "invalid_type")
    if lo is not None and (v <= lo if lo_open else v < lo):
        raise bad(name, f"invalid '{name}': expected a value {'>' if lo_open else '>='} {lo}, got {v}")
    if hi is not None and v > hi:
        raise bad(name, f"invalid '{name}': expected a value <= {hi}, got {v}")
    return float(v)


def integer(body: dict, name: str, default, lo=None, hi=None):
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise bad(name, f"invalid type for '{name}': expected an integer, got {kind_of(v)}", "invalid_type")
    if lo is not None and v < lo:
        raise bad(name, f"invalid '{name}': expected a value >= {lo}, got {v}")
    if hi is not None and v > hi:
        raise bad(name, f"invalid '{name}': expected a value <= {hi}, got {v}")
    return v


def boolean(body: dict, name: str, default: bool = False) -> bool:
    v = body.get(name)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise bad(name, f"invalid type for '{name}': expected a boolean, got {kind_of(v)}", "invalid_type")
    return v


def string(body: dict, name: str, default: Optional[str] = None) -> Optional[str]:
    v = body.get(name)
    if v is None:
        return default
    if not isinstance(v, str):
        raise bad(name, f"invalid type for '{name}': expected a string, got {kind_of(v)}", "invalid_type")
    return v


def _stops(body: dict) -> List[str]:
    v = body.get("stop")
    if v is None:
        return []
    stops = [v] if isinstance(v, str) else v
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad("stop", f"invalid type for 'stop': expected a string or an array of strings, got {kind_of(v)}",
                  "invalid_type")
    if len(stops) > MAX_STOP:
        raise bad("stop", f"invalid 'stop': at most {MAX_STOP} stop sequences, got {len(stops)}")
    if any(not s for s in stops):
        raise bad("stop", "invalid 'stop': a stop sequence must not be empty")
    return stops


def _logit_bias(body: dict, n_vocab: int) -> Dict[int, float]:
    v = body.get("logit_bias")
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise bad("logit_bias", f"invalid type for 'logit_bias': expected an object, got {kind_of(v)}",
                  "invalid_type")
    out = {}
    for key, bias in v.items():
        try:
            tid = int(key)
        except (TypeError, ValueError):
            raise bad("logit_bias", f"invalid 'logit_bias': key {key!r} is not a token id") from None
        if not 0 <= tid < n_vocab:
            raise bad("logit_bias", f"invalid 'logit_bias': token id {tid} is outside the vocabulary "
                                    f"[0, {n_vocab})")
        if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not -100 <= bias <= 100:
            raise bad("logit_bias", f"invalid 'logit_bias': the bias of {tid} must be a number in "
                                    f"[-100, 100], got {bias!r}")
        out[tid] = float(bias)
    return out


def _refuse_unsupported(body: dict) -> None:
    for name in _UNSUPPORTED:
        if body.get(name) not in (None, [], ""):
            raise bad(name, f"'{name}' is not supported by this server (GPT-2 has no such ability)",
                      "unsupported_parameter")
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise bad("response_format", "only response_format {\"type\": \"text\"} is supported",
                  "unsupported_parameter")


# -- what a request asks for ---------------------------------------------------------------------
@dataclass
class GenerationSpec:
    """A checked request: what to generate for each prompt and how. One choice per (prompt, k < n)."""
    kind: str                                   # "completion" or "chat"
    prompts: List[List[int]]                    # token ids, each fitting the context
    prompt_texts: List[str]                     # for echo
    n: int
    max_tokens: Optional[int]                   # None: until a stop or the end of the context
    stop: List[str]
    params: SamplingParams                      # presence/frequency penalties and logit_bias included
    seed: Optional[int]
    stream: bool = False
    include_usage: bool = False
    logprobs: Optional[int] = None              # top-N alternatives per token; None: no logprobs
    echo: bool = False
    ignore_eos: bool = False
    user: Optional[str] = None
    model: Optional[str] = None

    @property
    def n_choices(self) -> int:
        return len(self.prompts) * self.n

    def choice_seed(self, k: int) -> Optional[int]:
        """The seed of the k-th choice of a prompt: the request's seed, then seed+1, ... (None: random)."""
        return None if self.seed is None else (self.seed + k) % SEED_MOD


def _common(body: dict, model, *, kind: str, max_tokens_default: Optional[int]) -> dict:
    """The fields completions and chat share, checked."""
    _refuse_unsupported(body)
    n_vocab = model.config.n_vocab
    name = body.get("model")
    if name is not None and not isinstance(name, str):
        raise bad("model", f"invalid type for 'model': expected a string, got {kind_of(name)}", "invalid_type")
    mt_name = "max_completion_tokens" if kind == "chat" and body.get("max_completion_tokens") is not None \
        else "max_tokens"
    max_tokens = integer(body, mt_name, max_tokens_default, lo=0)
    n = integer(body, "n", 1, lo=1, hi=MAX_CHOICES)
    best_of = integer(body, "best_of", n, lo=1)
    if best_of != n:
        raise bad("best_of", "best_of other than n is not supported", "unsupported_parameter")
    temperature = number(body, "temperature", 1.0, lo=0.0, hi=2.0)
    top_p = number(body, "top_p", 1.0, lo=0.0, hi=1.0)
    top_k = integer(body, "top_k", 0, lo=0)
    min_p = number(body, "min_p", 0.0, lo=0.0, hi=1.0)
    repeat_penalty = number(body, "repeat_penalty", 1.0, lo=0.0, lo_open=True)
    repeat_last_n = integer(body, "repeat_last_n", 64, lo=-1)
    seed = integer(body, "seed", None)
    stream = boolean(body, "stream")
    opts = body.get("stream_options")
    if opts is not None:
        if not isinstance(opts, dict):
            raise bad("stream_options", f"invalid type for 'stream_options': expected an object, got "
                                        f"{kind_of(opts)}", "invalid_type")
        if not stream:
            raise bad("stream_options", "stream_options are only allowed with stream: true")
    include_usage = boolean(opts or {}, "include_usage")
    return dict(
        n=n, max_tokens=max_tokens, stop=_stops(body), seed=None if seed is None else seed % SEED_MOD,
        params=SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                              repetition_penalty=repeat_penalty, repeat_last_n=repeat_last_n,
                              presence_penalty=number(body, "presence_penalty", 0.0, lo=-2.0, hi=2.0),
                              frequency_penalty=number(body, "frequency_penalty", 0.0, lo=-2.0, hi=2.0),
                              logit_bias=_logit_bias(body, n_vocab)),
        stream=stream, include_usage=include_usage,
        ignore_eos=boolean(body, "ignore_eos"), user=string(body, "user"), model=name)


def _fit(model, ids: List[int], max_tokens: Optional[int], param: str) -> None:
    """400 when the prompt and the tokens asked for do not fit the context (OpenAI refuses; so do we)."""
    n_ctx = context_size(model)
    if len(ids) > n_ctx:
        raise APIError(400, f"the prompt is {len(ids)} tokens but the model's context holds {n_ctx}",
                       param=param, code="context_length_exceeded")
    if max_tokens is not None and len(ids) + max_tokens > n_ctx:
        raise APIError(400, f"the model's context holds {n_ctx} tokens, but {len(ids) + max_tokens} were "
                            f"asked for ({len(ids)} in the prompt, {max_tokens} for the completion); "
                            f"shorten the prompt or lower max_tokens",
                       param="max_tokens", code="context_length_exceeded")


def _prompt_ids(model, prompt, max_tokens) -> List[int]:
    try:
        return prepare_prompt(model, prompt, max_new_tokens=max_tokens, on_notice=None)
    except ContextLengthError:
        raise                                   # measured again by _fit, with the right message
    except InvalidTokenError as e:
        raise bad("prompt", f"invalid 'prompt': {e}") from None


def _split_prompts(v) -> list:
    """OpenAI's four prompt shapes -> a list of (str or [int])."""
    def is_tok(x):
        return isinstance(x, int) and not isinstance(x, bool)
    if isinstance(v, str):
        return [v]
    if isinstance(v, list) and v:
        if all(isinstance(p, str) for p in v):
            return list(v)
        if all(is_tok(t) for t in v):
            return [list(v)]
        if all(isinstance(p, list) and p and all(is_tok(t) for t in p) for p in v):
            return [list(p) for p in v]
    if isinstance(v, list) and not v:
        raise bad("prompt", "invalid 'prompt': an empty array")
    raise bad("prompt", "invalid 'prompt': expected a string, an array of strings, an array of token ids "
                        f"or an array of arrays of token ids, got {kind_of(v)}", "invalid_type")


def parse_completion(body: dict, model) -> GenerationSpec:
    """POST /v1/completions -> GenerationSpec (APIError(400) for anything wrong)."""
    if "prompt" not in body:
        raise bad("prompt", "missing required parameter: 'prompt'", "missing_required_parameter")
    c = _common(body, model, kind="completion", max_tokens_default=16)
    raw = _split_prompts(body["prompt"])
    if len(raw) * c["n"] > MAX_CHOICES:
        raise bad("n", f"invalid 'n': {len(raw)} prompts x n={c['n']} is more than {MAX_CHOICES} choices")
    lp = body.get("logprobs")
    logprobs = None if lp is None else integer(body, "logprobs", None, lo=0, hi=MAX_TOP_LOGPROBS)
    prompts, texts = [], []
    tok = model.tokenizer
    for p in raw:
        try:
            ids = _prompt_ids(model, p, c["max_tokens"])
        except ContextLengthError:
            ids = tok.encode(p) if isinstance(p, str) else list(p)
        _fit(model, ids, c["max_tokens"], "prompt")
        prompts.append(ids)
        texts.append(p if isinstance(p, str) else tok.decode(ids))
    return GenerationSpec(kind="completion", prompts=prompts, prompt_texts=texts, logprobs=logprobs,
                          echo=boolean(body, "echo"), **c)


def _message_text(i: int, m) -> Tuple[str, str]:
    where = f"messages[{i}]"
    if not isinstance(m, dict):
        raise bad("messages", f"invalid '{where}': expected an object, got {kind_of(m)}", "invalid_type")
    role = m.get("role")
    role = "system" if role == "developer" else role
    if role not in ROLES:
        raise bad("messages", f"invalid '{where}.role': expected one of {', '.join(ROLES)}, got {role!r}")
    content = m.get("content")
    if content is None and role == "assistant":
        content = ""
    if isinstance(content, list):               # content parts: text only
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad("messages", f"invalid '{where}.content': only text parts are supported")
            parts.append(part["text"])
        content = "".join(parts)
    if not isinstance(content, str):
        raise bad("messages", f"invalid '{where}.content': expected a string or text parts, got {kind_of(content)}",
                  "invalid_type")
    return role, content


def parse_chat(body: dict, model) -> GenerationSpec:
    """POST /v1/chat/completions -> GenerationSpec: the messages rendered through the REPL's template."""
    msgs = body.get("messages")
    if msgs is None:
        raise bad("messages", "missing required parameter: 'messages'", "missing_required_parameter")
    if not isinstance(msgs, list) or not msgs:
        raise bad("messages", "invalid 'messages': expected a non-empty array of messages", "invalid_type")
    c = _common(body, model, kind="chat", max_tokens_default=None)
    turns = [_message_text(i, m) for i, m in enumerate(msgs)]
    ids = render_messages(model.tokenizer, turns)
    _fit(model, ids, c["max_tokens"], "messages")
    want = boolean(body, "logprobs")
    top = integer(body, "top_logprobs", None, lo=0, hi=MAX_TOP_LOGPROBS)
    if top is not None and not want:
        raise bad("top_logprobs", "top_logprobs needs logprobs: true")
    return GenerationSpec(kind="chat", prompts=[ids], prompt_texts=[""],
                          logprobs=(top or 0) if want else None, **c)


# -- responses -------------------------------------------------------------------------------------
FINISH = {"stop": "stop", "eos": "stop", "length": "length"}


def finish_reason(reason: Optional[str]) -> Optional[str]:
    """Our finish reasons as OpenAI names them ("eos" -> "stop")."""
    return None if reason is None else FINISH.get(reason, reason)


def new_id(kind: str) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


@dataclass
class Envelope:
    """What every object of one response shares."""
    id: str
    kind: str
    model: str
    fingerprint: str
    created: int = field(default_factory=lambda: int(time.time()))

    def head(self, chunk: bool) -> dict:
        obj = ("chat.completion.chunk" if chunk else "chat.completion") if self.kind == "chat" \
            else "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": self.fingerprint}


def completion_choice(index: int, text: str, logprobs, reason: Optional[str]) -> dict:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason(reason)}


def chat_choice(index: int, text: str, logprobs, reason: Optional[str]) -> dict:
    return {"index": index, "message": {"role": "assistant", "content": text, "refusal": None},
            "logprobs": logprobs, "finish_reason": finish_reason(reason)}


def chat_delta(index: int, delta: dict, logprobs, reason: Optional[str]) -> dict:
    return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason(reason)}


def whole(env: Envelope, choices: Sequence[dict], use: dict) -> dict:
    """The non-streamed response object."""
    return {**env.head(False), "choices": list(choices), "usage": use}


def chunk(env: Envelope, choices: Sequence[dict], use: Any = None, with_usage: bool = False) -> dict:
    """One streamed chunk; with stream_options.include_usage every chunk has "usage" (null but the last)."""
    out = {**env.head(True), "choices": list(choices)}
    if with_usage:
        out["usage"] = use
    return out
