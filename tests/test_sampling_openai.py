"""What OpenAI, Transformers and llama.cpp users expect of the sampler: ties, top_p=0, min_keep, OpenAI's
presence/frequency penalties and logit_bias, ignore_eos as a ban, a clear error when nothing is left,
and the order the stages apply in (llama.cpp's --samplers)."""
import json
from dataclasses import asdict

import numpy as np
import pytest

from gpt2cy.generation._sampling import nucleus, sample_top_k
from gpt2cy.generation.sampling import (DEFAULT_ORDER, LLAMA_CPP_ORDER, Sampler, SamplingParams, _cut, _ordered,
                                        apply_presence_frequency, candidates, parse_order, softmax)

OFF = dict(top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0)


def params(**kw):
    return SamplingParams(**{**dict(temperature=1.0), **OFF, **kw})


def support(sampler, logits, n=400, history=()):
    return {sampler(logits, history) for _ in range(n)}


# -- ties: one rule (lower id first) for the readable and the compiled paths -------------------------
def test_tied_top_k_keeps_the_lowest_ids_on_every_path():
    zeros = np.zeros(5, np.float32)
    assert candidates(zeros, params(top_k=3))[0].tolist() == [0, 1, 2]
    assert support(Sampler(params(top_k=3), seed=0), zeros) == {0, 1, 2}
    assert _ordered(zeros, params(top_k=3, order=LLAMA_CPP_ORDER), (), (), frozenset())[0].tolist() == [0, 1, 2]
    # ties straddling the k-th place in a big row: the lowest tied ids fill the heap
    x = np.full(50257, -5.0, np.float32)
    x[[7, 70, 700, 7000, 40000]] = 3.0
    x[[11, 20000]] = 4.0
    want = [11, 20000, 7, 70, 700]
    assert candidates(x, params(top_k=5))[0].tolist() == want
    assert support(Sampler(params(top_k=5, temperature=5.0), seed=1), x, 600) == set(want)


def test_ties_at_the_top_p_and_min_p_boundaries_keep_the_lowest_ids():
    for n, kw in ((20, dict(top_k=10)), (10, dict(top_k=0))):   # ten equal tokens left, 0.1 each
        x = np.zeros(n, np.float32)
        ids, probs = candidates(x, params(top_p=0.35, **kw))
        assert ids.tolist() == [0, 1, 2, 3] and np.allclose(probs, 0.25)
        assert support(Sampler(params(top_p=0.35, **kw), seed=2), x) == {0, 1, 2, 3}
    big = np.zeros(50257, np.float32)
    kept = nucleus(softmax(big, 1.0), 0.001)
    assert kept is not None and kept.tolist() == candidates(big, params(top_p=0.001))[0].tolist()
    assert kept.tolist() == list(range(len(kept)))
    # min-p keeps or drops a tie as a whole; min_keep then fills with the lowest ids
    y = np.array([1.0, 0.0, 0.0, 0.0, 0.0], np.float32)
    assert candidates(y, params(min_p=0.9))[0].tolist() == [0]
    assert candidates(y, params(min_p=0.9, min_keep=3))[0].tolist() == [0, 1, 2]
    assert candidates(y, params(min_p=0.3))[0].tolist() == [0, 1, 2, 3, 4]


def test_greedy_ties_pick_the_lowest_id():
    x = np.array([0.0, 2.0, 1.0, 2.0], np.float32)
    assert Sampler(params(temperature=0), seed=0)(x) == 1
    assert candidates(x, params(temperature=0))[0].tolist() == [1]


# -- top_p = 0 and min_keep -------------------------------------------------------------------------------
def test_top_p_zero_keeps_only_the_best_token(rng):
    x = rng.standard_normal(50257).astype(np.float32)
    best = int(np.argmax(x))
    for kw in (dict(top_k=40), dict(top_k=0)):
        p = params(top_p=0.0, temperature=1.5, **kw)
        assert candidates(x, p)[0].tolist() == [best]
        assert support(Sampler(p, seed=3), x, 50) == {best}
    assert SamplingParams(top_p=0).top_p == 0
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=-0.1)


