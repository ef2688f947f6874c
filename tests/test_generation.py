"""generate(): finish reasons, stop strings across tokens, UTF-8 streaming, context limits, seeds.

Most tests use tests/fake_lm.py (scripted logits, fake tokenizer); the last ones run the real engine on
the tiny random checkpoint (tiny_model_dir fixture in conftest.py).
"""
import numpy as np
import pytest

from gpt2cy.errors import ContextLengthError
from gpt2cy.generation.loop import GenerationChunk, KVCache, generate
from fake_lm import FakeModel, FakeTokenizer, ScriptModel

WORDS = ["Hel", "lo", "\nAl", "ice", ":", " world", "\n"]


def scripted(pieces, n_ctx=64, words=WORDS):
    tok = FakeTokenizer(words)
    ids = []
    for p in pieces:
        ids += tok.encode(p)
    return ScriptModel(tok, ids, n_ctx=n_ctx), ids


def greedy(model, prompt="x", **kw):
    return generate(model, prompt, temperature=0, **kw)


def test_greedy_says_the_script_then_eos():
    model, ids = scripted(["Hel", "lo", " world"])
    chunks = list(greedy(model, stream=True, max_new_tokens=50))
    assert "".join(c.text for c in chunks) == "Hello world"
    assert [c.token for c in chunks] == ids + [model.tokenizer.eot_token]
    assert [c.finish_reason for c in chunks] == [None] * len(ids) + ["eos"]
    assert [c.completion_tokens for c in chunks] == list(range(1, len(ids) + 2))
    assert all(isinstance(c, GenerationChunk) for c in chunks)
    assert greedy(model, max_new_tokens=50) == "Hello world"


def test_max_new_tokens_gives_length():
    model, _ = scripted(["Hel", "lo", " world"])
    chunks = list(greedy(model, stream=True, max_new_tokens=2))
    assert "".join(c.text for c in chunks) == "Hello" and chunks[-1].finish_reason == "length"
    assert greedy(model, max_tokens=1) == "Hel"                     # llama-cpp-python's alias
    only = list(greedy(model, stream=True, max_new_tokens=0))
    assert len(only) == 1 and only[0].finish_reason == "length" and only[0].token is None


def test_stop_string_split_over_tokens_is_left_out():
    model, _ = scripted(["Hel", "lo", "\nAl", "ice", ":", " world"])
    chunks = list(greedy(model, stream=True, stop=["\nAlice:"], max_new_tokens=50))
    assert [c.text for c in chunks] == ["Hel", "lo", "", "", ""]    # "\nAl", "ice" held back, then dropped
    assert chunks[-1].finish_reason == "stop"
    assert greedy(model, stop="\nAlice:", max_new_tokens=50) == "Hello"


def test_held_text_that_does_not_stop_is_released():
    model, _ = scripted(["Hel", "\nAl", "lo"])
    assert greedy(model, stop=["\nAlice:"], max_new_tokens=50) == "Hel\nAllo"
    # a held tail at the token limit is released too
    assert greedy(model, stop=["\nAlice:"], max_new_tokens=2) == "Hel\nAl"


def test_stop_inside_one_token():
    model, _ = scripted(["Hel", "lo", "\n", " world"])
    chunks = list(greedy(model, stream=True, stop=["o\n"], max_new_tokens=50))
    assert "".join(c.text for c in chunks) == "Hell" and chunks[-1].finish_reason == "stop"


def test_utf8_split_over_tokens_never_shows_a_replacement_character():
    tok = FakeTokenizer()
    script = list("é😀".encode())                   # byte tokens: 2 + 4 bytes
    model = ScriptModel(tok, script)
    chunks = list(generate(model, "x", temperature=0, stream=True, max_new_tokens=50))
    assert "".join(c.text for c in chunks) == "é😀"
    assert all("\ufffd" not in c.text for c in chunks)
    assert [c.text for c in chunks[:6]] == ["", "é", "", "", "", "😀"]


def test_a_cut_utf8_character_at_the_limit_is_flushed_as_replacement():
    model = ScriptModel(FakeTokenizer(), list("é".encode()))
    assert generate(model, "x", temperature=0, max_new_tokens=1) == "\ufffd"


def test_ignore_eos_keeps_going():
    model, _ = scripted(["lo"])
    r = greedy(model, ignore_eos=True, max_new_tokens=3, return_response=True)
    # <|endoftext|> is never sampled (llama.cpp and transformers): the next best token comes instead
    assert r.text.startswith("lo") and "<|endoftext|>" not in r.text and r.finish_reason == "length"
    assert len(r.token_ids) == 3 and model.tokenizer.eot_token not in r.token_ids


