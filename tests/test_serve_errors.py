"""Bad requests get OpenAI's error object with a 4xx (never a 500, never a hung connection); a full queue
gets 429 with Retry-After; `gpt2cy serve` checks its flags before loading and exits 0 on SIGTERM."""
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from serve_support import running, write_model

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

TIMEOUT = httpx.Timeout(20.0)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, vocab_dir):
    return write_model(tmp_path_factory, vocab_dir)


@pytest.fixture(scope="module")
def server(model_dir):
    with running(model_dir, n_slots=2) as s:
        yield s


@pytest.fixture(scope="module")
def model_id(server):
    return httpx.get(server.url + "/v1/models").json()["data"][0]["id"]


def assert_error(r, status, param=None, says=None):
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if param is not None:
        assert body["error"]["param"] == param
    if says is not None:
        assert says in body["error"]["message"], body["error"]["message"]
    return body["error"]


def post(server, path, **kw):
    return httpx.post(server.url + path, timeout=TIMEOUT, **kw)


COMPLETION_CASES = [
    # (body change, param named in the error)
    ({"max_tokens": -5}, "max_tokens"),
    ({"max_tokens": "5"}, "max_tokens"),
    ({"max_tokens": 2.5}, "max_tokens"),
    ({"n": 0}, "n"),
    ({"n": True}, "n"),
    ({"n": 1000}, "n"),
    ({"temperature": "hot"}, "temperature"),
    ({"temperature": -1}, "temperature"),
    ({"temperature": 3}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": -1}, "top_k"),
    ({"presence_penalty": 5}, "presence_penalty"),
    ({"frequency_penalty": [1]}, "frequency_penalty"),
    ({"logit_bias": {"abc": 1}}, "logit_bias"),
    ({"logit_bias": {"99999999": 1}}, "logit_bias"),
    ({"logit_bias": {"5": 1000}}, "logit_bias"),
    ({"logit_bias": [1, 2]}, "logit_bias"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": 5}, "stop"),
    ({"stop": [""]}, "stop"),
    ({"logprobs": 100}, "logprobs"),
    ({"logprobs": "yes"}, "logprobs"),
    ({"seed": "x"}, "seed"),
    ({"stream": "yes"}, "stream"),
    ({"echo": 1}, "echo"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"best_of": 3}, "best_of"),
    ({"suffix": "the end"}, "suffix"),
    ({"prompt": []}, "prompt"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": [1, "a"]}, "prompt"),
    ({"prompt": [[1, 2], []]}, "prompt"),
    ({"prompt": [50257]}, "prompt"),
    ({"prompt": [-1]}, "prompt"),
    ({"prompt": None}, "prompt"),
    ({"model": 5}, "model"),
    ({"user": 5}, "user"),
]


@pytest.mark.parametrize("change,param", COMPLETION_CASES,
                         ids=[f"{p}-{i}" for i, (_, p) in enumerate(COMPLETION_CASES)])
def test_bad_completion_fields(server, model_id, change, param):
    body = {"model": model_id, "prompt": "Hi", "max_tokens": 3, **change}
    if change.get("prompt", 0) is None:
        del body["prompt"]
    assert_error(post(server, "/v1/completions", json=body), 400, param=param)


CHAT_CASES = [
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": None}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages"),
    ({"messages": ["hi"]}, "messages"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"max_completion_tokens": -1}, "max_completion_tokens"),
]


@pytest.mark.parametrize("change,param", CHAT_CASES, ids=[f"{p}-{i}" for i, (_, p) in enumerate(CHAT_CASES)])
def test_bad_chat_fields(server, model_id, change, param):
    body = {"model": model_id, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, **change}
    if change.get("messages", 0) is None:
        del body["messages"]
    assert_error(post(server, "/v1/chat/completions", json=body), 400, param=param)


@pytest.mark.parametrize("raw", [b"{bad json", b"", b"[1, 2]", b'"text"', b"\xff\xfe", b"null", b'{"a": NaN'])
def test_malformed_bodies(server, raw):
    for path in ("/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize"):
        assert_error(post(server, path, content=raw, headers={"content-type": "application/json"}), 400)


