"""llama.cpp as the independent producer and consumer of GGUF files.

The producer: llama.cpp's own convert_hf_to_gguf.py (from the llama-cpp-python sdist on PyPI, which vendors
llama.cpp; fetched once with pip into ~/.cache/gpt2cy-tests or $GPT2CY_TEST_CACHE, or from $GPT2CY_LLAMA_CPP,
a llama.cpp source tree; skipped when neither can be had) converts a
random HF-format GPT-2 with --outtype f32, f16, bf16 and q8_0. gpt2cy must load each file with logits equal
(np.array_equal) to the source model loaded in the type the file holds: f32 as f32; f16 as the f32 model whose
matmul weights and wte are rounded to f16 (that is what the file holds; gpt2cy widens it exactly); bf16 and
q8_0 as `load(dir, dtype=...)`, because gpt2cy's bf16 rounding and q8_0 quantizer give the converter's bytes.
And `gpt2cy convert` must write the converter's metadata (keys, types, values; general.name aside) and the
same tensor bytes.

The binaries, when given (they take minutes to build, so the suite never builds them):
$GPT2CY_LLAMA_QUANTIZE (or llama-quantize on PATH) quantizes the f32 file to q4_0 (--pure: every matmul and
wte in q4_0; gpt2cy's logits equal its own q4_0 of the source); $GPT2CY_LLAMA_SIMPLE (or llama-simple) runs
gpt2cy's own f32 and bf16 files (its q8_0/q4_0 runs crashed in llama.cpp's AMX kernel on the
machine these tests were written on, for llama.cpp's own converter's files too, so they are not run here), greedy, and must continue a prompt as gpt2cy does.
"""
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest

import gpt2cy
from gpt2cy.config import Config
from gpt2cy.formats.checkpoint import load_weights
from gpt2cy.formats.gguf import GGUFFile
from gpt2cy.loading import export_gguf
from gpt2cy.tensors import EMBEDDING, MATMUL, tensor_specs
from gpt2cy.testing import write_random_model

gguf = pytest.importorskip("gguf")

SDIST = "llama-cpp-python==0.3.36"       # the llama.cpp these tests were written against
VENDOR = "vendor/llama.cpp/"
NEEDED = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")
CFG = Config(n_vocab=50257, n_ctx=64, n_embd=64, n_head=2, n_layer=2)
OUTTYPES = ("f32", "f16", "bf16", "q8_0")
IDS = [464, 3290, 286, 1204, 318, 11, 50256, 1212, 3797, 13, 0, 50000, 617, 1110]

# the converter drives a real tokenizer and torch: run it in one process for every outtype
DRIVER = """
import runpy, sys
script, src, out = sys.argv[1:4]
for t in sys.argv[4:]:
    sys.argv = [script, src, "--outtype", t, "--outfile", f"{out}/{t}.gguf"]
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as e:
        if e.code:
            raise
"""


def _cache_dir(request, tmp_path_factory) -> str:
    """Where the sdist's converter and its outputs are kept between runs ($GPT2CY_TEST_CACHE, else
    $XDG_CACHE_HOME/gpt2cy-tests, else ~/.cache/gpt2cy-tests; a temporary directory if none is writable)."""
    base = os.environ.get("GPT2CY_TEST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "gpt2cy-tests")
    try:
        os.makedirs(base, exist_ok=True)
        if os.access(base, os.W_OK):
            return base
    except OSError:
        pass
    return str(tmp_path_factory.getbasetemp())


def _fetch_converter(request, tmp_path_factory) -> str:
    root = os.environ.get("GPT2CY_LLAMA_CPP")
    if root:
        if not os.path.isfile(os.path.join(root, "convert_hf_to_gguf.py")):
            pytest.fail(f"$GPT2CY_LLAMA_CPP={root} has no convert_hf_to_gguf.py")
        return root
    cache = _cache_dir(request, tmp_path_factory)
    root = os.path.join(cache, "llama.cpp")
    if os.path.isfile(os.path.join(root, "convert_hf_to_gguf.py")):
        return root
    dl = os.path.join(cache, "dl")
    try:
        # --no-binary for this package only: with :all:, pip also builds the sdist's build requirements
        # (cmake among them) from source to read its metadata, minutes on 2 cores
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", SDIST.split("==")[0],
                        SDIST, "-d", dl, "-q"], check=True, capture_output=True, timeout=600)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
        pytest.skip(f"cannot fetch the llama-cpp-python sdist with pip (for llama.cpp's converter): "
                    f"{getattr(e, 'stderr', b'') or e}"[:300])
    [name] = [n for n in os.listdir(dl) if n.endswith(".tar.gz")]
    tmp = root + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(os.path.join(dl, name)) as tar:
        for m in tar.getmembers():
            rel = m.name.split("/", 1)[1] if "/" in m.name else ""
            if rel.startswith(VENDOR) and rel[len(VENDOR):].startswith(NEEDED) and (m.isfile() or m.isdir()):
                m.name = rel[len(VENDOR):]
                tar.extract(m, tmp, filter="data")
    os.replace(tmp, root)
    return root


