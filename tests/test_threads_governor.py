"""The thread governor (gpt2cy.threads.ThreadGovernor): on simulated machines whose cost per call at each
thread count is known, it must settle on the cheapest count, spend little time on probes, follow a
neighbour that starts or stops, and never change a result (Model with adapting threads = fixed threads).
"""
import numpy as np
import pytest

from gpt2cy.threads import ThreadGovernor


def run(gov, cost_of, calls, kind=0):
    """Drive the governor for `calls` calls; cost_of(i, threads) -> seconds. Returns (total seconds, counts
    chosen)."""
    total, chosen = 0.0, []
    for i in range(calls):
        n = gov.choose(kind)
        s = cost_of(i, n)
        gov.record(kind, n, s, 1)
        total += s
        chosen.append(n)
    return total, chosen


def noisy(table, seed=0, spread=0.05):
    rng = np.random.default_rng(seed)
    return lambda i, n: table(i)[n] * float(1 + spread * rng.standard_normal()) if callable(table) else \
        table[n] * float(1 + spread * rng.standard_normal())


QUIET = {1: 1.8, 2: 1.0}           # two threads nearly twice as fast
BUSY = {1: 1.0, 2: 10.0}           # beside a CPU-bound neighbour: the barriers wait for a descheduled thread


def test_levels_halve_down_to_one():
    assert ThreadGovernor(2).levels == (1, 2)
    assert ThreadGovernor(16).levels == (1, 2, 4, 8, 16)
    assert ThreadGovernor(6).levels == (1, 3, 6)
    assert ThreadGovernor(1).levels == (1,)


def test_quiet_machine_keeps_every_thread_and_probes_cost_under_three_percent():
    gov = ThreadGovernor(2)
    total, chosen = run(gov, noisy(QUIET), 2000)
    assert gov.current() == 2
    assert total < 1.03 * 2000 * QUIET[2]
    assert chosen.count(1) < 40


def test_busy_machine_drops_to_one_thread_within_ten_percent_of_it():
    gov = ThreadGovernor(2)
    total, chosen = run(gov, noisy(BUSY), 2000)
    assert gov.current() == 1
    assert chosen[20:].count(2) < 20
    assert total < 1.10 * 2000 * BUSY[1]


def test_follows_a_neighbour_that_starts_and_one_that_stops():
    gov = ThreadGovernor(2)
    starts = noisy(lambda i: QUIET if i < 500 else BUSY)
    _, chosen = run(gov, starts, 600)
    assert chosen[499] == 2 and chosen[400:500].count(1) <= ThreadGovernor.PROBE_CALLS   # a probe at most
    assert set(chosen[530:]) == {1}                       # within ~30 calls of the neighbour starting
    gov = ThreadGovernor(2)
    stops = noisy(lambda i: BUSY if i < 300 else QUIET)
    _, chosen = run(gov, stops, 300 + ThreadGovernor.MAX_INTERVAL + 100)
    assert chosen[-1] == 2 and set(chosen[-50:]) == {2}  # back once a probe sees the machine quiet


def test_many_cores_settle_on_the_best_level():
    costs = {1: 8.0, 2: 4.2, 4: 2.3, 8: 1.4, 16: 2.5}    # half the cores taken by others: 8 is best
    gov = ThreadGovernor(16)
    total, chosen = run(gov, noisy(costs), 3000)
    assert gov.current() == 8
    assert total < 1.10 * 3000 * costs[8]


def test_kinds_are_judged_apart():
    gov = ThreadGovernor(2)
    for i in range(300):
        for kind, table in ((0, BUSY), (4, QUIET)):       # decode slow at 2 threads, prefill not
            n = gov.choose(kind)
            gov.record(kind, n, table[n], 1 if kind == 0 else 128)
    assert gov.current(0) == 1 and gov.current(4) == 2
    assert [gov.kind_of(r) for r in (1, 3, 16, 40, 500)] == [0, 1, 2, 3, 4]


def test_model_adapts_only_when_no_count_was_given(monkeypatch):
    from gpt2cy.model import Model
    from test_engine_batch import CFG
    import reference as ref
    monkeypatch.delenv("GPT2CY_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("gpt2cy.threads.cpu_count", lambda: 2)
    tensors = ref.random_tensors(CFG, seed=5)
    auto = Model.from_tensors(CFG, tensors)
    fixed = Model.from_tensors(CFG, tensors, threads=2)
    assert auto.adaptive_threads and not fixed.adaptive_threads
    ids = np.random.default_rng(5).integers(0, CFG.n_vocab, size=40)
    gov = auto._engine.governor
    from gpt2cy.threads import busy_cpus
    assert gov._busy is busy_cpus                          # a model's governor begins where the free CPUs say
    monkeypatch.setattr(gov, "choose", lambda kind, _c=iter([2, 1] * 100): next(_c))   # alternate counts
    stepped = np.stack([auto.step(int(t)) for t in ids])
    assert np.array_equal(stepped, np.stack([fixed.step(int(t)) for t in ids]))   # same bits at any count
    auto.threads = 1
    assert not auto.adaptive_threads and auto.threads == 1
    monkeypatch.setenv("GPT2CY_NUM_THREADS", "2")
    assert not Model.from_tensors(CFG, tensors).adaptive_threads


def test_a_kind_begins_at_the_count_that_fits_the_free_cpus():
    # asked when a kind is first seen: 1 of 2 CPUs taken -> 1 thread from the first call; none -> all
    asked = []
    gov = ThreadGovernor(2, busy=lambda: asked.append(1) or 1)
    assert gov.choose(0) == 1 and gov.choose(4) == 1 and len(asked) == 2
    assert ThreadGovernor(2, busy=lambda: 0).choose(0) == 2
    assert ThreadGovernor(2, busy=lambda: None).choose(0) == 2          # no /proc: as without a sampler
    assert ThreadGovernor(16, busy=lambda: 5).choose(0) == 8           # 11 free: the largest level that fits
    assert ThreadGovernor(16, busy=lambda: 40).choose(0) == 1


def test_begun_low_it_still_climbs_when_the_machine_is_quiet():
    gov = ThreadGovernor(2, busy=lambda: 1)                            # a neighbour at the start that then left
    total, chosen = run(gov, noisy(QUIET), 400)
    assert chosen[0] == 1 and gov.current() == 2 and set(chosen[-50:]) == {2}


def test_busy_cpus_sees_a_spinning_neighbour():
    import subprocess
    import sys
    import time
    from gpt2cy.threads import busy_cpus
    if busy_cpus() is None:
        pytest.skip("no /proc/loadavg here")
    p = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert busy_cpus() >= 1
    finally:
        p.kill()
        p.wait()
