"""Sampling: the kept support is exactly right, temperature really changes the draws, seeds repeat."""
import numpy as np
import pytest

from gpt2cy.generation.sampling import Sampler, SamplingParams, apply_repetition_penalty, candidates

OFF = dict(top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0)


def params(**kw):
    return SamplingParams(**{**dict(temperature=1.0), **OFF, **kw})


def softmax(x, t=1.0):
    z = np.asarray(x, np.float64) / t
    e = np.exp(z - z.max())
    return e / e.sum()


@pytest.mark.parametrize("bad", [
    dict(temperature=-0.1), dict(temperature=float("nan")), dict(temperature=float("inf")), dict(top_k=-1),
    dict(top_k=2.5), dict(top_p=-0.01), dict(top_p=1.5), dict(min_p=-0.1), dict(min_p=1.1),
    dict(repetition_penalty=0.0), dict(repeat_last_n=-2), dict(temperature=True), dict(top_k="3")])
def test_bad_params_are_rejected(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad)


def test_temperature_zero_is_argmax(rng):
    logits = rng.standard_normal(1000).astype(np.float32)
    s = Sampler(SamplingParams(temperature=0.0), seed=1)
    assert all(s(logits) == int(np.argmax(logits)) for _ in range(5))
    ids, probs = candidates(logits, SamplingParams(temperature=0.0))
    assert ids.tolist() == [int(np.argmax(logits))] and probs.tolist() == [1.0]


def test_greedy_sees_the_repetition_penalty():
    logits = np.array([1.0, 3.0, 2.5, -1.0], np.float32)
    s = Sampler(SamplingParams(temperature=0.0, repetition_penalty=1.5), seed=0)
    assert s(logits) == 1
    assert s(logits, history=[1]) == 2          # 3/1.5 = 2 < 2.5
    assert s(logits, history=[1, 0, 0]) == 2


def test_repetition_penalty_rule():
    logits = np.array([2.0, -2.0, 1.0, 0.5], np.float32)
    out = apply_repetition_penalty(logits, [0, 1, 1, 0], 2.0)
    np.testing.assert_array_equal(out, [1.0, -4.0, 1.0, 0.5])   # each token once, whatever the repeats
    np.testing.assert_array_equal(logits, [2.0, -2.0, 1.0, 0.5])  # input untouched
    assert apply_repetition_penalty(logits, [0], 1.0) is logits


def test_repeat_last_n_limits_the_window():
    logits = np.array([5.0, 4.9, 0.0], np.float32)
    hist = [0, 2, 2, 2]
    p = SamplingParams(temperature=0.0, repetition_penalty=2.0, repeat_last_n=3)
    assert Sampler(p, 0)(logits, hist) == 0          # token 0 is outside the last 3
    assert Sampler(p.replace(repeat_last_n=4), 0)(logits, hist) == 1
    assert Sampler(p.replace(repeat_last_n=-1), 0)(logits, hist) == 1
    assert Sampler(p.replace(repeat_last_n=0), 0)(logits, hist) == 0


@pytest.mark.parametrize("k", [1, 5, 40, 999])
def test_top_k_keeps_exactly_the_k_best(rng, k):
    logits = rng.permutation(1000).astype(np.float32)   # distinct values: the best k are unique
    ids, probs = candidates(logits, params(top_k=k))
    assert sorted(ids.tolist()) == sorted(np.argsort(logits)[-k:].tolist())
    assert list(logits[ids]) == sorted(logits[ids], reverse=True)       # most likely first
    np.testing.assert_allclose(probs, softmax(logits[ids]), rtol=1e-12)


def test_top_k_zero_or_at_least_v_keeps_everything(rng):
    logits = rng.standard_normal(50).astype(np.float32)
    for k in (0, 50, 51):
        ids, probs = candidates(logits, params(top_k=k))
        assert sorted(ids.tolist()) == list(range(50))
        np.testing.assert_allclose(probs, softmax(logits)[ids], rtol=1e-6)


# probabilities 0.5, 0.25, 0.125, 0.0625, ... (halving), shuffled over the ids
HALVING = np.log(0.5 ** np.arange(1, 9))


@pytest.mark.parametrize("top_p,n_kept", [(0.3, 1), (0.5, 1), (0.6, 2), (0.74, 2), (0.76, 3), (0.9, 4), (0.99, 7)])
def test_top_p_keeps_the_smallest_set_reaching_p(top_p, n_kept):
    perm = np.random.default_rng(0).permutation(8)
    logits = np.empty(8, np.float32)
    logits[perm] = HALVING
    ids, probs = candidates(logits, params(top_p=top_p))
    assert ids.tolist() == perm[:n_kept].tolist()
    w = 0.5 ** np.arange(1, n_kept + 1)
    np.testing.assert_allclose(probs, w / w.sum(), rtol=1e-6)


