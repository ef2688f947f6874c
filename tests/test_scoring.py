"""model.score: per-token log-probabilities against torch's log_softmax of GPT2LMHeadModel on the same weights
(within 1e-4), the Transformers guide's sliding windows, batching, streaming and the edge cases."""
import math

import numpy as np
import pytest

from gpt2cy.config import Config
from gpt2cy.errors import ContextLengthError
from gpt2cy.generation.scoring import StreamScorer, Window, score_windows, sliding_windows
from gpt2cy.model import Model

import reference as ref

TOL = 1e-4
CFG = Config(n_vocab=50257, n_ctx=64, n_embd=32, n_head=2, n_layer=2, name="tiny")


@pytest.fixture(scope="module")
def tensors():
    return ref.random_tensors(CFG, seed=21)


@pytest.fixture(scope="module")
def model(tensors):
    # 3 slots and 100 rows a pass: several windows share a pass, and a 64-token window never splits
    return Model.from_tensors(CFG, tensors, threads=2, n_slots=3, max_rows=100)


@pytest.fixture(scope="module")
def ids():
    return np.random.default_rng(21).integers(0, CFG.n_vocab, size=200)


@pytest.fixture(scope="module")
def torch_ref(tensors):
    """(per-token log-probabilities, argmax flags, top-3 ids) of the Transformers recipe for ids, n_ctx, stride:
    torch's float64 log_softmax of GPT2LMHeadModel's logits in each window, on the tokens it counts."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from test_hf_parity import hf_model
    hf = hf_model(CFG, tensors)

    def run(ids, n_ctx, stride):
        n = len(ids)
        lp, greedy, top = np.full(n, np.nan), np.zeros(n, bool), np.full((n, 3), -1)
        prev_end = 0
        for begin in range(0, n, stride):
            end = min(begin + n_ctx, n)
            trg_len = end - prev_end
            inp = torch.as_tensor(np.asarray(ids[begin:end], dtype=np.int64))[None]
            labels = inp.clone()
            labels[:, :-trg_len] = -100
            with torch.inference_mode():
                logits = hf(inp).logits[0].double()
            lsm = torch.log_softmax(logits, dim=-1)
            for j in range(1, end - begin):             # logits row j - 1 predicts labels[j] (the shift)
                if labels[0, j] != -100:
                    q = begin + j
                    lp[q] = lsm[j - 1, ids[q]].item()
                    greedy[q] = int(lsm[j - 1].argmax()) == ids[q]
                    top[q] = lsm[j - 1].topk(3).indices.numpy()
            prev_end = end
            if end == n:
                break
        return lp, greedy, top
    return run


# ------------------------------------------------------------------------------------ against torch

@pytest.mark.parametrize("n_ctx,stride", [(64, 20), (64, 64), (32, 7)])
def test_score_equals_torch_log_softmax(model, ids, torch_ref, n_ctx, stride):
    s = model.score(ids, n_ctx=n_ctx, stride=stride, top_n=3)
    want, greedy, top = torch_ref(ids, n_ctx, stride)
    scored = ~np.isnan(want)
    assert np.array_equal(~np.isnan(s.logprobs), scored)          # the same tokens counted
    assert s.count == scored.sum() and not scored[0]
    assert np.abs(s.logprobs[scored] - want[scored]).max() < TOL
    assert math.isclose(s.sum_logprob, want[scored].sum(), rel_tol=1e-6)
    assert math.isclose(s.perplexity, math.exp(-want[scored].mean()), rel_tol=1e-5)
    assert np.array_equal(s.greedy[scored], greedy[scored])
    assert np.array_equal(s.top_ids[scored], top[scored])
    assert np.all(np.diff(s.top_logprobs[scored], axis=1) <= 0)    # best first
    assert np.all(s.top_logprobs[scored][:, 0] >= s.logprobs[scored] - 1e-6)
    if stride < n_ctx:
        assert s.count == len(ids) - 1                             # every token but the first, once
    else:
        assert s.count == len(ids) - 1 - (len(sliding_windows(len(ids), n_ctx, stride)) - 1)


def test_exactly_n_ctx_and_one_more(model, ids, torch_ref):
    for n in (64, 65):
        s = model.score(ids[:n], stride=32)
        want, _, _ = torch_ref(ids[:n], 64, 32)
        assert s.count == n - 1
        assert np.abs(s.logprobs[1:] - want[1:]).max() < TOL
    # 64 tokens are one window, scored from one forward: the log-softmax of model.logits
    lg = model.logits(ids[:64]).astype(np.float64)
    lsm = lg - np.log(np.exp(lg - lg.max(1, keepdims=True)).sum(1, keepdims=True)) - lg.max(1, keepdims=True)
    s = model.score(ids[:64])
    assert np.abs(s.logprobs[1:] - lsm[np.arange(63), ids[1:64]]).max() < 1e-5


# ------------------------------------------------------------------------------------ the windows

def _recipe_counted(n, n_ctx, stride):
    """{window begin: counted target positions}, from the guide's label masks (no model)."""
    out, prev_end = {}, 0
    for begin in range(0, n, stride):
        end = min(begin + n_ctx, n)
        trg_len = end - prev_end
        labels = list(range(begin, end))
        masked = labels[:-trg_len] if trg_len < len(labels) else []
        out[begin] = [q for q in labels[1:] if q not in masked]   # the shift drops the window's first label
        prev_end = end
        if end == n:
            break
    return {b: q for b, q in out.items() if q}


