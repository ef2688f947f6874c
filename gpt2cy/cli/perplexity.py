"""`gpt2cy perplexity FILE...`: how well the model predicts each file, and all of them together.

Each file is scored as the Transformers perplexity guide scores a text (gpt2cy.generation.scoring): windows
of -c tokens (default: the model's context) starting every --stride tokens (default half the window), each
counting only the tokens the window before did not reach. Files are streamed: read in pieces, decoded,
tokenized at cuts where the tokenization cannot change (a space between two word characters) and fed to a
StreamScorer, so a file of any size needs memory for one window and one pass's logits, and the result is the
one of scoring the whole text at once.

Output per file and overall: perplexity (exp of the mean NLL), mean NLL in nats per token, bits per byte
(the total NLL in bits over the file's bytes) and the tokens counted. Text on stdout, or one JSON object
with --json. Bytes that are not UTF-8 are an error naming the offset (exit 1), or U+FFFD with a notice under
--errors replace. Progress goes to stderr on long inputs ($GPT2CY_NO_PROGRESS=1 silences it).
"""
from __future__ import annotations

import json
import math
import os
import stat
import sys
import time

from .commands import _n

NAME = "perplexity"
HELP = "score files: perplexity, mean NLL, bits per byte"
DESCRIPTION = ("Perplexity of each FILE (and of all together) under the model, with the Transformers "
               "guide's sliding window: windows of -c tokens every --stride tokens, each token counted once. "
               "Files are streamed; - reads stdin.")

READ_BYTES = 1 << 18            # bytes read per piece (tests make it tiny to cross every boundary)
_FEED = 4096                    # tokens handed to the scorer at a time
_LN2 = math.log(2.0)


def add_arguments(p) -> None:
    from .parser import _number
    p.add_argument("files", nargs="+", metavar="FILE", help="text files (UTF-8); - reads stdin")
    p.add_argument("--stride", type=_number(int, "stride", 1), default=None, metavar="N",
                   help="tokens between window starts (default: half the window; at most the window, -c)")
    p.add_argument("--json", action="store_true", help="print one JSON object: per file and total")
    p.add_argument("--errors", choices=("strict", "replace"), default="strict",
                   help="bytes that are not UTF-8: strict (default) fails naming the offset; replace reads "
                        "them as U+FFFD, with a notice")


# ------------------------------------------------------------------------------------ input

def check_files(paths) -> None:
    """One-line errors for a missing file, a directory or an unreadable one, before the model loads."""
    from ..errors import GPT2CyError
    for path in paths:
        if path == "-":
            continue
        try:
            st = os.stat(path)
        except OSError as e:
            raise GPT2CyError(f"{path}: {e.strerror or 'cannot be read'}") from None
        if stat.S_ISDIR(st.st_mode):
            raise GPT2CyError(f"{path} is a directory, not a text file")
        if not os.access(path, os.R_OK):
            raise GPT2CyError(f"{path}: permission denied")


def _incomplete_tail(buf: bytes) -> int:
    """How many bytes at the end of buf begin a UTF-8 sequence that the next piece may complete."""
    for back in range(1, min(4, len(buf)) + 1):
        b = buf[-back]
        if 0x80 <= b < 0xC0:                     # a continuation byte: look further back for the lead
            continue
        need = 2 if 0xC0 <= b < 0xE0 else 3 if 0xE0 <= b < 0xF0 else 4 if 0xF0 <= b < 0xF8 else 1
        return back if need > back else 0
    return 0


class Utf8Pieces:
    """Decode a byte stream piece by piece with the error policy of --errors; offsets are the stream's."""

    def __init__(self, name: str, errors: str):
        self.name, self.errors = name, errors
        self.offset = 0                  # bytes consumed (decoded or pending)
        self.pending = b""
        self.first_bad = None            # (offset, byte) of the first invalid byte (replace mode)
        self.n_bad = 0

    def decode(self, data: bytes, final: bool = False) -> str:
        from .terminal import InputEncodingError
        base = self.offset - len(self.pending)
        self.offset += len(data)
        nul = data.find(b"\0")
        if nul >= 0:
            raise InputEncodingError(f"{self.name} is not a text file: a NUL byte at offset "
                                     f"{self.offset - len(data) + nul}")
        buf = self.pending + data
        hold = 0 if final else _incomplete_tail(buf)
        buf, self.pending = (buf[:len(buf) - hold], buf[len(buf) - hold:]) if hold else (buf, b"")
        try:
            return buf.decode("utf-8")
        except UnicodeDecodeError as e:
            where, byte = base + e.start, buf[e.start]
        if self.errors != "replace":
            raise InputEncodingError(f"{self.name} is not valid UTF-8: byte 0x{byte:02x} at offset {where} "
                                     f"(--errors replace reads such bytes as U+FFFD)")
        text = buf.decode("utf-8", "replace")
        if self.first_bad is None:
            self.first_bad = (where, byte)
        self.n_bad += text.count("\ufffd") - buf.count("\ufffd".encode("utf-8"))
        return text


