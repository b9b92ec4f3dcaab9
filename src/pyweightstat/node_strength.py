"""Node strength: the network-science view of a trained network's weights.

Definition (La Malfa et al. 2021, see SPEC.md): a network is a weighted directed graph whose
nodes are the units and whose edges are the learnable weights.  For a unit ``j`` produced by
layer ``l``::

    s_j = sum_i W(l)_ji  +  b(l)_j  +  sum_k W(l+1)_kj
          in-strength      bias       out-strength

and the *fluctuation* of a layer is the (population) standard deviation of the strengths of its
units.  The *absolute* variant uses ``|W|`` and ``|b|`` everywhere.

How units are chosen (our documented decisions)
-----------------------------------------------
* **Layers.**  Every ``nn.Linear`` and ``nn.Conv2d`` is a bipartite layer from its input units
  to its output units.  An ``nn.MultiheadAttention`` contributes its input projection (one
  ``in_proj`` layer, or ``q_proj``/``k_proj``/``v_proj`` when the key/value sizes differ) and
  its ``out_proj``.  Other parametrised modules (normalisation, embeddings, ``Conv1d``/``Conv3d``)
  are not graph layers and are skipped.  A module called several times is described at its
  first call.
* **Reported units.**  Each entry of the result describes the *output units* of one layer: its
  in-strength, its bias and, when the next layer consumes those units, their out-strength.
  The output units of the last layer have no out-strength (``out_strength is None``): their
  strength is in-strength + bias.  The units of the network input have only an out-strength;
  it is reported as ``input_out_strength`` of the first layer (every layer also carries the
  out-strength of its own input units towards it, i.e. the column sums of its weights, which is
  the bipartite view used for transformers).
* **Linear layers** have one unit per feature.  When a Linear is applied to token sequences
  ``(N, T, F)`` its units are still the ``F`` features (the weights are shared across tokens).
* **Convolutions are unrolled over pixels**: an output unit is ``(c_out, y, x)``.  As SPEC.md
  states, its in-strength is the *full* kernel sum of channel ``c_out`` plus the bias (the same
  for every pixel of a channel), and the out-strength of an input pixel ``(c_in, y, x)`` sums
  every kernel weight that touches it, respecting stride, zero padding, dilation and groups
  (padding positions are not units; a ``padding_mode`` other than zeros is treated as zeros).
  A patch-embedding convolution (stride = kernel) therefore gives the Linear-over-patches
  strengths replicated over patches, with the same fluctuation.
* **Chaining.**  The out-strength of layer ``l``'s units comes from the layers that consume
  them.  A dummy forward pass (one zero input of ``input_shape``, in eval mode) is traced with
  hooks, and a consumer's input is followed back through the autograd graph.  The chain passes
  through element-wise activations, dropout, batch normalisation (its affine map is ignored),
  views/flatten/reshape and 2-D pooling, and stops at anything else (residual additions,
  concatenation, LayerNorm, transposes, attention, ...).  Through pooling, the pool is treated as
  a fixed routing: a max-pool sends every pixel of a window to the pooled unit with weight 1
  (the pooled unit's out-strength is given to every pixel of its window, and a pixel in several
  windows sums them); an average pool uses its real linear weights ``1/divisor``.  After a
  flatten, the next Linear's columns map back to the ``(c, y, x)`` positions they read.  A unit
  consumed by several layers sums their contributions.
* **Transformers.**  Attention scores are not learnable edges, so nothing chains across
  attention or residual connections: the QKV and attention output projections, the patch
  embedding and the head are bipartite layers (in-strength + bias per output unit, column sums
  per input unit), while the MLP's ``fc1 -> activation -> fc2`` chain is a genuine hidden layer
  and ``fc1``'s units get ``fc2``'s column sums as out-strength.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LayerStrength", "node_strength", "summarize_node_strength"]

#: Autograd nodes the strength chain passes through unchanged (element-wise, one data input).
_ELEMENTWISE_NODES = frozenset(
    {
        "ReluBackward0",
        "GeluBackward0",
        "TanhBackward0",
        "SigmoidBackward0",
        "SiluBackward0",
        "LeakyReluBackward0",
        "EluBackward0",
        "HardtanhBackward0",
        "SoftplusBackward0",
        "MishBackward0",
        "HardswishBackward0",
        "HardsigmoidBackward0",
        "CloneBackward0",
        "NativeDropoutBackward0",
        "NativeBatchNormBackward0",
        "CudnnBatchNormBackward0",
    }
)
#: Autograd nodes that only reshape (element order kept); their input shape is saved.
_VIEW_NODES = frozenset({"ViewBackward0", "UnsafeViewBackward0", "ReshapeAliasBackward0"})
_POOL_NODES = frozenset(
    {
        "MaxPool2DWithIndicesBackward0",
        "AvgPool2DBackward0",
        "AdaptiveAvgPool2DBackward0",
        "AdaptiveMaxPool2DBackward0",
    }
)


@dataclass(frozen=True)
class LayerStrength:
    """Node strengths of the output units of one layer.

    Arrays have one entry per unit: shape ``(out_features,)`` for a Linear layer and
    ``(C_out, H_out, W_out)`` for an unrolled convolution.

    Attributes
    ----------
    name : str
        Module name from ``model.named_modules()`` (``"<mha>.in_proj"`` etc. for attention).
    kind : str
        ``"linear"`` or ``"conv"``.
    strength, strength_abs : numpy.ndarray
        Total strength ``in_strength + bias + out_strength`` (out-strength counted as 0 where
        there is none), signed and with absolute weights.
    in_strength, in_strength_abs : numpy.ndarray
        Sum of the weights entering each unit (bias excluded).
    bias, bias_abs : numpy.ndarray
        The unit's bias (zeros when the layer has none) and its absolute value.
    out_strength, out_strength_abs : numpy.ndarray or None
        Sum of the weights leaving each unit towards the layers that consume it; ``None`` when
        no learnable layer consumes the units directly (output layer, or the chain is broken by
        a residual connection, attention, normalisation, ...).
    input_out_strength, input_out_strength_abs : numpy.ndarray
        Out-strength of this layer's *input* units towards this layer (column sums for a Linear
        layer, ``(C_in, H_in, W_in)`` per-pixel sums for a convolution).  For the first layer
        these are the strengths of the network's input units.  A Linear layer applied to
        token sequences reports one value per feature.
    fluctuation, fluctuation_abs : float
        Population standard deviation of ``strength`` / ``strength_abs``.
    consumers : tuple of str
        Names of the layers whose weights make up ``out_strength``.
    """

    name: str
    kind: str
    strength: np.ndarray
    strength_abs: np.ndarray
    in_strength: np.ndarray
    in_strength_abs: np.ndarray
    bias: np.ndarray
    bias_abs: np.ndarray
    out_strength: np.ndarray | None
    out_strength_abs: np.ndarray | None
    input_out_strength: np.ndarray
    input_out_strength_abs: np.ndarray
    fluctuation: float
    fluctuation_abs: float
    consumers: tuple[str, ...] = ()


@dataclass
class _Layer:
    """One bipartite layer found in the model (internal)."""

    name: str
    kind: str
    weight: np.ndarray  # float64; (out, in) or (C_out, C_in/groups, kh, kw)
    bias: np.ndarray | None
    conv: dict[str, Any] | None = None  # stride, padding (pad before), dilation, groups
    in_shape: tuple[int, ...] | None = None  # input shape in the trace (batch of 1 included)
    out_shape: tuple[int, ...] | None = None  # output shape in the trace (batch included)
    out_node: Any = None  # autograd node of the output
    in_tensor: Any = None  # input tensor (for walking back)
    chainable: bool = True


def _as_float64(t: torch.Tensor | None) -> np.ndarray | None:
    if t is None:
        return None
    return t.detach().to("cpu", torch.float64).numpy()


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    vals = tuple(int(x) for x in v)
    return (vals[0], vals[0]) if len(vals) == 1 else (vals[0], vals[1])


def _conv_padding(module: nn.Conv2d) -> tuple[int, int]:
    """Zero padding before the first pixel (``'same'`` may pad asymmetrically)."""
    if isinstance(module.padding, str):
        if module.padding == "valid":
            return (0, 0)
        kh, kw = module.kernel_size
        dh, dw = module.dilation
        return ((dh * (kh - 1)) // 2, (dw * (kw - 1)) // 2)
    return _pair(module.padding)


def _scatter_windows(
    values: np.ndarray,
    in_hw: tuple[int, int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    offset_weights: np.ndarray | None = None,
) -> np.ndarray:
    """Send ``values[c, oy, ox]`` to every input pixel read by output position ``(oy, ox)``.

    ``out[c, iy, ix] = sum over (oy, ox, ky, kx) with iy = oy*sy - py + ky*dy (same for x),
    inside the image, of values[c, oy, ox] * offset_weights[c, ky, kx]``.  ``values`` may have a
    leading axis of length 1 (broadcast over channels).  Positions in the padding are dropped.
    """
    (h, w), (kh, kw), (sy, sx), (py, px), (dy, dx) = in_hw, kernel, stride, padding, dilation
    ho, wo = values.shape[-2:]
    n_ch = values.shape[0] if offset_weights is None else offset_weights.shape[0]
    canvas_h = max(py + h, (ho - 1) * sy + (kh - 1) * dy + 1)
    canvas_w = max(px + w, (wo - 1) * sx + (kw - 1) * dx + 1)
    canvas = np.zeros((n_ch, canvas_h, canvas_w), dtype=np.float64)
    for ky in range(kh):
        for kx in range(kw):
            y0, x0 = ky * dy, kx * dx
            block = (
                values if offset_weights is None else values * offset_weights[:, ky, kx, None, None]
            )
            canvas[:, y0 : y0 + (ho - 1) * sy + 1 : sy, x0 : x0 + (wo - 1) * sx + 1 : sx] += block
    return canvas[:, py : py + h, px : px + w]


def _adaptive_bounds(n_in: int, n_out: int) -> list[tuple[int, int]]:
    """Windows of PyTorch's adaptive pooling: ``[floor(i n/m), ceil((i+1) n/m))``."""
    return [((i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)) for i in range(n_out)]


