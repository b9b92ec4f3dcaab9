"""The ``Histogram`` result type: uniform bins or universal log-linear buckets, int64 counts."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import layout


class Histogram:
    """Counts of values in bins, with explicit underflow, overflow and NaN counters.

    Two kinds share this type:

    * ``"uniform"``: ``bins`` equal-width bins over a range, NumPy semantics (every bin is
      half-open except the last, which is closed). Finite values below the range and ``-inf`` are
      counted in ``underflow``; above the range and ``+inf`` in ``overflow``.
    * ``"log"``: the universal log-linear buckets of :mod:`pyweightstat.stats.layout`. Only the
      window of buckets that holds data is stored: ``counts[j]`` is global bucket
      ``first + j``. ``-inf``/``+inf`` go to ``underflow``/``overflow``.

    Attributes
    ----------
    counts : numpy.ndarray
        int64 counts per bin.
    edges : numpy.ndarray
        float64 bin edges, ``len(counts) + 1`` values.
    underflow, overflow, nan_count : int
        Values below / above the bins, and NaNs.
    kind : str
        ``"uniform"`` or ``"log"``.
    first : int
        Global index of ``counts[0]`` (log histograms; 0 for uniform ones).
    mantissa_bits : int or None
        Mantissa bits of the log layout (None for uniform histograms).
    """

    __slots__ = (
        "_edges",
        "counts",
        "first",
        "kind",
        "mantissa_bits",
        "nan_count",
        "overflow",
        "underflow",
    )

    def __init__(
        self,
        counts: Any,
        edges: Any = None,
        underflow: int = 0,
        overflow: int = 0,
        nan_count: int = 0,
        *,
        kind: str = "uniform",
        first: int = 0,
        mantissa_bits: int | None = None,
    ) -> None:
        self.counts = np.ascontiguousarray(counts, dtype=np.int64)
        self.underflow = int(underflow)
        self.overflow = int(overflow)
        self.nan_count = int(nan_count)
        if kind not in ("uniform", "log"):
            raise ValueError(f"kind must be 'uniform' or 'log'; got {kind!r}")
        self.kind = kind
        self.first = int(first)
        self.mantissa_bits = None if mantissa_bits is None else int(mantissa_bits)
        if kind == "log":
            if self.mantissa_bits is None:
                raise ValueError("a log histogram needs mantissa_bits")
            self._edges = None
        else:
            if edges is None:
                raise ValueError("a uniform histogram needs edges")
            self._edges = np.ascontiguousarray(edges, dtype=np.float64)
            if self._edges.shape != (self.counts.size + 1,):
                raise ValueError(
                    f"edges must have len(counts) + 1 = {self.counts.size + 1} values; "
                    f"got {self._edges.size}"
                )
            e = self._edges
            even = np.linspace(e[0], e[-1], e.size)
            width = (e[-1] - e[0]) / max(self.counts.size, 1)
            if not (np.all(np.isfinite(e)) and e[-1] > e[0]) or np.any(
                np.abs(e - even) > 1e-3 * width
            ):
                raise ValueError(
                    "edges of a uniform histogram must be finite, increasing and equally spaced "
                    "(as np.linspace(lo, hi, bins + 1) makes them)"
                )

    # ------------------------------------------------------------------ basic properties
    @property
    def edges(self) -> np.ndarray:
        """float64 bin edges (``len(counts) + 1`` values)."""
        if self._edges is None:
            self._edges = layout.edges(self.first, self.counts.size, self.mantissa_bits)
        return self._edges

    @property
    def bins(self) -> int:
        """Number of bins stored."""
        return int(self.counts.size)

    @property
    def total(self) -> int:
        """Number of values counted: in the bins plus underflow and overflow (NaN excluded)."""
        return int(self.counts.sum()) + self.underflow + self.overflow

    @property
    def in_range(self) -> int:
        """Number of values inside the bins."""
        return int(self.counts.sum())

    @property
    def centres(self) -> np.ndarray:
        """Bin centres (arithmetic midpoints of the edges)."""
        e = self.edges
        return 0.5 * (e[:-1] + e[1:])

    def __repr__(self) -> str:
        if self.kind == "log":
            return (
                f"Histogram(kind='log', mantissa_bits={self.mantissa_bits}, first={self.first}, "
                f"bins={self.bins}, total={self.total}, nan_count={self.nan_count})"
            )
        return (
            f"Histogram(kind='uniform', bins={self.bins}, range=({float(self.edges[0])!r}, "
            f"{float(self.edges[-1])!r}), total={self.total}, underflow={self.underflow}, "
            f"overflow={self.overflow}, nan_count={self.nan_count})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Histogram):
            return NotImplemented
        if self.kind != other.kind or self.mantissa_bits != other.mantissa_bits:
            return False
        a, b = self._trimmed(), other._trimmed()
        same_bins = (
            a.first == b.first and np.array_equal(a.counts, b.counts)
            if self.kind == "log"
            else np.array_equal(self.edges, other.edges) and np.array_equal(a.counts, b.counts)
        )
        return same_bins and (a.underflow, a.overflow, a.nan_count) == (
            b.underflow,
            b.overflow,
            b.nan_count,
        )

    __hash__ = None  # mutable

    # ------------------------------------------------------------------ merging
    def _check_compatible(self, other: Histogram) -> None:
        if not isinstance(other, Histogram):
            raise TypeError(f"can only merge a Histogram with a Histogram; got {type(other)}")
        if self.kind != other.kind:
            raise ValueError(
                f"cannot merge a {self.kind} histogram with a {other.kind} histogram: "
                "their edges differ"
            )
        if self.kind == "log":
            if self.mantissa_bits != other.mantissa_bits:
                raise ValueError(
                    "cannot merge log histograms with different mantissa_bits "
                    f"({self.mantissa_bits} and {other.mantissa_bits}): their edges differ"
                )
        elif self.edges.shape != other.edges.shape or not np.array_equal(self.edges, other.edges):
            raise ValueError(
                "cannot merge histograms with different edges "
                f"({self.bins} bins over [{self.edges[0]}, {self.edges[-1]}] and "
                f"{other.bins} bins over [{other.edges[0]}, {other.edges[-1]}])"
            )

    def _trimmed(self) -> Histogram:
        """For log histograms, the same histogram with empty buckets at both ends removed."""
        if self.kind != "log":
            return self
        nz = np.flatnonzero(self.counts)
        if nz.size == 0:
            return Histogram(
                np.zeros(0, np.int64),
                None,
                self.underflow,
                self.overflow,
                self.nan_count,
                kind="log",
                first=0,
                mantissa_bits=self.mantissa_bits,
            )
        lo, hi = int(nz[0]), int(nz[-1])
        return Histogram(
            self.counts[lo : hi + 1],
            None,
            self.underflow,
            self.overflow,
            self.nan_count,
            kind="log",
            first=self.first + lo,
            mantissa_bits=self.mantissa_bits,
        )

    def aligned(self, first: int, n: int) -> np.ndarray:
        """Counts of a log histogram laid out on the window ``[first, first + n)``."""
        if self.kind != "log":
            raise ValueError("aligned() applies to log histograms only")
        out = np.zeros(n, dtype=np.int64)
        if self.counts.size:
            lo = self.first - first
            if lo < 0 or lo + self.counts.size > n:
                raise ValueError("window does not cover this histogram")
            out[lo : lo + self.counts.size] = self.counts
        return out

    def merge(self, other: Histogram) -> Histogram:
        """Return a new histogram holding the counts of both (edges must agree).

        Raises
        ------
        ValueError
            If the two histograms do not share edges (different kind, bins, range or
            mantissa bits).
        """
        self._check_compatible(other)
        under = self.underflow + other.underflow
        over = self.overflow + other.overflow
        nan = self.nan_count + other.nan_count
        if self.kind == "uniform":
            return Histogram(self.counts + other.counts, self.edges, under, over, nan)
        a, b = self._trimmed(), other._trimmed()
        if a.counts.size == 0 or b.counts.size == 0:
            src = b if a.counts.size == 0 else a
            first, counts = src.first, src.counts.copy()
        else:
            first = min(a.first, b.first)
            n = max(a.first + a.counts.size, b.first + b.counts.size) - first
            counts = a.aligned(first, n) + b.aligned(first, n)
        return from_core((first, counts, under, over, nan), False, None, self.mantissa_bits)

    def __add__(self, other: Histogram) -> Histogram:
        return self.merge(other)

    def update(self, x: Any) -> Histogram:
        """Add the values of ``x`` to this histogram in place (same bins); returns ``self``."""
        from .api import _histogram_same_layout

        merged = self.merge(_histogram_same_layout(x, self))
        for slot in Histogram.__slots__:
            setattr(self, slot, getattr(merged, slot))
        return self

    # ------------------------------------------------------------------ derived quantities
    def cdf(self) -> np.ndarray:
        """Fraction of the in-range values at or below each bin's upper edge."""
        c = np.cumsum(self.counts, dtype=np.int64)
        n = c[-1] if c.size else 0
        return c / n if n else np.full(c.shape, np.nan)

    def density(self) -> np.ndarray:
        """Probability density per bin, as ``np.histogram(..., density=True)`` returns it."""
        n = self.in_range
        widths = np.diff(self.edges)
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.counts / (n * widths) if n else np.full(self.counts.shape, np.nan)

    def quantile(self, q: Any) -> float | np.ndarray:
        """Quantiles of the values counted in the bins.

        Uses NumPy's default ("linear") definition on the order statistics; each order statistic
        is placed by linear interpolation inside its bin. Values in ``underflow``/``overflow``
        and NaNs are not counted.

        Error bound: the estimate of each order statistic lies in the same bin as the true value,
        so the error is at most one bin width. For log histograms this is a relative error of at
        most ``2**-mantissa_bits`` (0.78 % at the default 7 bits) for values whose magnitude is
        at least ``2**-126``, and an absolute error of at most ``2**-126`` below that.

        Parameters
        ----------
        q : float or array-like
            Quantile(s) in ``[0, 1]``.

        Returns
        -------
        float or numpy.ndarray
            NaN where the histogram holds no value.
        """
        qa = np.asarray(q, dtype=np.float64)
        if np.any(~np.isfinite(qa)) or np.any((qa < 0) | (qa > 1)):
            raise ValueError(f"q must be in [0, 1]; got {q!r}")
        n = self.in_range
        if n == 0:
            out = np.full(qa.shape, np.nan)
            return float(out) if out.ndim == 0 else out
        h = qa * (n - 1)
        k = np.floor(h)
        frac = h - k
        k = k.astype(np.int64)
        v0 = self._order_stat(k)
        v1 = self._order_stat(np.minimum(k + 1, n - 1))
        out = v0 + frac * (v1 - v0)
        return float(out) if out.ndim == 0 else out

    def _order_stat(self, r: np.ndarray) -> np.ndarray:
        cum = np.cumsum(self.counts, dtype=np.int64)
        j = np.searchsorted(cum, r, side="right")
        before = np.where(j > 0, cum[np.maximum(j - 1, 0)], 0)
        c = self.counts[j]
        pos = (r - before + 0.5) / c
        e = self.edges
        return e[j] + pos * (e[j + 1] - e[j])

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict; :meth:`from_dict` restores the histogram exactly."""
        d: dict[str, Any] = {
            "kind": self.kind,
            "counts": self.counts.tolist(),
            "underflow": self.underflow,
            "overflow": self.overflow,
            "nan_count": self.nan_count,
        }
        if self.kind == "log":
            d["first"] = self.first
            d["mantissa_bits"] = self.mantissa_bits
        else:
            d["edges"] = self.edges.tolist()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Histogram:
        """Rebuild a histogram from :meth:`to_dict` output."""
        kind = d.get("kind", "uniform")
        if kind == "log":
            return cls(
                d["counts"],
                None,
                d["underflow"],
                d["overflow"],
                d["nan_count"],
                kind="log",
                first=d["first"],
                mantissa_bits=d["mantissa_bits"],
            )
        return cls(d["counts"], d["edges"], d["underflow"], d["overflow"], d["nan_count"])


def from_core(h: tuple | None, uniform: bool, edges: Any, mantissa_bits: int) -> Histogram | None:
    """The :class:`Histogram` of an engine result tuple ``(first, counts, under, over, nan)``.

    ``uniform``: over ``edges``; otherwise a log histogram whose window starts at bucket
    ``first`` of the universal grid with ``mantissa_bits``. ``h`` None gives None.
    """
    if h is None:
        return None
    first, counts, under, over, nan = h
    if uniform:
        return Histogram(counts, edges, under, over, nan)
    return Histogram(
        counts,
        None,
        under,
        over,
        nan,
        kind="log",
        first=first,
        mantissa_bits=mantissa_bits,
    )
