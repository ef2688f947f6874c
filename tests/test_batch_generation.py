"""Continuous batching (generation/scheduler.py, generation/batch.py): every prompt's output bit-identical
to generating it alone with the same seed, whatever runs beside it; chunked prefill within the token
budget; cancel, queueing, prefix reuse per slot, a slot disturbed by someone else, an engine thread.

The reference is the single path, generation.loop.complete / stream_generate on a one-slot model, on the
tiny random checkpoint (tiny_model_dir in conftest.py).
"""
import threading

import numpy as np
import pytest

import gpt2cy
from gpt2cy.errors import ContextLengthError, InvalidTokenError
from gpt2cy.generation.batch import BatchChunk, complete_batch, generate_batch, is_prompt_list
from gpt2cy.generation.loop import complete, prepare_prompt, stream_generate
from gpt2cy.generation.sampling import Sampler, SamplingParams
from gpt2cy.generation.scheduler import QueueFullError, Request, Scheduler

LONG = "It was the best of times, it was the worst of times, it was the age of wisdom. " * 4   # ~80 tokens
PROMPTS = ["Hello, my name is", LONG, "x", "The quick brown fox jumps over", [464, 3290, 318], "", "Hello world"]
# per prompt: greedy and sampled, top-p alone, a penalty, different lengths and seeds
SETTINGS = [dict(max_new_tokens=24, seed=1),
            dict(max_new_tokens=9, seed=7, temperature=0),
            dict(max_new_tokens=31, seed=3, top_k=0, top_p=0.9),
            dict(max_new_tokens=17, seed=1, repetition_penalty=1.3, temperature=1.1),
            dict(max_new_tokens=5, seed=12345, ignore_eos=True),
            dict(max_new_tokens=20, seed=2, min_p=0.05, top_k=0, top_p=1.0),
            dict(max_new_tokens=15, seed=0, temperature=0, repetition_penalty=3.0, repeat_last_n=2)]


@pytest.fixture(scope="module")
def models(tiny_model_dir):
    """{threads: (one-slot model, three-slot model)}"""
    return {t: (gpt2cy.load(tiny_model_dir, threads=t), gpt2cy.load(tiny_model_dir, threads=t, n_slots=3))
            for t in (1, 2)}


def alone(model, prompt, **kw):
    model.reset()
    return complete(model, prompt, on_notice=None, **kw)


def same(a, b):
    """Everything a prompt's result is, apart from timings and how much of its prompt a slot had cached."""
    return (a.text, a.token_ids, a.finish_reason, a.seed, a.usage.prompt_tokens, a.usage.completion_tokens) == \
           (b.text, b.token_ids, b.finish_reason, b.seed, b.usage.prompt_tokens, b.usage.completion_tokens)


@pytest.fixture(scope="module")
def references(models):
    one = models[1][0]
    return [alone(one, p, **kw) for p, kw in zip(PROMPTS, SETTINGS)]


@pytest.fixture(scope="module")
def with_stops(models, references):
    """SETTINGS plus stop strings: one from the middle of some reference texts (so they stop there), and one
    that starts with the text's last character (held back at the token limit, then released)."""
    out = []
    for k, (kw, ref) in enumerate(zip(SETTINGS, references)):
        kw = dict(kw, stop=[ref.text[-1:] + "\x01never"] if ref.text else [])
        if len(ref.text) > 12 and k % 2 == 0:
            kw["stop"].append(ref.text[8:11])
        out.append(kw)
    return out


def test_reference_is_not_vacuous(references):
    # the prompts do differ, and the stop strings below cut some of them short
    assert len({r.token_ids for r in references}) == len(references)
    assert sum(len(r.text) > 12 for r in references) >= 3


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n_slots,budget", [(3, 8), (3, 128), (1, 128)], ids=["3slots-budget8", "3slots", "1slot"])
def test_each_prompt_is_bit_identical_to_running_alone(models, with_stops, tiny_model_dir, threads, n_slots,
                                                      budget):
    one, many = models[threads]
    model = many if n_slots == 3 else one         # 6 prompts: queueing in either case
    want = [alone(one, p, **kw) for p, kw in zip(PROMPTS, with_stops)]
    assert {r.finish_reason for r in want} == {"stop", "length"}
    items = [dict(kw, prompt=p) for p, kw in zip(PROMPTS, with_stops)]
    got = complete_batch(model, items, token_budget=budget, on_notice=None)
    assert len(got) == len(PROMPTS)
    for i, (a, b) in enumerate(zip(want, got)):
        assert same(a, b), f"prompt {i}: {a} != {b}"


