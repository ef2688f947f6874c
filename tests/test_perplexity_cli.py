"""`gpt2cy perplexity`: equal to the Transformers guide's recipe (GPT2LMHeadModel and its tokenizer, the same
window and stride) within 1e-5 relative; files streamed in pieces with the whole text's result; every bad
input a one-line error."""
import io
import json
import math
import shutil

import numpy as np
import pytest

from gpt2cy.cli import perplexity as ppl_cli
from gpt2cy.cli.main import main

from tokenizer_corpus import SAMPLES, mixed_text

WINDOW, STRIDE = 128, 48
TEXT = " ".join(SAMPLES[k] for k in ("prose", "code", "digits", "contractions", "emoji", "cjk", "combining")) * 3


def run(capsys, *args):
    code = main(["perplexity", "-t", "1", *args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def tiny_pieces(monkeypatch):
    """Read files 97 bytes at a time: every boundary (UTF-8 sequences, cuts, windows) is crossed."""
    monkeypatch.setattr(ppl_cli, "READ_BYTES", 97)


@pytest.fixture(scope="module")
def recipe(tiny_model_dir, tmp_path_factory):
    """The guide's recipe on the same weights with transformers' own tokenizer: (mean NLL, tokens counted,
    tokens); each window's loss times the labels it averaged (the exact sum of the counted tokens' NLL)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from gpt2cy.formats.checkpoint import load_weights
    from test_hf_parity import hf_model
    w = load_weights(tiny_model_dir)
    hf = hf_model(w.config, w.tensors)
    hf_dir = tmp_path_factory.mktemp("hf-tokenizer")          # the same vocabulary under HF's file names
    shutil.copyfile(f"{tiny_model_dir}/encoder.json", hf_dir / "vocab.json")
    shutil.copyfile(f"{tiny_model_dir}/vocab.bpe", hf_dir / "merges.txt")
    tok = transformers.GPT2TokenizerFast.from_pretrained(str(hf_dir))
    assert tok("Hello world")["input_ids"] == [15496, 995]

    def run(text, max_length, stride):
        enc = torch.tensor([tok(text)["input_ids"]])
        seq_len = enc.size(1)
        nll_sum, n_tokens, prev_end = 0.0, 0, 0
        for begin in range(0, seq_len, stride):
            end = min(begin + max_length, seq_len)
            trg_len = end - prev_end
            input_ids = enc[:, begin:end]
            target_ids = input_ids.clone()
            target_ids[:, :-trg_len] = -100
            with torch.inference_mode():
                loss = hf(input_ids, labels=target_ids).loss.double().item()
            counted = int((target_ids[:, 1:] != -100).sum())    # the labels the loss averaged (after the shift)
            nll_sum += loss * counted
            n_tokens += counted
            prev_end = end
            if end == seq_len:
                break
        return nll_sum / n_tokens, n_tokens, seq_len
    return run


def test_equals_the_transformers_recipe(capsys, tmp_path, tiny_model_dir, recipe, tiny_pieces):
    f = tmp_path / "a.txt"
    f.write_text(TEXT, encoding="utf-8")
    code, out, err = run(capsys, "-m", tiny_model_dir, "-c", str(WINDOW), "--stride", str(STRIDE), "--json", str(f))
    assert code == 0, err
    got = json.loads(out)
    mean, counted, n = recipe(TEXT, WINDOW, STRIDE)
    r = got["files"][0]
    assert (r["tokens"], r["n_tokens"]) == (counted, n) and n > 4 * WINDOW
    assert math.isclose(r["mean_nll"], mean, rel_tol=1e-5)
    assert math.isclose(r["perplexity"], math.exp(mean), rel_tol=1e-5)
    size = len(TEXT.encode("utf-8"))
    assert r["bytes"] == size
    assert math.isclose(r["bits_per_byte"], r["mean_nll"] * counted / math.log(2) / size, rel_tol=1e-12)
    assert (got["n_ctx"], got["stride"]) == (WINDOW, STRIDE)
    assert got["total"]["tokens"] == counted


def test_streaming_equals_the_whole_text(capsys, tmp_path, tiny_model_dir, monkeypatch):
    import gpt2cy
    text = mixed_text(8_000)
    f = tmp_path / "mixed.txt"
    f.write_text(text, encoding="utf-8")
    model = gpt2cy.load(tiny_model_dir, threads=1)
    want = model.score(text, stride=128)
    results = []
    for size in (997, 1 << 20):
        monkeypatch.setattr(ppl_cli, "READ_BYTES", size)
        code, out, err = run(capsys, "-m", tiny_model_dir, "--stride", "128", "--json", str(f))
        assert code == 0, err
        results.append(json.loads(out)["files"][0])
    for r in results:
        assert r["n_tokens"] == len(want.token_ids) and r["tokens"] == want.count
        assert math.isclose(r["mean_nll"], want.mean_nll, rel_tol=1e-9)


def test_two_files_and_the_text_report(capsys, tmp_path, tiny_model_dir):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text(TEXT, encoding="utf-8")
    b.write_text(SAMPLES["prose"], encoding="utf-8")
    code, out, err = run(capsys, "-m", tiny_model_dir, "--json", str(a), str(b))
    assert code == 0, err
    got = json.loads(out)
    fa, fb = got["files"]
    nll = fa["mean_nll"] * fa["tokens"] + fb["mean_nll"] * fb["tokens"]
    assert got["total"]["tokens"] == fa["tokens"] + fb["tokens"]
    assert math.isclose(got["total"]["mean_nll"], nll / got["total"]["tokens"], rel_tol=1e-12)
    code, out, err = run(capsys, "-m", tiny_model_dir, str(a), str(b))
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 3
    assert lines[0].startswith(f"{a}: perplexity {fa['perplexity']:.4f}, mean NLL")
    assert lines[2].startswith("all 2 files: perplexity")


def test_stdin(capsys, tiny_model_dir, monkeypatch):
    import gpt2cy
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(TEXT.encode())))
    code, out, err = run(capsys, "-m", tiny_model_dir, "--json", "-")
    assert code == 0, err
    want = gpt2cy.load(tiny_model_dir, threads=1).score(TEXT)
    assert math.isclose(json.loads(out)["files"][0]["mean_nll"], want.mean_nll, rel_tol=1e-9)


def test_invalid_utf8_names_the_offset_or_is_replaced(capsys, tmp_path, tiny_model_dir, tiny_pieces):
    import gpt2cy
    data = ("word " * 200).encode() + b"\xff\xfe" + SAMPLES["prose"].encode()
    f = tmp_path / "bad.txt"
    f.write_bytes(data)
    code, out, err = run(capsys, "-m", tiny_model_dir, str(f))
    assert code == 1 and out == ""
    assert one_line_error(err) == (f"gpt2cy: error: {f} is not valid UTF-8: byte 0xff at offset 1000 "
                                   f"(--errors replace reads such bytes as U+FFFD)")
    code, out, err = run(capsys, "-m", tiny_model_dir, "--errors", "replace", "--json", str(f))
    assert code == 0
    assert "2 invalid sequences, the first at byte offset 1000 (0xff)" in err
    want = gpt2cy.load(tiny_model_dir, threads=1).score(data.decode("utf-8", "replace"))
    r = json.loads(out)["files"][0]
    assert r["tokens"] == want.count and math.isclose(r["mean_nll"], want.mean_nll, rel_tol=1e-9)
    code, _, err = run(capsys, "-m", tiny_model_dir, "--errors", "replace", "--strict", str(f))
    assert code == 1 and "offset 1000" in err


def test_a_truncated_sequence_at_the_end(capsys, tmp_path, tiny_model_dir, tiny_pieces):
    f = tmp_path / "cut.txt"
    f.write_bytes("plenty of words here, then é".encode()[:-1])              # a lone lead byte at the end
    code, _, err = run(capsys, "-m", tiny_model_dir, str(f))
    assert code == 1 and f"byte 0xc3 at offset {f.stat().st_size - 1}" in one_line_error(err)


@pytest.mark.parametrize("content,message", [
    (b"", "is empty: perplexity needs at least 2 tokens"),
    (b"Hello", "is one token long: perplexity needs at least 2 tokens"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "is not a text file: a NUL byte at offset 8"),
])
def test_files_that_cannot_be_scored(capsys, tmp_path, tiny_model_dir, content, message):
    f = tmp_path / "x.bin"
    f.write_bytes(content)
    code, out, err = run(capsys, "-m", tiny_model_dir, str(f))
    assert code == 1 and out == ""
    assert message in one_line_error(err)


def test_one_token_scored_is_singular(capsys, tmp_path, tiny_model_dir):
    f = tmp_path / "two.txt"
    f.write_text("hi\n")                                      # "hi", "\n": the second token is the one scored
    code, out, _ = run(capsys, "-m", tiny_model_dir, str(f))
    assert code == 0 and out.rstrip().endswith(", 1 token scored (3 bytes)"), out


def test_missing_files_and_directories(capsys, tmp_path, tiny_model_dir):
    code, _, err = run(capsys, "-m", tiny_model_dir, str(tmp_path / "nope.txt"))
    assert code == 1 and one_line_error(err) == f"gpt2cy: error: {tmp_path / 'nope.txt'}: No such file or directory"
    code, _, err = run(capsys, "-m", tiny_model_dir, str(tmp_path))
    assert code == 1 and one_line_error(err) == f"gpt2cy: error: {tmp_path} is a directory, not a text file"


def test_window_arguments(capsys, tmp_path, tiny_model_dir):
    f = tmp_path / "a.txt"
    f.write_text(TEXT)
    code, _, err = run(capsys, "-m", tiny_model_dir, "-c", "64", "--stride", "65", str(f))
    assert code == 2 and "--stride 65 is longer than the window" in one_line_error(err)
    code, _, err = run(capsys, "-m", tiny_model_dir, "--stride", "257", str(f))      # the model's 256
    assert code == 2 and "stride 257 is longer than the window n_ctx 256" in one_line_error(err)
    code, _, err = run(capsys, "-m", tiny_model_dir, "-c", "1", str(f))
    assert code == 2 and "at least 2" in one_line_error(err)
    code, _, err = run(capsys, "-m", tiny_model_dir, "--stride", "0", str(f))
    assert code == 2 and "stride must be >= 1" in one_line_error(err)
    code, _, err = run(capsys, "-m", tiny_model_dir, "-", "-")
    assert code == 2 and "only once" in err
    # a window of exactly the stride: the recipe's disjoint chunks (each chunk's first token unscored)
    code, out, err = run(capsys, "-m", tiny_model_dir, "-c", "64", "--stride", "64", "--json", str(f))
    r = json.loads(out)["files"][0]
    assert code == 0 and r["tokens"] == r["n_tokens"] - math.ceil(r["n_tokens"] / 64)


# ------------------------------------------------------------------------------------ the cuts

@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from gpt2cy.text.tokenizer import Tokenizer
    return Tokenizer.from_dir(tiny_model_dir)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_safe_cuts_keep_the_tokens(name, tok):
    text = (SAMPLES[name] + " x y ") * 3
    whole = tok.encode(text, allowed_special="all")
    for end in range(1, len(text), 3):
        cut = ppl_cli.safe_cut(text[:end])
        if cut:
            a, b = text[:cut], text[cut:]
            assert tok.encode(a, allowed_special="all") + tok.encode(b, allowed_special="all") == whole, (name, cut)


def test_progress_on_stderr_for_long_inputs(capsys, tmp_path, tiny_model_dir, monkeypatch):
    class Clock:                                   # 20 s pass between two looks at the clock
        t = 0.0

        @classmethod
        def perf_counter(cls):
            cls.t += 20.0
            return cls.t
    f = tmp_path / "long.txt"
    f.write_text(TEXT)
    monkeypatch.setattr(ppl_cli, "time", Clock)
    monkeypatch.setattr(ppl_cli, "_FEED", 300)
    monkeypatch.delenv("GPT2CY_NO_PROGRESS", raising=False)
    code, out, err = run(capsys, "-m", tiny_model_dir, str(f))
    lines = [ln for ln in err.splitlines() if ln.startswith(f"{f}: ")]
    assert code == 0 and len(lines) >= 3 and "tokens/s, perplexity so far" in lines[-1]
    assert out.startswith(f"{f}: perplexity")                      # stdout: only the result
    monkeypatch.setenv("GPT2CY_NO_PROGRESS", "1")
    f.write_text(SAMPLES["prose"] * 20)
    code, out, err = run(capsys, "-m", tiny_model_dir, str(f))
    assert code == 0 and err == ""
