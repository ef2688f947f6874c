"""bf16, q8_0 and q4_0 weights: the quantizers' bytes (q8_0 and q4_0 against gguf-py's reference quantizer), each dtype's kernels against float64 numpy over the dequantized weights, the
determinism contract per dtype (threads, decode = prefill, batched = alone), and whole models against the
numpy reference given the same dequantized weights.

Activations: fp32 for f32. bf16 rounds each block matmul's input rows to bf16 and multiplies in pairs
(engine/_bf16dot.h: VDPBF16PS or its exact emulation; the tied lm_head keeps fp32 inputs); q8_0 and q4_0
quantize each matmul's input rows to 8-bit blocks of 32 (engine/_q8act.h, as llama.cpp does) and multiply in
integers. reference.bf16_activations and reference.quantize_activations are those rules in numpy, and must give
the engine's bits.

Tolerances (max abs):
  kernels vs float64 over the dequantized weights (and, for q8_0/q4_0, the dequantized 8-bit activations
  the kernel itself made): 1e-5 (as tests/test_matmul.py)
  engine vs reference (dequantized weights; q8_0/q4_0: reference.q8_activations at every matmul input):
    f32: 1e-4 logits.  bf16, q8_0, q4_0: the same 1e-4 on most positions (measured ~1e-6), but the reference
    runs in float64, so an activation within float32 rounding of a rounding boundary of the rounding can
    land on the other side there: one such value moves that position's and later positions' logits by about
    dx * |w| (measured: up to 0.055 in 1 run of 6). So: every logit within 0.1, and the median position
    within 1e-4 (a wrong kernel misses that everywhere).
  bf16 / q8_0 / q4_0 vs f32 logits (same checkpoint, random weights scaled like GPT-2,
  logits up to ~6; measured on CFG, 48 positions: max abs 0.036 / 0.13 / 1.67, top-1 agreement 98% / 96% /
  50%, mean KL 1.8e-5 / 1.7e-4 / 4.2e-2): bounds max abs < 0.1 / 0.3 / 3, top-1 >= 90% / 90% / 35%.  Random weights
  have many near-ties among 50257 logits, so top-1 is a weak measure here; the KL figures of a real
  checkpoint belong to the benchmarks.
"""
import mmap

import numpy as np
import pytest

from gpt2cy.config import Config
from gpt2cy.engine import _dtypes, _qblocks, _quantize
from gpt2cy.engine.weights import DTYPES, convert, to_float32
from gpt2cy.errors import CheckpointError
from gpt2cy.model import Model

import reference as ref
from test_engine_batch import CFG, LENGTHS, run_schedule

LOWP = ["bf16", "q8_0", "q4_0"]
QACT = ("q8_0", "q4_0")          # quantized activations
ROUNDED = ("bf16",) + QACT       # activations rounded before the block matmuls


def act_of(dtype):
    """What a dtype's block matmuls multiply the weights by: x itself, x rounded to bf16, or its 8-bit blocks
    dequantized."""
    if dtype == "bf16":
        return ref.bf16_activations
    return ref.q8_activations if dtype in QACT else (lambda v: np.asarray(v, np.float64))


def head_act_of(dtype):
    """What a dtype's tied lm_head multiplies wte by: bf16 keeps fp32 inputs there."""
    return act_of(dtype) if dtype in QACT else (lambda v: np.asarray(v, np.float64))


def close_to_reference(got, want, dtype):
    diff = np.abs(got - want)
    if dtype not in ROUNDED:
        return diff.max() < 1e-4
    return diff.max() < 0.1 and np.median(diff.max(axis=1)) < 1e-4
BLOCKS = {"q8_0": ("Q8_0", _quantize.to_q8_0, _quantize.to_q8_0_t, _quantize.q8_0_to_f32),
          "q4_0": ("Q4_0", _quantize.to_q4_0, _quantize.to_q4_0_t, _quantize.q4_0_to_f32)}
TOL = dict(rtol=1e-5, atol=1e-5)


def f32_bits_to_bf16_rne(a):
    """numpy's own round-to-nearest-even of float32 bits to bf16 (finite inputs)."""
    u = a.view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


# ------------------------------------------------------------------------------------ quantizers