def test_threads_do_not_change_the_output(models):
    items = [dict(kw, prompt=p) for p, kw in zip(PROMPTS, SETTINGS)]
    r1 = complete_batch(models[1][1], items, token_budget=8)
    r2 = complete_batch(models[2][1], items, token_budget=8)
    assert all(same(a, b) for a, b in zip(r1, r2))


def test_shared_settings_and_a_seed_list(models):
    one, many = models[1]
    prompts = PROMPTS[:4]
    got = generate_batch(many, prompts, max_new_tokens=12, temperature=0.9, seed=[5, 6, 7, 8], stop="\n")
    want = [alone(one, p, max_new_tokens=12, temperature=0.9, seed=s, stop="\n").text
            for p, s in zip(prompts, [5, 6, 7, 8])]
    assert got == want
    # one seed for all: each prompt as generate(p, seed=that seed)
    got = generate_batch(many, prompts, max_tokens=6, seed=9)
    assert got == [alone(one, p, max_new_tokens=6, seed=9).text for p in prompts]
    # no seed: one is drawn per prompt and reported, and it reproduces the text
    rs = complete_batch(many, prompts[:2], max_new_tokens=6)
    for p, r in zip(prompts[:2], rs):
        assert isinstance(r.seed, int) and same(alone(one, p, max_new_tokens=6, seed=r.seed), r)


def test_openai_and_llama_cpp_sampling_settings_as_generate_takes_them(models):
    """presence/frequency penalties, logit_bias, min_keep and the sampler order: shared or per prompt, each
    prompt's result the single path's with the same settings (and the settings do change the text)."""
    one, many = models[1]
    newer = [dict(max_new_tokens=16, seed=4, presence_penalty=1.5),
             dict(max_new_tokens=16, seed=4, frequency_penalty=2.0, temperature=1.2),
             dict(max_new_tokens=16, seed=4, logit_bias={262: 100.0}),
             dict(max_new_tokens=16, seed=4, top_k=0, top_p=0.3, min_keep=5),
             dict(max_new_tokens=16, seed=4, samplers="penalties;top_k;top_p;min_p;temperature", top_k=3,
                  temperature=1.5),
             dict(max_new_tokens=16, seed=4, samplers=["temperature"], logit_bias={"50256": -100})]
    prompts = PROMPTS[:len(newer)]
    got = complete_batch(many, [dict(kw, prompt=p) for p, kw in zip(prompts, newer)], token_budget=16)
    want = [alone(one, p, **kw) for p, kw in zip(prompts, newer)]
    assert all(same(a, b) for a, b in zip(got, want))
    plain = [alone(one, p, max_new_tokens=16, seed=4) for p in prompts]
    assert sum(a.token_ids != b.token_ids for a, b in zip(want, plain)) >= 4      # not vacuous
    assert got[2].token_ids == (262,) * 16                                       # +100 on " the"
    shared = dict(max_new_tokens=10, seed=[1, 2, 3], presence_penalty=-1.0, frequency_penalty=0.5,
                  logit_bias={11: 3.0}, min_keep=2, samplers="top_k;temperature")
    got = generate_batch(many, prompts[:3], **shared)
    assert got == [alone(one, p, **dict(shared, seed=s)).text for p, s in zip(prompts[:3], [1, 2, 3])]
    with pytest.raises(ValueError, match="prompt 1: logit_bias names token 50257"):
        generate_batch(many, ["a", {"prompt": "b", "logit_bias": {50257: 1}}])
    with pytest.raises(ValueError, match="prompt 0: unknown sampler 'top_q'"):
        generate_batch(many, ["a"], samplers="top_q;temperature")
    with pytest.raises(ValueError, match="prompt 0: presence_penalty must be in"):
        generate_batch(many, ["a"], presence_penalty=3)