def _route_through_pool(node: Any, s_out: np.ndarray, in_shape: tuple[int, ...]) -> np.ndarray:
    """Map strengths of pooled units ``(..., Ho, Wo)`` back to the pool's input ``in_shape``."""
    kind = type(node).__name__
    h, w = in_shape[-2:]
    c = int(np.prod(in_shape[:-2]))  # batch of 1 and channels
    s_out = s_out.reshape(c, *s_out.shape[-2:])
    return _route_pool_planes(node, kind, s_out, c, h, w).reshape(in_shape)


def _route_pool_planes(
    node: Any, kind: str, s_out: np.ndarray, c: int, h: int, w: int
) -> np.ndarray:
    """:func:`_route_through_pool` on ``(C, Ho, Wo)`` planes."""
    if kind == "MaxPool2DWithIndicesBackward0":
        return _scatter_windows(
            s_out,
            (h, w),
            _pair(node._saved_kernel_size),
            _pair(node._saved_stride or node._saved_kernel_size),  # functional default: kernel
            _pair(node._saved_padding),
            _pair(node._saved_dilation),
        )
    if kind == "AvgPool2DBackward0":
        # the exact transpose of the (linear) average pool: autograd of the same call
        x = torch.zeros((1, c, h, w), dtype=torch.float64, requires_grad=True)
        y = F.avg_pool2d(
            x,
            node._saved_kernel_size,
            node._saved_stride or node._saved_kernel_size,
            node._saved_padding,
            node._saved_ceil_mode,
            node._saved_count_include_pad,
            node._saved_divisor_override,
        )
        (g,) = torch.autograd.grad(y, x, torch.from_numpy(np.ascontiguousarray(s_out))[None])
        return g[0].numpy()
    # adaptive pools: variable windows
    ho, wo = s_out.shape[-2:]
    out = np.zeros((c, h, w), dtype=np.float64)
    for oy, (y0, y1) in enumerate(_adaptive_bounds(h, ho)):
        for ox, (x0, x1) in enumerate(_adaptive_bounds(w, wo)):
            weight = 1.0 / ((y1 - y0) * (x1 - x0)) if kind == "AdaptiveAvgPool2DBackward0" else 1.0
            out[:, y0:y1, x0:x1] += weight * s_out[:, oy, ox, None, None]
    return out


