"""The Response: what generate, complete, the last streamed chunk and Chat report, and its JSON shape."""
import json

import numpy as np
import pytest

import gpt2cy
from gpt2cy.generation import Response, Timings, Usage, complete, generate
from fake_lm import FakeModel, FakeTokenizer, ScriptModel

WORDS = ["Hel", "lo", " world", "\n"]


def scripted(pieces):
    tok = FakeTokenizer(WORDS)
    ids = [i for p in pieces for i in tok.encode(p)]
    return ScriptModel(tok, ids), ids


def test_complete_returns_the_whole_story():
    model, ids = scripted(["Hel", "lo", " world"])
    r = complete(model, "Hi", temperature=0, max_new_tokens=50, seed=7)
    assert isinstance(r, Response) and gpt2cy.Response is Response
    assert r.text == "Hello world" and r.finish_reason == "eos"
    assert r.token_ids == tuple(ids + [model.tokenizer.eot_token])
    assert r.usage == Usage(prompt_tokens=2, completion_tokens=len(ids) + 1, cached_tokens=0)
    assert r.usage.total_tokens == 2 + len(ids) + 1
    assert r.seed == 7 and r.model == "fake"
    assert r.timings.prompt_ms >= 0 and r.timings.gen_ms >= 0 and r.timings.load_ms is None
    again = generate(model, "Hi", temperature=0, max_new_tokens=50, seed=7, return_response=True)
    assert again.replace(timings=r.timings) == r                          # (only the timings differ)
    assert generate(model, "Hi", temperature=0, max_new_tokens=50) == "Hello world"   # str by default
    with pytest.raises(ValueError):
        complete(model, "Hi", stream=True)


def test_to_dict_is_close_to_openais_completion_object():
    model, _ = scripted(["Hel", "lo"])
    d = complete(model, "Hi", temperature=0, max_new_tokens=2, seed=1).to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["object"] == "text_completion" and d["text"] == "Hello" and d["finish_reason"] == "length"
    assert d["usage"] == {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4,
                          "prompt_tokens_details": {"cached_tokens": 0}}
    assert set(d["timings"]) == {"prompt_ms", "prompt_tps", "gen_ms", "gen_tps"}
    assert d["seed"] == 1 and d["model"] == "fake" and d["tokens"] == [
        *model.tokenizer.encode("Hel"), *model.tokenizer.encode("lo")]
    t = Timings(1.0, 2.0, 3.0, 4.0).replace(load_ms=5.0).to_dict()
    assert t["load_ms"] == 5.0


def test_without_a_seed_one_is_drawn_and_reported_so_the_run_repeats():
    model = FakeModel(n_ctx=64)
    kw = dict(max_new_tokens=20, top_k=0, top_p=1.0, temperature=1.0, ignore_eos=True)
    first = complete(model, [1, 2], **kw)
    assert isinstance(first.seed, int) and first.seed >= 0
    again = complete(model, [1, 2], seed=first.seed, **kw)
    assert again.token_ids == first.token_ids and again.text == first.text


def test_the_last_chunk_carries_the_response():
    model, _ = scripted(["Hel", "lo", " world"])
    stream = generate(model, "Hi", temperature=0, max_new_tokens=50, stream=True, seed=2)
    assert stream.seed == 2 and stream.prompt_tokens == 2 and stream.response is None
    chunks = list(stream)
    assert all(c.response is None for c in chunks[:-1])
    r = chunks[-1].response
    assert r is stream.response and r.text == "".join(c.text for c in chunks)
    assert r.token_ids == tuple(c.token for c in chunks) and r.finish_reason == chunks[-1].finish_reason
    only = list(generate(model, "Hi", max_new_tokens=0, stream=True))
    assert only[0].response.finish_reason == "length" and only[0].response.token_ids == ()


def test_an_interrupted_stream_reports_what_was_released():
    model, _ = scripted(["Hel", "lo", " world", "\n", "Hel"])
    stream = generate(model, "Hi", temperature=0, max_new_tokens=50, stream=True, stop=["\nHel"])
    shown = [next(stream) for _ in range(4)]                 # "\n" is held: it may start the stop string
    r = stream.interrupt()
    assert r.finish_reason == "interrupted" and r.text == "Hello world" == "".join(c.text for c in shown)
    assert r.token_ids == tuple(c.token for c in shown) and r.usage.completion_tokens == 4
    assert stream.interrupt() is r and list(stream) == []
    done = generate(model, "Hi", temperature=0, max_new_tokens=2, stream=True)
    list(done)
    assert done.interrupt().finish_reason == "length"        # a finished stream keeps its own reason


def test_an_exception_inside_the_loop_still_gives_a_response():
    model, _ = scripted(["Hel", "lo", " world"])
    real, calls = model.step, []

    def step(token):
        calls.append(token)
        if len(calls) == 2:
            raise KeyboardInterrupt                         # Ctrl-C during a decode step
        return real(token)
    model.step = step
    stream = generate(model, "Hi", temperature=0, max_new_tokens=50, stream=True)
    got = []
    with pytest.raises(KeyboardInterrupt):
        for c in stream:
            got.append(c.text)
    r = stream.interrupt()
    assert r.finish_reason == "interrupted" and r.text == "".join(got) == "Hello"


def test_chat_replies_carry_a_response_with_cached_tokens():
    tok = FakeTokenizer([" Hi", "\n"])
    model = ScriptModel(tok, tok.encode(" Hi\n"), n_ctx=1024)
    chat = gpt2cy.Chat(model, temperature=0, seed=9, on_notice=None)
    chat.send("one")
    last = list(chat.send("two", stream=True))[-1]
    r = last.response
    assert r.text == " Hi" and r.finish_reason == "stop" and r.seed == 9
    assert r.usage.cached_tokens == last.cached_tokens > 0 and r.usage.prompt_tokens == last.prompt_tokens


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    return gpt2cy.load(tiny_model_dir, threads=1)


def test_the_real_engine_response(tiny_model):
    r = gpt2cy.complete(tiny_model, "Hello, my name is", max_new_tokens=6, seed=3, ignore_eos=True)
    assert r.text == tiny_model.generate("Hello, my name is", max_new_tokens=6, seed=3, ignore_eos=True)
    assert len(r.token_ids) == 6 and r.finish_reason == "length"
    assert r.usage.prompt_tokens == len(tiny_model.tokenizer.encode("Hello, my name is"))
    assert r.timings.prompt_tps > 0 and r.timings.gen_tps > 0
    assert np.isfinite(r.timings.gen_ms)