def safe_cut(text: str) -> int:
    """The last index i where the tokenization of text[:i] + text[i:] equals that of text: a space with a
    non-space character on each side (no GPT-2 pre-token runs across it: it begins " word"); 0 if none."""
    i = len(text) - 1
    while True:
        i = text.rfind(" ", 1, i)
        if i <= 0:
            return 0
        if i + 1 < len(text) and not text[i - 1].isspace() and not text[i + 1].isspace():
            return i


def iter_texts(stream, decoder: Utf8Pieces):
    """Yield pieces of text whose tokens, concatenated, are the tokens of the whole stream."""
    carry = ""
    while True:
        data = stream.read(READ_BYTES)
        final = not data
        carry += decoder.decode(data or b"", final=final)
        if final:
            if carry:
                yield carry
            return
        cut = safe_cut(carry)
        if cut:
            yield carry[:cut]
            carry = carry[cut:]


# ------------------------------------------------------------------------------------ progress

class _Progress:
    def __init__(self, label: str, total: int | None):
        from ..hub.progress import progress_enabled
        self.label, self.total = label, total
        self.enabled = progress_enabled()
        self.tty = bool(getattr(sys.stderr, "isatty", lambda: False)())
        self.t0 = self.last = time.perf_counter()
        self.drawn = False

    def update(self, done_bytes: int, tokens: int, mean_nll: float) -> None:
        now = time.perf_counter()
        if not self.enabled or now - self.t0 < 2.0 or now - self.last < (0.5 if self.tty else 15.0):
            return
        self.last = now
        from ..hub.progress import format_bytes
        share = f" ({100 * done_bytes / self.total:.0f}%)" if self.total else ""
        ppl = f", perplexity so far {math.exp(mean_nll):.3f}" if not math.isnan(mean_nll) else ""
        line = (f"{self.label}: {format_bytes(done_bytes)}{share}, {_n(tokens, 'token')}, "
                f"{tokens / (now - self.t0):.0f} tokens/s{ppl}")
        if self.tty:
            sys.stderr.write("\r\x1b[K" + line)
            self.drawn = True
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.drawn:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


# ------------------------------------------------------------------------------------ scoring

def _totals(nll: float, count: int, n_bytes: int) -> dict:
    mean = nll / count
    return {"perplexity": math.exp(mean), "mean_nll": mean,
            "bits_per_byte": nll / _LN2 / n_bytes if n_bytes else None, "tokens": count}


def score_file(model, path: str, n_ctx: int, stride: int, errors: str, batch: int) -> dict:
    """Stream one file (or stdin, "-") through a StreamScorer; its totals as a dict."""
    from ..errors import GPT2CyError
    from ..generation.scoring import StreamScorer
    from ..notices import notice
    name = "stdin" if path == "-" else path
    tok = model.tokenizer
    scorer = StreamScorer(model, n_ctx, stride, batch=batch)
    decoder = Utf8Pieces(name, errors)
    stream = sys.stdin.buffer if path == "-" else open(path, "rb")
    try:
        total = None if path == "-" else os.fstat(stream.fileno()).st_size
        progress = _Progress(name, total)
        try:
            for text in iter_texts(stream, decoder):
                ids = tok.encode_to_numpy(text, allowed_special="all")
                for a in range(0, len(ids), _FEED):      # progress between windows, not only between pieces
                    scorer.feed(ids[a:a + _FEED])
                    progress.update(decoder.offset, scorer.n_tokens, scorer.mean_nll)
            scorer.finish()
        finally:
            progress.close()
    finally:
        if path != "-":
            stream.close()
    if decoder.first_bad is not None:
        where, byte = decoder.first_bad
        notice(f"{name} is not valid UTF-8: {decoder.n_bad} invalid sequence{'' if decoder.n_bad == 1 else 's'}, "
               f"the first at byte offset {where} (0x{byte:02x}), read as U+FFFD (--errors replace)")
    if scorer.count == 0:
        what = "is empty" if scorer.n_tokens == 0 else "is one token long"
        raise GPT2CyError(f"{name} {what}: perplexity needs at least 2 tokens (the first is never scored)")
    nll = -scorer.sum_logprob
    out = {"file": name, **_totals(nll, scorer.count, decoder.offset), "n_tokens": scorer.n_tokens,
           "bytes": decoder.offset, "nll": nll}
    return out


