"""The `gpt2cy` command: chat (the default), generate, tokenize, download, list.

Flag spellings follow llama.cpp (-m -t -n -p -f -s -r --temp --top-k ...). stdout carries only model
text (or the command's own output); banners, notices and timings go to stderr.

Exit status: 0 ok, 1 runtime error, 2 usage error, 3 model missing (offline), 4 download failed,
5 prompt longer than the context, 130 Ctrl-C.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import List, Optional

from .. import __version__
from ..errors import CheckpointError, ContextLengthError, DownloadError, GPT2CyError, ModelNotFound

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_DOWNLOAD, EXIT_CONTEXT, EXIT_INTERRUPT = 0, 1, 2, 3, 4, 5, 130
COMMANDS = ("chat", "generate", "tokenize", "download", "list", "verify")
DEFAULT_MODEL = "124M"

# Per-command defaults: a mild repeat penalty in chat, none in generate (INTERFACE 4.1).
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
        if kind is float and v != v:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}")
        if lo is not None and (v <= lo if lo_open else v < lo):
            raise argparse.ArgumentTypeError(f"{name} must be {'>' if lo_open else '>='} {lo}, got {text}")
        if hi is not None and v > hi:
            raise argparse.ArgumentTypeError(f"{name} must be <= {hi}, got {text}")
        return v
    parse.__name__ = name
    return parse


def _clean(text: str) -> str:
    """Command-line text may carry undecodable bytes as surrogates; make them U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("model and run")
    g.add_argument("-m", "--model", default=None, metavar="NAME|PATH",
                   help="124M (default), 355M, 774M, 1558M (aliases: gpt2, gpt2-medium, ...) or a model directory")
    g.add_argument("-t", "--threads", type=_number(int, "threads", 1), default=None, metavar="N",
                   help="threads for the kernels (default: $GPT2CY_NUM_THREADS or the CPUs available)")
    g.add_argument("-c", "--ctx-size", type=_number(int, "ctx-size", 1), default=None, metavar="N",
                   help="context size in tokens (default and max: the model's, 1024); smaller bounds the "
                        "KV cache's memory")
    g.add_argument("--offline", action="store_true", help="never touch the network ($GPT2CY_OFFLINE=1)")
    g.add_argument("-v", "--verbose", action="store_true", help="load time, seed and speed on stderr")
    g.add_argument("--debug", action="store_true", help="show a traceback on errors")

    sampling = argparse.ArgumentParser(add_help=False)
    s = sampling.add_argument_group("sampling")
    s.add_argument("-n", "--max-tokens", type=_number(int, "max-tokens", -1), default=None, metavar="N",
                   help="tokens to generate (chat: per reply, default 128; generate: 256); -1 = until a stop")
    s.add_argument("--temp", type=_number(float, "temp", 0.0), default=0.8, metavar="F",
                   help="temperature (default 0.8; 0 = greedy argmax)")
    s.add_argument("--greedy", dest="temp", action="store_const", const=0.0, help="same as --temp 0")
    s.add_argument("--top-k", type=_number(int, "top-k", 0), default=40, metavar="N",
                   help="keep the N most likely tokens (default 40; 0 = off)")
    s.add_argument("--top-p", type=_number(float, "top-p", 0.0, 1.0, lo_open=True), default=0.95, metavar="F",
                   help="nucleus sampling (default 0.95; 1 = off)")
    s.add_argument("--min-p", type=_number(float, "min-p", 0.0, 1.0), default=0.0, metavar="F",
                   help="drop tokens below F times the best one's probability (default 0 = off)")
    s.add_argument("--repeat-penalty", type=_number(float, "repeat-penalty", 0.0, lo_open=True), default=None,
                   metavar="F", help="penalise recent tokens (chat default 1.1, generate 1.0 = off)")
    s.add_argument("--repeat-last-n", type=_number(int, "repeat-last-n", -1), default=64, metavar="N",
                   help="how many recent tokens the penalty sees (default 64; -1 = all)")
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
    fmt.add_argument("--json", action="store_true", help="print one JSON object with text, tokens and timings")
    fmt.add_argument("--jsonl", action="store_true", help="print a JSON line {\"token\", \"text\"} per token, "
                                                          "then the --json object")
    gen.add_argument("--echo", action="store_true", help="print the prompt before the completion")
    gen.add_argument("--ignore-eos", action="store_true", help="keep going past <|endoftext|>")
    gen.add_argument("--context-overflow", choices=("error", "shift"), default="error",
                     help="prompt longer than the context: error (exit 5, default) or shift (keep the newest "
                          "tokens, and keep generating past the end of the context from the newest half)")

    tok = sub.add_parser("tokenize", help="print the token ids of a text",
                         description="Print the GPT-2 token ids of TEXT (or stdin).")
    tok.add_argument("text", nargs="?", metavar="TEXT", help="the text; - or nothing reads stdin")
    tok.add_argument("-m", "--model", default=None, metavar="NAME|PATH", help="whose vocabulary (default 124M)")
    tok.add_argument("--json", action="store_true", help="print {\"ids\": [...], \"count\": N}")
    tok.add_argument("--offline", action="store_true", help="never touch the network")
    tok.add_argument("--debug", action="store_true", help="show a traceback on errors")

    dl = sub.add_parser("download", help="fetch and verify models into the cache")
    dl.add_argument("models", nargs="+", metavar="MODEL", help="124M, 355M, 774M, 1558M (or aliases)")
    dl.add_argument("--force", action="store_true", help="download again even when cached")
    dl.add_argument("--debug", action="store_true", help="show a traceback on errors")

    vf = sub.add_parser("verify", help="check every tensor's CRC32C and that all values are finite",
                        description="Check a model's files: every tensor's CRC32C (OpenAI's layout) and that no "
                                    "value is NaN or infinite. Never downloads. Exit 4 when a check fails.")
    vf.add_argument("models", nargs="*", default=["124M"], metavar="MODEL|PATH",
                    help="model names or directories (default 124M)")
    vf.add_argument("--debug", action="store_true", help="show a traceback on errors")

    ls = sub.add_parser("list", help="show the known models and which are cached")
    ls.add_argument("--json", action="store_true", help="print a JSON list")
    ls.add_argument("--debug", action="store_true", help="show a traceback on errors")
    return parser


