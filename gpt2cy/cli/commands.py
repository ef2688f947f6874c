"""The `gpt2cy` commands: each takes the parsed arguments and returns an exit status.

They only translate between the command line and the library: the model comes from gpt2cy.load, the prompt
and the token loop from gpt2cy.generation (the same calls as model.generate), and --json prints the Response
the loop made. stdout carries only model text (or the command's own output); notices and stats go through
gpt2cy.notices, which the command line points at stderr.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from typing import List, Optional

from .. import __version__
from ..errors import CheckpointError, ContextLengthError, DownloadError
from ..notices import deferred, notice
from .parser import DEFAULT_MODEL, DEFAULTS, UsageError
from .terminal import decode_input, escape_controls, wants_escaping

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_DOWNLOAD, EXIT_CONTEXT, EXIT_INTERRUPT = 0, 1, 2, 3, 4, 5, 130


# -- helpers --------------------------------------------------------------------------------------
def error_line(message: str) -> None:
    """An error for the user: one line "gpt2cy: error: ..." on stderr."""
    print(f"gpt2cy: error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)


def describe(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    return str(e) or type(e).__name__


def _clean(text: str, what: str = "", strict: bool = False) -> str:
    """Command-line text may carry undecodable bytes as surrogates; make them U+FFFD (with a notice when
    `what` names the text, or an error with strict)."""
    try:
        data = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:                       # a lone surrogate that was not an escaped byte
        data = text.encode("utf-8", "replace")
    if what:
        return decode_input(data, what, strict)
    return data.decode("utf-8", "replace")


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


def _read_stdin(strict: bool = False) -> str:
    if not hasattr(sys.stdin, "buffer"):
        return sys.stdin.read()
    if sys.stdin.isatty():
        notice("reading from the terminal: end the input with Ctrl-D at the start of a line "
               "(Ctrl-Z then Enter on Windows)")
    return decode_input(sys.stdin.buffer.read(), "stdin", strict)


def _read_file(path: str, what: str, strict: bool) -> str:
    with open(path, "rb") as f:
        return decode_input(f.read(), f"{what} {path}", strict)


def _kv_cache_bytes(model) -> Optional[int]:
    """The model's own figure for its KV cache (it knows the dtype and layout); None if it gives none."""
    kv = getattr(model, "kv_cache_bytes", None)
    if callable(kv):
        kv = kv()
    return int(kv) if kv is not None else None


def _n(count: int, what: str) -> str:
    """"1 token", "2 tokens"."""
    return f"{count} {what}" if count == 1 else f"{count} {what}s"


def _with_model_hint(e: DownloadError, model: Optional[str]) -> DownloadError:
    """A failed first-use download, with what -m can do instead (for the commands that take -m; `gpt2cy
    download` does not, and its errors never name it)."""
    hint = (f"{DEFAULT_MODEL} is the default model; -m names another, or a model directory or GGUF file you "
            f"have" if model is None else "-m also takes a model directory or GGUF file you have")
    err = DownloadError(f"{e} ({hint})")
    if getattr(e, "resumable", False):
        err.resumable = True
    return err


