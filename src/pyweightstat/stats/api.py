"""Public engine functions: validation here, the work in the compiled core ``pyweightstat._C``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from . import _input
from .histogram import Histogram, from_core
from .summary import Summary

_HIST_NONE, _HIST_UNIFORM, _HIST_LOG = 0, 1, 2


def _core():
    from .. import _C

    return _C


def _no_cuda_error(name: str) -> ValueError:
    return ValueError(
        f"{name} is a CUDA array but this build of pyweightstat has no CUDA support "
        "(pyweightstat.build_info()['cuda'] is False); move it to the CPU (e.g. .cpu()) or "
        "reinstall with PYWEIGHTSTAT_CUDA=ON on a machine with nvcc"
    )


def _split_devices(items: list[_input.Prepared]) -> str:
    """The one device of all inputs ("cpu" or "cuda"); clear errors otherwise."""
    cuda = [p for p in items if p.device == "cuda"]
    if cuda and not _core().build_info()["cuda"]:
        raise _no_cuda_error(cuda[0].name)
    if cuda and len(cuda) != len(items):
        cpu = next(p for p in items if p.device != "cuda")
        raise ValueError(
            f"{cuda[0].name} is on a CUDA device but {cpu.name} is on the CPU; "
            "all inputs of one call must be on the same device"
        )
    if len({p.device_id for p in cuda}) > 1:
        raise ValueError("all CUDA inputs of one call must be on the same GPU")
    return "cuda" if cuda else "cpu"


def _run(
    items: list[_input.Prepared],
    *,
    moments: bool,
    hist_kind: int,
    bins: int = 0,
    edges: list[np.ndarray] | None = None,
    mantissa_bits: int = 7,
) -> list[Summary]:
    """One fused pass over every input; returns one Summary per input."""
    device = _split_devices(items)
    if device == "cuda":
        from . import _cuda

        return _cuda.run(
            items,
            moments=moments,
            hist_kind=hist_kind,
            bins=bins,
            edges=edges,
            mantissa_bits=mantissa_bits,
        )
    caps = [_input.capsule(p) for p in items]
    names = [p.name for p in items]
    f, n, hists = _core().describe_cpu(
        caps, names, moments, hist_kind, bins, edges or [], mantissa_bits
    )
    uniform = hist_kind == _HIST_UNIFORM
    return [
        Summary(f[i], n[i], from_core(h, uniform, edges[i] if uniform else None, mantissa_bits))
        for i, h in enumerate(hists)
    ]


def _uniform_edges(
    items: list[_input.Prepared],
    bins: int,
    range_: tuple[float, float] | None,
) -> list[np.ndarray | None]:
    """Edges per input: from ``range`` when given, else from each input's finite min/max.

    For CUDA inputs without ``range`` this returns ``None`` per input: the device finds each
    input's min/max and computes np.linspace's exact edges itself, without a host synchronisation.
    """
    if range_ is not None:
        e = _input.uniform_edges(bins, *range_)
        return [e] * len(items)
    if items and all(p.device == "cuda" for p in items):
        return [None] * len(items)
    scans = _run(items, moments=False, hist_kind=_HIST_NONE)
    out = []
    for s in scans:
        lo, hi = (s.min, s.max) if s.count else (0.0, 1.0)
        out.append(_input.uniform_edges(bins, lo, hi))
    return out


def describe(
    x: Any,
    *,
    bins: int | None = None,
    range: tuple[float, float] | None = None,
    mantissa_bits: int | None = None,
) -> Summary:
    """Moments, extremes, norms and special-value counts of ``x`` in one pass.

    Parameters
    ----------
    x : array-like
        A ``torch.Tensor``, ``numpy.ndarray`` or any DLPack array (float16, bfloat16, float32,
        float64; CPU, or CUDA when the build has CUDA; any shape and strides; empty is fine).
    bins : int, optional
        Also fill a uniform :class:`Histogram` with this many bins in the same pass
        (``Summary.hist``). Without ``range`` the data's finite min/max are found first by a
        cheaper scan.
    range : (float, float), optional
        Histogram range, NumPy semantics (last bin closed).
    mantissa_bits : int, optional
        Instead of uniform bins, fill a universal log-linear histogram with this many mantissa
        bits (see :func:`log_histogram`). Cannot be combined with ``bins``.

    Returns
    -------
    Summary

    Examples
    --------
    >>> import numpy as np, pyweightstat as pws
    >>> s = pws.describe(np.array([1.0, 2.0, 3.0, np.nan]))
    >>> s.count, s.mean, s.nan_count
    (3, 2.0, 1)
    """
    return describe_many([x], bins=bins, range=range, mantissa_bits=mantissa_bits, _name="x")[0]


def describe_many(
    xs: Iterable[Any],
    *,
    total: bool = False,
    bins: int | None = None,
    range: tuple[float, float] | None = None,
    mantissa_bits: int | None = None,
    _name: str = "xs",
) -> list[Summary] | tuple[list[Summary], Summary]:
    """:func:`describe` for many tensors in one parallel pass (one launch on the GPU).

    Parameters
    ----------
    xs : iterable of array-like
        The inputs, e.g. ``model.parameters()``; all on the CPU or all on one CUDA device.
    total : bool
        Also return the Summary of all inputs together (their merged state).
    bins, range, mantissa_bits
        As for :func:`describe`; with ``bins`` and no ``range`` each input gets its own range.

    Returns
    -------
    list of Summary, or (list of Summary, Summary) when ``total`` is true.
    """
    items = (
        [_input.prepare(next(iter(xs)), _name)] if _name == "x" else _input.prepare_many(xs, _name)
    )
    if bins is not None and mantissa_bits is not None:
        raise ValueError("pass either bins (uniform histogram) or mantissa_bits (log), not both")
    if range is not None and bins is None:
        raise ValueError("range needs bins")
    if bins is not None:
        nb = _input.check_bins(bins)
        edges = _uniform_edges(items, nb, _input.check_range(range))
        res = _run(items, moments=True, hist_kind=_HIST_UNIFORM, bins=nb, edges=edges)
    elif mantissa_bits is not None:
        m = _input.check_mantissa_bits(mantissa_bits)
        res = _run(items, moments=True, hist_kind=_HIST_LOG, mantissa_bits=m)
    else:
        res = _run(items, moments=True, hist_kind=_HIST_NONE)
    if not total:
        return res
    if res and res[0].on_host is False:
        from . import _cuda

        return res, _cuda.merge_total(res)
    return res, merge_all(res, with_hist=bins is None or range is not None)


def merge_all(summaries: list[Summary], *, with_hist: bool = True) -> Summary:
    """Merge Summaries in order (histograms too when they share edges and ``with_hist``)."""
    if not summaries:
        return Summary([np.nan, 0, 0, 0, np.inf, -np.inf, 0, 0], [0, 0, 0, 0, 0])
    acc = summaries[0]
    if not with_hist and acc.hist is not None:
        acc = Summary(acc._state()[0], acc._state()[1])
    for s in summaries[1:]:
        if not with_hist and s.hist is not None:
            s = Summary(s._state()[0], s._state()[1])
        acc = acc.merge(s)
    return acc


def histogram(
    x: Any,
    bins: int = 256,
    range: tuple[float, float] | None = None,
) -> Histogram:
    """Uniform histogram with NumPy semantics and explicit under/overflow and NaN counters.

    Bin ``i`` holds ``edges[i] <= v < edges[i+1]`` (the last bin also holds ``v == edges[-1]``),
    with ``edges = np.linspace(lo, hi, bins + 1)`` in float64: the counts equal
    ``np.histogram(x.astype(np.float64), bins, range)``. Values below/above the range (and
    -/+Inf) are counted in ``underflow``/``overflow``, NaNs in ``nan_count``.

    Parameters
    ----------
    x : array-like
        Input (see :func:`describe`).
    bins : int
        Number of bins (>= 1).
    range : (float, float), optional
        ``(lo, hi)``, finite, ``lo <= hi`` (``lo == hi`` widens by 0.5 each side, as NumPy).
        ``None`` uses the finite min/max of the data.
    """
    items = [_input.prepare(x, "x")]
    nb = _input.check_bins(bins)
    edges = _uniform_edges(items, nb, _input.check_range(range))
    return _run(items, moments=False, hist_kind=_HIST_UNIFORM, bins=nb, edges=edges)[0].hist


def log_histogram(x: Any, *, mantissa_bits: int = 7) -> Histogram:
    """Range-free histogram on the universal log-linear buckets.

    Each value is rounded to float32 (exact for float16/bfloat16/float32 inputs) and counted in
    the bucket given by its sign, exponent and top ``mantissa_bits`` mantissa bits; exact zeros and
    subnormals share the centre bucket ``[-2**-126, 2**-126]``; -/+Inf go to underflow/overflow;
    NaN to ``nan_count``. Bucket edges are the same for every histogram with the same
    ``mantissa_bits``, so any two merge by adding counts and compare directly.

    Quantile error bound: :meth:`Histogram.quantile` is off by at most one bucket width, i.e. a
    relative error of at most ``2**-mantissa_bits`` (0.78 % at the default 7 bits; 1.6 % at 6).

    Parameters
    ----------
    x : array-like
        Input (see :func:`describe`).
    mantissa_bits : int
        Mantissa bits per bucket, 0..10 (each bucket spans a relative width of
        ``2**-mantissa_bits``).
    """
    items = [_input.prepare(x, "x")]
    m = _input.check_mantissa_bits(mantissa_bits)
    return _run(items, moments=False, hist_kind=_HIST_LOG, mantissa_bits=m)[0].hist


def quantile(x: Any, q: Any, *, mantissa_bits: int = 7) -> float | np.ndarray:
    """Quantiles of ``x`` of any size (no 2**24 limit), through the universal log histogram.

    The relative error of each result is at most ``2**-mantissa_bits`` (0.78 % by default) for
    values of magnitude >= 2**-126 (see :meth:`Histogram.quantile`). NaN and +/-Inf are ignored.

    Parameters
    ----------
    x : array-like
        Input (see :func:`describe`).
    q : float or array-like
        Quantile(s) in ``[0, 1]``.
    mantissa_bits : int
        Precision of the buckets (0..10).
    """
    qa = np.asarray(q, dtype=np.float64)
    if np.any(~np.isfinite(qa)) or np.any((qa < 0) | (qa > 1)):
        raise ValueError(f"q must be in [0, 1]; got {q!r}")
    return log_histogram(x, mantissa_bits=mantissa_bits).quantile(qa if qa.ndim else float(qa))


def _histogram_same_layout(x: Any, like: Histogram) -> Histogram:
    """Histogram of ``x`` on the bins of ``like`` (used by :meth:`Histogram.update`)."""
    if like.kind == "log":
        return log_histogram(x, mantissa_bits=like.mantissa_bits)
    items = [_input.prepare(x, "x")]
    return _run(items, moments=False, hist_kind=_HIST_UNIFORM, bins=like.bins, edges=[like.edges])[
        0
    ].hist
