"""`gpt2cy serve` end to end over HTTP: aggregate completion tokens/s and time to first token (p50, p99) for
1, 4 and 8 concurrent streaming clients, on a random 124M-shaped checkpoint.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE pytest bench/bench_serve.py --benchmark-only

The server is a separate process (`python -m gpt2cy serve --parallel 8`, as a user runs it), so the
clients' threads do not share its interpreter. One round: n clients each stream one completion of N_NEW
tokens (ignore_eos, greedy, a distinct prompt each) at the same moment. Groups "serve-124M-<n>clients";
extra_info holds "tokens/s" (n * N_NEW / the round's median time), "ttft_p50_ms" and "ttft_p99_ms" over every
request of every round. Every reply must carry N_NEW tokens before a figure counts. Target (issue 10): 4
clients at least 3x the tokens/s of one, and ahead of llama-server -np 4 on the same model, type and thread
count: that peer runs in the same groups when GPT2CY_LLAMA_SERVER names a llama-server binary (the same
weights as an f32 GGUF, the same threads and slots). GPT2CY_BENCH_SMALL=1 runs the same code on a small model
with a few tokens, as a smoke test.
"""
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from conftest import bench_threads, median

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

SMALL = os.environ.get("GPT2CY_BENCH_SMALL") == "1"
N_PROMPT, N_NEW = (8, 4) if SMALL else (32, 64)
CLIENTS = [1, 4, 8]


@pytest.fixture(scope="module")
def serve_model_dir(tmp_path_factory, request):
    if not SMALL:
        return request.getfixturevalue("model_124m_dir")
    from gpt2cy.config import Config
    from gpt2cy.testing import write_random_model
    path = tmp_path_factory.mktemp("gpt2-small-random")
    return write_random_model(str(path), Config(n_vocab=50257, n_ctx=128, n_embd=64, n_head=2, n_layer=2), seed=0)


def _start_gpt2cy(model_dir, tmp_path_factory):
    proc = subprocess.Popen([sys.executable, "-m", "gpt2cy", "serve", "-m", model_dir, "--port", "0",
                             "-t", str(bench_threads()), "--parallel", str(max(CLIENTS))],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    line = proc.stderr.readline()
    if " on http://" not in line:
        proc.kill()
        pytest.fail(f"gpt2cy serve did not start: {line}{proc.stderr.read()}")
    return proc, line.split(" on ")[1].split()[0]


def _start_llama_server(model_dir, tmp_path_factory):
    """llama.cpp's server on the same weights written as an f32 GGUF by `gpt2cy convert` (the path to a
    llama-server binary in GPT2CY_LLAMA_SERVER; it builds from llama-cpp-python's sdist, vendor/llama.cpp),
    the same threads and slots, 1024 positions of context per slot."""
    import socket
    from gpt2cy.loading import export_gguf
    exe = os.environ.get("GPT2CY_LLAMA_SERVER")
    if not exe:
        pytest.skip("set GPT2CY_LLAMA_SERVER to a llama-server binary to run the peer")
    if not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
        pytest.fail(f"GPT2CY_LLAMA_SERVER={exe!r} is not an executable file", pytrace=False)
    gguf = str(tmp_path_factory.mktemp("serve-gguf") / "model-f32.gguf")
    export_gguf(model_dir, gguf, dtype="f32", threads=bench_threads())
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([exe, "-m", gguf, "--host", "127.0.0.1", "--port", str(port), "-t", str(bench_threads()),
                             "-np", str(max(CLIENTS)), "-c", str(1024 * max(CLIENTS))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("llama-server did not become ready")
        time.sleep(0.2)


@pytest.fixture(scope="module", params=["gpt2cy", "llama-server"])
def server_url(request, serve_model_dir, tmp_path_factory):
    """One server at a time (module scope, grouped by impl): never two engines timed at once."""
    start = _start_gpt2cy if request.param == "gpt2cy" else _start_llama_server
    proc, url = start(serve_model_dir, tmp_path_factory)
    # one round over every slot first: a slot's first use faults in its KV cache (a one-time cost per slot
    # that a running server has long paid), and the scheduler takes the least recently used slot, so the
    # 1-client rounds would otherwise each pay it
    try:
        with httpx.Client(timeout=120) as client:
            round_of(client, url, [[(t + 7919 * k) % 50256 for t in range(N_PROMPT)] for k in range(max(CLIENTS))],
                     [])
        yield url
    finally:
        proc.terminate()
        proc.wait(30)
        if proc.stderr is not None:
            proc.stderr.close()


@pytest.fixture(scope="module")
def prompts():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 50256, N_PROMPT).tolist() for _ in range(max(CLIENTS))]


def stream_one(client, url, prompt, out, k):
    """One streamed completion: (seconds to the first token, tokens received)."""
    body = {"prompt": prompt, "max_tokens": N_NEW, "temperature": 0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    first, tokens = None, 0
    with client.stream("POST", url + "/v1/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ev = json.loads(line[6:])
            if ev.get("choices") and first is None:
                first = time.perf_counter() - t0
            if ev.get("usage"):
                tokens = ev["usage"]["completion_tokens"]
    out[k] = (first, tokens)


def round_of(client, url, prompts, ttfts):
    out = [None] * len(prompts)
    threads = [threading.Thread(target=stream_one, args=(client, url, p, out, k)) for k, p in enumerate(prompts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(o is not None and o[1] == N_NEW for o in out), out   # a fast wrong answer is no result
    ttfts.extend(o[0] for o in out)


@pytest.mark.parametrize("n", CLIENTS)
def test_serve_http(benchmark, request, n, server_url, prompts):
    benchmark.group = f"serve-124M-{n}clients" if not SMALL else f"serve-small-{n}clients"
    ttfts = []
    # the slots' prefix caches would skip the prompts of the round before: every round, new prompts
    rounds = iter(range(1000))

    def fresh():
        r = next(rounds)
        return [[(t + r + 1) % 50256 for t in p] for p in prompts[:n]]
    with httpx.Client(timeout=120, limits=httpx.Limits(max_connections=32)) as client:
        round_of(client, server_url, fresh(), [])          # warm the server and the connections
        benchmark.pedantic(lambda ps: round_of(client, server_url, ps, ttfts), setup=lambda: ((fresh(),), {}),
                           rounds=3)
    med = median(benchmark)
    if med:
        benchmark.extra_info["tokens/s"] = round(n * N_NEW / med, 1)
    if ttfts:
        benchmark.extra_info["ttft_p50_ms"] = round(float(np.percentile(ttfts, 50)) * 1e3, 1)
        benchmark.extra_info["ttft_p99_ms"] = round(float(np.percentile(ttfts, 99)) * 1e3, 1)
    benchmark.extra_info["clients"] = n
    benchmark.extra_info["impl"] = impl = request.node.callspec.params["server_url"]
    print(f"\n{impl} {n} clients: {benchmark.extra_info.get('tokens/s')} tok/s, time to first token p50 "
          f"{benchmark.extra_info.get('ttft_p50_ms')} ms, p99 {benchmark.extra_info.get('ttft_p99_ms')} ms")
