"""GPT-2's tokenizer: load and check the vocabulary files, then encode and decode through the compiled BPE.

    tok = gpt2cy.get_tokenizer()                    # a cached model's vocabulary (gpt2cy.hub.get_tokenizer)
    tok = gpt2cy.Tokenizer.from_dir("models/124M")  # encoder.json + vocab.bpe, or vocab.json + merges.txt
    tok.encode("Hello world")                       # [15496, 995]
    tok.decode([15496, 995])                        # 'Hello world'

Ids match OpenAI's encoder.py, tiktoken's "gpt2" encoding and HF tokenizers' GPT-2 for every string.
The merge loop and the pre-tokenizer are in gpt2cy/text/_bpe.pyx and gpt2cy/text/_pretokenize.pxd (Unicode 16 tables).

tiktoken's Encoding surface is here too (encode_ordinary, encode_batch, encode_ordinary_batch, decode_batch,
decode_bytes_batch, encode_single_token, decode_with_offsets, n_vocab, max_token_value, special_tokens_set,
token_byte_values, is_special_token, eot_token, name), with one deliberate difference: "<|endoftext|>" in
a text is plain text by default (OpenAI's encoder.py, the safe direction for text from users), where
tiktoken's encode raises unless told otherwise; disallowed_special="all" gives tiktoken's behaviour. As in
tiktoken, a name in allowed_special that the vocabulary lacks is ignored. The batch methods split the
texts over num_threads threads; the compiled merge loop runs without the GIL, so they run in parallel.
A Tokenizer pickles (its token bytes and merges; rebuilt on load), so multiprocessing works with fork and
spawn.
"""
from __future__ import annotations

import codecs
import itertools
import json
import operator
import os
from typing import AbstractSet, Collection, Iterable, List, Literal, Mapping, Optional, Sequence, Tuple, Union

from ..errors import InvalidTokenError, TokenizerError
from ..formats.layout import HF_VOCAB, OPENAI_VOCAB, find_vocab

__all__ = ["Tokenizer", "StreamDecoder", "load_encoder", "load_merges", "bytes_to_unicode",
           "ENDOFTEXT"]

ENDOFTEXT = "<|endoftext|>"
GPT2_EOT_ID = 50256

# File names of the two layouts, as (encoder, merges): formats/layout.py's, the one place they are decided.
OPENAI_FILES, HF_FILES = OPENAI_VOCAB, HF_VOCAB

