"""hparams.json -> Config: every malformed value is a CheckpointError naming the file."""
import json
import os

import pytest

from gpt2cy.config import PUBLISHED, Config
from gpt2cy.errors import CheckpointError

GOOD = {"n_vocab": 50257, "n_ctx": 1024, "n_embd": 768, "n_head": 12, "n_layer": 12}


def test_published_sizes_have_the_published_data_bytes():
    # 4 bytes a parameter: the sizes of OpenAI's model.ckpt.data-00000-of-00001 files
    assert {k: 4 * c.n_params for k, c in PUBLISHED.items()} == {
        "124M": 497_759_232, "355M": 1_419_292_672, "774M": 3_096_120_320, "1558M": 6_230_444_800}


def test_reads_hparams_json(tmp_path):
    (tmp_path / "hparams.json").write_text(json.dumps(GOOD))
    cfg = Config.from_file(str(tmp_path / "hparams.json"))
    assert cfg.to_json() == GOOD and cfg.head_dim == 64 and cfg.name == tmp_path.name


@pytest.mark.parametrize("change, message", [
    ({"n_embd": 770}, "not divisible by n_head"),
    ({"n_head": 0}, "'n_head' = 0 is out of range"),
    ({"n_layer": -1}, "out of range"),
    ({"n_ctx": 1.5}, "'n_ctx' must be an integer"),
    ({"n_vocab": True}, "'n_vocab' must be an integer"),
    ({"n_vocab": None}, "'n_vocab' must be an integer"),
    ({"n_embd": 10 ** 30}, "out of range"),
], ids=str)
def test_bad_values(change, message):
    with pytest.raises(CheckpointError, match=message):
        Config.from_dict({**GOOD, **change}, source="hparams.json")


@pytest.mark.parametrize("content", [b"", b"[1, 2]", b"{", b"\xff\xfe", b"[" * 100_000 + b"]" * 100_000],
                         ids=["empty", "list", "truncated", "not-utf8", "deeply-nested"])
def test_bad_files(tmp_path, content):
    path = tmp_path / "hparams.json"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="hparams.json"):
        Config.from_file(str(path))


def test_missing_file_and_fifo(tmp_path):
    with pytest.raises(CheckpointError, match="file not found"):
        Config.from_file(str(tmp_path / "hparams.json"))
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)  # would block forever if opened
    with pytest.raises(CheckpointError, match="not a regular file"):
        Config.from_file(str(fifo))