def load_model(args, n_slots: int = 1):
    """gpt2cy.load with the command line's settings (n_slots: sequences at once, for serve); returns
    (model, load time in ms)."""
    from ..generation.response import model_name
    from ..hub.progress import format_bytes
    from ..loading import load
    threads = _threads(args)
    if args.ctx_size is not None:                   # a published model's limit is known before loading it
        from ..hub.models import PUBLISHED, canonical_name
        size = canonical_name(args.model or DEFAULT_MODEL)
        if size is not None and args.ctx_size > PUBLISHED[size].n_ctx:
            raise UsageError(f"gpt2cy: --ctx-size {args.ctx_size}: GPT-2 {size}'s context holds at most "
                             f"{PUBLISHED[size].n_ctx} tokens (see gpt2cy --help)")
    t0 = time.perf_counter()
    try:
        model = load(args.model or DEFAULT_MODEL, threads=threads, offline=True if args.offline else None,
                     n_ctx=args.ctx_size, dtype=getattr(args, "dtype", "f32"), n_slots=n_slots)
    except ValueError as e:
        if args.ctx_size is not None and "n_ctx" in str(e):
            raise UsageError(f"gpt2cy: --ctx-size {args.ctx_size}: {e} (see gpt2cy --help)") from None
        raise
    except DownloadError as e:
        raise _with_model_hint(e, args.model) from None
    load_ms = (time.perf_counter() - t0) * 1e3
    if threads is not None and model.threads != threads:
        notice(f"{threads} threads asked for; using {model.threads} (the most gpt2cy runs)")
    if args.verbose:
        kv = _kv_cache_bytes(model)
        notice(f"loaded {model_name(model)} from {getattr(model, 'path', '?')} in {load_ms:.0f} ms; "
               f"{_n(model.threads, 'thread')}{' (adapting to the load)' if getattr(model, 'adaptive_threads', False) else ''}; context {model.n_ctx}; weights {model.dtype}"
               + (f"; KV cache {format_bytes(kv)}" if kv is not None else ""))
    return model, load_ms


def _sampling_kwargs(args, command):
    d = DEFAULTS[command]
    rp = args.repeat_penalty if args.repeat_penalty is not None else d["repeat_penalty"]
    mt = args.max_tokens if args.max_tokens is not None else d["max_tokens"]
    return dict(temperature=args.temp, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                repetition_penalty=rp, repeat_last_n=args.repeat_last_n), (None if mt == -1 else mt)


def _sampling_extras(args) -> dict:
    """The OpenAI-style and llama.cpp-style sampling flags, as SamplingParams field names."""
    bias = getattr(args, "logit_bias", None)
    return dict(presence_penalty=getattr(args, "presence_penalty", 0.0),
                frequency_penalty=getattr(args, "frequency_penalty", 0.0),
                logit_bias=dict(bias) if bias else None, min_keep=getattr(args, "min_keep", 1),
                order=getattr(args, "samplers", None))


def _stops(args) -> List[str]:
    from .repl import unescape
    stops = [unescape(_clean(s)) for s in args.stop]
    if any(not s for s in stops):
        raise UsageError("gpt2cy: --stop must not be empty (see gpt2cy --help)")
    return stops


def stats_line(response) -> str:
    """One terse line from a Response: finish reason, prompt and reply tokens with their speeds."""
    u, t = response.usage, response.timings
    return (f"finish: {response.finish_reason}; prompt {_n(u.prompt_tokens, 'token')} "
            f"({u.cached_tokens} cached), {t.prompt_tps:.1f} t/s; "
            f"generated {_n(u.completion_tokens, 'token')}, {t.gen_tps:.1f} t/s")


# -- commands -------------------------------------------------------------------------------------
def cmd_chat(args) -> int:
    from ..generation.chat import Chat
    from ..generation.response import model_name
    from .repl import Repl, history_path
    stops = _stops(args)
    params, max_tokens = _sampling_kwargs(args, "chat")
    preamble = None
    if args.preamble is not None:
        preamble = _read_file(args.preamble, "preamble file", args.strict).rstrip("\n")
    model, _ = load_model(args)
    chat = Chat(model, max_new_tokens=max_tokens, seed=args.seed, stop=stops, multiline=args.multiline,
                preamble=preamble, **params)
    chat.params = chat.params.replace(**{k: v for k, v in _sampling_extras(args).items() if v is not None})
    chat.params.check_vocab(model.config.n_vocab)   # a bad -l fails here, as in generate, not at the first reply
    name = model_name(model)
    banner = (f"gpt2cy {__version__} · {name} · {_n(model.threads, 'thread')} · seed {chat.seed}"
              f" · /? for help")
    history = None if args.no_history else history_path()
    return Repl(chat, verbose=args.verbose, model_name=name, banner=banner, history=history,
                raw_output=args.raw_output, strict=args.strict).run()


