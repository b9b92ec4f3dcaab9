"""Model families: forward shapes, parameter counts by hand, registry checks, initialisers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from pyweightstat.models import (
    CNN,
    DNN,
    FAMILIES,
    ViT,
    build_model,
    count_parameters,
    family_options,
    init_weights,
)

SHAPES = [(1, 28, 28), (3, 32, 32)]


def _dnn_params(in_shape, widths, k):
    n, fan_in = 0, math.prod(in_shape)
    for w in widths:
        n += fan_in * w + w
        fan_in = w
    return n + fan_in * k + k


def _cnn_params(in_shape, chans, k, pool=True, head_hidden=0):
    c, h, w = in_shape
    n = 0
    for co in chans:
        n += c * co * 9 + co
        c = co
        if pool:
            h, w = h // 2, w // 2
    flat = c * h * w
    if head_hidden:
        return n + flat * head_hidden + head_hidden + head_hidden * k + k
    return n + flat * k + k


def _vit_params(in_shape, k, p, dim, depth, mlp_ratio, cls):
    c, h, w = in_shape
    tokens = (h // p) * (w // p) + (1 if cls else 0)
    hidden = round(dim * mlp_ratio)
    block = (
        2 * dim  # LayerNorm 1
        + dim * 3 * dim + 3 * dim  # qkv
        + dim * dim + dim  # out projection
        + 2 * dim  # LayerNorm 2
        + dim * hidden + hidden + hidden * dim + dim  # MLP
    )  # fmt: skip
    return (
        (c * p * p) * dim + dim  # patch embedding
        + (dim if cls else 0)  # CLS token
        + tokens * dim  # position embedding
        + depth * block
        + 2 * dim  # final LayerNorm
        + dim * k + k  # head
    )  # fmt: skip


@pytest.mark.parametrize("in_shape", SHAPES)
@pytest.mark.parametrize(("width", "depth"), [(5, 1), (50, 3), (20, 0)])
def test_dnn_shape_and_count(in_shape, width, depth):
    m = build_model("dnn", in_shape, 10, width=width, depth=depth, activation="tanh")
    assert m(torch.randn(4, *in_shape)).shape == (4, 10)
    assert count_parameters(m) == _dnn_params(in_shape, [width] * depth, 10)
    m2 = build_model("dnn", in_shape, 7, widths=[30, 12])
    assert count_parameters(m2) == _dnn_params(in_shape, [30, 12], 7)


@pytest.mark.parametrize("in_shape", SHAPES)
@pytest.mark.parametrize(
    ("blocks", "channels", "pool", "head_hidden"),
    [(1, 8, True, 0), (2, [16, 32], True, 0), (4, 8, True, 20), (3, [4, 4, 6], False, 0)],
)
def test_cnn_shape_and_count(in_shape, blocks, channels, pool, head_hidden):
    m = build_model(
        "cnn", in_shape, 10, blocks=blocks, channels=channels, pool=pool, head_hidden=head_hidden
    )
    assert m(torch.randn(3, *in_shape)).shape == (3, 10)
    chans = [channels] * blocks if isinstance(channels, int) else channels
    assert count_parameters(m) == _cnn_params(in_shape, chans, 10, pool, head_hidden)
    convs = [mod for mod in m.modules() if isinstance(mod, nn.Conv2d)]
    assert len(convs) == blocks and all(c.kernel_size == (3, 3) for c in convs)


@pytest.mark.parametrize("in_shape", SHAPES)
@pytest.mark.parametrize(
    ("patch", "dim", "depth", "heads", "ratio", "cls"),
    [(4, 32, 1, 2, 2.0, True), (4, 16, 2, 16, 4.0, False), (2, 24, 3, 8, 1.5, True)],
)
def test_vit_shape_and_count(in_shape, patch, dim, depth, heads, ratio, cls):
    m = build_model(
        "vit",
        in_shape,
        10,
        patch_size=patch,
        dim=dim,
        depth=depth,
        heads=heads,
        mlp_ratio=ratio,
        cls_token=cls,
    )
    assert m(torch.randn(2, *in_shape)).shape == (2, 10)
    assert count_parameters(m) == _vit_params(in_shape, 10, patch, dim, depth, ratio, cls)
    assert not any(isinstance(mod, nn.MultiheadAttention) for mod in m.modules())
    names = {n for n, mod in m.named_modules() if isinstance(mod, nn.Linear)}
    for i in range(depth):
        assert {f"blocks.{i}.attn.qkv", f"blocks.{i}.attn.proj"} <= names


def test_vit_attention_matches_float64_reference():
    torch.manual_seed(0)
    m = ViT((1, 8, 8), 3, patch_size=4, dim=8, depth=1, heads=2).double()
    attn = m.blocks[0].attn
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    got = attn(x).detach().numpy()
    xs = x.numpy()
    wq, bq = attn.qkv.weight.detach().numpy(), attn.qkv.bias.detach().numpy()
    wo, bo = attn.proj.weight.detach().numpy(), attn.proj.bias.detach().numpy()
    qkv = xs @ wq.T + bq
    q, k, v = qkv[..., :8], qkv[..., 8:16], qkv[..., 16:]
    heads = []
    for h in range(2):
        sl = slice(4 * h, 4 * h + 4)
        s = q[..., sl] @ np.swapaxes(k[..., sl], 1, 2) / math.sqrt(4)
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        s /= s.sum(axis=-1, keepdims=True)
        heads.append(s @ v[..., sl])
    ref = np.concatenate(heads, axis=-1) @ wo.T + bo
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12)


def test_vit_patchify_layout():
    m = ViT((2, 4, 4), 2, patch_size=2, dim=4, depth=1, heads=1)
    x = torch.arange(32.0).reshape(1, 2, 4, 4)
    patches = m.patchify(x)
    assert patches.shape == (1, 4, 8)
    # second patch: rows 0-1, columns 2-3, both channels
    expected = torch.cat([x[0, c, 0:2, 2:4].reshape(-1) for c in range(2)])
    assert torch.equal(patches[0, 1], expected)


def test_registry_rejects_unknown_family_and_keys():
    with pytest.raises(ValueError, match="family must be one of"):
        build_model("rnn", (1, 28, 28), 10)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['hidden'\]"):
        build_model("dnn", (1, 28, 28), 10, hidden=3)
    with pytest.raises(ValueError, match="patch_size"):
        build_model("vit", (1, 28, 28), 10, patch_size=5)
    with pytest.raises(ValueError, match="divisible"):
        build_model("vit", (1, 28, 28), 10, dim=10, heads=4)
    with pytest.raises(ValueError, match="channels has 1 entries"):
        build_model("cnn", (1, 28, 28), 10, blocks=2, channels=[8])
    with pytest.raises(ValueError, match="below 1x1"):
        build_model("cnn", (1, 8, 8), 10, blocks=4)
    with pytest.raises(ValueError, match="activation"):
        build_model("dnn", (1, 28, 28), 10, activation="swish2")
    with pytest.raises(TypeError, match="width"):
        build_model("dnn", (1, 28, 28), 10, width=2.5)
    with pytest.raises(ValueError, match="in_shape"):
        build_model("cnn", (28, 28), 10)
    assert set(FAMILIES) == {"dnn", "cnn", "vit"}
    assert family_options("cnn")["blocks"] == 2


def _layers(model):
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


MODELS = {
    "dnn": lambda: DNN((1, 28, 28), 10, width=256, depth=2),
    "cnn": lambda: CNN((1, 28, 28), 10, blocks=2, channels=[32, 64]),
    "vit": lambda: ViT((1, 28, 28), 10, dim=64, depth=2, heads=4),
}


@pytest.mark.parametrize("family", sorted(MODELS))
def test_init_uniform_and_normal(family):
    torch.manual_seed(1)
    m = init_weights(MODELS[family](), "uniform", scale=0.03)
    weights = np.concatenate([lay.weight.detach().numpy().ravel() for lay in _layers(m)])
    assert np.abs(weights).max() <= 0.03 and np.abs(weights).max() > 0.029
    assert all(not lay.bias.detach().any() for lay in _layers(m))
    m = init_weights(MODELS[family](), "normal", scale=0.05)
    weights = np.concatenate([lay.weight.detach().numpy().ravel() for lay in _layers(m)])
    assert weights.astype(np.float64).std() == pytest.approx(0.05, rel=0.02)
    assert abs(weights.astype(np.float64).mean()) < 0.002


@pytest.mark.parametrize("family", sorted(MODELS))
def test_init_xavier_kaiming_default(family):
    torch.manual_seed(2)
    m = init_weights(MODELS[family](), "xavier")
    for lay in _layers(m):
        w = lay.weight.detach().numpy()
        fan_in = w[0].size
        fan_out = w.shape[0] * (w[0, 0].size if w.ndim > 2 else 1)
        assert np.abs(w).max() <= math.sqrt(6.0 / (fan_in + fan_out)) + 1e-7
    m = init_weights(MODELS[family](), "kaiming")
    big = [lay for lay in _layers(m) if lay.weight.numel() >= 10000]
    for lay in big:
        w = lay.weight.detach().numpy().astype(np.float64)
        assert w.std() == pytest.approx(math.sqrt(2.0 / w[0].size), rel=0.05)
    m = init_weights(MODELS[family](), "default")
    for lay in _layers(m):
        bound = 1.0 / math.sqrt(lay.weight[0].numel())
        assert lay.weight.detach().abs().max() <= bound + 1e-7
        assert lay.bias.detach().abs().max() <= bound + 1e-7


def test_init_leaves_layernorm_and_embeddings_alone():
    torch.manual_seed(3)
    m = MODELS["vit"]()
    pos = m.pos_embed.detach().clone()
    with torch.no_grad():
        m.blocks[0].norm1.weight.fill_(2.0)
    init_weights(m, "normal", scale=0.5)
    assert torch.equal(m.pos_embed, pos)
    assert torch.all(m.blocks[0].norm1.weight == 2.0) and not m.blocks[0].norm1.bias.any()


def test_init_is_seeded_and_validated():
    torch.manual_seed(5)
    a = init_weights(MODELS["cnn"](), "kaiming")
    torch.manual_seed(5)
    b = init_weights(MODELS["cnn"](), "kaiming")
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    with pytest.raises(ValueError, match="scheme"):
        init_weights(a, "orthogonal")
    with pytest.raises(ValueError, match="scale"):
        init_weights(a, "normal", scale=0.0)
    with pytest.raises(TypeError, match="scale"):
        init_weights(a, "normal", scale="big")
