"""A conversation with GPT-2 in the style of Carlini's C "ChatGPT clone" (carlini/c-chat-gpt-2).

GPT-2 is not instruction-tuned, so the chat is a continuation of a hidden few-shot dialogue between
Alice (the user) and Bob (the bot). Each user line is added as "\\nAlice: ...\\nBob:" and Bob's reply
ends at a newline, at "\\nAlice:" or at <|endoftext|> (never before its first token: an empty reply is
no answer).

The conversation is kept as token ids. The KV cache holds the last prompt and reply; the next prompt
prefills only what follows the longest prefix it shares with them (a new turn: its own tokens; /regen:
nothing; /undo or dropped turns: from the first changed token on). When the context (n_ctx positions) would
overflow, the oldest whole turns are dropped (never the preamble), the rest is re-prefilled, and a
notice says so; GPT-2's positions are absolute, so the cache cannot be shifted instead.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np

from ..errors import ContextLengthError
from ..notices import notice
from .loop import GenerationChunk, KVCache, context_size, stream_generate
from .sampling import Sampler, SamplingParams

USER, BOT = "Alice", "Bob"
GREETING = "How can I help you?"

# Our own few-shot opening in the spirit of Carlini's run.sh: Bob is polite, answers, and ends on the
# greeting the REPL shows as "AI: How can I help you?".
PREAMBLE = (
    f"\n{USER}: Hi, how are you today?"
    f"\n{BOT}: I am well, thanks. I am an AI assistant, a language model made by OpenAI."
    f"\n{USER}: Will you answer my questions?"
    f"\n{BOT}: Of course. Ask me anything and I will do my best."
    f"\n{USER}: What should I call you?"
    f"\n{BOT}: Call me {BOT}."
    f"\n{USER}: Nice to meet you, {BOT}. I am {USER}."
    f"\n{BOT}: Nice to meet you too. {GREETING}"
)

TEMPLATES = ("carlini",)
ROLES = ("system", "user", "assistant")


# -- the template: the one place that says how a conversation becomes GPT-2's prompt (the REPL's Chat and
#    the server's /v1/chat/completions both render through these) --------------------------------------
def user_turn(text: str) -> str:
    """The text one user message adds: Alice's line, then Bob's cue (his reply continues from it)."""
    return f"\n{USER}: {text}\n{BOT}:"


def reply_text(content: str) -> str:
    """An earlier reply of Bob's as the prompt holds it: after "Bob:" with one space (as generated)."""
    return content if content.startswith(" ") else " " + content


def reply_stops(multiline: bool = False, extra: Iterable[str] = ()) -> List[str]:
    """The strings that end Bob's reply: the next "Alice:" line and, unless multiline, any newline."""
    return [f"\n{USER}:", *extra] if multiline else ["\n", f"\n{USER}:", *extra]


def reply_enders(tokenizer, n_vocab: int) -> np.ndarray:
    """Ids that would end a reply before it starts: <|endoftext|> and the tokens that open with a newline
    (a one-off scan of the vocabulary, ~15 ms)."""
    ids = [i for i in range(n_vocab)
           if i != tokenizer.eot_token and tokenizer.decode_bytes([i]).startswith(b"\n")]
    return np.array(ids + [tokenizer.eot_token], dtype=np.intp)


def no_empty_reply(sampler: Callable, enders: np.ndarray) -> Callable:
    """A sampler for one reply whose first token may not be one of `enders` (no empty replies)."""
    first = [True]

    def pick(logits, ids):
        if first[0]:
            first[0] = False
            logits = logits.copy()
            logits[enders] = -np.inf
        return sampler(logits, ids)
    return pick


def render_messages(tokenizer, messages: Iterable[Tuple[str, str]], preamble: Optional[str] = None) -> List[int]:
    """An OpenAI-style conversation [(role, text)] as prompt ids, laid out as Chat lays out its turns:
    the system texts first (joined by newlines), then the preamble, then per user message user_turn(text)
    and per assistant message reply_text(text), each piece encoded on its own (as Chat's history is).
    After a user message the prompt ends at Bob's cue; after an assistant message it continues that reply.
    `<|endoftext|>` in the texts is text, not the special token."""
    preamble = PREAMBLE if preamble is None else preamble
    system, pieces = [], []
    for role, text in messages:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r} (known: {', '.join(ROLES)})")
        if role == "system":
            system.append(text)
        else:
            pieces.append(user_turn(text) if role == "user" else reply_text(text))
    head = "\n".join(system) + preamble
    ids = tokenizer.encode(head) if head else [tokenizer.eot_token]
    for piece in pieces:
        ids += tokenizer.encode(piece)
    return ids