def _prompt_text(args) -> str:
    if args.file is not None:
        return _read_file(args.file, "prompt file", args.strict)
    if args.prompt == "-" or (args.prompt is None and not sys.stdin.isatty()):
        return _read_stdin(args.strict)
    if args.prompt is None:
        raise UsageError("gpt2cy generate: give a prompt with -p TEXT, -f FILE or -p - (stdin) "
                         "(see gpt2cy generate --help)")
    return _clean(args.prompt, "the -p prompt", args.strict)


def cmd_generate(args) -> int:
    """Stream the completion (or --jsonl events) to stdout; --json prints the Response. Ctrl-C ends the
    text (--json/--jsonl: the Response so far, finish_reason "interrupted") and exits 130."""
    from ..generation.loop import generate
    stops = _stops(args)
    params, max_tokens = _sampling_kwargs(args, "generate")
    prompt = _prompt_text(args)
    model, load_ms = load_model(args)
    shift = args.context_overflow == "shift"
    try:
        stream = generate(model, prompt, max_new_tokens=max_tokens, stop=stops, seed=args.seed, stream=True,
                          truncate=shift, context_shift=shift, ignore_eos=args.ignore_eos, **params,
                          **{("samplers" if k == "order" else k): v for k, v in _sampling_extras(args).items()})
    except ContextLengthError as e:                # name the flag that lets it run
        hint = "shorten it, or pass --context-overflow shift to keep its newest tokens"
        msg = str(e)
        raise ContextLengthError(msg.replace("shorten it or ask for truncation", hint) if "truncation" in msg
                                 else f"{msg}; {hint}") from None
    if args.verbose:
        notice(f"seed {stream.seed}; prompt {_n(stream.prompt_tokens, 'token')}")
    out = sys.stdout
    as_json = args.json or args.jsonl
    show = escape_controls if not as_json and wants_escaping(out, args.raw_output) else str
    if args.echo and not as_json:
        out.write(prompt)
        out.flush()
    status = EXIT_OK
    with deferred():                                # notices raised while text streams follow the text
        try:
            for chunk in stream:
                if args.jsonl and chunk.token is not None:
                    # SIGINT held off while the event is written: a KeyboardInterrupt inside the text layer's
                    # flush can drop what it held, so the final object would list tokens with no event
                    with _sigint_deferred():
                        out.write(json.dumps({"token": chunk.token, "text": chunk.text}, ensure_ascii=False) + "\n")
                        out.flush()
                elif not as_json and chunk.text:
                    out.write(show(chunk.text))
                    out.flush()
            response = stream.response
        except KeyboardInterrupt:
            response = stream.interrupt()
            status = EXIT_INTERRUPT
        if as_json:
            obj = response.replace(timings=response.timings.replace(load_ms=load_ms)).to_dict()
            out.write(json.dumps(obj, ensure_ascii=False) + "\n")
        elif out.isatty() and not response.text.endswith("\n"):
            out.write("\n")
        out.flush()
    if args.verbose:
        notice(stats_line(response))
    return status


@contextlib.contextmanager
def _sigint_deferred():
    """SIGINT blocked inside the block (delivered, as KeyboardInterrupt, right after it) where the OS allows."""
    import signal
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def cmd_tokenize(args) -> int:
    from ..loading import load_tokenizer
    if args.text is None or args.text == "-":
        if args.text is None and sys.stdin.isatty():
            raise UsageError("gpt2cy tokenize: give TEXT, or - to read stdin (see gpt2cy tokenize --help)")
        text = _read_stdin(args.strict)
    else:
        text = _clean(args.text, "TEXT", args.strict)
    try:
        tok = load_tokenizer(args.model or DEFAULT_MODEL, offline=True if args.offline else None)
    except DownloadError as e:
        raise _with_model_hint(e, args.model) from None
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
    from ..formats.checkpoint import verify
    from ..formats.layout import GGUF
    from ..hub.models import canonical_name, looks_like_path, verify_cached
    from ..loading import resolve
    status = EXIT_OK
    for name in args.models:
        try:
            # the name, directory or GGUF file `load` would read; a cached model is read once, here, and
            # marked verified (resolve would otherwise verify one not yet marked, and this again)
            size = None if looks_like_path(name) else canonical_name(name)
            local = os.path.expanduser(name)
            if size is None and os.path.isdir(local):   # the weights are checked: no vocabulary needed
                result = verify(os.path.abspath(local))
            else:
                path = resolve(name, download=False, verify=False)
                result = verify_cached(size, path) if size is not None else verify(path)
        except CheckpointError as e:
            error_line(describe(e))
            status = EXIT_DOWNLOAD
            continue
        if result.checksummed:
            what = "CRC32C and values ok"
        elif result.format == GGUF:
            what = "header, tensor table and values ok (no NaN/inf; GGUF has no checksums)"
        else:
            what = "values ok (safetensors has no checksums)"
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


