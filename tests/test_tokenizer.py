"""gpt2cy.text.tokenizer against tiktoken and HF tokenizers (both built offline from the same files): exact ids,
round trips, special tokens, decoding, the stream decoder, and long inputs."""
import hashlib
import os

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import tokenizer_corpus as corpus  # noqa: E402
import tokenizer_peers  # noqa: E402
from gpt2cy import InvalidTokenError, TokenizerError  # noqa: E402
from gpt2cy.hub.models import get_tokenizer  # noqa: E402
from gpt2cy.text.tokenizer import Tokenizer, bytes_to_unicode  # noqa: E402

# sha256 of OpenAI's files (as tiktoken pins them in tiktoken_ext/openai_public.py).
CANONICAL_SHA256 = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}
EOT = "<|endoftext|>"
HYPOTHESIS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def tok(vocab_dir):
    return Tokenizer.from_dir(vocab_dir)


@pytest.fixture(scope="module")
def tiktoken_enc(vocab_dir):
    pytest.importorskip("tiktoken")
    return tokenizer_peers.peers(vocab_dir)[0]


@pytest.fixture(scope="module")
def hf_tok(vocab_dir):
    pytest.importorskip("tokenizers")
    pytest.importorskip("tiktoken")
    return tokenizer_peers.peers(vocab_dir)[1]