@pytest.mark.parametrize("kw,n", [(dict(top_k=1), 4), (dict(top_p=0.0), 4), (dict(top_p=0.0, top_k=2), 4),
                                  (dict(min_p=1.0), 4), (dict(top_k=2, min_p=1.0), 4), (dict(top_k=6), 6)])
def test_min_keep_is_a_floor_for_every_cut(kw, n):
    x = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.0, -1.0, -2.0], np.float32)
    p = params(min_keep=4, **kw)
    ids, _ = candidates(x, p)
    assert ids.tolist() == list(range(n))
    assert support(Sampler(p.replace(temperature=8.0), seed=4), x, 3000) == set(range(n))
    if kw.get("top_k"):                          # the compiled top-k path itself, over the whole range of u
        flat = p.replace(temperature=8.0)
        drawn = {sample_top_k(x, max(p.top_k, 4), 8.0, p.top_p, p.min_p, u, 4) for u in np.linspace(0, 0.999, 500)}
        assert drawn == set(candidates(x, flat)[0].tolist()) == set(range(n))
    assert candidates(x, p.replace(min_keep=0))[0].tolist() == candidates(x, p.replace(min_keep=1))[0].tolist()


# -- OpenAI's presence and frequency penalties --------------------------------------------------------------
def test_presence_and_frequency_follow_openais_formula(rng):
    x = rng.standard_normal(100).astype(np.float32)
    gen = [3, 3, 3, 7, 9, 9]
    out = apply_presence_frequency(x, gen, 0.5, 0.25)
    want = x.copy()
    for j, c in ((3, 3), (7, 1), (9, 2)):
        want[j] -= np.float32(c * 0.25 + 0.5)
    assert np.array_equal(out, want) and out is not x
    assert apply_presence_frequency(x, gen, 0.0, 0.0) is x
    assert np.array_equal(apply_presence_frequency(x, gen, 0.5, 0.25, exempt=frozenset([3]))[3], x[3])


def test_frequency_penalty_counts_only_what_this_generation_sampled():
    x = np.array([3.0, 0.0], np.float32)
    s = Sampler(params(temperature=0, frequency_penalty=1.0), seed=0)
    hist = [0] * 20                              # the prompt is full of token 0: it does not count (OpenAI)
    out = []
    for _ in range(6):
        out.append(s(x, hist))
        hist.append(out[-1])
    # 3 - c: 3, 2, 1, 0 (a tie with token 1: the lower id), then -1 < 0
    assert out == [0, 0, 0, 0, 1, 0]
    # a history that does not continue the last call starts a new generation: the counts restart
    assert s(x, [5, 5]) == 0 and s(x, [5, 5, 0]) == 0
    assert s._generated == [0]


def test_presence_penalty_moves_greedy_through_the_vocabulary():
    x = np.array([3.0, 2.5, 2.0, -9.0], np.float32)
    s = Sampler(params(temperature=0, presence_penalty=2.0), seed=0)
    hist = [1]
    for _ in range(4):
        hist.append(s(x, hist))
    assert hist[1:] == [0, 1, 2, 0]              # 3-2=1 < 2.5; 0.5 < 2.0; then 1 > 0.5 > 0


@pytest.mark.parametrize("kw", [dict(top_k=40, top_p=0.0), dict(top_k=0, top_p=0.0),
                                dict(top_k=40, temperature=0.05), dict(top_k=0, top_p=0.5, temperature=0.05),
                                dict(top_k=0, min_p=0.5, temperature=0.05), dict(top_k=0, min_keep=2, top_p=0.0),
                                dict(order=LLAMA_CPP_ORDER, top_k=1)])
def test_penalties_reach_every_path(rng, kw):
    """The compiled top-k path, the nucleus path, the readable path and another order all see the
    penalties: the best token, once drawn, gives way to the next (presence 2 > their gap of 0.5)."""
    x = (rng.standard_normal(50257) * 0.1).astype(np.float32)
    x[100], x[200] = 5.0, 4.5
    s = Sampler(params(presence_penalty=2.0, **kw), seed=0)
    hist = [1, 2, 3]
    for _ in range(3):
        hist.append(s(x, hist))
    if kw.get("min_keep") == 2:                  # two kept: each draw is one of the two best left
        assert set(hist[3:]) <= {100, 200}
    else:
        assert hist[3:] == [100, 200, 100]