def test_eos_and_custom_samplers_through_the_scheduler(models):
    """The scheduler takes any sampler; one that says <|endoftext|> after a few tokens ends with "eos"
    exactly where the single path does, ignore_eos goes on, beside a sequence that runs to its limit."""
    one, many = models[1]
    tok = one.tokenizer

    def eos_after(n, seed):
        inner = Sampler(SamplingParams(), seed)
        start = []

        def sample(logits, ids):
            start.append(len(ids)) if not start else None
            return tok.eot_token if len(ids) - start[0] == n else inner(logits, ids)
        sample.seed = seed
        return sample

    cases = [(PROMPTS[0], 4, False, 20), (PROMPTS[1], 6, True, 10), (PROMPTS[3], 100, False, 7)]
    sched = Scheduler(many, token_budget=16)
    handles = [sched.submit(Request(prepare_prompt(many, p), eos_after(n, seed=i), max_new_tokens=m,
                                    ignore_eos=ign, tag=i))
               for i, (p, n, ign, m) in enumerate(cases)]
    sched.run_until_idle()
    assert sched.idle and sched.stats()["busy_slots"] == 0
    for i, ((p, n, ign, m), h) in enumerate(zip(cases, handles)):
        one.reset()
        s = stream_generate(one, prepare_prompt(one, p), eos_after(n, seed=i), max_new_tokens=m, ignore_eos=ign)
        want = [c for c in s]
        got = list(h)
        assert [(c.text, c.token, c.finish_reason) for c in got] == [(c.text, c.token, c.finish_reason) for c in want]
        assert same(h.response, s.response) and h.tag == i
    assert [h.response.finish_reason for h in handles] == ["eos", "length", "length"]
    assert tok.eot_token in handles[1].response.token_ids


def test_stream_tags_chunks_with_the_prompt_index_and_interleaves(models):
    one, many = models[1]
    prompts = PROMPTS[:3]
    stream = generate_batch(many, prompts, max_new_tokens=8, seed=4, stream=True)
    assert stream.seeds == [4, 4, 4] and stream.prompt_tokens == [len(prepare_prompt(one, p)) for p in prompts]
    chunks = list(stream)
    assert all(isinstance(c, BatchChunk) for c in chunks)
    order = [c.index for c in chunks]
    assert order[:3] != [0, 0, 0] and sorted(set(order)) == [0, 1, 2]     # interleaved, not one after another
    for i, p in enumerate(prompts):
        mine = [c.chunk for c in chunks if c.index == i]
        assert [c.finish_reason for c in mine] == [None] * 7 + ["length"]
        assert [c.completion_tokens for c in mine] == list(range(1, 9))
        r = mine[-1].response
        assert r is stream.responses[i] and "".join(c.text for c in mine) == r.text
        assert same(r, alone(one, p, max_new_tokens=8, seed=4))
        i_, ch = chunks[[k for k, c in enumerate(chunks) if c.index == i][0]]
        assert i_ == i and ch.prompt_tokens == stream.prompt_tokens[i]


def test_chunked_prefill_does_not_stall_decodes(models):
    one, many = models[1]
    budget = 16
    sched = Scheduler(many, token_budget=budget)
    short = sched.submit(Request(prepare_prompt(many, "Hi"), Sampler(seed=1), max_new_tokens=60))
    sched.step()                                  # the short prompt is read and its first token sampled
    long_ids = prepare_prompt(many, "Zz" + LONG * 2)   # shares no prefix with a slot
    assert len(long_ids) > 5 * budget
    long = sched.submit(Request(long_ids, Sampler(seed=2), max_new_tokens=3))
    rows, steps = [], 0
    while long.response is None:
        before = len(short._items)
        rows.append(sched.step())
        steps += 1
        assert short.response is None and len(short._items) == before + 1, "the short sequence waited"
    assert max(rows) <= budget
    # the long prompt advanced by at most (budget - 1 decode row) a step
    assert steps >= (len(long_ids) - long.response.usage.cached_tokens) / (budget - 1)
    sched.run_until_idle()
    assert same(short.response, alone(one, "Hi", max_new_tokens=60, seed=1))
    assert same(long.response, alone(one, long_ids, max_new_tokens=3, seed=2))