SpecialSet = Union[Literal["all"], AbstractSet[str], Collection[str]]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map, used to spell byte strings in the JSON vocabulary.

    Printable Latin-1 bytes stand for themselves; the 68 others (controls, space, soft hyphen ...) map to
    U+0100 upwards in byte order. Same table as openai/gpt-2 src/encoder.py.
    """
    keep = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(0x100 + extra)
            extra += 1
    return table


_BYTE_ENCODER = bytes_to_unicode()
_BYTE_DECODER = {c: b for b, c in _BYTE_ENCODER.items()}
# str.translate table: alphabet character -> the Latin-1 character of its byte; any other character below
# U+0100 -> U+10FFFF, so that the Latin-1 encode below fails for every character outside the alphabet.
_TO_LATIN1 = {cp: "\U0010FFFF" for cp in range(256)}
_TO_LATIN1.update({ord(c): chr(b) for c, b in _BYTE_DECODER.items()})
# The same map as a codec table: codecs.charmap_encode turns a whole vocabulary's spellings into bytes in one C
# pass (UnicodeEncodeError for any character outside the alphabet); _token_bytes remains for single tokens.
_ALPHABET = "".join(_BYTE_ENCODER[b] for b in range(256))
_CHARMAP = codecs.charmap_build(_ALPHABET)


def _token_bytes(token: str) -> bytes | None:
    """The bytes a vocabulary spelling stands for, or None when it uses a character outside the byte map."""
    try:
        return token.translate(_TO_LATIN1).encode("latin-1")
    except UnicodeEncodeError:
        return None


def _line_of(text: str, needle: str) -> int:
    """1-based line of the first occurrence of `needle` in `text` (1 when absent), for error messages."""
    pos = text.find(needle)
    return text.count("\n", 0, pos) + 1 if pos >= 0 else 1


class _Pairs(list):
    """A JSON object as json.loads read it: its (key, value) pairs, duplicates kept."""


def _encoder_ok(encoder: dict, n_pairs: int) -> bytes | None:
    """Every check of _check_encoder at once, with C-speed builtins: the bytes of all spellings joined in dict order
    when all pass, None to run _check_encoder for the error."""
    n = len(encoder)
    ids = encoder.values()
    if not n or n != n_pairs or set(map(type, ids)) != {int} or sorted(ids) != list(range(n)):
        return None
    if encoder.get(ENDOFTEXT) != GPT2_EOT_ID or not all(c in encoder for c in _BYTE_DECODER):
        return None
    try:
        return codecs.charmap_encode("".join(encoder), "strict", _CHARMAP)[0]   # <|endoftext|> is in the alphabet too
    except UnicodeEncodeError:
        return None


def load_encoder(path: str) -> dict[str, int]:
    """Read and check encoder.json / vocab.json: a JSON object str -> int with ids exactly 0..n-1."""
    return _read_encoder(path)[0]


def _read_encoder(path: str) -> tuple[dict[str, int], bytes | None]:
    """load_encoder, also giving the bytes of the spellings joined in dict order when the fast path worked."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise TokenizerError(f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise TokenizerError(f"{path}: not UTF-8 text (byte {e.start})") from None
    # Fast path: parse keeping duplicate keys, then check everything in bulk. Any problem (a JSON error, a
    # nested object, a duplicate ...) goes to _check_encoder, which finds the first defect and names its line.
    try:
        pairs = json.loads(text, object_pairs_hook=_Pairs)
    except (ValueError, RecursionError):
        pairs = None
    if type(pairs) is _Pairs:
        encoder = dict(pairs)
        joined = _encoder_ok(encoder, len(pairs))
        if joined is not None:
            return encoder, joined
    return _check_encoder(path, text), None


