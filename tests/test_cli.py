"""The `gpt2cy` command: every subcommand and exit status, run as a real process on the tiny checkpoint.

Each run is `python -m gpt2cy ...` with HOME, XDG and GPT2CY_HOME pointing into a temporary directory,
so nothing touches the user's caches or history. Variants that only parse arguments run in-process.
"""
import json
import os
import re
import subprocess
import sys

import pytest

from gpt2cy.cli.main import main


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    home = tmp_path_factory.mktemp("cli-home")
    e = {k: v for k, v in os.environ.items() if not k.startswith("GPT2CY_")}
    e.update(HOME=str(home), GPT2CY_HOME=str(home / "gpt2cy-home"), XDG_CACHE_HOME=str(home / "cache"),
             XDG_STATE_HOME=str(home / "state"), XDG_CONFIG_HOME=str(home / "config"),
             GPT2CY_NO_PROGRESS="1", OMP_NUM_THREADS="1", PYTHONIOENCODING="utf-8")
    (home / "cwd").mkdir()
    return e


def gpt2cy(env, *args, stdin=b"", timeout=60):
    r = subprocess.run([sys.executable, "-m", "gpt2cy", *args], input=stdin, env=env,
                       cwd=os.path.join(env["HOME"], "cwd"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=timeout)
    r.out, r.err = r.stdout.decode("utf-8", "replace"), r.stderr.decode("utf-8", "replace")
    return r


def one_line_error(r):
    lines = r.err.strip().splitlines()
    assert len(lines) == 1, r.err
    assert "Traceback" not in r.err
    return lines[0]


@pytest.fixture(scope="module")
def gen(env, tiny_model_dir):
    def run(*args, **kw):
        return gpt2cy(env, "generate", "-m", tiny_model_dir, "-t", "1", *args, **kw)
    return run


# -- generate ---------------------------------------------------------------------------------------
def test_generate_is_seeded_and_stdout_is_only_text(gen):
    a = gen("-p", "Hello, my name is", "-n", "12", "-s", "5", "-r", "\\n\\n")
    b = gen("-p", "Hello, my name is", "-n", "12", "-s", "5", "-r", "\\n\\n")
    assert a.returncode == b.returncode == 0, a.err
    assert a.out == b.out and a.out.strip() and a.err == ""


def test_generate_json(gen):
    r = gen("-p", "Hello", "-n", "7", "-s", "1", "--temp", "0.7", "--top-k", "20", "--top-p", "0.9",
            "--min-p", "0.01", "--repeat-penalty", "1.2", "--repeat-last-n", "8", "--json")
    assert r.returncode == 0, r.err
    obj = json.loads(r.out)
    assert set(obj) == {"object", "text", "tokens", "finish_reason", "usage", "timings", "seed", "model"}
    assert obj["finish_reason"] in ("length", "eos") and obj["seed"] == 1 and obj["model"]
    n = len(obj["tokens"])
    assert obj["usage"] == {"prompt_tokens": 1, "completion_tokens": n, "total_tokens": 1 + n,
                            "prompt_tokens_details": {"cached_tokens": 0}}
    assert 1 <= n <= 7 and set(obj["timings"]) == {"load_ms", "prompt_ms", "prompt_tps", "gen_ms", "gen_tps"}


def test_generate_jsonl_events_then_the_object(gen):
    r = gen("-p", "Hello", "-n", "5", "-s", "1", "--jsonl")
    assert r.returncode == 0, r.err
    lines = [json.loads(line) for line in r.out.splitlines()]
    events, final = lines[:-1], lines[-1]
    assert [e["token"] for e in events] == final["tokens"]
    assert "".join(e["text"] for e in events) == final["text"]


def test_generate_verbose_stats_go_to_stderr(gen):
    r = gen("-p", "Hi", "-n", "3", "-s", "2", "-v", "--greedy")
    assert r.returncode == 0
    assert "seed 2" in r.err and "generated" in r.err and "t/s" in r.err
    assert "t/s" not in r.out


def test_generate_reads_stdin_and_files_with_bad_bytes(gen, tmp_path):
    bad = b"caf\xe9 \xff\xfe <|endoftext|> \x00\x1b[31m\n"
    r1 = gen("-p", "-", "-n", "4", "-s", "3", stdin=bad)
    f = tmp_path / "prompt.txt"
    f.write_bytes(bad)
    r2 = gen("-f", str(f), "-n", "4", "-s", "3")
    r3 = gen("-n", "4", "-s", "3", stdin=bad)                 # piped stdin without -p
    assert r1.returncode == r2.returncode == r3.returncode == 0, r1.err + r2.err + r3.err
    assert r1.out == r2.out == r3.out


def test_generate_errors_and_exit_codes(gen, tiny_model_dir, tmp_path):
    r = gen("-f", str(tmp_path / "missing.txt"))
    assert r.returncode == 1 and "missing.txt" in one_line_error(r)
    long_prompt = " ".join(["word"] * 400)                         # > 256 tokens
    r = gen("-p", long_prompt, "-n", "3")
    assert r.returncode == 5 and "context" in one_line_error(r)
    r = gen("-p", long_prompt, "-n", "3", "-s", "1", "--context-overflow", "shift")
    assert r.returncode == 0 and "kept the last" in r.err
    r = gen("-p", "x", "-n", "3", "--temp", "-1")
    assert r.returncode == 2 and "temp" in one_line_error(r)


def test_runtime_error_is_one_line_and_debug_shows_the_traceback(env, tmp_path, tiny_model_dir):
    import shutil
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "hparams.json").write_text("{not json")
    r = gpt2cy(env, "generate", "-m", str(broken), "-p", "x")
    assert r.returncode == 1 and one_line_error(r).startswith("gpt2cy: error:")
    r = gpt2cy(env, "generate", "-m", str(broken), "-p", "x", "--debug")
    assert r.returncode == 1 and "Traceback" in r.err


