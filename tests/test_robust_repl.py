"""Issue 12 in the REPL, through a real pty: history is appended (two REPLs at once keep both sessions'
lines) and saved on SIGTERM and SIGHUP; /set answers in its own words and says what was really set."""
import os
import signal
import sys

import pytest

pexpect = pytest.importorskip("pexpect")

PROMPT = "Human: "


@pytest.fixture
def env(tmp_path):
    home = tmp_path / "home"
    e = {k: v for k, v in os.environ.items() if not k.startswith("GPT2CY_")}
    e.update(HOME=str(home), GPT2CY_HOME=str(home / "gpt2cy-home"), XDG_CACHE_HOME=str(home / "cache"),
             XDG_STATE_HOME=str(home / "state"), XDG_CONFIG_HOME=str(home / "config"), TERM="dumb",
             OMP_NUM_THREADS="1", PYTHONIOENCODING="utf-8", INPUTRC=os.devnull)
    (home / "cwd").mkdir(parents=True)
    return e


def history_file(env):
    return os.path.join(env["XDG_STATE_HOME"], "gpt2cy", "history")


def history(env):
    with open(history_file(env), encoding="utf-8") as f:
        return f.read().splitlines()


def spawn(env, model_dir, *args):
    child = pexpect.spawn(sys.executable, ["-m", "gpt2cy", "-m", model_dir, "-t", "1", "-n", "3", *args],
                          env=env, cwd=os.path.join(env["HOME"], "cwd"), encoding="utf-8",
                          codec_errors="replace", timeout=60, dimensions=(50, 250))
    child.expect_exact("AI: How can I help you?")
    child.expect_exact(PROMPT)
    return child


def command(child, line, expect):
    child.sendline(line)
    child.expect(expect)
    child.expect_exact(PROMPT)


def enter(child, line):
    """A line the history keeps, answered by the REPL (a /show needs no model time)."""
    command(child, line, r"context \d+/\d+ tokens")


def bye(child):
    child.sendline("/bye")
    child.expect(pexpect.EOF)
    child.wait()
    return child.exitstatus


def test_two_repls_at_once_keep_both_histories(env, tiny_model_dir):
    a = spawn(env, tiny_model_dir)
    b = spawn(env, tiny_model_dir)
    enter(a, "/show context alpha-line")
    enter(b, "/show context beta-line")
    assert bye(b) == 0                              # b leaves first
    enter(a, "/show context alpha-again")
    assert bye(a) == 0                              # a's save must not drop b's lines
    lines = history(env)
    for line in ("/show context alpha-line", "/show context beta-line", "/show context alpha-again"):
        assert lines.count(line) == 1, lines
    c = spawn(env, tiny_model_dir)                  # a third session appends, keeping all before it
    enter(c, "/show context gamma-line")
    assert bye(c) == 0
    assert history(env)[:len(lines)] == lines and history(env)[-2:] == ["/show context gamma-line", "/bye"]


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_save_the_history(env, tiny_model_dir, sig):
    child = spawn(env, tiny_model_dir)
    enter(child, f"/show context before-{sig}")
    child.kill(getattr(signal, sig))
    child.expect(pexpect.EOF)
    child.wait()
    assert child.signalstatus is None and child.exitstatus == 128 + getattr(signal, sig)
    assert f"/show context before-{sig}" in history(env)


def test_set_answers_in_its_own_words_and_says_what_was_set(env, tiny_model_dir):
    child = spawn(env, tiny_model_dir, "--no-history")
    command(child, "/set top_k abc", r"Invalid value for top_k: expected an integer, got 'abc'")
    command(child, "/set temp x", r"Invalid value for temp: expected a number, got 'x'")
    command(child, "/set temp inf", r"Invalid value for temp: .*finite")
    command(child, "/set threads 1000", r"Set threads to 256 \(the most gpt2cy runs; 1000 was asked for\)\.")
    command(child, "/show model", r"threads 256;")
    command(child, "/set threads 1", r"Set threads to 1\.")
    command(child, "/set temp 0.50", r"Set temp to 0\.5\.")
    command(child, "/set seed -1", r"Set seed to \d+\.")          # the seed drawn, not "-1"
    assert bye(child) == 0


def test_show_context_never_reports_more_than_the_context(tiny_model_dir):
    """A conversation can hold more tokens than the context (the next message drops the oldest turns):
    /show context says it is full, never "300/256"."""
    import io
    import gpt2cy
    from gpt2cy.cli.repl import Repl
    from gpt2cy.generation.chat import Chat, Turn
    chat = Chat(gpt2cy.load(tiny_model_dir, threads=1), on_notice=None)
    chat.turns = [Turn(user="x", reply="y", user_ids=[0] * 300, reply_ids=[1])]
    assert chat.context_used > chat.n_ctx == 256
    err = io.StringIO()
    repl = Repl(chat, stdin=io.StringIO("/show context\n"), stdout=io.StringIO(), stderr=err,
                interactive=False)
    assert repl.run() == 0
    assert err.getvalue() == "context 256/256 tokens, 1 turn (full: the next message drops the oldest turns)\n"