def _load(args, n_ctx_hint: int | None):
    """The model with slots and rows for several windows a pass when the window is short."""
    from ..loading import load
    from ..notices import notice
    from .commands import _threads
    from .parser import DEFAULT_MODEL, UsageError
    threads = _threads(args)
    if args.ctx_size is not None:
        from ..hub.models import PUBLISHED, canonical_name
        size = canonical_name(args.model or DEFAULT_MODEL)
        if size is not None and args.ctx_size > PUBLISHED[size].n_ctx:
            raise UsageError(f"gpt2cy: --ctx-size {args.ctx_size}: GPT-2 {size}'s context holds at most "
                             f"{PUBLISHED[size].n_ctx} tokens (see gpt2cy perplexity --help)")
    # windows of n tokens: 1024 // n of them share a pass (big row blocks keep the GEMM efficient)
    slots = max(1, min(8, 1024 // n_ctx_hint)) if n_ctx_hint else 1
    t0 = time.perf_counter()
    try:
        model = load(args.model or DEFAULT_MODEL, threads=threads, offline=True if args.offline else None,
                     n_ctx=args.ctx_size, dtype=args.dtype, n_slots=slots,
                     max_rows=slots * n_ctx_hint if n_ctx_hint else None)
    except ValueError as e:
        if args.ctx_size is not None and "n_ctx" in str(e):
            raise UsageError(f"gpt2cy: --ctx-size {args.ctx_size}: {e} (see gpt2cy perplexity --help)") from None
        raise
    if args.verbose:
        notice(f"loaded {model.path} in {(time.perf_counter() - t0) * 1e3:.0f} ms; {model.threads} threads; "
               f"window {model.n_ctx}; weights {model.dtype}")
    return model, slots


def run(args) -> int:
    from ..generation.response import model_name
    from ..generation.scoring import check_window
    from .parser import UsageError
    if args.ctx_size is not None and args.ctx_size < 2:
        raise UsageError("gpt2cy perplexity: --ctx-size must be at least 2: a window of one token scores "
                         "nothing (see gpt2cy perplexity --help)")
    if args.stride is not None and args.ctx_size is not None and args.stride > args.ctx_size:
        raise UsageError(f"gpt2cy perplexity: --stride {args.stride} is longer than the window "
                         f"(--ctx-size {args.ctx_size}): tokens between windows would never be scored")
    if args.files.count("-") > 1:
        raise UsageError("gpt2cy perplexity: stdin (-) can be read only once")
    check_files(args.files)
    model, slots = _load(args, args.ctx_size or 1024)
    try:
        n_ctx, stride = check_window(model, model.n_ctx, args.stride)
    except ValueError as e:
        raise UsageError(f"gpt2cy perplexity: {e}") from None
    errors = "strict" if args.strict else args.errors
    results = [score_file(model, path, n_ctx, stride, errors, slots) for path in args.files]
    nll = sum(r["nll"] for r in results)
    count = sum(r["tokens"] for r in results)
    total = {**_totals(nll, count, sum(r["bytes"] for r in results)), "n_tokens": sum(r["n_tokens"] for r in results),
             "bytes": sum(r["bytes"] for r in results), "nll": nll}
    if args.json:
        print(json.dumps({"model": model_name(model), "dtype": model.dtype, "n_ctx": n_ctx, "stride": stride,
                          "files": results, "total": total}))
        return 0
    rows = results + ([{"file": f"all {len(results)} files", **total}] if len(results) > 1 else [])
    for r in rows:
        bpb = f"{r['bits_per_byte']:.4f}" if r["bits_per_byte"] is not None else "-"
        print(f"{r['file']}: perplexity {r['perplexity']:.4f}, mean NLL {r['mean_nll']:.6f} nats/token, "
              f"{bpb} bits/byte, {_n(r['tokens'], 'token')} scored ({_n(r['bytes'], 'byte')})")
    return 0
