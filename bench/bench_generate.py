"""End-to-end generation on a random 124M-shaped checkpoint: 64 prompt tokens, then 128 new tokens,
gpt2cy beside transformers' `generate` on the very same weights, and the sampler's cost per token.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE pytest bench/bench_generate.py --benchmark-only

Groups: "generate-124M-greedy" and "generate-124M-sampled" (temp 0.8, top-k 40, top-p 0.95) each hold
both implementations; extra_info["tokens/s"] is 128 / the median. "sampling-overhead" times one decode
step and one Sampler call on real logits; extra_info["overhead %"] is the ratio of their medians
(target < 1%).
Greedy results are checked against each other before any figure counts: transformers' greedy tokens come from
a process of their own (the fixture greedy_reference), so gpt2cy's benchmarks run before torch starts in this
one (conftest.py sorts the transformers benchmarks last). With --benchmark-disable (each
function run once, no timings) every check still runs and no figure is recorded. GPT2CY_BENCH_SMALL=1 runs
the same code on a small model (n_embd 64, 2 layers; groups "generate-small-*"), as a smoke test.
"""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import gpt2cy
from gpt2cy.generation.loop import generate
from gpt2cy.generation.sampling import Sampler, SamplingParams

from conftest import bench_threads, median

SMALL = os.environ.get("GPT2CY_BENCH_SMALL") == "1"
SIZE = "small" if SMALL else "124M"      # in the group names
N_PROMPT, N_NEW = 64, 128
SAMPLED = dict(temperature=0.8, top_k=40, top_p=0.95)


@pytest.fixture(scope="module")
def generate_model_dir(tmp_path_factory, request):
    if not SMALL:
        return request.getfixturevalue("model_124m_dir")
    from gpt2cy.config import Config
    from gpt2cy.testing import write_random_model
    path = tmp_path_factory.mktemp("gpt2-small-random")     # n_ctx 1024: test_decode_step runs to 512
    return write_random_model(str(path), Config(n_vocab=50257, n_ctx=1024, n_embd=64, n_head=2, n_layer=2),
                              seed=0)


@pytest.fixture(scope="module")
def ours(generate_model_dir):
    return gpt2cy.load(generate_model_dir, threads=bench_threads())


@pytest.fixture(scope="module")
def hf(generate_model_dir):
    """transformers' GPT2LMHeadModel holding the same tensors, in this process (the transformers benchmarks,
    which conftest.py runs after all of ours)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    return _hf_model(generate_model_dir, bench_threads())


def _hf_model(model_dir, threads):
    """GPT2LMHeadModel holding the checkpoint's tensors (Conv1D keeps the [in, out] layout)."""
    import torch
    import transformers
    from gpt2cy.formats.checkpoint import hf_name, load_weights
    torch.set_num_threads(threads)
    w = load_weights(model_dir)
    c = w.config
    cfg = transformers.GPT2Config(vocab_size=c.n_vocab, n_positions=c.n_ctx, n_embd=c.n_embd, n_layer=c.n_layer,
                                  n_head=c.n_head)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    state = {"transformer." + hf_name(k): torch.from_numpy(np.array(v)) for k, v in w.tensors.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("attn.bias") or k.endswith("attn.masked_bias") or k == "lm_head.weight"
                                  for k in missing), missing
    model.tie_weights()
    return model


@pytest.fixture(scope="module")
def prompt_ids():
    return np.random.default_rng(0).integers(0, 50256, N_PROMPT).tolist()


def ours_generate(model, ids, **kw):
    chunks = list(generate(model, ids, max_new_tokens=N_NEW, ignore_eos=True, stream=True, seed=0, **kw))
    return [c.token for c in chunks]


def hf_generate(model, ids, sample):
    import torch
    x = torch.tensor([ids])
    kw = dict(do_sample=True, **SAMPLED) if sample else dict(do_sample=False)
    with torch.inference_mode():
        out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=N_NEW, min_new_tokens=N_NEW,
                             pad_token_id=50256, **kw)
    return out[0, len(ids):].tolist()


def _record(benchmark, impl):
    benchmark.extra_info["impl"] = impl
    benchmark.extra_info["threads"] = bench_threads()
    med = median(benchmark)
    if med:
        benchmark.extra_info["tokens/s"] = round(N_NEW / med, 2)


