"""The independent proof that the engine is GPT-2: the same weights in transformers' GPT2LMHeadModel
(torch, float32, eager attention) give the same logits within 1e-4."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from gpt2cy.formats.checkpoint import load_weights  # noqa: E402
from gpt2cy.config import PUBLISHED, Config  # noqa: E402
from gpt2cy.loading import load  # noqa: E402
from gpt2cy.model import Model  # noqa: E402
from gpt2cy.testing import write_random_model  # noqa: E402

import reference as ref  # noqa: E402

TOL = 1e-4
TINY = Config(n_vocab=50257, n_ctx=256, n_embd=64, n_head=4, n_layer=2, name="tiny")


def hf_model(config, tensors):
    """transformers' GPT-2 holding exactly `tensors` (canonical names; Conv1D weights are [in, out] in both)."""
    hf_config = transformers.GPT2Config(
        vocab_size=config.n_vocab, n_positions=config.n_ctx, n_embd=config.n_embd, n_layer=config.n_layer,
        n_head=config.n_head, activation_function="gelu_new", layer_norm_epsilon=1e-5,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True,
        attn_implementation="eager")
    model = transformers.GPT2LMHeadModel(hf_config)
    state = {}
    for name, array in tensors.items():
        stem, _, leaf = name.rpartition(".")
        if name in ("wte", "wpe"):
            key = f"transformer.{name}.weight"
        else:
            stem = stem.replace("h", "h.", 1) if stem.startswith("h") else stem
            key = f"transformer.{stem}.{'weight' if leaf in ('w', 'g') else 'bias'}"
        state[key] = torch.from_numpy(np.array(array, dtype=np.float32))
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    assert all(k == "lm_head.weight" or k.endswith((".attn.bias", ".attn.masked_bias")) for k in missing), missing
    model.tie_weights()
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    return model.eval().float()


def hf_logits(model, ids):
    with torch.inference_mode():
        return model(torch.as_tensor(np.asarray(ids, dtype=np.int64))[None]).logits[0].numpy()


def assert_full_and_stepwise_match(model, ids, want, split):
    """Full-sequence logits, then prefill(ids[:split]) + one step per remaining id, both within TOL."""
    assert np.abs(model.logits(ids) - want).max() < TOL
    model.reset()
    model.prefill(ids[:split])
    steps = np.stack([model.step(int(t)) for t in ids[split:]])
    assert np.abs(steps - want[split:]).max() < TOL


def test_tiny_matches_transformers():
    tensors = ref.random_tensors(TINY, seed=11)
    ids = np.random.default_rng(11).integers(0, TINY.n_vocab, size=200)
    want = hf_logits(hf_model(TINY, tensors), ids)
    assert_full_and_stepwise_match(Model.from_tensors(TINY, tensors, threads=2), ids, want, split=150)
    # not a vacuous match: a model with the erf GELU is measurably different
    hf_erf = hf_model(TINY, tensors)
    hf_erf.config.activation_function = "gelu"
    for block in hf_erf.transformer.h:
        block.mlp.act = transformers.activations.ACT2FN["gelu"]
    assert np.abs(hf_logits(hf_erf, ids) - want).max() > 10 * TOL


def test_tiny_checkpoint_on_disk_matches_transformers(tmp_path, vocab_dir):
    # through the real loader: OpenAI's file layout, read back by gpt2cy.formats.checkpoint
    path = write_random_model(str(tmp_path / "tiny"), TINY, seed=5, vocab_dir=vocab_dir)
    model = load(path, threads=2)
    ids = np.random.default_rng(5).integers(0, TINY.n_vocab, size=64)
    want = hf_logits(hf_model(TINY, load_weights(path).tensors), ids)
    assert np.abs(model.logits(ids) - want).max() < TOL


@pytest.mark.slow
def test_124m_shapes_match_transformers():
    cfg = PUBLISHED["124M"]
    tensors = ref.random_tensors(cfg, seed=4)
    ids = np.random.default_rng(4).integers(0, cfg.n_vocab, size=128)
    want = hf_logits(hf_model(cfg, tensors), ids)
    assert_full_and_stepwise_match(Model.from_tensors(cfg, tensors, threads=2), ids, want, split=100)