def test_model_missing_offline_is_3(env):
    r = gpt2cy(env, "generate", "-m", "124M", "--offline", "-p", "x")
    assert r.returncode == 3 and "download" in one_line_error(r)
    r = gpt2cy(env, "-m", "355M", "--offline", stdin=b"hi\n")    # chat too
    assert r.returncode == 3


def test_download_failure_is_4(env):
    e = dict(env, GPT2CY_BASE_URL="http://127.0.0.1:9", GPT2CY_HTTP_RETRIES="0", GPT2CY_HTTP_TIMEOUT="2")
    r = gpt2cy(e, "download", "124M")
    assert r.returncode == 4 and one_line_error(r)


def test_verify_finds_a_flipped_data_byte(env, tiny_model_dir, tmp_path):
    import shutil
    r = gpt2cy(env, "verify", tiny_model_dir)
    assert r.returncode == 0 and "CRC32C and values ok" in r.out and r.err == ""
    broken = tmp_path / "flipped"
    shutil.copytree(tiny_model_dir, broken)
    data = broken / "model.ckpt.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    data.write_bytes(bytes(raw))
    r = gpt2cy(env, "verify", str(broken), tiny_model_dir)   # reports the bad one, still checks the good one
    assert r.returncode == 4 and "checksum mismatch" in one_line_error(r)
    assert r.out.count("CRC32C and values ok") == 1
    r = gpt2cy(env, "verify", "355M")                         # never downloads
    assert r.returncode == 3 and "download" in one_line_error(r)


@pytest.fixture(scope="module")
def gguf_file(tiny_model_dir, tmp_path_factory):
    """The tiny model as a q8_0 GGUF file, written by `gpt2cy convert`."""
    out = str(tmp_path_factory.mktemp("cli-gguf") / "tiny.gguf")
    assert main(["convert", tiny_model_dir, "-o", out, "--dtype", "q8_0", "-t", "1"]) == 0
    return out


