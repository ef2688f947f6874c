"""Loading and checking vocabulary files: both layouts, and one clear TokenizerError (file + line) per defect."""
import json
import os
import shutil

import pytest

from gpt2cy import TokenizerError
from gpt2cy.text.tokenizer import Tokenizer, load_encoder, load_merges


@pytest.fixture(scope="module")
def real(vocab_dir):
    """(encoder.json text, vocab.bpe text) of the real files."""
    with open(os.path.join(vocab_dir, "encoder.json"), encoding="utf-8") as f:
        enc = f.read()
    with open(os.path.join(vocab_dir, "vocab.bpe"), encoding="utf-8") as f:
        bpe = f.read()
    return enc, bpe


def write(path, enc_text, bpe_text, layout="openai"):
    names = ("encoder.json", "vocab.bpe") if layout == "openai" else ("vocab.json", "merges.txt")
    path.mkdir(parents=True, exist_ok=True)
    (path / names[0]).write_text(enc_text, encoding="utf-8")
    (path / names[1]).write_text(bpe_text, encoding="utf-8")
    return path


def test_hf_layout_gives_the_same_ids(tmp_path, real, vocab_dir):
    enc, bpe = real
    hf = Tokenizer.from_dir(write(tmp_path / "hf", json.dumps(json.loads(enc), indent=2), bpe, layout="hf"))
    openai = Tokenizer.from_dir(vocab_dir)
    text = "Hello world! It's 2024 — 日本語 😀\n\n  end"
    assert hf.encode(text) == openai.encode(text)
    assert hf.n_vocab == openai.n_vocab == 50257


def test_windows_line_ends_in_merges_are_accepted(tmp_path, real):
    enc, bpe = real
    tok = Tokenizer.from_dir(write(tmp_path, enc, bpe.replace("\n", "\r\n")))
    assert tok.encode("Hello world") == [15496, 995]


def test_hparams_vocab_size_must_agree(tmp_path, real):
    enc, bpe = real
    d = write(tmp_path, enc, bpe)
    (d / "hparams.json").write_text(json.dumps({"n_vocab": 50257}))
    Tokenizer.from_dir(d)
    (d / "hparams.json").write_text(json.dumps({"n_vocab": 50000}))
    with pytest.raises(TokenizerError, match="hparams.json: n_vocab is 50000"):
        Tokenizer.from_dir(d)
    # A broken hparams.json is the checkpoint loader's to report; it must not crash the tokenizer.
    for broken in ("[" * 100_000, "{", "[1]", "\xff"):
        (d / "hparams.json").write_text(broken, encoding="latin-1")
        assert Tokenizer.from_dir(d).n_vocab == 50257


def test_missing_files(tmp_path):
    with pytest.raises(TokenizerError, match="no vocabulary files"):
        Tokenizer.from_dir(tmp_path)
    with pytest.raises(TokenizerError, match="not a directory"):
        Tokenizer.from_dir(tmp_path / "nope")
    with pytest.raises(TokenizerError, match="cannot read"):
        load_encoder(str(tmp_path / "encoder.json"))


# (name, change to encoder.json text, message pattern); the line is always named ("encoder.json line N").
ENCODER_DEFECTS = [
    ("truncated", lambda t: t[:1000], r"encoder.json line 1: invalid JSON"),
    ("not_object", lambda t: "[1, 2, 3]", r"encoder.json line 1: expected a JSON object"),
    ("empty", lambda t: "{}", r"encoder.json line 1: the vocabulary is empty"),
    ("string_id", lambda t: t.replace('"hello": 31373', '"hello": "31373"'), r"line 1: id of 'hello' is '31373'"),
    ("float_id", lambda t: t.replace('"hello": 31373', '"hello": 31373.0'), r"id of 'hello' is 31373.0"),
    ("duplicate_id", lambda t: t.replace('"hello": 31373', '"hello": 995'), r"id 995 is used by both"),
    ("gap", lambda t: t.replace('"hello": 31373', '"hello": 60000'), r"id 60000 of 'hello' is outside 0..50256"),
    ("duplicate_key", lambda t: t.replace('"hello": 31373', '"hello": 31373, "hello": 31373'), r"'hello' appears twice"),
    ("eot_moved", lambda t: _swap_eot(t), r"'<\|endoftext\|>' has id 50255"),
    ("no_eot", lambda t: t.replace('"<|endoftext|>"', '"<|notendoftext|>"'), r"'<\|endoftext\|>' is missing"),
    ("bad_spelling", lambda t: t.replace('"hello": 31373', '"hel lo": 31373'), r"'hel lo' is not spelled"),
    ("missing_byte", lambda t: t.replace('"!": 0', '"\\u0120\\u0120\\u0120!": 0'), r"single-byte token '!'"),
    ("nested_too_deeply", lambda t: "[" * 100_000, r"encoder.json line 1: invalid JSON: nested too deeply"),
    ("bool_id", lambda t: t.replace('"hello": 31373', '"hello": true'), r"id of 'hello' is True, not an integer"),
    ("nested_duplicate", lambda t: t.replace('"hello": 31373', '"hello": {"x": 1, "x": 2}'),
     r"'x' appears twice"),
]


