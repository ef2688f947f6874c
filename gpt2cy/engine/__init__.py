"""The engine: compiled kernels and GPT-2's block loop, no I/O.

    weights.py      WeightTensor (one tensor: dtype, shape, raw data, block scales, layout), DTYPES,
                    convert (float32 -> bf16 / q8_0 / q4_0 at load) and to_float32 (the values the kernels use)
    isa.py          run-time ISA dispatch: which build of the compiled modules below this process runs
    _dtypes.pyx     the per-dtype kernel table the block loop calls through (f32, bf16, q8_0, q4_0)
    _forward.pyx    Engine: KV-cache slots and the batched forward over rows tagged (slot, position)
    _matmul.pyx     matrix products (tiles for prefill, streaming matrix-vector for decode), _gemm.h; f32
                    and bf16 weights (block matmuls: bf16-rounded inputs in pairs, _bf16dot.h; the lm_head
                    widens wte exactly, _lowp.h)
    _qblocks.pyx    q8_0 / q4_0 products on 8-bit activations (integer block dots, _q8act.h)
    _quantize.pyx   the compiled, parallel conversions: to_bf16, to_q8_0, to_q4_0 (gguf's bytes), and back
    _kernels.pyx    layer norm, position embeddings, KV-cache store and causal attention over segments
    _bandwidth.pyx  the benchmarks' memory read-bandwidth probe
    _omp.pyx        what the build got (OpenMP or not)

gpt2cy.model.Model is the public face.
"""
from . import isa as _isa

_isa.install()