def test_cancel_frees_the_slot_at_the_next_step(models):
    one, _ = models[1]
    sched = Scheduler(one)                        # one slot: the second request waits
    first = sched.submit(Request(prepare_prompt(one, "Once"), Sampler(seed=1), max_new_tokens=50))
    second = sched.submit(Request(prepare_prompt(one, "Twice"), Sampler(seed=2), max_new_tokens=5))
    for _ in range(3):
        sched.step()
    assert first.slot == 0 and second.slot is None and sched.stats()["waiting"] == 1
    seen = [next(first) for _ in range(3)]
    first.cancel()
    sched.step()
    assert first.done and first.response.finish_reason == "interrupted"
    assert list(first) == [] and len(first.response.token_ids) == 3
    assert first.response.text == "".join(c.text for c in seen)
    assert second.slot == 0                       # it took the freed slot in that same step
    r = second.result()
    assert same(r, alone(one, "Twice", max_new_tokens=5, seed=2))
    # a queued request cancelled before it starts never runs
    a = sched.submit(Request(prepare_prompt(one, "A"), Sampler(seed=1), max_new_tokens=5))
    b = sched.submit(Request(prepare_prompt(one, "B"), Sampler(seed=1), max_new_tokens=5))
    b.cancel()
    sched.run_until_idle()
    assert a.response.finish_reason == "length" and b.response.finish_reason == "interrupted"
    assert b.response.token_ids == () and b.slot is None


def test_stream_cancel_and_interrupt(models):
    one, many = models[1]
    stream = generate_batch(many, PROMPTS[:3], max_new_tokens=30, seed=1, stream=True)
    got = [next(stream) for _ in range(6)]
    stream.cancel(1)
    rest = list(stream)
    assert all(c.index != 1 for c in rest[3:])    # at most the chunks already made before the cancel
    assert stream.responses[1].finish_reason == "interrupted"
    assert [r.finish_reason for k, r in enumerate(stream.responses) if k != 1] == ["length", "length"]
    s2 = generate_batch(many, PROMPTS[:2], max_new_tokens=30, seed=1, stream=True)
    mine = [next(s2) for _ in range(4)]
    rs = s2.interrupt()
    assert [r.finish_reason for r in rs] == ["interrupted", "interrupted"]
    for i in range(2):
        assert rs[i].text == "".join(c.text for c in mine if c.index == i)
    assert got


def test_zero_tokens_and_validation(models):
    one, many = models[1]
    rs = complete_batch(many, ["a", {"prompt": "b", "max_tokens": 0}], max_new_tokens=2, seed=1)
    assert rs[1].finish_reason == "length" and rs[1].token_ids == () and rs[1].text == ""
    assert same(rs[0], alone(one, "a", max_new_tokens=2, seed=1))
    assert generate_batch(many, []) == []
    with pytest.raises(TypeError, match="wrap it"):
        generate_batch(many, [464, 3290])
    with pytest.raises(ValueError, match="seed is a list of 1 for 2"):
        generate_batch(many, ["a", "b"], seed=[1])
    with pytest.raises(ValueError, match="prompt 1: unknown setting"):
        generate_batch(many, ["a", {"prompt": "b", "temprature": 0}])
    with pytest.raises(ValueError, match="prompt 0: a dict prompt needs"):
        generate_batch(many, [{"text": "b"}])
    with pytest.raises(ContextLengthError, match="prompt 1: "):
        generate_batch(many, ["a", "word " * 300])
    with pytest.raises(InvalidTokenError, match="prompt 0: "):
        generate_batch(many, [[1, 99999]])
    with pytest.raises(ValueError, match="prompt 0: .*temperature"):
        generate_batch(many, ["a"], temperature=-1)
    with pytest.raises(ValueError, match="stop strings must not be empty"):
        generate_batch(many, ["a"], stop=[""])
    assert many.past(0) >= 0 and Scheduler(many).idle
    with pytest.raises(QueueFullError):
        s = Scheduler(many, max_queue=1)
        s.submit(Request([1], Sampler(seed=1)))
        s.submit(Request([1], Sampler(seed=1)))
    assert is_prompt_list(["a"]) and is_prompt_list([[1, 2]]) and not is_prompt_list([1, 2])


def test_context_full_and_context_shift(tiny_model_dir):
    one = gpt2cy.load(tiny_model_dir, threads=1, n_ctx=40)
    many = gpt2cy.load(tiny_model_dir, threads=1, n_ctx=40, n_slots=2)
    prompts = [list(range(100, 130)), list(range(200, 205)), [7]]
    for shift in (False, True):
        kw = dict(max_new_tokens=None if not shift else 60, seed=3, context_shift=shift)
        want = [alone(one, p, **kw) for p in prompts]
        got = complete_batch(many, prompts, token_budget=8, on_notice=None, **kw)
        for a, b in zip(want, got):
            assert same(a, b)
        assert [r.finish_reason for r in got] == ["length"] * 3
        assert [len(r.token_ids) for r in got] == ([11, 36, 40] if not shift else [60] * 3)


