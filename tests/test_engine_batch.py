"""Several sequences in one forward (KV-cache slots, rows tagged with slot and position), the weights
description and the per-dtype kernel table: bit-exact against each sequence run alone, isolated, and
refusing bad batches with clear errors."""
import numpy as np
import pytest

from gpt2cy.config import Config
from gpt2cy.engine import _dtypes
from gpt2cy.engine._forward import Engine
from gpt2cy.engine.weights import DTYPES, WeightTensor, describe, describe_all
from gpt2cy.errors import CheckpointError, ContextLengthError, InvalidTokenError
from gpt2cy.model import Model

import reference as ref

CFG = Config(n_vocab=50257, n_ctx=128, n_embd=128, n_head=2, n_layer=2)   # GPT-2's head_dim, 64
LENGTHS = {"A": 70, "B": 9, "C": 41, "D": 3}


@pytest.fixture(scope="module")
def tensors():
    return ref.random_tensors(CFG, seed=11)


@pytest.fixture(scope="module")
def seqs():
    rng = np.random.default_rng(11)
    return {k: rng.integers(0, CFG.n_vocab, size=n) for k, n in LENGTHS.items()}


@pytest.fixture(scope="module")
def alone(tensors, seqs):
    """Each sequence run alone in a one-slot model, one token at a time: logits after every position."""
    model = Model.from_tensors(CFG, tensors, threads=1)
    out = {}
    for k, ids in seqs.items():
        model.reset()
        out[k] = np.stack([model.step(int(t)) for t in ids])
    return out


# (slot, sequence, rows) per forward: prefill chunks of some sequences beside single decode rows of others,
# slots in any order within a batch, chunks whose lengths are not multiples of the attention's 4-row block
SCHEDULE = [
    [(0, "A", 21), (1, "B", 5), (2, "C", 1)],
    [(2, "C", 17), (0, "A", 1), (3, "D", 1)],
    [(1, "B", 1), (3, "D", 1), (0, "A", 1), (2, "C", 1)],
    [(3, "D", 1), (0, "A", 30), (1, "B", 3)],
    [(2, "C", 22), (0, "A", 17)],
]


def run_schedule(model, seqs, slot_of=None):
    """Run SCHEDULE through forward_batch; return {(sequence, position): logits} of every returned row."""
    done = {k: 0 for k in seqs}
    got = {}
    for batch in SCHEDULE:
        reqs = [(s, seqs[k][done[k]:done[k] + n]) for s, k, n in batch]
        for (s, k, n), logits in zip(batch, model.forward_batch(reqs)):
            done[k] += n
            got[(k, done[k] - 1)] = logits
    assert done == LENGTHS
    return got


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("max_rows", [None, 16], ids=["one-pass", "split-passes"])
def test_batched_logits_are_bit_identical_to_each_sequence_alone(tensors, seqs, alone, threads, max_rows):
    model = Model.from_tensors(CFG, tensors, threads=threads, n_slots=4, max_rows=max_rows)
    got = run_schedule(model, seqs)
    assert len(got) == sum(len(b) for b in SCHEDULE)
    for (k, pos), logits in got.items():
        assert logits.shape == (CFG.n_vocab,) and logits.dtype == np.float32
        assert np.array_equal(logits, alone[k][pos]), f"sequence {k} position {pos}"
    for slot, k in enumerate("ABCD"):
        assert model.past(slot) == LENGTHS[k]
    # the comparison can fail: a neighbouring position's logits differ
    assert not np.array_equal(got[("A", 20)], alone["A"][19])