@pytest.fixture(scope="module")
def greedy_reference(generate_model_dir, prompt_ids):
    """transformers' greedy tokens for the prompt, from a process of its own: gpt2cy's greedy benchmark
    checks against them, and torch's OpenMP runtime must not be running beside our timings."""
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None:
        pytest.skip("the greedy reference needs torch and transformers")
    env = dict(os.environ, **{v: str(bench_threads()) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                                "MKL_NUM_THREADS")})
    out = subprocess.run([sys.executable, __file__, generate_model_dir, json.dumps(prompt_ids),
                          str(bench_threads())], capture_output=True, text=True, timeout=1800, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("impl", ["gpt2cy", "transformers"])
def test_generate_greedy(benchmark, request, impl, ours, prompt_ids, greedy_reference):
    benchmark.group = f"generate-{SIZE}-greedy"
    if impl == "gpt2cy":
        toks = benchmark.pedantic(ours_generate, args=(ours, prompt_ids), kwargs=dict(temperature=0),
                                  rounds=3, warmup_rounds=1)
        # the same weights must give the same greedy text (random weights: allow a late near-tie to differ)
        agree = next((i for i, (a, b) in enumerate(zip(toks, greedy_reference)) if a != b), N_NEW)
        benchmark.extra_info["tokens equal to transformers"] = agree
        assert agree >= 16
    else:
        hf = request.getfixturevalue("hf")
        toks = benchmark.pedantic(hf_generate, args=(hf, prompt_ids, False), rounds=3, warmup_rounds=1)
        assert toks == greedy_reference          # this process's model is the reference process's
    assert len(toks) == N_NEW
    _record(benchmark, impl)


@pytest.mark.parametrize("impl", ["gpt2cy", "transformers"])
def test_generate_sampled(benchmark, request, impl, ours, prompt_ids):
    benchmark.group = f"generate-{SIZE}-sampled"
    if impl == "gpt2cy":
        toks = benchmark.pedantic(ours_generate, args=(ours, prompt_ids), kwargs=SAMPLED, rounds=3, warmup_rounds=1)
    else:
        hf = request.getfixturevalue("hf")
        toks = benchmark.pedantic(hf_generate, args=(hf, prompt_ids, True), rounds=3, warmup_rounds=1)
    assert len(toks) == N_NEW
    _record(benchmark, impl)


_STEP = {}   # the decode-step median, measured by test_decode_step before the sampler tests use it


def test_decode_step(benchmark, ours, prompt_ids):
    """One decode step at positions 64..512 (what each sampled token pays for)."""
    benchmark.group = "sampling-overhead"
    ours.reset()
    logits = ours.prefill(prompt_ids)

    def step():
        if ours.n_past >= 512:
            ours.reset()
            ours.prefill(prompt_ids)
        return ours.step(7)

    out = benchmark.pedantic(step, rounds=200, warmup_rounds=5)
    assert out.shape == logits.shape and np.isfinite(out).all()
    med = median(benchmark)
    if med:
        _STEP["s"] = med
    benchmark.extra_info["threads"] = bench_threads()


@pytest.mark.parametrize("setting", ["default", "top-p only", "min-p only", "greedy+penalty"])
def test_sampling_overhead(benchmark, setting, ours, prompt_ids):
    benchmark.group = "sampling-overhead"
    params = {"default": SamplingParams(repetition_penalty=1.1),
              "top-p only": SamplingParams(top_k=0, top_p=0.95),
              "min-p only": SamplingParams(top_k=0, top_p=1.0, min_p=0.05),
              "greedy+penalty": SamplingParams(temperature=0, repetition_penalty=1.1)}[setting]
    ours.reset()
    logits = ours.prefill(prompt_ids)
    sampler = Sampler(params, seed=0)
    tok = benchmark(sampler, logits, prompt_ids)
    assert 0 <= tok < 50257
    med = median(benchmark)
    if "s" in _STEP and med:
        benchmark.extra_info["decode step ms (median)"] = round(_STEP["s"] * 1e3, 3)
        benchmark.extra_info["overhead %"] = round(100 * med / _STEP["s"], 3)


if __name__ == "__main__":
    # the greedy reference's process: model dir, prompt ids (JSON), threads -> the new tokens (JSON)
    model_dir, ids_json, threads = sys.argv[1:4]
    print(json.dumps(hf_generate(_hf_model(model_dir, int(threads)), json.loads(ids_json), sample=False)))