def test_verify_takes_a_gguf_file_as_run_does(env, gguf_file, tiny_model_dir, tmp_path):
    import shutil
    import struct
    from gpt2cy.formats.gguf import GGUFFile
    gen = gpt2cy(env, "generate", "-m", gguf_file, "-t", "1", "-p", "Hello", "-n", "2", "--temp", "0")
    assert gen.returncode == 0, gen.err                  # what run/generate take, verify takes
    r = gpt2cy(env, "verify", gguf_file)
    assert r.returncode == 0 and r.err == "", r.err
    assert r.out.startswith(f"{gguf_file}: 28 tensors, ") and "GGUF has no checksums" in r.out
    assert "safetensors" not in r.out and "CRC32C" not in r.out
    plain = tmp_path / "tiny.bin"                        # no .gguf suffix: the magic decides, as for load
    shutil.copyfile(gguf_file, plain)
    r = gpt2cy(env, "verify", str(plain), tiny_model_dir)
    assert r.returncode == 0 and "GGUF has no checksums" in r.out and "CRC32C and values ok" in r.out
    bad = tmp_path / "nan.gguf"                          # a NaN in a bias: exit 4, the rest still checked
    f = GGUFFile(gguf_file)
    data = bytearray(open(gguf_file, "rb").read())
    bias = f.header.data_start + f.tensors["blk.0.attn_qkv.bias"].offset
    data[bias:bias + 4] = struct.pack("<f", float("nan"))
    bad.write_bytes(bytes(data))
    r = gpt2cy(env, "verify", str(bad), gguf_file)
    assert r.returncode == 4 and "attn_qkv.bias' holds 1 NaN/inf values" in one_line_error(r)
    assert r.out.count("GGUF has no checksums") == 1
    r = gpt2cy(env, "verify", "missing.gguf")
    assert r.returncode == 3 and "no such file: missing.gguf" in one_line_error(r)


def test_tokenize_takes_a_gguf_file_and_uses_its_tokenizer(env, gguf_file, tiny_model_dir, tmp_path):
    import shutil
    r = gpt2cy(env, "tokenize", "-m", gguf_file, "Hello world")
    assert r.returncode == 0 and r.out.split() == ["15496", "995"], r.err
    alone = tmp_path / "alone"                           # the file's own tokenizer: no vocabulary files near it
    alone.mkdir()
    shutil.copyfile(gguf_file, alone / "model")          # and no suffix
    r = gpt2cy(env, "tokenize", "-m", str(alone / "model"), "--json", "Hello world")
    assert r.returncode == 0 and json.loads(r.out) == {"ids": [15496, 995], "count": 2}, r.err
    r = gpt2cy(env, "tokenize", "-m", "missing.gguf", "x")
    assert r.returncode == 3 and "no such file: missing.gguf" in one_line_error(r)
    rel = os.path.join(env["HOME"], "cwd", "tiny-dir")   # a bare directory name, as `-m` takes it everywhere
    shutil.copytree(tiny_model_dir, rel)
    try:
        r = gpt2cy(env, "tokenize", "-m", "tiny-dir", "Hello world")
        assert r.returncode == 0 and r.out.split() == ["15496", "995"], r.err
        r = gpt2cy(env, "verify", "tiny-dir")
        assert r.returncode == 0 and "CRC32C and values ok" in r.out, r.err
    finally:
        shutil.rmtree(rel)


def test_chat_refuses_a_logit_bias_outside_the_vocabulary_before_the_first_turn(env, tiny_model_dir):
    for command in (("generate", "-p", "hi"), ("chat",)):
        r = gpt2cy(env, *command, "-m", tiny_model_dir, "-t", "1", "-n", "2", "-l", "50257+1", stdin=b"hi\n")
        assert r.returncode == 1 and r.out == ""
        assert "logit_bias names token 50257, but the vocabulary has 50257 tokens" in one_line_error(r)