def test_mixed_batch_against_prefill_step_and_numpy(tensors, seqs, alone):
    # the same bits as the single-sequence API (prefill, step) in slots of the same model, and the numpy
    # reference within the usual fp32 tolerance
    model = Model.from_tensors(CFG, tensors, threads=2, n_slots=3)
    a, b = seqs["A"], seqs["B"]
    assert np.array_equal(model.prefill(a[:40], slot=2), alone["A"][39])
    assert np.array_equal(model.step(int(b[0]), slot=1), alone["B"][0])
    la, lb = model.forward_batch([(2, [int(a[40])]), (1, b[1:9])])
    assert np.array_equal(la, alone["A"][40]) and np.array_equal(lb, alone["B"][8])
    want = ref.forward(tensors, CFG, a[:41])
    assert np.abs(la - want[40]).max() < 1e-4
    assert model.past(0) == 0 and model.past(1) == 9 and model.past(2) == 41 and model.n_past == 0


def test_slots_are_isolated(tensors, seqs, alone):
    model = Model.from_tensors(CFG, tensors, threads=2, n_slots=2)
    a, c = seqs["A"], seqs["C"]
    model.prefill(a[:30], slot=0)
    v0 = model.cache_version(0)
    # everything done to slot 1 leaves slot 0's cache and version alone
    model.prefill(c[:25], slot=1)
    model.truncate(10, slot=1)
    model.step(int(c[10]), slot=1)
    model.reset(slot=1)
    model.logits(c[:12], slot=1)
    assert model.cache_version(0) == v0 and model.past(0) == 30
    assert np.array_equal(model.step(int(a[30]), slot=0), alone["A"][30])
    assert np.array_equal(model.forward_batch([(0, a[31:50])])[0], alone["A"][49])
    assert model.past(1) == 12


def test_cache_version_changes_on_every_change_of_its_slot(tensors, seqs):
    model = Model.from_tensors(CFG, tensors, threads=1, n_slots=2)
    a = seqs["A"]
    seen = [model.cache_version(0)]
    for op in (lambda: model.prefill(a[:5]), lambda: model.step(int(a[5])), lambda: model.truncate(3),
               lambda: model.truncate(3), lambda: model.reset(), lambda: model.logits(a[:4]),
               lambda: model.forward_batch([(0, a[4:6]), (1, a[:2])])):
        op()
        seen.append(model.cache_version(0))
    assert len(set(seen)) == len(seen)                    # each one a new number
    v = model.cache_version(0)
    for bad in (lambda: model.step(-1), lambda: model.prefill(np.resize(a, 200)), lambda: model.truncate(99)):
        with pytest.raises(ValueError):
            bad()
    assert model.cache_version(0) == v                    # refused calls change nothing


def test_kv_cache_bytes(tensors):
    for slots, n_ctx, cap in ((1, None, 128), (3, 100, 128), (2, 5, 64)):
        model = Model.from_tensors(CFG, tensors, n_slots=slots, n_ctx=n_ctx)
        # keys and values, every layer, n_ctx padded to the cache's 64-position rows, float32
        assert model.kv_cache_bytes == 2 * slots * CFG.n_layer * CFG.n_embd * cap * 4
    assert Model.from_tensors(CFG, tensors).n_slots == 1


# ------------------------------------------------------------------------------------ bad batches

@pytest.fixture
def model2(tensors, seqs):
    m = Model.from_tensors(CFG, tensors, threads=2, n_slots=2, max_rows=64)
    m.prefill(seqs["A"][:10], slot=0)
    m.prefill(seqs["B"][:4], slot=1)
    return m


def assert_unchanged(m):
    assert (m.past(0), m.past(1)) == (10, 4)


@pytest.mark.parametrize("bad,err,match", [
    ([(0, [1]), (0, [2])], ValueError, "twice"),
    ([(2, [1])], ValueError, "slot"),
    ([(-1, [1])], ValueError, "slot"),
    ([(True, [1])], ValueError, "slot"),
    ([(1.0, [1])], ValueError, "slot"),
    ([(0, [1]), (1, [50257])], InvalidTokenError, "vocabulary"),
    ([(0, [])], InvalidTokenError, "no token ids"),
    ([(0, [1]), (1, np.ones(125, int))], ContextLengthError, "slot 1"),
    ([(0, [1], 2)], ValueError, "pairs"),
    ([7], ValueError, "pairs"),
], ids=str)
def test_bad_batches_are_clear_errors(model2, bad, err, match):
    with pytest.raises(err, match=match):
        model2.forward_batch(bad)
    assert_unchanged(model2)


