"""The engine (gpt2cy.Model) against the numpy reference forward pass, and the Model API's checks."""
import os

import numpy as np
import pytest

from gpt2cy.config import PUBLISHED, Config
from gpt2cy.errors import ContextLengthError, GPT2CyError, InvalidTokenError
from gpt2cy.model import Model

import reference as ref

TOL = 1e-4                 # max abs difference on logits, engine (fp32) vs reference (fp64)
TINY = Config(n_vocab=50257, n_ctx=256, n_embd=64, n_head=4, n_layer=2, name="tiny")


@pytest.fixture(scope="module")
def tiny_tensors():
    return ref.random_tensors(TINY, seed=0)


@pytest.fixture(scope="module")
def tiny_ids():
    return np.random.default_rng(7).integers(0, TINY.n_vocab, size=220)


@pytest.fixture(scope="module")
def tiny_ref(tiny_tensors, tiny_ids):
    return ref.forward(tiny_tensors, TINY, tiny_ids)


@pytest.fixture
def tiny_model(tiny_tensors):
    return Model.from_tensors(TINY, tiny_tensors, threads=2)


def decode_all(model, ids):
    """Logits of every position, computed one token at a time through the KV cache."""
    model.reset()
    return np.stack([model.step(int(t)) for t in ids])


# ------------------------------------------------------------------------------------ exactness

@pytest.mark.parametrize("threads", [1, 2])
def test_prefill_matches_reference(tiny_tensors, tiny_ids, tiny_ref, threads):
    model = Model.from_tensors(TINY, tiny_tensors, threads=threads)
    got = model.logits(tiny_ids)
    assert got.dtype == np.float32 and got.shape == (len(tiny_ids), TINY.n_vocab)
    assert np.abs(got - tiny_ref).max() < TOL
    assert model.n_past == len(tiny_ids)


@pytest.mark.parametrize("threads", [1, 2])
def test_decode_matches_reference(tiny_tensors, tiny_ids, tiny_ref, threads):
    model = Model.from_tensors(TINY, tiny_tensors, threads=threads)
    got = decode_all(model, tiny_ids)                     # 220 positions
    assert np.abs(got - tiny_ref).max() < TOL


def test_reference_is_not_trivially_matched(tiny_tensors, tiny_ids, tiny_ref, tiny_model):
    # the logits spread well beyond TOL, and a wrong position embedding or eps would be caught
    assert tiny_ref.std() > 0.1
    broken = dict(tiny_tensors)
    broken["wpe"] = np.roll(tiny_tensors["wpe"], 1, axis=0)
    assert np.abs(Model.from_tensors(TINY, broken).logits(tiny_ids[:20]) - tiny_ref[:20]).max() > 100 * TOL


@pytest.mark.parametrize("k", [1, 57, 219])
def test_prefill_then_steps_equals_logits(tiny_model, tiny_ids, tiny_ref, k):
    full = tiny_model.logits(tiny_ids)
    tiny_model.reset()
    last = tiny_model.prefill(tiny_ids[:k])
    assert last.shape == (TINY.n_vocab,) and last.dtype == np.float32
    rows = [last] + [tiny_model.step(int(t)) for t in tiny_ids[k:]]
    np.testing.assert_allclose(np.stack(rows), full[k - 1:], rtol=0, atol=1e-5)
    assert tiny_model.n_past == len(tiny_ids)


def test_prefill_in_chunks(tiny_model, tiny_ids, tiny_ref):
    tiny_model.reset()
    a = tiny_model.prefill(tiny_ids[:100])
    b = tiny_model.prefill(tiny_ids[100:101])
    c = tiny_model.prefill(list(tiny_ids[101:]))
    for got, pos in ((a, 99), (b, 100), (c, len(tiny_ids) - 1)):
        assert np.abs(got - tiny_ref[pos]).max() < TOL


def test_reset_starts_a_fresh_sequence(tiny_model, tiny_ids, tiny_ref):
    tiny_model.prefill(tiny_ids[50:90])
    tiny_model.reset()
    assert tiny_model.n_past == 0
    assert np.abs(tiny_model.prefill(tiny_ids[:30]) - tiny_ref[29]).max() < TOL
    # logits() resets by itself
    assert np.abs(tiny_model.logits(tiny_ids[:10]) - tiny_ref[:10]).max() < TOL


