"""The one notice sink: the library never prints; notices reach the "gpt2cy" logger or a handler; the
command line prints them on stderr, after streamed text."""
import logging
import os
import subprocess
import sys

import pytest

from gpt2cy import notices
from gpt2cy.generation.loop import generate
from fake_lm import FakeModel


@pytest.fixture(autouse=True)
def no_handler():
    old = notices.set_notice_handler(None)
    yield
    notices.set_notice_handler(old)


def truncate_and_fill():
    """A library call that truncates its prompt and then fills the context: two notices."""
    model = FakeModel(n_ctx=16)
    return generate(model, list(range(40)), truncate=True, max_new_tokens=100, seed=0, ignore_eos=True)


def test_library_notices_go_to_the_logger_and_never_to_stderr(capfd, caplog):
    with caplog.at_level(logging.WARNING, logger="gpt2cy"):
        truncate_and_fill()
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    got = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    assert [m for _, _, m in got if "kept the last" in m] and [m for _, _, m in got if "context full" in m]
    assert all(name == "gpt2cy" and level == logging.WARNING for name, level, _ in got)


def test_a_handler_gets_them_instead(capfd):
    got = []
    assert notices.set_notice_handler(got.append) is None
    truncate_and_fill()
    assert any("kept the last" in m for m in got) and got[-1] == "context full (16 tokens): stopped"
    assert capfd.readouterr().err == ""
    with notices.captured() as inner:
        notices.notice("x")
    assert inner == ["x"] and "x" not in got
    assert notices.set_notice_handler(None) == got.append


def test_deferred_passes_them_on_after_the_block_also_on_errors():
    got = []
    notices.set_notice_handler(got.append)
    with notices.deferred():
        notices.notice("a")
        notices.notice("b")
        assert got == []
    assert got == ["a", "b"]
    with pytest.raises(KeyboardInterrupt):
        with notices.deferred():
            notices.notice("c")
            raise KeyboardInterrupt
    assert got == ["a", "b", "c"]


def test_to_stderr_prints_one_line(capsys):
    old = notices.to_stderr()
    try:
        notices.notice("hello")
    finally:
        notices.set_notice_handler(old)
    assert capsys.readouterr().err == "gpt2cy: hello\n"


def test_the_command_line_restores_the_handler(capsys, tiny_model_dir):
    from gpt2cy.cli.main import main
    assert main(["tokenize", "-m", tiny_model_dir, "hi"]) == 0
    assert notices.set_notice_handler(None) is None


def test_a_script_writes_nothing_to_stderr(tiny_model_dir):
    """A real process, no test harness: truncating the prompt and filling the context print nothing; a
    logging handler added by the script sees both."""
    code = ("import logging, sys, gpt2cy\n"
            "m = gpt2cy.load(sys.argv[1], threads=1)\n"
            "m.generate('word ' * 300, truncate=True, max_new_tokens=400, seed=1, ignore_eos=True)\n"
            "seen = []\n"
            "h = logging.Handler(); h.emit = lambda r: seen.append(r.getMessage())\n"
            "logging.getLogger('gpt2cy').addHandler(h)\n"
            "m.generate('word ' * 300, truncate=True, max_new_tokens=400, seed=1, ignore_eos=True)\n"
            "print(len(seen), any('kept the last' in s for s in seen), any('context full' in s for s in seen))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPT2CY_")}
    r = subprocess.run([sys.executable, "-c", code, tiny_model_dir], env=dict(env, OMP_NUM_THREADS="1"),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "" and r.stdout.split() == ["2", "True", "True"]