def test_engine_refuses_malformed_rows(model2):
    eng = model2._engine
    V = CFG.n_vocab

    def run(ids, slots, pos, rows=(), out_rows=None):
        a = lambda v: np.asarray(v, dtype=np.intp)
        out = np.empty((len(rows) if out_rows is None else out_rows, V), np.float32)
        eng.forward_batch(a(ids), a(slots), a(pos), a(rows), out)

    cases = [
        (([1, 2, 3], [0, 1, 0], [10, 4, 11]), "contiguous run"),             # slot 0's rows split
        (([1, 2], [0, 0], [11, 10]), "position 10"),                         # out of order
        (([1, 2], [0, 0], [10, 10]), "position 11"),                         # overlapping
        (([1], [0], [9]), "position 10"),                                    # rewrites a cached position
        (([1], [0], [12]), "position 10"),                                   # leaves a gap
        (([1], [2], [0]), "slot 2"),
        (([1], [-1], [0]), "slot -1"),
        (([-5], [0], [10]), "token id"),
        (([1, 2], [0], [10, 11]), "same length"),
        (([], [], []), "1 to max_rows"),
        ((list(range(65)), [0] * 65, list(range(10, 75))), "max_rows"),
        (([1], [0], [10], [1]), "logit_rows"),
        (([1, 2], [0, 0], [10, 11], [1, 0]), "logit_rows"),
        (([1, 2], [0, 0], [10, 11], [1, 1]), "logit_rows"),
        (([1], [0], [10], [0], 2), "out has shape"),
    ]
    for args, match in cases:
        with pytest.raises(ValueError, match=match):
            run(*args)
        assert_unchanged(model2)
    full = Model.from_tensors(CFG, model2._weights.tensors, n_ctx=12, n_slots=1)
    full.prefill([1] * 11)
    with pytest.raises(ValueError, match="n_ctx"):                           # position 12 of 12
        full._engine.forward_batch(*(np.array(v, np.intp) for v in ([1, 2], [0, 0], [11, 12], [1])),
                                   np.empty((1, V), np.float32))
    assert full.n_past == 11
    run([5, 6], [1, 1], [4, 5], [1])                                         # and a good one runs
    assert (model2.past(0), model2.past(1)) == (10, 6)


# ------------------------------------------------------------------------------------ weights and dtypes

def test_dtype_tables_agree():
    # the Python geometry table and the compiled kernel table list the same dtypes with the same codes
    assert {n: d.code for n, d in DTYPES.items()} == _dtypes.supported()
    assert "f32" in DTYPES and DTYPES["f32"].row_bytes(768) == 3072


def test_describe(tensors):
    w = describe("h0.mlp.c_fc.w", tensors["h0.mlp.c_fc.w"])
    assert (w.dtype, w.shape, w.layout, w.scales) == ("f32", (128, 512), "in_out", None)
    assert describe("wte", tensors["wte"], layout="out_in").layout == "out_in"
    assert describe("h0.ln_1.g", tensors["h0.ln_1.g"]).layout == "vector"
    with pytest.raises(ValueError, match="kernels for: f32"):
        describe("wte", tensors["wte"], dtype="q5_k")
    with pytest.raises(ValueError, match="float32"):
        describe("wte", tensors["wte"].astype(np.float64))
    with pytest.raises(ValueError, match="C-contiguous"):
        describe("wte", tensors["wte"].T)
    descs = describe_all(CFG, tensors)
    assert descs["wte"].layout == "out_in" and descs["h1.attn.c_proj.w"].layout == "in_out"
    assert descs["wpe"].layout == "vector"