@pytest.mark.parametrize("bad", [dict(presence_penalty=2.5), dict(frequency_penalty=-3), dict(presence_penalty="1"),
                                 dict(min_keep=-1), dict(min_keep=1.5), dict(logit_bias={1: 101}),
                                 dict(logit_bias={-1: 1}), dict(logit_bias={"x": 1}),
                                 dict(logit_bias={1: float("nan")}),
                                 dict(logit_bias=5), dict(logit_bias={1: True}), dict(order="top_k;bogus"),
                                 dict(order="top_k;top_k"), dict(order="")])
def test_bad_new_params_are_rejected(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad)


# -- logit_bias -------------------------------------------------------------------------------------------
def test_logit_bias_is_added_first_and_checked_against_the_vocabulary(rng):
    x = rng.standard_normal(1000).astype(np.float32)
    lo = int(np.argmin(x))
    p = params(temperature=0, logit_bias={str(lo): 100, int(np.argmax(x)): -100.0})   # JSON-style keys too
    assert p.logit_bias == tuple(sorted({lo: 100.0, int(np.argmax(x)): -100.0}.items()))
    assert Sampler(p, 0)(x) == lo
    assert candidates(x, p)[0].tolist() == [lo]
    p2 = params(top_k=40, logit_bias={lo: 100})
    assert support(Sampler(p2, seed=1), x, 50) == {lo}
    with pytest.raises(ValueError, match="vocabulary has 1000"):
        Sampler(params(logit_bias={1000: 1.0}), 0)(x)
    with pytest.raises(ValueError, match="vocabulary"):
        params(logit_bias={5000: 1}).check_vocab(1000)
    params(logit_bias={999: 1}).check_vocab(1000)


def test_params_survive_a_json_round_trip():
    p = SamplingParams(logit_bias={50256: -100, 13: 2.5}, presence_penalty=0.5, order=LLAMA_CPP_ORDER, min_keep=2)
    back = SamplingParams(**json.loads(json.dumps(asdict(p))))
    assert back == p and hash(back) == hash(p)


# -- nothing left to sample ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [dict(temperature=0), dict(top_k=40), dict(top_k=0, top_p=0.9), dict(top_k=0),
                                dict(top_k=0, min_keep=3), dict(top_k=0, top_p=0.0),
                                dict(order=LLAMA_CPP_ORDER, top_k=40)])
def test_every_logit_masked_is_a_clear_error(kw):
    for row in (np.full(300, -np.inf, np.float32), np.full(50257, np.nan, np.float32)):
        with pytest.raises(ValueError, match="nothing can be sampled"):
            Sampler(params(**kw), seed=0)(row)
        with pytest.raises(ValueError, match="nothing can be sampled"):
            candidates(row, params(**kw))
    x = np.full(50, -np.inf, np.float32)
    x[7] = 0.0
    with pytest.raises(ValueError, match="nothing can be sampled"):   # the one finite token masked by a caller
        Sampler(params(**kw), seed=0)(np.where(np.arange(50) == 7, -np.inf, x))
    assert Sampler(params(**kw), seed=0)(x) == 7


def test_masked_tokens_are_never_candidates():
    x = np.full(300, -np.inf, np.float32)
    x[[5, 17]] = [1.0, 2.0]
    for kw in (dict(top_k=40), dict(top_k=0), dict(top_k=40, min_keep=10), dict(order=LLAMA_CPP_ORDER, top_k=40)):
        assert sorted(candidates(x, params(**kw))[0].tolist()) == [5, 17]
        assert support(Sampler(params(temperature=3.0, **kw), seed=5), x, 300) == {5, 17}


