"""The lm-evaluation-harness model "gpt2cy" against lm_eval's own "hf" model (GPT2LMHeadModel) on the same
weights: the same log-likelihoods within 1e-4, the same greedy flags, the same rolling log-likelihoods and the
same greedy generate_until text, for requests built here (lm_eval Instances; no dataset download)."""
import json
import os

import numpy as np
import pytest

lm_eval = pytest.importorskip("lm_eval")

import gpt2cy.evaluation  # noqa: E402  (registers "gpt2cy")
from gpt2cy.config import Config  # noqa: E402
from gpt2cy.evaluation.harness import GPT2CyLM, rolling_windows  # noqa: E402
from gpt2cy.testing import write_random_model  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.registry import get_model, model_registry  # noqa: E402

TOL = 1e-4
CFG = Config(n_vocab=50257, n_ctx=128, n_embd=32, n_head=2, n_layer=2, name="tiny")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, vocab_dir):
    """The random checkpoint in HuggingFace's layout: both harness models read this folder."""
    return write_random_model(str(tmp_path_factory.mktemp("tiny-hf")), CFG, seed=7, vocab_dir=vocab_dir,
                              fmt="safetensors")


@pytest.fixture(scope="module")
def ours(hf_dir):
    return get_model("gpt2cy").create_from_arg_string(f"pretrained={hf_dir},dtype=f32,threads=2",
                                                      {"batch_size": 3})


@pytest.fixture(scope="module")
def hf(hf_dir):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")            # lm_eval's hf model imports it
    return get_model("hf").create_from_arg_string(f"pretrained={hf_dir},dtype=float32,device=cpu",
                                                  {"batch_size": 1})


def instances(kind, args):
    return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


def test_registered_and_lm_evals_own_models_still_found(ours):
    assert get_model("gpt2cy") is GPT2CyLM
    assert "hf" in model_registry and "dummy" in model_registry
    assert ours.max_length == CFG.n_ctx and ours.eot_token_id == 50256


def test_loglikelihood_equals_hf(ours, hf):
    greedy = ours.generate_until(instances("generate_until", [("Hello, my name is", {"until": [], "max_gen_toks": 3})]))[0]
    reqs = [("The capital of France is", " Paris"), ("", "Hello world"), ("Once upon a time ", "there was a cat."),
            ("a " * 200, "b c d"),                                   # longer than max_length: truncated on the left
            ("Question?<|endoftext|>Answer:", " yes"), ("Hello, my name is", greedy), ("x", " y"),
            ("Hello, my name is", greedy[:len(greedy) // 2] or greedy)]
    a = ours.loglikelihood(instances("loglikelihood", reqs))
    b = hf.loglikelihood(instances("loglikelihood", reqs))
    assert len(a) == len(b) == len(reqs)
    for (la, ga), (lb, gb) in zip(a, b):
        assert abs(la - lb) < TOL
        assert ga == gb
    assert a[5][1] is True and a[0][1] is False                      # both flags occur


def test_loglikelihood_rolling_equals_hf(ours, hf):
    texts = ["word " * 400, "Short text.", "a" + " a" * (CFG.n_ctx - 1), "a" + " a" * CFG.n_ctx, "x"]
    a = ours.loglikelihood_rolling(instances("loglikelihood_rolling", [(t,) for t in texts]))
    b = hf.loglikelihood_rolling(instances("loglikelihood_rolling", [(t,) for t in texts]))
    assert np.abs(np.array(a) - np.array(b)).max() < TOL * 10       # sums of ~400 terms, each within 1e-5
    assert a[0] < a[1] < 0


def test_generate_until_equals_hf(ours, hf):
    free = ours.generate_until(instances("generate_until", [("The", {"until": [], "max_gen_toks": 12})]))[0]
    stop = free[len(free) // 2:len(free) // 2 + 3]                  # a stop string it will meet
    reqs = [("Hello, my name is", {"until": ["\n\n"], "max_gen_toks": 16, "do_sample": False}),
            ("The", {"until": [stop], "max_gen_toks": 12}),
            ("Once upon a time", {"until": "zz", "max_gen_toks": 5, "temperature": 0.0})]
    a = ours.generate_until(instances("generate_until", reqs))
    b = hf.generate_until(instances("generate_until", reqs))
    assert a == b
    assert stop and stop not in a[1] and len(a[1]) < len(free)


@pytest.mark.parametrize("n", [0, 1, 2, 7, 8, 9, 16, 17, 40])
@pytest.mark.parametrize("L", [1, 4, 8])
def test_rolling_windows_are_lm_evals(n, L):
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
    tokens = list(range(100, 100 + n))
    ids = [0] + tokens
    want = [make_disjoint_window(w) for w in get_rolling_token_windows(tokens, 0, L, 1)]
    got = rolling_windows(n, L)
    assert len(got) == len(want)
    for w, (ctx, pred) in zip(got, want):
        # lm_eval's model runs (ctx + pred)[-(L + 1):][:-1] and scores pred; ours runs ids[start:end]
        assert ids[w.start:w.end] == (ctx + pred)[-(L + 1):][:-1]
        assert ids[w.first:w.last] == pred


def test_simple_evaluate_runs_the_gpt2cy_model(hf_dir, tmp_path, monkeypatch):
    """The documented entry point, end to end, on a two-question task read from a local file."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    docs = [{"q": "The capital of France is", "choices": ["Paris", "London", "Rome"], "label": 0},
            {"q": "Two plus two is", "choices": ["four", "five"], "label": 1},
            {"q": "The sky is", "choices": ["blue", "green", "red", "sky"], "label": 3}]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "task.yaml").write_text(
        "task: gpt2cy_tiny_mc\ndataset_path: json\ndataset_kwargs:\n"
        f"  data_files:\n    test: {data}\n  cache_dir: {tmp_path / 'cache'}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: \"{{q}}\"\n"
        "doc_to_choice: \"{{choices}}\"\ndoc_to_target: label\nmetric_list:\n  - metric: acc\n"
        "    aggregation: mean\n    higher_is_better: true\n")
    from lm_eval.tasks import TaskManager
    out = lm_eval.simple_evaluate(model="gpt2cy", model_args=f"pretrained={hf_dir},dtype=f32,threads=2",
                                  tasks=["gpt2cy_tiny_mc"], task_manager=TaskManager(include_path=str(tmp_path)))
    lm = GPT2CyLM(pretrained=hf_dir, threads=2)
    picks = []
    for d in docs:
        # lm_eval joins context and choice with its target_delimiter, " "
        lls = lm.loglikelihood(instances("loglikelihood", [(d["q"], " " + c) for c in d["choices"]]))
        picks.append(int(np.argmax([ll for ll, _ in lls])) == d["label"])
    assert out["results"]["gpt2cy_tiny_mc"]["acc,none"] == pytest.approx(np.mean(picks))
    assert out["results"]["gpt2cy_tiny_mc"]["sample_len"] == len(docs)
    assert os.path.isdir(tmp_path / "cache")


def test_bad_model_args(hf_dir):
    with pytest.raises(ValueError, match="CPU"):
        GPT2CyLM(pretrained=hf_dir, device="cuda")
    with pytest.raises(ValueError, match="batch_size must be an integer"):
        GPT2CyLM(pretrained=hf_dir, batch_size="many")
    with pytest.raises(ValueError, match="dtype"):
        GPT2CyLM(pretrained=hf_dir, dtype="f64")
