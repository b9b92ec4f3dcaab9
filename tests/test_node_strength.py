"""Node strength against hand-written sums on tiny networks (plain loops, float64)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pyweightstat.node_strength import LayerStrength, node_strength, summarize_node_strength


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def _set(layer: nn.Module, weight: list, bias: list | None) -> None:
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight, dtype=torch.float32))
        if bias is not None:
            layer.bias.copy_(torch.tensor(bias, dtype=torch.float32))


def _conv_out_strength_loop(
    weight: np.ndarray,
    in_hw: tuple[int, int],
    stride: int,
    padding: int,
    dilation: int,
    groups: int,
) -> np.ndarray:
    """Out-strength of every input pixel: sum of every kernel weight that touches it."""
    c_out, c_in_g, kh, kw = weight.shape
    h, w = in_hw
    ho = (h + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    wo = (w + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    out = np.zeros((c_in_g * groups, h, w))
    per_group = c_out // groups
    for co in range(c_out):
        g = co // per_group
        for ci_local in range(c_in_g):
            ci = g * c_in_g + ci_local
            for oy in range(ho):
                for ox in range(wo):
                    for ky in range(kh):
                        for kx in range(kw):
                            iy = oy * stride - padding + ky * dilation
                            ix = ox * stride - padding + kx * dilation
                            if 0 <= iy < h and 0 <= ix < w:
                                out[ci, iy, ix] += weight[co, ci_local, ky, kx]
    return out


# ---------------------------------------------------------------------------- MLP 2-3-2
@pytest.fixture
def mlp() -> nn.Sequential:
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))
    _set(model[0], [[1.0, -2.0], [0.5, 3.0], [-1.0, 4.0]], [0.1, -0.2, 0.3])
    _set(model[2], [[2.0, -1.0, 0.5], [-3.0, 1.0, 2.0]], [-0.5, 0.25])
    return model


def test_mlp_by_hand(mlp: nn.Sequential) -> None:
    w1, b1 = _np(mlp[0].weight), _np(mlp[0].bias)
    w2, b2 = _np(mlp[2].weight), _np(mlp[2].bias)
    res = node_strength(mlp)  # input_shape inferred from the first Linear
    assert list(res) == ["0", "2"]
    hidden, out = res["0"], res["2"]
    assert hidden.kind == out.kind == "linear"

    for j in range(3):
        s_in = sum(w1[j, i] for i in range(2))
        s_out = sum(w2[k, j] for k in range(2))
        a_in = sum(abs(w1[j, i]) for i in range(2))
        a_out = sum(abs(w2[k, j]) for k in range(2))
        assert hidden.in_strength[j] == pytest.approx(s_in)
        assert hidden.out_strength[j] == pytest.approx(s_out)
        assert hidden.strength[j] == pytest.approx(s_in + b1[j] + s_out)
        assert hidden.strength_abs[j] == pytest.approx(a_in + abs(b1[j]) + a_out)
    for i in range(2):  # input units: out-strength only
        assert hidden.input_out_strength[i] == pytest.approx(sum(w1[j, i] for j in range(3)))
        assert hidden.input_out_strength_abs[i] == pytest.approx(
            sum(abs(w1[j, i]) for j in range(3))
        )
    assert hidden.consumers == ("2",)

    assert out.out_strength is None and out.out_strength_abs is None
    for k in range(2):  # output units: in-strength + bias
        assert out.strength[k] == pytest.approx(sum(w2[k, j] for j in range(3)) + b2[k])
        assert out.strength_abs[k] == pytest.approx(
            sum(abs(w2[k, j]) for j in range(3)) + abs(b2[k])
        )
    for layer in (hidden, out):
        assert layer.fluctuation == pytest.approx(float(np.std(layer.strength)))
        assert layer.fluctuation_abs == pytest.approx(float(np.std(layer.strength_abs)))
        assert np.all(layer.strength_abs >= np.abs(layer.strength) - 1e-12)


def test_mlp_explicit_shape_and_flatten_match(mlp: nn.Sequential) -> None:
    flat = nn.Sequential(nn.Flatten(), *mlp)  # takes (1, 2) "images"
    a = node_strength(mlp)
    b = node_strength(flat, input_shape=(1, 2))
    assert list(b) == ["1", "3"]
    np.testing.assert_allclose(a["0"].strength, b["1"].strength)
    np.testing.assert_allclose(a["2"].strength_abs, b["3"].strength_abs)


def test_no_bias_and_summary() -> None:
    model = nn.Sequential(nn.Linear(3, 4, bias=False), nn.Tanh(), nn.Linear(4, 2))
    torch.manual_seed(0)
    res = node_strength(model)
    w1, w2 = _np(model[0].weight), _np(model[2].weight)
    np.testing.assert_allclose(res["0"].bias, 0.0)
    np.testing.assert_allclose(res["0"].strength, w1.sum(1) + w2.sum(0))
    summary = summarize_node_strength(res)
    assert set(summary) == {
        f"{n}/{k}"
        for n in ("0", "2")
        for k in ("fluctuation", "fluctuation_abs", "mean", "mean_abs")
    }
    assert summary["0/fluctuation"] == pytest.approx(np.std(w1.sum(1) + w2.sum(0)))
    assert summary["2/mean_abs"] == pytest.approx(
        np.mean(np.abs(w2).sum(1) + np.abs(_np(model[2].bias)))
    )


# ---------------------------------------------------------------------------- convolutions
def test_conv_stride_padding_by_loops() -> None:
    torch.manual_seed(1)
    conv1 = nn.Conv2d(1, 2, 3, stride=1, padding=1)
    conv2 = nn.Conv2d(2, 3, 3, stride=2, padding=1)
    model = nn.Sequential(conv1, nn.ReLU(), conv2)
    res = node_strength(model, input_shape=(1, 5, 5))
    w1, b1, w2, b2 = _np(conv1.weight), _np(conv1.bias), _np(conv2.weight), _np(conv2.bias)
    first, second = res["0"], res["2"]
    assert first.kind == second.kind == "conv"
    assert first.strength.shape == (2, 5, 5) and second.strength.shape == (3, 3, 3)

    # input pixels of the 1-channel 3x3-kernel, stride-1, padding-1 convolution
    np.testing.assert_allclose(
        first.input_out_strength, _conv_out_strength_loop(w1, (5, 5), 1, 1, 1, 1), atol=1e-12
    )
    # conv1's units: full kernel sum + bias, plus every conv2 weight touching them (stride 2)
    expected_out = _conv_out_strength_loop(w2, (5, 5), 2, 1, 1, 1)
    np.testing.assert_allclose(first.out_strength, expected_out, atol=1e-12)
    for c in range(2):
        np.testing.assert_allclose(first.in_strength[c], np.full((5, 5), w1[c].sum()))
        np.testing.assert_allclose(
            first.strength[c], w1[c].sum() + b1[c] + expected_out[c], atol=1e-12
        )
    expected_abs = _conv_out_strength_loop(np.abs(w2), (5, 5), 2, 1, 1, 1)
    for c in range(2):
        np.testing.assert_allclose(
            first.strength_abs[c], np.abs(w1[c]).sum() + abs(b1[c]) + expected_abs[c], atol=1e-12
        )
    # corner pixels are touched by fewer kernel positions than the centre
    assert not np.allclose(expected_abs[:, 0, 0], expected_abs[:, 1, 1])
    assert second.out_strength is None
    for c in range(3):
        np.testing.assert_allclose(second.strength[c], np.full((3, 3), w2[c].sum() + b2[c]))
    assert first.fluctuation == pytest.approx(float(np.std(first.strength)))


def test_conv_dilation_groups_by_loops() -> None:
    torch.manual_seed(2)
    conv1 = nn.Conv2d(2, 4, 3, padding=1)
    conv2 = nn.Conv2d(4, 4, 3, stride=2, padding=2, dilation=2, groups=2, bias=False)
    model = nn.Sequential(conv1, nn.GELU(), conv2)
    res = node_strength(model, input_shape=(2, 6, 7))
    w2 = _np(conv2.weight)
    np.testing.assert_allclose(
        res["0"].out_strength, _conv_out_strength_loop(w2, (6, 7), 2, 2, 2, 2), atol=1e-12
    )
    np.testing.assert_allclose(
        res["2"].input_out_strength_abs,
        _conv_out_strength_loop(np.abs(w2), (6, 7), 2, 2, 2, 2),
        atol=1e-12,
    )


class _FunctionalCNN(nn.Module):
    """conv -> F.relu -> F.max_pool2d -> torch.flatten -> linear, without pooling modules."""

    def __init__(self, conv: nn.Conv2d, lin: nn.Linear) -> None:
        super().__init__()
        self.conv, self.lin = conv, lin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(torch.flatten(F.max_pool2d(F.relu(self.conv(x)), 2), 1))


@pytest.mark.parametrize("pool", ["max", "avg", "functional"])
def test_conv_pool_flatten_linear(pool: str) -> None:
    torch.manual_seed(3)
    conv = nn.Conv2d(1, 2, 3, padding=1)
    lin = nn.Linear(2 * 2 * 2, 3)
    if pool == "functional":
        model: nn.Module = _FunctionalCNN(conv, lin)
        conv_name, lin_name = "conv", "lin"
    else:
        pool_layer = nn.MaxPool2d(2) if pool == "max" else nn.AvgPool2d(2)
        model = nn.Sequential(conv, nn.ReLU(), pool_layer, nn.Flatten(), lin)
        conv_name, lin_name = "0", "4"
    res = node_strength(model, input_shape=(1, 5, 5))  # 5x5 -> 2x2: row/column 4 are dropped
    wl = _np(lin.weight)
    route = 0.25 if pool == "avg" else 1.0
    expected = np.zeros((2, 5, 5))
    expected_abs = np.zeros((2, 5, 5))
    for c in range(2):
        for y in range(5):
            for x in range(5):
                py, px = y // 2, x // 2
                if py < 2 and px < 2:
                    col = c * 4 + py * 2 + px  # flatten order of (c, py, px)
                    expected[c, y, x] = route * sum(wl[k, col] for k in range(3))
                    expected_abs[c, y, x] = route * sum(abs(wl[k, col]) for k in range(3))
    np.testing.assert_allclose(res[conv_name].out_strength, expected, atol=1e-12)
    np.testing.assert_allclose(res[conv_name].out_strength_abs, expected_abs, atol=1e-12)
    assert res[conv_name].consumers == (lin_name,)
    np.testing.assert_allclose(res[lin_name].input_out_strength, wl.sum(0), atol=1e-12)


def test_conv_adaptive_avg_pool() -> None:
    torch.manual_seed(4)
    conv = nn.Conv2d(1, 2, 3, padding=1)
    lin = nn.Linear(2 * 2 * 2, 2)
    model = nn.Sequential(conv, nn.AdaptiveAvgPool2d(2), nn.Flatten(), lin)
    res = node_strength(model, input_shape=(1, 5, 5))
    cols = _np(lin.weight).sum(0)
    windows = [(0, 3), (2, 5)]  # adaptive windows of 5 -> 2: [floor(i*5/2), ceil((i+1)*5/2))
    expected = np.zeros((2, 5, 5))
    for c in range(2):
        for py, (y0, y1) in enumerate(windows):
            for px, (x0, x1) in enumerate(windows):
                area = (y1 - y0) * (x1 - x0)
                for y in range(y0, y1):
                    for x in range(x0, x1):
                        expected[c, y, x] += cols[c * 4 + py * 2 + px] / area
    np.testing.assert_allclose(res["0"].out_strength, expected, atol=1e-12)


def test_patch_embedding_conv_equals_linear_over_patches() -> None:
    torch.manual_seed(5)
    patch = nn.Conv2d(3, 4, kernel_size=2, stride=2)
    res = node_strength(nn.Sequential(patch), input_shape=(3, 4, 6))["0"]
    w, b = _np(patch.weight), _np(patch.bias)
    per_channel = w.reshape(4, -1).sum(1) + b
    assert res.strength.shape == (4, 2, 3)
    assert res.fluctuation == pytest.approx(float(np.std(per_channel)))
    # every input pixel is touched exactly once per output channel
    expected = np.tile(w.sum(0), (1, 2, 3))
    np.testing.assert_allclose(res.input_out_strength, expected, atol=1e-12)


# ---------------------------------------------------------------------------- attention
class _Block(nn.Module):
    """Pre-LN transformer block with a hand-written attention and a linear head."""

    def __init__(self, dim: int = 4, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(2 * dim, dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).reshape(n, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5, dim=-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(n, t, d))
        x = x + self.fc2(self.act(self.fc1(self.ln2(x))))
        return self.head(x.mean(dim=1))


def test_attention_block_linear_layers() -> None:
    torch.manual_seed(6)
    model = _Block()
    res = node_strength(model, input_shape=(3, 4))
    assert list(res) == ["qkv", "proj", "fc1", "fc2", "head"]
    for name in res:
        module = getattr(model, name)
        w, b = _np(module.weight), _np(module.bias)
        layer = res[name]
        assert layer.strength.shape == (w.shape[0],)
        np.testing.assert_allclose(layer.in_strength, w.sum(1))
        np.testing.assert_allclose(layer.input_out_strength, w.sum(0))
        if name != "fc1":  # attention, residual additions and token pooling break the chain
            assert layer.out_strength is None
            np.testing.assert_allclose(layer.strength, w.sum(1) + b, atol=1e-12)
            np.testing.assert_allclose(layer.strength_abs, np.abs(w).sum(1) + np.abs(b))
    w2 = _np(model.fc2.weight)
    fc1 = res["fc1"]
    assert fc1.consumers == ("fc2",)
    np.testing.assert_allclose(fc1.out_strength, w2.sum(0), atol=1e-12)
    np.testing.assert_allclose(
        fc1.strength, _np(model.fc1.weight).sum(1) + _np(model.fc1.bias) + w2.sum(0), atol=1e-12
    )


def test_tokens_merged_with_batch_axis() -> None:
    torch.manual_seed(8)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(4, 5), nn.Linear(5, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(torch.relu(self.fc1(x)).reshape(-1, 5))  # (N*T, 5)

    model = Net()
    res = node_strength(model, input_shape=(3, 4))
    assert res["fc1"].consumers == ("fc2",)
    np.testing.assert_allclose(res["fc1"].out_strength, _np(model.fc2.weight).sum(0), atol=1e-12)


def test_multihead_attention_projections() -> None:
    torch.manual_seed(7)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(4, 2, batch_first=True)
            self.head = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.attn(x, x, x, need_weights=False)[0].mean(1))

    model = Net()
    res = node_strength(model, input_shape=(3, 4))
    assert set(res) == {"attn.in_proj", "attn.out_proj", "head"}
    w_in, b_in = _np(model.attn.in_proj_weight), _np(model.attn.in_proj_bias)
    np.testing.assert_allclose(res["attn.in_proj"].strength, w_in.sum(1) + b_in, atol=1e-12)
    w_out = _np(model.attn.out_proj.weight)
    np.testing.assert_allclose(
        res["attn.out_proj"].strength, w_out.sum(1) + _np(model.attn.out_proj.bias), atol=1e-12
    )
    assert all(layer.out_strength is None for layer in res.values())


# ---------------------------------------------------------------------------- behaviour
def test_model_untouched_and_modes_restored(mlp: nn.Sequential) -> None:
    mlp.train()
    mlp[2].eval()
    before = {k: v.clone() for k, v in mlp.state_dict().items()}
    node_strength(mlp)
    assert mlp.training and mlp[0].training and not mlp[2].training
    for k, v in mlp.state_dict().items():
        assert torch.equal(v, before[k])


def test_errors() -> None:
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(ValueError, match="input_shape"):
        node_strength(conv)
    with pytest.raises(ValueError, match="input_shape"):
        node_strength(conv, input_shape=(1, 0, 4))
    with pytest.raises(ValueError, match="could not be fed"):
        node_strength(conv, input_shape=(1, 5, 5))  # 3x3 after the conv, not 2x2
    with pytest.raises(TypeError, match="model"):
        node_strength("not a model")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"no nn\.Linear"):
        node_strength(nn.Sequential(nn.ReLU()), input_shape=(3,))
    with pytest.raises(TypeError, match="result"):
        summarize_node_strength([])  # type: ignore[arg-type]
    assert isinstance(node_strength(conv, input_shape=(1, 4, 4))["0"], LayerStrength)