def test_ignore_eos_bans_eos_in_the_loop_and_the_scheduler(tiny_model_dir):
    import gpt2cy
    from gpt2cy.generation.loop import prepare_prompt
    from gpt2cy.generation.scheduler import Request, Scheduler
    model = gpt2cy.load(tiny_model_dir)
    eos = model.tokenizer.eot_token
    push = {eos: 100.0}                          # the model would say <|endoftext|> every time
    r = model.generate("Hello", max_new_tokens=5, temperature=0, logit_bias=push, return_response=True)
    assert r.finish_reason == "eos"
    r = model.generate("Hello", max_new_tokens=5, logit_bias=push, ignore_eos=True, seed=1, return_response=True)
    assert r.finish_reason == "length" and len(r.token_ids) == 5 and eos not in r.token_ids
    assert "<|endoftext|>" not in r.text
    sched = Scheduler(model)
    h = sched.submit(Request(prepare_prompt(model, "Hello"), Sampler(SamplingParams(logit_bias=push), seed=2),
                             max_new_tokens=4, ignore_eos=True))
    sched.run_until_idle()
    assert h.response.finish_reason == "length" and eos not in h.response.token_ids
    # a vocabulary of one token, <|endoftext|>, under ignore_eos: nothing left, said clearly
    only_eos = lambda logits, ids: Sampler(params(), seed=0)(                       # noqa: E731
        np.where(np.arange(len(logits)) == eos, logits, -np.inf).astype(np.float32), ids)
    with pytest.raises(ValueError, match="nothing can be sampled"):
        from gpt2cy.generation.loop import stream_generate
        list(stream_generate(model, prepare_prompt(model, "Hello"), only_eos, max_new_tokens=2, ignore_eos=True))


# -- the order the stages apply in ------------------------------------------------------------------------
def test_parse_order_speaks_llama_cpps_samplers_option():
    assert parse_order("penalties;top_k;top_p;min_p;temperature") == LLAMA_CPP_ORDER
    assert parse_order("penalties;dry;top_n_sigma;top_k;typ_p;top_p;min_p;xtc;temperature") == LLAMA_CPP_ORDER
    assert parse_order("top_k,temp") == ("top_k", "temperature")
    assert parse_order(["Top_P", " min_p "]) == ("top_p", "min_p")
    assert SamplingParams().order == DEFAULT_ORDER == ("penalties", "temperature", "top_k", "top_p", "min_p")
    assert SamplingParams(order=None).order == DEFAULT_ORDER
    for bad in ("top_k;mirostat", "top_k;;top_k", ";", 5):
        with pytest.raises(ValueError):
            parse_order(bad)


def test_the_generic_pipeline_in_the_default_order_keeps_the_reference_sets(rng):
    """_ordered (any order) run with the default order against _cut (the default order's reference,
    which the compiled paths are checked against): the same sets, the same probabilities."""
    for trial in range(12):
        x = (rng.standard_normal(50257 if trial % 2 else 500) * rng.uniform(0.3, 5)).astype(np.float32)
        for kw in (dict(top_k=40, top_p=0.95), dict(top_k=0, top_p=0.9), dict(top_k=0, min_p=0.05),
                   dict(top_k=7, top_p=0.5, min_p=0.2, min_keep=3), dict(top_k=0, top_p=0.0)):
            p = params(temperature=0.8, **kw)
            ids, probs = _cut(x, p)
            gids, gprobs = _ordered(x, p, (), (), frozenset())
            # the reference ranks float32 probabilities, the pipeline float64 logits: the order may differ
            # among tokens whose float32 probabilities tie, and the cut by a token of rounding-level mass
            full = softmax(x, 0.8).astype(np.float64)
            assert full[np.setxor1d(gids, ids)].sum() < 1e-6, kw
            if len(gids) == len(ids) and set(gids.tolist()) == set(ids.tolist()):
                np.testing.assert_allclose(gprobs[np.argsort(gids)], probs[np.argsort(ids)], rtol=1e-5, atol=1e-9)


def test_llama_cpp_order_cuts_the_untempered_distribution():
    x = np.log(np.array([0.5, 0.3, 0.15, 0.05], np.float64)).astype(np.float32)
    hf = params(temperature=3.0, top_p=0.75)                      # tempered: flatter, so more tokens
    lc = hf.replace(order=LLAMA_CPP_ORDER)
    assert candidates(x, lc)[0].tolist() == [0, 1]                # 0.5 + 0.3 reaches 0.75 at T = 1
    assert len(candidates(x, hf)[0]) > 2
    ids, probs = candidates(x, lc)
    np.testing.assert_allclose(probs, np.array([0.5, 0.3]) ** (1 / 3) / (np.array([0.5, 0.3]) ** (1 / 3)).sum(),
                               rtol=1e-6)                          # then the temperature, on the survivors
    assert support(Sampler(lc, seed=6), x, 500) == {0, 1}
    # a stage left out is not applied (as llama.cpp drops it from the chain)
    assert len(candidates(x, params(top_k=1, order="temperature;top_p"))[0]) == 4
    # presence penalty after the temperature subtracts from the tempered logits
    g = [0]
    a = candidates(x, params(temperature=2.0, presence_penalty=1.0), generated=g)[1]
    b = candidates(x, params(temperature=2.0, presence_penalty=1.0, order="temperature;penalties"), generated=g)[1]
    assert not np.allclose(a, b)