def test_threads_do_not_change_results(tiny_model, tiny_ids):
    tiny_model.threads = 1
    one = tiny_model.logits(tiny_ids)
    one_step = decode_all(tiny_model, tiny_ids[:40])
    tiny_model.threads = 2
    assert tiny_model.threads == 2
    assert np.abs(tiny_model.logits(tiny_ids) - one).max() <= 1e-6
    assert np.abs(decode_all(tiny_model, tiny_ids[:40]) - one_step).max() <= 1e-6


def test_decode_gives_the_bits_of_a_prefill():
    # with GPT-2's head_dim (64) every kernel sums each value in one fixed order whatever the number of
    # rows or threads (the matmul's documented contract, and the attention's blocks), so a token's logits
    # do not depend on how the sequence reached the cache
    cfg = Config(n_vocab=50257, n_ctx=128, n_embd=128, n_head=2, n_layer=2)
    model = Model.from_tensors(cfg, ref.random_tensors(cfg, seed=9), threads=2)
    ids = np.random.default_rng(9).integers(0, cfg.n_vocab, size=70)
    stepped = decode_all(model, ids)
    for k in (1, 4, 37, 70):
        model.reset()
        assert np.array_equal(model.prefill(ids[:k]), stepped[k - 1])
    model.threads = 1
    model.reset()
    assert np.array_equal(model.prefill(ids), stepped[-1])


def test_returned_logits_are_fresh_arrays(tiny_model, tiny_ids):
    tiny_model.reset()
    a = tiny_model.step(int(tiny_ids[0]))
    a_copy = a.copy()
    b = tiny_model.step(int(tiny_ids[1]))
    np.testing.assert_array_equal(a, a_copy)
    assert not np.shares_memory(a, b)
    c = tiny_model.logits(tiny_ids[:3])
    d = tiny_model.logits(tiny_ids[3:6])
    assert not np.shares_memory(c, d)


def test_accepts_numpy_and_python_ints(tiny_model, tiny_ids, tiny_ref):
    ids = tiny_ids[:12]
    for form in (list(map(int, ids)), tuple(map(int, ids)), ids.astype(np.int32), ids.astype(np.uint16),
                 [np.int64(i) for i in ids]):
        assert np.abs(tiny_model.logits(form) - tiny_ref[:12]).max() < TOL
    tiny_model.reset()
    assert np.abs(tiny_model.step(np.int32(ids[0])) - tiny_ref[0]).max() < TOL


@pytest.mark.parametrize("n_ctx,n_head,n_embd", [(1, 1, 8), (37, 3, 48), (70, 2, 128)])
def test_odd_shapes_to_the_last_position(n_ctx, n_head, n_embd):
    # n_ctx not a multiple of the cache padding, head_dim 8/16/64, the context filled to the last position
    cfg = Config(n_vocab=50257, n_ctx=n_ctx, n_embd=n_embd, n_head=n_head, n_layer=2)
    tensors = ref.random_tensors(cfg, seed=n_ctx)
    ids = np.random.default_rng(n_ctx).integers(0, cfg.n_vocab, size=n_ctx)
    want = ref.forward(tensors, cfg, ids)
    for threads in (1, 2):
        model = Model.from_tensors(cfg, tensors, threads=threads)
        assert np.abs(model.logits(ids) - want).max() < TOL
        assert np.abs(decode_all(model, ids) - want).max() < TOL
        with pytest.raises(ContextLengthError):
            model.step(0)


def test_sharing_a_model_between_threads_is_refused_not_corrupted(tiny_model, tiny_ids, tiny_ref):
    import threading
    results, refused = [], []

    def work():
        for _ in range(15):
            try:
                results.append(tiny_model.logits(tiny_ids[:40]))
            except RuntimeError:
                refused.append(1)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results and len(results) + len(refused) == 45
    for r in results:
        assert np.abs(r - tiny_ref[:40]).max() < TOL


