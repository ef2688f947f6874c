"""tiktoken's Encoding surface on gpt2cy's Tokenizer, method by method against tiktoken itself (built offline
from the same vocabulary files) on the shared corpus; pickling and multiprocessing; the batch encode
really leaving the GIL."""
import multiprocessing
import pickle
import sys
import threading

import pytest

import tokenizer_corpus as corpus
import tokenizer_peers
from gpt2cy.text.tokenizer import Tokenizer

EOT = "<|endoftext|>"


@pytest.fixture(scope="module")
def tok(vocab_dir):
    return Tokenizer.from_dir(vocab_dir)


@pytest.fixture(scope="module")
def tk(vocab_dir):
    pytest.importorskip("tiktoken")
    return tokenizer_peers.tiktoken_encoding(vocab_dir)


@pytest.fixture(scope="module")
def texts():
    """Every hand-picked sample, then pieces of the mixed corpus (prose, code, multilingual)."""
    mixed = corpus.mixed_text(120_000)
    return list(corpus.SAMPLES.values()) + [mixed[i:i + 3000] for i in range(0, len(mixed), 3000)]


# -- pickling and processes -------------------------------------------------------------------------------
def test_a_tokenizer_pickles(tok, texts):
    back = pickle.loads(pickle.dumps(tok))
    assert (back.name, back.n_vocab, back.eot_token, back.special_tokens_set) == \
        (tok.name, tok.n_vocab, tok.eot_token, tok.special_tokens_set)
    assert [back.encode(t) for t in texts] == [tok.encode(t) for t in texts]
    assert back.encode(EOT, allowed_special="all") == [50256]
    assert back.decode(tok.encode(texts[3])) == texts[3]


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_multiprocessing_pools_take_a_tokenizer(tok, texts, method):
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {method} here")
    sample = texts[:12]
    ctx = multiprocessing.get_context(method)
    with ctx.Pool(2) as pool:                    # the bound method pickles the tokenizer with each chunk
        got = pool.map(tok.encode_ordinary, sample, chunksize=len(sample) // 2)
    assert got == [tok.encode_ordinary(t) for t in sample]


# -- tiktoken parity, method by method --------------------------------------------------------------------
def test_encode_ordinary_and_its_batch_match_tiktoken(tok, tk, texts):
    want = tk.encode_ordinary_batch(texts)
    assert [tok.encode_ordinary(t) for t in texts] == want
    for n in (1, 2, 3, 8):
        assert tok.encode_ordinary_batch(texts, num_threads=n) == want
    assert tok.encode_ordinary_batch([]) == [] == tk.encode_ordinary_batch([])


def test_encode_batch_matches_tiktoken_with_each_special_setting(tok, tk, texts):
    assert tok.encode_batch(texts, allowed_special="all") == tk.encode_batch(texts, allowed_special="all")
    assert tok.encode_batch(texts, allowed_special={EOT}, num_threads=2) == \
        tk.encode_batch(texts, allowed_special={EOT}, num_threads=2)
    # the default: <|endoftext|> is text (tiktoken's default raises; disallowed_special=() is ours)
    assert tok.encode_batch(texts) == tk.encode_batch(texts, disallowed_special=())
    with pytest.raises(ValueError):
        tk.encode_batch([f"a{EOT}"])
    with pytest.raises(ValueError, match="special token"):
        tok.encode_batch(["fine", f"a{EOT}"], disallowed_special="all")


def test_default_endoftext_is_text_and_tiktokens_default_is_one_flag_away(tok, tk):
    text = f"a{EOT}b"
    with pytest.raises(ValueError):
        tk.encode(text)                                           # tiktoken: disallowed by default
    assert tok.encode(text) == tk.encode(text, disallowed_special=())
    with pytest.raises(ValueError):
        tok.encode(text, disallowed_special="all")               # tiktoken's behaviour, when asked for
    assert tok.encode(text, allowed_special="all") == tk.encode(text, allowed_special="all") == [64, 50256, 65]


def test_allowed_special_names_the_vocabulary_lacks_are_ignored(tok, tk):
    for text in ("x<|im_start|>y", f"<|im_start|>{EOT}"):
        allowed = {"<|im_start|>", EOT}
        assert tok.encode(text, allowed_special=allowed) == tk.encode(text, allowed_special=allowed)
        assert tok.encode(text, allowed_special={"<|im_start|>"}) == \
            tk.encode(text, allowed_special={"<|im_start|>"}, disallowed_special=())
    # a name in disallowed_special that the text holds is refused, known to the vocabulary or not (as tiktoken)
    for peer in (tok, tk):
        with pytest.raises(ValueError):
            peer.encode("a<|im_start|>", disallowed_special={"<|im_start|>"})


def test_decode_batches_match_tiktoken(tok, tk, texts):
    batch = tk.encode_ordinary_batch(texts)
    batch.append([50256, 15496])
    batch.append(tok.encode("é")[:1] + [995])                   # a cut UTF-8 character
    for n in (1, 4):
        assert tok.decode_bytes_batch(batch, num_threads=n) == tk.decode_bytes_batch(batch, num_threads=n)
        assert tok.decode_batch(batch, num_threads=n) == tk.decode_batch(batch, num_threads=n)
    assert tok.decode_batch(batch, errors="ignore") == tk.decode_batch(batch, errors="ignore")


def test_decode_with_offsets_matches_tiktoken(tok, tk, texts):
    for text in texts:
        ids = tk.encode_ordinary(text)
        assert tok.decode_with_offsets(ids) == tk.decode_with_offsets(ids), text[:40]
    ids = tok.encode("😀 日本")                                  # tokens that start inside a character
    assert tok.decode_with_offsets(ids) == tk.decode_with_offsets(ids)
    assert any(0x80 <= b[0] < 0xC0 for b in tok.decode_tokens_bytes(ids))
    assert tok.decode_with_offsets([]) == tk.decode_with_offsets([]) == ("", [])


def test_encode_single_token_matches_tiktoken(tok, tk):
    for i in (*range(0, 50256, 997), 50255, 198, 220, 995):
        b = tk.decode_single_token_bytes(i)
        assert tok.encode_single_token(b) == tk.encode_single_token(b) == i
    assert tok.encode_single_token(" world") == tk.encode_single_token(" world") == 995
    assert tok.encode_single_token(EOT) == tk.encode_single_token(EOT) == 50256
    for missing in ("hello world", b"\xff\xfe\xfd", ""):
        with pytest.raises(KeyError):
            tk.encode_single_token(missing)
        with pytest.raises(KeyError):
            tok.encode_single_token(missing)
    with pytest.raises(TypeError):
        tok.encode_single_token(5)


def test_vocabulary_facts_match_tiktoken(tok, tk):
    assert tok.n_vocab == tk.n_vocab == 50257
    assert tok.max_token_value == tk.max_token_value == 50256
    assert tok.eot_token == tk.eot_token == 50256
    assert tok.special_tokens_set == tk.special_tokens_set == {EOT}
    assert tok.token_byte_values() == tk.token_byte_values()
    for i in (0, 1, 50255, 50256):
        assert tok.is_special_token(i) == tk.is_special_token(i)
    assert tok.is_special_token(50256) and not tok.is_special_token(0)


def test_batch_arguments_are_checked(tok):
    with pytest.raises(TypeError):
        tok.encode_ordinary_batch("one string")
    with pytest.raises(TypeError):
        tok.encode_batch(["a", 3])
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="num_threads"):
            tok.encode_ordinary_batch(["a", "b"], num_threads=bad)
    lone = "caf\udce9 x"                                          # a lone surrogate: cleaned as encode() does
    assert tok.encode_ordinary_batch(["a", lone, "b"], num_threads=2) == [tok.encode("a"), tok.encode(lone),
                                                                          tok.encode("b")]


def test_the_batch_encode_runs_without_the_gil(tok):
    """With a switch interval far beyond the test's length, another thread gets the GIL only when the
    encoding thread gives it up: waking while the batch call is still running proves the merging leaves
    the GIL (for short texts too, which a single encode keeps it for)."""
    texts = [f"short text number {i}, with some words" for i in range(20000)]

    def woke_while_running(call):
        started, state = threading.Event(), {"done": False}

        def work():
            started.set()
            call()
            state["done"] = True

        old = sys.getswitchinterval()
        sys.setswitchinterval(1000.0)
        try:
            t = threading.Thread(target=work)
            t.start()
            started.wait()
            woke = not state["done"]
            t.join()
        finally:
            sys.setswitchinterval(old)
        return woke

    assert woke_while_running(lambda: tok._core.encode_batch(texts))
    # the control: a C call that keeps the GIL (sorting strings) is never interrupted, so the check can fail
    assert not woke_while_running(lambda: sorted(texts * 10, key=str.lower))