def test_prompt_longer_than_context():
    model = FakeModel(n_ctx=16)
    with pytest.raises(ContextLengthError, match="16"):
        generate(model, list(range(17)))
    notes = []
    chunks = list(generate(model, list(range(40)), truncate=True, max_new_tokens=4, seed=0, stream=True,
                           on_notice=notes.append))
    assert len(chunks) == 4 and model.ids[:12] == list(range(28, 40))   # kept the newest 16 - 4
    assert notes and "kept the last 12" in notes[0]


def test_reaching_the_context_ends_with_length_and_a_notice():
    model = FakeModel(n_ctx=16)
    notes = []
    chunks = list(generate(model, list(range(10)), max_new_tokens=100, seed=0, stream=True,
                           on_notice=notes.append))
    assert len(chunks) == 16 - 10 + 1 and chunks[-1].finish_reason == "length"
    assert model.n_past == 16 and notes == ["context full (16 tokens): stopped"]


def test_context_shift_keeps_generating():
    model = FakeModel(n_ctx=16)
    notes = []
    chunks = list(generate(model, list(range(10)), max_new_tokens=40, seed=0, context_shift=True,
                           ignore_eos=True, stream=True, on_notice=notes.append))
    assert len(chunks) == 40 and chunks[-1].finish_reason == "length"
    assert notes and all("continuing from the last 8" in n for n in notes)


def test_prompt_forms_and_bad_ids():
    model, _ = scripted(["lo"])
    assert greedy(model, "") == "lo"                       # empty prompt: starts from <|endoftext|>
    assert model.ids[0] == model.tokenizer.eot_token
    assert greedy(model, np.array([1, 2, 3], dtype=np.int64)) == "lo"
    with pytest.raises(ValueError):
        greedy(model, [1, -1])
    with pytest.raises(ValueError):
        greedy(model, [1, model.config.n_vocab])
    with pytest.raises(TypeError):
        greedy(model, b"bytes")
    with pytest.raises(ValueError):
        greedy(model, "x", stop=[""])
    with pytest.raises(ValueError):
        generate(model, "x", top_p=-0.5)
    with pytest.raises(ValueError):
        generate(model, "x", logit_bias={model.config.n_vocab: 1.0})   # checked before the first token


def test_special_text_in_a_prompt_is_text_by_default():
    model, _ = scripted(["lo"])
    greedy(model, "a<|endoftext|>")
    assert model.tokenizer.eot_token not in model.ids[:-2]
    greedy(model, "a<|endoftext|>", allowed_special={"<|endoftext|>"})
    assert model.ids[1] == model.tokenizer.eot_token


def test_seeded_generation_repeats_and_seeds_differ():
    model = FakeModel(n_ctx=64)

    def tokens(seed, **kw):
        return [c.token for c in generate(model, [1, 2, 3], max_new_tokens=30, seed=seed, top_k=0, top_p=1.0,
                                          temperature=1.0, ignore_eos=True, stream=True, **kw)]

    a = tokens(5)
    assert a == tokens(5) and a != tokens(6)
    assert len(set(a)) > 5


def test_kv_cache_reuses_a_prefix():
    model = FakeModel(n_ctx=64)
    cache = KVCache(model)
    l1, reused = cache.prefill([1, 2, 3])
    assert reused == 0 and model.prefilled == 3
    cache.step(4)
    l2, reused = cache.prefill([1, 2, 3, 4, 5, 6])
    assert reused == 4 and model.prefilled == 5 and model.ids == [1, 2, 3, 4, 5, 6]
    l3, reused = cache.prefill([1, 2, 3, 4, 5, 6])          # same prompt: the kept logits
    assert reused == 6 and model.prefilled == 5 and np.array_equal(l2, l3)
    _, reused = cache.prefill([1, 2, 9])                     # diverges: keep [1, 2], prefill the rest
    assert reused == 2 and model.ids == [1, 2, 9] and model.prefilled == 6 and model.resets == 1
    model.reset()                                            # someone else used the model: start over
    cache.prefill([1, 2, 9, 4])
    assert model.ids == [1, 2, 9, 4] and model.prefilled == 10