def _check_encoder(path: str, text: str) -> dict[str, int]:
    """load_encoder item by item: raises TokenizerError for the first defect, with its line (slow, but exact)."""

    def pairs_hook(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise TokenizerError(f"{path} line {_line_of(text, json.dumps(key, ensure_ascii=False))}: "
                                     f"token {key!r} appears twice")
            seen.add(key)
        return dict(pairs)

    try:
        encoder = json.loads(text, object_pairs_hook=pairs_hook)
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{path} line {e.lineno}: invalid JSON: {e.msg}") from None
    except RecursionError:
        raise TokenizerError(f"{path} line 1: invalid JSON: nested too deeply") from None
    if not isinstance(encoder, dict):
        raise TokenizerError(f"{path} line 1: expected a JSON object of token -> id, got {type(encoder).__name__}")
    if not encoder:
        raise TokenizerError(f"{path} line 1: the vocabulary is empty")
    seen: dict[int, str] = {}
    for token, i in encoder.items():
        if type(i) is not int:
            raise TokenizerError(f"{path} line {_line_of(text, json.dumps(token, ensure_ascii=False))}: "
                                 f"id of {token!r} is {i!r}, not an integer")
        if i in seen:
            raise TokenizerError(f"{path} line {_line_of(text, json.dumps(token, ensure_ascii=False))}: "
                                 f"id {i} is used by both {seen[i]!r} and {token!r}")
        seen[i] = token
        if token != ENDOFTEXT and _token_bytes(token) is None:
            raise TokenizerError(f"{path} line {_line_of(text, json.dumps(token, ensure_ascii=False))}: "
                                 f"{token!r} is not spelled in GPT-2's byte alphabet")
    n = len(encoder)
    bad = next((i for i in seen if not 0 <= i < n), None)
    if bad is not None:
        token = seen[bad]
        raise TokenizerError(f"{path} line {_line_of(text, json.dumps(token, ensure_ascii=False))}: "
                             f"id {bad} of {token!r} is outside 0..{n - 1} (ids must be exactly 0..n-1)")
    missing = [c for c in _BYTE_DECODER if c not in encoder]
    if missing:
        raise TokenizerError(f"{path}: the single-byte token {missing[0]!r} (byte {_BYTE_DECODER[missing[0]]}) "
                             f"is missing; BPE needs all 256")
    if ENDOFTEXT not in encoder:
        raise TokenizerError(f"{path}: {ENDOFTEXT!r} is missing")
    if encoder[ENDOFTEXT] != GPT2_EOT_ID:
        raise TokenizerError(f"{path} line {_line_of(text, json.dumps(ENDOFTEXT))}: {ENDOFTEXT!r} has id "
                             f"{encoder[ENDOFTEXT]}, GPT-2's is {GPT2_EOT_ID}")
    return encoder


def _merges_lines(path: str) -> list[str]:
    """The lines of a merges file, header checked, without line ends."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
    except OSError as e:
        raise TokenizerError(f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise TokenizerError(f"{path}: not UTF-8 text (byte {e.start})") from None
    if lines and lines[-1] == "":
        lines.pop()                                  # the newline that ends the last line
    if lines and lines[0].endswith("\r"):            # Windows line ends
        lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    if not lines or not lines[0].startswith("#version:"):
        raise TokenizerError(f"{path} line 1: expected the header '#version: 0.2'")
    return lines


def load_merges(path: str, encoder: Mapping[str, int]) -> list[tuple[str, str]]:
    """Read and check vocab.bpe / merges.txt: a '#version:' line, then one 'left right' pair per line.

    Each pair's parts must be single bytes or results of earlier merges, and each part and result must be in
    the encoder (that is what BPE training produces, and what makes rank order well defined).
    """
    return _check_merges(path, _merges_lines(path), encoder)


def _check_merges(path: str, lines: list[str], encoder: Mapping[str, int]) -> list[tuple[str, str]]:
    """load_merges line by line: raises TokenizerError for the first bad line (slow, but names the problem)."""
    made = set(_BYTE_DECODER)
    merges = []
    for lineno, line in enumerate(lines[1:], start=2):
        pair = line.split(" ")
        if len(pair) == 2:
            left, right = pair
            merged = left + right
            if left in made and right in made and merged not in made and merged in encoder:
                made.add(merged)
                merges.append((left, right))
                continue
        raise TokenizerError(f"{path} line {lineno}: {_merge_problem(line, encoder, made, merges)}")
    return merges


def _merge_problem(line: str, encoder: Mapping[str, int], made: set, merges: list) -> str:
    """Why a merges line is rejected (only called for a bad line, so it may be slow)."""
    pair = line.rstrip("\r").split(" ")
    if len(pair) != 2 or not pair[0] or not pair[1] or line != line.rstrip("\r"):
        return f"expected two tokens separated by one space, got {line!r}"
    left, right = pair
    for part in (left, right):
        if part not in encoder:
            return f"{part!r} is not in the encoder"
        if part not in made:
            return f"{part!r} is used before a merge creates it"
    if left + right not in encoder:
        return f"the merged token {left + right!r} is not in the encoder"
    if (left, right) in merges:
        return f"the merge {line!r} appears twice"
    return f"the merge {line!r} makes {left + right!r}, which an earlier merge already makes"


def _check_model_vocab(path: str, n_vocab: int) -> None:
    """When the directory also holds a model's hyperparameters, their vocabulary size must agree."""
    for fname, key in (("hparams.json", "n_vocab"), ("config.json", "vocab_size")):
        fpath = os.path.join(path, fname)
        if not os.path.isfile(fpath):
            continue
        try:
            with open(fpath, encoding="utf-8") as f:
                value = json.load(f).get(key)
        except (OSError, ValueError, AttributeError, RecursionError):
            continue                                  # the checkpoint loader reports broken hparams
        if isinstance(value, int) and value != n_vocab:
            raise TokenizerError(f"{fpath}: {key} is {value} but the vocabulary has {n_vocab} tokens")


def _bytes_by_id(encoder: Mapping[str, int], joined: bytes | None = None) -> list[bytes]:
    """The bytes of every token, by id; `joined` may give the bytes of all spellings in dict order already."""
    n = len(encoder)
    ids = list(encoder.values())
    if ids == list(range(n)):                        # the usual file order: no sort needed
        spellings = list(encoder)
    elif sorted(ids) == list(range(n)):
        spellings, joined = sorted(encoder, key=encoder.__getitem__), None
    else:
        raise TokenizerError("token ids must be exactly 0..n-1")
    # All spellings -> bytes in one codec pass, then cut at the spelling lengths (one byte per character).
    # <|endoftext|> is printable ASCII, which the alphabet spells as itself, so it comes out as its own text.
    if joined is None:
        try:
            joined = codecs.charmap_encode("".join(spellings), "strict", _CHARMAP)[0]
        except UnicodeEncodeError:
            bad = next(t for t in spellings if t != ENDOFTEXT and _token_bytes(t) is None)
            raise TokenizerError(f"{bad!r} is not spelled in GPT-2's byte alphabet") from None
    ends = list(itertools.accumulate(map(len, spellings)))
    return list(map(joined.__getitem__, map(slice, [0, *ends[:-1]], ends)))


class StreamDecoder:
    """Turns token ids, fed one at a time, into text that only ever holds whole UTF-8 characters.

    A character split across tokens is held back until its last byte arrives, so a terminal never shows
    half a character or a transient U+FFFD; bytes that can never form a character become U+FFFD at once.
    """

    def __init__(self, tokenizer: "Tokenizer", errors: str = "replace"):
        self._token_bytes = tokenizer.decode_single_token_bytes
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors)

    def feed(self, token_id: int) -> str:
        """Text completed by this token ('' while a character is still incomplete)."""
        return self._decoder.decode(self._token_bytes(token_id))

    def flush(self) -> str:
        """Whatever is held back (U+FFFD for an unfinished character), and start afresh."""
        text = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        return text


