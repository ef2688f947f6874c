"""`gpt2cy serve` through the real `openai` client against a live server on 127.0.0.1.

One server per module (4 slots, a small random model with a 1024-token context); a one-slot model over the
same files is the reference: the server's text must be what model.generate / gpt2cy.Chat give for the same
prompt, seed and settings, bit for bit, whatever else the server runs at the same time.
"""
import threading
import time

import httpx
import numpy as np
import pytest

import gpt2cy
from gpt2cy.generation.chat import render_messages

from serve_support import metric, running, sse_data, write_model

openai = pytest.importorskip("openai")

SAMPLE = dict(temperature=0.9, top_p=0.9)                 # the server's top_k is 0 (off) unless asked for
REF = dict(temperature=0.9, top_p=0.9, top_k=0, on_notice=None)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, vocab_dir):
    return write_model(tmp_path_factory, vocab_dir)


@pytest.fixture(scope="module")
def server(model_dir):
    with running(model_dir, n_slots=4) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def ref(model_dir):
    return gpt2cy.load(model_dir, threads=1)


@pytest.fixture(scope="module")
def model_id(client):
    return client.models.list().data[0].id


def health(server):
    return httpx.get(server.url + "/health", timeout=10).json()


def wait_idle(server, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        h = health(server)
        if h["slots_processing"] == 0 and h["queue"] == 0:
            return h
        time.sleep(0.02)
    raise AssertionError(f"slots still busy after {timeout} s: {health(server)}")


# -- models -------------------------------------------------------------------------------------------
def test_models(client, server, model_id):
    models = client.models.list().data
    assert [m.id for m in models] == [model_id]
    assert models[0].object == "model"
    assert client.models.retrieve(model_id).id == model_id
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")


# -- completions ----------------------------------------------------------------------------------------
def test_completion_is_model_generate(client, ref, model_id):
    """Same prompt, seed and settings: bit-identical to model.generate on a one-slot model; twice the same."""
    prompt = "The meaning of life is"
    got = [client.completions.create(model=model_id, prompt=prompt, max_tokens=12, seed=5, **SAMPLE)
           for _ in range(2)]
    want = ref.generate(prompt, max_new_tokens=12, seed=5, **REF)
    assert got[0].choices[0].text == got[1].choices[0].text == want
    other = client.completions.create(model=model_id, prompt=prompt, max_tokens=12, seed=6, **SAMPLE)
    assert other.choices[0].text != want                   # the seed matters (50257-way random draws)
    r = got[0]
    assert r.object == "text_completion" and r.model == model_id and r.id.startswith("cmpl-")
    assert r.choices[0].finish_reason == "length" and r.choices[0].index == 0


def test_usage_counts_are_our_tokenizer(client, ref, model_id):
    prompt = "Counting tokens, one by one: are they right?"
    r = client.completions.create(model=model_id, prompt=prompt, max_tokens=9, seed=1, logprobs=0,
                                  extra_body={"ignore_eos": True})
    assert r.usage.prompt_tokens == len(ref.tokenizer.encode(prompt))
    assert r.usage.completion_tokens == 9 == len(r.choices[0].logprobs.tokens)
    assert r.usage.total_tokens == r.usage.prompt_tokens + 9
    ids = ref.tokenizer.encode(prompt)
    r2 = client.completions.create(model=model_id, prompt=ids, max_tokens=3, seed=1)
    assert r2.usage.prompt_tokens == len(ids)


def test_stream_equals_whole(client, model_id):
    kw = dict(model=model_id, prompt="Once upon a time", max_tokens=14, seed=3, **SAMPLE)
    whole = client.completions.create(**kw)
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 14
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_n_and_echo(client, model_id):
    kw = dict(model=model_id, prompt="Two at once", max_tokens=6, n=2, seed=12, **SAMPLE)
    whole = [c.text for c in client.completions.create(**kw).choices]
    parts = ["", ""]
    for c in client.completions.create(stream=True, **kw):
        for ch in c.choices:
            parts[ch.index] += ch.text
    assert parts == whole and whole[0] != whole[1]
    echoed = client.completions.create(echo=True, stream=True, **{**kw, "n": 1})
    text = "".join(c.choices[0].text for c in echoed)
    assert text == "Two at once" + whole[0]


def test_stream_n_each_index_is_its_own_choice(client, ref, model_id):
    """Streamed n=3: chunks for every index, one finish_reason each, each index's joined text the
    non-streamed choice's and the one-slot model's with seed + index; the usage chunk counts the prompt once
    and every choice's tokens."""
    prompt = "Three streams:"
    kw = dict(model=model_id, prompt=prompt, max_tokens=8, n=3, seed=30, **SAMPLE)
    whole = client.completions.create(**kw)
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    parts, finishes = {}, {}
    for c in chunks:
        for ch in c.choices:
            parts[ch.index] = parts.get(ch.index, "") + ch.text
            if ch.finish_reason is not None:
                assert ch.index not in finishes                       # one finish per choice
                finishes[ch.index] = ch.finish_reason
    assert sorted(parts) == [0, 1, 2]
    want = [ref.generate(prompt, max_new_tokens=8, seed=30 + k, **REF) for k in range(3)]
    assert [parts[i] for i in range(3)] == [c.text for c in whole.choices] == want
    assert len(set(want)) == 3
    assert finishes == {c.index: c.finish_reason for c in whole.choices}
    last = chunks[-1]
    assert last.choices == [] and all(c.usage is None for c in chunks[:-1])
    assert last.usage.prompt_tokens == whole.usage.prompt_tokens == len(ref.tokenizer.encode(prompt))
    assert last.usage.completion_tokens == whole.usage.completion_tokens


def test_stream_echo_with_n_and_logprobs_is_the_whole_one(client, ref, model_id):
    """Streamed echo, n=2, logprobs: each index opens with the prompt (its tokens scored, the first null),
    then its completion; text, tokens, logprobs and offsets joined per index are the non-streamed ones."""
    prompt = "Echo my log probabilities"
    kw = dict(model=model_id, prompt=prompt, max_tokens=5, n=2, seed=2, echo=True, logprobs=1,
              extra_body={"ignore_eos": True}, **SAMPLE)
    whole = client.completions.create(**kw).choices
    got = {i: {"text": "", "tokens": [], "token_logprobs": [], "text_offset": []} for i in (0, 1)}
    firsts = {}
    for c in client.completions.create(stream=True, **kw):
        for ch in c.choices:
            firsts.setdefault(ch.index, ch)
            g = got[ch.index]
            g["text"] += ch.text
            if ch.logprobs:
                for key in ("tokens", "token_logprobs", "text_offset"):
                    g[key] += getattr(ch.logprobs, key)
    n_prompt = len(ref.tokenizer.encode(prompt))
    for i, w in enumerate(whole):
        assert firsts[i].text == prompt and len(firsts[i].logprobs.tokens) == n_prompt
        assert firsts[i].logprobs.token_logprobs[0] is None
        assert w.text.startswith(prompt) and got[i]["text"] == w.text
        assert (got[i]["tokens"], got[i]["token_logprobs"], got[i]["text_offset"]) == \
               (w.logprobs.tokens, w.logprobs.token_logprobs, w.logprobs.text_offset)
    assert whole[0].text != whole[1].text


def _streamed_legacy_tokens(client, **kw):
    out = []
    for c in client.completions.create(stream=True, **kw):
        if c.choices and c.choices[0].logprobs:
            out += c.choices[0].logprobs.tokens
    return out


def test_streamed_logprobs_end_where_the_whole_ones_do_at_a_stop(client, model_id):
    kw = dict(model=model_id, prompt="Stop me", max_tokens=20, seed=11, logprobs=1, **SAMPLE)
    words = client.completions.create(**kw).choices[0].text.split()
    stop = words[len(words) // 2]
    whole = client.completions.create(stop=stop, **kw).choices[0]
    assert whole.finish_reason == "stop"
    assert _streamed_legacy_tokens(client, stop=stop, **kw) == whole.logprobs.tokens


def test_streamed_logprobs_end_where_the_whole_ones_do_at_eos(client, model_id):
    kw = dict(model=model_id, prompt="End", max_tokens=5, seed=1, logprobs=0, temperature=0,
              logit_bias={"50256": 100})
    whole = client.completions.create(**kw).choices[0]
    assert whole.text == "" and whole.logprobs.tokens == []
    assert _streamed_legacy_tokens(client, **kw) == whole.logprobs.tokens


def test_streamed_chat_logprobs_end_where_the_whole_ones_do(client, model_id):
    kw = dict(model=model_id, messages=[{"role": "user", "content": "Hey"}], max_tokens=30, seed=1, logprobs=True,
              top_logprobs=1, logit_bias={"198": 100}, **SAMPLE)           # "\n" all but forced: a short reply
    whole = client.chat.completions.create(**kw).choices[0]
    assert whole.finish_reason == "stop"
    streamed = []
    for c in client.chat.completions.create(stream=True, **kw):
        if c.choices and c.choices[0].logprobs and c.choices[0].logprobs.content:
            streamed += [e.token for e in c.choices[0].logprobs.content]
    assert streamed == [e.token for e in whole.logprobs.content]


def test_stop(client, ref, model_id):
    kw = dict(model=model_id, prompt="Stop me", max_tokens=20, seed=11, **SAMPLE)
    full = client.completions.create(**kw).choices[0].text
    words = full.split()
    stop = words[len(words) // 2]                          # a word from the middle of the text
    r = client.completions.create(stop=[stop, "never-there"], **kw).choices[0]
    assert r.finish_reason == "stop"
    assert r.text == full[:full.index(stop)]
    assert r.text == ref.generate("Stop me", max_new_tokens=20, seed=11, stop=[stop, "never-there"], **REF)
    streamed = client.completions.create(stop=stop, stream=True, **kw)
    assert "".join(c.choices[0].text for c in streamed) == r.text


def test_n_choices_are_seed_plus_k(client, ref, model_id):
    r = client.completions.create(model=model_id, prompt="Pick one:", max_tokens=8, n=3, seed=20, **SAMPLE)
    assert [c.index for c in r.choices] == [0, 1, 2]
    want = [ref.generate("Pick one:", max_new_tokens=8, seed=20 + k, **REF) for k in range(3)]
    assert [c.text for c in r.choices] == want
    assert len(set(want)) == 3
    assert r.usage.prompt_tokens == len(ref.tokenizer.encode("Pick one:"))   # the prompt counts once
    assert r.usage.completion_tokens == 24


def test_prompt_shapes(client, ref, model_id):
    tok = ref.tokenizer
    texts = ["Hello there", "General Kenobi"]
    kw = dict(model=model_id, max_tokens=6, seed=2, **SAMPLE)
    singles = [client.completions.create(prompt=t, **kw).choices[0].text for t in texts]
    as_list = client.completions.create(prompt=texts, **kw)
    as_ids = client.completions.create(prompt=[tok.encode(t) for t in texts], **kw)
    one_ids = client.completions.create(prompt=tok.encode(texts[0]), **kw)
    assert [c.text for c in as_list.choices] == singles
    assert [c.text for c in as_ids.choices] == singles
    assert one_ids.choices[0].text == singles[0]
    assert as_list.usage.prompt_tokens == sum(len(tok.encode(t)) for t in texts)


def _log_softmax(x):
    x = x.astype(np.float64)
    return x - (x.max() + np.log(np.exp(x - x.max()).sum()))


def test_logprobs_are_the_models(client, ref, model_id):
    """Each token's logprob is log-softmax of the model's logits at its position (fp32 logits: 1e-4)."""
    prompt = "Log probabilities of"
    r = client.completions.create(model=model_id, prompt=prompt, max_tokens=6, seed=4, logprobs=3, **SAMPLE)
    lp = r.choices[0].logprobs
    tok = ref.tokenizer
    ids = tok.encode(prompt)
    gen = list(ref.generate(prompt, max_new_tokens=6, seed=4, return_response=True, **REF).token_ids)
    assert len(gen) == 6
    assert lp.tokens == [tok.decode([t]) for t in gen]        # the same tokens as the one-slot model drew
    full = ref.logits(ids + gen[:-1])
    for k, (lpk, top) in enumerate(zip(lp.token_logprobs, lp.top_logprobs)):
        row = _log_softmax(full[len(ids) - 1 + k])
        assert len(top) == 3
        vals = list(top.values())
        assert vals == sorted(vals, reverse=True)
        assert abs(vals[0] - row.max()) < 1e-4
        assert abs(lpk - row[gen[k]]) < 1e-4
    assert "".join(lp.tokens) == r.choices[0].text
    assert lp.text_offset == list(np.cumsum([0] + [len(t) for t in lp.tokens[:-1]]))


def test_streamed_logprobs_are_the_whole_ones(client, model_id):
    kw = dict(model=model_id, prompt="Stream my logprobs", max_tokens=7, seed=14, logprobs=2, **SAMPLE)
    whole = client.completions.create(**kw).choices[0].logprobs
    tokens, values, offsets = [], [], []
    for c in client.completions.create(stream=True, **kw):
        if c.choices and c.choices[0].logprobs:
            tokens += c.choices[0].logprobs.tokens
            values += c.choices[0].logprobs.token_logprobs
            offsets += c.choices[0].logprobs.text_offset
    assert (tokens, values, offsets) == (whole.tokens, whole.token_logprobs, whole.text_offset)


def test_echo_logprobs_score_the_prompt(client, ref, model_id):
    prompt = "Score this prompt please"
    r = client.completions.create(model=model_id, prompt=prompt, max_tokens=0, echo=True, logprobs=1)
    c = r.choices[0]
    assert c.text == prompt
    ids = ref.tokenizer.encode(prompt)
    lp = c.logprobs
    assert len(lp.tokens) == len(ids) and "".join(lp.tokens) == prompt
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    logits = ref.logits(ids)
    for t in range(1, len(ids)):
        assert abs(lp.token_logprobs[t] - _log_softmax(logits[t - 1])[ids[t]]) < 1e-4
    assert r.usage.completion_tokens == 0


def test_penalties_and_bias_are_applied(client, ref, model_id):
    tok = ref.tokenizer
    kw = dict(model=model_id, prompt="Bias", max_tokens=5, seed=9, temperature=0)
    base = client.completions.create(**kw).choices[0].text
    first = tok.encode(base)[0]
    banned = client.completions.create(logit_bias={str(first): -100}, **kw).choices[0].text
    assert tok.encode(banned)[0] != first
    forced = client.completions.create(logit_bias={"50": 100}, **kw).choices[0].text      # "S"
    assert forced == tok.decode([50] * 5)
    # presence penalty 2 on a forced token: the bias still wins (100 >> 2), so the text is the same
    assert client.completions.create(logit_bias={"50": 100}, presence_penalty=2.0, **kw).choices[0].text == forced
    want = ref.generate("Bias", max_new_tokens=5, seed=9, temperature=0, frequency_penalty=1.5, on_notice=None)
    assert client.completions.create(frequency_penalty=1.5, **kw).choices[0].text == want


# -- chat -------------------------------------------------------------------------------------------------
def test_chat_is_the_repl_template(client, ref, model_id):
    """The chat endpoint renders through the REPL's template: its reply is gpt2cy.Chat's, token for token."""
    msg = "What is your favourite colour?"
    r = client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": msg}],
                                       max_tokens=10, seed=7, **SAMPLE)
    chat = gpt2cy.Chat(ref, max_new_tokens=10, seed=7, top_k=0, repetition_penalty=1.0, on_notice=None, **SAMPLE)
    assert r.choices[0].message.content.rstrip() == chat.send(msg)
    assert r.choices[0].message.role == "assistant" and r.object == "chat.completion"
    assert r.usage.prompt_tokens == len(render_messages(ref.tokenizer, [("user", msg)]))


def test_chat_history_rendering(client, ref, model_id):
    msgs = [{"role": "system", "content": "A polite talk."}, {"role": "user", "content": "Hi!"},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": [{"type": "text",
                                                                                      "text": "Again?"}]}]
    r = client.chat.completions.create(model=model_id, messages=msgs, max_tokens=3, seed=1)
    turns = [("system", "A polite talk."), ("user", "Hi!"), ("assistant", "Hello."), ("user", "Again?")]
    ids = render_messages(ref.tokenizer, turns)
    assert r.usage.prompt_tokens == len(ids)
    assert ref.tokenizer.decode(ids).endswith("\nAlice: Hi!\nBob: Hello.\nAlice: Again?\nBob:")
    assert ref.tokenizer.decode(ids).startswith("A polite talk.\nAlice:")