# ---- the files and the anchors -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(CANONICAL_SHA256))
def test_vocab_files_are_openais(vocab_dir, name):
    with open(os.path.join(vocab_dir, name), "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == CANONICAL_SHA256[name]


def test_anchors(tok):
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode("hello world") == [31373, 995]
    assert tok.decode([15496, 995]) == "Hello world"
    assert tok.eot_token == 50256
    assert tok.n_vocab == 50257


def test_byte_map_is_a_bijection_onto_printables():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256
    assert all(c.isprintable() and not c.isspace() for c in table.values())
    assert table[ord("A")] == "A" and table[ord(" ")] == "\u0120" and table[0] == "\u0100"


def test_token_bytes_match_tiktoken(tok, tiktoken_enc):
    for i in range(tok.n_vocab):
        assert tok.decode_single_token_bytes(i) == tiktoken_enc.decode_single_token_bytes(i), i


# ---- parity ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(corpus.SAMPLES))
def test_samples_match_peers(tok, tiktoken_enc, hf_tok, name):
    text = corpus.SAMPLES[name]
    ids = tok.encode(text)
    assert ids == tiktoken_enc.encode_ordinary(text)
    assert ids == hf_tok.encode(text).ids
    assert tok.decode(ids) == text
    assert tok.decode_bytes(ids) == text.encode("utf-8")


def test_mixed_corpus_matches_tiktoken(tok, tiktoken_enc):
    text = corpus.mixed_text(300_000)
    ids = tok.encode(text)
    assert ids == tiktoken_enc.encode_ordinary(text)
    assert tok.decode(ids) == text
    np.testing.assert_array_equal(tok.encode_to_numpy(text), np.asarray(ids, dtype=np.uint32))


def test_piece_cache_does_not_change_results(tok, tiktoken_enc):
    """Encode twice (second time mostly from the cache) and once after clearing it: same ids."""
    text = corpus.mixed_text(50_000) + " ".join(corpus.SAMPLES.values())
    first = tok.encode(text)
    assert tok.encode(text) == first
    tok._core.clear_cache()
    assert tok.encode(text) == first == tiktoken_enc.encode_ordinary(text)


def test_every_token_alone_and_in_context(tok, tiktoken_enc):
    """Each token's own text, then all of them joined with spaces, as the peers split and merge them."""
    texts = []
    for i in range(tok.n_vocab - 1):
        b = tok.decode_single_token_bytes(i)
        try:
            texts.append(b.decode("utf-8"))
        except UnicodeDecodeError:
            continue
    joined = " ".join(texts)
    assert tok.encode(joined) == tiktoken_enc.encode_ordinary(joined)
    glued = "".join(texts[::7])
    assert tok.encode(glued) == tiktoken_enc.encode_ordinary(glued)


@HYPOTHESIS
@given(st.text())
def test_hypothesis_text_matches_peers(tok, tiktoken_enc, hf_tok, text):
    ids = tok.encode(text)
    assert ids == tiktoken_enc.encode_ordinary(text)
    assert ids == hf_tok.encode(text).ids
    assert tok.decode(ids) == text


# Text that hits the pattern's edges: spaces before every class, apostrophes, digits, mixed scripts.
_edgy = st.text(alphabet=st.sampled_from(list(" \t\n\r'sStTrReEvVmMlLdD0123456789aZ_!.,-😀\u00a0\u3000"
                                              "日本é\u0301١٢ş\u2028\x00")), max_size=60)


@HYPOTHESIS
@given(st.lists(st.one_of(_edgy, st.text(max_size=8)), max_size=8).map("".join))
def test_hypothesis_edge_alphabet_matches_peers(tok, tiktoken_enc, hf_tok, text):
    ids = tok.encode(text)
    assert ids == tiktoken_enc.encode_ordinary(text)
    assert ids == hf_tok.encode(text).ids
    assert tok.decode(ids) == text


@HYPOTHESIS
@given(st.text(alphabet=st.characters(codec=None, categories=None, min_codepoint=0, max_codepoint=0x10FFFF,
                                      include_characters="\ud800\udc00\udfff\ud83d\ude00")))
def test_lone_surrogates_are_replaced_like_tiktoken(tok, tiktoken_enc, text):
    ids = tok.encode(text)
    assert ids == tiktoken_enc.encode_ordinary(text)


def test_surrogateescape_input_does_not_crash(tok, tiktoken_enc):
    text = b"caf\xe9 na\xefve \xff\xfe".decode("utf-8", "surrogateescape")
    ids = tok.encode(text)
    assert ids == tiktoken_enc.encode_ordinary(text)
    assert tok.decode(ids) == "caf\ufffd na\ufffdve \ufffd\ufffd"
    assert tok.encode("\ud83d\ude00") == tok.encode("\U0001F600")     # a surrogate pair joins, as in tiktoken


# ---- special tokens ----------------------------------------------------------------------------------------

def test_endoftext_is_plain_text_by_default(tok, tiktoken_enc):
    text = f"a{EOT}b"
    assert 50256 not in tok.encode(text)
    assert tok.encode(text) == tiktoken_enc.encode_ordinary(text)
    assert tok.encode(text, allowed_special=frozenset()) == tok.encode(text)


@pytest.mark.parametrize("allowed", ["all", {EOT}, frozenset({EOT}), [EOT]])
@pytest.mark.parametrize("text", [EOT, f"a{EOT}b", f"{EOT}{EOT}", f"  {EOT}  x", f"x\n\n{EOT}\n", "no special",
                                  f"<|endoftext{EOT}|>", f"he said {EOT}'s"])
def test_allowed_special_matches_tiktoken(tok, tiktoken_enc, allowed, text):
    ids = tok.encode(text, allowed_special=allowed)
    assert ids == tiktoken_enc.encode(text, allowed_special="all")
    assert ids.count(50256) == text.count(EOT)
    assert tok.decode(ids) == text
    np.testing.assert_array_equal(tok.encode_to_numpy(text, allowed_special=allowed), ids)


def test_special_token_errors(tok):
    # a name the vocabulary lacks is ignored, as tiktoken does (tests/test_tokenizer_tiktoken_api.py)
    assert tok.encode("x<|im_start|>", allowed_special={"<|im_start|>"}) == tok.encode("x<|im_start|>")
    with pytest.raises(ValueError, match="special token"):
        tok.encode(f"x{EOT}", disallowed_special="all")
    assert tok.encode("x", disallowed_special="all") == tok.encode("x")
    assert tok.encode(f"x{EOT}", allowed_special="all", disallowed_special="all")[-1] == 50256


# ---- input types and decoding ------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [b"bytes", None, 3, ["a"]])
def test_encode_rejects_non_str(tok, bad):
    with pytest.raises(TypeError):
        tok.encode(bad)
    with pytest.raises(TypeError):
        tok.encode_to_numpy(bad)


def test_str_subclass_is_text(tok):
    class S(str):
        def __str__(self):
            return "something else"
    assert tok.encode(S("Hello world")) == [15496, 995]
    assert tok.encode(S("Hello world"), allowed_special="all") == [15496, 995]


@pytest.mark.parametrize("ids", [[50257], [-1], [0, 10**30], [2**63], np.array([50257]), np.array([-5])])
def test_decode_out_of_range_is_tokenizer_error(tok, ids):
    with pytest.raises(InvalidTokenError, match=r"outside the vocabulary \[0, 50257\)$"):
        tok.decode(ids)
    with pytest.raises(InvalidTokenError):
        tok.decode_bytes(ids)
    assert issubclass(InvalidTokenError, TokenizerError)


def test_decode_error_names_the_real_id(tok):
    # uint64 ids past 2**63 must not be reported as the negative number they wrap to in int64
    with pytest.raises(InvalidTokenError, match=r"token id 18446744073709551615 \(at index 1\) is outside"):
        tok.decode(np.array([5, 2**64 - 1], dtype=np.uint64))
    with pytest.raises(InvalidTokenError, match=r"^token id 60000 \(at index 2\) is outside the vocabulary "
                                                r"\[0, 50257\)$"):
        tok.decode(np.array([5, 6, 60000], dtype=np.uint64))
    assert tok.decode(np.array([15496, 995], dtype=np.uint64)) == "Hello world"
    from gpt2cy.ids import check_ids                   # the same words as the package's one id validator
    for bad in ([5, 6, 60000], [-3], np.array([1, 2**40]), np.array([7, 2**64 - 1], dtype=np.uint64)):
        with pytest.raises(InvalidTokenError) as got:
            tok.decode(bad)
        with pytest.raises(InvalidTokenError) as want:
            check_ids(bad, tok.n_vocab)
        assert str(got.value) == str(want.value)


def test_decode_single_token_errors(tok):
    from gpt2cy.ids import check_id
    for bad in (50257, -1, 2**70):
        with pytest.raises(InvalidTokenError) as got:
            tok.decode_single_token_bytes(bad)
        with pytest.raises(InvalidTokenError) as want:                 # the package's one id validator
            check_id(bad, tok.n_vocab)
        assert str(got.value) == str(want.value)
    with pytest.raises(TypeError):
        tok.decode_single_token_bytes("1")
    assert tok.decode_single_token_bytes(50256) == EOT.encode()
    assert tok.decode_single_token_bytes(np.int64(995)) == b" world"


@pytest.mark.parametrize("bad", [[1.0], ["1"], [None], np.array([1.5])])
def test_decode_rejects_non_integers(tok, bad):
    with pytest.raises(TypeError):
        tok.decode(bad)


def test_decode_accepts_sequences_and_arrays(tok):
    ids = tok.encode("Hello world, 日本語 😀")
    text = tok.decode(ids)
    for form in (tuple(ids), np.asarray(ids, dtype=np.int32), np.asarray(ids, dtype=np.uint32),
                 np.asarray(ids, dtype=np.int64), iter(ids), [np.int64(i) for i in ids], []):
        expected = "" if isinstance(form, list) and not form else text
        assert tok.decode(form) == expected
    assert tok.decode([31373, 995, 50256]) == "hello world" + EOT


def test_decode_invalid_utf8(tok, tiktoken_enc):
    ids = tok.encode("😀")[:1]                  # the first byte(s) of a 4-byte character
    assert tok.decode(ids) == tiktoken_enc.decode(ids)
    assert "\ufffd" in tok.decode(ids)
    with pytest.raises(UnicodeDecodeError):
        tok.decode(ids, errors="strict")
    assert tok.decode_bytes(ids) == "😀".encode()[:len(tok.decode_bytes(ids))]


def test_decode_matches_tiktoken_on_random_ids(tok, tiktoken_enc, rng):
    ids = rng.integers(0, 50257, size=20_000).tolist()
    assert tok.decode_bytes(ids) == tiktoken_enc.decode_bytes(ids)
    assert tok.decode(ids) == tiktoken_enc.decode(ids)


# ---- streaming ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", [corpus.SAMPLES["emoji"], corpus.SAMPLES["cjk"], corpus.SAMPLES["rtl"],
                                  corpus.SAMPLES["combining"], corpus.SAMPLES["new_code_points"],
                                  "plain ascii text", "🧑🏿‍🚀" * 5])
