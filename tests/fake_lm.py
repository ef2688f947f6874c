"""A tiny stand-in for gpt2cy.Model and its Tokenizer, for unit tests of sampling, stopping, generation
and chat without a checkpoint. Test code only: the package never imports this.

FakeTokenizer: each id is one piece of bytes; `encode` takes the longest matching piece (pieces for
every single byte exist, so any text encodes). The last id is <|endoftext|>.
FakeModel: the Model contract (prefill/step/reset/truncate/n_past/n_ctx/cache_version/config/tokenizer) with
logits from a fixed function of the tokens so far, and counters of the work done.
"""
import numpy as np

from gpt2cy.config import Config
from gpt2cy.errors import ContextLengthError

EOT = "<|endoftext|>"


class _StreamDecoder:
    def __init__(self, tok):
        self.tok, self.buf = tok, b""

    def feed(self, token):
        self.buf += self.tok.pieces[token]
        # release the longest prefix that is complete UTF-8
        for cut in range(len(self.buf), max(-1, len(self.buf) - 4), -1):
            try:
                text = self.buf[:cut].decode("utf-8")
            except UnicodeDecodeError:
                continue
            self.buf = self.buf[cut:]
            return text
        text, self.buf = self.buf.decode("utf-8", "replace"), b""
        return text

    def flush(self):
        text, self.buf = self.buf.decode("utf-8", "replace"), b""
        return text


class FakeTokenizer:
    def __init__(self, words=()):
        pieces = [bytes([b]) for b in range(256)]
        for w in words:
            p = w.encode("utf-8") if isinstance(w, str) else w
            if p not in pieces:
                pieces.append(p)
        pieces.append(EOT.encode())
        self.pieces = pieces
        self.eot_token = len(pieces) - 1
        self.n_vocab = len(pieces)
        self._by_piece = {p: i for i, p in enumerate(pieces[:-1])}
        self._longest = max(len(p) for p in pieces[:-1])

    def encode(self, text, allowed_special=frozenset()):
        data, ids, i = text.encode("utf-8"), [], 0
        while i < len(data):
            if EOT in allowed_special and data.startswith(EOT.encode(), i):
                ids.append(self.eot_token)
                i += len(EOT)
                continue
            for n in range(min(self._longest, len(data) - i), 0, -1):
                j = self._by_piece.get(data[i:i + n])
                if j is not None:
                    ids.append(j)
                    i += n
                    break
        return ids

    def decode_bytes(self, ids):
        return b"".join(self.pieces[i] for i in ids)

    def decode(self, ids, errors="replace"):
        return self.decode_bytes(ids).decode("utf-8", errors)

    def stream_decoder(self):
        return _StreamDecoder(self)


class FakeModel:
    """logits_fn(ids so far) -> [n_vocab] float32. Default: a fixed random Markov table on the last token."""

    def __init__(self, tokenizer=None, n_ctx=64, logits_fn=None, seed=0):
        self.tokenizer = tokenizer or FakeTokenizer()
        V = self.tokenizer.n_vocab
        self.config = Config(n_vocab=V, n_ctx=n_ctx, n_embd=8, n_head=2, n_layer=1, name="fake")
        table = np.random.default_rng(seed).standard_normal((V, V)).astype(np.float32) * 3
        self.logits_fn = logits_fn or (lambda ids: table[ids[-1]])
        self.ids = []
        self.threads = 1
        self.path = "/fake"
        self.prefilled = 0     # tokens run through prefill, over the model's life
        self.steps = 0
        self.resets = 0
        self._version = 0      # bumped by every change to the cache, as Model.cache_version

    @property
    def n_past(self):
        return len(self.ids)

    @property
    def n_ctx(self):
        return self.config.n_ctx

    def cache_version(self, slot=0):
        return self._version

    def reset(self):
        self.ids = []
        self.resets += 1
        self._version += 1

    def truncate(self, n):
        if not 0 <= n <= len(self.ids):
            raise ValueError("cannot truncate")
        self.ids = self.ids[:n]
        self._version += 1

    def _add(self, ids):
        ids = [int(i) for i in ids]
        if not ids:
            raise ValueError("empty")
        if any(not 0 <= i < self.config.n_vocab for i in ids):
            raise ValueError("token id out of range")
        if len(self.ids) + len(ids) > self.config.n_ctx:
            raise ContextLengthError("past n_ctx")
        self.ids += ids
        self._version += 1
        return np.asarray(self.logits_fn(self.ids), dtype=np.float32)

    def prefill(self, ids):
        out = self._add(ids)
        self.prefilled += len(ids)
        return out

    def step(self, token):
        out = self._add([token])
        self.steps += 1
        return out

    def generate(self, prompt, **kw):
        from gpt2cy.generation.loop import generate
        return generate(self, prompt, **kw)


class ScriptModel(FakeModel):
    """After each prefill, says the token ids in `script` (one-hot logits), then <|endoftext|>."""

    def __init__(self, tokenizer, script, n_ctx=64):
        self.script, self.start = list(script), 0
        super().__init__(tokenizer, n_ctx=n_ctx, logits_fn=self._next)

    def _next(self, ids):
        k = len(ids) - self.start
        out = np.zeros(self.tokenizer.n_vocab, np.float32)
        out[self.script[k] if k < len(self.script) else self.tokenizer.eot_token] = 50.0
        return out

    def prefill(self, ids):
        self.start = len(self.ids) + len(ids)
        return super().prefill(ids)
