# Scalar math shared by the kernels (inline, so each kernel module gets its own copy).
from libc.math cimport tanhf

cdef inline float gelu(float x) noexcept nogil:
    # GPT-2's tanh form: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    return 0.5 * x * (1.0 + tanhf(0.7978845608028654 * (x + 0.044715 * x * x * x)))