def _swap_eot(t):
    """Give <|endoftext|> id 50255 and the token that had 50255 id 50256."""
    d = json.loads(t)
    other = next(k for k, v in d.items() if v == 50255)
    d[other], d["<|endoftext|>"] = 50256, 50255
    return json.dumps(d)


@pytest.mark.parametrize("name,change,pattern", ENCODER_DEFECTS, ids=[d[0] for d in ENCODER_DEFECTS])
def test_encoder_defects(tmp_path, real, name, change, pattern):
    enc, bpe = real
    d = write(tmp_path, change(enc), bpe)
    with pytest.raises(TokenizerError, match=pattern) as info:
        Tokenizer.from_dir(d)
    assert str(d / "encoder.json") in str(info.value)
    assert "\n" not in str(info.value)


def test_encoder_line_numbers_in_multiline_json(tmp_path, real):
    enc, bpe = real
    d = json.loads(enc)
    d["hello"] = 995
    text = json.dumps(d, indent=1)
    expected = text[:text.index('"hello"')].count("\n") + 1
    with pytest.raises(TokenizerError, match=rf"vocab.json line {expected}: id 995"):
        Tokenizer.from_dir(write(tmp_path, text, bpe, layout="hf"))


MERGE_DEFECTS = [
    ("no_header", lambda b: b.split("\n", 1)[1], 1, "expected the header"),
    ("three_parts", lambda b: b.replace("\nh e\n", "\nh e x\n", 1), 4, "expected two tokens"),
    ("four_parts", lambda b: b.replace("\nh e\n", "\nh e h e\n", 1), 4, "expected two tokens"),
    ("two_spaces", lambda b: b.replace("\nh e\n", "\nh  e\n", 1), 4, "expected two tokens"),
    ("one_part", lambda b: b.replace("\nh e\n", "\nhe\n", 1), 4, "expected two tokens"),
    ("empty_line", lambda b: b.replace("\nh e\n", "\n\nh e\n", 1), 4, "expected two tokens"),
    ("unknown_part", lambda b: b.replace("\nh e\n", "\nh \u4e00\n", 1), 4, "'\u4e00' is not in the encoder"),
    ("result_missing", lambda b: b.replace("\nh e\n", "\nh q\n", 1), 4, "merged token 'hq' is not in the encoder"),
    ("used_before_made", lambda b: b.replace("\nh e\n", "\nhe llo\n", 1), 4, "'he' is used before"),
    ("duplicate", lambda b: b.replace("\nh e\n", "\nh e\nh e\n", 1), 5, "appears twice"),
]


@pytest.mark.parametrize("name,change,line,pattern", MERGE_DEFECTS, ids=[d[0] for d in MERGE_DEFECTS])
def test_merge_defects(tmp_path, real, name, change, line, pattern):
    enc, bpe = real
    assert bpe.split("\n")[3] == "h e"
    d = write(tmp_path, enc, change(bpe))
    with pytest.raises(TokenizerError, match=pattern) as info:
        Tokenizer.from_dir(d)
    assert f"{d / 'vocab.bpe'} line {line}:" in str(info.value)


def test_not_utf8(tmp_path, real):
    enc, bpe = real
    d = write(tmp_path, enc, bpe)
    (d / "vocab.bpe").write_bytes(b"#version: 0.2\n\xff\xfe\n")
    with pytest.raises(TokenizerError, match="not UTF-8"):
        Tokenizer.from_dir(d)