@pytest.mark.parametrize("n", [0, 1, 2, 5, 64, 65, 128, 129, 1000])
@pytest.mark.parametrize("n_ctx,stride", [(64, 32), (64, 64), (64, 1), (2, 1), (64, 63), (10, 3)])
def test_windows_are_the_guides(n, n_ctx, stride):
    got = {w.start: list(range(w.first, w.last)) for w in sliding_windows(n, n_ctx, stride)}
    assert got == _recipe_counted(n, n_ctx, stride)
    for w in sliding_windows(n, n_ctx, stride):
        assert w.end - w.start <= n_ctx and w.last == w.end


# ------------------------------------------------------------------------------------ edge cases

def test_empty_and_one_token(model):
    for ids in ([], [5]):
        s = model.score(ids)
        assert s.count == 0 and s.sum_logprob == 0.0
        assert math.isnan(s.perplexity) and math.isnan(s.mean_nll)
        assert len(s.logprobs) == len(ids) and np.isnan(s.logprobs).all()
        assert s.to_dict()["perplexity"] is None


def test_bad_arguments_are_clear(model, ids):
    with pytest.raises(ValueError, match="stride 65 is longer than the window n_ctx 64"):
        model.score(ids, stride=65)
    with pytest.raises(ValueError, match="n_ctx must be an integer between 2"):
        model.score(ids, n_ctx=1)
    with pytest.raises(ValueError, match="n_ctx must be an integer between 2"):
        model.score(ids, n_ctx=65)
    with pytest.raises(ValueError, match="stride must be a positive integer"):
        model.score(ids, stride=0)
    with pytest.raises(ValueError, match="top_n"):
        model.score(ids, top_n=-1)
    with pytest.raises(ValueError, match="outside the vocabulary|out of range"):
        model.score([1, CFG.n_vocab])
    with pytest.raises(TypeError):
        model.score(b"bytes are not text")
    with pytest.raises(TypeError):
        model.score_batch("one string is not a list")


# ------------------------------------------------------------------------------------ batching

def test_batch_equals_each_alone(model, tensors, ids):
    texts = [ids[:200], ids[10:20], ids[:2], [], ids[50:180], ids[:64]]
    batch = model.score_batch(texts, stride=24, top_n=2)
    one_slot = Model.from_tensors(CFG, tensors, threads=2)
    for t, b in zip(texts, batch):
        a = one_slot.score(t, stride=24, top_n=2)
        assert a.count == b.count
        assert np.array_equal(a.logprobs, b.logprobs, equal_nan=True)
        assert np.array_equal(a.top_ids, b.top_ids)
        assert a.sum_logprob == b.sum_logprob


def test_windows_longer_than_a_pass(tensors, ids, model):
    # max_rows 24 < the 64-token window: one window spans several passes of the same slot
    small = Model.from_tensors(CFG, tensors, threads=2, n_slots=2, max_rows=24)
    a, b = small.score(ids, stride=40), model.score(ids, stride=40)
    assert a.count == b.count
    assert np.abs(a.logprobs[1:] - b.logprobs[1:]).max() < 1e-5