@pytest.mark.parametrize("scale,lo,hi", [(8.0, 1, 1024), (3.0, 1024, 8192), (0.1, 8192, 50257)])
def test_top_p_on_a_full_vocabulary(rng, scale, lo, hi):
    """V = 50257 without top-k: small, middling and huge nuclei are exact."""
    logits = rng.standard_normal(50257).astype(np.float32) * scale
    p = params(top_p=0.9)
    ids, probs = candidates(logits, p)
    full = softmax(logits)
    order = np.argsort(-full, kind="stable")
    n = int(np.searchsorted(np.cumsum(full[order]), 0.9)) + 1
    assert set(ids.tolist()) == set(order[:n].tolist())
    assert lo <= len(ids) < hi                   # the path this case is meant to exercise
    np.testing.assert_allclose(probs, full[ids] / full[ids].sum(), rtol=1e-5)


def test_top_k_then_top_p_renormalises_within_k():
    logits = np.log(np.array([0.4, 0.3, 0.2, 0.1], np.float64)).astype(np.float32)
    # within the top-2 the mass is 4/7 and 3/7: top_p 0.5 keeps one, 0.6 keeps both
    assert candidates(logits, params(top_k=2, top_p=0.5))[0].tolist() == [0]
    assert candidates(logits, params(top_k=2, top_p=0.6))[0].tolist() == [0, 1]


def test_min_p_drops_tokens_below_a_fraction_of_the_best():
    logits = np.log(np.array([0.5, 0.26, 0.24, 0.0], np.float64) + 1e-12).astype(np.float32)
    ids, probs = candidates(logits, params(min_p=0.5))
    assert ids.tolist() == [0, 1]
    np.testing.assert_allclose(probs, [0.5 / 0.76, 0.26 / 0.76], rtol=1e-5)


def test_temperature_scales_before_filtering():
    logits = np.array([2.0, 1.0, 0.0], np.float32)
    for t in (0.5, 1.0, 2.0):
        ids, probs = candidates(logits, params(temperature=t))
        np.testing.assert_allclose(probs, softmax(logits, t)[ids], rtol=1e-6)


def test_draws_follow_the_tempered_distribution():
    """Empirical frequencies match softmax(logits / T) and T changes them (picoGPT#19's no-op bug)."""
    logits = np.array([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -2.0], np.float32)
    n = 20000
    entropies = {}
    for t in (0.5, 1.5):
        s = Sampler(params(temperature=t), seed=42)
        counts = np.bincount([s(logits) for _ in range(n)], minlength=8) / n
        np.testing.assert_allclose(counts, softmax(logits, t), atol=0.015)
        nz = counts[counts > 0]
        entropies[t] = -(nz * np.log(nz)).sum()
    assert entropies[1.5] > entropies[0.5] + 0.3


def test_draws_stay_in_the_support(rng):
    logits = rng.standard_normal(500).astype(np.float32)
    s = Sampler(params(top_k=3), seed=7)
    assert {s(logits) for _ in range(300)} == set(np.argsort(logits)[-3:].tolist())


def test_same_seed_same_tokens_other_seed_other_tokens(rng):
    logits = rng.standard_normal(300).astype(np.float32)
    p = SamplingParams(temperature=1.0, top_k=0, top_p=1.0)
    a = [Sampler(p, 123)(logits) for _ in range(1)]
    s1, s2, s3 = Sampler(p, 123), Sampler(p, 123), Sampler(p, 124)
    draws1 = [s1(logits) for _ in range(50)]
    assert draws1[:1] == a
    assert draws1 == [s2(logits) for _ in range(50)]
    assert draws1 != [s3(logits) for _ in range(50)]
    s1.reseed(123)
    assert draws1 == [s1(logits) for _ in range(50)]


def test_random_seed_is_recorded():
    s = Sampler(seed=None)
    assert isinstance(s.seed, int) and 0 <= s.seed < 2 ** 31
    assert Sampler(seed=-1).seed >= 0
    with pytest.raises(ValueError):
        Sampler(seed=-5)


def test_bad_logits_shape():
    with pytest.raises(ValueError):
        candidates(np.zeros((2, 3), np.float32), params())


def test_exempt_tokens_are_not_penalised():
    logits = np.array([2.0, 1.9, 0.0], np.float32)
    p = SamplingParams(temperature=0.0, repetition_penalty=2.0)
    assert Sampler(p, 0)(logits, [0, 2]) == 1                    # 2.0 / 2 < 1.9
    assert Sampler(p, 0, exempt=[0])(logits, [0, 2]) == 0
    ids, _ = candidates(logits, p, [0, 2], exempt=frozenset([0]))
    assert ids.tolist() == [0]