def test_loaders_return_checked_data(vocab_dir):
    enc = load_encoder(os.path.join(vocab_dir, "encoder.json"))
    merges = load_merges(os.path.join(vocab_dir, "vocab.bpe"), enc)
    assert len(enc) == 50257 and len(merges) == 50000
    assert merges[0] == ("\u0120", "t")
    assert all(enc[a + b] == 256 + r for r, (a, b) in enumerate(merges))


def test_model_directory_with_checkpoint_files(tmp_path, vocab_dir):
    """The layout a downloaded model has: vocab files beside hparams.json."""
    for name in ("encoder.json", "vocab.bpe"):
        shutil.copy(os.path.join(vocab_dir, name), tmp_path / name)
    (tmp_path / "hparams.json").write_text(json.dumps({"n_vocab": 50257, "n_ctx": 1024}))
    assert Tokenizer.from_dir(tmp_path).encode("hello world") == [31373, 995]


def test_constructor_rejects_unchecked_data():
    """Tokenizer(encoder, merges) takes checked data, but still fails cleanly on a bad vocabulary."""
    from gpt2cy.text.tokenizer import bytes_to_unicode
    spell = bytes_to_unicode()
    encoder = {spell[b]: b for b in range(256)}
    encoder["ab"] = 256
    encoder["abc"] = 257
    assert Tokenizer(encoder, [("a", "b"), ("ab", "c")]).encode("abc") == [257]
    with pytest.raises(TokenizerError, match="no earlier merge makes"):
        Tokenizer(encoder, [("ab", "c"), ("a", "b")])
    with pytest.raises(TokenizerError, match="'zz' is missing"):
        Tokenizer(encoder, [("z", "z")])
    with pytest.raises(TokenizerError, match="byte alphabet"):
        Tokenizer({**encoder, "a b": 258}, [])
    with pytest.raises(TokenizerError, match="0..n-1"):
        Tokenizer({**encoder, "abcd": 300}, [])
    encoder["zz"] = encoder.pop("!")
    with pytest.raises(TokenizerError, match="'!' is missing"):
        Tokenizer(encoder, [])


def test_fast_loading_matches_the_checked_constructor(tmp_path, real, vocab_dir):
    """from_dir parses the merges in C and checks the encoder in bulk; the result must equal the item-by-item
    path (load_encoder + load_merges + Tokenizer), also for an encoder.json whose keys are not in id order."""
    enc, bpe = real
    checked_enc = load_encoder(os.path.join(vocab_dir, "encoder.json"))
    checked = Tokenizer(checked_enc, load_merges(os.path.join(vocab_dir, "vocab.bpe"), checked_enc))
    shuffled = dict(sorted(json.loads(enc).items(), key=lambda kv: (kv[1] * 7919) % 50257))
    text = "Hello world! It's 2024 — 日本語 😀\n\n  end" + "".join(map(chr, range(32, 600)))
    for d in (vocab_dir, write(tmp_path, json.dumps(shuffled), bpe)):
        fast = Tokenizer.from_dir(d)
        assert fast._core.n_merges == checked._core.n_merges == 50000
        assert all(fast.decode_single_token_bytes(i) == checked.decode_single_token_bytes(i) for i in range(50257))
        assert fast.encode(text) == checked.encode(text)


def test_merge_ids_parses_well_formed_lines_only():
    from gpt2cy.text._bpe import merge_ids
    from gpt2cy.text.tokenizer import _ALPHABET
    token_bytes = [bytes([b]) for b in range(256)] + [b"ab", b"abc", b" \n", b"\xff\xff"]
    assert merge_ids(token_bytes, "a b\nab c", _ALPHABET).tolist() == [[97, 98, 256], [256, 99, 257]]
    assert merge_ids(token_bytes, "\u0120 \u010a\n\xff \xff", _ALPHABET).tolist() == [[32, 10, 258], [255, 255, 259]]
    assert merge_ids(token_bytes, "", _ALPHABET).shape == (0, 3)
    for bad in ("a  b", "a b\n", "\na b", "ab", "a b c", "a b a b", "a b\na b c", " a", "a \u4e00", "a b\r", "b c",
                "a b\n\nab c", "\u0143 \u0143", "a\u0300 b", "a" * 600 + " b"):
        assert merge_ids(token_bytes, bad, _ALPHABET) is None, bad