@pytest.mark.parametrize("keep", [0, 1, 37, 120])
def test_truncate_then_prefill_equals_fresh_logits(tiny_model, tiny_ids, tiny_ref, keep):
    """Keeping a prefix of the cache and prefilling a different continuation gives a fresh run's logits."""
    other = (tiny_ids[::-1] + 11) % TINY.n_vocab            # a continuation the cache never saw
    tiny_model.reset()
    tiny_model.prefill(tiny_ids[:150])
    tiny_model.truncate(keep)
    assert tiny_model.n_past == keep
    seq = np.concatenate([tiny_ids[:keep], other[:40]])
    last = tiny_model.prefill(other[:40])
    assert tiny_model.n_past == keep + 40
    fresh = Model.from_tensors(TINY, tiny_model._weights.tensors, threads=1).logits(seq)
    np.testing.assert_allclose(last, fresh[-1], rtol=0, atol=1e-5)
    assert np.abs(last - fresh[-2]).max() > 1e-3             # the comparison can fail
    tiny_model.truncate(keep + 10)                           # and stepping after a truncate
    np.testing.assert_allclose(tiny_model.step(int(seq[keep + 10])), fresh[keep + 10], rtol=0, atol=1e-5)
    tiny_model.truncate(keep)                                # truncating onto the original ids: the reference
    if keep:
        np.testing.assert_allclose(tiny_model.prefill(tiny_ids[keep:keep + 3]), tiny_ref[keep + 2],
                                   rtol=0, atol=TOL)


@pytest.mark.parametrize("bad", [-1, 6, 1.0, True, "2", None])
def test_truncate_is_validated(tiny_model, tiny_ids, bad):
    tiny_model.prefill(tiny_ids[:5])
    with pytest.raises(ValueError, match="truncate"):
        tiny_model.truncate(bad)
    assert tiny_model.n_past == 5
    tiny_model.truncate(5)
    tiny_model.truncate(np.int64(2))
    assert tiny_model.n_past == 2


def test_a_smaller_context_sizes_the_cache_and_is_enforced(tiny_tensors, tiny_ids, tiny_ref):
    model = Model.from_tensors(TINY, tiny_tensors, threads=1, n_ctx=64)
    assert model.n_ctx == 64 and model.config.n_ctx == TINY.n_ctx and "n_ctx=64" in repr(model)
    np.testing.assert_allclose(model.logits(tiny_ids[:64]), tiny_ref[:64], rtol=0, atol=TOL)
    with pytest.raises(ContextLengthError, match="context of 64"):
        model.step(1)
    with pytest.raises(ContextLengthError, match="64"):
        model.logits(tiny_ids[:65])
    model.truncate(60)
    model.prefill(tiny_ids[60:64])                                # fills it exactly again
    small = Model.from_tensors(TINY, tiny_tensors, n_ctx=8)._engine
    full = Model.from_tensors(TINY, tiny_tensors)._engine
    assert small.n_ctx == 8 and full.n_ctx == TINY.n_ctx
    for bad in (0, -1, TINY.n_ctx + 1, 2.5, "64", True):
        with pytest.raises(ValueError, match="n_ctx"):
            Model.from_tensors(TINY, tiny_tensors, n_ctx=bad)


# ------------------------------------------------------------------------------------ bad input

def test_context_length_is_enforced(tiny_model, tiny_ids):
    n_ctx = TINY.n_ctx
    long = np.resize(tiny_ids, n_ctx + 1)
    with pytest.raises(ContextLengthError, match="context of 256"):
        tiny_model.logits(long)
    tiny_model.logits(long[:n_ctx])                      # exactly n_ctx fits
    assert tiny_model.n_past == n_ctx
    with pytest.raises(ContextLengthError, match="256"):
        tiny_model.step(1)
    assert tiny_model.n_past == n_ctx                    # a refused call changes nothing
    tiny_model.reset()
    tiny_model.prefill(long[:200])
    with pytest.raises(ContextLengthError):
        tiny_model.prefill(long[:57])
    assert tiny_model.n_past == 200
    tiny_model.prefill(long[:56])
    assert tiny_model.n_past == n_ctx


@pytest.mark.parametrize("bad", [
    [-1], [50257], [1, 2, 10 ** 6], [2 ** 70], [1.0], [True], [1, False], ["3"], "hello",
    np.array([1.0, 2.0]), np.array([True, False]), np.array([[1, 2]]), np.array([-3, 4]),
    np.array([2 ** 40], dtype=np.uint64), {1, 2}, None,
], ids=repr)
def test_bad_ids_raise_before_the_kernels(tiny_model, tiny_ids, bad):
    tiny_model.prefill(tiny_ids[:5])
    with pytest.raises(InvalidTokenError) as e:
        tiny_model.prefill(bad)
    assert isinstance(e.value, GPT2CyError) and isinstance(e.value, ValueError)
    assert "\n" not in str(e.value)
    with pytest.raises(InvalidTokenError):
        tiny_model.logits(bad)
    assert tiny_model.n_past == 5


