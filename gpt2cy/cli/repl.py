"""The terminal chat: `AI: How can I help you?` / `Human: ` with streamed replies.

On a terminal: a banner on stderr, readline editing and history, slash commands, two-stage Ctrl-C
(the first stops a reply, or at the prompt says how to leave; a second one within a second, or a
second one at the prompt, exits with 130). With piped stdin: each line is one turn, only the replies
are printed, and EOF exits 0. Model text goes to stdout (control characters escaped on a terminal);
everything else to stderr. The history file is appended to at exit, also on SIGTERM (exit 143) and SIGHUP
(129), never rewritten, so two REPLs at once keep both sessions' lines.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Optional, TextIO

from ..errors import GPT2CyError
from ..generation.chat import GREETING, Chat
from ..notices import deferred
from .commands import _n
from .terminal import decode_input, escape_controls, wants_escaping

EXIT_INTERRUPT = 130
HISTORY_LINES = 1000
DOUBLE_INTERRUPT_S = 1.0
PROMPT, MORE_PROMPT = "Human: ", "...    "

HELP = """\
Commands:
  /help, /?                 this help
  /bye, /exit, /quit        leave (also Ctrl-D)
  /clear                    forget the conversation (the hidden preamble stays)
  /regen                    generate the last reply again
  /undo                     drop the last exchange
  /set PARAM VALUE          temp, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed,
                            presence_penalty, frequency_penalty, min_keep, samplers (the order,
                            e.g. penalties;top_k;top_p;min_p;temperature), logit_bias ID+BIAS ...
                            (e.g. 50256-100; no value clears), max_tokens (-1 = no limit),
                            stop (no value clears), multiline on|off,
                            threads (fixes the count; by default it adapts to the machine's load)
  /set verbose | quiet      stats after each reply on | off
  /show [params|model|context|stats]   (stats: the last reply's tokens, speed, finish, seed)
  /save FILE | /load FILE   write | restore the conversation as a JSON transcript
  \"\"\"                       begin and end a multi-line message
Ctrl-C stops a reply; at the prompt, Ctrl-C twice (or twice within a second) leaves with status 130."""

# /set name -> (kind, Chat.params field or special target)
_PARAMS = {
    "temp": (float, "temperature"), "temperature": (float, "temperature"),
    "top_k": (int, "top_k"), "top_p": (float, "top_p"), "min_p": (float, "min_p"),
    "repeat_penalty": (float, "repetition_penalty"), "repetition_penalty": (float, "repetition_penalty"),
    "repeat_last_n": (int, "repeat_last_n"),
}
# /set name -> (the command-line flag whose check it uses, Chat.params field): the same values accepted and
# the same messages as `gpt2cy chat --presence-penalty ...` (cli/parser.py's SAMPLING_ARGS)
_FLAG_PARAMS = {
    "presence_penalty": ("presence-penalty", "presence_penalty"),
    "frequency_penalty": ("frequency-penalty", "frequency_penalty"),
    "min_keep": ("min-keep", "min_keep"),
    "samplers": ("samplers", "order"), "order": ("samplers", "order"),
}


def _flag_value(flag: str, text: str):
    """A /set value checked as the command line checks its flag; ValueError with the flag's message."""
    import argparse
    from .parser import SAMPLING_ARGS
    try:
        return SAMPLING_ARGS[flag](text)
    except argparse.ArgumentTypeError as e:
        raise ValueError(str(e)) from None


def _logit_biases(text: str) -> dict:
    """`/set logit_bias 15043+1 50256-100` (spaces or commas between entries; each as -l/--logit-bias takes
    it, a later entry for the same id replacing an earlier one, as repeated -l do) -> {id: bias}."""
    import re
    joined = re.sub(r"\s*([+-])\s*", r"\1", text.strip())      # "15043 + 1" is one entry, as for -l
    return dict(_flag_value("logit-bias", entry) for entry in re.split(r"[\s,]+", joined) if entry)


def _show_biases(bias) -> str:
    return " ".join(f"{i}{b:+g}" for i, b in bias)


def _parse(kind, text: str):
    """int or float from a /set value; ValueError with our own words ("expected an integer, got 'abc'")."""
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None


def history_path() -> Optional[str]:
    """The default history file, $XDG_STATE_HOME/gpt2cy/history (or ~/.local/state/...); None when
    GPT2CY_NOHISTORY is set (the command line passes the result to Repl(history=...))."""
    if os.environ.get("GPT2CY_NOHISTORY", "") not in ("", "0"):
        return None
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "gpt2cy", "history")


def unescape(text: str) -> str:
    """Turn the escapes \\n, \\t and \\\\ typed in a /set stop value into characters."""
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            out.append({"n": "\n", "t": "\t", "\\": "\\"}.get(nxt, c + nxt))
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def stats_line(response) -> str:
    """One terse line from a reply's Response: prompt tokens run and speed, reply tokens and speed."""
    u, t = response.usage, response.timings
    new = u.prompt_tokens - u.cached_tokens
    return (f"[prompt: {new} token{'' if new == 1 else 's'} ({u.cached_tokens} cached), "
            f"{t.prompt_tps:.1f} t/s | reply: {u.completion_tokens} token{'' if u.completion_tokens == 1 else 's'}, "
            f"{t.gen_tps:.1f} t/s]")


class Repl:
    """Runs the chat loop over a Chat; `run()` returns the exit status.

    history: the readline history file to read at start and add this session's lines to at exit, also
    on SIGTERM and SIGHUP (None: none kept). raw_output: print control characters in replies as they are
    (on a terminal they are shown escaped by default). strict: piped input that is not UTF-8 ends the REPL
    with an error (default: U+FFFD and a notice naming the line and byte offset).
    """

    def __init__(self, chat: Chat, *, verbose: bool = False, model_name: str = "", banner: str = "",
                 history: Optional[str] = None, stdin: TextIO = None, stdout: TextIO = None,
                 stderr: TextIO = None, interactive: Optional[bool] = None, raw_output: bool = False,
                 strict: bool = False):
        self.chat = chat
        self.history = history
        self.verbose = verbose
        self.model_name = model_name
        self.banner = banner
        self.stdin = stdin or sys.stdin
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self.interactive = self.stdin.isatty() if interactive is None else interactive
        # model text on a terminal: control characters shown escaped (gpt2cy.cli.terminal)
        self._screen = escape_controls if wants_escaping(self.stdout, raw_output) else str
        self._last_interrupt = float("-inf")
        self.last_response = None                   # the Response of the last reply that finished
        self._readline = None
        self._history_start = 0
        self.strict = strict                         # piped input that is not UTF-8: an error, not a notice
        self._line_no = 0

    # -- output ----------------------------------------------------------------------------------
    def _info(self, text: str) -> None:
        print(text, file=self.stderr, flush=True)

    # -- the loop --------------------------------------------------------------------------------
    def run(self) -> int:
        if self.interactive:
            self._setup_readline()
            if self.banner:
                self._info(self.banner)
            self.stdout.write(f"AI: {GREETING}\n")
            self.stdout.flush()
        restore = self._save_on_signals()
        try:
            return self._loop()
        finally:
            restore()
            self._save_history()

    def _save_on_signals(self):
        """While a history is kept, SIGTERM and SIGHUP (the terminal closed) end the REPL through its
        `finally`, so this session's lines are saved; the exit status is 128 + the signal's number.
        Returns the function that puts the previous handlers back."""
        import signal
        if self._readline is None or self.history is None:
            return lambda: None
        old = {}

        def leave(signum, frame):
            raise SystemExit(128 + signum)
        for name in ("SIGTERM", "SIGHUP"):
            sig = getattr(signal, name, None)
            if sig is None:
                continue
            try:
                old[sig] = signal.signal(sig, leave)
            except (ValueError, OSError):          # not the main thread: leave the defaults
                pass

        def restore():
            for sig, handler in old.items():
                try:
                    signal.signal(sig, handler)
                except (ValueError, OSError):
                    pass
        return restore

    def _loop(self) -> int:
        at_prompt_interrupts = 0
        while True:
            try:
                text = self._read_message()
            except KeyboardInterrupt:
                now = time.monotonic()
                if at_prompt_interrupts or now - self._last_interrupt < DOUBLE_INTERRUPT_S \
                        or not self.interactive:
                    self.stdout.write("\n")
                    self.stdout.flush()
                    return EXIT_INTERRUPT
                self._last_interrupt = now
                at_prompt_interrupts += 1
                self.stdout.write("\n")
                self.stdout.flush()
                self._info("Use Ctrl + d or /bye to exit.")
                continue
            except EOFError:
                if self.interactive:
                    self.stdout.write("\n")
                    self.stdout.flush()
                return 0
            at_prompt_interrupts = 0
            stripped = text.strip()
            if not stripped:
                continue
            if stripped.startswith("/"):
                status = self._command(stripped)
                if status is not None:
                    return status
                continue
            status = self._turn(lambda: self.chat.send(text, stream=True))
            if status is not None:
                return status

    def _read_line(self, prompt: str) -> str:
        if self.interactive:
            return input(prompt) if self.stdin is sys.stdin else self._fallback_input(prompt)
        raw = getattr(self.stdin, "buffer", None) if self.stdin is sys.stdin else None
        if raw is not None:                          # piped stdin: bytes, so bad UTF-8 can be reported
            data = raw.readline()
            if not data:
                raise EOFError
            self._line_no += 1
            return decode_input(data, f"stdin line {self._line_no}", self.strict).rstrip("\r\n")
        line = self.stdin.readline()
        if not line:
            raise EOFError
        return line.rstrip("\r\n")

    def _fallback_input(self, prompt: str) -> str:
        self.stdout.write(prompt)
        self.stdout.flush()
        line = self.stdin.readline()
        if not line:
            raise EOFError
        return line.rstrip("\r\n")

    def _read_message(self) -> str:
        """One user message: a line, or the lines between \"\"\" markers."""
        line = self._read_line(PROMPT)
        if not line.lstrip().startswith('"""'):
            return line
        first = line.lstrip()[3:]
        if first.endswith('"""'):
            return first[:-3]
        lines = [first] if first else []
        while True:
            try:
                more = self._read_line(MORE_PROMPT)
            except EOFError:
                return "\n".join(lines)
            if more.rstrip().endswith('"""'):
                lines.append(more.rstrip()[:-3])
                return "\n".join(lines).strip("\n")
            lines.append(more)

    def _turn(self, start) -> Optional[int]:
        """Stream one reply; returns an exit status, or None to go on."""
        try:
            chunks = start()
        except (GPT2CyError, ValueError) as e:
            self._info(f"gpt2cy: {e}")
            if not self.interactive:                 # piped: still one output line per input line
                self.stdout.write("\n")
                self.stdout.flush()
            return None
        out = self.stdout
        if self.interactive:
            out.write("AI: ")
            out.flush()
        with deferred():                            # a notice while the reply streams follows its line
            return self._stream(chunks)

    def _stream(self, chunks) -> Optional[int]:
        out = self.stdout
        started = False
        last = None
        try:
            for chunk in chunks:
                last = chunk
                text = chunk.text
                if not started:
                    text = text.lstrip()
                    started = bool(text)
                if text:
                    out.write(self._screen(text))
                    out.flush()
        except KeyboardInterrupt:
            chunks.close()                          # the partial reply joins the history
            out.write("\n")
            out.flush()
            now = time.monotonic()
            if not self.interactive or now - self._last_interrupt < DOUBLE_INTERRUPT_S:
                return EXIT_INTERRUPT
            self._last_interrupt = now
            self._info("[interrupted]")
            return None
        except (GPT2CyError, ValueError) as e:
            out.write("\n")
            self._info(f"gpt2cy: {e}")
            return None
        out.write("\n")
        out.flush()
        if last is not None and last.response is not None:
            self.last_response = last.response
            if self.verbose:
                self._info(stats_line(last.response))
        return None

    # -- commands --------------------------------------------------------------------------------
    def _command(self, line: str) -> Optional[int]:
        parts = line.split(None, 2)
        cmd, args = parts[0].lower(), parts[1:]
        if cmd in ("/bye", "/exit", "/quit"):
            return 0
        if cmd in ("/help", "/?"):
            self._info(HELP)
        elif cmd == "/clear":
            self.chat.clear()
            self._info("Cleared the conversation.")
        elif cmd == "/regen":
            if not self.chat.turns:
                self._info("Nothing to regenerate yet.")
            else:
                return self._turn(lambda: self.chat.regen(stream=True))
        elif cmd == "/undo":
            self._info("Dropped the last exchange." if self.chat.undo() else "Nothing to undo.")
        elif cmd == "/set":
            self._set(args)
        elif cmd == "/show":
            self._show(args[0].lower() if args else "")
        elif cmd in ("/save", "/load"):
            self._transcript(cmd, line.split(None, 1)[1].strip() if args else "")
        else:
            self._info(f"Unknown command {parts[0]!r}. Type /? for help.")
        return None

    def _transcript(self, cmd: str, path: str) -> None:
        """/save FILE and /load FILE: a one-line report either way; a bad file never ends the REPL."""
        if not path:
            self._info(f"Usage: {cmd} FILE")
            return
        try:
            if cmd == "/save":
                self.chat.save(path, model_name=self.model_name or None)
                self._info(f"Saved {_n(len(self.chat.turns), 'turn')} to {path}.")
                return
            data = self.chat.load(path)
        except OSError as e:
            self._info(f"gpt2cy: cannot {cmd[1:]} {path}: {e.strerror or e}")
            return
        except ValueError as e:
            self._info(f"gpt2cy: cannot load {path}: {e}")
            return
        other = data.get("model")
        note = f" (saved with model {other})" if other and self.model_name and other != self.model_name else ""
        self._info(f"Loaded {_n(len(self.chat.turns), 'turn')} from {path}{note}.")

    def _set(self, args) -> None:
        if not args:
            self._info("Usage: /set PARAM VALUE (see /?)")
            return
        name = args[0].lower().replace("-", "_")
        value = args[1] if len(args) > 1 else None
        chat = self.chat
        if name == "verbose":
            self.verbose = True
            self._info("Stats on.")
            return
        if name == "quiet":
            self.verbose = False
            self._info("Stats off.")
            return
        if name == "stop":
            chat.stop = [unescape(value)] if value else []
            self._info(f"Set stop to {chat.stop[0]!r}." if chat.stop else "Cleared the extra stop strings.")
            return
        if name == "logit_bias" and not value:
            chat.params = chat.params.replace(logit_bias=None)
            self._info("Cleared the logit biases.")
            return
        if value is None:
            self._info(f"Usage: /set {name} VALUE")
            return
        shown = value
        try:
            if name == "multiline":
                on = value.lower() in ("on", "1", "true", "yes")
                if not on and value.lower() not in ("off", "0", "false", "no"):
                    raise ValueError("multiline takes on or off")
                chat.multiline = on
            elif name == "seed":
                shown = str(chat.reseed(_parse(int, value)))
            elif name == "threads":
                asked = _parse(int, value)
                chat.model.threads = asked
                got = chat.model.threads
                shown = str(got) if got == asked else f"{got} (the most gpt2cy runs; {asked} was asked for)"
            elif name in ("max_tokens", "max_new_tokens", "num_predict"):
                n = _parse(int, value)
                if n < -1:
                    raise ValueError("max_tokens must be >= -1 (-1 = no limit)")
                chat.max_new_tokens = None if n == -1 else n
                shown = str(n)
            elif name in _PARAMS:
                kind, field = _PARAMS[name]
                v = _parse(kind, value)
                chat.params = chat.params.replace(**{field: v})
                shown = f"{v:g}" if kind is float else str(v)
            elif name in _FLAG_PARAMS:
                flag, field = _FLAG_PARAMS[name]
                chat.params = chat.params.replace(**{field: _flag_value(flag, value)})
                v = getattr(chat.params, field)
                shown = ";".join(v) if field == "order" else f"{v:g}" if isinstance(v, float) else str(v)
            elif name == "logit_bias":
                params = chat.params.replace(logit_bias=_logit_biases(value))
                params.check_vocab(chat.model.config.n_vocab)     # before the next reply, not during it
                chat.params = params
                shown = _show_biases(params.logit_bias)
            else:
                self._info(f"Unknown parameter {name!r}. Type /? for the list.")
                return
        except ValueError as e:
            self._info(f"Invalid value for {name}: {e}")
            return
        self._info(f"Set {name} to {shown}.")

    def _show(self, what: str) -> None:
        chat = self.chat
        if what in ("", "params", "parameters"):
            p = chat.params
            mnt = -1 if chat.max_new_tokens is None else chat.max_new_tokens
            self._info(f"temp {p.temperature:g}, top_k {p.top_k}, top_p {p.top_p:g}, min_p {p.min_p:g}, "
                       f"repeat_penalty {p.repetition_penalty:g}, repeat_last_n {p.repeat_last_n}, "
                       f"presence_penalty {p.presence_penalty:g}, frequency_penalty {p.frequency_penalty:g}, "
                       f"min_keep {p.min_keep}, samplers {';'.join(p.order)}, "
                       f"logit_bias {_show_biases(p.logit_bias) or 'none'}, "
                       f"seed {chat.seed}, max_tokens {mnt}, stop {chat.stop!r}, "
                       f"multiline {'on' if chat.multiline else 'off'}, "
                       f"verbose {'on' if self.verbose else 'off'}")
        if what in ("", "model"):
            m = chat.model
            cfg = m.config
            self._info(f"model {self.model_name or cfg.name or '?'}: {cfg.n_params / 1e6:.0f}M parameters, "
                       f"n_layer {cfg.n_layer}, n_head {cfg.n_head}, n_embd {cfg.n_embd}, "
                       f"n_ctx {chat.n_ctx}{'' if chat.n_ctx == cfg.n_ctx else f' (of {cfg.n_ctx})'}, "
                       f"n_vocab {cfg.n_vocab}; "
                       f"threads {getattr(m, 'threads', '?')}{' (adapting)' if getattr(m, 'adaptive_threads', False) else ''}; path {getattr(m, 'path', '?')}")
        if what in ("", "context"):
            used, n_ctx = chat.context_used, chat.n_ctx
            full = " (full: the next message drops the oldest turns)" if used >= n_ctx else ""
            self._info(f"context {min(used, n_ctx)}/{n_ctx} tokens, {_n(len(chat.turns), 'turn')}{full}")
        if what == "stats":
            r = self.last_response
            self._info("No reply yet." if r is None else
                       f"{stats_line(r)} finish {r.finish_reason}, seed {r.seed}")
        if what not in ("", "params", "parameters", "model", "context", "stats"):
            self._info("Usage: /show [params|model|context|stats]")

    # -- readline --------------------------------------------------------------------------------
    def _setup_readline(self) -> None:
        if self.stdin is not sys.stdin:
            return
        try:
            import readline
        except ImportError:                          # e.g. Windows without pyreadline
            return
        self._readline = readline
        path = self.history
        if path and os.path.exists(path):
            try:
                readline.read_history_file(path)
            except OSError:
                pass
        readline.set_history_length(HISTORY_LINES)
        self._history_start = readline.get_current_history_length()

    def _save_history(self) -> None:
        """Append this session's lines to the history file (never rewrite it: another REPL may have added
        lines since we read it); readline then trims the file to HISTORY_LINES."""
        path, rl = self.history, self._readline
        if rl is None or path is None:
            return
        n = rl.get_current_history_length() - self._history_start
        if n <= 0:
            return
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if hasattr(rl, "append_history_file"):
                with open(path, "a", encoding="utf-8"):  # GNU readline appends only to a file that exists
                    pass
                rl.append_history_file(n, path)
            else:                                        # an old libedit: rewriting is all it can do
                rl.write_history_file(path)
            self._history_start += n
        except OSError:
            pass