def test_prompt_too_long_says_how_many_tokens(server, model_id):
    text = " ".join(["word"] * 1500)                        # 1500 tokens: the context holds 1024
    e = assert_error(post(server, "/v1/completions", json={"model": model_id, "prompt": text}), 400)
    assert "1500 tokens" in e["message"] and "1024" in e["message"]
    assert e["code"] == "context_length_exceeded"
    e = assert_error(post(server, "/v1/completions", json={"model": model_id, "prompt": " ".join(["word"] * 1000),
                                                           "max_tokens": 100}), 400, param="max_tokens")
    assert "1000 in the prompt" in e["message"]
    e = assert_error(post(server, "/v1/chat/completions",
                          json={"model": model_id, "messages": [{"role": "user", "content": text}]}), 400)
    assert "tokens" in e["message"]


def test_unknown_model_route_and_method(server, model_id):
    e = assert_error(post(server, "/v1/completions", json={"model": "gpt-4", "prompt": "Hi"}), 404, param="model")
    assert e["code"] == "model_not_found"
    assert_error(post(server, "/v1/chat/completions", json={"model": "davinci", "messages": [
        {"role": "user", "content": "Hi"}]}), 404, param="model")
    assert_error(httpx.get(server.url + "/v1/models/gpt-4"), 404)
    assert_error(httpx.get(server.url + "/v1/nothing"), 404)
    assert_error(post(server, "/v2/completions", json={}), 404)
    assert_error(httpx.get(server.url + "/v1/completions"), 405)
    assert_error(httpx.delete(server.url + "/health"), 405)


def test_bad_tokenize_bodies(server):
    assert_error(post(server, "/tokenize", json={"text": "hi"}), 400, param="content")
    assert_error(post(server, "/detokenize", json={"tokens": ["a"]}), 400, param="tokens")
    assert_error(post(server, "/detokenize", json={"tokens": [99999999]}), 400, param="tokens")
    assert_error(post(server, "/detokenize", json={"tokens": [True]}), 400, param="tokens")


def test_still_healthy_after_all_that(server):
    r = httpx.get(server.url + "/health")
    assert r.status_code == 200 and r.json()["slots_processing"] == 0
    assert 'status="500"' not in httpx.get(server.url + "/metrics").text