def test_prefix_reuse_per_slot_across_calls(models):
    one, many = models[1]
    base = [LONG, "A different opening, with some words in it"]
    first = complete_batch(many, base, max_new_tokens=6, seed=1)
    follow = [p + r.text + " And then" for p, r in zip(base, first)]
    again = complete_batch(many, follow, max_new_tokens=6, seed=2)
    for p, r in zip(follow, again):
        assert same(r, alone(one, p, max_new_tokens=6, seed=2))
    # each follow-up found its own earlier turn in some slot: only the new tokens were read
    for b, r in zip(base, again):
        assert r.usage.cached_tokens >= len(one.tokenizer.encode(b))
    # the same prompt again: everything but the last token is cached
    r = complete_batch(many, [follow[0]], max_new_tokens=6, seed=2)[0]
    assert r.usage.cached_tokens == r.usage.prompt_tokens - 1 and same(r, again[0])


def test_pinned_slot_keeps_a_conversation(models):
    one, many = models[1]
    sched = Scheduler(many)
    ids = prepare_prompt(many, "Alice: hi\nBob:")
    h = sched.submit(Request(ids, Sampler(seed=1), max_new_tokens=5, slot=2))
    sched.run_until_idle()
    assert h.slot == 2
    turn2 = ids + list(h.response.token_ids) + prepare_prompt(many, "\nAlice: and?\nBob:")
    h2 = sched.submit(Request(turn2, Sampler(seed=1), max_new_tokens=5, slot=2))
    sched.run_until_idle()
    assert h2.slot == 2 and h2.response.usage.cached_tokens == len(ids) + 4
    assert same(h2.response, alone(one, turn2, max_new_tokens=5, seed=1))


def test_a_slot_used_by_someone_else_is_rebuilt_not_continued(models):
    """issue 12's hazard for the batch path: a paused stream, another generation on the same slot, resume."""
    one, many = models[1]
    stream = generate_batch(many, PROMPTS[:3], max_new_tokens=12, seed=5, stream=True)
    first = [next(stream) for _ in range(6)]
    many.generate("something else entirely", max_new_tokens=4, slot=0, seed=1)
    many.generate("and more", max_new_tokens=3, slot=1, seed=1)
    rest = list(stream)
    for i, p in enumerate(PROMPTS[:3]):
        text = "".join(c.text for c in first + rest if c.index == i)
        want = alone(one, p, max_new_tokens=12, seed=5)
        assert text == want.text and same(stream.responses[i], want)


def test_engine_thread_with_concurrent_submitters(models):
    one, many = models[2]
    sched = Scheduler(many, token_budget=16)
    sched.start()
    try:
        results = {}

        def client(i):
            p = PROMPTS[i]
            h = sched.submit(Request(prepare_prompt(many, p), Sampler(seed=i), max_new_tokens=10))
            results[i] = ("".join(c.text for c in h), h.response)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        # generate_batch on a running scheduler submits and waits
        texts = generate_batch(many, PROMPTS[:2], max_new_tokens=4, seed=9, scheduler=sched)
        # a cancelled client frees its slot
        h = sched.submit(Request(prepare_prompt(many, LONG), Sampler(seed=1), max_new_tokens=200))
        next(h)
        h.cancel()
        assert h.wait(10) and h.response.finish_reason == "interrupted"
    finally:
        sched.stop()
    assert not sched.running and sched.idle and sched.stats()["busy_slots"] == 0
    one.threads = 2
    for i in range(5):
        text, r = results[i]
        want = alone(one, PROMPTS[i], max_new_tokens=10, seed=i)
        assert text == r.text and same(r, want)
    assert texts == [alone(one, p, max_new_tokens=4, seed=9).text for p in PROMPTS[:2]]
    one.threads = 1