def test_engine_refuses_a_dtype_without_kernels(tensors):
    descs = describe_all(CFG, tensors)
    w = tensors["h0.attn.c_attn.w"]
    descs["h0.attn.c_attn.w"] = WeightTensor("h0.attn.c_attn.w", "q8_0", w.shape, w.view(np.uint8))
    with pytest.raises(ValueError, match="'q8_0'.*kernels for: f32"):
        Engine(CFG, descs, 1)
    descs = describe_all(CFG, tensors)
    descs["h1.ln_2.b"] = WeightTensor("h1.ln_2.b", "f16", (CFG.n_embd,),
                                      tensors["h1.ln_2.b"].astype(np.float16), layout="vector")
    with pytest.raises(ValueError, match="must be f32"):
        Engine(CFG, descs, 1)


def test_types_without_kernels_are_widened_once_with_a_notice(tensors, seqs):
    from gpt2cy.notices import captured
    stored = dict(tensors)
    dtypes = {}
    bf = lambda a: (a.view(np.uint32) >> 16).astype(np.uint16)          # truncated to bf16 bit patterns
    for name in ("wte", "h0.attn.c_attn.w", "h1.mlp.c_proj.w"):
        stored[name], dtypes[name] = bf(tensors[name]), "bf16"
    for name in ("h0.mlp.c_fc.w", "h1.ln_1.g"):
        stored[name], dtypes[name] = tensors[name].astype(np.float16), "f16"
    widened = dict(tensors)
    for name, d in dtypes.items():
        widened[name] = ((stored[name].astype(np.uint32) << 16).view(np.float32) if d == "bf16"
                         else stored[name].astype(np.float32))
    with captured() as notes:
        model = Model.from_tensors(CFG, stored, threads=2, dtypes=dtypes)
    assert len(notes) == 1 and "3 bf16" in notes[0] and "2 f16" in notes[0] and "f32" in notes[0]
    ids = seqs["C"][:20]
    assert np.array_equal(model.logits(ids), Model.from_tensors(CFG, widened, threads=2).logits(ids))
    with captured() as notes:
        Model.from_tensors(CFG, tensors)
    assert notes == []                                                   # f32: nothing converted
    with pytest.raises(CheckpointError, match="wte"):
        Model.from_tensors(CFG, tensors, dtypes={"wte": "f8"})


def test_misaligned_tensors_are_copied_never_read_misaligned(tensors, seqs):
    # a tensor at an odd byte offset (possible in a TF bundle) is refused by the engine's description and
    # copied once by Model, with the same results
    wte = tensors["wte"]
    buf = np.zeros(wte.nbytes + 4, np.uint8)
    mis = buf[1:1 + wte.nbytes].view(np.float32).reshape(wte.shape)
    mis[...] = wte
    assert not mis.flags.aligned
    with pytest.raises(ValueError, match="aligned"):
        describe("wte", mis, layout="out_in")
    moved = dict(tensors, wte=mis)
    ids = seqs["B"]
    assert np.array_equal(Model.from_tensors(CFG, moved).logits(ids), Model.from_tensors(CFG, tensors).logits(ids))


def test_load_takes_n_slots(tmp_path, vocab_dir):
    from gpt2cy import load
    from gpt2cy.testing import write_random_model
    path = write_random_model(str(tmp_path / "m"), Config(50257, 32, 16, 2, 1), seed=1, vocab_dir=vocab_dir)
    model = load(path, threads=1, n_slots=3)
    assert model.n_slots == 3 and "n_slots=3" in repr(model)
    a, b = model.forward_batch([(2, [1, 2, 3]), (0, [4])])
    assert np.array_equal(a, model.prefill([1, 2, 3], slot=1)) and model.past(2) == 3
    # (Model.logits is the dense path: every row at once, tiled; within fp32 rounding of the per-row one)
    np.testing.assert_allclose(model.logits([1, 2, 3], slot=1)[-1], a, rtol=0, atol=1e-5)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="n_slots"):
            load("124M", n_slots=bad, download=False)          # refused before any lookup