def reference_draw(logits, p, u):
    """candidates() (the numpy rules) and one inverse-CDF draw at u."""
    ids, probs = candidates(logits, p)
    cum = np.cumsum(probs)
    return int(ids[min(int(np.searchsorted(cum, u * cum[-1], side="right")), len(ids) - 1)])


@pytest.mark.parametrize("k,t,top_p,min_p", [(1, 1.0, 1.0, 0.0), (40, 0.8, 0.95, 0.0), (40, 1.3, 1.0, 0.05),
                                             (7, 0.5, 0.5, 0.2), (2000, 1.0, 0.9, 0.0), (60000, 2.0, 0.99, 0.0)])
def test_compiled_top_k_path_draws_what_the_reference_draws(rng, k, t, top_p, min_p):
    from gpt2cy.generation._sampling import sample_top_k
    for trial in range(60):
        logits = (rng.standard_normal(50257 if trial % 3 else 300) * rng.uniform(0.5, 6)).astype(np.float32)
        kk = min(k, len(logits) - 1)                  # k >= V is top-k off: the Sampler takes the nucleus path
        p = params(temperature=t, top_k=kk, top_p=top_p, min_p=min_p)
        u = rng.random()
        assert sample_top_k(logits, kk, t, top_p, min_p, u) == reference_draw(logits, p, u)


def test_compiled_top_k_selection(rng):
    from gpt2cy.generation._sampling import top_k
    x = rng.standard_normal(1000).astype(np.float32)
    assert top_k(x, 25).tolist() == np.argsort(-x, kind="stable")[:25].tolist()
    ties = np.array([1, 3, 3, 2, 3, np.nan, 5], np.float32)
    assert top_k(ties, 3).tolist() == [6, 1, 2]               # ties: lower id first; NaN never chosen
    assert top_k(ties, 100).tolist() == [6, 1, 2, 4, 3, 0]
    with pytest.raises(ValueError):
        top_k(ties, 0)
    s = Sampler(params(top_k=5), seed=0)
    assert s([0.0, 1.0, 2.0]) in (0, 1, 2)                      # lists and k > V are fine
    assert s(np.arange(10, dtype=np.float64)[::2]) in (0, 1, 2, 3, 4)   # float64, strided


def test_compiled_path_draws_follow_the_kept_distribution():
    logits = np.array([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -2.0], np.float32)
    s = Sampler(params(temperature=0.7, top_k=4), seed=9)
    n = 20000
    counts = np.bincount([s(logits) for _ in range(n)], minlength=8) / n
    want = np.zeros(8)
    want[:4] = softmax(logits[:4], 0.7)
    np.testing.assert_allclose(counts, want, atol=0.015)


# -- top-p without top-k: the compiled radix select against the reference's full sort -----------------
def _nucleus_cases(rng):
    """(name, logits) rows: flat, GPT-2-like, peaked, heavy ties, masked -inf entries, a tiny vocabulary."""
    V = 50257
    yield "flat", rng.standard_normal(V).astype(np.float32) * 0.05
    yield "flat2", rng.standard_normal(V).astype(np.float32) * 0.3
    yield "gpt2", rng.standard_normal(V).astype(np.float32) * 2.5
    yield "peaked", rng.standard_normal(V).astype(np.float32) * 8
    yield "spike", np.where(np.arange(V) == 77, 30.0, rng.standard_normal(V)).astype(np.float32)
    yield "ties", rng.integers(0, 6, V).astype(np.float32)            # whole classes of equal values
    yield "uniform", np.zeros(V, np.float32)                          # every token tied
    masked = rng.standard_normal(V).astype(np.float32) * 2
    masked[rng.integers(0, V, 5000)] = -np.inf
    yield "masked", masked
    spike = rng.standard_normal(V).astype(np.float32) * 0.1       # the cut below max * 4^-7: the last band
    spike[123] = 10.5
    yield "spike-over-flat", spike
    yield "small", rng.standard_normal(300).astype(np.float32) * 3


@pytest.mark.parametrize("top_p,min_p", [(0.1, 0.0), (0.5, 0.0), (0.9, 0.0), (0.95, 0.0), (0.999, 0.0),
                                         (0.9, 0.05), (1.0, 0.01)])
def test_compiled_nucleus_keeps_exactly_the_reference_set(rng, top_p, min_p):
    from gpt2cy.generation._sampling import nucleus
    from gpt2cy.generation.sampling import softmax as probs_of
    undecided = 0
    for name, logits in _nucleus_cases(rng):
        for t in (0.8, 1.0):
            ref, _ = candidates(logits, params(temperature=t, top_p=top_p, min_p=min_p))
            kept = nucleus(probs_of(logits, t), top_p, min_p)
            if kept is None:                                  # too close to call: the Sampler falls back
                undecided += 1
                continue
            assert kept.tolist() == sorted(ref.tolist()), (name, t)
    assert undecided <= 1