def test_stream_decoder_emits_only_whole_characters(tok, text):
    ids = tok.encode(text)
    dec = tok.stream_decoder()
    pieces = [dec.feed(i) for i in ids]
    assert "".join(pieces) + dec.flush() == tok.decode(ids) == text
    assert not any("\ufffd" in p for p in pieces)
    # the non-ASCII samples do split characters across tokens, so the holding back is exercised
    split = any(b.decode("utf-8", "ignore") != b.decode("utf-8", "replace") for b in tok.decode_tokens_bytes(ids))
    assert split == (not text.isascii())


def test_stream_decoder_splits_characters_across_tokens(tok):
    """Feeding a 4-byte emoji one byte-token at a time: nothing until the last byte, then the character."""
    byte_tok = {b: tok.encode_ordinary(bytes([b]).decode("latin-1")) for b in range(0x20, 0x7F)}
    assert all(len(v) == 1 for v in byte_tok.values())
    emoji = "😀".encode()
    ids = [i for i in range(256) if len(tok.decode_single_token_bytes(i)) == 1]
    by_byte = {tok.decode_single_token_bytes(i)[0]: i for i in ids}
    dec = tok.stream_decoder()
    assert [dec.feed(by_byte[b]) for b in emoji] == ["", "", "", "😀"]
    assert dec.flush() == ""


