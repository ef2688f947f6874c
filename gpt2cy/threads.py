"""How many threads the kernels use by default: GPT2CY_NUM_THREADS, then OMP_NUM_THREADS, then the CPUs
this process may run on. A variable that is set but not a positive integer is skipped (not counted as set),
and the reason is kept for `gpt2cy --info` (thread_setting)."""
from __future__ import annotations

import os
from typing import Optional, Tuple

MAX_THREADS = 256
ENV_VARS = ("GPT2CY_NUM_THREADS", "OMP_NUM_THREADS")


def _parse(var: str, raw: str) -> Tuple[Optional[int], Optional[str]]:
    # OMP_NUM_THREADS may be a list of team sizes per nesting level ("4,2"): the first one is ours
    text = raw.split(",")[0].strip() if var == "OMP_NUM_THREADS" else raw.strip()
    if text.isdigit() and int(text) > 0:
        return min(int(text), MAX_THREADS), None
    return None, f"{var}={raw!r} is not a positive integer; ignored"


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def thread_setting(environ=None) -> Tuple[int, str, Optional[str]]:
    """(threads, source, problem): the default thread count, where it came from ("GPT2CY_NUM_THREADS",
    "OMP_NUM_THREADS" or "cpus"), and why a variable that was set was ignored (None when none was)."""
    env = os.environ if environ is None else environ
    problems = []
    for var in ENV_VARS:
        raw = env.get(var)
        if raw is None or raw.strip() == "":
            continue
        n, problem = _parse(var, raw)
        if n is not None:
            return n, var, "; ".join(problems) or None
        problems.append(problem)
    return min(cpu_count(), MAX_THREADS), "cpus", "; ".join(problems) or None


def default_threads() -> int:
    """GPT2CY_NUM_THREADS, else OMP_NUM_THREADS, when set to a positive integer; else the CPUs available."""
    return thread_setting()[0]


def check_threads(threads) -> int:
    """Validate a user-given thread count (None = default_threads())."""
    if threads is None:
        return default_threads()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    return min(threads, MAX_THREADS)