def test_chat_turns_reuse_the_cached_prefix(client, ref, model_id):
    """The next turn of a conversation prefills only what is new: the slot's cache holds the rest."""
    msgs = [{"role": "user", "content": "Remember the number 7."}]
    first = client.chat.completions.create(model=model_id, messages=msgs, max_tokens=4, seed=2)
    msgs += [{"role": "assistant", "content": first.choices[0].message.content},
             {"role": "user", "content": "Which number?"}]
    second = client.chat.completions.create(model=model_id, messages=msgs, max_tokens=4, seed=2)
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached >= first.usage.prompt_tokens - 1             # all of the first prompt (its last token re-run)
    assert cached < second.usage.prompt_tokens


def test_prefix_reuse_across_turns_streamed_and_completions(client, ref, model_id):
    """The cached prefix shows in a streamed turn's usage chunk too, and completions reuse it: a prompt that
    continues an earlier prompt and its completion prefills only what is new."""
    msgs = [{"role": "user", "content": "Please keep the colour blue in mind."}]
    first = client.chat.completions.create(model=model_id, messages=msgs, max_tokens=4, seed=5)
    msgs += [{"role": "assistant", "content": first.choices[0].message.content},
             {"role": "user", "content": "Which colour was it?"}]
    chunks = list(client.chat.completions.create(model=model_id, messages=msgs, max_tokens=4, seed=5, stream=True,
                                                 stream_options={"include_usage": True}))
    usage = chunks[-1].usage
    assert first.usage.prompt_tokens - 1 <= usage.prompt_tokens_details.cached_tokens < usage.prompt_tokens
    ids = ref.tokenizer.encode("A shared beginning about cats, dogs and their long afternoons")
    greedy = dict(model=model_id, max_tokens=4, seed=1, temperature=0, extra_body={"ignore_eos": True})
    r1 = client.completions.create(prompt=ids, **greedy)
    gen = list(ref.generate(ids, max_new_tokens=4, seed=1, temperature=0, ignore_eos=True, on_notice=None,
                            return_response=True).token_ids)
    assert ref.tokenizer.decode(gen) == r1.choices[0].text
    longer = ids + gen + ref.tokenizer.encode(" and then")
    r2 = client.completions.create(prompt=longer, **greedy)
    cached = r2.usage.prompt_tokens_details.cached_tokens
    assert r2.usage.prompt_tokens == len(longer)
    assert len(ids) + len(gen) - 1 <= cached < len(longer)     # all but the last generated token (never run)
    assert r2.choices[0].text == ref.generate(longer, max_new_tokens=4, seed=1, temperature=0, ignore_eos=True,
                                              on_notice=None)


