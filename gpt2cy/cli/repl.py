"""The terminal chat: `AI: How can I help you?` / `Human: ` with streamed replies.

On a terminal: a banner on stderr, readline editing and history, slash commands, two-stage Ctrl-C
(the first stops a reply, or at the prompt says how to leave; a second one within a second, or a
second one at the prompt, exits with 130). With piped stdin: each line is one turn, only the replies
are printed, and EOF exits 0. Model text goes to stdout; everything else to stderr.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Optional, TextIO

from ..errors import GPT2CyError
from ..generation.chat import GREETING, Chat
from ..notices import deferred

EXIT_INTERRUPT = 130
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
                            max_tokens (-1 = no limit), stop (no value clears), multiline on|off,
                            threads (1 on a machine busy with other work)
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
    return (f"[prompt: {u.prompt_tokens - u.cached_tokens} tokens ({u.cached_tokens} cached), "
            f"{t.prompt_tps:.1f} t/s | reply: {u.completion_tokens} tokens, {t.gen_tps:.1f} t/s]")


class Repl:
    """Runs the chat loop over a Chat; `run()` returns the exit status.

    history: the readline history file to read at start and write at exit (None: none kept).
    """

    def __init__(self, chat: Chat, *, verbose: bool = False, model_name: str = "", banner: str = "",
                 history: Optional[str] = None, stdin: TextIO = None, stdout: TextIO = None,
                 stderr: TextIO = None, interactive: Optional[bool] = None):
        self.chat = chat
        self.history = history
        self.verbose = verbose
        self.model_name = model_name
        self.banner = banner
        self.stdin = stdin or sys.stdin
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self.interactive = self.stdin.isatty() if interactive is None else interactive
        self._last_interrupt = float("-inf")
        self.last_response = None                   # the Response of the last reply that finished
        self._readline = None

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
        try:
            return self._loop()
        finally:
            self._save_history()

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
                    out.write(text)
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
                self._info(f"Saved {len(self.chat.turns)} turns to {path}.")
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
        self._info(f"Loaded {len(self.chat.turns)} turns from {path}{note}.")

    def _set(self, args) -> None:
        if not args:
            self._info("Usage: /set PARAM VALUE (see /?)")
            return
        name = args[0].lower()
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
        if value is None:
            self._info(f"Usage: /set {name} VALUE")
            return
        try:
            if name == "multiline":
                on = value.lower() in ("on", "1", "true", "yes")
                if not on and value.lower() not in ("off", "0", "false", "no"):
                    raise ValueError("multiline takes on or off")
                chat.multiline = on
            elif name == "seed":
                chat.reseed(int(value))
            elif name == "threads":
                chat.model.threads = int(value)
            elif name in ("max_tokens", "max_new_tokens", "num_predict"):
                n = int(value)
                if n < -1:
                    raise ValueError("max_tokens must be >= -1 (-1 = no limit)")
                chat.max_new_tokens = None if n == -1 else n
            elif name in _PARAMS:
                kind, field = _PARAMS[name]
                chat.params = chat.params.replace(**{field: kind(value)})
            else:
                self._info(f"Unknown parameter {name!r}. Type /? for the list.")
                return
        except ValueError as e:
            self._info(f"Invalid value for {name}: {e}")
            return
        self._info(f"Set {name} to {value}.")

    def _show(self, what: str) -> None:
        chat = self.chat
        if what in ("", "params", "parameters"):
            p = chat.params
            mnt = -1 if chat.max_new_tokens is None else chat.max_new_tokens
            self._info(f"temp {p.temperature:g}, top_k {p.top_k}, top_p {p.top_p:g}, min_p {p.min_p:g}, "
                       f"repeat_penalty {p.repetition_penalty:g}, repeat_last_n {p.repeat_last_n}, "
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
                       f"threads {getattr(m, 'threads', '?')}; path {getattr(m, 'path', '?')}")
        if what in ("", "context"):
            self._info(f"context {chat.context_used}/{chat.n_ctx} tokens, {len(chat.turns)} turns")
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
        readline.set_history_length(1000)

    def _save_history(self) -> None:
        path = self.history
        if self._readline is None or path is None:
            return
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            self._readline.write_history_file(path)
        except OSError:
            pass
