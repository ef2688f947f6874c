"""The tokenizer's peers, built offline from the same two vocabulary files: tiktoken and HF `tokenizers`.

Shared by tests/test_tokenizer*.py and bench/bench_tokenizer.py so both measure and compare the same objects.
"""
import json
import os

# GPT-2's split pattern in tiktoken's spelling (`tiktoken_ext/openai_public.py`, r50k_pat_str); the same language as
# OpenAI's original `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
R50K_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
ENDOFTEXT = "<|endoftext|>"


def byte_decoder():
    """GPT-2's printable-character -> byte map (the inverse of its bytes_to_unicode), written independently."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1),
                 *range(ord("\xae"), ord("\xff") + 1)]
    chars, n = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + n)
            n += 1
    return {c: b for b, c in chars.items()}


def read_vocab(vocab_dir):
    """(encoder dict, list of merge pairs) from encoder.json + vocab.bpe."""
    with open(os.path.join(vocab_dir, "encoder.json"), encoding="utf-8") as f:
        encoder = json.load(f)
    with open(os.path.join(vocab_dir, "vocab.bpe"), encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split(" ")) for line in lines[1:] if line]
    return encoder, merges


def tiktoken_encoding(vocab_dir=None, encoder=None, name="gpt2-offline"):
    """tiktoken's GPT-2 Encoding with ranks taken from encoder.json (token id == tiktoken rank for GPT-2)."""
    import tiktoken
    if encoder is None:
        encoder, _ = read_vocab(vocab_dir)
    dec = byte_decoder()
    ranks, special = {}, {}
    for token, i in encoder.items():
        if token == ENDOFTEXT:
            special[token] = i
        else:
            ranks[bytes(dec[c] for c in token)] = i
    return tiktoken.Encoding(name=name, pat_str=R50K_PAT_STR, mergeable_ranks=ranks, special_tokens=special)


def hf_tokenizer(vocab_dir=None, encoder=None, merges=None):
    """HF `tokenizers` BPE with GPT-2's ByteLevel pre-tokenizer and decoder (no prefix space)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    if encoder is None:
        encoder, merges = read_vocab(vocab_dir)
    tok = Tokenizer(models.BPE(vocab=dict(encoder), merges=list(merges)))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


_BUILT = {}


def peers(vocab_dir):
    """(tiktoken Encoding, HF Tokenizer) for vocab_dir, built once per process (each takes ~0.5 s)."""
    if vocab_dir not in _BUILT:
        encoder, merges = read_vocab(vocab_dir)
        _BUILT[vocab_dir] = (tiktoken_encoding(encoder=encoder), hf_tokenizer(encoder=encoder, merges=merges))
    return _BUILT[vocab_dir]