class Tokenizer:
    """GPT-2's byte-level BPE tokenizer (tiktoken-compatible surface).

    Build with Tokenizer.from_dir(path) or gpt2cy.get_tokenizer(); the constructor takes an already checked
    vocabulary: `encoder` maps GPT-2's byte-alphabet spellings to ids 0..n-1 and `merges` lists the merge pairs
    in rank order.
    """

    def __init__(self, encoder: Mapping[str, int], merges: Sequence[tuple[str, str]], *, name: str = "gpt2"):
        token_bytes = _bytes_by_id(encoder)
        if merges:
            lefts, rights = zip(*merges)
            get = encoder.__getitem__
            try:
                merge_ids = list(zip(map(get, lefts), map(get, rights), map(get, map(operator.add, lefts, rights))))
            except KeyError as e:
                raise TokenizerError(f"the token {e.args[0]!r} is missing from the encoder") from None
        else:
            merge_ids = []
        self._build(encoder, token_bytes, merge_ids, name)

    def _build(self, encoder: Mapping[str, int], token_bytes: list[bytes], merge_ids, name: str) -> None:
        """Set up from the encoder, its tokens' bytes by id and the merges as (left, right, merged) ids by rank."""
        special = {ENDOFTEXT: encoder[ENDOFTEXT]} if ENDOFTEXT in encoder else {}
        try:
            byte_ids = [encoder[_BYTE_ENCODER[b]] for b in range(256)]
        except KeyError as e:
            raise TokenizerError(f"the token {e.args[0]!r} is missing from the encoder") from None
        self._setup(token_bytes, byte_ids, merge_ids, special, name)

    def _setup(self, token_bytes: list[bytes], byte_ids: list[int], merge_ids, special: Mapping[str, int],
               name: str) -> None:
        """Build the compiled core from plain ids (what _build derives, and what a pickle holds)."""
        import numpy as np
        from ._bpe import BPECore
        n = len(token_bytes)
        mergeable = [True] * n
        for i in special.values():
            mergeable[i] = False
        merges = np.asarray(merge_ids, dtype=np.int32).reshape(-1, 3)   # kept for pickling: 12 bytes a merge
        try:
            self._core = BPECore(token_bytes, list(byte_ids), merges, mergeable)
        except ValueError as e:
            raise TokenizerError(str(e)) from None
        self._special: dict[str, int] = dict(special)
        self._byte_ids = list(byte_ids)
        self._merges = merges
        self._by_bytes: Optional[dict] = None              # bytes -> id, built by encode_single_token
        self.name = name
        self.n_vocab: int = n
        """Number of token ids, special ones included (50257 for GPT-2)."""
        self.eot_token: int | None = self._special.get(ENDOFTEXT)
        """Id of <|endoftext|> (50256 for GPT-2)."""

    def __reduce__(self):
        """Pickle as the token bytes, byte ids, merges and special tokens; unpickling rebuilds the core
        (~0.1 s), so a Tokenizer crosses to spawned processes (multiprocessing, concurrent.futures)."""
        core = self._core
        token_bytes = [core.token_bytes(i) for i in range(self.n_vocab)]
        return (_restore, (token_bytes, self._byte_ids, self._merges, dict(self._special), self.name))

    # ---- construction --------------------------------------------------------------------------------------

    @classmethod
    def from_files(cls, encoder_path: str, merges_path: str, *, name: str = "gpt2") -> "Tokenizer":
        """Load encoder.json + vocab.bpe (or vocab.json + merges.txt) from explicit paths, checking both."""
        from ._bpe import merge_ids
        encoder, joined = _read_encoder(encoder_path)
        lines = _merges_lines(merges_path)
        token_bytes = _bytes_by_id(encoder, joined)
        # Fast path: the merges are parsed and looked up in C, and BPECore checks their order. On any failure,
        # _check_merges goes through them line by line to name the first bad one.
        ids = merge_ids(token_bytes, "\n".join(lines[1:]), _ALPHABET)
        if ids is not None:
            tok = cls.__new__(cls)
            try:
                tok._build(encoder, token_bytes, ids, name)
                return tok
            except TokenizerError:
                pass
        return cls(encoder, _check_merges(merges_path, lines, encoder), name=name)

    @classmethod
    def from_dir(cls, path: str) -> "Tokenizer":
        """Load the vocabulary in `path`: OpenAI's layout (encoder.json, vocab.bpe) or HF's (vocab.json, merges.txt).

        When the directory holds hparams.json / config.json, their vocabulary size must agree.
        """
        path = os.fspath(path)
        if not os.path.isdir(path):
            raise TokenizerError(f"{path}: not a directory")
        found = find_vocab(path)
        if found is not None:
            tok = cls.from_files(*found, name=os.path.basename(os.path.abspath(path)))
            _check_model_vocab(path, tok.n_vocab)
            return tok
        raise TokenizerError(f"{path}: no vocabulary files (need {' + '.join(OPENAI_FILES)} "
                             f"or {' + '.join(HF_FILES)})")

    def __repr__(self) -> str:
        return f"<Tokenizer {self.name!r} n_vocab={self.n_vocab}>"

    # ---- encoding ------------------------------------------------------------------------------------------

    @property
    def special_tokens_set(self) -> set[str]:
        """Names of the special tokens ({"<|endoftext|>"} for GPT-2)."""
        return set(self._special)

    @property
    def max_token_value(self) -> int:
        """The largest token id (50256 for GPT-2), as tiktoken's Encoding.max_token_value."""
        return self.n_vocab - 1

    def is_special_token(self, token: int) -> bool:
        """True for the id of a special token (50256, <|endoftext|>, for GPT-2)."""
        return token in self._special.values()

    def token_byte_values(self) -> list[bytes]:
        """The bytes of every ordinary (mergeable) token, sorted, as tiktoken's Encoding.token_byte_values."""
        special = set(self._special.values())
        core = self._core
        return sorted(core.token_bytes(i) for i in range(self.n_vocab) if i not in special)

    def encode_single_token(self, text_or_bytes: Union[str, bytes]) -> int:
        """The id of the one token spelled exactly `text_or_bytes` (a special token's name too); KeyError
        when no single token is, as tiktoken raises.

        >>> tok.encode_single_token(" world")
        995
        """
        if isinstance(text_or_bytes, str):
            piece = text_or_bytes.encode("utf-8", "surrogatepass")
        elif isinstance(text_or_bytes, (bytes, bytearray, memoryview)):
            piece = bytes(text_or_bytes)
        else:
            raise TypeError(f"expected str or bytes, not {type(text_or_bytes).__name__}")
        if self._by_bytes is None:
            special = set(self._special.values())
            core = self._core
            self._by_bytes = {core.token_bytes(i): i for i in range(self.n_vocab) if i not in special}
        found = self._by_bytes.get(piece)
        if found is not None:
            return found
        try:
            return self._special[piece.decode("utf-8")]
        except (UnicodeDecodeError, KeyError):
            raise KeyError(text_or_bytes) from None

    def _specials(self, text: str, allowed_special: SpecialSet, disallowed_special: SpecialSet) -> AbstractSet[str]:
        """The special tokens to honour in `text`; ValueError for unknown names or a disallowed one present."""
        if allowed_special == "all":
            allowed = set(self._special)
        else:
            if isinstance(allowed_special, str):
                raise ValueError(f"allowed_special must be 'all' or a set of token names, not {allowed_special!r}")
            allowed = set(allowed_special) & set(self._special)   # names it lacks are ignored, as tiktoken
        if disallowed_special == "all":
            disallowed = set(self._special) - allowed
        elif isinstance(disallowed_special, str):
            raise ValueError(f"disallowed_special must be 'all' or a set of token names, not {disallowed_special!r}")
        else:
            disallowed = set(disallowed_special)
        for name in disallowed:
            if name in text:
                raise ValueError(f"the text contains the special token {name!r}; pass allowed_special={{{name!r}}} "
                                 f"to encode it as a special token or disallowed_special=() to encode it as text")
        return allowed

    def _encode_ordinary(self, text: str, to_numpy: bool):
        if not isinstance(text, str):
            raise TypeError(f"text must be str, not {type(text).__name__}")
        encode = self._core.encode_to_numpy if to_numpy else self._core.encode
        try:
            return encode(text)
        except UnicodeEncodeError:
            # Lone surrogates (e.g. from surrogateescape): join valid pairs and replace the rest with U+FFFD,
            # exactly as tiktoken does.
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
            return encode(text)

    def encode_ordinary(self, text: str) -> list[int]:
        """Token ids of `text`, with every special-token spelling treated as plain text."""
        return self._encode_ordinary(text, False)

    def encode(self, text: str, *, allowed_special: SpecialSet = frozenset(),
               disallowed_special: SpecialSet = ()) -> list[int]:
        """Token ids of `text`.

        By default "<|endoftext|>" in the text is plain text (several tokens). allowed_special="all" or
        {"<|endoftext|>"} turns it into the single id 50256; disallowed_special="all" makes it a ValueError
        (tiktoken's default).

        >>> tok.encode("hello world")
        [31373, 995]
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be str, not {type(text).__name__}")
        if not allowed_special and not disallowed_special:
            return self._encode_ordinary(text, False)
        allowed = self._specials(text, allowed_special, disallowed_special)
        if not allowed or not any(name in text for name in allowed):
            return self._encode_ordinary(text, False)
        out: list[int] = []
        for segment, special in self._split_special(text, allowed):
            if segment:
                out += self._encode_ordinary(segment, False)
            if special is not None:
                out.append(self._special[special])
        return out

    def _split_special(self, text: str, allowed: AbstractSet[str]):
        """Yield (ordinary segment, following special token name or None), leftmost special first."""
        start = 0
        while True:
            hits = [(text.find(name, start), name) for name in allowed]
            hits = [(pos, -len(name), name) for pos, name in hits if pos >= 0]
            if not hits:
                yield text[start:], None
                return
            pos, _, name = min(hits)
            yield text[start:pos], name
            start = pos + len(name)

    def encode_to_numpy(self, text: str, *, allowed_special: SpecialSet = frozenset(),
                        disallowed_special: SpecialSet = ()):
        """Like encode, returned as a numpy uint32 array (tiktoken's dtype)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be str, not {type(text).__name__}")
        if not allowed_special and not disallowed_special:
            return self._encode_ordinary(text, True)
        import numpy as np
        return np.asarray(self.encode(text, allowed_special=allowed_special,
                                      disallowed_special=disallowed_special), dtype=np.uint32)

    # ---- batches (tiktoken's *_batch methods) ---------------------------------------------------------------

    def encode_ordinary_batch(self, texts: Sequence[str], *, num_threads: int = 8) -> list[list[int]]:
        """encode_ordinary() of each text, on up to num_threads threads (the merging runs without the GIL)."""
        texts = _text_list(texts)
        if sum(map(len, texts)) < _THREADED_CHARS:       # too little work to pay for starting threads
            _check_threads(num_threads)
            num_threads = 1
        runs = _map_chunks(self._core.encode_batch, texts, num_threads)
        out = [ids for run in runs for ids in run]
        for i, ids in enumerate(out):
            if ids is None:                            # a lone surrogate: cleaned as encode() cleans it
                out[i] = self._encode_ordinary(texts[i], False)
        return out

    def encode_batch(self, texts: Sequence[str], *, num_threads: int = 8, allowed_special: SpecialSet = frozenset(),
                     disallowed_special: SpecialSet = ()) -> list[list[int]]:
        """encode() of each text, on up to num_threads threads. The special-token arguments are encode()'s
        (so, unlike tiktoken's default, "<|endoftext|>" is text unless allowed_special names it)."""
        texts = _text_list(texts)
        if not allowed_special and not disallowed_special:
            return self.encode_ordinary_batch(texts, num_threads=num_threads)
        # split every text at its special tokens, encode all the ordinary pieces in one batch, put back
        plans, pieces = [], []
        for text in texts:
            allowed = self._specials(text, allowed_special, disallowed_special)
            plan = []
            if allowed and any(name in text for name in allowed):
                for segment, special in self._split_special(text, allowed):
                    if segment:
                        plan.append(len(pieces))
                        pieces.append(segment)
                    if special is not None:
                        plan.append(-1 - self._special[special])
            else:
                plan.append(len(pieces))
                pieces.append(text)
            plans.append(plan)
        encoded = self.encode_ordinary_batch(pieces, num_threads=num_threads)
        out = []
        for plan in plans:
            ids: list[int] = []
            for step in plan:
                if step >= 0:
                    ids += encoded[step]
                else:
                    ids.append(-1 - step)
            out.append(ids)
        return out

    def decode_bytes_batch(self, batch: Sequence[Sequence[int]], *, num_threads: int = 8) -> list[bytes]:
        """decode_bytes() of each list of ids. Joining bytes is a copy per token, so one thread usually
        suffices; num_threads is tiktoken's argument (threads share the GIL while reading Python ints)."""
        return [b for run in _map_chunks(lambda part: [self.decode_bytes(ids) for ids in part],
                                         list(batch), num_threads) for b in run]

    def decode_batch(self, batch: Sequence[Sequence[int]], *, errors: str = "replace",
                     num_threads: int = 8) -> list[str]:
        """decode() of each list of ids (see decode_bytes_batch about threads)."""
        return [t for run in _map_chunks(lambda part: [self.decode(ids, errors) for ids in part],
                                         list(batch), num_threads) for t in run]

    # ---- decoding ------------------------------------------------------------------------------------------

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The bytes of the tokens joined. InvalidTokenError (a TokenizerError and ValueError) for an id outside
        the vocabulary, worded as gpt2cy.ids.check_ids words it; TypeError for a non-integer."""
        try:
            return self._core.decode_bytes(ids)
        except OverflowError:             # an id past int64: the message of gpt2cy.ids.check_ids
            raise InvalidTokenError(f"a token id is outside the vocabulary [0, {self.n_vocab})") from None

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        """Text of the tokens: their bytes decoded as UTF-8 (invalid bytes become U+FFFD by default).

        >>> tok.decode([15496, 995])
        'Hello world'
        """
        try:
            return self._core.decode(ids, errors)
        except OverflowError:             # an id past int64: the message of gpt2cy.ids.check_ids
            raise InvalidTokenError(f"a token id is outside the vocabulary [0, {self.n_vocab})") from None
        except LookupError:
            raise ValueError(f"unknown error handler {errors!r}") from None

    def decode_single_token_bytes(self, token: int) -> bytes:
        """The bytes of one token (InvalidTokenError as gpt2cy.ids.check_id raises it for an id outside the
        vocabulary)."""
        try:
            return self._core.token_bytes(token)
        except (TypeError, OverflowError):
            if isinstance(token, int) or hasattr(token, "__index__"):
                raise InvalidTokenError(f"token id {token} is outside the vocabulary [0, {self.n_vocab})") from None
            raise TypeError(f"a token id must be an integer, not {type(token).__name__}") from None

    def decode_tokens_bytes(self, ids: Iterable[int]) -> list[bytes]:
        """The bytes of each token, separately."""
        return [self.decode_single_token_bytes(i) for i in ids]

    def decode_with_offsets(self, ids: Sequence[int]) -> Tuple[str, List[int]]:
        """(text, offsets): the text of the tokens and, for each token, the index in the text of the
        character its first byte belongs to (a token that starts inside a character points at that
        character), as tiktoken's Encoding.decode_with_offsets. The bytes must be valid UTF-8
        (UnicodeDecodeError otherwise, as tiktoken).

        >>> tok.decode_with_offsets([15496, 995])
        ('Hello world', [0, 5])
        """
        pieces = self.decode_tokens_bytes(ids)
        text = b"".join(pieces).decode("utf-8", "strict")
        offsets, chars = [], 0                   # characters begun so far = bytes that are not 10xxxxxx
        for piece in pieces:
            inside = bool(piece) and 0x80 <= piece[0] < 0xC0
            offsets.append(chars - 1 if inside and chars else chars)
            chars += sum(1 for b in piece if not 0x80 <= b < 0xC0)
        return text, offsets

    def stream_decoder(self, errors: str = "replace") -> StreamDecoder:
        """An incremental decoder: .feed(id) -> str of whole characters only, .flush() -> the rest."""
        return StreamDecoder(self, errors)


def _restore(token_bytes, byte_ids, merges, special, name) -> Tokenizer:
    """Unpickle a Tokenizer (see Tokenizer.__reduce__)."""
    tok = Tokenizer.__new__(Tokenizer)
    tok._setup(token_bytes, byte_ids, merges, special, name)
    return tok


def _text_list(texts) -> list:
    if isinstance(texts, str):
        raise TypeError("expected a list of str, got one str (use encode for a single text)")
    return list(texts)


_THREADED_CHARS = 1 << 16


def _check_threads(num_threads) -> int:
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(f"num_threads must be a positive integer, got {num_threads!r}")
    return num_threads


def _map_chunks(fn, items: list, num_threads: int) -> list:
    """[fn(chunk) for each of up to num_threads contiguous chunks of items], the chunks on threads."""
    n = min(_check_threads(num_threads), len(items))
    if n <= 1:
        return [fn(items)]
    from concurrent.futures import ThreadPoolExecutor
    bounds = [len(items) * k // n for k in range(n + 1)]
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(fn, [items[bounds[k]:bounds[k + 1]] for k in range(n)]))
