"""The scanner's character classes (gpt2cy/text/_unicode_tables.h, Unicode 16) against tiktoken and HF tokenizers,
for every Unicode scalar value, and the pattern's splitting rules on their own."""
import os
import subprocess
import sys

import numpy as np
import pytest

import tokenizer_peers
from gpt2cy.text import _pretokenize
from gpt2cy.text.tokenizer import Tokenizer, bytes_to_unicode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBES = "a1!"          # a letter, a number, an "other": what follows them shows the next character's class
SCALARS = np.r_[0:0xD800, 0xE000:0x110000]


def probe_vocab():
    """Single bytes, plus one token for each probe character followed by any byte ("a" + b, "1" + b, "!" + b).

    In "a{c}" the first token is "a"+lead byte exactly when c continues a's letter run, and so on: equal ids
    from two tokenizers mean they put every probed character in the same class.
    """
    spell = bytes_to_unicode()
    encoder = {spell[b]: b for b in range(256)}
    merges = []
    for p in PROBES.encode():
        for b in range(256):
            encoder[spell[p] + spell[b]] = len(encoder)
            merges.append((spell[p], spell[b]))
    return encoder, merges


@pytest.fixture(scope="module")
def probe_pair():
    tiktoken = pytest.importorskip("tiktoken")
    encoder, merges = probe_vocab()
    ours = Tokenizer(encoder, merges, name="probe")
    ranks = {ours.decode_single_token_bytes(i): i for i in range(ours.n_vocab)}
    theirs = tiktoken.Encoding("probe", pat_str=tokenizer_peers.R50K_PAT_STR, mergeable_ranks=ranks,
                               special_tokens={})
    return ours, theirs


def probe_text(cps):
    return "".join(f"a{c}\n1{c}\n!{c}\n" for c in map(chr, cps))


def test_every_code_point_classified_like_tiktoken(probe_pair):
    ours, theirs = probe_pair
    for start in range(0, len(SCALARS), 1 << 16):
        cps = SCALARS[start:start + (1 << 16)]
        text = probe_text(cps)
        a, b = ours.encode_to_numpy(text), theirs.encode_to_numpy(text)
        if not np.array_equal(a, b):
            bad = next(c for c in cps if ours.encode(probe_text([c])) != theirs.encode(probe_text([c])))
            pytest.fail(f"U+{bad:04X} is classified differently from tiktoken "
                        f"(ours: class {_pretokenize.char_class(int(bad))})")


def test_classes_match_hf_on_changed_and_sampled_code_points():
    """HF tokenizers' own pre-tokenizer (Oniguruma) on every character Unicode 14 and 16 disagree on, and a sample."""
    pre_tokenizers = pytest.importorskip("tokenizers.pre_tokenizers")
    import unicodedata
    pt = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    table = _pretokenize.class_table()
    def hf_class(c):
        for probe, cls in (("a", 1), ("1", 2), ("!", 0)):
            if len(pt.pre_tokenize_str(probe + c)) == 1:
                return cls
        return 3
    sample = [int(c) for c in SCALARS[::97]]
    changed = [int(c) for c in SCALARS if table[c] != _py_class(unicodedata, int(c))]
    assert len(changed) > 1000, "Unicode 14 vs 16 should differ on thousands of characters"
    for c in sorted(set(sample + changed)):
        assert table[c] == hf_class(chr(c)), f"U+{c:04X}"


WHITE_SPACE = {*range(9, 14), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F, 0x205F,
               0x3000}


def _py_class(unicodedata, cp):
    if cp in WHITE_SPACE:
        return 3
    cat = unicodedata.category(chr(cp))
    return 1 if cat[0] == "L" else 2 if cat[0] == "N" else 0


def test_whitespace_is_the_white_space_property():
    table = _pretokenize.class_table()
    assert {cp for cp in range(0x110000) if table[cp] == 3} == WHITE_SPACE
    assert table[0x1C] == 0 and table[0x200B] == 0 and table[0x180E] == 0   # str.isspace() differs here


def test_unicode_version():
    assert _pretokenize.UNICODE_VERSION == "16.0.0"
    assert _pretokenize.char_class(0x10D50) == 1          # GARAY CAPITAL LETTER A, new in Unicode 16
    assert _pretokenize.char_class(0x1CCF0) == 2          # OUTLINED DIGIT ZERO, new in Unicode 16
    with pytest.raises(ValueError):
        _pretokenize.char_class(0x110000)


def test_committed_table_is_what_the_generator_writes():
    ud2 = pytest.importorskip("unicodedata2")
    if ud2.unidata_version != "16.0.0":
        pytest.skip(f"unicodedata2 {ud2.unidata_version} installed; the generator needs 16.0.0")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "gen_unicode_tables.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("text,pieces", [
    ("Hello world", ["Hello", " world"]),
    ("it's IT'S", ["it", "'s", " IT", "'", "S"]),
    ("we'll've'd", ["we", "'ll", "'ve", "'d"]),
    ("a  b", ["a", " ", " b"]),
    ("a \n b", ["a", " \n", " b"]),
    ("a\t\tb", ["a", "\t", "\tb"][:2] + ["\t", "b"][1:] if False else ["a", "\t", "\t", "b"]),
    ("x   ", ["x", "   "]),
    ("x\n\n", ["x", "\n\n"]),
    ("  ", ["  "]),
    (" !!x", [" !!", "x"]),
    ("'x", ["'", "x"]),
    ("''s", ["''", "s"]),
    ("a1b2", ["a", "1", "b", "2"]),
    (" 123 abc", [" 123", " abc"]),
    ("e\u0301", ["e", "\u0301"]),
    ("a\u00a0b", ["a", "\u00a0", "b"]),
    ("'", ["'"]),
    ("'l", ["'", "l"]),
    ("", []),
])
def test_split_rules(text, pieces):
    assert _pretokenize.split(text) == pieces


def test_split_matches_regex_module_on_common_text():
    """The `regex` package (Unicode 17) runs the original pattern; on text without new characters they agree."""
    regex = pytest.importorskip("regex")
    import tokenizer_corpus
    pat = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
    for name, text in tokenizer_corpus.SAMPLES.items():
        if name in ("new_code_points", "unassigned_private"):
            continue
        assert _pretokenize.split(text) == pat.findall(text), name
    text = tokenizer_corpus.mixed_text(100_000)
    assert _pretokenize.split(text) == pat.findall(text)


def test_every_code_point_in_context_with_the_real_vocabulary(vocab_dir):
    """Each scalar value inside letters, after a space, before a digit and doubled, through the real merges.

    This checks BPE on every character's bytes; it is a weak class check (rare characters seldom merge with
    their neighbours either way), which is what the probe vocabulary above is for.
    """
    pytest.importorskip("tiktoken")
    tk = tokenizer_peers.peers(vocab_dir)[0]
    ours = Tokenizer.from_dir(vocab_dir)
    for start in range(0, len(SCALARS), 1 << 16):
        cps = SCALARS[start:start + (1 << 16)]
        text = "".join(f"a{c}b {c}1{c}{c}\n" for c in map(chr, cps))
        if not np.array_equal(ours.encode_to_numpy(text), tk.encode_to_numpy(text)):
            bad = next(c for c in cps
                       if ours.encode(f"a{chr(c)}b {chr(c)}1{chr(c)}{chr(c)}\n")
                       != tk.encode_ordinary(f"a{chr(c)}b {chr(c)}1{chr(c)}{chr(c)}\n"))
            pytest.fail(f"U+{bad:04X} encodes differently from tiktoken")