def test_stream_decoder_invalid_bytes(tok):
    ids = [i for i in range(256) if len(tok.decode_single_token_bytes(i)) == 1]
    by_byte = {tok.decode_single_token_bytes(i)[0]: i for i in ids}
    dec = tok.stream_decoder()
    assert dec.feed(by_byte[0xFF]) == "\ufffd"               # can never start a character: shown at once
    assert dec.feed(by_byte[0xE6]) == ""                     # a valid start: held
    assert dec.feed(by_byte[ord("A")]) == "\ufffdA"          # broken by the next byte: replaced then
    assert dec.feed(by_byte[0xE6]) == ""
    assert dec.flush() == "\ufffd"                           # unfinished at the end
    assert dec.feed(by_byte[ord("B")]) == "B"                # flush starts afresh
    with pytest.raises(TokenizerError):
        dec.feed(50257)


# ---- long inputs: the heap merge must stay exact (and, in bench/, about linear) ------------------------------

@pytest.mark.parametrize("make", [
    lambda n: "x" * n,
    lambda n: "😀" * (n // 4),
    lambda n: ("abcdefghij" * (n // 10)),
    lambda n: "1234567890" * (n // 10),
    lambda n: "".join(chr(0x4E00 + (i * 7919) % 20000) for i in range(n // 3)),
], ids=["x", "emoji", "letters", "digits", "cjk"])
def test_one_megabyte_piece_matches_tiktoken(tok, tiktoken_enc, make):
    text = make(1_000_000)
    ids = tok.encode(text)
    assert ids == tiktoken_enc.encode_ordinary(text)
    assert tok.decode(ids) == text


def test_one_megabyte_of_spaces_matches_hf(tok, hf_tok, tiktoken_enc):
    """tiktoken 0.14 itself dies on this input (fancy-regex StackOverflow panic), so HF is the peer here."""
    text = " " * 1_000_000
    ids = tok.encode(text)
    assert ids == hf_tok.encode(text).ids
    assert tok.decode(ids) == text
    assert tok.encode(text[:50_000] + "x") == tiktoken_enc.encode_ordinary(text[:50_000] + "x")


def test_merge_paths_agree(tok, tiktoken_enc, rng):
    """The short-piece scan, the heap and the bucket queue give the same merges on the same bytes."""
    core = tok._core
    for _ in range(150):
        n = int(rng.integers(2, 300)) if rng.random() < 0.7 else int(rng.integers(300, 5000))
        alphabet = list(b"aeinrst") if rng.random() < 0.5 else list(b"xx ")
        word = bytes(rng.choice(alphabet, size=n).tolist())
        heap = core.merge_piece(word, "heap")
        assert core.merge_piece(word, "buckets") == heap
        if n <= 64:
            assert core.merge_piece(word, "scan") == heap
        if b" " not in word:                                # one piece: the peer's BPE on the same bytes
            assert heap == tiktoken_enc.encode_ordinary(word.decode())
    with pytest.raises(ValueError):
        core.merge_piece(b"x" * 200, "scan")


# ---- loading -----------------------------------------------------------------------------------------------

def test_threads_share_one_tokenizer(tok):
    """Long texts encode without the GIL and short ones with it; the shared piece cache must not mix them up."""
    from concurrent.futures import ThreadPoolExecutor
    texts = [corpus.mixed_text(20_000 + 3_000 * k)[-(10_000 + 997 * k):] for k in range(8)]
    texts += [t[:500] for t in texts]
    expected = [tok.encode(t) for t in texts]
    tok._core.clear_cache()
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            assert list(pool.map(tok.encode, texts)) == expected


def test_get_tokenizer_by_path_is_cached(vocab_dir):
    a = get_tokenizer(vocab_dir)
    assert a is get_tokenizer(vocab_dir)
    assert a.encode("hello world") == [31373, 995]


def test_get_tokenizer_by_name_uses_the_hub(vocab_dir, tmp_path, monkeypatch):
    import shutil
    model = tmp_path / "models" / "124M"
    model.mkdir(parents=True)
    for name in ("encoder.json", "vocab.bpe"):
        shutil.copy(os.path.join(vocab_dir, name), model / name)
    # Only the vocabulary is cached (no weights), and offline: the name must resolve to the cache alone.
    monkeypatch.setenv("GPT2CY_HOME", str(tmp_path))
    monkeypatch.delenv("GPT2CY_MODELS", raising=False)
    monkeypatch.setenv("GPT2CY_OFFLINE", "1")
    assert get_tokenizer("gpt2").encode("Hello world") == [15496, 995]


def test_package_exports(vocab_dir):
    import gpt2cy
    assert gpt2cy.Tokenizer is Tokenizer
    assert gpt2cy.get_tokenizer is get_tokenizer
    import gpt2cy.text.tokenizer as text_tokenizer
    assert not hasattr(text_tokenizer, "get_tokenizer")           # names are the hub's business


def test_cython_directives_come_before_the_docstring():
    """Cython reads `# cython:` (and `# distutils:`) lines only in the comments that open a module; one after
    the docstring is silently ignored (and bounds checks come back into the BPE's loops)."""
    import pathlib
    import re
    root = pathlib.Path(__file__).resolve().parents[1] / "gpt2cy"
    for path in sorted(root.rglob("*.pyx")):
        lines = path.read_text(encoding="utf-8").splitlines()
        opening = 0
        while opening < len(lines) and (lines[opening].startswith("#") or not lines[opening].strip()):
            opening += 1
        late = [i + 1 for i, line in enumerate(lines[opening:], opening)
                if re.match(r"#\s*(cython|distutils)\s*:", line)]
        assert late == [], f"{path.relative_to(root)}: directive comment(s) at line(s) {late} are ignored"
    bpe = (root / "text" / "_bpe.pyx").read_text(encoding="utf-8").splitlines()
    assert bpe[0] == "# distutils: language = c++" and bpe[1].startswith("# cython: boundscheck=False")