def test_chat_stream(client, server, model_id):
    kw = dict(model=model_id, messages=[{"role": "user", "content": "Tell me a story"}], max_tokens=12, seed=8,
              **SAMPLE)
    whole = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[0].object == "chat.completion.chunk"
    # on the wire: data: lines, the last one [DONE]
    with httpx.stream("POST", server.url + "/v1/chat/completions", timeout=30,
                      json={**kw, "stream": True}) as resp:
        events = sse_data(list(resp.iter_lines()))
    assert events[-1] == "[DONE]" and all(isinstance(e, dict) for e in events[:-1])


def test_chat_logprobs_and_n(client, model_id):
    r = client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "Hey"}],
                                       max_tokens=5, seed=3, n=2, logprobs=True, top_logprobs=2,
                                       extra_body={"ignore_eos": True}, **SAMPLE)
    assert len(r.choices) == 2
    for c in r.choices:
        content = c.logprobs.content
        assert 1 <= len(content) <= 5 and all(len(e.top_logprobs) == 2 for e in content)
        assert "".join(e.token for e in content).lstrip() == c.message.content
        assert all(e.logprob <= e.top_logprobs[0].logprob + 1e-9 for e in content)


# -- many clients ------------------------------------------------------------------------------------------
def test_concurrent_streams_match_alone(client, server, model_id):
    """8 streaming clients at once (4 slots: half of them queue) each get exactly what they get alone."""
    prompts = [f"Client number {i} says" for i in range(8)]
    kw = dict(model=model_id, max_tokens=10, **SAMPLE)
    alone = [client.completions.create(prompt=p, seed=100 + i, **kw).choices[0].text for i, p in enumerate(prompts)]
    got = [None] * 8
    errors = []

    def one(i):
        try:
            s = client.completions.create(prompt=prompts[i], seed=100 + i, stream=True, **kw)
            got[i] = "".join(c.choices[0].text for c in s)
        except Exception as e:                             # reported below, not lost in the thread
            errors.append(e)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert got == alone
    wait_idle(server)


