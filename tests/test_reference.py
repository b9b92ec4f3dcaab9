"""The float64 reference (pyweightstat.stats.reference) checked against SciPy/NumPy/plain loops.

The reference is the oracle of every engine test, so it is itself tested against independent
code here: scipy.stats for moments, numpy.histogram for uniform histograms, the bit formula of
docs/architecture.md for log buckets, scipy.stats / scipy.spatial for distances.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.spatial.distance as ssd
import scipy.stats as st
import torch

from pyweightstat.stats import reference as R

DISTRIBUTIONS = ("normal", "offset", "exponential", "student_t", "lognormal")


def _sample(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "normal":
        return rng.standard_normal(n)
    if kind == "offset":
        return 1e4 + rng.standard_normal(n)
    if kind == "exponential":
        return rng.exponential(2.0, n)
    if kind == "student_t":
        return rng.standard_t(5, n)
    return rng.lognormal(0.0, 1.0, n)


# ----------------------------------------------------------------------------------------------
# moments
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", DISTRIBUTIONS)
@pytest.mark.parametrize("n", [2, 17, 1000, 100_000])
def test_moments_match_scipy(kind: str, n: int, rng: np.random.Generator) -> None:
    x = _sample(kind, n, rng).astype(np.float32)
    f = x.astype(np.float64)
    ref = R.ref_moments(x)
    assert ref["count"] == n
    assert ref["min"] == f.min() and ref["max"] == f.max()
    exact_mean = math.fsum(f) / n
    assert abs(ref["mean"] - exact_mean) <= 1e-14 * np.std(f)
    assert ref["var"] == pytest.approx(np.var(f), rel=1e-12)
    assert ref["std"] == pytest.approx(np.std(f), rel=1e-12)
    assert ref["skew"] == pytest.approx(st.skew(f), rel=1e-9, abs=1e-12)
    assert ref["kurtosis"] == pytest.approx(st.kurtosis(f), rel=1e-9, abs=1e-12)
    assert ref["l1"] == pytest.approx(math.fsum(np.abs(f)), rel=1e-13)
    assert ref["l2"] == pytest.approx(math.sqrt(math.fsum(f * f)), rel=1e-13)
    assert ref["linf"] == np.abs(f).max()
    assert ref["zero_count"] == 0


def test_moments_ignore_and_count_nonfinite(rng: np.random.Generator) -> None:
    f = rng.standard_normal(500)
    f[[3, 10, 11]] = 0.0
    f[[7]] = -0.0
    x = f.copy()
    x[[0, 5]] = np.nan
    x[[1]] = np.inf
    x[[2, 20, 30]] = -np.inf
    finite = x[np.isfinite(x)]
    ref = R.ref_moments(x)
    assert (ref["nan_count"], ref["posinf_count"], ref["neginf_count"]) == (2, 1, 3)
    assert ref["count"] == finite.size == 494
    assert ref["zero_count"] == 4
    assert ref["mean"] == pytest.approx(np.mean(finite), rel=1e-12)
    assert ref["skew"] == pytest.approx(st.skew(finite), rel=1e-9)
    assert ref["kurtosis"] == pytest.approx(st.kurtosis(finite), rel=1e-9)
    assert ref["min"] == finite.min() and ref["max"] == finite.max()


@pytest.mark.parametrize("values", [[], [np.nan, np.inf, -np.inf]])
def test_moments_empty(values: list[float]) -> None:
    ref = R.ref_moments(np.array(values, dtype=np.float32))
    assert ref["count"] == 0
    for name in ("mean", "var", "std", "skew", "kurtosis", "min", "max", "linf"):
        assert math.isnan(ref[name]), name
    assert ref["l1"] == ref["l2"] == 0.0


@pytest.mark.parametrize("values", [[0.1] * 7, [2.5], [-3.0] * 1000, [0.0] * 4])
def test_moments_constant_and_single(values: list[float]) -> None:
    x = np.array(values, dtype=np.float32)
    ref = R.ref_moments(x)
    v = float(x[0])
    assert ref["mean"] == v and ref["min"] == v and ref["max"] == v
    assert ref["var"] == 0.0 and ref["std"] == 0.0
    assert math.isnan(ref["skew"]) and math.isnan(ref["kurtosis"])
    # SciPy also gives NaN for constant input (and warns about it)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert math.isnan(st.skew(x.astype(np.float64)))
        assert math.isnan(st.kurtosis(x.astype(np.float64)))


def test_to_float64_inputs(rng: np.random.Generator) -> None:
    base = rng.standard_normal((6, 5)).astype(np.float32)
    expected = base.astype(np.float64).reshape(-1)
    np.testing.assert_array_equal(R.to_float64(base), expected)
    np.testing.assert_array_equal(R.to_float64(base.astype(">f4")), expected)
    np.testing.assert_array_equal(R.to_float64(torch.from_numpy(base)), expected)
    np.testing.assert_array_equal(R.to_float64(base.T), base.T.astype(np.float64).reshape(-1))
    np.testing.assert_array_equal(R.to_float64(base[::-1, ::2]), base[::-1, ::2].reshape(-1))
    bf = torch.from_numpy(base).to(torch.bfloat16)
    np.testing.assert_array_equal(R.to_float64(bf), bf.float().numpy().astype(np.float64).ravel())


# ----------------------------------------------------------------------------------------------
# uniform histograms
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bins", [1, 3, 256, 1000])
@pytest.mark.parametrize("rng_range", [None, (-1.0, 1.0), (-0.3, 2.7), (0.1, 0.1 + 1e-3)])
def test_histogram_matches_numpy(
    bins: int, rng_range: tuple[float, float] | None, rng: np.random.Generator
) -> None:
    x = rng.standard_normal(20_000).astype(np.float32)
    if rng_range is not None:
        # put values exactly on (float32-rounded) edges and on hi
        edges32 = np.linspace(*rng_range, bins + 1).astype(np.float32)
        x = np.concatenate([x, edges32, np.float32([rng_range[1]] * 3)])
    counts, under, over, nans = R.ref_histogram(x, bins, rng_range)
    f = x.astype(np.float64)
    expected, _ = np.histogram(f, bins, rng_range)
    np.testing.assert_array_equal(counts, expected)
    assert counts.dtype == np.int64
    lo, hi = R.ref_range(f, rng_range)
    assert under == np.count_nonzero(f < lo) and over == np.count_nonzero(f > hi)
    assert nans == 0
    assert counts.sum() + under + over == x.size


def test_histogram_values_on_every_edge() -> None:
    lo, hi, bins = -2.0, 3.0, 10
    edges = np.linspace(lo, hi, bins + 1)
    x = np.concatenate([edges, np.nextafter(edges, -np.inf), np.nextafter(edges, np.inf)])
    counts, under, over, _ = R.ref_histogram(x, bins, (lo, hi))
    expected, _ = np.histogram(x, bins, (lo, hi))
    np.testing.assert_array_equal(counts, expected)
    assert (under, over) == (1, 1)
    # every edge value opens its bin, except hi which closes the last bin
    manual = np.zeros(bins, dtype=np.int64)
    for v in x:
        if lo <= v <= hi:
            i = next(i for i in range(bins) if edges[i] <= v < edges[i + 1] or i == bins - 1)
            manual[i] += 1
    np.testing.assert_array_equal(counts, manual)


def test_histogram_counters_and_auto_range() -> None:
    x = np.array([np.nan, np.inf, -np.inf, -np.inf, 1.0, 2.0, 5.0, np.nan, np.nan])
    counts, under, over, nans = R.ref_histogram(x, 4, None)
    assert R.ref_range(x, None) == (1.0, 5.0)
    np.testing.assert_array_equal(counts, [1, 1, 0, 1])
    assert (under, over, nans) == (2, 1, 3)
    counts, under, over, nans = R.ref_histogram(x, 2, (1.5, 4.0))
    np.testing.assert_array_equal(counts, [1, 0])
    assert (under, over, nans) == (3, 2, 3)


@pytest.mark.parametrize(
    ("values", "rng_range", "expected_range"),
    [([], None, (0.0, 1.0)), ([2.0, 2.0], None, (1.5, 2.5)), ([1.0], (1.0, 1.0), (0.5, 1.5))],
)
def test_histogram_degenerate_range_like_numpy(
    values: list[float], rng_range: tuple[float, float] | None, expected_range: tuple
) -> None:
    x = np.array(values, dtype=np.float64)
    assert R.ref_range(x, rng_range) == expected_range
    counts, *_ = R.ref_histogram(x, 5, rng_range)
    np.testing.assert_array_equal(counts, np.histogram(x, 5, rng_range)[0])


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"bins": 0}, "bins"),
        ({"range": (1.0, 0.0)}, "range"),
        ({"range": (0.0, np.inf)}, "range"),
        ({"range": (np.nan, 1.0)}, "range"),
    ],
)
def test_histogram_reference_rejects(kwargs: dict, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        R.ref_histogram(np.zeros(3), **kwargs)


# ----------------------------------------------------------------------------------------------
# universal log-linear buckets
# ----------------------------------------------------------------------------------------------
def _bits_bucket_index(x32: np.ndarray, m: int) -> np.ndarray:
    """The bit formula of docs/architecture.md (independent of the frexp reference)."""
    c = 254 * 2**m
    bits = x32.view(np.uint32).astype(np.int64)
    mag = bits & 0x7FFFFFFF
    key = (mag >> (23 - m)) - 2**m
    out = np.where(bits >> 31 == 1, c - 1 - key, c + 1 + key)
    out[mag < 0x00800000] = c  # zeros and subnormals
    out[np.isnan(x32)] = R.LOG_NAN
    out[x32 == np.inf] = 2 * c + 1
    out[x32 == -np.inf] = -1
    return out


def _interesting_float32(rng: np.random.Generator) -> np.ndarray:
    mags = np.exp2(rng.uniform(-149, 128, 5000)) * rng.choice([-1.0, 1.0], 5000)
    special = [0.0, -0.0, 2.0**-149, -(2.0**-149), 2.0**-126, -(2.0**-126), 2.0**-127, 1.0, -1.0]
    special += [np.finfo(np.float32).max, -np.finfo(np.float32).max, np.inf, -np.inf, np.nan]
    with np.errstate(over="ignore"):
        x = np.concatenate([mags, special, rng.standard_normal(2000)]).astype(np.float32)
    return x


@pytest.mark.parametrize("m", [0, 1, 3, 7, 10])
def test_log_bucket_index_matches_bit_formula(m: int, rng: np.random.Generator) -> None:
    x = _interesting_float32(rng)
    edges = R.ref_log_edges(m)
    x = np.concatenate([x, edges[1:-1].astype(np.float32)])  # every finite edge exactly
    idx = R.ref_log_bucket_index(x, m)
    np.testing.assert_array_equal(idx, _bits_bucket_index(x, m))
    sample = x[:: max(1, x.size // 400)]
    scalar = [R._log_bucket_index_scalar(float(v), m) for v in sample]
    np.testing.assert_array_equal(R.ref_log_bucket_index(sample, m), scalar)


@pytest.mark.parametrize("m", [0, 2, 7, 10])
def test_log_edges_contain_their_values(m: int, rng: np.random.Generator) -> None:
    c = R.ref_log_centre_index(m)
    edges = R.ref_log_edges(m)
    assert edges.size == R.ref_log_num_buckets(m) + 1 == 2 * 254 * 2**m + 2
    assert np.all(np.diff(edges) > 0)
    np.testing.assert_array_equal(edges, -edges[::-1])
    assert edges[c] == -(2.0**-126) and edges[c + 1] == 2.0**-126 and edges[-1] == 2.0**128
    np.testing.assert_array_equal(edges[1:-1], edges[1:-1].astype(np.float32))
    x = _interesting_float32(rng).astype(np.float64)
    x = x[np.isfinite(x)]
    idx = R.ref_log_bucket_index(x, m)
    pos, neg = x >= 2.0**-126, x <= -(2.0**-126)
    assert np.all((edges[idx[pos]] <= x[pos]) & (x[pos] < edges[idx[pos] + 1]))
    assert np.all((edges[idx[neg]] < x[neg]) & (x[neg] <= edges[idx[neg] + 1]))
    assert np.all(idx[~pos & ~neg] == c)
    # relative width of every normal bucket is at most 2^-m
    lo_mag = np.minimum(np.abs(edges[:-1]), np.abs(edges[1:]))
    width = np.diff(edges)
    normal = np.arange(edges.size - 1) != c
    assert np.all(width[normal] <= 2.0**-m * lo_mag[normal])


def test_log_histogram_counters_and_rounding() -> None:
    m = 3
    n = R.ref_log_num_buckets(m)
    x = np.array([np.nan, np.inf, -np.inf, 1e300, -1e39, 0.0, -0.0, 1e-40, 1e-45, 1e-50, 1.0])
    counts, under, over, nans = R.ref_log_histogram(x, m)
    assert (under, over, nans) == (2, 2, 1)  # 1e300 and -1e39 round to ±inf in float32
    c = R.ref_log_centre_index(m)
    assert counts[c] == 5  # zeros, subnormals and 1e-50 (rounds to 0)
    assert counts[c + 1 + 126 * 2**m] == 1  # 1.0: biased exponent 127, mantissa 0
    assert counts.sum() == 6 and counts.size == n


# ----------------------------------------------------------------------------------------------
# quantile bound
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("m", [2, 7])
def test_quantile_bound_covers_any_point_of_the_bucket(m: int, rng: np.random.Generator) -> None:
    x = np.concatenate([rng.lognormal(0, 2, 3000), -rng.exponential(1.0, 1000), np.zeros(20)])
    q = np.array([0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0])
    exact, bound = R.ref_quantile_bound(x, q, m)
    np.testing.assert_array_equal(exact, np.quantile(x, q))
    edges = R.ref_log_edges(m)
    x_lo = np.quantile(x, q, method="lower")
    for k in range(q.size):
        i = int(R.ref_log_bucket_index([x_lo[k]], m)[0])
        for estimate in (edges[i], edges[i + 1], 0.5 * (edges[i] + edges[i + 1])):
            assert abs(estimate - exact[k]) <= bound[k], (q[k], estimate, exact[k], bound[k])
    assert np.all(np.isnan(R.ref_quantile_bound([np.nan], [0.5], m)[0]))


# ----------------------------------------------------------------------------------------------
# distances
# ----------------------------------------------------------------------------------------------
def _hist_pair(rng: np.random.Generator, bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    edges = np.linspace(-4, 4, bins + 1)
    a, _ = np.histogram(rng.standard_normal(5000), edges)
    b, _ = np.histogram(0.5 + 1.3 * rng.standard_normal(3000), edges)
    return a, b, edges


@pytest.mark.parametrize("bins", [1, 2, 30, 256])
def test_distances_match_scipy_and_loops(bins: int, rng: np.random.Generator) -> None:
    a, b, edges = _hist_pair(rng, bins)
    p, q = a / a.sum(), b / b.sum()
    centres = 0.5 * (edges[:-1] + edges[1:])
    pairs = list(zip(p, q, strict=True))
    expected = {
        "wasserstein": st.wasserstein_distance(centres, centres, a, b),
        "js": ssd.jensenshannon(p, q, base=2) ** 2,
        "ks": max(abs(sum(p[: i + 1]) - sum(q[: i + 1])) for i in range(bins)),
        "hellinger": math.sqrt(0.5 * sum((math.sqrt(u) - math.sqrt(v)) ** 2 for u, v in pairs)),
        "tv": 0.5 * sum(abs(u - v) for u, v in pairs),
    }
    for metric, value in expected.items():
        got = R.ref_distance(a, b, edges, metric)
        assert got == pytest.approx(value, rel=1e-9, abs=1e-12), metric
        assert R.ref_distance(b, a, edges, metric) == pytest.approx(got, rel=1e-12, abs=1e-15)
        assert R.ref_distance(a, 3 * a, edges, metric) == pytest.approx(0.0, abs=1e-12)


def test_distances_on_log_grid_match_scipy(rng: np.random.Generator) -> None:
    m = 4
    edges = R.ref_log_edges(m)
    a = R.ref_log_histogram(rng.standard_normal(3000) * 0.02, m)[0]
    b = R.ref_log_histogram(rng.standard_normal(2000) * 0.05 + 0.01, m)[0]
    used = np.flatnonzero(a + b)
    lo, hi = used[0], used[-1] + 1  # a common window: distances ignore empty outer buckets
    centres = 0.5 * (edges[lo:hi] + edges[lo + 1 : hi + 1])
    expected = st.wasserstein_distance(centres, centres, a[lo:hi], b[lo:hi])
    assert R.ref_distance(a, b, edges, "wasserstein") == pytest.approx(expected, rel=1e-9)
    js = ssd.jensenshannon(a / a.sum(), b / b.sum(), base=2) ** 2
    assert R.ref_distance(a[lo:hi], b[lo:hi], edges[lo : hi + 1], "js") == pytest.approx(js)


def test_distance_extremes_and_errors() -> None:
    edges = np.arange(5.0)
    a, b = np.array([3, 0, 0, 0]), np.array([0, 0, 0, 7])
    assert R.ref_distance(a, b, edges, "tv") == 1.0
    assert R.ref_distance(a, b, edges, "ks") == 1.0
    assert R.ref_distance(a, b, edges, "js") == 1.0
    assert R.ref_distance(a, b, edges, "hellinger") == 1.0
    assert R.ref_distance(a, b, edges, "wasserstein") == 3.0
    for metric in R.METRICS:
        assert math.isnan(R.ref_distance(a, np.zeros(4), edges, metric))
    with pytest.raises(ValueError, match="metric"):
        R.ref_distance(a, b, edges, "euclid")
    with pytest.raises(ValueError, match="length"):
        R.ref_distance(a, b[:3], edges, "tv")
