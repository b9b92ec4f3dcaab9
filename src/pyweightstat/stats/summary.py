"""The ``Summary`` result type: a mergeable moment state and the statistics derived from it."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from .histogram import Histogram

#: Statistics a Summary exposes, in a fixed order (used by to_dict and columnar stores).
FIELDS = (
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
_F_NAMES = ("mean", "m2", "m3", "m4", "min", "max", "sum_abs", "sum_sq")
_N_NAMES = ("count", "nan_count", "posinf_count", "neginf_count", "zero_count")


def fields_from_states(f: Any, n: Any) -> np.ndarray:
    """The statistics :data:`FIELDS` of many raw states at once, as :class:`Summary` computes them.

    Parameters
    ----------
    f : array_like, shape (..., 8)
        float64 rows ``mean, M2, M3, M4, min, max, sum|x|, sum x**2``.
    n : array_like, shape (..., 5)
        int64 rows ``count, NaN, +Inf, -Inf, zero``.

    Returns
    -------
    ndarray, shape (..., len(FIELDS)), float64
        Column ``k`` equals ``getattr(Summary(f_i, n_i), FIELDS[k])`` for each state ``i``.
    """
    f = np.asarray(f, dtype=np.float64)
    n = np.asarray(n, dtype=np.int64)
    if f.shape[-1:] != (8,) or n.shape[-1:] != (5,) or f.shape[:-1] != n.shape[:-1]:
        raise ValueError(f"expected (..., 8) and (..., 5) states, got {f.shape} and {n.shape}")
    cnt = n[..., 0]
    has = cnt > 0
    c = np.where(has, cnt, 1).astype(np.float64)
    m2 = f[..., 1]
    spread = has & (m2 > 0)
    safe_m2 = np.where(spread, m2, 1.0)
    out = np.empty((*f.shape[:-1], len(FIELDS)), dtype=np.float64)
    nan = np.float64(np.nan)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        var = np.where(has, m2 / c, nan)
        cols = {
            "count": cnt,
            "mean": np.where(has, f[..., 0], nan),
            "var": var,
            "std": np.where(var >= 0, np.sqrt(np.where(var >= 0, var, 0.0)), nan),
            # m2 * sqrt(m2), not m2**1.5: both steps are correctly rounded everywhere, so the
            # result matches Summary.skew bit for bit (numpy's vectorised pow may differ by 1 ulp)
            "skew": np.where(spread, np.sqrt(c) * f[..., 2] / (safe_m2 * np.sqrt(safe_m2)), nan),
            "kurtosis": np.where(spread, c * f[..., 3] / (safe_m2 * safe_m2) - 3.0, nan),
            "min": np.where(has, f[..., 4], nan),
            "max": np.where(has, f[..., 5], nan),
            "l1": f[..., 6],
            "l2": np.sqrt(f[..., 7]),
            "linf": np.where(has, np.maximum(np.abs(f[..., 4]), np.abs(f[..., 5])), nan),
            "nan_count": n[..., 1],
            "posinf_count": n[..., 2],
            "neginf_count": n[..., 3],
            "zero_count": n[..., 4],
        }
    for k, name in enumerate(FIELDS):
        out[..., k] = cols[name]
    return out


class Summary:
    """Moments, extremes, norms and special-value counts of a tensor, mergeable across chunks.

    The state (count, mean, central sums M2..M4, min, max, sum of |x|, sum of x**2 and the
    NaN/+Inf/-Inf/zero counts) merges exactly as if computed on the concatenation (Chan et al.;
    Pebay 2008). Moments, extremes and norms are over the finite values only; NaN and +/-Inf are
    counted. ``var`` is the population variance, ``skew`` and ``kurtosis`` are the biased
    Fisher estimators (``scipy.stats.skew`` / ``scipy.stats.kurtosis`` defaults; kurtosis is
    excess kurtosis). With no finite value, count is 0 and the moments, min, max and linf are NaN;
    with zero variance, skew and kurtosis are NaN.

    For CUDA inputs the state stays on the device until a value is read (or :meth:`to_host` is
    called), so recording a Summary never synchronises the host.

    Attributes
    ----------
    hist : Histogram or None
        The histogram filled in the same pass, when one was asked for.
    """

    __slots__ = ("_f", "_fetch", "_hist", "_n")

    def __init__(self, f: Any, n: Any, hist: Histogram | None = None) -> None:
        self._f = np.asarray(f, dtype=np.float64).reshape(8)
        self._n = np.asarray(n, dtype=np.int64).reshape(5)
        self._hist = hist
        self._fetch: Callable[[], tuple[Any, Any, Histogram | None]] | None = None

    @classmethod
    def _deferred(cls, fetch: Callable[[], tuple[Any, Any, Histogram | None]]) -> Summary:
        """A Summary whose state is produced by ``fetch()`` on first access (device results)."""
        s = cls.__new__(cls)
        s._f = s._n = s._hist = None
        s._fetch = fetch
        return s

    def to_host(self) -> Summary:
        """Copy a device-resident state to the host now (a no-op for CPU results)."""
        if self._fetch is not None:
            f, n, h = self._fetch()
            self._f = np.asarray(f, dtype=np.float64).reshape(8)
            self._n = np.asarray(n, dtype=np.int64).reshape(5)
            self._hist = h
            self._fetch = None
        return self

    sync = to_host

    @property
    def on_host(self) -> bool:
        """Whether the state has been copied to the host."""
        return self._fetch is None

    def _state(self) -> tuple[np.ndarray, np.ndarray]:
        self.to_host()
        return self._f, self._n

    # ------------------------------------------------------------------ statistics
    @property
    def hist(self) -> Histogram | None:
        """Histogram filled in the same pass (None if none was requested)."""
        self.to_host()
        return self._hist

    @property
    def count(self) -> int:
        """Number of finite values."""
        return int(self._state()[1][0])

    @property
    def nan_count(self) -> int:
        """Number of NaN values."""
        return int(self._state()[1][1])

    @property
    def posinf_count(self) -> int:
        """Number of +Inf values."""
        return int(self._state()[1][2])

    @property
    def neginf_count(self) -> int:
        """Number of -Inf values."""
        return int(self._state()[1][3])

    @property
    def zero_count(self) -> int:
        """Number of exact zeros (+0 and -0)."""
        return int(self._state()[1][4])

    @property
    def mean(self) -> float:
        """Mean of the finite values."""
        f, n = self._state()
        return float(f[0]) if n[0] else math.nan

    @property
    def var(self) -> float:
        """Population variance (M2 / count)."""
        f, n = self._state()
        return float(f[1] / n[0]) if n[0] else math.nan

    @property
    def std(self) -> float:
        """Population standard deviation."""
        v = self.var
        return math.sqrt(v) if v >= 0 else math.nan

    @property
    def skew(self) -> float:
        """Biased Fisher skewness (NaN for zero variance)."""
        f, n = self._state()
        if n[0] == 0 or not f[1] > 0:
            return math.nan
        return float(math.sqrt(n[0]) * f[2] / (f[1] * math.sqrt(f[1])))

    @property
    def kurtosis(self) -> float:
        """Biased excess kurtosis (Fisher; NaN for zero variance)."""
        f, n = self._state()
        if n[0] == 0 or not f[1] > 0:
            return math.nan
        return float(n[0] * f[3] / (f[1] * f[1]) - 3.0)

    @property
    def min(self) -> float:
        """Smallest finite value."""
        f, n = self._state()
        return float(f[4]) if n[0] else math.nan

    @property
    def max(self) -> float:
        """Largest finite value."""
        f, n = self._state()
        return float(f[5]) if n[0] else math.nan

    @property
    def l1(self) -> float:
        """Sum of |x| over finite values."""
        return float(self._state()[0][6])

    @property
    def l2(self) -> float:
        """Euclidean norm of the finite values."""
        return math.sqrt(float(self._state()[0][7]))

    @property
    def linf(self) -> float:
        """Largest |x| over finite values."""
        f, n = self._state()
        return max(abs(float(f[4])), abs(float(f[5]))) if n[0] else math.nan

    # ------------------------------------------------------------------ merging
    def merge(self, other: Summary) -> Summary:
        """Return the Summary of the concatenation of both inputs (histograms merged too)."""
        if not isinstance(other, Summary):
            raise TypeError(f"can only merge a Summary with a Summary; got {type(other)}")
        from .. import _C

        fa, na = self._state()
        fb, nb = other._state()
        f, n = _C.merge_states(fa, na, fb, nb)
        ha, hb = self._hist, other._hist
        if (ha is None) != (hb is None):
            raise ValueError("cannot merge a Summary with a histogram and one without")
        return Summary(f, n, None if ha is None else ha.merge(hb))

    def __add__(self, other: Summary) -> Summary:
        return self.merge(other)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """All statistics as a dict of Python numbers, plus the raw mergeable state.

        The keys of :data:`FIELDS` give the statistics; ``"state"`` holds the raw state that
        :meth:`from_dict` needs; ``"hist"`` the histogram's dict when there is one.
        """
        f, n = self._state()
        d: dict[str, Any] = {k: getattr(self, k) for k in FIELDS}
        d["state"] = {
            **{k: float(v) for k, v in zip(_F_NAMES, f, strict=True)},
            **{k: int(v) for k, v in zip(_N_NAMES, n, strict=True)},
        }
        if self._hist is not None:
            d["hist"] = self._hist.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Summary:
        """Rebuild a Summary from :meth:`to_dict` output."""
        s = d["state"]
        hist = Histogram.from_dict(d["hist"]) if d.get("hist") is not None else None
        return cls([s[k] for k in _F_NAMES], [s[k] for k in _N_NAMES], hist)

    def __repr__(self) -> str:
        if not self.on_host:
            return "Summary(<on device; read a value or call to_host()>)"
        return (
            f"Summary(count={self.count}, mean={self.mean:.6g}, std={self.std:.6g}, "
            f"skew={self.skew:.4g}, kurtosis={self.kurtosis:.4g}, min={self.min:.6g}, "
            f"max={self.max:.6g}, nan={self.nan_count}, "
            f"inf={self.posinf_count + self.neginf_count}, zero={self.zero_count})"
        )