def test_forward_rows_equals_logits(model, ids):
    a, b = ids[:40], ids[40:100]
    for s in range(3):
        model.reset(s)
    la, lb = model.forward_rows([(0, a), (2, b)])                  # 100 rows: one pass
    assert la.shape == (40, CFG.n_vocab) and lb.shape == (60, CFG.n_vocab)
    assert np.array_equal(la, model.logits(a, slot=1))
    assert np.array_equal(lb, model.logits(b, slot=1))
    with pytest.raises(ValueError, match="appears twice"):
        model.forward_rows([(1, ids[:2]), (1, ids[2:4])])
    model.reset(0)
    model.prefill(ids[:40], slot=0)
    before = model.past(1)
    with pytest.raises(ContextLengthError):
        model.forward_rows([(1, ids[:5]), (0, ids[:30])])          # 40 + 30 > 64: nothing runs
    assert model.past(0) == 40 and model.past(1) == before


@pytest.mark.parametrize("ranges", [[(0, 40), (0, 60)], [(5, 40), (30, 31)], [(39, 40), (0, 0)],
                                    [(0, 1), (59, 60)], [(7, 7), (0, 60)], [(2, 3), (0, 0)]])
def test_forward_rows_of_chosen_rows(model, ids, ranges):
    # only rows [lo, hi) get the lm_head: the same bits as those rows of every row's logits, one row alone too
    a, b = ids[:40], ids[40:100]
    full = [model.logits(a, slot=1), model.logits(b, slot=1)]
    for s in range(3):
        model.reset(s)
    got = model.forward_rows([(0, a), (2, b)], ranges)
    assert model.past(0) == 40 and model.past(2) == 60              # every row still went into the caches
    for g, f, (lo, hi) in zip(got, full, ranges):
        assert g.shape == (hi - lo, CFG.n_vocab)
        assert np.array_equal(g, f[lo:hi])


def test_forward_rows_into_a_buffer(model, ids):
    a, b = ids[:40], ids[40:100]
    full = [model.logits(a, slot=1), model.logits(b, slot=1)]
    buf = np.full((30, CFG.n_vocab), np.nan, np.float32)
    for s in range(3):
        model.reset(s)
    ga, gb = model.forward_rows([(0, a), (2, b)], [(10, 30), (5, 15)], buf)
    assert np.shares_memory(ga, buf) and np.shares_memory(gb, buf)
    assert np.array_equal(ga, full[0][10:30]) and np.array_equal(gb, full[1][5:15])
    for bad in (np.empty((29, CFG.n_vocab), np.float32), np.empty((30, CFG.n_vocab), np.float64),
                np.empty((30, CFG.n_vocab + 1), np.float32), np.empty((CFG.n_vocab, 30), np.float32).T):
        for s in range(3):
            model.reset(s)
        with pytest.raises(ValueError, match="out must be"):
            model.forward_rows([(0, a), (2, b)], [(10, 30), (5, 15)], bad)
        assert model.past(0) == 0


def test_forward_rows_bad_ranges(model, ids):
    for s in range(3):
        model.reset(s)
    for bad in ([(0, 41)], [(3, 2)], [(-1, 2)], [(0, 1), (0, 1)], [(0.5, 2)]):
        with pytest.raises(ValueError, match="rows"):
            model.forward_rows([(0, ids[:40])], bad)
    assert model.past(0) == 0


def test_window_checks(model, ids):
    with pytest.raises(ValueError, match="bad window"):
        list(score_windows(model, [(ids, Window(0, 65, 1, 65))]))      # longer than n_ctx
    with pytest.raises(ValueError, match="bad window"):
        list(score_windows(model, [(ids, Window(3, 10, 3, 10))]))      # first must follow start


# ------------------------------------------------------------------------------------ text and streaming

def test_text_is_tokenized_with_specials(tiny_model_dir):
    import gpt2cy
    m = gpt2cy.load(tiny_model_dir, threads=1)
    text = "Hello world<|endoftext|>A new document begins."
    s = m.score(text)
    assert 50256 in s.token_ids.tolist()
    assert np.array_equal(s.token_ids, m.tokenizer.encode(text, allowed_special="all"))
    assert s.sum_logprob == m.score(s.token_ids.tolist()).sum_logprob
    plain = m.score(text, allowed_special=())
    assert 50256 not in plain.token_ids.tolist()


@pytest.mark.parametrize("piece", [1, 5, 64, 199, 500])
@pytest.mark.parametrize("stride", [20, 64])
def test_stream_scorer_equals_score(model, ids, piece, stride):
    want = model.score(ids, stride=stride)
    st = StreamScorer(model, 64, stride, batch=3)
    for a in range(0, len(ids), piece):
        st.feed(ids[a:a + piece])
    st.finish()
    assert st.count == want.count and st.n_tokens == len(ids)
    assert math.isclose(st.sum_logprob, want.sum_logprob, rel_tol=1e-12)
