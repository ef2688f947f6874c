"""The real REPL driven through a pseudo-terminal (pexpect): greeting, turns, commands, Ctrl-C, Ctrl-D.

HOME and the XDG directories point into a temporary directory, so the readline history file is
written there and never in the user's home.
"""
import os
import re
import sys
import time

import pytest

pexpect = pytest.importorskip("pexpect")

PROMPT = "Human: "
REPLY = re.compile(r"AI: ([^\r\n]*)\r\n")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    home = tmp_path_factory.mktemp("repl-home")
    e = {k: v for k, v in os.environ.items() if not k.startswith("GPT2CY_")}
    e.update(HOME=str(home), GPT2CY_HOME=str(home / "gpt2cy-home"), XDG_CACHE_HOME=str(home / "cache"),
             XDG_STATE_HOME=str(home / "state"), XDG_CONFIG_HOME=str(home / "config"), TERM="dumb",
             OMP_NUM_THREADS="1", PYTHONIOENCODING="utf-8", INPUTRC=os.devnull)
    (home / "cwd").mkdir()
    return e


@pytest.fixture(scope="module")
def slow_model_dir(tmp_path_factory, vocab_dir):
    """n_ctx 1024 and wide enough (~2 ms a token) that a long reply lasts a second or two."""
    from gpt2cy.config import Config
    from gpt2cy.testing import write_random_model
    path = tmp_path_factory.mktemp("gpt2-slow")
    return write_random_model(str(path), Config(n_vocab=50257, n_ctx=1024, n_embd=256, n_head=4, n_layer=2,
                                                name="slow"), seed=1, vocab_dir=vocab_dir)


def spawn(env, model_dir, *args):
    child = pexpect.spawn(sys.executable, ["-m", "gpt2cy", "-m", model_dir, "-t", "1", *args], env=env,
                          cwd=os.path.join(env["HOME"], "cwd"), encoding="utf-8", codec_errors="replace",
                          timeout=30, dimensions=(50, 250))
    child.expect(r"/\? for help")
    child.expect_exact("AI: How can I help you?")
    child.expect_exact(PROMPT)
    return child


def say(child, line):
    """Send a line and return the reply shown after 'AI: '."""
    child.sendline(line)
    child.expect(REPLY)
    reply = child.match.group(1)
    child.expect_exact(PROMPT)
    return reply


def command(child, line, expect):
    child.sendline(line)
    child.expect(expect)
    match = child.match
    child.expect_exact(PROMPT)
    return match


def finish(child, status):
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == status, child.before


def test_conversation_commands_and_ctrl_d(env, tiny_model_dir):
    child = spawn(env, tiny_model_dir, "-s", "3", "-n", "6")
    first = say(child, "Hello there, who are you?")
    assert "\ufffd" not in first
    os.write(child.child_fd, b"caf\xe9 \xff\xfe bytes that are not UTF-8\r")
    child.expect(REPLY)
    child.expect_exact(PROMPT)
    command(child, "/set temp 0", r"Set temp to 0\.")
    command(child, "/set top_k 5", r"Set top_k to 5\.")
    command(child, "/set top_p 2", r"Invalid value for top_p")
    command(child, "/set wibble 1", r"Unknown parameter")
    command(child, "/show params", r"temp 0, top_k 5, top_p 0\.95")
    command(child, "/show model", r"n_ctx 256")
    command(child, "/show context", r"context \d+/256 tokens, 2 turns")
    a = say(child, "/regen")                                 # greedy now: the same reply twice
    b = say(child, "/regen")
    assert a == b
    command(child, "/show context", r"2 turns")
    command(child, "/set verbose", r"Stats on")
    child.sendline("And then?")
    child.expect(REPLY)
    child.expect(r"\[prompt: \d+ tokens \(\d+ cached\), [\d.]+ t/s \| reply: \d+ tokens, [\d.]+ t/s\]")
    child.expect_exact(PROMPT)
    command(child, "/set quiet", r"Stats off")
    command(child, "/show stats", r"\[prompt: \d+ tokens \(\d+ cached\).*\] finish (stop|length|eos), seed 3")
    child.sendline('"""')                                    # multi-line message
    child.sendline("line one")
    child.sendline('line two"""')
    child.expect(REPLY)
    child.expect_exact(PROMPT)
    command(child, "/show context", r"4 turns")
    command(child, "/undo", r"Dropped the last exchange")
    command(child, "/show context", r"3 turns")
    command(child, "<|endoftext|> \x1b[31m control \x07 " + "long " * 400,   # too long: one line, no crash
            r"gpt2cy: the message is \d+ tokens; at most \d+ fit")
    say(child, "<|endoftext|> \x1b[31m control \x07")
    command(child, "/clear", r"Cleared the conversation")
    command(child, "/show context", r"context \d+/256 tokens, 0 turns")
    command(child, "/?", r"/regen")
    command(child, "/nope", r"Unknown command")
    child.sendeof()                                          # Ctrl-D
    finish(child, 0)
    with open(os.path.join(env["XDG_STATE_HOME"], "gpt2cy", "history"), encoding="utf-8", errors="replace") as f:
        assert "Hello there, who are you?" in f.read()


