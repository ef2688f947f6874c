"""The `gpt2cy` command's arguments: the parser, its value checks, and the per-command defaults.

Flag spellings follow llama.cpp (-m -t -n -p -f -s -r --temp --top-k ...). Every bad value is a UsageError
(one line, exit 2) raised while parsing, before any model is loaded.
"""
from __future__ import annotations

import argparse
import math
from typing import List

from .. import __version__

COMMANDS = ("chat", "generate", "tokenize", "download", "list", "verify", "serve", "perplexity", "convert")
DEFAULT_MODEL = "124M"

# Per-command defaults: a mild repeat penalty in chat (against the loops of greedy dialogue), none in generate.
DEFAULTS = {
    "chat": dict(max_tokens=128, repeat_penalty=1.1),
    "generate": dict(max_tokens=256, repeat_penalty=1.0),
}


class UsageError(Exception):
    """A mistake on the command line: one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):                       # one line instead of argparse's usage block
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


# -- argument types: each rejects bad values with a one-line reason -------------------------------
def _number(kind, name, lo=None, hi=None, lo_open=False):
    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if kind is float and not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"{name} must be a finite number, got {text!r}")
        if lo is not None and (v <= lo if lo_open else v < lo):
            raise argparse.ArgumentTypeError(f"{name} must be {'>' if lo_open else '>='} {lo}, got {text}")
        if hi is not None and v > hi:
            raise argparse.ArgumentTypeError(f"{name} must be <= {hi}, got {text}")
        return v
    parse.__name__ = name
    return parse


def _model_arg(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a model name (124M, 355M, 774M, 1558M), a directory or a "
                                         "GGUF file, got an empty string")
    return text


_model_arg.__name__ = "model"


def _samplers_arg(text):
    from ..generation.sampling import parse_order
    try:
        return parse_order(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


_samplers_arg.__name__ = "samplers"


def _logit_bias_arg(text):
    import re
    m = re.fullmatch(r"\s*(\d+)\s*([+-])\s*(\d+(?:\.\d*)?|\.\d+)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"expected TOKEN_ID+BIAS or TOKEN_ID-BIAS (e.g. 15043+1), got {text!r}")
    bias = float(m.group(3)) * (1 if m.group(2) == "+" else -1)
    if abs(bias) > 100:
        raise argparse.ArgumentTypeError(f"the bias must be in [-100, 100], got {text!r}")
    return int(m.group(1)), bias


_logit_bias_arg.__name__ = "logit-bias"

# The checks of the sampling flags that SamplingParams' newer fields come from, shared with the REPL's /set
# (the same values accepted, the same messages): flag name -> argument type
SAMPLING_ARGS = {
    "presence-penalty": _number(float, "presence-penalty", -2.0, 2.0),
    "frequency-penalty": _number(float, "frequency-penalty", -2.0, 2.0),
    "min-keep": _number(int, "min-keep", 0),
    "samplers": _samplers_arg,
    "logit-bias": _logit_bias_arg,
}


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("model and run")
    g.add_argument("-m", "--model", type=_model_arg, default=None, metavar="NAME|PATH",
                   help="124M (default), 355M, 774M, 1558M (aliases: gpt2, gpt2-medium, ...), a model directory or a "
                        "GGUF file")
    g.add_argument("-t", "--threads", type=_number(int, "threads", 1), default=None, metavar="N",
                   help="threads for the kernels (default: $GPT2CY_NUM_THREADS or the CPUs available)")
    g.add_argument("-c", "--ctx-size", type=_number(int, "ctx-size", 1), default=None, metavar="N",
                   help="context size in tokens (default and max: the model's, 1024); smaller bounds the "
                        "KV cache's memory")
    g.add_argument("--dtype", choices=("f32", "bf16", "q8_0", "q4_0"), default=None,
                   help="weight type of the matmuls and wte: f32 (default; a GGUF file: its own type), bf16 "
                        "(half the bytes), q8_0 or q4_0 (ggml's 8- and 4-bit blocks, 27%% and 14%% of f32's "
                        "bytes); converted at load")
    g.add_argument("--offline", action="store_true", help="never touch the network ($GPT2CY_OFFLINE=1)")
    g.add_argument("-v", "--verbose", action="store_true", help="load time, seed and speed on stderr")
    g.add_argument("--debug", action="store_true", help="show a traceback on errors")
    g.add_argument("--strict", action="store_true", help="refuse prompt, stdin or preamble bytes that are not "
                                                        "UTF-8 (default: U+FFFD and a notice naming the offset)")
    g.add_argument("--raw-output", action="store_true", help="print control characters in model text as they "
                                                            "are, also on a terminal (default there: escaped, "
                                                            "e.g. \\x1b)")

    sampling = argparse.ArgumentParser(add_help=False)
    s = sampling.add_argument_group("sampling")
    s.add_argument("-n", "--max-tokens", type=_number(int, "max-tokens", -1), default=None, metavar="N",
                   help="tokens to generate (chat: per reply, default 128; generate: 256); -1 = until a stop")
    s.add_argument("--temp", type=_number(float, "temp", 0.0), default=0.8, metavar="F",
                   help="temperature (default 0.8; 0 = greedy argmax)")
    s.add_argument("--greedy", dest="temp", action="store_const", const=0.0, help="same as --temp 0")
    s.add_argument("--top-k", type=_number(int, "top-k", 0), default=40, metavar="N",
                   help="keep the N most likely tokens (default 40; 0 = off)")
    s.add_argument("--top-p", type=_number(float, "top-p", 0.0, 1.0), default=0.95, metavar="F",
                   help="nucleus sampling (default 0.95; 1 = off; 0 = the best token only)")
    s.add_argument("--min-p", type=_number(float, "min-p", 0.0, 1.0), default=0.0, metavar="F",
                   help="drop tokens below F times the best one's probability (default 0 = off)")
    s.add_argument("--repeat-penalty", type=_number(float, "repeat-penalty", 0.0, lo_open=True), default=None,
                   metavar="F", help="penalise recent tokens (chat default 1.1, generate 1.0 = off)")
    s.add_argument("--repeat-last-n", type=_number(int, "repeat-last-n", -1), default=64, metavar="N",
                   help="how many recent tokens the penalty sees (default 64; -1 = all)")
    s.add_argument("--presence-penalty", type=SAMPLING_ARGS["presence-penalty"], default=0.0,
                   metavar="F", help="OpenAI's: lower every token already generated by F (default 0 = off)")
    s.add_argument("--frequency-penalty", type=SAMPLING_ARGS["frequency-penalty"], default=0.0,
                   metavar="F", help="OpenAI's: lower each generated token by F per use (default 0 = off)")
    s.add_argument("-l", "--logit-bias", type=SAMPLING_ARGS["logit-bias"], action="append", default=[],
                   metavar="ID(+/-)BIAS", help="add BIAS in [-100, 100] to token ID's logit, e.g. 15043+1 or "
                                               "50256-100 (repeatable; llama.cpp's spelling)")
    s.add_argument("--min-keep", type=SAMPLING_ARGS["min-keep"], default=1, metavar="N",
                   help="top-k, top-p and min-p keep at least N tokens (default 1)")
    s.add_argument("--samplers", type=SAMPLING_ARGS["samplers"], default=None, metavar="LIST",
                   help="the order the samplers apply in, separated by ';' (llama.cpp's names; default "
                        "\"penalties;temperature;top_k;top_p;min_p\", as transformers; llama.cpp's is "
                        "\"penalties;top_k;top_p;min_p;temperature\"); a sampler left out is not applied")
    s.add_argument("-s", "--seed", type=_number(int, "seed", -1), default=-1, metavar="N",
                   help="random seed (default -1 = random; printed with -v)")
    s.add_argument("-r", "--stop", action="append", default=[], metavar="STR",
                   help="stop when the text contains STR (repeatable; \\n is a newline)")

    parser = _Parser(prog="gpt2cy", description="OpenAI's GPT-2 on the CPU. Without a command: chat.",
                     epilog="Run `gpt2cy COMMAND --help` for a command's options.")
    parser.add_argument("--version", action="version", version=f"gpt2cy {__version__}")
    parser.add_argument("--info", action="store_true", help="show build facts (OpenMP, threads) and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    chat = sub.add_parser("chat", parents=[common, sampling], help="talk with GPT-2 in the terminal (default)",
                          description="Chat with GPT-2. Piped stdin: one turn per line, replies only.")
    chat.add_argument("--multiline", action="store_true", help="let replies run over several lines")
    chat.add_argument("--preamble", metavar="FILE", help="the hidden opening dialogue (Alice/Bob lines) "
                                                        "instead of the built-in one")
    chat.add_argument("--no-history", action="store_true", help="do not keep a readline history file "
                                                                "($GPT2CY_NOHISTORY=1)")

    gen = sub.add_parser("generate", parents=[common, sampling], help="continue a prompt",
                         description="Continue a prompt; only the generated text goes to stdout.")
    src = gen.add_mutually_exclusive_group()
    src.add_argument("-p", "--prompt", metavar="TEXT", help="the prompt text; - reads stdin")
    src.add_argument("-f", "--file", metavar="FILE", help="read the prompt from FILE")
    fmt = gen.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print one JSON object: text, tokens, finish_reason, "
                                                         "usage (OpenAI's names), timings, seed, model; also "
                                                         "on Ctrl-C (finish_reason \"interrupted\", exit 130)")
    fmt.add_argument("--jsonl", action="store_true", help="print a JSON line {\"token\", \"text\"} per token, "
                                                          "then the --json object")
    gen.add_argument("--echo", action="store_true", help="print the prompt before the completion")
    gen.add_argument("--ignore-eos", action="store_true", help="never sample <|endoftext|> (its logit is -inf)")
    gen.add_argument("--context-overflow", choices=("error", "shift"), default="error",
                     help="prompt longer than the context: error (exit 5, default) or shift (keep the newest "
                          "tokens, and keep generating past the end of the context from the newest half)")

    tok = sub.add_parser("tokenize", help="print the token ids of a text",
                         description="Print the GPT-2 token ids of TEXT (or stdin).")
    tok.add_argument("text", nargs="?", metavar="TEXT", help="the text; - or nothing reads stdin")
    tok.add_argument("-m", "--model", type=_model_arg, default=None, metavar="NAME|PATH",
                     help="whose vocabulary: a name, a model directory or a GGUF file (its own; default "
                          "124M)")
    tok.add_argument("--json", action="store_true", help="print {\"ids\": [...], \"count\": N}")
    tok.add_argument("--offline", action="store_true", help="never touch the network")
    tok.add_argument("--debug", action="store_true", help="show a traceback on errors")
    tok.add_argument("--strict", action="store_true", help="refuse input that is not UTF-8")

    dl = sub.add_parser("download", help="fetch and verify models into the cache")
    dl.add_argument("models", nargs="+", metavar="MODEL", help="124M, 355M, 774M, 1558M (or aliases)")
    dl.add_argument("--force", action="store_true", help="download again even when cached")
    dl.add_argument("--debug", action="store_true", help="show a traceback on errors")

    vf = sub.add_parser("verify", help="check every tensor's CRC32C and that all values are finite",
                        description="Check a model's files: every tensor's CRC32C (OpenAI's layout; safetensors "
                                    "and GGUF files store no checksums), a GGUF file's header and tensor table, "
                                    "and that no value is NaN or infinite. Never downloads. Exit 4 when a check "
                                    "fails.")
    vf.add_argument("models", nargs="*", default=["124M"], metavar="MODEL|PATH",
                    help="model names, directories or GGUF files (default 124M)")
    vf.add_argument("--debug", action="store_true", help="show a traceback on errors")

    ls = sub.add_parser("list", help="show the known models and which are cached")
    ls.add_argument("--json", action="store_true", help="print a JSON list")
    ls.add_argument("--debug", action="store_true", help="show a traceback on errors")

    # Commands whose arguments live beside their code (each module's add_arguments and run; imported here
    # because they use this module's value checks)
    from . import convert, perplexity, serve
    for mod in (serve, perplexity, convert):
        mod.add_arguments(sub.add_parser(mod.NAME, parents=[common], help=mod.HELP, description=mod.DESCRIPTION))
    return parser


def with_default_command(argv: List[str]) -> List[str]:
    """Bare `gpt2cy [opts]` means `gpt2cy chat [opts]`."""
    if not argv:
        return ["chat"]
    if argv[0] in COMMANDS or argv[0] in ("-h", "--help", "--version", "--info"):
        return argv
    return ["chat", *argv]
