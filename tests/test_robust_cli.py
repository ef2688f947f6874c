"""Issue 12 on the command line: bad values exit 2 before a model loads, what was really set is said, input
that is not UTF-8 is reported (or refused with --strict), control characters in model text are escaped on a
terminal, and the REPL's history survives a second REPL, SIGTERM and SIGHUP.

Processes run as `python -m gpt2cy` (a pty through pexpect where a terminal matters) with HOME and the XDG
directories in a temporary directory; checks that only parse arguments run in-process.
"""
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from gpt2cy.cli.main import main
from gpt2cy.cli.terminal import decode_input, escape_controls
from gpt2cy.notices import captured

ESC = 215                                          # GPT-2's token for the single byte 0x1b


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    home = tmp_path_factory.mktemp("robust-home")
    e = {k: v for k, v in os.environ.items() if not k.startswith("GPT2CY_")}
    e.update(HOME=str(home), GPT2CY_HOME=str(home / "gpt2cy-home"), XDG_CACHE_HOME=str(home / "cache"),
             XDG_STATE_HOME=str(home / "state"), XDG_CONFIG_HOME=str(home / "config"), TERM="dumb",
             GPT2CY_NO_PROGRESS="1", OMP_NUM_THREADS="1", PYTHONIOENCODING="utf-8", INPUTRC=os.devnull)
    (home / "cwd").mkdir()
    return e


def run(env, *args, stdin=b"", timeout=60):
    r = subprocess.run([sys.executable, "-m", "gpt2cy", *args], input=stdin, env=env,
                       cwd=os.path.join(env["HOME"], "cwd"), capture_output=True, timeout=timeout)
    r.out, r.err = r.stdout.decode("utf-8", "replace"), r.stderr.decode("utf-8", "replace")
    return r


