"""Benchmark setup: pinned thread pools, the BLAS kernel on record, a random 124M-shaped checkpoint.

Run with: env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE pytest --benchmark-only
"""
import os
import sys

# Pin every pool before numpy or torch start theirs: oversubscribed OpenMP/BLAS pools swamp the timings.
_THREADS = os.environ.get("GPT2CY_BENCH_THREADS") or str(min(2, os.cpu_count() or 1))
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, _THREADS)

import pytest  # noqa: E402


def bench_threads() -> int:
    """The thread count every benchmark (ours and the peers') uses."""
    return int(_THREADS)


def median(benchmark):
    """The median seconds of a benchmark's timed rounds, or None under --benchmark-disable: that runs each
    benchmark once, as a check of what it asserts, and keeps no statistics, so no figure is recorded."""
    stats = getattr(benchmark, "stats", None)
    return stats.stats.median if stats is not None and getattr(stats, "stats", None) is not None else None


def round_times(benchmark, n):
    """The last n rounds' seconds, or None under --benchmark-disable (see median)."""
    return None if median(benchmark) is None else benchmark.stats.stats.data[-n:]


def _starts_torch(item) -> bool:
    # a peer run in this process (impl "transformers"), or a test that needs one's output (fixture "hf")
    params = getattr(getattr(item, "callspec", None), "params", {})
    return params.get("impl") == "transformers" or "hf" in getattr(item, "fixturenames", ())


def pytest_collection_modifyitems(session, config, items):
    """Every benchmark that starts torch runs after all the others (a stable sort, so each half keeps its
    order): torch brings an OpenMP runtime of its own, and once its threads exist no timing of ours should
    share the process with them. Within a pytest-benchmark group the figures still sit side by side."""
    items[:] = sorted(items, key=_starts_torch)


@pytest.fixture(autouse=True)
def _no_torch_beside_ours(request):
    """Holds the rule the sort above serves, when benchmarks are timed: one that does not start torch fails
    if torch is already in the process (a peer's fixture run too early) instead of timing beside its threads."""
    timed = not (request.config.getoption("benchmark_skip", False)
                 or request.config.getoption("benchmark_disable", False))
    if timed and not _starts_torch(request.node) and "torch" in sys.modules:
        pytest.fail("torch is loaded in this process: a gpt2cy benchmark must not time beside its OpenMP "
                    "runtime (start torch only in benchmarks that sort last, or in a subprocess)")


def pytest_benchmark_update_machine_info(config, machine_info):
    """Record which BLAS kernel numpy runs, and the OpenBLAS variables, beside the figures."""
    machine_info["bench_threads"] = bench_threads()
    machine_info["OPENBLAS_CORETYPE"] = os.environ.get("OPENBLAS_CORETYPE")
    machine_info["OPENBLAS_L2_SIZE"] = os.environ.get("OPENBLAS_L2_SIZE")
    try:
        import numpy  # noqa: F401
        from threadpoolctl import threadpool_info
        machine_info["threadpools"] = [
            {k: p.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
            for p in threadpool_info()]
    except ImportError:
        machine_info["threadpools"] = "threadpoolctl not installed"


def pytest_report_header(config):
    try:
        import numpy  # noqa: F401
        from threadpoolctl import threadpool_info
        kernels = ", ".join(f"{p.get('internal_api')} {p.get('architecture')} x{p.get('num_threads')}"
                            for p in threadpool_info())
    except ImportError:
        kernels = "unknown (threadpoolctl not installed)"
    return [f"gpt2cy bench: {bench_threads()} threads; numpy BLAS: {kernels}; "
            f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}"]


@pytest.fixture(scope="session")
def model_124m_dir(tmp_path_factory):
    """A random-weight checkpoint with GPT-2 124M's exact shapes, in OpenAI's file format."""
    from gpt2cy.config import PUBLISHED
    from gpt2cy.testing import write_random_model
    path = tmp_path_factory.mktemp("gpt2-124M-random")
    write_random_model(str(path), PUBLISHED["124M"], seed=0)
    return str(path)