def test_kv_cache_keeps_the_longest_common_prefix():
    model = FakeModel(n_ctx=64)
    cache = KVCache(model)
    l_prompt, _ = cache.prefill([5, 6, 7, 8])
    for t in (9, 10, 11):
        cache.step(t)
    again, reused = cache.prefill([5, 6, 7, 8])              # a regen: same prompt, reply forgotten
    assert reused == 4 and model.ids == [5, 6, 7, 8] and model.prefilled == 4
    assert np.array_equal(again, l_prompt)
    cache.step(12)
    _, reused = cache.prefill([5, 6, 7])                     # a shorter prompt: re-run its last token
    assert reused == 2 and model.ids == [5, 6, 7] and model.prefilled == 5
    _, reused = cache.prefill([4, 6, 7])                     # nothing shared: from scratch
    assert reused == 0 and model.ids == [4, 6, 7] and model.prefilled == 8 and model.resets == 2

    class NoTruncate(FakeModel):                             # a model without truncate: reset instead
        def __getattribute__(self, name):
            if name == "truncate":
                raise AttributeError(name)
            return super().__getattribute__(name)

    m2 = NoTruncate(n_ctx=64)
    c2 = KVCache(m2)
    c2.prefill([1, 2, 3])
    assert c2.prefill([1, 2, 4])[1] == 0 and m2.ids == [1, 2, 4] and m2.resets == 2
    assert c2.prefill([1, 2, 4, 5])[1] == 3 and m2.resets == 2     # extending needs no truncate