def _input_out_strength(layer: _Layer, absolute: bool) -> np.ndarray:
    """Out-strength of ``layer``'s input units towards ``layer``.

    Linear: the column sums broadcast to the traced input shape (or ``(in_features,)``);
    convolution: ``(C_in, H_in, W_in)`` per-pixel sums.
    """
    wt = np.abs(layer.weight) if absolute else layer.weight
    if layer.kind == "linear":
        cols = wt.sum(axis=0)  # (in_features,)
        if layer.in_shape is None:
            return cols
        return np.broadcast_to(cols, layer.in_shape).copy()  # token axes share the features
    assert layer.conv is not None
    groups = layer.conv["groups"]
    c_out, c_in_g, kh, kw = wt.shape
    per_group = wt.reshape(groups, c_out // groups, c_in_g, kh, kw).sum(axis=1)
    kernel_sums = per_group.reshape(groups * c_in_g, kh, kw)  # (C_in, kh, kw)
    if layer.in_shape is None or layer.out_shape is None:  # never called: per input channel
        return kernel_sums.sum(axis=(1, 2))
    ones = np.ones((1, *layer.out_shape[-2:]), dtype=np.float64)
    return _scatter_windows(
        ones,
        layer.in_shape[-2:],
        (kh, kw),
        layer.conv["stride"],
        layer.conv["padding"],
        layer.conv["dilation"],
        offset_weights=kernel_sums,
    )


def _unit_input_out_strength(layer: _Layer, absolute: bool) -> np.ndarray:
    """Out-strength of the input units as reported: per feature (Linear) or per pixel (conv)."""
    if layer.kind == "linear":
        return (np.abs(layer.weight) if absolute else layer.weight).sum(axis=0)
    return _input_out_strength(layer, absolute)


def _walk_back(consumer: _Layer, producers: dict[int, _Layer]) -> tuple[_Layer, list] | None:
    """Follow ``consumer``'s input back to a producing layer through pass-through nodes.

    Returns the producer and the nodes crossed (from the consumer backwards), or ``None``.
    """
    node = consumer.in_tensor.grad_fn if consumer.in_tensor is not None else None
    path: list[Any] = []
    while node is not None:
        if id(node) in producers:
            return producers[id(node)], path
        kind = type(node).__name__
        if kind not in _ELEMENTWISE_NODES and kind not in _VIEW_NODES and kind not in _POOL_NODES:
            return None
        path.append(node)
        node = node.next_functions[0][0] if node.next_functions else None
    return None


def _route_back(
    path: list, consumer: _Layer, absolute: bool, producer: _Layer
) -> np.ndarray | None:
    """Carry the out-strength of ``consumer``'s input units back to ``producer``'s units.

    Arrays keep the full traced shape (batch of 1 included) until the producer is reached;
    ``None`` if the shapes do not line up (the chain is then treated as broken).
    """
    assert consumer.in_shape is not None and producer.out_shape is not None
    try:
        s = _input_out_strength(consumer, absolute).reshape(consumer.in_shape)
        for node in path:
            kind = type(node).__name__
            if kind in _VIEW_NODES:
                s = s.reshape(tuple(int(v) for v in node._saved_self_sym_sizes))
            elif kind in _POOL_NODES:
                shape = tuple(node._saved_self.shape)
                if len(shape) < 3:
                    return None
                s = _route_through_pool(node, s, shape)
        s = s.reshape(producer.out_shape)
    except ValueError:  # e.g. a view that merges the batch axis with others
        return None
    if producer.kind == "linear":
        return s.reshape(-1, producer.weight.shape[0]).mean(axis=0)  # identical over tokens
    return s.reshape(producer.out_shape[1:])


def _collect_layers(model: nn.Module) -> tuple[list[_Layer], dict[nn.Module, _Layer]]:
    layers: list[_Layer] = []
    by_module: dict[nn.Module, _Layer] = {}
    inside_mha: set[int] = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            prefix = f"{name}." if name else ""
            if module._qkv_same_embed_dim:
                projections = [("in_proj", module.in_proj_weight, module.in_proj_bias)]
            else:
                e = module.embed_dim
                b = module.in_proj_bias
                projections = [
                    (f"{p}_proj", getattr(module, f"{p}_proj_weight"), None)
                    for p in ("q", "k", "v")
                ]
                if b is not None:
                    projections = [
                        (n, wt, b[i * e : (i + 1) * e]) for i, (n, wt, _) in enumerate(projections)
                    ]
            for pname, wt, b in projections:
                layers.append(
                    _Layer(
                        prefix + pname, "linear", _as_float64(wt), _as_float64(b), chainable=False
                    )
                )
            out = module.out_proj
            layers.append(
                _Layer(
                    prefix + "out_proj",
                    "linear",
                    _as_float64(out.weight),
                    _as_float64(out.bias),
                    chainable=False,
                )
            )
            inside_mha.add(id(out))
        elif isinstance(module, nn.Linear) and id(module) not in inside_mha:
            layer = _Layer(name, "linear", _as_float64(module.weight), _as_float64(module.bias))
            layers.append(layer)
            by_module[module] = layer
        elif isinstance(module, nn.Conv2d):
            conv = {
                "stride": _pair(module.stride),
                "padding": _conv_padding(module),
                "dilation": _pair(module.dilation),
                "groups": int(module.groups),
            }
            layer = _Layer(name, "conv", _as_float64(module.weight), _as_float64(module.bias), conv)
            layers.append(layer)
            by_module[module] = layer
    return layers, by_module


def _trace(
    model: nn.Module, by_module: dict[nn.Module, _Layer], input_shape: tuple[int, ...]
) -> list[_Layer]:
    """Run one dummy forward pass, recording shapes, autograd nodes and call order."""
    order: list[_Layer] = []

    def hook(module: nn.Module, args: tuple, output: Any) -> None:
        layer = by_module[module]
        if layer.in_tensor is not None or not args or not isinstance(output, torch.Tensor):
            return  # described at its first call only
        layer.in_tensor = args[0]
        layer.in_shape = tuple(args[0].shape)
        layer.out_shape = tuple(output.shape)
        layer.out_node = output.grad_fn
        order.append(layer)

    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    modes = {m: m.training for m in model.modules()}
    handles = [m.register_forward_hook(hook) for m in by_module]
    try:
        model.eval()
        x = torch.zeros((1, *input_shape), device=device, dtype=dtype, requires_grad=True)
        with torch.enable_grad():
            model(x)
    except Exception as exc:  # the model rejected the dummy input
        raise ValueError(
            f"input_shape={tuple(input_shape)} could not be fed to the model "
            f"(dummy forward pass failed: {exc})"
        ) from exc
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    return order


def node_strength(
    model: nn.Module, input_shape: Sequence[int] | None = None
) -> dict[str, LayerStrength]:
    """Per-unit node strengths and per-layer fluctuation of a network.

    See the module docstring for the exact definitions and how convolutions, pooling,
    flattening and transformer blocks are treated.

    Parameters
    ----------
    model : torch.nn.Module
        The network (any device; it is not modified, and its train/eval modes are restored).
    input_shape : sequence of int, optional
        Per-sample shape of the model input, e.g. ``(1, 28, 28)``; used for one dummy forward
        pass that finds the spatial sizes of convolutions and which layer feeds which.  It may
        be omitted when the model's first layer is an ``nn.Linear`` (then ``(in_features,)`` is
        used).

    Returns
    -------
    dict of str to LayerStrength
        One entry per layer, in forward order (layers never called in the dummy pass, such as
        an attention ``out_proj``, follow in registration order as bipartite layers).

    Raises
    ------
    TypeError
        If ``model`` is not an ``nn.Module``.
    ValueError
        If ``input_shape`` is invalid, missing for a model that needs it, or rejected by the
        model, or if the model has no Linear/Conv2d layer.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    layers, by_module = _collect_layers(model)
    if not layers:
        raise ValueError("model has no nn.Linear, nn.Conv2d or nn.MultiheadAttention layer")
    if input_shape is None:
        first = next(iter(by_module), None)
        if not isinstance(first, nn.Linear):
            raise ValueError(
                "input_shape is required (e.g. (1, 28, 28)) unless the model's first layer is "
                "an nn.Linear"
            )
        input_shape = (first.in_features,)
    shape = tuple(input_shape)
    if not shape or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in shape):
        raise ValueError(f"input_shape must be a sequence of positive ints, got {input_shape!r}")

    order = _trace(model, by_module, shape)
    called = {id(layer) for layer in order}
    ordered = order + [layer for layer in layers if id(layer) not in called]

    producers = {id(layer.out_node): layer for layer in order if layer.chainable and layer.out_node}
    out_s: dict[int, list[np.ndarray]] = {}
    out_a: dict[int, list[np.ndarray]] = {}
    consumers: dict[int, list[str]] = {}
    for consumer in order:
        if not consumer.chainable:
            continue
        found = _walk_back(consumer, producers)
        if found is None:
            continue
        producer, path = found
        signed = _route_back(path, consumer, False, producer)
        absolute = _route_back(path, consumer, True, producer)
        if signed is None or absolute is None:
            continue
        out_s.setdefault(id(producer), []).append(signed)
        out_a.setdefault(id(producer), []).append(absolute)
        consumers.setdefault(id(producer), []).append(consumer.name)

    result: dict[str, LayerStrength] = {}
    for layer in ordered:
        result[layer.name] = _finish(
            layer, out_s.get(id(layer)), out_a.get(id(layer)), tuple(consumers.get(id(layer), ()))
        )
    for layer in layers:  # drop references to the traced graph
        layer.in_tensor = layer.out_node = None
    return result


def _finish(
    layer: _Layer,
    outs: list[np.ndarray] | None,
    outs_abs: list[np.ndarray] | None,
    consumers: tuple[str, ...],
) -> LayerStrength:
    wt = layer.weight
    n_out = wt.shape[0]
    axes = tuple(range(1, wt.ndim))
    in_s, in_a = wt.sum(axis=axes), np.abs(wt).sum(axis=axes)
    bias = layer.bias if layer.bias is not None else np.zeros(n_out)
    bias_abs = np.abs(bias)
    if layer.kind == "conv" and layer.out_shape is not None:
        spatial = layer.out_shape[1:]

        def expand(v: np.ndarray) -> np.ndarray:
            return np.broadcast_to(v[:, None, None], spatial).copy()

        in_s, in_a, bias, bias_abs = expand(in_s), expand(in_a), expand(bias), expand(bias_abs)
    out_s = np.sum(outs, axis=0) if outs else None
    out_a = np.sum(outs_abs, axis=0) if outs_abs else None
    strength = in_s + bias + (out_s if out_s is not None else 0.0)
    strength_abs = in_a + bias_abs + (out_a if out_a is not None else 0.0)
    return LayerStrength(
        name=layer.name,
        kind=layer.kind,
        strength=strength,
        strength_abs=strength_abs,
        in_strength=in_s,
        in_strength_abs=in_a,
        bias=bias,
        bias_abs=bias_abs,
        out_strength=out_s,
        out_strength_abs=out_a,
        input_out_strength=_unit_input_out_strength(layer, False),
        input_out_strength_abs=_unit_input_out_strength(layer, True),
        fluctuation=float(np.std(strength)),
        fluctuation_abs=float(np.std(strength_abs)),
        consumers=consumers,
    )


def summarize_node_strength(result: dict[str, LayerStrength]) -> dict[str, float]:
    """Flatten a :func:`node_strength` result into scalar per-layer values for the study.

    Parameters
    ----------
    result : dict of str to LayerStrength
        The output of :func:`node_strength`.

    Returns
    -------
    dict of str to float
        For every layer ``name``: ``"{name}/fluctuation"``, ``"{name}/fluctuation_abs"`` (std of
        the signed / absolute strengths) and ``"{name}/mean"``, ``"{name}/mean_abs"`` (their
        means), in the order of ``result``.
    """
    if not isinstance(result, dict):
        raise TypeError(f"result must be the dict returned by node_strength, got {type(result)}")
    out: dict[str, float] = {}
    for name, layer in result.items():
        if not isinstance(layer, LayerStrength):
            raise TypeError(f"result[{name!r}] is not a LayerStrength")
        out[f"{name}/fluctuation"] = layer.fluctuation
        out[f"{name}/fluctuation_abs"] = layer.fluctuation_abs
        out[f"{name}/mean"] = float(np.mean(layer.strength))
        out[f"{name}/mean_abs"] = float(np.mean(layer.strength_abs))
    return out
