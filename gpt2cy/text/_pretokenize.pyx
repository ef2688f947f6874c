# cython: boundscheck=False, wraparound=False
# (directives must come before the docstring to take effect; indices come from the scanner, which stays inside
# the text)
"""GPT-2's pre-tokenizer (the split pattern) as a compiled scanner; see _pretokenize.pxd for the scanner itself.

The encoder in _bpe.pyx inlines the same scanner; this module exposes it to tests and for debugging.
"""
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport uint8_t, uint32_t

UNICODE_VERSION = GPT2CY_UNICODE_VERSION.decode("ascii")
"""The Unicode version the character classes follow (the version tiktoken and HF tokenizers use)."""

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object text, Py_ssize_t* size) except NULL


def char_class(int cp) -> int:
    """Class of one code point: 0 other, 1 letter (\\p{L}), 2 number (\\p{N}), 3 whitespace (\\s)."""
    if cp < 0 or cp >= 0x110000:
        raise ValueError(f"code point {cp} is outside 0..0x10FFFF")
    return cp_class(<uint32_t>cp)


def split(str text not None) -> list:
    """The pieces GPT-2's pattern cuts `text` into, in order; ''.join(split(t)) == t.

    Raises UnicodeEncodeError for lone surrogates (the Tokenizer replaces those first, as tiktoken does).
    """
    cdef Py_ssize_t n, i = 0, j
    cdef const uint8_t* s = <const uint8_t*>PyUnicode_AsUTF8AndSize(text, &n)
    out = []
    while i < n:
        j = piece_end(s, n, i)
        out.append(PyUnicode_DecodeUTF8(<const char*>s + i, j - i, NULL))
        i = j
    return out


def class_table() -> bytes:
    """The class of every code point 0..0x10FFFF as one byte each (tests compare it with the peers)."""
    cdef bytearray out = bytearray(0x110000)
    cdef uint8_t[::1] view = out
    cdef uint32_t cp
    for cp in range(0x110000):
        view[cp] = cp_class(cp)
    return bytes(out)
