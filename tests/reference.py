"""A plain numpy GPT-2 forward pass: the oracle the engine is tested against. Never imported by gpt2cy.

Written straight from the math of openai/gpt-2 src/model.py (norm, conv1d, attn with a causal mask, mlp with
the tanh GELU, block, model; ln_f then the tied wte as the output projection). No KV cache, no fusion, no
threads: every position is recomputed from the embeddings, so a bug in the engine's cache cannot hide here.
Tensors use gpt2cy's canonical names ('wte', 'h0.attn.c_attn.w', ...), 2-D weights in [in, out] layout.
"""
import numpy as np


def gelu(x):
    """GPT-2's GELU: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def layer_norm(x, g, b, eps=1e-5):
    """Normalise the last axis to zero mean and unit variance, then scale by g and shift by b."""
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * g + b


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def causal_attention(q, k, v, n_head):
    """Multi-head self-attention of [T, C] q, k, v; position i sees positions 0..i."""
    T, C = q.shape
    D = C // n_head
    split = lambda a: a.reshape(T, n_head, D).transpose(1, 0, 2)          # [T, C] -> [H, T, D]
    q, k, v = split(q), split(k), split(v)
    w = q @ k.transpose(0, 2, 1) / np.sqrt(D)                             # [H, T, T]
    w = np.where(np.tril(np.ones((T, T), dtype=bool)), w, -np.inf)        # causal mask
    a = softmax(w) @ v                                                     # [H, T, D]
    return a.transpose(1, 0, 2).reshape(T, C)                              # [T, C]


def quantize_activations(a):
    """gpt2cy's 8-bit activation blocks (engine/_q8act.h), in numpy: per 32 values of a row, in float32,
    dx = amax / 127, q = round half away from zero (a * (1 / dx)); returns (q int8, dx float32)."""
    a32 = np.asarray(a, dtype=np.float32)
    blocks = a32.reshape(*a32.shape[:-1], -1, 32)
    amax = np.abs(blocks).max(axis=-1)
    d = (amax / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1) / np.where(d != 0, d, np.float32(1)), np.float32(0)).astype(np.float32)
    v = (blocks * inv[..., None]).astype(np.float32).astype(np.float64)
    q = np.clip(np.sign(v) * np.floor(np.abs(v) + 0.5), -127, 127).astype(np.int8)
    return q.reshape(a32.shape), d


def q8_activations(a):
    """The values gpt2cy's q8_0 / q4_0 kernels multiply the weights by: quantize_activations, dequantized."""
    q, d = quantize_activations(a)
    shape = q.shape
    return (q.reshape(*shape[:-1], -1, 32).astype(np.float64) * d[..., None]).reshape(shape)


def bf16_activations(a):
    """The values gpt2cy's bf16 kernels multiply bf16 weights by (engine/_bf16dot.h): each float32 rounded to
    the nearest bf16, ties to even; a result below float32's smallest normal becomes a signed zero."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    h = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint32)
    h = np.where((h & 0x7F80) == 0, h & 0x8000, h)
    return (h << 16).astype(np.uint32).view(np.float32).astype(np.float64)


def forward(tensors, config, ids, dtype=np.float64, act=None, head_act=None):
    """Logits [len(ids), n_vocab] for token ids at positions 0..len(ids)-1, computed in `dtype`.
    act: applied to every block matmul's input (q8_activations: what gpt2cy's 8-bit-activation kernels see;
    bf16_activations: what its bf16 kernels see); head_act: to the tied lm_head's input (default: act)."""
    ids = np.asarray(ids)
    T = len(ids)
    assert 0 < T <= config.n_ctx and ids.min() >= 0 and ids.max() < config.n_vocab
    w = lambda name: np.asarray(tensors[name], dtype=dtype)
    C = config.n_embd
    act = act if act is not None else (lambda v: v)
    head_act = head_act if head_act is not None else act
    wte = w("wte")
    x = wte[ids] + w("wpe")[:T]                                            # [T, C]
    for i in range(config.n_layer):
        p = f"h{i}."
        a = layer_norm(x, w(p + "ln_1.g"), w(p + "ln_1.b"))
        qkv = act(a) @ w(p + "attn.c_attn.w") + w(p + "attn.c_attn.b")    # [T, 3C]
        a = causal_attention(qkv[:, :C], qkv[:, C:2 * C], qkv[:, 2 * C:], config.n_head)
        x = x + (act(a) @ w(p + "attn.c_proj.w") + w(p + "attn.c_proj.b"))
        m = layer_norm(x, w(p + "ln_2.g"), w(p + "ln_2.b"))
        m = gelu(act(m) @ w(p + "mlp.c_fc.w") + w(p + "mlp.c_fc.b"))       # [T, 4C]
        x = x + (act(m) @ w(p + "mlp.c_proj.w") + w(p + "mlp.c_proj.b"))
    x = layer_norm(x, w("ln_f.g"), w("ln_f.b"))
    return head_act(x) @ wte.T                                             # [T, n_vocab]


def canonical_names(n_layer):
    """Every tensor name of a GPT-2 with n_layer blocks."""
    names = ["wte", "wpe", "ln_f.g", "ln_f.b"]
    for i in range(n_layer):
        names += [f"h{i}.{n}" for n in (
            "ln_1.g", "ln_1.b", "attn.c_attn.w", "attn.c_attn.b", "attn.c_proj.w", "attn.c_proj.b",
            "ln_2.g", "ln_2.b", "mlp.c_fc.w", "mlp.c_fc.b", "mlp.c_proj.w", "mlp.c_proj.b")]
    return names


def random_tensors(config, seed=0):
    """Random float32 weights in canonical names, scaled like a trained GPT-2 (so logits are not all ~0)."""
    rng = np.random.default_rng(seed)
    V, N, C, L = config.n_vocab, config.n_ctx, config.n_embd, config.n_layer

    def normal(shape, std, mean=0.0):
        return (rng.standard_normal(shape, dtype=np.float32) * np.float32(std) + np.float32(mean))

    attn_std = 1.2 / np.sqrt(C)     # q, k entries ~1.2: attention neither uniform nor one-hot at any width
    fc_std = 1.5 / np.sqrt(C)       # GELU inputs ~1.5, where its tanh and erf forms differ by ~1e-4
    t = {"wte": normal((V, C), 0.1), "wpe": normal((N, C), 0.02),
         "ln_f.g": normal((C,), 0.1, 1.0), "ln_f.b": normal((C,), 0.05)}
    for i in range(L):
        p = f"h{i}."
        t.update({
            p + "ln_1.g": normal((C,), 0.1, 1.0), p + "ln_1.b": normal((C,), 0.05),
            p + "attn.c_attn.w": normal((C, 3 * C), attn_std), p + "attn.c_attn.b": normal((3 * C,), 0.02),
            p + "attn.c_proj.w": normal((C, C), 0.02), p + "attn.c_proj.b": normal((C,), 0.02),
            p + "ln_2.g": normal((C,), 0.1, 1.0), p + "ln_2.b": normal((C,), 0.05),
            p + "mlp.c_fc.w": normal((C, 4 * C), fc_std), p + "mlp.c_fc.b": normal((4 * C,), 0.02),
            p + "mlp.c_proj.w": normal((4 * C, C), 0.02), p + "mlp.c_proj.b": normal((C,), 0.02),
        })
    return t
