"""distance / pairwise_distances against SciPy and plain NumPy on the in-range counts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.spatial.distance as ssd
import scipy.stats as st
from stats_checks import full_log_counts

import pyweightstat as pws
from pyweightstat.stats.reference import (
    METRICS,
    ref_distance,
    ref_log_edges,
    ref_log_num_buckets,
)


def _scipy_or_numpy(a: np.ndarray, b: np.ndarray, edges: np.ndarray, metric: str) -> float:
    """Independent value of each metric (SciPy where it has one, plain NumPy otherwise)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    p, q = a / a.sum(), b / b.sum()
    if metric == "wasserstein":
        centres = 0.5 * (edges[:-1] + edges[1:])
        return st.wasserstein_distance(centres, centres, a, b)
    if metric == "js":
        return ssd.jensenshannon(p, q, base=2) ** 2
    if metric == "ks":
        return float(np.max(np.abs(np.cumsum(a) / a.sum() - np.cumsum(b) / b.sum())))
    if metric == "hellinger":
        return float(np.sqrt(0.5 * np.sum((np.sqrt(p) - np.sqrt(q)) ** 2)))
    return 0.5 * float(np.sum(np.abs(p - q)))


def _uniform_hists(rng: np.random.Generator, k: int, bins: int = 64) -> list:
    hists = []
    for i in range(k):
        x = (rng.standard_normal(2000 + 100 * i) * (0.5 + 0.1 * i) + 0.05 * i).astype(np.float32)
        hists.append(pws.histogram(x, bins=bins, range=(-3.0, 3.0)))
    return hists


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("bins", [1, 2, 64, 256])
def test_uniform_distance_matches_scipy(metric: str, bins: int, rng: np.random.Generator) -> None:
    h1, h2 = _uniform_hists(rng, 2, bins)
    expected = _scipy_or_numpy(h1.counts, h2.counts, h1.edges, metric)
    got = pws.distance(h1, h2, metric)
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert got == pytest.approx(ref_distance(h1.counts, h2.counts, h1.edges, metric), rel=1e-9)
    assert pws.distance(h2, h1, metric) == pytest.approx(got, rel=1e-12, abs=1e-15)
    assert pws.distance(h1, h1, metric) == pytest.approx(0.0, abs=1e-12)
    if metric != "wasserstein":
        assert 0.0 <= got <= 1.0


@pytest.mark.parametrize("metric", METRICS)
def test_out_of_range_and_nan_are_ignored(metric: str, rng: np.random.Generator) -> None:
    x = rng.standard_normal(1000).astype(np.float32)
    y = np.concatenate([x, np.float32([np.nan, np.inf, -np.inf, 10.0, -10.0])])
    h1 = pws.histogram(x, bins=20, range=(-4.0, 4.0))
    h2 = pws.histogram(y, bins=20, range=(-4.0, 4.0))
    assert h2.overflow == 2 and h2.underflow == 2 and h2.nan_count == 1
    assert pws.distance(h1, h2, metric) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("metric", METRICS)
def test_empty_histogram_gives_nan(metric: str) -> None:
    h1 = pws.histogram(np.linspace(0, 1, 10, dtype=np.float32), bins=5, range=(0.0, 1.0))
    h2 = pws.histogram(np.float32([np.nan, 7.0]), bins=5, range=(0.0, 1.0))
    assert math.isnan(pws.distance(h1, h2, metric))
    assert math.isnan(pws.distance(h2, h1, metric))


def test_disjoint_extremes() -> None:
    h1 = pws.histogram(np.float32([0.1] * 5), bins=4, range=(0.0, 4.0))
    h2 = pws.histogram(np.float32([3.9] * 9), bins=4, range=(0.0, 4.0))
    for metric in ("ks", "js", "hellinger", "tv"):
        assert pws.distance(h1, h2, metric) == pytest.approx(1.0, abs=1e-15), metric
    assert pws.distance(h1, h2, "wasserstein") == pytest.approx(3.0, rel=1e-12)