def awkward_blocks(rng, rows):
    """Rows of 32-value blocks that reach every branch: zeros, subnormal scales, halfway roundings, huge."""
    a = (rng.standard_normal((rows, 96)) * 0.05).astype(np.float32)
    a[0, :32] = 0.0
    a[1, :32] = 1e-30                                    # d underflows fp16 to a subnormal or zero
    a[2, :32] = np.float32(3.1e-5) * np.arange(32)        # d a subnormal fp16
    a[3, :32] = 7e4                                      # d * 127 overflows fp16
    a[4, :32] = np.arange(32) - 15.5                     # x * id lands on halves
    a[5, :32] = -(np.arange(32) + 0.5) * np.float32(127 / 31.5)
    a[6, 32:64] = np.float32(65504 * 127)                # d = 65504 (fp16 max) exactly
    a[7, :32] = -0.0
    return a


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")   # gguf-py's fp16 cast of huge d
@pytest.mark.parametrize("dtype", list(BLOCKS))
@pytest.mark.parametrize("rows", [1, 8, 37])
def test_block_bytes_equal_gguf_reference(rng, dtype, rows):
    gguf_quants = pytest.importorskip("gguf.quants")
    from gguf.constants import GGMLQuantizationType as Q
    qname, rows_fn, t_fn, back_fn = BLOCKS[dtype]
    a = awkward_blocks(rng, max(rows, 8))[:rows]
    want = gguf_quants.quantize(a, getattr(Q, qname))
    for n_threads in (1, 2):
        assert np.array_equal(rows_fn(a, n_threads), want)
        assert np.array_equal(t_fn(np.ascontiguousarray(a.T), n_threads), want)
    # and the dequantized values are gguf's
    assert np.array_equal(back_fn(want, a.shape[1]), gguf_quants.dequantize(want, getattr(Q, qname)))


@pytest.mark.parametrize("dtype", ["q8_0", "q4_0"])
def test_block_types_store_a_conv1d_weight_transposed(rng, dtype):
    gguf_quants = pytest.importorskip("gguf.quants")
    from gguf.constants import GGMLQuantizationType as Q
    w = (rng.standard_normal((160, 70)) * 0.02).astype(np.float32)       # [in, out], out not a multiple of 32
    wt = convert("h0.mlp.c_fc.w", w, dtype, matmul=True)
    assert wt.shape == (70, 160) and wt.layout == "out_in" and wt.transposed
    assert np.array_equal(wt.data, gguf_quants.quantize(np.ascontiguousarray(w.T), getattr(Q, BLOCKS[dtype][0])))
    assert to_float32(wt).shape == (160, 70)
    with pytest.raises(ValueError, match="multiple of 32"):
        convert("h0.mlp.c_proj.w", w[:40], dtype, matmul=True)


def test_bf16_rounds_to_nearest_even_and_keeps_nan(rng):
    a = rng.standard_normal((33, 65)).astype(np.float32) * np.float32(1e3)
    ties = np.array([[0x3F808000, 0x3F818000, 0x3F80_8001, 0x7F7F_FFFF, 0x0000_8000, 0x0001_8000,
                      0x7F7F_8000, 0x8000_0001]], np.uint32).view(np.float32)
    for x in (a, ties):
        assert np.array_equal(_quantize.to_bf16(x, 2), f32_bits_to_bf16_rne(x))
    special = np.array([[np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0]], np.float32)
    special = np.concatenate([special, np.array([[0x7F800001, 0xFFBFFFFF]], np.uint32).view(np.float32)], 1)
    back = _quantize.bf16_to_f32(_quantize.to_bf16(special))[0]
    assert np.isnan(back[[0, 1, 6, 7]]).all()                     # signalling NaNs too, never inf
    assert np.signbit(back[[1, 7]]).all()
    assert back[2] == np.inf and back[3] == -np.inf and np.signbit(back[5]) and back[4] == 0


# ------------------------------------------------------------------------------------ kernels

SHAPES = [(1, 64, 100), (3, 96, 130), (16, 128, 33), (17, 64, 65), (40, 256, 200), (100, 32, 1)]


def problem(rng, m, k, n):
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    return x, w, b


def gelu64(v):
    return 0.5 * v * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (v + 0.044715 * v ** 3)))