@pytest.mark.parametrize("bad", [-1, 50257, 2 ** 70, np.uint64(2 ** 63), 1.0, True, "1", None, np.float32(3),
                                 [3]], ids=repr)
def test_bad_step_token(tiny_model, bad):
    with pytest.raises(InvalidTokenError):
        tiny_model.step(bad)
    assert tiny_model.n_past == 0


def test_empty_ids(tiny_model):
    for empty in ([], (), np.array([], dtype=np.int64)):
        with pytest.raises(ValueError, match="no token ids"):
            tiny_model.logits(empty)
        with pytest.raises(ValueError):
            tiny_model.prefill(empty)


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "2"])
def test_bad_threads(tiny_model, tiny_tensors, bad):
    with pytest.raises(ValueError):
        tiny_model.threads = bad
    with pytest.raises(ValueError):
        Model.from_tensors(TINY, tiny_tensors, threads=bad)


def test_wrong_tensors_are_a_checkpoint_error(tiny_tensors):
    from gpt2cy.errors import CheckpointError
    t = dict(tiny_tensors)
    t["h1.mlp.c_fc.w"] = t["h1.mlp.c_fc.w"][:, :10]
    with pytest.raises(CheckpointError, match="h1.mlp.c_fc.w"):
        Model.from_tensors(TINY, t)
    t = dict(tiny_tensors)
    del t["ln_f.b"]
    with pytest.raises(CheckpointError, match="ln_f.b"):
        Model.from_tensors(TINY, t)
    t = dict(tiny_tensors)
    t["wte"] = t["wte"].astype(np.float64)
    with pytest.raises(CheckpointError, match="float32"):
        Model.from_tensors(TINY, t)


def test_model_api_surface(tiny_model):
    import gpt2cy
    from gpt2cy.errors import TokenizerError
    assert gpt2cy.InvalidTokenError is InvalidTokenError and "InvalidTokenError" in gpt2cy.__all__
    assert issubclass(InvalidTokenError, TokenizerError) and issubclass(InvalidTokenError, ValueError)
    assert tiny_model.config == TINY
    assert tiny_model(np.array([1, 2])).shape == (2, TINY.n_vocab)
    assert "n_layer=2" in repr(tiny_model)
    assert tiny_model.path is None
    with pytest.raises(GPT2CyError):
        tiny_model.tokenizer


# ------------------------------------------------------------------------------------ real shapes

@pytest.mark.slow
def test_124m_shapes_match_reference():
    cfg = PUBLISHED["124M"]
    tensors = ref.random_tensors(cfg, seed=3)
    ids = np.random.default_rng(3).integers(0, cfg.n_vocab, size=200)
    want = ref.forward(tensors, cfg, ids)
    model = Model.from_tensors(cfg, tensors, threads=2)
    assert np.abs(model.logits(ids) - want).max() < TOL
    assert np.abs(decode_all(model, ids) - want).max() < TOL
    model.threads = 1
    assert np.abs(model.logits(ids) - want).max() < TOL
    model.reset()
    model.prefill(ids[:100])
    got = np.stack([model.step(int(t)) for t in ids[100:]])
    assert np.abs(got - want[100:]).max() < TOL


# ------------------------------------------------------------------------------------ from files

@pytest.mark.parametrize("fmt", ["tf", "safetensors"])
def test_load_checkpoint_dir_matches_reference(tmp_path, vocab_dir, fmt):
    from gpt2cy import load
    from gpt2cy.formats.checkpoint import load_weights
    from gpt2cy.testing import write_random_model
    cfg = Config(n_vocab=50257, n_ctx=96, n_embd=64, n_head=2, n_layer=3)
    path = write_random_model(str(tmp_path / fmt), cfg, seed=2, vocab_dir=vocab_dir, fmt=fmt)
    model = load(path, threads=2)
    assert model.path == path and model.threads == 2
    assert model.config.to_json() == cfg.to_json()
    ids = np.random.default_rng(2).integers(0, cfg.n_vocab, size=96)
    want = ref.forward(load_weights(path).tensors, cfg, ids)
    assert np.abs(model.logits(ids) - want).max() < TOL
    assert np.abs(decode_all(model, ids) - want).max() < TOL
    assert model.tokenizer.encode("hello world") == [31373, 995]


