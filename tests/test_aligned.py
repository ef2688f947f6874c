"""Cache-line alignment of what the kernels stream: engine/aligned.py, and every weight that loading copies or
converts. numpy's own large allocations start 16 bytes past a page, so without this a 64-byte vector load
spans two cache lines (measured: a bf16 step of 8 sequences 18.2 -> 16.1 ms on Zen 4)."""
import numpy as np
import pytest

import gpt2cy
from gpt2cy.engine import aligned
from gpt2cy.loading import export_gguf
from gpt2cy.tensors import EMBEDDING, MATMUL, tensor_specs


def offset(a):
    return a.ctypes.data % aligned.ALIGN


@pytest.mark.parametrize("shape,dtype", [((3,), np.float32), ((70000,), np.float32), ((513, 7), np.uint16),
                                         ((100, 816), np.uint8), ((0, 5), np.float32)])
def test_empty_and_copy_start_on_a_cache_line(shape, dtype):
    for _ in range(8):   # different heap and mmap placements
        a = aligned.empty(shape, dtype)
        assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous
        src = np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape)
        c = aligned.copy(src)
        assert np.array_equal(c, src) and c.flags.writeable
        if a.size:
            assert offset(a) == 0 and offset(c) == 0


def test_contiguous_copies_only_what_the_kernels_cannot_read():
    a = np.ones((300, 200), np.float32)
    assert aligned.contiguous(a) is a                       # C-contiguous and aligned: used where it lies
    t = aligned.contiguous(a.T)                             # transposed: an aligned C-contiguous copy
    assert offset(t) == 0 and t.flags.c_contiguous and np.array_equal(t, a.T)
    raw = np.zeros(4 * 600 + 1, np.uint8)[1:].view(np.float32)  # misaligned for float32
    assert not raw.flags.aligned
    c = aligned.contiguous(raw)
    assert c.flags.aligned and offset(c) == 0 and np.array_equal(c, raw)


def _weights(model):
    specs = tensor_specs(model.config)
    return {s.name: model._described[s.name].data for s in specs if s.role in (MATMUL, EMBEDDING)}


@pytest.mark.parametrize("dtype", ["bf16", "q8_0", "q4_0"])
def test_converted_weights_start_on_cache_lines(tiny_model_dir, dtype):
    m = gpt2cy.load(tiny_model_dir, threads=1, dtype=dtype)
    assert {n: offset(a) for n, a in _weights(m).items() if offset(a)} == {}


def test_transposed_gguf_weights_are_copied_onto_cache_lines(tmp_path, tiny_model_dir):
    pytest.importorskip("gguf")
    path = str(tmp_path / "m-f32.gguf")
    export_gguf(tiny_model_dir, path, dtype="f32", threads=1)
    m = gpt2cy.load(path, threads=1)
    w = _weights(m)
    copied = {n: a for n, a in w.items() if n != "wte"}      # the matmul weights: [out, in] in the file
    assert copied and {n: offset(a) for n, a in copied.items() if offset(a)} == {}
    ref = gpt2cy.load(tiny_model_dir, threads=1)
    ids = [1, 2, 3, 50256]
    assert np.array_equal(m.logits(ids), ref.logits(ids))