@pytest.mark.parametrize("dtype", LOWP)
@pytest.mark.parametrize("m,k,n", SHAPES, ids=str)
def test_linear_matches_float64_over_dequantized_weights(rng, dtype, m, k, n):
    x, w, b = problem(rng, m, k, n)
    wt = convert("h0.attn.c_attn.w", w, dtype, matmul=True)
    wd = to_float32(wt).astype(np.float64)
    want = act_of(dtype)(x) @ wd + b
    np.testing.assert_allclose(_dtypes.linear_py(wt, x, b, n_threads=2), want, **TOL)
    np.testing.assert_allclose(_dtypes.linear_py(wt, x, b, act=1, n_threads=2), gelu64(want), **TOL)
    r = rng.standard_normal((m, n)).astype(np.float32)
    out = r.copy()
    _dtypes.linear_py(wt, x, b, out=out, accumulate=True, n_threads=2)
    np.testing.assert_allclose(out, r + want, **TOL)


@pytest.mark.parametrize("dtype", LOWP)
@pytest.mark.parametrize("m,k,n", [(1, 768, 300), (9, 64, 130), (40, 256, 200)], ids=str)
@pytest.mark.parametrize("act", [0, 1], ids=["none", "gelu"])
def test_linear_bits_do_not_depend_on_threads_or_rows(rng, dtype, m, k, n, act):
    x, w, b = problem(rng, m, k, n)
    wt = convert("h0.mlp.c_fc.w", w, dtype, matmul=True)
    one = _dtypes.linear_py(wt, x, b, act=act, n_threads=1)
    assert np.array_equal(_dtypes.linear_py(wt, x, b, act=act, n_threads=2), one)
    assert np.array_equal(_dtypes.linear_py(wt, x, b, act=act, n_threads=3), one)
    for i in {0, m // 2, m - 1}:                                 # a decode row = the same row of a prefill
        assert np.array_equal(_dtypes.linear_py(wt, x[i:i + 1], b, act=act, n_threads=2)[0], one[i])


@pytest.mark.parametrize("dtype", ["f32"] + LOWP)
@pytest.mark.parametrize("v,c", [(300, 64), (1000, 96), (37, 32), (3001, 96)], ids=str)
def test_tied_head_and_embedding_rows(rng, dtype, v, c):
    e = (rng.standard_normal((v, c)) * 0.1).astype(np.float32)
    wt = convert("wte", e, dtype, matmul=False)
    assert wt.layout == "out_in" and not wt.transposed and wt.shape == (v, c)
    ed = to_float32(wt)
    x = rng.standard_normal((7, c)).astype(np.float32)
    want = head_act_of(dtype)(x) @ ed.T.astype(np.float64)
    rows = _dtypes.logits_py(wt, x, dense=False, n_threads=2)
    np.testing.assert_allclose(rows, want, **TOL)
    np.testing.assert_allclose(_dtypes.logits_py(wt, x, dense=True, n_threads=2), want, **TOL)
    assert np.array_equal(_dtypes.logits_py(wt, x, dense=False, n_threads=1), rows)
    # each row of a batch of last rows has the bits it has alone (3001 x 96: many chunks of wte per thread)
    for m in range(len(x)):
        assert np.array_equal(_dtypes.logits_py(wt, x[m:m + 1], dense=False, n_threads=2)[0], rows[m])
    for m in (2, 3, 5, 6):   # batches of 2 and 3 rows (kernels of their own), and them after a pass of four
        assert np.array_equal(_dtypes.logits_py(wt, x[:m], dense=False, n_threads=2), rows[:m])
    x17 = rng.standard_normal((17, c)).astype(np.float32)                # past the decode paths' 16 rows
    rows17 = _dtypes.logits_py(wt, x17, dense=False, n_threads=2)
    assert np.array_equal(_dtypes.logits_py(wt, x17[16:], dense=False, n_threads=1)[0], rows17[16])
    ids = [3, 0, v - 1, 3]
    assert np.array_equal(_dtypes.embed_py(wt, ids), ed[ids])


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_tied_head_rows_with_a_k_tail(rng, dtype):
    # n_embd not a multiple of 32 (the SIMD row dots' step): every row of a batch still has its lone bits
    e = (rng.standard_normal((201, 40)) * 0.1).astype(np.float32)
    wt = convert("wte", e, dtype, matmul=False)
    x = rng.standard_normal((6, 40)).astype(np.float32)
    rows = _dtypes.logits_py(wt, x, dense=False, n_threads=2)
    np.testing.assert_allclose(rows, x @ to_float32(wt).T.astype(np.float64), **TOL)
    for m in range(len(x)):
        assert np.array_equal(_dtypes.logits_py(wt, x[m:m + 1], dense=False, n_threads=2)[0], rows[m])


def activation_rows(rng):
    """Rows of 32-value blocks that reach every branch of the activation quantizer."""
    a = (rng.standard_normal((9, 64)) * 2).astype(np.float32)
    a[0, :32] = 0.0
    a[1, :32] = np.float32(1e-40)                                   # subnormal amax
    a[2, :32] = (np.arange(32) - 15.5).astype(np.float32)            # x / d on halves
    a[2, 31] = 127.0                                                 # ... with d = 1 exactly
    a[3, :32] = 3e38                                                 # near float32's max
    a[4, 5] = np.nan
    a[5, 40] = np.inf
    a[6, :32] = -0.0
    return a


def test_activation_quantizer_is_the_numpy_rule(rng):
    from gpt2cy.engine import _qblocks
    a = activation_rows(rng)
    q, d = _qblocks.quantize_activations(a)
    with np.errstate(invalid="ignore", over="ignore"):
        q_ref, d_ref = ref.quantize_activations(a)
    finite = np.isfinite(a.reshape(len(a), -1, 32)).all(axis=2)
    assert np.array_equal(d[finite], d_ref[finite])
    assert np.array_equal(q.reshape(len(a), -1, 32)[finite], q_ref.reshape(len(a), -1, 32)[finite])
    assert np.isnan(d[~finite]).all() and (~finite).sum() == 2     # NaN or inf: the block's scale is NaN
    assert np.abs(q).max() <= 127 and d[0, 0] == 0 and not q[0, :32].any()
    assert list(q[2, :4]) == [-16, -15, -14, -13]                   # halves round away from zero
    assert _qblocks.kernel_isa() in ("vnni", "avx2", "scalar")


def block_products_by_the_rule(wt, x):
    """_q8act.h's arithmetic in numpy, bit for bit: per block an exact integer dot of the weights' int8 (q4_0:
    nibble - 8) with the activations' 8-bit blocks, s = d_w * dx in float32, then one multiply-add chain per
    output over the blocks (one rounding where the build fuses it: float64's product of a 20-bit integer and
    a float32 is exact, and the sum is rounded once in long double, then to float32)."""
    from gpt2cy.engine import _qblocks
    qx, dx = _qblocks.quantize_activations(x)
    n, kb = wt.data.shape
    nb = x.shape[1] // 32
    blk = wt.data.reshape(n, nb, kb // nb)
    dw = blk[:, :, :2].copy().view(np.float16)[:, :, 0].astype(np.float32)
    if wt.dtype == "q8_0":
        q = blk[:, :, 2:].view(np.int8).astype(np.int64)
    else:
        nib = blk[:, :, 2:].astype(np.int64)
        q = np.concatenate([nib & 15, nib >> 4], axis=2) - 8
    ints = np.einsum("mbk,nbk->mnb", qx.reshape(len(x), nb, 32).astype(np.int64), q)
    acc = np.zeros((len(x), n), np.float32)
    fused = _qblocks.fused_madd()
    for b in range(nb):
        s = (dx[:, None, b] * dw[None, :, b]).astype(np.float32)
        f = ints[:, :, b].astype(np.float32)
        if fused:
            acc = (f.astype(np.longdouble) * s.astype(np.longdouble) + acc.astype(np.longdouble)).astype(np.float32)
        else:
            acc = (f * s).astype(np.float32) + acc
    return acc


@pytest.mark.skipif(np.finfo(np.longdouble).nmant < 63, reason="needs x87 long double for the exact fused sum")
@pytest.mark.parametrize("dtype", QACT)
@pytest.mark.parametrize("m,k,n", [(1, 64, 40), (1, 3072, 21), (1, 768, 48), (3, 96, 17), (9, 3072, 24), (16, 512, 48),
                                   (20, 768, 70), (40, 256, 33)])
def test_block_products_are_the_stated_arithmetic_bit_for_bit(rng, dtype, m, k, n):
    # every ISA variant runs this (test_isa), so they all give these bits: decode (one row: at 512 bits the
    # direct kernel for whole groups of 16 weight rows, the repack for the rest) and prefill paths,
    # the tiles' every row count, partial weight groups, and K past one packed slice (3072 = 3 x 32 blocks);
    # where the CPU has AMX, with its tiles (prefills: 17 rows or more) and without them (test_isa, GPT2CY_AMX=0)
    w = (rng.standard_normal((k, n)) * 0.05).astype(np.float32)
    w[:32, 0] = -0.05 * np.sign(rng.standard_normal(32))          # a block whose q8_0 values reach +-127
    wt = convert("h0.mlp.c_fc.w", w, dtype, matmul=True)
    x = rng.standard_normal((m, k)).astype(np.float32) * 3
    got = _dtypes.linear_py(wt, x, n_threads=2)
    want = block_products_by_the_rule(wt, x)
    assert np.array_equal(got, want), np.abs(got - want).max()


def bf16_products_by_the_rule(wt, x, bias=None):
    """_bf16dot.h's arithmetic in numpy, bit for bit: x rounded to bf16 (reference.bf16_activations); per K block
    of 192 one float32 chain per output, a step per pair: acc = (acc + x[2p+1] w[2p+1]) + x[2p] w[2p], each
    product exact in float32; the blocks added in order, the bias with the first."""
    xr = ref.bf16_activations(x).astype(np.float32)
    w = to_float32(wt)
    K = x.shape[1]
    out = None
    for pc in range(0, K, 192):
        acc = np.zeros((len(x), w.shape[1]), np.float32)
        for k in range(pc, min(pc + 192, K), 2):
            if k + 1 < min(pc + 192, K):
                acc = acc + xr[:, k + 1, None] * w[None, k + 1]
            acc = acc + xr[:, k, None] * w[None, k]
        if out is None:
            out = acc if bias is None else acc + bias
        else:
            out = out + acc
    return out


@pytest.fixture(params=["vdpbf16ps", "emulated"])
def bf16_dot(request):
    """The bf16 products on the instruction (where the CPU has it) or on its emulation."""
    from gpt2cy.engine import _matmul
    was = _matmul.bf16_dot() == "vdpbf16ps"
    if _matmul.set_bf16_dot(request.param == "vdpbf16ps") != (request.param == "vdpbf16ps"):
        _matmul.set_bf16_dot(was)
        pytest.skip("this CPU (or build) has no AVX512-BF16")
    yield request.param
    _matmul.set_bf16_dot(was)


@pytest.mark.parametrize("m,k,n", [(1, 768, 64), (1, 517, 203), (2, 33, 40), (3, 96, 17), (16, 384, 96),
                                   (17, 400, 70), (40, 769, 100), (64, 200, 2100), (65, 400, 70),
                                   (100, 769, 100), (9, 3072, 40), (2, 8200, 33)], ids=str)
def test_bf16_products_are_the_stated_arithmetic_bit_for_bit(rng, bf16_dot, m, k, n):
    # streamed rows (decode, a batch, chunks of up to 64 rows) and prefill tiles (65 rows or more), odd K (a
    # lone last input), column tails (and columns in chunks at 64 rows), K past
    # one block, K past the decode path's thread-local buffer (8192); both runs (instruction and emulation)
    # and every ISA variant (test_isa) give these bits
    w = (rng.standard_normal((k, n)) * 0.05).astype(np.float32)
    wt = convert("h0.mlp.c_fc.w", w, "bf16", matmul=True)
    x = rng.standard_normal((m, k)).astype(np.float32) * 3
    b = rng.standard_normal(n).astype(np.float32)
    want = bf16_products_by_the_rule(wt, x, b)
    for threads in (1, 2):
        got = _dtypes.linear_py(wt, x, b, n_threads=threads)
        assert np.array_equal(got, want), np.abs(got - want).max()


def test_bf16_model_bits_do_not_depend_on_the_instruction(tensors, seqs):
    # a whole bf16 model, prefill (tiles) and decode (matrix-vector), on VDPBF16PS and on its emulation
    from gpt2cy.engine import _matmul
    if not _matmul.set_bf16_dot(True):
        pytest.skip("this CPU (or build) has no AVX512-BF16")
    model = Model.from_tensors(CFG, tensors, threads=2, dtype="bf16")
    ids = seqs["A"][:40]
    try:
        hw = model.logits(ids), model.prefill(ids[:20]), model.step(int(ids[20]))
        assert _matmul.set_bf16_dot(False) is False
        model.reset()
        emu = model.logits(ids), model.prefill(ids[:20]), model.step(int(ids[20]))
    finally:
        _matmul.set_bf16_dot(True)
    assert all(np.array_equal(a, b) for a, b in zip(hw, emu))


def test_bf16_activation_rounding_is_the_numpy_rule(rng):
    from gpt2cy.engine import _matmul
    a = activation_rows(rng)[:, :63]                              # odd K: one zero after each row
    a[7, :8] = np.float32(1.0) + np.float32(2 ** -8) * np.array([1, 3, 5, 7, -1, -3, 0.5, 1.5], np.float32)  # ties
    a[8, :4] = [1.1e-38, -1.1e-38, 1.1754942e-38, 3.0e-45]     # results below FLT_MIN: signed zeros
    got = _matmul.bf16_round_rows(a)
    assert got.shape == (9, 64) and not got[:, 63].any()
    want = (ref.bf16_activations(a).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    finite = np.isfinite(a)
    assert np.array_equal(got[:, :63][finite], want[finite])
    assert np.isnan(_quantize.bf16_to_f32(got[:, :63][np.isnan(a)][None])).all()
    assert list(got[8, :4]) == [0, 0x8000, 0x0080, 0] and got[5, 40] == 0x7F80


@pytest.mark.parametrize("dtype", QACT)
def test_prefills_run_on_amx_tiles_where_they_are_on(rng, dtype):
    # the tiles give the VNNI tiles' bits by design, so the bit tests cannot tell whether they ran: count them
    w = (rng.standard_normal((256, 48)) * 0.05).astype(np.float32)
    wt = convert("h0.mlp.c_fc.w", w, dtype, matmul=True)
    x = rng.standard_normal((40, 256)).astype(np.float32)
    for rows, tiles in ((40, _qblocks.amx()), (16, False)):       # a decode step's 16 rows: VNNI
        before = _qblocks.amx_calls()
        _dtypes.linear_py(wt, x[:rows], n_threads=2)
        assert (_qblocks.amx_calls() > before) == tiles
    if _qblocks.amx_available():                                   # switched at run time: the same bits
        was = _qblocks.amx()
        try:
            assert _qblocks.set_amx(True) is True
            on = _dtypes.linear_py(wt, x, n_threads=2)
            assert _qblocks.set_amx(False) is False and not _qblocks.amx()
            before = _qblocks.amx_calls()
            off = _dtypes.linear_py(wt, x, n_threads=2)
            assert _qblocks.amx_calls() == before
        finally:
            _qblocks.set_amx(was)
        assert np.array_equal(on, off)


@pytest.mark.parametrize("dtype", ROUNDED)
@pytest.mark.parametrize("m", [3, 20], ids=["decode", "prefill"])
def test_non_finite_activations_give_nan_not_a_number(rng, dtype, m):
    # q8_0 / q4_0: the block's scale is NaN, so every output is NaN; bf16 keeps NaN and inf through the
    # rounding, so every output is NaN or infinite: never a finite number the sampler would trust
    w = (rng.standard_normal((64, 40)) * 0.05).astype(np.float32)
    wt = convert("h0.mlp.c_fc.w", w, dtype, matmul=True)
    x = rng.standard_normal((m, 64)).astype(np.float32)
    x[1, 3] = np.nan
    x[2, 60] = np.inf
    out = _dtypes.linear_py(wt, x, n_threads=2)
    bad = np.isnan if dtype in QACT else (lambda v: ~np.isfinite(v))
    assert np.isfinite(out[0]).all() and bad(out[1]).all() and bad(out[2]).all()


def test_dtype_tables_agree_with_layouts():
    assert {n: d.code for n, d in DTYPES.items()} == _dtypes.supported()
    assert {n: d.matmul_layout for n, d in DTYPES.items()} == _dtypes.matmul_layouts()
    assert DTYPES["bf16"].row_bytes(768) == 1536 and DTYPES["q8_0"].row_bytes(768) == 24 * 34
    assert DTYPES["q4_0"].row_bytes(768) == 24 * 18


# ------------------------------------------------------------------------------------ models

@pytest.fixture(scope="module")
def tensors():
    return ref.random_tensors(CFG, seed=11)


@pytest.fixture(scope="module")
def seqs():
    rng = np.random.default_rng(11)
    return {k: rng.integers(0, CFG.n_vocab, size=n) for k, n in LENGTHS.items()}


@pytest.fixture(scope="module", params=LOWP)
def lowp(request, tensors):
    return request.param, Model.from_tensors(CFG, tensors, threads=2, dtype=request.param)


def test_engine_matches_reference_over_dequantized_weights(lowp, tensors, seqs):
    dtype, model = lowp
    assert model.dtype == dtype and f"dtype={dtype}" in repr(model)
    deq = model.dequantized()
    for name in tensors:
        assert deq[name].shape == tensors[name].shape and deq[name].dtype == np.float32
    ids = seqs["A"][:48]
    want = ref.forward(deq, CFG, ids, act=act_of(dtype), head_act=head_act_of(dtype))
    assert close_to_reference(model.logits(ids), want, dtype)
    model.reset()
    stepped = np.stack([model.step(int(t)) for t in ids])
    assert close_to_reference(stepped, want, dtype)
    # against the f32 model on the same checkpoint
    f32 = Model.from_tensors(CFG, tensors, threads=2).logits(ids)
    bound, agree = {"bf16": (0.1, 0.9), "q8_0": (0.3, 0.9), "q4_0": (3.0, 0.35)}[dtype]
    assert 0 < np.abs(want - f32).max() < bound
    assert np.mean(want.argmax(1) == f32.argmax(1)) >= agree


@pytest.mark.parametrize("threads", [1, 2])
def test_batched_rows_equal_each_sequence_alone(lowp, tensors, seqs, threads):
    dtype, _ = lowp
    alone_model = Model.from_tensors(CFG, tensors, threads=1, dtype=dtype)
    alone = {}
    for k, ids in seqs.items():
        alone_model.reset()
        alone[k] = np.stack([alone_model.step(int(t)) for t in ids])
    model = Model.from_tensors(CFG, tensors, threads=threads, n_slots=4, max_rows=16, dtype=dtype)
    for (k, pos), logits in run_schedule(model, seqs).items():
        assert np.array_equal(logits, alone[k][pos]), f"{dtype}: sequence {k} position {pos}"
    for k in (1, 9, 41):                                          # a prefill's last row = the decoded one
        alone_model.reset()
        assert np.array_equal(alone_model.prefill(seqs["C"][:k]), alone["C"][k - 1])


def test_bf16_checkpoint_tensors_are_used_where_they_lie(tensors, seqs):
    bf = {n: (_quantize.to_bf16(a) if a.ndim == 2 and n != "wpe" else a) for n, a in tensors.items()}
    dtypes = {n: "bf16" for n, a in tensors.items() if a.ndim == 2 and n != "wpe"}
    model = Model.from_tensors(CFG, bf, threads=2, dtypes=dtypes, dtype="bf16")
    assert model._weights.tensors["h0.attn.c_attn.w"] is bf["h0.attn.c_attn.w"]
    converted = Model.from_tensors(CFG, tensors, threads=2, dtype="bf16")
    ids = seqs["B"]
    assert np.array_equal(model.logits(ids), converted.logits(ids))


def test_load_takes_dtype_and_keeps_no_float32_pages(tmp_path, vocab_dir):
    from gpt2cy import load
    from gpt2cy.testing import write_random_model
    cfg = Config(n_vocab=50257, n_ctx=64, n_embd=64, n_head=2, n_layer=2)
    path = write_random_model(str(tmp_path / "m"), cfg, seed=3, vocab_dir=vocab_dir)
    ids = np.random.default_rng(3).integers(0, cfg.n_vocab, size=20)
    f32 = load(path, threads=2).logits(ids)
    for dtype in LOWP:
        model = load(path, threads=2, dtype=dtype)
        assert model.dtype == dtype
        for name, a in model._weights.tensors.items():             # nothing still views the mapped file
            base = a
            while base is not None and not isinstance(base, mmap.mmap):
                base = getattr(base, "base", None)
            assert base is None, name
        got = model.logits(ids)
        want = ref.forward(model.dequantized(), cfg, ids, act=act_of(dtype), head_act=head_act_of(dtype))
        assert close_to_reference(got, want, dtype)
        assert np.abs(got - f32).max() < (3.0 if dtype == "q4_0" else 0.3)
    for bad in ("q4_1", "F32", 8, ""):
        with pytest.raises(ValueError, match="dtype"):
            load(path, dtype=bad)


@pytest.mark.parametrize("dtype", ["q8_0"])
def test_block_types_need_inputs_in_whole_blocks(tensors, dtype):
    cfg = Config(n_vocab=50257, n_ctx=16, n_embd=16, n_head=2, n_layer=1)
    with pytest.raises(CheckpointError, match="multiple of 32"):
        Model.from_tensors(cfg, ref.random_tensors(cfg, seed=1), dtype=dtype)
    assert Model.from_tensors(cfg, ref.random_tensors(cfg, seed=1), dtype="bf16").dtype == "bf16"