TRANSCRIPT_VERSION = 1
_REPLY_PARAMS = ("max_tokens", "stop", "multiline")     # transcript "params" beyond SamplingParams


@dataclass
class Turn:
    """One exchange: the user's text and the bot's reply as generated (leading space and all)."""
    user: str
    reply: str = ""
    finish_reason: Optional[str] = None
    user_ids: List[int] = field(default_factory=list, repr=False)
    reply_ids: List[int] = field(default_factory=list, repr=False)


class Chat:
    """A conversation with a Model.

        chat = gpt2cy.Chat(model, seed=1)
        print(chat.send("What is the capital of France?"))
        for chunk in chat.send("And of Italy?", stream=True):
            print(chunk.text, end="", flush=True)

    Sampling parameters live in `chat.params` (a SamplingParams; assign a new one to change them),
    `chat.max_new_tokens` caps each reply, `chat.stop` adds stop strings to the built-in ones, and
    `chat.multiline = True` lets a reply run over several lines (it then ends only at "\nAlice:", eos,
    a stop string or the token limit).
    `on_notice` receives one-line notices (context overflow); by default gpt2cy.notices.notice (the "gpt2cy"
    logger, or the handler the program set; None drops them).
    The last chunk of a streamed reply carries its Response (`chunk.response`), as generate's does.
    `chat.save(path)` / `chat.load(path)` write and restore the conversation as a JSON transcript.
    """

    def __init__(self, model, *, template: str = "carlini", preamble: Optional[str] = None,
                 max_new_tokens: Optional[int] = 128, temperature: float = 0.8, top_k: int = 40,
                 top_p: float = 0.95, min_p: float = 0.0, repetition_penalty: float = 1.1,
                 repeat_last_n: int = 64, seed: Optional[int] = None, stop: Iterable[str] = (),
                 multiline: bool = False, on_notice: Optional[Callable[[str], None]] = notice):
        if template not in TEMPLATES:
            raise ValueError(f"unknown chat template {template!r} (known: {', '.join(TEMPLATES)})")
        self.model = model
        self.template = template
        self.preamble = PREAMBLE if preamble is None else preamble
        self.max_new_tokens = max_new_tokens
        self.params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                     repetition_penalty=repetition_penalty, repeat_last_n=repeat_last_n)
        # the newline ends every turn and sits in every penalty window: penalising it would stretch replies
        self._sampler = Sampler(self.params, seed, exempt=model.tokenizer.encode("\n"))
        self.stop = list(stop)
        self.multiline = multiline
        self.on_notice = on_notice
        self.turns: List[Turn] = []
        self._cache = KVCache(model)
        self._enders: Optional[np.ndarray] = None
        tok = model.tokenizer
        self._preamble_ids = tok.encode(self.preamble) if self.preamble else [tok.eot_token]
        if len(self._preamble_ids) >= self.n_ctx:
            raise ContextLengthError(f"the chat preamble is {len(self._preamble_ids)} tokens; "
                                     f"the context holds {self.n_ctx}")

    # -- state -----------------------------------------------------------------------------------
    @property
    def seed(self) -> int:
        return self._sampler.seed

    def reseed(self, seed: Optional[int] = None) -> int:
        """Restart the random stream (None or -1: a fresh seed); returns the seed."""
        return self._sampler.reseed(seed)

    @property
    def history(self) -> List[Tuple[str, str]]:
        """The kept exchanges as (user text, reply text)."""
        return [(t.user, t.reply.strip()) for t in self.turns]

    @property
    def n_ctx(self) -> int:
        """The context the conversation must fit in (the model's n_ctx, which may be below 1024)."""
        return context_size(self.model)

    @property
    def context_used(self) -> int:
        """Tokens the conversation so far takes (preamble included), out of n_ctx."""
        return len(self._preamble_ids) + sum(len(t.user_ids) + len(t.reply_ids) for t in self.turns)

    def clear(self) -> None:
        """Forget every exchange; the preamble stays (and stays cached)."""
        self.turns = []

    # -- transcripts -----------------------------------------------------------------------------
    def transcript(self, model_name: Optional[str] = None) -> dict:
        """The conversation as a JSON-ready dict: version, model, params, turns [{user, reply, finish_reason}]."""
        params = asdict(self.params)
        params.update(max_tokens=-1 if self.max_new_tokens is None else self.max_new_tokens,
                      stop=list(self.stop), multiline=self.multiline, seed=self.seed)
        return {"version": TRANSCRIPT_VERSION,
                "model": model_name or self.model.config.name or "",
                "params": params,
                "turns": [{"user": t.user, "reply": t.reply, "finish_reason": t.finish_reason}
                          for t in self.turns]}

    def restore(self, data) -> None:
        """Replace the turns (and the sampling parameters and seed it names) with a transcript's. Nothing
        changes unless all of it is valid (ValueError, one line, otherwise); params it names that this
        version does not know are ignored with a notice. The KV cache is left as it is: the
        next send prefills what follows the prefix it shares with the restored conversation."""
        if not isinstance(data, dict):
            raise ValueError("a transcript is a JSON object")
        if data.get("version") != TRANSCRIPT_VERSION:
            raise ValueError(f"unsupported transcript version {data.get('version')!r} "
                             f"(expected {TRANSCRIPT_VERSION})")
        raw_turns = data.get("turns")
        if not isinstance(raw_turns, list):
            raise ValueError("the transcript has no list of turns")
        raw = data.get("params") or {}
        if not isinstance(raw, dict):
            raise ValueError("the transcript's params must be an object")
        known = set(asdict(self.params))
        try:
            params = self.params.replace(**{k: v for k, v in raw.items() if k in known})
        except TypeError as e:
            raise ValueError(f"bad params in the transcript: {e}") from None
        # a logit_bias saved with another vocabulary fails here, not at the next reply
        params.check_vocab(self.model.config.n_vocab)
        max_tokens = raw.get("max_tokens", -1 if self.max_new_tokens is None else self.max_new_tokens)
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < -1:
            raise ValueError(f"bad max_tokens in the transcript: {max_tokens!r}")
        stop = raw.get("stop", self.stop)
        if not isinstance(stop, list) or not all(isinstance(x, str) and x for x in stop):
            raise ValueError("the transcript's stop must be a list of non-empty strings")
        multiline = raw.get("multiline", self.multiline)
        if not isinstance(multiline, bool):
            raise ValueError("the transcript's multiline must be true or false")
        seed = raw.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ValueError(f"bad seed in the transcript: {seed!r}")
        unknown = sorted(set(raw) - known - set(_REPLY_PARAMS) - {"seed"})
        tok = self.model.tokenizer
        turns = []
        for i, t in enumerate(raw_turns):
            if not isinstance(t, dict) or not isinstance(t.get("user"), str) \
                    or not isinstance(t.get("reply", ""), str):
                raise ValueError(f"turn {i + 1} of the transcript needs text 'user' and 'reply' fields")
            finish = t.get("finish_reason")
            reply = t.get("reply", "")
            turns.append(Turn(user=t["user"], reply=reply,
                              finish_reason=finish if isinstance(finish, str) else None,
                              user_ids=tok.encode(user_turn(t["user"])),
                              reply_ids=tok.encode(reply) if reply else []))
        self.params, self.max_new_tokens = params, (None if max_tokens == -1 else max_tokens)
        self.stop, self.multiline, self.turns = list(stop), multiline, turns
        if seed is not None:                            # the saved seed restarts the random stream
            self.reseed(seed)
        if unknown and self.on_notice:
            self.on_notice(f"the transcript's params {', '.join(map(repr, unknown))} are not known here; "
                           f"ignored")

    def save(self, path: str, model_name: Optional[str] = None) -> None:
        """Write the transcript to `path` as JSON (replacing the file whole, never leaving half of it)."""
        path = os.path.expanduser(path)
        text = json.dumps(self.transcript(model_name), indent=1, ensure_ascii=True) + "\n"
        tmp = f"{path}.tmp{os.getpid()}"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def load(self, path: str) -> dict:
        """Read a transcript written by save() and restore it; returns it. OSError for an unreadable
        file, ValueError (one line) for anything that is not a valid transcript."""
        path = os.path.expanduser(path)
        with open(path, "rb") as f:
            raw = f.read()
        try:
            data = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise ValueError("not a transcript: the file is not UTF-8 text") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"not a transcript: invalid JSON ({e.msg} at line {e.lineno})") from None
        self.restore(data)
        return data

    # -- talking ---------------------------------------------------------------------------------
    def send(self, text: str, stream: bool = False) -> Union[str, Iterator[GenerationChunk]]:
        """Add the user's `text` and generate Bob's reply.

        stream=False returns the reply text (stripped); stream=True returns an iterator of
        GenerationChunk. The exchange joins the history however the iteration ends: fully, by a stop,
        or cut short (an exception such as KeyboardInterrupt, or closing the iterator) with the text
        shown so far.
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be str, got {type(text).__name__}")
        turn = Turn(user=text, user_ids=self.model.tokenizer.encode(user_turn(text)))
        prompt = self._fit(turn)
        chunks = self._reply(turn, prompt)
        if stream:
            return chunks
        for _ in chunks:
            pass
        return turn.reply.strip()

    def undo(self) -> Optional[Turn]:
        """Drop the last exchange; returns it (None when there is none)."""
        return self.turns.pop() if self.turns else None

    def regen(self, stream: bool = False) -> Union[str, Iterator[GenerationChunk]]:
        """Forget the last reply and generate a new one for the same user text."""
        if not self.turns:
            raise ValueError("there is no reply to regenerate")
        last = self.turns.pop()
        return self.send(last.user, stream=stream)

    def _fit(self, turn: Turn) -> List[int]:
        """The prompt for `turn`, dropping the oldest turns until it and a reply fit the context."""
        n_ctx = self.n_ctx
        mnt = self.max_new_tokens
        room = min(mnt, n_ctx // 2) if mnt is not None and mnt > 0 else n_ctx // 4
        need = len(self._preamble_ids) + len(turn.user_ids)
        if need >= n_ctx:
            raise ContextLengthError(
                f"the message is {len(turn.user_ids)} tokens; at most "
                f"{n_ctx - len(self._preamble_ids) - 1} fit in the context ({n_ctx})")
        sizes = [len(t.user_ids) + len(t.reply_ids) for t in self.turns]
        total = need + sum(sizes)
        dropped = 0
        while dropped < len(sizes) and total + room > n_ctx:
            total -= sizes[dropped]
            dropped += 1
        if dropped:
            self.turns = self.turns[dropped:]
            if self.on_notice:
                s = "s" if dropped > 1 else ""
                self.on_notice(f"[context full: dropped {dropped} oldest turn{s}]")
        prompt = list(self._preamble_ids)
        for t in self.turns:
            prompt += t.user_ids + t.reply_ids
        return prompt + turn.user_ids

    def _no_empty_reply(self) -> np.ndarray:
        """Ids that would end the reply before it starts: <|endoftext|> and tokens that open with a
        newline (a one-off scan of the vocabulary, ~15 ms)."""
        if self._enders is None:
            self._enders = reply_enders(self.model.tokenizer, self.model.config.n_vocab)
        return self._enders

    def _pick(self):
        """The sampler for one reply: the first token may not end the turn (no empty replies)."""
        return no_empty_reply(self._sampler, self._no_empty_reply())

    def _reply(self, turn: Turn, prompt: List[int]) -> Iterator[GenerationChunk]:
        self._sampler.params = self.params
        pick = self._pick()
        gen: List[int] = []
        parts: List[str] = []
        stops = reply_stops(self.multiline, self.stop)
        chunks = stream_generate(self.model, prompt, pick, max_new_tokens=self.max_new_tokens, stop=stops,
                                 cache=self._cache, seed=self.seed, on_notice=self.on_notice)
        try:
            for chunk in chunks:
                if chunk.token is not None:
                    gen.append(chunk.token)
                parts.append(chunk.text)
                turn.finish_reason = chunk.finish_reason
                yield chunk
        finally:
            chunks.close()
            turn.reply = "".join(parts)
            turn.reply_ids = self._reply_ids(gen, turn.reply)
            self.turns.append(turn)

    def _reply_ids(self, gen: List[int], reply: str) -> List[int]:
        """Token ids for the reply text: the generated ones when they spell it exactly (so the KV cache
        stays a prefix of the next prompt), else a fresh encoding."""
        tok = self.model.tokenizer
        for k in (len(gen) - 1, len(gen)):
            if k >= 0 and tok.decode(gen[:k], errors="replace") == reply:
                return gen[:k]
        return tok.encode(reply)
