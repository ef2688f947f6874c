"""Decode and prefill beside a CPU-bound neighbour (issue 12): the default thread setting must never be
the slow case. Groups "busy:decode" and "busy:prefill" hold gpt2cy at -t 1 ("t1") and by default
("default": adapting between 1 and the bench's thread count, Model.threads); "quiet:decode" holds the
default beside a fixed count of the bench's threads, with no neighbour (the adapting must cost < 3%).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE pytest bench/bench_busy.py --benchmark-only

The neighbour is one Python process spinning on one core for at most NEIGHBOUR_S seconds (killed when the
group ends), started before the model's first call. Targets: busy default >= 0.9x of t1 (tokens/s),
quiet default within 3% of fixed ("quiet:decode-alternating" runs the two in turn, round by round, and
records the ratio: the figure to quote on a shared machine).
"""
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import gpt2cy

from conftest import bench_threads, median

STEPS = 32
NEIGHBOUR_S = 900
SPIN = f"import time\nt = time.time() + {NEIGHBOUR_S}\nwhile time.time() < t:\n    pass\n"


@pytest.fixture(scope="module")
def neighbour():
    p = subprocess.Popen([sys.executable, "-c", SPIN])
    time.sleep(0.5)
    yield p
    p.kill()
    p.wait()


def _model(path, impl):
    if impl == "t1":
        return gpt2cy.load(path, threads=1)
    if impl == "fixed":
        return gpt2cy.load(path, threads=bench_threads())
    # the default a user gets: no count given anywhere (conftest pins OMP_NUM_THREADS for the peers)
    saved = {v: os.environ.pop(v) for v in ("GPT2CY_NUM_THREADS", "OMP_NUM_THREADS") if v in os.environ}
    try:
        model = gpt2cy.load(path)
    finally:
        os.environ.update(saved)
    assert model.adaptive_threads or bench_threads() == 1
    return model


def _decode(benchmark, model, extra):
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, 50256, 128).tolist()

    def setup():
        model.reset()
        model.prefill(prompt)

    def run():
        for t in range(STEPS):
            model.step(int(t * 7 + 11))

    benchmark.pedantic(run, setup=setup, rounds=7, iterations=1, warmup_rounds=2)
    med = median(benchmark)
    benchmark.extra_info.update(tokens_per_s=round(STEPS / med, 1) if med else None,
                                threads_at_end=model.threads, **extra)


# first: the neighbour (a module fixture) starts with the first busy test and lives to the module's end
@pytest.mark.parametrize("impl", ["fixed", "default"])
def test_quiet_decode(benchmark, model_124m_dir, impl):
    benchmark.group = "quiet:decode"
    _decode(benchmark, _model(model_124m_dir, impl), dict(impl=impl, neighbour="none"))


def test_quiet_decode_alternating(benchmark, model_124m_dir):
    # the same two, round by round in turn: a shared machine drifts between two groups run one after the
    # other; the ratio of medians here is the figure for the 3% target
    benchmark.group = "quiet:decode-alternating"
    models = {impl: _model(model_124m_dir, impl) for impl in ("fixed", "default")}
    prompt = np.random.default_rng(0).integers(0, 50256, 128).tolist()
    times = {impl: [] for impl in models}

    def run():
        for impl, model in models.items():
            model.reset()
            model.prefill(prompt)
            t0 = time.perf_counter()
            for t in range(STEPS):
                model.step(int(t * 7 + 11))
            times[impl].append(time.perf_counter() - t0)

    benchmark.pedantic(run, rounds=9, iterations=1, warmup_rounds=1)
    med = {impl: float(np.median(v[1:] or v)) for impl, v in times.items()}  # the warm-up round left out
    benchmark.extra_info.update({f"{impl} tokens/s": round(STEPS / m, 1) for impl, m in med.items()})
    benchmark.extra_info["default / fixed speed"] = round(med["fixed"] / med["default"], 3)


@pytest.mark.parametrize("impl", ["t1", "default"])
def test_busy_decode(benchmark, model_124m_dir, neighbour, impl):
    benchmark.group = "busy:decode"
    _decode(benchmark, _model(model_124m_dir, impl), dict(impl=impl, neighbour="1 spinning process"))


@pytest.mark.parametrize("impl", ["t1", "default"])
def test_busy_prefill(benchmark, model_124m_dir, neighbour, impl):
    benchmark.group = "busy:prefill"
    model = _model(model_124m_dir, impl)
    ids = np.random.default_rng(1).integers(0, 50256, 256).tolist()

    def run():
        model.reset()
        for i in range(0, len(ids), 64):      # the chunks generation.loop prefills in (PREFILL_CHUNK: Ctrl-C between them)
            model.prefill(ids[i:i + 64])

    benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=2)
    med = median(benchmark)
    benchmark.extra_info.update(tokens_per_s=round(len(ids) / med, 1) if med else None, impl=impl,
                                threads_at_end=model.threads)
