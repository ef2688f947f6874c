"""How many threads the kernels use by default: GPT2CY_NUM_THREADS, then OMP_NUM_THREADS, then the CPUs
this process may run on. A variable that is set but not a positive integer is skipped (not counted as set),
and the reason is kept for `gpt2cy --info` (thread_setting)."""
from __future__ import annotations

import os
from typing import Callable, Optional, Tuple

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


# ------------------------------------------------------------------------------------------------ adapting

def _own_running() -> int:
    # this process's threads that are runnable now (an OpenMP worker still spinning after a region counts)
    n = 0
    try:
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            if stat[stat.rindex(b")") + 2:][:1] == b"R":
                n += 1
    except OSError:
        return 1
    return max(1, n)


def busy_cpus(samples: int = 3, gap: float = 0.002) -> Optional[int]:
    """How many CPUs other processes keep busy right now: the runnable tasks the kernel counts
    (/proc/loadavg), less this process's own runnable threads, the least of a few samples `gap` seconds
    apart (a task that runs for a moment is not a neighbour; a CPU-bound one is runnable in every sample).
    None where the system has no /proc (not Linux)."""
    import time
    least = None
    for i in range(samples):
        try:
            with open("/proc/loadavg") as f:
                running = int(f.read().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return None
        others = max(0, running - _own_running())
        least = others if least is None else min(least, others)
        if i + 1 < samples:
            time.sleep(gap)
    return least


def _levels(max_threads: int) -> Tuple[int, ...]:
    # the counts tried: max, max/2, max/4, ... 1 (halving keeps the number of probes logarithmic)
    out, n = [], max(1, int(max_threads))
    while n > 1:
        out.append(n)
        n //= 2
    out.append(1)
    return tuple(sorted(set(out)))


class _Kind:
    """What the governor knows about one kind of call (a range of rows per call)."""
    __slots__ = ("cur", "cost", "calls", "interval", "probe", "probe_costs", "slow", "down")

    def __init__(self, top: int):
        self.cur = top                 # index into levels of the count in use
        self.cost = {}                 # level index -> moving average of seconds per row
        self.calls = 0                 # calls since the last probe
        self.interval = ThreadGovernor.FIRST_INTERVAL
        self.probe = None              # level index being tried, or None
        self.probe_costs = []
        self.slow = 0                  # consecutive calls well above the moving average
        self.down = True               # which neighbour the next probe tries


class ThreadGovernor:
    """Chooses the thread count of each engine call from how fast the recent calls ran.

    On a quiet machine every thread helps; beside a CPU-bound neighbour, a kernel's threads wait at every
    barrier for the one that was descheduled, and a 2-thread decode on 2 cores can run 10x slower than a
    1-thread one. So the governor keeps a moving average of seconds per row for the count in use, and now
    and then runs a few calls one level down or up (max, max/2, ..., 1), switching when that level is
    clearly faster. A probe that loses costs time, so the next one waits longer: long enough that probes
    cost about 2% of the time, doubling up to MAX_INTERVAL calls; a sudden slowdown of the level in use
    (a neighbour started) brings the next probe forward. Calls are grouped by their number of rows (decode
    steps, small batches, prefill chunks), whose best counts differ. Results never depend on it: every
    kernel gives the same bits at any thread count.
    """
    FIRST_INTERVAL = 8
    MAX_INTERVAL = 1024
    PROBE_CALLS = 2
    SWITCH_GAIN = 0.9              # switch when the probed level costs below this fraction of the current
    SLOW = 1.5                     # a call this much above the moving average counts as slow...
    SLOW_CALLS = 3                 # ...and this many in a row bring the next probe forward
    BUDGET = 0.02                  # the share of time a losing probe may cost

    def __init__(self, max_threads: int, busy: Optional[Callable[[], Optional[int]]] = None):
        """busy: how many CPUs others keep busy now (busy_cpus), asked when a kind of call is first seen,
        so that a process started beside a CPU-bound neighbour begins at the count that fits the free
        CPUs instead of learning it from slow calls; None: begin at max_threads."""
        self.levels = _levels(max_threads)
        self._kinds = {}
        self._busy = busy

    def _start(self) -> int:
        # the level index a new kind begins at: the largest count that fits the CPUs nobody else uses
        top = len(self.levels) - 1
        taken = self._busy() if self._busy is not None else None
        if not taken:
            return top
        free = max(1, self.levels[top] - taken)
        return max(i for i, n in enumerate(self.levels) if n <= free)

    @staticmethod
    def kind_of(rows: int) -> int:
        """The group of a call of `rows` rows: 1, 2-4, 5-16, 17-64, 65+."""
        return 0 if rows <= 1 else 1 if rows <= 4 else 2 if rows <= 16 else 3 if rows <= 64 else 4

    def _state(self, kind: int) -> _Kind:
        st = self._kinds.get(kind)
        if st is None:
            st = self._kinds[kind] = _Kind(self._start())
        return st

    def current(self, kind: int = 0) -> int:
        """The thread count in use for calls of this kind (probes aside)."""
        return self.levels[self._state(kind).cur]

    def choose(self, kind: int) -> int:
        """The thread count for the next call of this kind."""
        st = self._state(kind)
        if st.probe is None and len(self.levels) > 1 and st.cur in st.cost and (
                st.calls >= st.interval or st.slow >= self.SLOW_CALLS):
            top = len(self.levels) - 1
            down = st.down if 0 < st.cur < top else st.cur == top
            st.down = not st.down
            st.probe = st.cur - 1 if down else st.cur + 1
            st.probe_costs = []
            st.slow = 0
        return self.levels[st.cur if st.probe is None else st.probe]

    def record(self, kind: int, threads: int, seconds: float, rows: int) -> None:
        """What a call of this kind took (seconds, for `rows` rows) at `threads` threads."""
        st = self._state(kind)
        cost = seconds / max(1, rows)
        if st.probe is not None and threads == self.levels[st.probe]:
            st.probe_costs.append(cost)
            if len(st.probe_costs) < self.PROBE_CALLS:
                return
            tried = sum(st.probe_costs) / len(st.probe_costs)
            here = st.cost.get(st.cur, tried)
            if tried < self.SWITCH_GAIN * here:
                st.cost[st.probe] = tried
                st.cur = st.probe
                st.interval = self.FIRST_INTERVAL
            else:
                loss = (tried / here - 1.0) * self.PROBE_CALLS if here > 0 else 0.0
                st.interval = min(self.MAX_INTERVAL, max(2 * st.interval, int(loss / self.BUDGET) + 1))
            st.probe = None
            st.calls = 0
            return
        if threads != self.levels[st.cur]:
            return                                        # set from outside meanwhile: not ours to judge
        avg = st.cost.get(st.cur)
        if avg is None:
            st.cost[st.cur] = cost
        else:
            st.slow = st.slow + 1 if cost > self.SLOW * avg else 0
            st.cost[st.cur] = 0.75 * avg + 0.25 * cost
        st.calls += 1