def test_other_orders_are_seeded_and_greedy_at_zero_temperature(rng):
    x = rng.standard_normal(2000).astype(np.float32)
    p = params(temperature=0.9, top_k=50, top_p=0.9, order=LLAMA_CPP_ORDER)
    s1, s2 = Sampler(p, seed=9), Sampler(p, seed=9)
    assert [s1(x) for _ in range(30)] == [s2(x) for _ in range(30)]
    assert set(s1(x) for _ in range(200)) <= set(candidates(x, p)[0].tolist())
    assert Sampler(p.replace(temperature=0), seed=0)(x) == int(np.argmax(x))


@pytest.mark.parametrize("k,t,top_p,min_p,mk", [(40, 0.8, 0.0, 0.0, 1), (40, 0.8, 0.0, 0.0, 5), (10, 1.3, 0.3, 0.0, 6),
                                                (40, 1.0, 1.0, 0.5, 8), (3, 0.7, 0.9, 0.1, 5)])
def test_compiled_top_k_draws_what_the_reference_draws_with_min_keep_and_masks(rng, k, t, top_p, min_p, mk):
    for trial in range(40):
        x = (rng.standard_normal(50257 if trial % 2 else 300) * rng.uniform(0.5, 6)).astype(np.float32)
        if trial % 4 == 1:
            x[rng.integers(0, len(x), len(x) // 2)] = -np.inf                     # half masked
        if trial % 8 == 3:
            x[:] = -np.inf
            x[rng.integers(0, len(x), 3)] = 1.0                                   # fewer left than k
        p = params(temperature=t, top_k=k, top_p=top_p, min_p=min_p, min_keep=mk)
        u = rng.random()
        ids, probs = candidates(x, p)
        cum = np.cumsum(probs)
        want = int(ids[min(int(np.searchsorted(cum, u * cum[-1], side="right")), len(ids) - 1)])
        assert sample_top_k(x, max(k, mk), t, top_p, min_p, u, mk) == want


# -- the command line: llama.cpp's spellings, bad values refused at parse time ----------------------------
def test_cli_sampling_flags():
    from gpt2cy.cli.parser import UsageError, build_parser
    parse = build_parser().parse_args
    a = parse(["generate", "-p", "x", "--samplers", "penalties;dry;top_k;top_p;min_p;xtc;temperature",
               "-l", "15043+1", "--logit-bias", "50256-100", "--presence-penalty", "0.5",
               "--frequency-penalty", "-1.5", "--top-p", "0", "--min-keep", "3"])
    assert a.samplers == LLAMA_CPP_ORDER and a.logit_bias == [(15043, 1.0), (50256, -100.0)]
    assert (a.presence_penalty, a.frequency_penalty, a.top_p, a.min_keep) == (0.5, -1.5, 0.0, 3)
    p = SamplingParams(top_p=a.top_p, presence_penalty=a.presence_penalty, frequency_penalty=a.frequency_penalty,
                       logit_bias=dict(a.logit_bias), min_keep=a.min_keep, order=a.samplers)
    assert p.order == LLAMA_CPP_ORDER and p.logit_bias == ((15043, 1.0), (50256, -100.0))
    d = parse(["generate", "-p", "x"])
    assert d.samplers is None and d.logit_bias == [] and d.min_keep == 1 and d.presence_penalty == 0.0
    for bad in (["--samplers", "top_k;bogus"], ["--samplers", "top_k;top_k"], ["-l", "15043"], ["-l", "1+101"],
                ["-l", "x+1"], ["--presence-penalty", "3"], ["--frequency-penalty", "nan"], ["--top-p", "-0.1"],
                ["--min-keep", "-1"]):
        with pytest.raises(UsageError):
            parse(["generate", "-p", "x", *bad])
