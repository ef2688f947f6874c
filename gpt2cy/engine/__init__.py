"""The engine: compiled kernels and GPT-2's block loop, no I/O.

    weights.py      WeightTensor (one tensor: dtype, shape, raw data, block scales, layout) and DTYPES
    _dtypes.pyx     the per-dtype kernel table the block loop calls through (f32 today)
    _forward.pyx    Engine: KV-cache slots and the batched forward over rows tagged (slot, position)
    _matmul.pyx     matrix products (tiles for prefill, streaming matrix-vector for decode), _gemm.h
    _kernels.pyx    layer norm, position embeddings, KV-cache store and causal attention over segments
    _bandwidth.pyx  the benchmarks' memory read-bandwidth probe
    _omp.pyx        what the build got (OpenMP or not)

gpt2cy.model.Model is the public face.
"""