_KERNELS = {
    "f32": "register tiles (prefill), row-streaming matrix-vector (decode), row dots (lm_head)",
    "bf16": "block matmuls: inputs rounded to bf16, pair products ({bd}); lm_head: fp32 inputs, wte widened",
    "q8_0": "activations quantized to 8-bit blocks, integer block dots ({q}), one output per lane "
            "(decode: streamed rows{one}; prefill: tasks of 32 rows x 64 outputs)",
    "q4_0": "as q8_0, 4-bit weights unpacked in registers ({q}{one})",
}
ISA_ENV = "GPT2CY_ISA"
_ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
              "avx512_bf16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8", "neon", "asimd")


def _cpu_flags():
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def _cpu_model() -> str:
    import platform
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cmd_info() -> int:
    """Build and runtime facts that explain speed: OpenMP, the instruction set the kernels were built for
    and which kernels run each weight type, the thread count and where it comes from, the CPU's flags."""
    import platform
    import numpy
    from ..engine._omp import openmp_enabled
    from ..engine._matmul import bf16_dot, isa
    from ..engine.weights import DTYPES
    from ..threads import cpu_count, thread_setting
    threads, source, problem = thread_setting()
    cpus = cpu_count()
    print(f"gpt2cy {__version__}")
    print(f"openmp_enabled: {openmp_enabled()}")
    if source == "cpus":
        print(f"threads: adapting between 1 and {threads} (the CPUs available) to how fast recent steps ran; "
              f"-t N or GPT2CY_NUM_THREADS fixes the count")
    else:
        print(f"threads: {threads} (from {source}; fixed; {cpus} CPUs available)")
    if problem:
        print(f"  invalid: {problem}")
        if "GPT2CY_NUM_THREADS=" in problem:
            print("  (chat and generate refuse an invalid GPT2CY_NUM_THREADS: exit 2)")
    policy = os.environ.get("OMP_WAIT_POLICY")
    print(f"OMP_WAIT_POLICY: {policy if policy else 'unset (libgomp default: idle workers spin a while, then sleep)'}")
    from ..engine import isa as variants
    from ..engine._qblocks import amx, kernel_isa
    name, mr, nr = isa()
    how = f"{ISA_ENV} forces it" if variants.forced() else f"the best this CPU runs; {ISA_ENV}=NAME forces one"
    print(f"kernels: the {variants.chosen()} variant ({how}; this build has: {', '.join(variants.built())}), "
          f"built for {name} (f32 tile {mr}x{nr})")
    q = kernel_isa() + ("; prefill through AMX-INT8 tiles, GPT2CY_AMX=0 turns them off" if amx() else "")
    for dt in DTYPES:
        one = ", one row read where it lies" if q == "avx2" else ""   # _q8act.h's qa_direct_rows*
        print(f"  {dt:5s} {_KERNELS.get(dt, '').format(q=q, one=one, bd=bf16_dot())}")
    flags = _cpu_flags()
    if flags is not None:
        print(f"cpu: {_cpu_model()}; flags: {' '.join(f for f in _ISA_FLAGS if f in flags) or 'none of note'}")
    print(f"python: {platform.python_version()} ({sys.executable})")
    print(f"numpy: {numpy.__version__}")
    return EXIT_OK