def test_compiled_nucleus_cut_inside_a_tie_keeps_the_lowest_ids():
    from gpt2cy.generation._sampling import nucleus
    probs = np.full(1000, 1e-3, np.float32)
    probs /= probs.sum(dtype=np.float64)
    kept = nucleus(probs.astype(np.float32), 0.5)
    assert kept is not None and kept.tolist() == list(range(len(kept))) and 499 <= len(kept) <= 501
    ref, _ = candidates(np.zeros(1000, np.float32), params(top_p=0.5))
    assert kept.tolist() == sorted(ref.tolist())


def test_compiled_nucleus_refuses_what_is_not_a_distribution():
    from gpt2cy.generation._sampling import nucleus, sample_nucleus
    for bad in (np.array([0.5, np.nan, 0.5], np.float32), np.array([0.5, -0.1, 0.6], np.float32),
                np.array([2.0, 0.0], np.float32), np.full(100, 0.5, np.float32)):
        assert nucleus(bad, 0.9) is None and sample_nucleus(bad, 0.9, 0.0, 0.5) == -1
    with pytest.raises(ValueError):
        sample_nucleus(np.array([1.0], np.float32), 0.9, 0.0, 1.0)


def test_compiled_nucleus_draws_follow_the_kept_distribution():
    from gpt2cy.generation._sampling import sample_nucleus
    from gpt2cy.generation.sampling import softmax as probs_of
    logits = np.array([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -2.0], np.float32)
    full = probs_of(logits, 0.7)
    rng = np.random.default_rng(3)
    for top_p, min_p in ((0.8, 0.0), (1.0, 0.0), (0.95, 0.3)):
        ref, w = candidates(logits, params(temperature=0.7, top_p=top_p, min_p=min_p))
        n = 20000
        draws = [sample_nucleus(full, top_p, min_p, u) for u in rng.random(n)]
        assert set(draws) == set(ref.tolist())
        want = np.zeros(8)
        want[ref] = w
        np.testing.assert_allclose(np.bincount(draws, minlength=8) / n, want, atol=0.015)


def test_top_p_sampler_is_seeded_and_falls_back_when_undecided(rng, monkeypatch):
    import gpt2cy.generation.sampling as sampling
    logits = rng.standard_normal(50257).astype(np.float32) * 2.5
    p = params(temperature=0.8, top_p=0.9)
    a = [Sampler(p, seed=4)(logits) for _ in range(3)]
    b = Sampler(p, seed=4)
    assert a == [b(logits)] * 3
    kept = set(candidates(logits, p)[0].tolist())
    s = Sampler(p, seed=5)
    assert all(s(logits) in kept for _ in range(50))
    monkeypatch.setattr(sampling, "sample_nucleus", lambda *a: -1)        # every cut too close to call
    s = Sampler(p, seed=5)
    assert all(s(logits) in kept for _ in range(50))


def test_compiled_softmax_is_numpys_float32_softmax(rng):
    """sampling.softmax (two compiled passes around numpy's exp) against numpy's own float32 steps: the
    shift and scale bit for bit, the result within 1 ulp (numpy's pairwise sum, redone in C)."""
    import warnings
    from gpt2cy.generation._sampling import normalise, shift_scale
    from gpt2cy.generation.sampling import softmax as probs_of
    rows = [rng.standard_normal(V).astype(np.float32) * s for V, s in ((50257, 0.3), (50257, 8.0), (1, 1.0),
                                                                         (7, 2.0), (129, 1.0), (9000, 30.0))]
    masked = rng.standard_normal(1000).astype(np.float32)
    masked[::3] = -np.inf
    rows += [masked, -np.abs(rows[0]), np.zeros(5, np.float32)]
    for x in rows:
        for t in (0.8, 1.0, 1.7):
            scale = np.float32(1.0 / t)
            want = np.subtract(x, x.max(), dtype=np.float32)
            want *= scale
            got = np.empty_like(x)
            shift_scale(x, scale, got)
            assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
            np.exp(want, out=want)
            want *= np.float32(1.0 / float(want.sum()))
            np.testing.assert_array_max_ulp(probs_of(x, t), want, maxulp=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for bad in ([1.0, np.nan, 2.0], [-np.inf, -np.inf], [np.inf, 1.0]):
            assert np.isnan(probs_of(np.array(bad, np.float32), 1.0)).all()     # as numpy's: all NaN
    with pytest.raises(ValueError):
        shift_scale(np.zeros(3, np.float32), np.float32(1.0), np.zeros(2, np.float32))
    with pytest.raises(ValueError):
        normalise(np.zeros(0, np.float32))