def test_set_takes_the_newer_sampling_settings_as_the_flags_do(env, tiny_model_dir):
    """/set presence_penalty, frequency_penalty, min_keep, samplers and logit_bias: what the command line's
    flags accept, refused with the flags' own messages, shown by /show params and used by the next reply."""
    from gpt2cy.cli.parser import UsageError, build_parser

    def flag_error(*argv):
        with pytest.raises(UsageError) as e:
            build_parser().parse_args(["chat", *argv])
        return str(e.value)

    child = spawn(env, tiny_model_dir, "-s", "3", "-n", "4")
    command(child, "/set presence_penalty 1.5", r"Set presence_penalty to 1\.5\.")
    command(child, "/set frequency-penalty -0.5", r"Set frequency_penalty to -0\.5\.")
    command(child, "/set min_keep 3", r"Set min_keep to 3\.")
    command(child, "/set samplers penalties;top_k;top_p;min_p;temperature",
            r"Set samplers to penalties;top_k;top_p;min_p;temperature\.")
    command(child, "/set logit_bias 262+100, 50256 - 100", r"Set logit_bias to 262\+100 50256-100\.")
    command(child, "/show params", r"presence_penalty 1\.5, frequency_penalty -0\.5, min_keep 3, "
                                   r"samplers penalties;top_k;top_p;min_p;temperature, logit_bias 262\+100 50256-100")
    for line, argv, msg in [
            ("/set presence_penalty 3", ("--presence-penalty", "3"), "presence-penalty must be <= 2.0, got 3"),
            ("/set frequency_penalty x", ("--frequency-penalty", "x"), "expected a number, got 'x'"),
            ("/set min_keep -1", ("--min-keep", "-1"), "min-keep must be >= 0, got -1"),
            ("/set samplers top_k;top_q", ("--samplers", "top_k;top_q"), "unknown sampler 'top_q'"),
            ("/set logit_bias 262*2", ("-l", "262*2"), "expected TOKEN_ID+BIAS or TOKEN_ID-BIAS"),
            ("/set logit_bias 262+101", ("-l", "262+101"), "the bias must be in [-100, 100]")]:
        assert msg in flag_error(*argv)
        name = line.split()[1]
        command(child, line, rf"Invalid value for {name}: [^\r\n]*{re.escape(msg)}")
    command(child, "/set logit_bias 50257+1", r"Invalid value for logit_bias: logit_bias names token 50257, "
                                              r"but the vocabulary has 50257 tokens")
    command(child, "/show params", r"presence_penalty 1\.5, .*logit_bias 262\+100 50256-100")   # unchanged
    command(child, "/set presence_penalty 0", r"Set presence_penalty to 0\.")
    command(child, "/set frequency_penalty 0", r"Set frequency_penalty to 0\.")
    assert say(child, "Say something.").split() == ["the"] * 4      # +100 on " the": the reply is " the" x4
    command(child, "/set logit_bias", r"Cleared the logit biases\.")
    command(child, "/show params", r"logit_bias none")
    assert say(child, "Say something.").split() != ["the"] * 4
    command(child, "/set samplers", r"Usage: /set samplers VALUE")
    child.sendeof()
    finish(child, 0)


def test_save_and_load_a_transcript(env, tiny_model_dir, tmp_path):
    import json
    child = spawn(env, tiny_model_dir, "-s", "3", "-n", "5", "--temp", "0")
    say(child, "Hello there")
    say(child, "And what else?")
    path = tmp_path / "chat file.json"                       # a name with a space
    command(child, f"/save {path}", r"Saved 2 turns to ")
    command(child, "/clear", r"Cleared")
    command(child, f"/load {tmp_path / 'missing.json'}", r"gpt2cy: cannot load .*missing\.json: No such file")
    (tmp_path / "bad.json").write_bytes(b"{oops")
    command(child, f"/load {tmp_path / 'bad.json'}", r"gpt2cy: cannot load .*bad\.json: not a transcript")
    command(child, "/load", r"Usage: /load FILE")
    command(child, "/show context", r"0 turns")
    command(child, f"/load {path}", r"Loaded 2 turns from ")
    command(child, "/show context", r"context \d+/256 tokens, 2 turns")
    data = json.loads(path.read_text(encoding="utf-8"))
    assert [t["user"] for t in data["turns"]] == ["Hello there", "And what else?"]
    assert data["params"]["temperature"] == 0 and data["params"]["max_tokens"] == 5
    say(child, "Go on")                                      # the restored conversation carries on
    command(child, "/show context", r"3 turns")
    child.sendline("/bye")
    finish(child, 0)


def test_ctrl_c_twice_at_the_prompt_exits_130(env, tiny_model_dir):
    child = spawn(env, tiny_model_dir, "-n", "4")
    child.sendintr()
    child.expect_exact("Use Ctrl + d or /bye to exit.")
    child.expect_exact(PROMPT)
    child.sendintr()
    finish(child, 130)


