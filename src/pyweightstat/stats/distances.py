"""Distances between histograms that share edges, computed in C++ on the counts."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .histogram import Histogram

METRICS = {"wasserstein": 0, "ks": 1, "js": 2, "hellinger": 3, "tv": 4}


def _metric_code(metric: str) -> int:
    if not isinstance(metric, str) or metric not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}; got {metric!r}")
    return METRICS[metric]


def common_counts(hists: Sequence[Histogram], name: str = "hists") -> tuple[np.ndarray, np.ndarray]:
    """Stack the counts of histograms on their common edges: ``(K, B)`` counts and B centres.

    Uniform histograms must have identical edges. Log histograms must share ``mantissa_bits``;
    their windows are aligned on the universal grid.
    """
    hists = list(hists)
    if not hists:
        raise ValueError(f"{name} is empty")
    for i, h in enumerate(hists):
        if not isinstance(h, Histogram):
            raise TypeError(f"{name}[{i}] must be a Histogram; got {type(h).__name__}")
    h0 = hists[0]
    for i, h in enumerate(hists[1:], start=1):
        try:
            h0._check_compatible(h)
        except ValueError as e:
            raise ValueError(f"{name}[0] and {name}[{i}] do not share edges: {e}") from None
    if h0.kind == "uniform":
        return np.stack([h.counts for h in hists]), h0.centres
    trimmed = [h._trimmed() for h in hists]
    nonempty = [h for h in trimmed if h.counts.size]
    if not nonempty:
        return np.zeros((len(hists), 1), np.int64), np.zeros(1)
    first = min(h.first for h in nonempty)
    n = max(h.first + h.counts.size for h in nonempty) - first
    counts = np.stack([h.aligned(first, n) for h in trimmed])
    grid = Histogram(
        np.zeros(n, np.int64), None, kind="log", first=first, mantissa_bits=h0.mantissa_bits
    )
    return counts, grid.centres


def distance(h1: Histogram, h2: Histogram, metric: str = "wasserstein") -> float:
    """Distance between two histograms with common edges.

    The in-range counts of each histogram are normalised to probabilities (under/overflow and
    NaN ignored); an empty histogram gives NaN.

    Parameters
    ----------
    h1, h2 : Histogram
        Histograms on the same edges (same uniform bins, or log histograms with the same
        ``mantissa_bits``).
    metric : str
        ``"wasserstein"`` (W1 with bin centres as support, as ``scipy.stats.wasserstein_distance``
        with centres as values and counts as weights), ``"ks"`` (largest CDF difference),
        ``"js"`` (Jensen-Shannon divergence in bits, in [0, 1]), ``"hellinger"``
        (``sqrt(1 - sum(sqrt(p q)))``, in [0, 1]) or ``"tv"`` (total variation, in [0, 1]).
    """
    code = _metric_code(metric)
    from .. import _C

    counts, centres = common_counts([h1, h2], "(h1, h2)")
    return float(_C.rowwise_distances(counts[:1], counts[1:], centres, code)[0])


def pairwise_distances(hists: Sequence[Histogram], metric: str = "wasserstein") -> np.ndarray:
    """K x K matrix of :func:`distance` between every pair of ``hists`` in one call.

    Returns
    -------
    numpy.ndarray
        Symmetric float64 ``(K, K)`` matrix with a zero diagonal (NaN rows for empty histograms).
    """
    code = _metric_code(metric)
    from .. import _C

    counts, centres = common_counts(hists)
    return _C.pairwise_distances(counts, centres, code)