def test_a_failing_sampler_fails_its_sequence_only(models):
    one, many = models[1]

    def bad(logits, ids):
        raise RuntimeError("sampler broke")

    sched = Scheduler(many)
    good = sched.submit(Request(prepare_prompt(many, "ok"), Sampler(seed=1), max_new_tokens=4))
    broken = sched.submit(Request(prepare_prompt(many, "no"), bad, max_new_tokens=4))
    sched.run_until_idle()
    with pytest.raises(RuntimeError, match="sampler broke"):
        list(broken)
    assert broken.done and same(good.result(), alone(one, "ok", max_new_tokens=4, seed=1))
    assert np.isfinite(many.past(0))


def test_an_interrupted_step_rebuilds_and_the_stream_goes_on(models, monkeypatch):
    """Ctrl-C inside a forward (after the engine ran, before the logits came back): the stream survives it,
    the slots of that batch are rebuilt from what they must hold, and the outputs are still exact."""
    one, many = models[1]
    real, calls = many.forward_batch, []

    def flaky(reqs):
        out = real(reqs)
        calls.append(len(reqs))
        if len(calls) in (3, 7):
            raise KeyboardInterrupt
        return out

    monkeypatch.setattr(many, "forward_batch", flaky)
    stream = generate_batch(many, PROMPTS[:3], max_new_tokens=10, seed=8, stream=True, token_budget=8)
    got, interrupts = [], 0
    while True:
        try:
            got.append(next(stream))
        except StopIteration:
            break
        except KeyboardInterrupt:
            interrupts += 1
    assert interrupts == 2
    for i, p in enumerate(PROMPTS[:3]):
        want = alone(one, p, max_new_tokens=10, seed=8)
        assert "".join(c.text for c in got if c.index == i) == want.text and same(stream.responses[i], want)


@pytest.mark.parametrize("separate", [False, True], ids=["shared-scheduler", "two-schedulers"])
def test_two_batches_from_two_threads_share_the_model_safely(models, separate):
    """Two generate_batch calls at once on one model: by default both run on the model's shared Scheduler
    (their sequences in the same steps); two Schedulers take turns at the engine and never hand out the
    same slot."""
    one, many = models[1]
    out, errors = {}, []

    def run(k):
        try:
            sched = Scheduler(many, token_budget=8) if separate else None
            out[k] = complete_batch(many, PROMPTS[k:k + 3], max_new_tokens=8, seed=k, token_budget=8,
                                    scheduler=sched)
        except BaseException as e:               # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(k,)) for k in (0, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    for k in (0, 3):
        for p, r in zip(PROMPTS[k:k + 3], out[k]):
            assert same(r, alone(one, p, max_new_tokens=8, seed=k))


def test_a_paused_stream_does_not_block_the_next_batch(models):
    """A stream left after one chunk holds every slot; the next batch on the model still runs (the shared
    Scheduler steps the paused sequences along), and the paused stream then goes on, exactly."""
    one, many = models[1]
    paused = generate_batch(many, PROMPTS[:3], max_new_tokens=10, seed=3, stream=True)
    first = next(paused)
    assert Scheduler.for_model(many) is paused._scheduler
    texts = generate_batch(many, PROMPTS[3:5], max_new_tokens=4, seed=4)
    assert texts == [alone(one, p, max_new_tokens=4, seed=4).text for p in PROMPTS[3:5]]
    rest = list(paused)
    for i, p in enumerate(PROMPTS[:3]):
        assert "".join(c.text for c in [first] + rest if c.index == i) == alone(one, p, max_new_tokens=10,
                                                                               seed=3).text


def test_non_finite_logits_are_the_single_paths_error(models, monkeypatch):
    from gpt2cy.errors import CheckpointError
    one, many = models[1]
    real = many.forward_batch

    def nan_for_slot_1(reqs):
        out = real(reqs)
        return [np.full_like(o, np.nan) if s == 1 else o for (s, _), o in zip(reqs, out)]

    monkeypatch.setattr(many, "forward_batch", nan_for_slot_1)
    sched = Scheduler(many)
    hs = [sched.submit(Request(prepare_prompt(many, p), Sampler(seed=1), max_new_tokens=3, slot=k))
          for k, p in enumerate(["a", "b"])]
    sched.run_until_idle()
    with pytest.raises(CheckpointError, match="not finite"):
        list(hs[1])
    assert same(hs[0].result(), alone(one, "a", max_new_tokens=3, seed=1))