def start_a_long_reply_and_interrupt_it(env, slow_model_dir):
    child = spawn(env, slow_model_dir, "-n", "-1", "--multiline", "-s", "1")
    child.sendline("Tell me a very long story.")
    child.expect(r"AI: \S.{20}")                            # the reply is streaming
    child.sendintr()
    child.expect_exact("[interrupted]")
    child.expect_exact(PROMPT)
    return child


def test_ctrl_c_at_the_prompt_within_a_second_of_stopping_a_reply_exits_130(env, slow_model_dir):
    """The "twice within a second" rule alone: the first Ctrl-C stopped a reply, not at the prompt."""
    child = start_a_long_reply_and_interrupt_it(env, slow_model_dir)
    child.sendintr()
    finish(child, 130)


def test_ctrl_c_twice_at_the_prompt_exits_however_far_apart(env, slow_model_dir):
    """The "twice at the prompt" rule alone: seconds apart, and only when nothing was typed in between."""
    child = start_a_long_reply_and_interrupt_it(env, slow_model_dir)
    time.sleep(1.3)
    child.sendintr()                                        # a reply's Ctrl-C, then one at the prompt: a hint
    child.expect_exact("Use Ctrl + d or /bye to exit.")
    child.expect_exact(PROMPT)
    command(child, "/set max_tokens 3", r"Set max_tokens to 3\.")    # a line typed: the count starts again
    time.sleep(1.3)
    child.sendintr()
    child.expect_exact("Use Ctrl + d or /bye to exit.")
    child.expect_exact(PROMPT)
    time.sleep(1.3)
    child.sendintr()                                        # the second at the prompt, more than a second later
    finish(child, 130)


def test_context_full_notice_follows_the_text_on_its_own_line(env, tiny_model_dir):
    """On a terminal stdout and stderr share the screen: the notice comes after the text's line ends."""
    child = pexpect.spawn(sys.executable, ["-m", "gpt2cy", "generate", "-m", tiny_model_dir, "-t", "1", "-c", "40",
                                           "-p", "Hello", "-n", "-1", "--ignore-eos", "-s", "2"], env=env,
                          cwd=os.path.join(env["HOME"], "cwd"), encoding="utf-8", codec_errors="replace",
                          timeout=30)
    finish(child, 0)
    screen = child.before
    assert screen.count("context full") == 1
    assert screen.endswith("\r\ngpt2cy: context full (40 tokens): stopped\r\n"), screen[-200:]
    assert screen[:-len("\r\ngpt2cy: context full (40 tokens): stopped\r\n")].strip()


def test_ctrl_c_stops_a_long_reply_and_keeps_it(env, slow_model_dir):
    child = spawn(env, slow_model_dir, "-n", "-1", "--multiline", "-s", "1")
    child.sendline("Tell me a very long story.")
    child.expect(r"AI: \S.{20}")                            # the reply is streaming
    child.sendintr()
    child.expect_exact("[interrupted]")
    child.expect_exact(PROMPT)
    used = int(command(child, "/show context", r"context (\d+)/1024 tokens, 1 turn").group(1))
    assert used < 1000                                        # cut well before the context was full
    child.sendline("/bye")
    finish(child, 0)


def test_ctrl_c_in_generate_exits_130_keeping_the_text(env, slow_model_dir):
    child = pexpect.spawn(sys.executable, ["-m", "gpt2cy", "generate", "-m", slow_model_dir, "-t", "1", "-n", "-1",
                                           "--ignore-eos", "-p", "Once upon a time"], env=env,
                          cwd=os.path.join(env["HOME"], "cwd"), encoding="utf-8", codec_errors="replace",
                          timeout=30)
    child.expect(r"\S.{20}")                                 # text is streaming
    child.sendintr()
    finish(child, 130)
    assert "Traceback" not in child.before


def test_history_can_be_turned_off(env, tiny_model_dir, tmp_path):
    e = dict(env, XDG_STATE_HOME=str(tmp_path / "state"), GPT2CY_NOHISTORY="1")
    child = spawn(e, tiny_model_dir, "-n", "2")
    say(child, "hi")
    child.sendline("/exit")
    finish(child, 0)
    assert not (tmp_path / "state").exists()


def test_no_history_flag(env, tiny_model_dir, tmp_path):
    e = dict(env, XDG_STATE_HOME=str(tmp_path / "state"))
    child = spawn(e, tiny_model_dir, "-n", "2", "--no-history")
    say(child, "hi")
    child.sendline("/exit")
    finish(child, 0)
    assert not (tmp_path / "state").exists()


def test_history_path_and_escapes(monkeypatch, tmp_path):
    from gpt2cy.cli.repl import history_path, unescape
    monkeypatch.delenv("GPT2CY_NOHISTORY", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "s"))
    assert history_path() == str(tmp_path / "s" / "gpt2cy" / "history")
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert history_path() == str(tmp_path / ".local" / "state" / "gpt2cy" / "history")
    monkeypatch.setenv("GPT2CY_NOHISTORY", "0")
    assert history_path() is not None
    monkeypatch.setenv("GPT2CY_NOHISTORY", "1")
    assert history_path() is None
    assert unescape("a\\nb\\tc\\\\n\\q") == "a\nb\tc\\n\\q"