def test_common_prefix_reuse_gives_fresh_logits(tiny_model):
    """The real engine: after a divergent prompt reuses a prefix, the logits are a fresh run's."""
    tok = tiny_model.tokenizer
    cache = KVCache(tiny_model)
    a = tok.encode("The quick brown fox jumps over the lazy dog")
    b = a[:5] + tok.encode(" sat on the mat and slept")
    cache.prefill(a)
    last, reused = cache.prefill(b)
    assert reused == 5 and tiny_model.n_past == len(b)
    np.testing.assert_allclose(last, tiny_model.logits(b)[-1], rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    import gpt2cy
    return gpt2cy.load(tiny_model_dir, threads=1)


def test_model_generate_delegates(tiny_model):
    """The real engine and tokenizer: Model.generate streams chunks, repeats with a seed."""
    a = tiny_model.generate("Hello, my name is", max_new_tokens=12, seed=3, stream=True)
    a = list(a)
    assert 1 <= len(a) <= 12 and a[-1].finish_reason in ("length", "eos")
    assert a[-1].prompt_tokens == len(tiny_model.tokenizer.encode("Hello, my name is"))
    assert a[-1].prompt_tps > 0 and a[-1].generation_tps > 0
    b = list(tiny_model.generate("Hello, my name is", max_new_tokens=12, seed=3, stream=True))
    assert [c.token for c in a] == [c.token for c in b]
    text = "".join(c.text for c in a)
    assert text == tiny_model.generate("Hello, my name is", max_new_tokens=12, seed=3)


def test_greedy_matches_argmax_of_full_logits(tiny_model):
    """Temperature 0 on the real model: each token is the argmax of a full forward pass."""
    prompt = tiny_model.tokenizer.encode("The quick brown fox")
    toks = [c.token for c in tiny_model.generate(prompt, max_new_tokens=6, temperature=0, ignore_eos=True,
                                                 stream=True)]
    ids = list(prompt)
    for t in toks:
        assert t == int(np.argmax(tiny_model.logits(ids)[-1]))
        ids.append(t)


def test_real_context_limit(tiny_model):
    n_ctx = tiny_model.config.n_ctx
    with pytest.raises(ContextLengthError):
        tiny_model.generate(list(range(n_ctx + 1)))
    chunks = list(tiny_model.generate(list(range(n_ctx - 3)), max_new_tokens=50, seed=0, ignore_eos=True,
                                      stream=True, on_notice=None))
    assert len(chunks) == 4 and chunks[-1].finish_reason == "length" and tiny_model.n_past == n_ctx


class Unversioned(FakeModel):
    """A model without cache_version: the record falls back to comparing n_past."""
    def __getattribute__(self, name):
        if name == "cache_version":
            raise AttributeError(name)
        return super().__getattribute__(name)


def history_model(cls=FakeModel, n_ctx=64):
    """Logits that depend on the whole history (its length and last token), so continuing from the
    wrong KV cache gives other tokens."""
    tok = FakeTokenizer()
    table = np.random.default_rng(7).standard_normal((tok.n_vocab, tok.n_vocab)).astype(np.float32) * 3
    return cls(tok, n_ctx=n_ctx, logits_fn=lambda ids: table[(ids[-1] + 31 * len(ids)) % tok.n_vocab])


@pytest.mark.parametrize("cls,other_prompt", [
    (FakeModel, [7, 8]),             # the other call leaves n_past as the stream left it: only the version tells
    (Unversioned, [7, 8, 9, 10]),    # no version: a different n_past tells
])
def test_a_stream_resumed_after_another_generate_rebuilds_its_cache(cls, other_prompt):
    """Issue 12: take 3 chunks of a stream, run another generate on the same model, resume the stream: the
    text must be what an uninterrupted run gives, never a continuation of the other call's cache."""
    model = history_model(cls)
    kw = dict(max_new_tokens=12, seed=3, top_k=0, top_p=1.0, temperature=1.0, ignore_eos=True)
    want = [c.token for c in generate(model, [1, 2, 3], stream=True, **kw)]
    first = generate(model, [1, 2, 3], stream=True, **kw)
    got = [next(first).token for _ in range(3)]
    held = model.n_past
    generate(model, other_prompt, max_new_tokens=4, seed=1, ignore_eos=True)
    assert model.ids[:len(other_prompt)] == other_prompt
    if cls is FakeModel:
        assert model.n_past == held
    got += [c.token for c in first]
    assert got == want
    assert model.ids == [1, 2, 3] + want[:-1]               # the rebuilt cache holds the stream's own tokens


def test_interleaved_streams_on_one_model_each_give_their_own_text():
    model = history_model()
    kw = dict(max_new_tokens=10, seed=5, ignore_eos=True, top_k=0, top_p=1.0, temperature=1.0)
    want_a = generate(model, [1, 2, 3], **kw)
    want_b = generate(model, [4, 5], **kw)
    a, b = generate(model, [1, 2, 3], stream=True, **kw), generate(model, [4, 5], stream=True, **kw)
    got_a, got_b = [], []
    for ca, cb in zip(a, b):
        got_a.append(ca.text)
        got_b.append(cb.text)
    assert "".join(got_a) == want_a and "".join(got_b) == want_b


def test_the_issue_repro_on_the_real_engine(tiny_model):
    kw = dict(max_new_tokens=10, seed=4, temperature=1.5, top_k=0, top_p=1.0, ignore_eos=True)
    want = tiny_model.generate("Once upon a time", **kw)       # (greedy repeats one token on random weights)
    first = tiny_model.generate("Once upon a time", stream=True, **kw)
    parts = [next(first).text for _ in range(3)]
    tiny_model.generate("The weather today is", max_new_tokens=5, seed=1)
    parts += [c.text for c in first]
    assert "".join(parts) == want


def test_check_prompt_uses_the_one_id_validator():
    from gpt2cy.errors import InvalidTokenError
    from gpt2cy.generation.loop import check_prompt
    for bad in ([1, -1], [1, 50], [1, 2.0], [True], np.array([[1, 2]]), np.array([1.0])):
        with pytest.raises(InvalidTokenError):
            check_prompt(bad, n_ctx=16, n_vocab=50)
    assert check_prompt(np.array([3, 4], dtype=np.uint8), 16, 50) == [3, 4]
    assert check_prompt(iter([1, 2]), 16, 50) == [1, 2]


def test_prepare_prompt_is_what_generate_runs():
    from gpt2cy.generation.loop import prepare_prompt
    model = FakeModel(n_ctx=16)
    assert prepare_prompt(model, "") == [model.tokenizer.eot_token]
    assert prepare_prompt(model, "ab") == model.tokenizer.encode("ab")
    notes = []
    ids = prepare_prompt(model, list(range(40)), max_new_tokens=4, truncate=True, on_notice=notes.append)
    assert ids == list(range(28, 40)) and "kept the last 12" in notes[0]
    with pytest.raises(ContextLengthError):
        prepare_prompt(model, list(range(17)))


def test_streams_in_different_slots_never_rebuild(tiny_model_dir):
    import gpt2cy
    model = gpt2cy.load(tiny_model_dir, threads=1, n_slots=2)
    if not hasattr(model, "cache_version"):
        pytest.skip("the model has no KV-cache slots")
    kw = dict(max_new_tokens=8, seed=2, temperature=1.5, top_k=0, top_p=1.0, ignore_eos=True)
    want_a, want_b = model.generate("Once upon a time", **kw), model.generate("The weather", **kw)
    calls = []
    real = model.prefill
    model.prefill = lambda ids, slot=0: calls.append(slot) or real(ids, slot=slot)
    try:
        a = model.generate("Once upon a time", stream=True, **kw)
        b = model.generate("The weather", stream=True, slot=1, **kw)
        got_a, got_b = zip(*[(x.text, y.text) for x, y in zip(a, b)])
    finally:
        del model.prefill
    assert "".join(got_a) == want_a and "".join(got_b) == want_b
    assert sorted(calls) == [0, 1]                          # one prefill each: no rebuilds