# ----------------------------------------------------------------------------------------------
# log histograms (windows aligned on the universal grid)
# ----------------------------------------------------------------------------------------------
def _full_pair(h1, h2, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = ref_log_num_buckets(m)
    return full_log_counts(h1, n), full_log_counts(h2, n), ref_log_edges(m)


@pytest.mark.parametrize("metric", METRICS)
def test_log_distance_with_different_windows(metric: str, rng: np.random.Generator) -> None:
    m = 5
    a = (0.02 * rng.standard_normal(5000)).astype(np.float32)
    b = (0.5 * rng.standard_normal(3000) + 0.3).astype(np.float32)
    h1, h2 = pws.log_histogram(a, mantissa_bits=m), pws.log_histogram(b, mantissa_bits=m)
    assert int(h1.first) != int(h2.first) or len(h1.counts) != len(h2.counts)
    p, q, edges = _full_pair(h1, h2, m)
    expected = ref_distance(p, q, edges, metric)
    assert pws.distance(h1, h2, metric) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    used = np.flatnonzero(p + q)
    lo, hi = used[0], used[-1] + 1
    independent = _scipy_or_numpy(p[lo:hi], q[lo:hi], edges[lo : hi + 1], metric)
    assert expected == pytest.approx(independent, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("metric", METRICS)
def test_log_pairwise_with_a_far_away_histogram(metric: str, rng: np.random.Generator) -> None:
    """A third histogram far out on the grid must not change the distance of the other two.

    On a common window that reaches 1e30, buckets are up to ~1e28 wide; once both CDFs have
    reached 1 their difference must be exactly 0 there, not a rounding residue times 1e28.
    """
    m = 7
    a = (0.02 * rng.standard_normal(3001)).astype(np.float32)
    b = (0.03 * rng.standard_normal(2003) + 0.001).astype(np.float32)
    c = np.float32([1e30, 2e30, -1e-30])
    hists = [pws.log_histogram(v, mantissa_bits=m) for v in (a, b, c)]
    d = pws.pairwise_distances(hists, metric)
    p, q, edges = _full_pair(hists[0], hists[1], m)
    expected = ref_distance(p, q, edges, metric)
    assert d[0, 1] == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert pws.distance(hists[0], hists[1], metric) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_distance_uniform_vs_log_raises(rng: np.random.Generator) -> None:
    x = rng.standard_normal(100).astype(np.float32)
    with pytest.raises(ValueError):
        pws.distance(pws.histogram(x, bins=10), pws.log_histogram(x), "tv")


# ----------------------------------------------------------------------------------------------
# K x K
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("metric", METRICS)
def test_pairwise_matrix(metric: str, rng: np.random.Generator) -> None:
    hists = _uniform_hists(rng, 12)
    d = pws.pairwise_distances(hists, metric)
    assert isinstance(d, np.ndarray) and d.shape == (12, 12) and d.dtype == np.float64
    np.testing.assert_array_equal(d, d.T)
    np.testing.assert_array_equal(np.diag(d), np.zeros(12))
    for i in range(12):
        for j in range(12):
            if i != j:
                assert d[i, j] == pytest.approx(
                    pws.distance(hists[i], hists[j], metric), rel=1e-12, abs=1e-15
                )
    i, j = 3, 8
    expected = _scipy_or_numpy(hists[i].counts, hists[j].counts, hists[i].edges, metric)
    assert d[i, j] == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_pairwise_log_hists(rng: np.random.Generator) -> None:
    m = 4
    hists = [
        pws.log_histogram((s * rng.standard_normal(500)).astype(np.float32), mantissa_bits=m)
        for s in (1e-3, 1e-2, 1.0, 1e3)
    ]
    for metric in METRICS:
        d = pws.pairwise_distances(hists, metric)
        for i in range(4):
            for j in range(4):
                p, q, edges = _full_pair(hists[i], hists[j], m)
                expected = 0.0 if i == j else ref_distance(p, q, edges, metric)
                assert d[i, j] == pytest.approx(expected, rel=1e-9, abs=1e-12), (metric, i, j)


def test_pairwise_single_and_generator(rng: np.random.Generator) -> None:
    hists = _uniform_hists(rng, 3)
    d1 = pws.pairwise_distances(hists[:1], "js")
    assert d1.shape == (1, 1) and d1[0, 0] == 0.0
    d = pws.pairwise_distances(iter(hists), "tv")
    assert d.shape == (3, 3)


def test_pairwise_errors(rng: np.random.Generator) -> None:
    hists = _uniform_hists(rng, 3)
    other = pws.histogram(np.zeros(3, np.float32), bins=64, range=(-3.0, 3.5))
    with pytest.raises(ValueError, match="edges"):
        pws.pairwise_distances([*hists, other], "tv")
    with pytest.raises(ValueError, match="metric"):
        pws.pairwise_distances(hists, "cosine")
