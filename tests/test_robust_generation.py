"""Issue 12, the generation path: prefill in pieces (Ctrl-C seen between them, bit-identical results) and
one clear error for weights that hold NaN or inf, whatever the sampling (greedy, sampled, chat)."""
import os
import shutil
import signal

import numpy as np
import pytest

import gpt2cy
from gpt2cy.errors import CheckpointError
from gpt2cy.generation import loop
from gpt2cy.generation.chat import Chat
from gpt2cy.generation.loop import KVCache, generate


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return gpt2cy.load(tiny_model_dir, threads=1)


def prompt_ids(model, n=200, seed=3):
    return [int(i) for i in np.random.default_rng(seed).integers(0, model.config.n_vocab, n)]


@pytest.fixture
def pieces(monkeypatch):
    """Force prefill pieces of a fixed size."""
    def force(n):
        monkeypatch.setattr(loop, "PREFILL_CHUNK", n)
        monkeypatch.setattr(loop, "PREFILL_CHUNK_MIN", n)
        monkeypatch.setattr(loop, "PREFILL_CHUNK_MAX", n)
    return force


class Counting:
    """The model with its prefill calls recorded (their lengths); `hook(n_calls)` runs after each."""

    def __init__(self, model, hook=None):
        self._model, self.calls, self.hook = model, [], hook

    def __getattr__(self, name):
        return getattr(self._model, name)

    def prefill(self, ids, **kw):
        out = self._model.prefill(ids, **kw)
        self.calls.append(len(ids))
        if self.hook:
            self.hook(len(self.calls))
        return out


# -- prefill in pieces ---------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 7, 64])
def test_prefill_in_pieces_is_bit_identical_to_one_call(model, pieces, n):
    ids = prompt_ids(model)
    model.reset()
    whole = model.prefill(ids)
    pieces(n)
    counted = Counting(model)
    logits, reused = KVCache(counted).prefill(ids)
    assert reused == 0 and counted.calls == [n] * (len(ids) // n) + ([len(ids) % n] if len(ids) % n else [])
    assert np.array_equal(logits, whole)
    assert model.n_past == len(ids)
    nxt = int(np.argmax(whole))                    # and the cache it left decodes the same
    step_pieces = model.step(nxt)
    model.reset()
    model.prefill(ids)
    assert np.array_equal(step_pieces, model.step(nxt))


def test_generated_text_is_the_same_in_pieces(model, pieces):
    ids = prompt_ids(model, 150)
    pieces(1000)
    one = generate(model, ids, max_new_tokens=20, seed=4, return_response=True)
    pieces(5)
    cut = generate(model, ids, max_new_tokens=20, seed=4, return_response=True)
    assert cut.token_ids == one.token_ids and cut.text == one.text


def test_pieces_follow_the_measured_speed(monkeypatch):
    monkeypatch.setattr(loop, "PREFILL_SLICE_S", 0.2)
    assert loop._next_piece(64, 0.02) == 512                         # fast: up to the maximum
    assert loop._next_piece(64, 0.1) == 128                          # 0.1 s for 64: 128 take 0.2 s
    assert loop._next_piece(64, 2.0) == loop.PREFILL_CHUNK_MIN       # slow: never below the minimum
    assert loop._next_piece(64, 0.0) == 512


def test_ctrl_c_is_seen_between_prefill_pieces(model, pieces):
    """SIGINT during the first piece: KeyboardInterrupt comes when it returns, not after the whole prompt,
    and the cache keeps the piece it finished, so the next prefill goes on from there."""
    ids = prompt_ids(model, 200)
    pieces(32)

    def interrupt(n_calls):
        if n_calls == 1:
            os.kill(os.getpid(), signal.SIGINT)
    counted = Counting(model, interrupt)
    cache = KVCache(counted)
    with pytest.raises(KeyboardInterrupt):
        cache.prefill(ids)
    assert len(counted.calls) <= 2                 # the handler runs at the next bytecode at the latest
    done = sum(counted.calls)
    assert cache.n_past == done and model.n_past == done
    counted.hook = None
    logits, reused = cache.prefill(ids)
    assert reused == done and sum(counted.calls) == len(ids)
    model.reset()
    assert np.array_equal(logits, model.prefill(ids))


def test_ctrl_c_in_a_streamed_generation_gives_the_interrupted_response(model, pieces):
    pieces(16)
    calls = []

    def interrupt(n_calls):
        calls.append(n_calls)
        if n_calls == 2:
            raise KeyboardInterrupt
    stream = generate(Counting(model, interrupt), prompt_ids(model, 100), max_new_tokens=5, seed=1,
                      stream=True)
    with pytest.raises(KeyboardInterrupt):
        next(stream)
    r = stream.interrupt()
    assert r.finish_reason == "interrupted" and r.token_ids == () and calls == [1, 2]


# -- NaN / inf weights ---------------------------------------------------------------------------------
def _poisoned(src, dst, value):
    shutil.copytree(src, dst)
    data = os.path.join(dst, "model.ckpt.data-00000-of-00001")
    size = os.path.getsize(data)
    with open(data, "r+b") as f:                   # a run of floats in the middle of the weights
        f.seek((size // 2) // 4 * 4)
        f.write(np.full(64, value, dtype=np.float32).tobytes())
    return dst


@pytest.fixture(scope="module", params=["nan", "inf"])
def bad_model(request, tiny_model_dir, tmp_path_factory):
    path = _poisoned(tiny_model_dir, str(tmp_path_factory.mktemp("bad") / "m"), float(request.param))
    return gpt2cy.load(path, threads=1)


BAD = r"logits after \d+ tokens are not finite \(NaN or inf\): its weights hold NaN or infinite values; " \
      r"run `gpt2cy verify .*` to find the tensor"


@pytest.mark.parametrize("kw", [dict(temperature=0), dict(temperature=0.8, seed=1),
                                dict(temperature=1.0, top_k=0, top_p=1.0, seed=2)])
def test_non_finite_weights_are_one_clear_error(bad_model, kw):
    with pytest.raises(CheckpointError, match=BAD):
        generate(bad_model, "Hello, my name is", max_new_tokens=8, **kw)


def test_non_finite_weights_in_chat(bad_model):
    chat = Chat(bad_model, seed=1)
    with pytest.raises(CheckpointError, match=BAD):
        chat.send("Hi there")
    with pytest.raises(CheckpointError, match=BAD):     # the same again, not an empty reply
        chat.send("Hi again")


def test_check_finite_passes_finite_logits():
    loop.check_finite(np.array([0.0, -1e30, 3.0], dtype=np.float32))
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(CheckpointError):
            loop.check_finite(np.array([0.0, bad], dtype=np.float32))