@pytest.fixture(scope="module")
def slow_server(slow_model_dir):
    with running(slow_model_dir, n_slots=2) as s:
        yield s


def test_killed_client_frees_its_slot(slow_server):
    server = slow_server
    model_id = httpx.get(server.url + "/v1/models").json()["data"][0]["id"]
    before = metric(httpx.get(server.url + "/metrics").text, "requests_cancelled_total")
    body = {"model": model_id, "prompt": "Go on forever", "max_tokens": 1000, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=30) as resp:
        lines = resp.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        assert "choices" in first
        assert health(server)["slots_processing"] >= 1
    # the connection is closed mid-stream: the generation is cancelled, the slot freed
    wait_idle(server)
    after = metric(httpx.get(server.url + "/metrics").text, "requests_cancelled_total")
    assert after == before + 1


def test_killed_client_frees_its_slot_not_streamed(slow_server):
    server = slow_server
    model_id = httpx.get(server.url + "/v1/models").json()["data"][0]["id"]
    before = metric(httpx.get(server.url + "/metrics").text, "requests_cancelled_total")
    body = {"model": model_id, "prompt": "Wait for it", "max_tokens": 1000, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/completions", json=body, timeout=0.3)
    wait_idle(server)
    assert metric(httpx.get(server.url + "/metrics").text, "requests_cancelled_total") == before + 1


def test_load_200_requests_16_at_a_time(client, server, model_id):
    from concurrent.futures import ThreadPoolExecutor
    lc = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=60)

    def one(i):
        if i % 2:
            r = lc.completions.create(model=model_id, prompt=f"Load {i}", max_tokens=3, seed=i)
            return r.usage.completion_tokens
        r = lc.chat.completions.create(model=model_id, messages=[{"role": "user", "content": f"Load {i}"}],
                                       max_tokens=3, seed=i)
        return r.usage.completion_tokens
    with ThreadPoolExecutor(16) as pool:
        counts = list(pool.map(one, range(200)))
    assert len(counts) == 200 and all(1 <= c <= 3 for c in counts)
    h = wait_idle(server)
    assert h["status"] == "ok"
    text = httpx.get(server.url + "/metrics").text
    assert metric(text, "slots_busy") == 0 and metric(text, "queue_depth") == 0
    assert 'status="500"' not in text