def _with_default_command(argv: List[str]) -> List[str]:
    """Bare `gpt2cy [opts]` means `gpt2cy chat [opts]`."""
    if not argv:
        return ["chat"]
    if argv[0] in COMMANDS or argv[0] in ("-h", "--help", "--version", "--info"):
        return argv
    return ["chat", *argv]


# -- helpers --------------------------------------------------------------------------------------
def _err(message: str) -> None:
    print(f"gpt2cy: error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)


def _note(message: str) -> None:
    print(f"gpt2cy: {message}", file=sys.stderr, flush=True)


def _threads(args) -> Optional[int]:
    if args.threads is not None:
        return args.threads
    env = os.environ.get("GPT2CY_NUM_THREADS", "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise UsageError(f"gpt2cy: GPT2CY_NUM_THREADS must be a positive integer, got {env!r} "
                             f"(see gpt2cy --help)")
        return int(env)
    return None


def _read_stdin() -> str:
    return sys.stdin.buffer.read().decode("utf-8", "replace") if hasattr(sys.stdin, "buffer") else sys.stdin.read()


def _load(args):
    from ..formats.checkpoint import load_weights
    from ..hub.models import resolve_model
    from ..model import Model
    from ..threads import check_threads
    t0 = time.perf_counter()
    threads = check_threads(_threads(args))
    path = resolve_model(args.model or DEFAULT_MODEL, offline=True if args.offline else None)
    weights = load_weights(path)
    n_max = weights.config.n_ctx
    if args.ctx_size is not None and args.ctx_size > n_max:
        raise UsageError(f"gpt2cy: --ctx-size {args.ctx_size} is more than the model's context of {n_max} "
                         f"(see gpt2cy --help)")
    model = Model(weights, threads=threads, path=path, n_ctx=args.ctx_size)
    load_ms = (time.perf_counter() - t0) * 1e3
    if args.verbose:
        cfg = model.config
        kv_mb = 2 * cfg.n_layer * model.n_ctx * cfg.n_embd * 4 / 2**20
        _note(f"loaded {cfg.name or args.model or DEFAULT_MODEL} from {getattr(model, 'path', '?')} in "
              f"{load_ms:.0f} ms; {getattr(model, 'threads', '?')} threads; context {model.n_ctx}; "
              f"KV cache {kv_mb:.0f} MiB")
    return model, load_ms


def _sampling_kwargs(args, command):
    d = DEFAULTS[command]
    rp = args.repeat_penalty if args.repeat_penalty is not None else d["repeat_penalty"]
    mt = args.max_tokens if args.max_tokens is not None else d["max_tokens"]
    return dict(temperature=args.temp, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                repetition_penalty=rp, repeat_last_n=args.repeat_last_n), (None if mt == -1 else mt)


def _stops(args) -> List[str]:
    from .repl import unescape
    stops = [unescape(_clean(s)) for s in args.stop]
    if any(not s for s in stops):
        raise UsageError("gpt2cy: --stop must not be empty (see gpt2cy --help)")
    return stops


# -- commands -------------------------------------------------------------------------------------
def cmd_chat(args) -> int:
    from ..generation.chat import Chat
    from .repl import Repl
    if args.no_history:
        os.environ["GPT2CY_NOHISTORY"] = "1"
    stops = _stops(args)
    params, max_tokens = _sampling_kwargs(args, "chat")
    preamble = None
    if args.preamble is not None:
        with open(args.preamble, "rb") as f:
            preamble = f.read().decode("utf-8", "replace").rstrip("\n")
    model, _ = _load(args)
    chat = Chat(model, max_new_tokens=max_tokens, seed=args.seed, stop=stops, multiline=args.multiline,
                preamble=preamble, on_notice=_note, **params)
    name = model.config.name or args.model or DEFAULT_MODEL
    banner = (f"gpt2cy {__version__} · {name} · {getattr(model, 'threads', '?')} threads · seed {chat.seed}"
              f" · /? for help")
    return Repl(chat, verbose=args.verbose, model_name=name, banner=banner).run()


def _prompt_text(args) -> str:
    if args.file is not None:
        with open(args.file, "rb") as f:
            return f.read().decode("utf-8", "replace")
    if args.prompt == "-" or (args.prompt is None and not sys.stdin.isatty()):
        return _read_stdin()
    if args.prompt is None:
        raise UsageError("gpt2cy generate: give a prompt with -p TEXT, -f FILE or -p - (stdin) "
                         "(see gpt2cy generate --help)")
    return _clean(args.prompt)


def cmd_generate(args) -> int:
    from ..generation.loop import check_prompt, stream_generate
    from ..generation.sampling import Sampler, SamplingParams
    stops = _stops(args)
    params, max_tokens = _sampling_kwargs(args, "generate")
    prompt = _prompt_text(args)
    model, load_ms = _load(args)
    sampler = Sampler(SamplingParams(**params), args.seed)
    cfg = model.config
    tok = model.tokenizer
    ids = tok.encode(prompt) or [tok.eot_token]
    shift = args.context_overflow == "shift"
    room = model.n_ctx // 2 if max_tokens is None else max_tokens
    ids = check_prompt(ids, model.n_ctx, cfg.n_vocab, truncate=shift, room=room, on_notice=_note)
    if args.verbose:
        _note(f"seed {sampler.seed}; prompt {len(ids)} tokens")
    out = sys.stdout
    as_json = args.json or args.jsonl
    if args.echo and not as_json:
        out.write(prompt)
        out.flush()
    texts, tokens, last = [], [], None
    for chunk in stream_generate(model, ids, sampler, max_new_tokens=max_tokens, stop=stops,
                                 ignore_eos=args.ignore_eos, context_shift=shift, on_notice=_note):
        last = chunk
        if chunk.token is not None:
            tokens.append(chunk.token)
        texts.append(chunk.text)
        if args.jsonl and chunk.token is not None:
            out.write(json.dumps({"token": chunk.token, "text": chunk.text}, ensure_ascii=False) + "\n")
            out.flush()
        elif not as_json and chunk.text:
            out.write(chunk.text)
            out.flush()
    text = "".join(texts)
    if as_json:
        obj = {"text": text, "tokens": tokens, "finish_reason": last.finish_reason,
               "usage": {"prompt_tokens": len(ids), "completion_tokens": len(tokens)},
               "timings": {"load_ms": round(load_ms, 3), "prompt_tps": round(last.prompt_tps, 3),
                           "gen_tps": round(last.generation_tps, 3)},
               "seed": sampler.seed, "model": cfg.name or args.model or DEFAULT_MODEL}
        out.write(json.dumps(obj, ensure_ascii=False) + "\n")
    elif out.isatty() and not text.endswith("\n"):
        out.write("\n")
    out.flush()
    if args.verbose:
        _note(f"finish: {last.finish_reason}; prompt {last.prompt_tokens} tokens, {last.prompt_tps:.1f} t/s; "
              f"generated {last.completion_tokens} tokens, {last.generation_tps:.1f} t/s")
    return EXIT_OK


def cmd_tokenize(args) -> int:
    from ..text.tokenizer import get_tokenizer
    if args.text is None or args.text == "-":
        if args.text is None and sys.stdin.isatty():
            raise UsageError("gpt2cy tokenize: give TEXT, or - to read stdin (see gpt2cy tokenize --help)")
        text = _read_stdin()
    else:
        text = _clean(args.text)
    model = args.model or DEFAULT_MODEL
    if args.offline:
        os.environ["GPT2CY_OFFLINE"] = "1"
    tok = get_tokenizer(model)
    ids = [int(i) for i in tok.encode(text)]
    if args.json:
        print(json.dumps({"ids": ids, "count": len(ids)}))
    else:
        print(" ".join(map(str, ids)))
    return EXIT_OK


def cmd_download(args) -> int:
    from ..hub.models import download_models
    for path in download_models(list(args.models), force=args.force):
        print(path)
    return EXIT_OK


def cmd_verify(args) -> int:
    """Verify each named model; a failed check is exit 4 (as a failed download is), after checking the rest."""
    from ..hub import models as hub
    from ..formats.checkpoint import verify
    status = EXIT_OK
    for name in args.models:
        try:
            # (a cached model not yet marked verified is verified and marked by resolve_model itself)
            result = verify(hub.resolve_model(name, download=False))
        except CheckpointError as e:
            _err(_describe(e))
            status = EXIT_DOWNLOAD
            continue
        what = "CRC32C and values ok" if result.checksummed else "values ok (safetensors has no checksums)"
        print(f"{result.path}: {result.n_tensors} tensors, {result.n_bytes / 1e6:.1f} MB, {what}")
    return status


def cmd_list(args) -> int:
    from ..hub.models import list_models
    models = list_models()
    if args.json:
        print(json.dumps(models))
        return EXIT_OK
    print(f"{'NAME':<7} {'CACHED':<7} {'VERIFIED':<9} {'SIZE':>9}  PATH")
    for m in models:
        size = m.get("size_bytes") or m.get("published_bytes") or 0
        print(f"{m.get('name', '?'):<7} {'yes' if m.get('cached') else 'no':<7} "
              f"{'yes' if m.get('verified') else 'no':<9} {size / 1e6:>7.0f}MB  {m.get('path', '')}")
    return EXIT_OK


def cmd_info() -> int:
    """Build and runtime facts that explain speed: OpenMP, the thread count and where it comes from,
    and the OpenMP wait policy (spinning workers are fastest on a quiet machine but collapse when
    another busy process shares the cores)."""
    import platform
    import numpy
    from ..engine._omp import openmp_enabled
    from ..threads import default_threads
    env = {k: os.environ.get(k) for k in ("GPT2CY_NUM_THREADS", "OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    source = ("GPT2CY_NUM_THREADS" if env["GPT2CY_NUM_THREADS"] else
              "OMP_NUM_THREADS" if env["OMP_NUM_THREADS"] else "the CPUs available")
    threads = env["GPT2CY_NUM_THREADS"] if env["GPT2CY_NUM_THREADS"] else default_threads()
    print(f"gpt2cy {__version__}")
    print(f"openmp_enabled: {openmp_enabled()}")
    print(f"threads: {threads} (from {source}; {cpus} CPUs available; -t N or GPT2CY_NUM_THREADS to change)")
    policy = env["OMP_WAIT_POLICY"]
    print(f"OMP_WAIT_POLICY: {policy if policy else 'unset (libgomp default: idle workers spin a while, then sleep)'}")
    print("  on a machine busy with other work, spinning workers slow every token down: use -t 1, or "
          "fewer threads than free cores, or OMP_WAIT_POLICY=passive")
    print(f"python: {platform.python_version()} ({sys.executable})")
    print(f"numpy: {numpy.__version__}")
    return EXIT_OK


def _exit_code(e: BaseException) -> int:
    if isinstance(e, ModelNotFound):
        return EXIT_NOT_FOUND
    if isinstance(e, DownloadError):
        return EXIT_DOWNLOAD
    if isinstance(e, ContextLengthError):
        return EXIT_CONTEXT
    return EXIT_ERROR


def _describe(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    return str(e) or type(e).__name__


def _tolerant_streams() -> None:
    """Odd bytes on stdin and unencodable characters on stdout must never raise."""
    for stream, errors in ((sys.stdin, "replace"), (sys.stdout, "replace"), (sys.stderr, "backslashreplace")):
        try:
            stream.reconfigure(errors=errors)
        except (AttributeError, ValueError, OSError):
            pass


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _tolerant_streams()
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(_with_default_command(argv))
        if args.info:
            return cmd_info()
        return {"chat": cmd_chat, "generate": cmd_generate, "tokenize": cmd_tokenize,
                "download": cmd_download, "list": cmd_list, "verify": cmd_verify}[args.command](args)
    except UsageError as e:
        print(str(e), file=sys.stderr, flush=True)
        return EXIT_USAGE
    except SystemExit as e:                         # --help / --version
        return e.code if isinstance(e.code, int) else (EXIT_OK if e.code is None else EXIT_USAGE)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_INTERRUPT
    except BrokenPipeError:                         # `gpt2cy generate ... | head`: leave quietly
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141
    except (GPT2CyError, OSError, ValueError) as e:
        if debug:
            import traceback
            traceback.print_exc()
        _err(_describe(e))
        return _exit_code(e)
    except Exception as e:  # a bug of ours: still one line for the user, the traceback on request
        if debug:
            import traceback
            traceback.print_exc()
        _err(f"internal error: {type(e).__name__}: {_describe(e)} (run with --debug for the traceback)")
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