@pytest.fixture(scope="session")
def converted(request, tmp_path_factory, vocab_dir):
    """{outtype: llama.cpp's GGUF file}, plus the HF source directory under "src"."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    root = _fetch_converter(request, tmp_path_factory)
    base = tmp_path_factory.mktemp("llamacpp")
    src = write_random_model(str(base / "gpt2-tiny"), CFG, seed=11, vocab_dir=vocab_dir, fmt="safetensors")
    # the converter's output depends only on its version and the source bytes: cached under their hash
    with open(os.path.join(src, "model.safetensors"), "rb") as f:
        key = hashlib.sha256(SDIST.encode() + f.read()).hexdigest()[:16]
    done = os.path.join(_cache_dir(request, tmp_path_factory), "converted-" + key)
    if not all(os.path.isfile(os.path.join(done, f"{t}.gguf")) for t in OUTTYPES):
        work = done + ".partial"
        shutil.rmtree(work, ignore_errors=True)
        os.makedirs(work)
        env = dict(os.environ, PYTHONPATH=root)
        env.pop("NO_LOCAL_GGUF", None)                # the converter uses its own gguf-py
        r = subprocess.run([sys.executable, "-c", DRIVER, os.path.join(root, "convert_hf_to_gguf.py"), src, work,
                            *OUTTYPES], cwd=root, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        shutil.rmtree(done, ignore_errors=True)
        os.replace(work, done)
    out = {t: os.path.join(done, f"{t}.gguf") for t in OUTTYPES}
    out["src"] = src
    return out


@pytest.fixture(scope="module")
def source(converted):
    """Logits of the HF source in each dtype."""
    return {d: gpt2cy.load(converted["src"], threads=1, dtype=d).logits(IDS) for d in ("f32", "bf16", "q8_0", "q4_0")}


@pytest.mark.parametrize("outtype, dtype", [("f32", "f32"), ("bf16", "bf16"), ("q8_0", "q8_0")])
def test_converter_files_give_the_source_logits(converted, source, outtype, dtype):
    m = gpt2cy.load(converted[outtype], threads=1)
    assert m.dtype == dtype
    assert np.array_equal(m.logits(IDS), source[dtype])


def test_converter_f16_file_is_widened_exactly(converted):
    seen = []
    gpt2cy.set_notice_handler(seen.append)
    try:
        m = gpt2cy.load(converted["f16"], threads=1)
    finally:
        gpt2cy.set_notice_handler(None)
    assert m.dtype == "f32" and any("f16 tensor(s) to f32" in s for s in seen)
    w = load_weights(converted["src"])
    rounded = {}
    for s in tensor_specs(w.config):                  # what the file holds: matmul weights and wte in f16
        a = np.asarray(w.tensors[s.name])
        rounded[s.name] = a.astype(np.float16).astype(np.float32) if s.role in (MATMUL, EMBEDDING) else a
    want = gpt2cy.Model.from_tensors(w.config, rounded, threads=1).logits(IDS)
    assert np.array_equal(m.logits(IDS), want)


def test_converter_tokenizer_is_gpt2s(converted):
    m = gpt2cy.load(converted["q8_0"], threads=1)
    tok = gpt2cy.Tokenizer.from_dir(converted["src"])
    text = "GGUF files from llama.cpp: naïve café, 12345 tokens!\n\t<|endoftext|>"
    assert m.tokenizer.encode(text, allowed_special="all") == tok.encode(text, allowed_special="all")


@pytest.mark.parametrize("dtype", ["f32", "bf16", "q8_0"])
def test_convert_writes_what_the_converter_writes(converted, tmp_path, dtype):
    ours = str(tmp_path / f"ours-{dtype}.gguf")
    export_gguf(converted["src"], ours, dtype=dtype, threads=1)
    a, b = GGUFFile(ours), GGUFFile(converted[dtype])
    assert list(a.metadata) == list(b.metadata)                        # the same keys in the same order
    for k, v in a.metadata.items():
        w = b.metadata[k]
        assert (v.type, v.elem_type) == (w.type, w.elem_type), k
        if k != "general.name":
            same = np.array_equal(v.value, w.value) if isinstance(v.value, np.ndarray) else v.value == w.value
            assert same, k
    assert set(a.tensors) == set(b.tensors)
    for n, t in a.tensors.items():
        assert (t.type, t.ne) == (b.tensors[n].type, b.tensors[n].ne), n
        assert np.array_equal(a.raw(n), b.raw(n)), n


def _tool(env: str, name: str) -> str:
    path = os.environ.get(env) or shutil.which(name)
    if not path:
        pytest.skip(f"{name} not found (build it from llama.cpp: cmake --build BUILD --target {name}; "
                    f"then set ${env})")
    return path


def test_llama_quantize_q4_0(converted, source, tmp_path):
    tool = _tool("GPT2CY_LLAMA_QUANTIZE", "llama-quantize")
    pure = str(tmp_path / "q4_0-pure.gguf")
    subprocess.run([tool, "--pure", converted["f32"], pure, "q4_0"], check=True, capture_output=True, timeout=300)
    m = gpt2cy.load(pure, threads=1)
    assert m.dtype == "q4_0"
    assert np.array_equal(m.logits(IDS), source["q4_0"])     # llama.cpp's q4_0 bytes are gpt2cy's
    # without --pure llama-quantize keeps a finer type for token_embd (q6_K, or q8_0 when n_embd is not a
    # multiple of 256, as here): gpt2cy converts it to the run type, q4_0, from the values the file holds
    mixed = str(tmp_path / "q4_0.gguf")
    subprocess.run([tool, converted["f32"], mixed, "q4_0"], check=True, capture_output=True, timeout=300)
    m = gpt2cy.load(mixed, threads=1)
    from gpt2cy.engine.weights import convert, to_float32
    w = load_weights(converted["src"])
    tensors = dict(w.tensors)
    tensors["wte"] = to_float32(convert("wte", np.asarray(w.tensors["wte"]), "q8_0", matmul=False))
    want = gpt2cy.Model.from_tensors(w.config, tensors, threads=1, dtype="q4_0").logits(IDS)
    assert m.dtype == "q4_0" and np.array_equal(m.logits(IDS), want)


def test_llama_quantize_q4_0_with_q6_k_embedding(tmp_path, vocab_dir):
    """A real GPT-2 width (a multiple of 256): llama-quantize keeps the tied token_embd in q6_K, which gpt2cy
    dequantizes at load and holds as q4_0 like the rest."""
    tool = _tool("GPT2CY_LLAMA_QUANTIZE", "llama-quantize")
    cfg = Config(n_vocab=50257, n_ctx=16, n_embd=256, n_head=4, n_layer=1)
    src = write_random_model(str(tmp_path / "w256"), cfg, seed=2, vocab_dir=vocab_dir)
    f32 = str(tmp_path / "w256-f32.gguf")
    export_gguf(src, f32, dtype="f32", threads=1)
    q4 = str(tmp_path / "w256-q4_0.gguf")
    subprocess.run([tool, f32, q4, "q4_0"], check=True, capture_output=True, timeout=300)
    f = GGUFFile(q4)
    assert f.tensors["token_embd.weight"].type.name == "q6_K"
    m = gpt2cy.load(q4, threads=1)
    from gpt2cy.formats.gguf import dequantize_q6_k
    tensors = dict(load_weights(src).tensors)
    tensors["wte"] = dequantize_q6_k(f.raw("token_embd.weight"), 50257 * 256).reshape(50257, 256)
    want = gpt2cy.Model.from_tensors(cfg, tensors, threads=1, dtype="q4_0").logits(IDS)
    assert m.dtype == "q4_0" and np.array_equal(m.logits(IDS), want)


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_llama_cpp_runs_our_file(converted, tmp_path, dtype):
    tool = _tool("GPT2CY_LLAMA_SIMPLE", "llama-simple")
    ours = str(tmp_path / f"ours-{dtype}.gguf")
    export_gguf(converted["src"], ours, dtype=dtype, threads=1)
    r = subprocess.run([tool, "-m", ours, "-n", "8", "Hello world"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    m = gpt2cy.load(ours, threads=1)
    ours_text = m.generate("Hello world", max_new_tokens=8, temperature=0)
    assert r.stdout.strip() == ("Hello world" + ours_text).strip()