# -- llama-server's endpoints ----------------------------------------------------------------------------
def test_tokenize_detokenize(server, ref):
    text = "Hello world, ünïcode ✓"
    r = httpx.post(server.url + "/tokenize", json={"content": text}).json()
    assert r["tokens"] == ref.tokenizer.encode(text)
    assert httpx.post(server.url + "/detokenize", json={"tokens": r["tokens"]}).json() == {"content": text}
    pieces = httpx.post(server.url + "/tokenize", json={"content": "Hi there", "with_pieces": True}).json()
    assert pieces["tokens"] == [{"id": 17250, "piece": "Hi"}, {"id": 612, "piece": " there"}]


def test_health_and_metrics(server):
    h = httpx.get(server.url + "/health")
    assert h.status_code == 200 and h.json()["status"] == "ok"
    m = httpx.get(server.url + "/metrics")
    assert m.headers["content-type"].startswith("text/plain")
    for name in ("requests_total", "prompt_tokens_total", "completion_tokens_total", "queue_depth", "slots_busy",
                 "slots_total", "tokens_per_second"):
        assert f"# TYPE gpt2cy_{name} " in m.text
    assert metric(m.text, "slots_total") == 4
    assert metric(m.text, "completion_tokens_total") > 0


def test_api_key(model_dir):
    with running(model_dir, n_slots=1, api_key="sekret") as s:
        good = openai.OpenAI(base_url=s.url + "/v1", api_key="sekret", max_retries=0, timeout=30)
        bad = openai.OpenAI(base_url=s.url + "/v1", api_key="wrong", max_retries=0, timeout=30)
        model_id = good.models.list().data[0].id
        assert good.completions.create(model=model_id, prompt="Hi", max_tokens=2).usage.completion_tokens >= 1
        with pytest.raises(openai.AuthenticationError) as e:
            bad.completions.create(model=model_id, prompt="Hi", max_tokens=2)
        assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
        for path in ("/v1/models", "/metrics"):
            r = httpx.get(s.url + path)
            assert r.status_code == 401 and set(r.json()["error"]) == {"message", "type", "param", "code"}
        assert httpx.get(s.url + "/health").status_code == 200        # readiness probes need no key
        assert httpx.get(s.url + "/").status_code == 200              # nor does the chat page


def test_accepted_connections_have_tcp_nodelay():
    """Every response is several small writes (an SSE chunk each token): Nagle would hold each for the
    client's delayed ACK (40 ms a response, measured). asyncio sets TCP_NODELAY on what it accepts only when
    the listening socket says it is TCP, so the socket Server binds must."""
    import asyncio
    import socket
    from gpt2cy.serve.server import Server
    sock = Server._bind("127.0.0.1", 0)
    sock.listen(1)
    sock.setblocking(False)
    got = {}

    async def main():
        done = asyncio.Event()

        class P(asyncio.Protocol):
            def connection_made(self, transport):
                s = transport.get_extra_info("socket")
                got["nodelay"] = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                done.set()

        server = await asyncio.get_running_loop().create_server(P, sock=sock)
        _, writer = await asyncio.open_connection("127.0.0.1", sock.getsockname()[1])
        await asyncio.wait_for(done.wait(), 10)
        writer.close()
        server.close()
    asyncio.run(main())
    assert got["nodelay"] != 0