def test_internal_error_is_one_line(monkeypatch, capsys, tiny_model_dir):
    import gpt2cy.cli.main as cli

    def bug(args):
        raise KeyError("a bug of ours")
    monkeypatch.setattr(cli, "cmd_tokenize", bug)
    assert main(["tokenize", "-m", tiny_model_dir, "x"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gpt2cy: error: internal error: KeyError") and "--debug" in err[0]


def test_tokenize(env, tiny_model_dir):
    r = gpt2cy(env, "tokenize", "-m", tiny_model_dir, "Hello world")
    assert r.returncode == 0 and r.out.split() == ["15496", "995"]
    r = gpt2cy(env, "tokenize", "-m", tiny_model_dir, "--json", "-", stdin=b"Hello world<|endoftext|>\xff")
    assert r.returncode == 0
    obj = json.loads(r.out)
    assert obj["ids"][:2] == [15496, 995] and 50256 not in obj["ids"] and obj["count"] == len(obj["ids"])


def test_list(env):
    r = gpt2cy(env, "list", "--json")
    assert r.returncode == 0
    names = [m["name"] for m in json.loads(r.out)]
    assert names == ["124M", "355M", "774M", "1558M"]
    r = gpt2cy(env, "list")
    assert r.returncode == 0 and "124M" in r.out and "CACHED" in r.out


def test_version_help_info(env):
    r = gpt2cy(env, "--version")
    assert r.returncode == 0 and r.out.startswith("gpt2cy ")
    r = gpt2cy(env, "--info")
    assert r.returncode == 0 and "openmp_enabled:" in r.out and "threads:" in r.out
    assert "OMP_WAIT_POLICY: unset" in r.out
    from gpt2cy.engine import isa as variants
    from gpt2cy.engine._matmul import isa
    assert f"kernels: the {variants.chosen()} variant (" in r.out and f"built for {isa()[0]}" in r.out
    r2 = gpt2cy(dict(env, GPT2CY_ISA="generic"), "--info")
    assert "kernels: the generic variant (GPT2CY_ISA forces it" in r2.out and "integer block dots (scalar)" in r2.out
    from gpt2cy.engine._matmul import bf16_dot
    assert f"pair products ({bf16_dot()})" in r.out and "pair products (portable)" in r2.out
    for dtype in ("f32", "bf16", "q8_0", "q4_0"):
        assert f"  {dtype} " in r.out
    from gpt2cy.engine._qblocks import amx
    assert ("AMX-INT8 tiles" in r.out) == amx()
    assert "AMX-INT8 tiles" not in gpt2cy(dict(env, GPT2CY_AMX="0"), "--info").out
    env = {k: v for k, v in env.items() if k not in ("GPT2CY_NUM_THREADS", "OMP_NUM_THREADS")}
    assert "threads: adapting between 1 and" in gpt2cy(env, "--info").out
    r = gpt2cy(dict(env, OMP_WAIT_POLICY="passive", GPT2CY_NUM_THREADS="1"), "--info")
    assert "OMP_WAIT_POLICY: passive" in r.out and "threads: 1 (from GPT2CY_NUM_THREADS; fixed" in r.out


@pytest.mark.parametrize("policy", ["passive", "active"])
def test_the_wait_policy_never_changes_the_text(env, tiny_model_dir, policy):
    """The policy only changes how idle OpenMP workers wait, never the arithmetic; -t 1 works throughout."""
    args = ("-p", "Hello, my name is", "-n", "8", "-s", "3")
    e = dict(env, OMP_WAIT_POLICY=policy)
    for threads in ("1", "2"):
        base = gpt2cy(env, "generate", "-m", tiny_model_dir, "-t", threads, *args)
        r = gpt2cy(e, "generate", "-m", tiny_model_dir, "-t", threads, *args)
        assert r.returncode == 0 and r.out == base.out and r.out, r.err
    r = gpt2cy(e, "-m", tiny_model_dir, "-t", "2", "-s", "3", "-n", "4",
               stdin=b"Hi\n/set threads 1\n/set threads 0\n/show model\nAgain\n")
    assert r.returncode == 0 and r.out.count("\n") == 2, r.err
    assert "Set threads to 1." in r.err and "Invalid value for threads" in r.err and "threads 1;" in r.err


def test_piped_chat_prints_only_replies(env, tiny_model_dir):
    lines = (b"Hello there\n\nWhat is your name?\n/set temp 0\nbad \xff bytes <|endoftext|> \x07\n"
             + b"long " * 400 + b"\nlast")
    r = gpt2cy(env, "-m", tiny_model_dir, "-t", "1", "-s", "4", "-n", "6", stdin=lines)
    assert r.returncode == 0, r.err
    replies = r.out.split("\n")
    assert len(replies) == 6 and replies[-1] == ""              # five turns, one line each
    assert replies[3] == "" and "the message is" in r.err        # the too-long one: a notice on stderr
    assert "Human:" not in r.out and "AI:" not in r.out and "How can I help" not in r.out
    again = gpt2cy(env, "chat", "-m", tiny_model_dir, "-t", "1", "-s", "4", "-n", "6", stdin=lines)
    assert again.out == r.out


def test_piped_chat_overflow_drops_old_turns_and_says_so(env, tiny_model_dir):
    lines = b"".join(b"Please tell me more about topic number %d.\n" % i for i in range(14))
    r = gpt2cy(env, "-m", tiny_model_dir, "-t", "1", "-s", "2", "-n", "12", stdin=lines)
    assert r.returncode == 0, r.err
    assert r.out.count("\n") == 14
    assert "[context full: dropped" in r.err and "Traceback" not in r.err


def test_ctx_size_bounds_the_context(env, gen, tiny_model_dir):
    r = gen("-c", "40", "-p", "word " * 60, "-n", "4")
    assert r.returncode == 5 and "context holds 40" in one_line_error(r)
    r = gen("-c", "40", "-p", "Hello", "-n", "-1", "--temp", "0", "--ignore-eos", "--json")
    assert r.returncode == 0, r.err
    obj = json.loads(r.out)
    usage = obj["usage"]                           # every token but the last one needs a position
    assert obj["finish_reason"] == "length" and usage["prompt_tokens"] + usage["completion_tokens"] == 41
    assert "context full (40 tokens)" in r.err
    r = gen("--ctx-size", "257", "-p", "Hello")                    # the tiny model's context is 256
    line = one_line_error(r)                                       # the library's check, named as the flag
    assert r.returncode == 2 and "--ctx-size 257" in line and "the model's 256" in line
    lines = b"/show context\n" + b"".join(b"Tell me about topic number %d.\n" % i for i in range(4))
    lines += b"/show context\n/show model\n"
    r = gpt2cy(env, "-m", tiny_model_dir, "-t", "1", "-s", "2", "-n", "8", "-c", "160", stdin=lines)
    assert r.returncode == 0, r.err
    used = [int(u) for u, n in re.findall(r"context (\d+)/(\d+) tokens", r.err) if n == "160"]
    assert len(used) == 2 and 0 < used[0] < used[1] <= 160
    assert "[context full: dropped" in r.err and "n_ctx 160 (of 256)" in r.err


def test_chat_with_own_preamble(env, tiny_model_dir, tmp_path):
    pre = tmp_path / "preamble.txt"
    pre.write_bytes(b"\nAlice: Hi \xff\nBob: Hello.\n")
    r = gpt2cy(env, "-m", tiny_model_dir, "-t", "1", "-s", "4", "-n", "3", "--preamble", str(pre),
               stdin=b"Hello\n")
    assert r.returncode == 0 and r.out.count("\n") == 1, r.err
    r = gpt2cy(env, "-m", tiny_model_dir, "--preamble", str(tmp_path / "none.txt"), stdin=b"Hello\n")
    assert r.returncode == 1 and "none.txt" in one_line_error(r)


# -- in-process: argument handling only (no model is loaded) ----------------------------------------
@pytest.mark.parametrize("argv", [
    ["--temp", "-1"], ["--top-p", "-0.1"], ["--top-p", "1.5"], ["--top-k", "-3"], ["--min-p", "2"],
    ["--samplers", "top_k;bogus"], ["-l", "5"], ["--presence-penalty", "3"],
    ["--repeat-penalty", "0"], ["-n", "-2"], ["-t", "0"], ["-s", "abc"], ["--nope"],
    ["generate", "-p", "x", "-f", "y"], ["generate", "--context-overflow", "maybe"], ["chat", "-r", ""],
    ["generate", "-p", "x", "--json", "--jsonl"], ["-c", "0"], ["generate", "-c", "x", "-p", "y"],
    ["download"]])
def test_usage_errors_exit_2_with_one_line(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--help" in err


def test_help_exits_0(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(c in out for c in ("chat", "generate", "tokenize", "download", "list"))
    assert main(["generate", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--model", "--threads", "--max-tokens", "--temp", "--top-k", "--top-p", "--min-p",
                 "--repeat-penalty", "--repeat-last-n", "--seed", "--stop", "--json", "--offline",
                 "--context-overflow", "--debug", "--verbose"):
        assert flag in out


def test_settings_are_arguments_not_environment(monkeypatch, capsys, tiny_model_dir):
    monkeypatch.delenv("GPT2CY_OFFLINE", raising=False)
    monkeypatch.delenv("GPT2CY_NOHISTORY", raising=False)
    before = dict(os.environ)
    assert main(["tokenize", "-m", tiny_model_dir, "--offline", "x"]) == 0
    assert main(["generate", "-m", tiny_model_dir, "--offline", "-t", "1", "-p", "x", "-n", "1"]) == 0
    assert dict(os.environ) == before


def test_bad_thread_env_is_a_usage_error(monkeypatch, capsys, tiny_model_dir):
    monkeypatch.setenv("GPT2CY_NUM_THREADS", "many")
    assert main(["generate", "-m", tiny_model_dir, "-p", "x"]) == 2


class _Terminal:
    """A stdin that claims to be a terminal (and has nothing to read)."""
    def isatty(self):
        return True

    def read(self, *a):
        raise AssertionError("must not read a terminal")

    def reconfigure(self, **kw):
        pass


@pytest.mark.parametrize("argv", [["generate"], ["tokenize"]])
def test_missing_input_on_a_terminal_is_a_usage_error(argv, monkeypatch, capsys, tiny_model_dir):
    monkeypatch.setattr("sys.stdin", _Terminal())
    assert main([*argv, "-m", tiny_model_dir]) == 2
    assert "--help" in capsys.readouterr().err


def _interrupted(env, tiny_model_dir, fmt, wait_for):
    """`generate` that never ends by itself (the context shifts), interrupted with SIGINT once `wait_for`
    (a function of the process) returns; returns (status, stdout lines)."""
    import signal
    p = subprocess.Popen([sys.executable, "-m", "gpt2cy", "generate", "-m", tiny_model_dir, "-t", "1", "-p", "Hello",
                          "-n", "-1", "--ignore-eos", "--context-overflow", "shift", "-s", "1", "-v", fmt],
                         env=env, cwd=os.path.join(env["HOME"], "cwd"), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, bufsize=0)
    # bufsize=0: wait_for's readline()s take bytes from the pipe one by one. A buffered reader could pull in
    # lines past the ones it returns, and communicate() (which reads the pipes themselves) would never see
    # them: on a loaded machine that looked like events missing from the output.
    try:
        head = wait_for(p)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    lines = head + out.decode("utf-8").splitlines()
    assert "Traceback" not in err.decode("utf-8", "replace")
    return p.returncode, lines


def test_json_with_ctrl_c_prints_what_was_generated_and_exits_130(env, tiny_model_dir):
    import time

    def started(p):
        line = b"?"
        while line and b"seed 1; prompt" not in line:        # -v says so just before generating
            line = p.stderr.readline()
        assert line, "the process ended early"
        time.sleep(0.5)
        return []
    status, lines = _interrupted(env, tiny_model_dir, "--json", started)
    assert status == 130 and len(lines) == 1
    obj = json.loads(lines[0])
    assert obj["finish_reason"] == "interrupted" and obj["seed"] == 1 and obj["tokens"]
    assert obj["usage"]["completion_tokens"] == len(obj["tokens"]) and obj["text"]


def test_jsonl_with_ctrl_c_ends_with_its_final_object(env, tiny_model_dir):
    def three_events(p):
        return [p.stdout.readline().decode("utf-8") for _ in range(3)]
    status, lines = _interrupted(env, tiny_model_dir, "--jsonl", three_events)
    assert status == 130
    *events, final = [json.loads(line) for line in lines]
    assert len(events) >= 3 and final["finish_reason"] == "interrupted" and "usage" in final
    tokens = [e["token"] for e in events]
    # a token sampled just as the signal came may be in the object but not yet printed as an event
    assert final["tokens"][:len(tokens)] == tokens and len(final["tokens"]) - len(tokens) in (0, 1)
    assert final["text"].startswith("".join(e["text"] for e in events))