def test_load_errors(tmp_path, monkeypatch, vocab_dir):
    from gpt2cy import load
    from gpt2cy.errors import CheckpointError, ModelNotFound
    monkeypatch.setenv("GPT2CY_HOME", str(tmp_path / "home"))
    with pytest.raises(ModelNotFound):
        load("124M", download=False)
    with pytest.raises(ModelNotFound):
        load("not-a-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFound, match="not a model directory"):
        load(str(tmp_path / "empty"))
    from gpt2cy.testing import write_random_model
    path = write_random_model(str(tmp_path / "cut"), Config(50257, 32, 16, 2, 1), vocab_dir=vocab_dir)
    data = os.path.join(path, "model.ckpt.data-00000-of-00001")
    os.truncate(data, os.path.getsize(data) - 4)
    with pytest.raises(CheckpointError, match="model.ckpt"):
        load(path)


def test_threads_default_honours_omp_num_threads(tiny_tensors, monkeypatch):
    monkeypatch.delenv("GPT2CY_NUM_THREADS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert Model.from_tensors(TINY, tiny_tensors).threads == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert Model.from_tensors(TINY, tiny_tensors).threads == 3


def test_threads_default_honours_gpt2cy_num_threads_first(tiny_tensors, monkeypatch):
    from gpt2cy.threads import cpu_count, thread_setting
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setenv("GPT2CY_NUM_THREADS", "2")
    assert Model.from_tensors(TINY, tiny_tensors).threads == 2
    assert thread_setting() == (2, "GPT2CY_NUM_THREADS", None)
    # an invalid value does not count as set: the next source decides, and the reason is kept for --info
    for bad in ("0", "-1", "two", "2.5", "1,2"):
        monkeypatch.setenv("GPT2CY_NUM_THREADS", bad)
        n, source, problem = thread_setting()
        assert (n, source) == (3, "OMP_NUM_THREADS") and "GPT2CY_NUM_THREADS" in problem and bad in problem
        assert Model.from_tensors(TINY, tiny_tensors).threads == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "4,2")                # nested team sizes: the first is ours
    assert thread_setting()[:2] == (4, "OMP_NUM_THREADS")
    monkeypatch.setenv("OMP_NUM_THREADS", "lots")
    n, source, problem = thread_setting()
    assert (n, source) == (cpu_count(), "cpus") and "OMP_NUM_THREADS" in problem
    monkeypatch.delenv("GPT2CY_NUM_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert thread_setting() == (cpu_count(), "cpus", None)
    assert thread_setting({"GPT2CY_NUM_THREADS": "5"}) == (5, "GPT2CY_NUM_THREADS", None)
    assert thread_setting({"GPT2CY_NUM_THREADS": "100000"})[0] == 256    # capped like check_threads


def test_release_pages_drops_a_mapped_tensor_from_resident_memory(tmp_path):
    # what engine_weights does after converting each tensor of a checkpoint (1558M to q8_0: peak memory)
    import mmap
    import sys
    from gpt2cy.model import release_pages
    if not sys.platform.startswith("linux") or not hasattr(mmap, "MADV_DONTNEED"):
        pytest.skip("madvise(MADV_DONTNEED) and /proc/self/smaps are Linux's")
    path = tmp_path / "t.bin"
    n = 16 << 20
    path.write_bytes(np.arange(n // 4, dtype=np.float32).tobytes())

    def rss_of_file():
        total, ours = 0, False
        for line in open("/proc/self/smaps"):
            if "-" in line.split(" ")[0] and len(line.split()) > 5:
                ours = line.split()[5] == str(path)
            elif ours and line.startswith("Rss:"):
                total += int(line.split()[1])
        return total * 1024

    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    a = np.frombuffer(mm, np.float32)[1024:].reshape(-1, 1024)      # a view at an offset, as readers hand out
    assert float(a.sum(dtype=np.float64)) > 0                       # every page touched
    before = rss_of_file()
    assert before > n // 2
    assert release_pages(a)
    assert rss_of_file() < before - n // 2
    assert np.array_equal(a[3], np.arange(4 * 1024, 5 * 1024, dtype=np.float32))    # read again from the file
    assert not release_pages(np.ones((4, 4), np.float32))            # heap memory: never
    assert not release_pages(np.array(a[:2]))                        # a copy: never
    del a
