"""Readable float64 NumPy reference of every statistic the engine computes.

This module is both the specification and the test oracle of the compiled engine
(``pyweightstat._C``).  Every function works in float64 with plain NumPy code, written for
clarity rather than speed, and shares no code with the C++ kernels: the log-linear buckets,
for example, are found with :func:`math.frexp`/:func:`numpy.frexp` and comparisons, never by
reinterpreting float bits.

Conventions (these *are* the engine's semantics):

* Inputs are converted exactly to float64 first (float16, bfloat16 and float32 are exactly
  representable in float64).  PyTorch tensors of any float dtype, NumPy arrays of any byte
  order and array-likes are accepted.
* **Moments** (:func:`ref_moments`) use the finite values only.  NaN, +Inf and -Inf are counted
  in ``nan_count``, ``posinf_count`` and ``neginf_count`` and are excluded from everything else,
  including ``count``, ``min``, ``max`` and the norms.  ``count`` is the number of finite
  values.  ``var`` is the population variance (``ddof=0``); ``skew`` and ``kurtosis`` are the
  biased Fisher estimators of :func:`scipy.stats.skew` / :func:`scipy.stats.kurtosis` with
  their default arguments, ``kurtosis`` being the *excess* kurtosis.
* Empty input (no finite value) gives ``count == 0``, NaN ``mean, var, std, skew, kurtosis,
  min, max, linf`` (``linf`` is a maximum, like ``max``), and ``l1 == l2 == 0.0`` (sums).
* When every finite value is equal (a constant, or a single element), ``var == std == 0`` and
  ``skew`` and ``kurtosis`` are NaN: they are 0/0.  This matches SciPy, which also returns NaN
  for constant input (with a precision-loss warning).  The engine must produce exactly
  ``var == 0`` there, which the usual Welford/Chan updates do because every deviation is 0.
* **Uniform histograms** (:func:`ref_histogram`) follow :func:`numpy.histogram` on float64
  values: ``edges = np.linspace(lo, hi, bins + 1)`` in float64, bin ``i`` is
  ``[edges[i], edges[i+1])`` except the last, which is closed.  Values below ``lo`` (including
  -Inf) go to ``underflow``, values above ``hi`` (including +Inf) to ``overflow``, NaN to
  ``nan_count``.  ``range=None`` uses the finite min/max of the data; like NumPy, an empty
  range ``lo == hi`` is widened to ``[lo - 0.5, hi + 0.5]`` and data without finite values uses
  ``[0, 1]``.
* **Universal log-linear histograms** (:func:`ref_log_histogram`), see docs/architecture.md:
  each value is rounded to float32 (round to nearest even; values beyond the float32 range
  become ±Inf).  With ``C = 254 * 2**m`` there are ``2*C + 1`` buckets in ascending value
  order: ``C`` negative normal buckets, the centre bucket ``C`` = ``[-2**-126, 2**-126]``
  holding exact zeros and subnormals, and ``C`` positive normal buckets.  A positive normal
  float32 ``v = 2**(e-127) * (1 + f)`` with ``0 <= f < 1`` lies in bucket
  ``C + 1 + (e - 1) * 2**m + floor(f * 2**m)`` covering
  ``[2**(e-127) (1 + t/2**m), 2**(e-127) (1 + (t+1)/2**m))``; a negative value ``-v`` lies in
  the mirror bucket ``C - 1 - ((e - 1) * 2**m + t)``, covering ``(-upper, -lower]``.
* **Quantiles** from a log histogram have relative error at most ``2**-m`` whenever the true
  quantile and the estimate fall in the same bucket (see :func:`ref_quantile_bound`).
* **Distances** (:func:`ref_distance`) are computed on the in-range counts normalised to
  probabilities (underflow, overflow and NaN counters are ignored); if either histogram has no
  in-range count the distance is NaN.  ``js`` is the Jensen–Shannon *divergence* in base 2
  (in ``[0, 1]``; the square of :func:`scipy.spatial.distance.jensenshannon` with ``base=2``),
  ``hellinger`` is ``sqrt(1 - sum(sqrt(p q)))`` (in ``[0, 1]``; computed as the
  equal ``sqrt(sum((sqrt(p) - sqrt(q))**2) / 2)``, which has no cancellation for close
  distributions: ``1 - sum`` loses everything below ~1e-8), ``tv`` is ``sum(|p - q|) / 2``,
  ``ks`` is the largest absolute difference of the two CDFs at the bin edges, and
  ``wasserstein`` is the Wasserstein-1 distance between the two distributions with all mass of
  a bin at the bin centre (equal to ``scipy.stats.wasserstein_distance(centres, centres, p,
  q)``).  CDFs are formed from cumulative *counts*, so they are exactly 0 before and exactly 1
  after the data: on a wide log-grid window, empty buckets up to 1e38 wide contribute nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "LOG_NAN",
    "METRICS",
    "SUMMARY_FIELDS",
    "ref_distance",
    "ref_histogram",
    "ref_histogram_edges",
    "ref_log_bucket_index",
    "ref_log_centre_index",
    "ref_log_edges",
    "ref_log_histogram",
    "ref_log_num_buckets",
    "ref_moments",
    "ref_quantile_bound",
    "ref_range",
    "to_float64",
]

#: Field names of :class:`pyweightstat.Summary` (and keys of :func:`ref_moments`).
SUMMARY_FIELDS: tuple[str, ...] = (
    "count",
    "mean",
    "var",
    "std",
    "skew",
    "kurtosis",
    "min",
    "max",
    "l1",
    "l2",
    "linf",
    "nan_count",
    "posinf_count",
    "neginf_count",
    "zero_count",
)

#: Metric names accepted by :func:`ref_distance` (and by the engine).
METRICS: tuple[str, ...] = ("wasserstein", "ks", "js", "hellinger", "tv")

#: Sentinel returned by :func:`ref_log_bucket_index` for NaN values.
LOG_NAN = -2

_MIN_NORMAL = 2.0**-126  # smallest positive normal float32
_NUM_EXPONENTS = 254  # biased exponents 1..254 of normal float32 values
_MAX_MANTISSA_BITS = 10


# ----------------------------------------------------------------------------------------------
# input conversion
# ----------------------------------------------------------------------------------------------
def to_float64(x: Any) -> np.ndarray:
    """Convert an array-like exactly to a flat, native-order float64 NumPy array.

    Parameters
    ----------
    x : array-like
        A NumPy array (any byte order, any strides), a PyTorch tensor of any floating dtype
        (including bfloat16, on any device), or anything :func:`numpy.asarray` accepts.

    Returns
    -------
    numpy.ndarray
        One-dimensional float64 copy of the values, in C (row-major) order.
    """
    if type(x).__module__.startswith("torch"):
        import torch

        if isinstance(x, torch.Tensor):
            return x.detach().to(device="cpu", dtype=torch.float64).reshape(-1).numpy().copy()
    return np.array(x, dtype=np.float64, copy=True).reshape(-1)


def _round_to_float32(v: np.ndarray) -> np.ndarray:
    """Round float64 values to the nearest float32 (overflow gives ±Inf) and back to float64."""
    with np.errstate(over="ignore"):
        return v.astype(np.float32).astype(np.float64)


# ----------------------------------------------------------------------------------------------
# moments
# ----------------------------------------------------------------------------------------------
def ref_moments(x: Any) -> dict[str, float | int]:
    """Reference of :func:`pyweightstat.describe` (without the histogram).

    Two-pass float64 computation over the finite values: the mean (with one correction pass),
    then the central moments of the deviations.

    Parameters
    ----------
    x : array-like
        Input values (see :func:`to_float64`).

    Returns
    -------
    dict
        Keys :data:`SUMMARY_FIELDS`.  Counts are ``int``, everything else ``float``.  See the
        module docstring for the conventions on non-finite, empty and constant input.
    """
    v = to_float64(x)
    finite = np.isfinite(v)
    f = v[finite]
    n = int(f.size)
    out: dict[str, float | int] = {
        "count": n,
        "nan_count": int(np.count_nonzero(np.isnan(v))),
        "posinf_count": int(np.count_nonzero(v == np.inf)),
        "neginf_count": int(np.count_nonzero(v == -np.inf)),
        "zero_count": int(np.count_nonzero(f == 0.0)),
    }
    nan = float("nan")
    if n == 0:
        out.update(
            mean=nan, var=nan, std=nan, skew=nan, kurtosis=nan, min=nan, max=nan,
            l1=0.0, l2=0.0, linf=nan,
        )  # fmt: skip
        return out

    lo, hi = float(f.min()), float(f.max())
    absf = np.abs(f)
    linf = float(absf.max())
    # norms: l2 scaled by linf so that float64 inputs near the overflow limit stay finite
    l2 = 0.0 if linf == 0.0 else linf * math.sqrt(float(np.sum((absf / linf) ** 2)))
    out.update(min=lo, max=hi, l1=float(np.sum(absf)), l2=l2, linf=linf)

    if lo == hi:  # constant data (or one element): no spread, shape moments are 0/0
        out.update(mean=lo, var=0.0, std=0.0, skew=nan, kurtosis=nan)
        return out

    mean = float(np.mean(f))
    mean += float(np.mean(f - mean))  # correction pass: removes the rounding error of pass 1
    mean = min(max(mean, lo), hi)
    d = f - mean
    m2 = float(np.mean(d * d))
    std = math.sqrt(m2)
    z = d / std
    out.update(
        mean=mean,
        var=m2,
        std=std,
        skew=float(np.mean(z**3)),
        kurtosis=float(np.mean(z**4)) - 3.0,
    )
    return out


# ----------------------------------------------------------------------------------------------
# uniform histograms
# ----------------------------------------------------------------------------------------------
def ref_range(x: Any, range: tuple[float, float] | None = None) -> tuple[float, float]:
    """Outer edges ``(lo, hi)`` of a uniform histogram, with NumPy's rules.

    Parameters
    ----------
    x : array-like
        Input values (used only when ``range`` is None).
    range : (float, float) or None
        Explicit range; must be finite with ``lo <= hi``.  None uses the finite min/max of
        ``x`` (``(0, 1)`` when ``x`` has no finite value).

    Returns
    -------
    (float, float)
        The range, widened to ``(lo - 0.5, hi + 0.5)`` when ``lo == hi``.

    Raises
    ------
    ValueError
        If ``range`` is not finite or reversed.
    """
    if range is None:
        v = to_float64(x)
        f = v[np.isfinite(v)]
        lo, hi = (0.0, 1.0) if f.size == 0 else (float(f.min()), float(f.max()))
    else:
        lo, hi = float(range[0]), float(range[1])
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"range must be finite, got {range!r}")
        if lo > hi:
            raise ValueError(f"range must satisfy lo <= hi, got {range!r}")
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    return lo, hi


def ref_histogram(
    x: Any,
    bins: int = 256,
    range: tuple[float, float] | None = None,
) -> tuple[np.ndarray, int, int, int]:
    """Reference of :func:`pyweightstat.histogram`: a uniform histogram with NumPy semantics.

    Parameters
    ----------
    x : array-like
        Input values (see :func:`to_float64`).
    bins : int
        Number of equal-width bins, at least 1.
    range : (float, float) or None
        Outer edges; see :func:`ref_range`.

    Returns
    -------
    counts : numpy.ndarray
        int64 counts of the ``bins`` bins.
    underflow, overflow, nan_count : int
        Values below ``lo`` (with -Inf), above ``hi`` (with +Inf), and NaN values.

    Notes
    -----
    The edges are ``ref_histogram_edges(lo, hi, bins)``; a value ``v`` with
    ``edges[i] <= v < edges[i+1]`` goes to bin ``i``, and ``v == hi`` to the last bin.  This is
    exactly what ``numpy.histogram(x.astype(np.float64), bins, range)`` counts.
    """
    if int(bins) != bins or bins < 1:
        raise ValueError(f"bins must be an integer >= 1, got {bins!r}")
    bins = int(bins)
    v = to_float64(x)
    lo, hi = ref_range(v, range)
    edges = ref_histogram_edges(lo, hi, bins)
    isnan = np.isnan(v)
    w = v[~isnan]
    underflow = int(np.count_nonzero(w < lo))
    overflow = int(np.count_nonzero(w > hi))
    inside = w[(w >= lo) & (w <= hi)]
    # bin i holds edges[i] <= v < edges[i+1]: the number of edges <= v, minus one
    idx = np.searchsorted(edges, inside, side="right") - 1
    idx[idx == bins] = bins - 1  # v == hi: the last bin is closed
    counts = np.bincount(idx, minlength=bins).astype(np.int64)
    return counts, underflow, overflow, int(np.count_nonzero(isnan))


def ref_histogram_edges(lo: float, hi: float, bins: int) -> np.ndarray:
    """Edges of a uniform histogram: ``numpy.linspace(lo, hi, bins + 1)`` in float64.

    Parameters
    ----------
    lo, hi : float
        Outer edges (``edges[0] == lo`` and ``edges[-1] == hi`` exactly).
    bins : int
        Number of bins.

    Returns
    -------
    numpy.ndarray
        float64 array of ``bins + 1`` edges.
    """
    return np.linspace(float(lo), float(hi), int(bins) + 1, dtype=np.float64)


# ----------------------------------------------------------------------------------------------
# universal log-linear histograms
# ----------------------------------------------------------------------------------------------
def _check_mantissa_bits(m: int) -> int:
    if int(m) != m or not 0 <= m <= _MAX_MANTISSA_BITS:
        raise ValueError(f"mantissa_bits must be an integer in [0, 10], got {m!r}")
    return int(m)


def ref_log_centre_index(mantissa_bits: int) -> int:
    """Index ``C = 254 * 2**m`` of the centre bucket (zeros and subnormals).

    Parameters
    ----------
    mantissa_bits : int
        Number of mantissa bits ``m`` (0..10).

    Returns
    -------
    int
        The centre bucket's global index.
    """
    return _NUM_EXPONENTS * 2 ** _check_mantissa_bits(mantissa_bits)


def ref_log_num_buckets(mantissa_bits: int) -> int:
    """Number of buckets ``2 * 254 * 2**m + 1`` of the universal log-linear grid.

    Parameters
    ----------
    mantissa_bits : int
        Number of mantissa bits ``m`` (0..10).

    Returns
    -------
    int
        Total number of buckets (the length of :func:`ref_log_edges` minus one).
    """
    return 2 * ref_log_centre_index(mantissa_bits) + 1


def ref_log_bucket_index(x: Any, mantissa_bits: int = 7) -> np.ndarray:
    """Global bucket index of every value on the universal log-linear grid.

    Parameters
    ----------
    x : array-like
        Input values (see :func:`to_float64`); they are rounded to float32 first.
    mantissa_bits : int
        Number of mantissa bits ``m`` (0..10).

    Returns
    -------
    numpy.ndarray
        int64 indices in ``[0, 2*C]`` for finite values; ``-1`` for -Inf (underflow),
        ``2*C + 1`` for +Inf (overflow) and :data:`LOG_NAN` for NaN.

    Notes
    -----
    Written with :func:`numpy.frexp` and comparisons only: ``|v| = g * 2**E`` with
    ``0.5 <= g < 1``, so the float32 biased exponent is ``e = E + 126`` and the mantissa
    fraction ``f = 2 g - 1`` (exact); the top ``m`` mantissa bits are ``floor(f * 2**m)``.
    """
    m = _check_mantissa_bits(mantissa_bits)
    c = ref_log_centre_index(m)
    v = _round_to_float32(to_float64(x))
    idx = np.full(v.shape, c, dtype=np.int64)
    idx[np.isnan(v)] = LOG_NAN
    idx[v == -np.inf] = -1
    idx[v == np.inf] = 2 * c + 1
    normal = np.isfinite(v) & (np.abs(v) >= _MIN_NORMAL)
    g, big_e = np.frexp(np.abs(v[normal]))
    e = big_e.astype(np.int64) + 126  # biased float32 exponent, 1..254
    t = np.floor((2.0 * g - 1.0) * 2**m).astype(np.int64)  # top m mantissa bits
    k = (e - 1) * 2**m + t  # position among the normal buckets of one sign, 0..C-1
    idx[normal] = np.where(v[normal] > 0, c + 1 + k, c - 1 - k)
    return idx


def _log_bucket_index_scalar(value: float, mantissa_bits: int) -> int:
    """Scalar version of :func:`ref_log_bucket_index` with :func:`math.frexp` (for checks)."""
    m = _check_mantissa_bits(mantissa_bits)
    c = ref_log_centre_index(m)
    with np.errstate(over="ignore"):
        v = float(np.float32(value))
    if math.isnan(v):
        return LOG_NAN
    if math.isinf(v):
        return 2 * c + 1 if v > 0 else -1
    if abs(v) < _MIN_NORMAL:
        return c
    g, big_e = math.frexp(abs(v))
    k = (big_e + 125) * 2**m + math.floor((2.0 * g - 1.0) * 2**m)
    return c + 1 + k if v > 0 else c - 1 - k


def ref_log_edges(mantissa_bits: int = 7) -> np.ndarray:
    """Edges of the full universal log-linear grid, ascending, in float64.

    Parameters
    ----------
    mantissa_bits : int
        Number of mantissa bits ``m`` (0..10).

    Returns
    -------
    numpy.ndarray
        ``2*C + 2`` edges: ``edges[i], edges[i+1]`` bound bucket ``i``.  The centre bucket is
        ``[-2**-126, 2**-126]``; the outermost edges are ``±2**128``.
    """
    m = _check_mantissa_bits(mantissa_bits)
    c = ref_log_centre_index(m)
    e = np.repeat(np.arange(1, _NUM_EXPONENTS + 1, dtype=np.float64), 2**m)
    t = np.tile(np.arange(2**m, dtype=np.float64), _NUM_EXPONENTS)
    lower = np.exp2(e - 127.0) * (1.0 + t / 2**m)  # lower edge of positive bucket C + 1 + k
    upper = np.append(lower[1:], 2.0**128)
    edges = np.empty(2 * c + 2, dtype=np.float64)
    edges[c + 1 :] = np.append(lower, upper[-1])  # edges[C+1+k] = lower_k, edges[2C+1] = 2^128
    edges[: c + 1] = -np.append(upper[::-1], lower[0])  # mirror: edges[C] = -2^-126
    return edges


def ref_log_histogram(x: Any, mantissa_bits: int = 7) -> tuple[np.ndarray, int, int, int]:
    """Reference of :func:`pyweightstat.log_histogram` on the *full* universal grid.

    Parameters
    ----------
    x : array-like
        Input values (see :func:`to_float64`).
    mantissa_bits : int
        Number of mantissa bits ``m`` (0..10).

    Returns
    -------
    counts : numpy.ndarray
        int64 counts of all ``2*C + 1`` buckets (the engine stores only the window
        ``counts[first:first + len]`` that holds data).
    underflow, overflow, nan_count : int
        -Inf values (and float64 values that round to -Inf in float32), +Inf values (and
        values that round to +Inf), NaN values.
    """
    idx = ref_log_bucket_index(x, mantissa_bits)
    n = ref_log_num_buckets(mantissa_bits)
    inside = idx[(idx >= 0) & (idx < n)]
    counts = np.bincount(inside, minlength=n).astype(np.int64)
    return (
        counts,
        int(np.count_nonzero(idx == -1)),
        int(np.count_nonzero(idx == n)),
        int(np.count_nonzero(idx == LOG_NAN)),
    )


# ----------------------------------------------------------------------------------------------
# quantiles
# ----------------------------------------------------------------------------------------------
def ref_quantile_bound(
    x: Any, q: float | Sequence[float] | np.ndarray, mantissa_bits: int = 7
) -> tuple[np.ndarray, np.ndarray]:
    """Exact quantiles and the absolute error allowed to a log-histogram estimate of them.

    Parameters
    ----------
    x : array-like
        Input values (see :func:`to_float64`); only the finite values are used.
    q : float or sequence of float
        Probabilities in ``[0, 1]``.
    mantissa_bits : int
        Number of mantissa bits ``m`` of the log histogram (0..10).

    Returns
    -------
    quantiles : numpy.ndarray
        ``numpy.quantile(finite values, q, method="linear")`` in float64.
    bounds : numpy.ndarray
        Largest allowed ``|estimate - quantile|``.

    Notes
    -----
    A bucket of the universal grid is at most ``2**-m`` times as wide as the magnitude of any
    value in it, so an estimate that lies in the bucket of the true quantile has relative error
    at most ``2**-m`` (0.78 % at ``m = 7``).  The linear quantile interpolates between the order
    statistics ``x_lo <= x_hi`` around rank ``q (n - 1)``, which may lie in different buckets;
    the bound is therefore ``(2**-m + 2**-23) * max(|x_lo|, |x_hi|) + (x_hi - x_lo) + 2**-125``
    (the ``2**-23`` term covers the float32 rounding of float64 input, the last term the width
    of the centre bucket).  For data from a continuous distribution ``x_hi - x_lo`` is
    negligible and the bound is the relative ``2**-m``.
    """
    m = _check_mantissa_bits(mantissa_bits)
    v = to_float64(x)
    f = v[np.isfinite(v)]
    qa = np.atleast_1d(np.asarray(q, dtype=np.float64))
    if f.size == 0:
        nan = np.full(qa.shape, np.nan)
        return nan, nan
    exact = np.quantile(f, qa, method="linear")
    x_lo = np.quantile(f, qa, method="lower")
    x_hi = np.quantile(f, qa, method="higher")
    mag = np.maximum(np.abs(x_lo), np.abs(x_hi))
    bound = (2.0**-m + 2.0**-23) * mag + (x_hi - x_lo) + 2.0**-125
    return exact, bound


# ----------------------------------------------------------------------------------------------
# distances
# ----------------------------------------------------------------------------------------------
def ref_distance(p_counts: Any, q_counts: Any, edges: Any, metric: str) -> float:
    """Reference of :func:`pyweightstat.distance` on two count vectors over the same edges.

    Parameters
    ----------
    p_counts, q_counts : array-like
        In-range counts of the two histograms (same length ``n``).
    edges : array-like
        The ``n + 1`` shared bin edges (used by ``wasserstein`` only: bin centres).
    metric : {"wasserstein", "ks", "js", "hellinger", "tv"}
        Distance to compute; see the module docstring.

    Returns
    -------
    float
        The distance; NaN if either histogram has no count.

    Raises
    ------
    ValueError
        For an unknown metric or inconsistent lengths.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    p = np.asarray(p_counts, dtype=np.float64).reshape(-1)
    q = np.asarray(q_counts, dtype=np.float64).reshape(-1)
    e = np.asarray(edges, dtype=np.float64).reshape(-1)
    if p.shape != q.shape or e.size != p.size + 1:
        raise ValueError(
            f"counts must have equal length n and edges n + 1, got {p.size}, {q.size}, {e.size}"
        )
    sp, sq = p.sum(), q.sum()
    if sp == 0 or sq == 0:
        return float("nan")
    # CDFs from cumulative *counts*: exactly 0 before and exactly 1 after the data, so that
    # empty buckets far out on a log grid (widths up to 1e38) contribute exactly nothing.
    cdf_gap = np.abs(np.cumsum(p) / sp - np.cumsum(q) / sq)
    p, q = p / sp, q / sq

    if metric == "tv":
        return 0.5 * float(np.sum(np.abs(p - q)))
    if metric == "hellinger":
        # sqrt(1 - sum(sqrt(p q))) written as a sum of squares: no cancellation near 0
        return min(1.0, math.sqrt(0.5 * float(np.sum((np.sqrt(p) - np.sqrt(q)) ** 2))))
    if metric == "js":
        mid = 0.5 * (p + q)
        total = 0.0
        for a in (p, q):
            nz = a > 0
            total += 0.5 * float(np.sum(a[nz] * np.log2(a[nz] / mid[nz])))
        return min(max(total, 0.0), 1.0)
    if metric == "ks":
        return float(cdf_gap.max())
    # wasserstein: integral of |CDF_p - CDF_q| with point masses at the bin centres
    centres = 0.5 * (e[:-1] + e[1:])
    return float(np.sum(cdf_gap[:-1] * np.diff(centres)))