@pytest.fixture(scope="module")
def esc_model_dir(tmp_path_factory, vocab_dir):
    """A tiny model (HF layout) that always says ESC: ln_f maps every position to one vector, and ESC's
    embedding is the only one that vector points at strongly."""
    from gpt2cy.config import Config
    from gpt2cy.testing import write_random_model
    path = str(tmp_path_factory.mktemp("esc-model"))
    write_random_model(path, Config(n_vocab=50257, n_ctx=256, n_embd=32, n_head=2, n_layer=2, name="esc"),
                       seed=0, vocab_dir=vocab_dir, fmt="safetensors")
    st = os.path.join(path, "model.safetensors")
    with open(st, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    data = np.memmap(st, dtype=np.uint8, mode="r+", offset=8 + n)

    def tensor(suffix):
        [(name, spec)] = [(k, v) for k, v in header.items() if k.endswith(suffix)]
        a, b = spec["data_offsets"]
        return data[a:b].view("<f4").reshape(spec["shape"])
    wte = tensor("wte.weight")
    wte[ESC] *= 100
    tensor("ln_f.weight")[:] = 0
    tensor("ln_f.bias")[:] = wte[ESC] / np.linalg.norm(wte[ESC])
    data.flush()
    del data
    return path


# -- every bad value exits 2 at parse time -------------------------------------------------------------
NOT_A_MODEL = "/nonexistent/model/dir"
BAD_VALUES = [
    ["--temp", "inf"], ["--temp", "nan"], ["--temp", "-inf"], ["--temp", "-1"],
    ["--top-p", "-0.5"], ["--top-p", "nan"], ["--top-p", "inf"], ["--top-p", "2"],
    ["--min-p", "nan"], ["--min-p", "inf"], ["--repeat-penalty", "inf"], ["--repeat-penalty", "nan"],
    ["--repeat-penalty", "0"], ["--top-k", "-1"], ["--top-k", "x"], ["-n", "-2"], ["-n", "1.5"],
    ["-t", "0"], ["-t", "abc"], ["-c", "0"], ["-s", "-2"], ["--repeat-last-n", "-2"],
]


@pytest.mark.parametrize("bad", BAD_VALUES, ids=[" ".join(b) for b in BAD_VALUES])
@pytest.mark.parametrize("command", ["generate", "chat"])
def test_every_bad_value_exits_2_before_the_model_loads(command, bad, capsys):
    args = [command, "-m", NOT_A_MODEL, *bad] + (["-p", "hi"] if command == "generate" else [])
    assert main(args) == 2                          # a load would fail with 1 or 3: this never got there
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and bad[0] in err[0], err


@pytest.mark.parametrize("args", [["generate", "-m", "", "-p", "hi"], ["chat", "-m", " "], ["-m", ""],
                                  ["tokenize", "-m", "", "hi"]])
def test_empty_model_name_is_a_usage_error(args, capsys):
    assert main(args) == 2
    assert "expected a model name" in capsys.readouterr().err


def test_debug_in_a_prompt_is_not_the_flag(capsys):
    assert main(["tokenize", "-m", NOT_A_MODEL, "--", "--debug"]) != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert main(["tokenize", "-m", NOT_A_MODEL, "--debug", "--", "x"]) != 0     # the flag still works
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.parametrize("var,value", [("OMP_NUM_THREADS", "abc"), ("GPT2CY_NUM_THREADS", "0"),
                                       ("OMP_NUM_THREADS", "-3")])
def test_info_says_an_invalid_thread_variable_is_invalid(monkeypatch, capsys, var, value):
    for v in ("OMP_NUM_THREADS", "GPT2CY_NUM_THREADS"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv(var, value)
    assert main(["--info"]) == 0
    out = capsys.readouterr().out
    threads = next(line for line in out.splitlines() if line.startswith("threads:"))
    assert f"from {var}" not in threads and "adapting between 1 and" in threads and "(the CPUs available)" in threads
    assert f"invalid: {var}={value!r} is not a positive integer; ignored" in out


def test_threads_capped_says_what_was_set(env, tiny_model_dir):
    r = run(env, "generate", "-m", tiny_model_dir, "-t", "1000", "-n", "1", "-p", "hi")
    assert r.returncode == 0, r.err
    assert "1000 threads asked for; using 256" in r.err


# -- input that is not UTF-8 ---------------------------------------------------------------------------
BAD_UTF8 = b"Hello \xff world \xc3("


def test_decode_input_names_the_first_bad_byte():
    with captured() as notes:
        assert decode_input(BAD_UTF8, "stdin") == "Hello \ufffd world \ufffd("
        assert decode_input("fine \ufffd".encode(), "stdin") == "fine \ufffd"
    assert notes == ["stdin is not valid UTF-8: 2 invalid sequences, the first at byte offset 6 (0xff), "
                     "replaced by U+FFFD (--strict refuses such input)"]
    with pytest.raises(ValueError, match=r"stdin is not valid UTF-8: byte 0xff at offset 6"):
        decode_input(BAD_UTF8, "stdin", strict=True)


def test_prompt_file_stdin_and_preamble_that_are_not_utf8(env, tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(BAD_UTF8)
    r = run(env, "generate", "-m", tiny_model_dir, "-t", "1", "-n", "2", "-f", str(bad))
    assert r.returncode == 0 and f"prompt file {bad} is not valid UTF-8" in r.err and "offset 6" in r.err
    r = run(env, "generate", "-m", tiny_model_dir, "-t", "1", "-n", "2", "-p", "-", stdin=BAD_UTF8)
    assert r.returncode == 0 and "stdin is not valid UTF-8" in r.err and "offset 6" in r.err
    r = run(env, "chat", "-m", tiny_model_dir, "-t", "1", "-n", "2", "--preamble", str(bad), stdin=b"hi\n")
    assert r.returncode == 0 and f"preamble file {bad} is not valid UTF-8" in r.err
    r = run(env, "chat", "-m", tiny_model_dir, "-t", "1", "-n", "2", stdin=b"fine\n" + BAD_UTF8 + b"\n")
    assert r.returncode == 0 and "stdin line 2 is not valid UTF-8" in r.err and "offset 6" in r.err
    assert len(r.out.splitlines()) == 2                       # both lines were still answered
    r = run(env, "chat", "-m", tiny_model_dir, "-t", "1", "-n", "2", "--strict", stdin=BAD_UTF8 + b"\n")
    assert r.returncode == 1 and "stdin line 1 is not valid UTF-8: byte 0xff at offset 6" in r.err
    good = run(env, "generate", "-m", tiny_model_dir, "-t", "1", "-n", "2", "-p", "-", stdin=b"Hello")
    assert good.returncode == 0 and good.err == ""


@pytest.mark.parametrize("how", ["-f", "stdin", "--preamble"])
def test_strict_refuses_input_that_is_not_utf8_before_loading(env, tmp_path, how):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(BAD_UTF8)
    args = {"-f": ["generate", "-f", str(bad)], "stdin": ["generate", "-p", "-"],
            "--preamble": ["chat", "--preamble", str(bad)]}[how]
    r = run(env, *args, "-m", NOT_A_MODEL, "--strict", stdin=BAD_UTF8)
    assert r.returncode == 1 and "not valid UTF-8: byte 0xff at offset 6" in r.err, r.err
    assert len(r.err.strip().splitlines()) == 1


# -- control characters in model text ------------------------------------------------------------------
def test_escape_controls():
    assert escape_controls("plain\ttext\n") == "plain\ttext\n"
    assert escape_controls("\x1b[2J\x07a\rb\x08\x7f\x9b") == "\\x1b[2J\\x07a\\x0db\\x08\\x7f\\x9b"
    assert escape_controls("caf\u00e9 \U0001f600") == "caf\u00e9 \U0001f600"


def test_model_text_is_escaped_on_a_terminal_and_raw_in_a_pipe(env, esc_model_dir):
    pexpect = pytest.importorskip("pexpect")
    args = ["-m", "gpt2cy", "generate", "-m", esc_model_dir, "-t", "1", "-n", "3", "--temp", "0", "-p", "hi"]
    child = pexpect.spawn(sys.executable, args, env=env, cwd=os.path.join(env["HOME"], "cwd"), timeout=60)
    child.expect(pexpect.EOF)
    child.wait()
    assert b"\\x1b\\x1b\\x1b" in child.before and b"\x1b" not in child.before
    raw = pexpect.spawn(sys.executable, args + ["--raw-output"], env=env, timeout=60)
    raw.expect(pexpect.EOF)
    assert b"\x1b\x1b\x1b" in raw.before
    piped = run(env, *args[2:])
    assert piped.returncode == 0 and piped.stdout == b"\x1b\x1b\x1b"
    js = run(env, *args[2:], "--json")
    assert json.loads(js.out)["text"] == "\x1b\x1b\x1b"


def test_repl_replies_are_escaped_on_a_terminal(env, esc_model_dir):
    pexpect = pytest.importorskip("pexpect")
    child = pexpect.spawn(sys.executable, ["-m", "gpt2cy", "-m", esc_model_dir, "-t", "1", "-n", "4",
                                           "--no-history"], env=env, timeout=60)
    child.expect_exact(b"Human: ")
    child.sendline("hi")
    child.expect(rb"AI: ([^\r\n]*)\r\n")
    assert child.match.group(1) == b"\\x1b" * 4
    child.expect_exact(b"Human: ")
    child.sendline("/bye")
    child.expect(pexpect.EOF)
    piped = run(env, "chat", "-m", esc_model_dir, "-t", "1", "-n", "4", stdin=b"hi\n")
    assert piped.returncode == 0 and piped.stdout == b"\x1b" * 4 + b"\n"


# -- -p - on a terminal ------------------------------------------------------------------------------
def test_prompt_from_a_terminal_says_how_to_end_it(env, tiny_model_dir):
    pexpect = pytest.importorskip("pexpect")
    child = pexpect.spawn(sys.executable, ["-m", "gpt2cy", "generate", "-m", tiny_model_dir, "-t", "1",
                                           "-n", "2", "-p", "-"], env=env, timeout=60, encoding="utf-8")
    child.expect_exact("end the input with Ctrl-D")
    child.sendline("Once upon a time")
    child.sendeof()
    child.expect(pexpect.EOF)
    child.wait()
    assert child.exitstatus == 0


def test_ctx_size_past_a_published_models_limit_exits_2_before_loading(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("GPT2CY_HOME", str(tmp_path))          # an empty cache: loading would exit 3
    assert main(["generate", "-m", "gpt2-xl", "-c", "2048", "-p", "hi", "--offline"]) == 2
    assert "GPT-2 1558M's context holds at most 1024 tokens" in capsys.readouterr().err


def test_prompt_too_long_names_the_flag_that_lets_it_run(env, tiny_model_dir):
    r = run(env, "generate", "-m", tiny_model_dir, "-t", "1", "-n", "2", "-p", "hello " * 300)
    assert r.returncode == 5
    assert r.err.strip() == ("gpt2cy: error: the prompt is 301 tokens but the model's context holds 256; "
                             "shorten it, or pass --context-overflow shift to keep its newest tokens")


def test_verify_of_a_huggingface_folder_needs_no_tokenizer_files(tmp_path, capsys):
    from gpt2cy.config import Config
    from gpt2cy.testing import write_random_model
    path = write_random_model(str(tmp_path / "hf"), Config(n_vocab=300, n_ctx=16, n_embd=8, n_head=2, n_layer=1),
                              fmt="safetensors")
    for name in ("vocab.json", "merges.txt"):
        if os.path.exists(os.path.join(path, name)):
            os.remove(os.path.join(path, name))
    assert main(["verify", path]) == 0
    assert capsys.readouterr().out.strip().endswith("values ok (safetensors has no checksums)")


def test_a_closed_stdout_is_exit_141_without_a_traceback(env, tiny_model_dir, tmp_path):
    """`gpt2cy tokenize < big.txt | head -c 10`: the reader leaves; gpt2cy leaves quietly with 141."""
    big = tmp_path / "big.txt"
    big.write_text("hello world " * 100_000)            # ~1 MB of ids: far more than a pipe holds
    with open(big, "rb") as stdin:
        p = subprocess.Popen([sys.executable, "-m", "gpt2cy", "tokenize", "-m", tiny_model_dir], stdin=stdin,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                             cwd=os.path.join(env["HOME"], "cwd"))
        assert p.stdout.read(10) == b"31373 995 "
        p.stdout.close()
        err = p.stderr.read().decode()
        assert p.wait(timeout=60) == 141 and err == "", err


def test_counts_of_one_are_singular(env, tiny_model_dir):
    r = run(env, "generate", "-m", tiny_model_dir, "-t", "1", "-n", "1", "-p", "hi", "--temp", "0", "-v")
    assert r.returncode == 0, r.err
    assert "prompt 1 token\n" in r.err and "prompt 1 token (0 cached)" in r.err and "generated 1 token," in r.err
    assert "1 thread;" in r.err and "1 tokens" not in r.err


@pytest.mark.parametrize("n_ctx,message", [
    (0, "n_ctx must be a positive integer (at most the model's context: 1024 for the published sizes), got 0"),
    (-1, "got -1"), (257, "n_ctx must be between 1 and the model's 256, got 257")])
def test_n_ctx_errors_name_the_real_limit(tiny_model_dir, n_ctx, message):
    import gpt2cy
    with pytest.raises(ValueError) as e:
        gpt2cy.load(tiny_model_dir, n_ctx=n_ctx, threads=1)
    assert message in str(e.value) and str(sys.maxsize) not in str(e.value)