def test_full_queue_is_429_with_retry_after(slow_model_dir):
    """One slot, one place in the queue: a third request while one runs and one waits gets 429."""
    with running(slow_model_dir, n_slots=1, max_queue=1) as s:
        mid = httpx.get(s.url + "/v1/models").json()["data"][0]["id"]
        long = {"model": mid, "prompt": "Long", "max_tokens": 1000, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", s.url + "/v1/completions", json=long, timeout=TIMEOUT) as running_one:
            lines = running_one.iter_lines()               # kept: dropping it would close the stream
            next(line for line in lines if line.startswith("data: "))
            waiting = {}
            t = threading.Thread(target=lambda: waiting.update(r=httpx.post(
                s.url + "/v1/completions", json={"model": mid, "prompt": "Next", "max_tokens": 2}, timeout=60)))
            t.start()
            deadline = time.monotonic() + 20
            while httpx.get(s.url + "/health").json()["queue"] < 1:
                assert time.monotonic() < deadline, "the second request never queued"
                time.sleep(0.01)
            r = httpx.post(s.url + "/v1/completions", json={"model": mid, "prompt": "Third", "max_tokens": 2},
                           timeout=TIMEOUT)
            e = assert_error(r, 429)
            assert e["code"] == "queue_full" and int(r.headers["retry-after"]) >= 1
        t.join(60)                                          # the stream closed: the waiting one runs
        assert waiting["r"].status_code == 200


# -- the command -------------------------------------------------------------------------------------------
def _gpt2cy(*args, **kw):
    return subprocess.run([sys.executable, "-m", "gpt2cy", *args], capture_output=True, text=True, timeout=60, **kw)


@pytest.mark.parametrize("flags", [["--port", "99999"], ["--parallel", "0"], ["--queue", "0"], ["--port", "x"],
                                   ["--shutdown-timeout", "-1"], ["--bogus"]])
def test_bad_flags_exit_2_before_loading(flags):
    r = _gpt2cy("serve", "-m", "/nonexistent/model", *flags)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_missing_extra_is_one_line(monkeypatch, capsys, tiny_model_dir):
    from gpt2cy.cli.main import main
    monkeypatch.setitem(sys.modules, "uvicorn", None)       # `import uvicorn` now raises ImportError
    monkeypatch.delitem(sys.modules, "gpt2cy.serve.server", raising=False)
    assert main(["serve", "-m", tiny_model_dir, "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert "pip install 'gpt2cy[serve]'" in err and len(err.strip().splitlines()) == 1


def test_port_taken_is_one_line(model_dir):
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        r = _gpt2cy("serve", "-m", model_dir, "--port", str(sock.getsockname()[1]), "-t", "1")
    assert r.returncode == 1 and "cannot listen" in r.stderr and "Traceback" not in r.stderr


def _start(model_dir, *flags, key=""):
    proc = subprocess.Popen([sys.executable, "-m", "gpt2cy", "serve", "-m", model_dir, "--port", "0", "-t", "1",
                             *flags], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env={**os.environ, "GPT2CY_API_KEY": key})
    line = proc.stderr.readline()                           # "gpt2cy: serving NAME on http://127.0.0.1:PORT (...)"
    assert " on http://127.0.0.1:" in line, line
    url = line.split(" on ")[1].split()[0]
    return proc, url


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_the_server_exit_0(slow_model_dir, sig):
    """A stream in flight when the signal comes is cancelled within the shutdown timeout; exit status 0."""
    proc, url = _start(slow_model_dir, "--parallel", "2", "--shutdown-timeout", "0.5")
    try:
        mid = httpx.get(url + "/v1/models", timeout=TIMEOUT).json()["data"][0]["id"]
        body = {"model": mid, "prompt": "On and on", "max_tokens": 1000, "ignore_eos": True, "stream": True}
        events = []
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=TIMEOUT) as resp:
            lines = resp.iter_lines()
            events.append(next(line for line in lines if line.startswith("data: ")))
            t0 = time.monotonic()
            proc.send_signal(sig)
            events.extend(line for line in lines if line.startswith("data: "))
        assert proc.wait(timeout=20) == 0
        assert time.monotonic() - t0 < 15
        assert '"error"' in events[-1] and "shutting down" in events[-1]   # told, not a silent [DONE]
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/health", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def test_sigterm_idle_exits_0_quickly_and_env_api_key(model_dir):
    proc, url = _start(model_dir, key="from-env")
    try:
        assert httpx.get(url + "/health", timeout=TIMEOUT).status_code == 200
        assert_error(httpx.get(url + "/v1/models", timeout=TIMEOUT), 401)
        ok = httpx.get(url + "/v1/models", timeout=TIMEOUT, headers={"Authorization": "Bearer from-env"})
        assert ok.status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


# -- anything at all -----------------------------------------------------------------------------------------
hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies
_JUNK = st.one_of(st.none(), st.booleans(), st.integers(-10, 10 ** 6), st.floats(allow_nan=False),
                  st.text(max_size=8), st.lists(st.integers(-2, 60000), max_size=4),
                  st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
_FIELDS = {
    "prompt": st.one_of(_JUNK, st.lists(st.text(max_size=6), min_size=1, max_size=3)),
    "messages": st.one_of(_JUNK, st.lists(st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "system", "tool", 5]), "content": _JUNK}), max_size=3)),
    "max_tokens": st.one_of(st.integers(-3, 6), st.text(max_size=3), st.none(), st.booleans()),
    "n": st.one_of(st.integers(-1, 70), _JUNK), "temperature": _JUNK, "top_p": _JUNK, "stop": _JUNK,
    "seed": _JUNK, "stream": _JUNK, "logprobs": _JUNK, "echo": _JUNK, "logit_bias": _JUNK, "top_k": _JUNK,
    "presence_penalty": _JUNK, "stream_options": _JUNK, "top_logprobs": _JUNK, "model": _JUNK,
}


@hypothesis.settings(max_examples=60, deadline=None, derandomize=True,
                     suppress_health_check=list(hypothesis.HealthCheck))
@hypothesis.given(path=st.sampled_from(["/v1/completions", "/v1/chat/completions"]),
                  body=st.fixed_dictionaries({}, optional=_FIELDS))
def test_any_body_gets_an_answer_never_a_500(server, path, body):
    if "max_tokens" not in body:
        body["max_tokens"] = 3                              # keep valid requests short
    r = post(server, path, json=body)
    assert r.status_code in (200, 400, 404), r.text
    if r.status_code != 200:
        assert_error(r, r.status_code)
    elif r.headers["content-type"].startswith("text/event-stream"):
        assert r.text.rstrip().endswith("data: [DONE]")
    else:
        assert r.json()["choices"]
