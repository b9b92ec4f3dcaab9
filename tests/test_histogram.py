"""Uniform histograms: exact counts against np.histogram and the float64 reference."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import pyweightstat as pws
from pyweightstat.stats.reference import ref_histogram, ref_histogram_edges, ref_range, to_float64


def assert_hist_equals_ref(h, x, bins: int, rng_range) -> None:
    counts, under, over, nans = ref_histogram(x, bins, rng_range)
    got = np.asarray(h.counts)
    assert got.dtype == np.int64, got.dtype
    np.testing.assert_array_equal(got, counts)
    assert (int(h.underflow), int(h.overflow), int(h.nan_count)) == (under, over, nans)
    lo, hi = ref_range(x, rng_range)
    edges = np.asarray(h.edges)
    assert edges.dtype == np.float64
    np.testing.assert_array_equal(edges, ref_histogram_edges(lo, hi, bins))


def _f64(x) -> np.ndarray:
    return to_float64(x)


# ----------------------------------------------------------------------------------------------
# exact counts
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bins", [1, 2, 7, 256, 1000, 4099])
@pytest.mark.parametrize("rng_range", [None, (-1.0, 1.0), (-0.3, 2.7), (0.1, 0.1 + 1e-3)])
def test_counts_equal_numpy_float32(bins: int, rng_range, rng: np.random.Generator) -> None:
    x = rng.standard_normal(200_003).astype(np.float32)
    h = pws.histogram(x, bins=bins, range=rng_range)
    assert_hist_equals_ref(h, x, bins, rng_range)
    lo, hi = ref_range(x, rng_range)
    expected, edges = np.histogram(x.astype(np.float64), bins, (lo, hi))
    np.testing.assert_array_equal(h.counts, expected)
    np.testing.assert_array_equal(h.edges, edges)
    assert h.kind == "uniform"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("bins", [3, 256])
def test_counts_all_dtypes(dtype: torch.dtype, bins: int, rng: np.random.Generator) -> None:
    t = torch.from_numpy(rng.standard_normal(100_001) * 2).to(dtype)
    for rng_range in [None, (-2.0, 3.0), (-0.7, 0.35)]:
        h = pws.histogram(t, bins=bins, range=rng_range)
        assert_hist_equals_ref(h, t, bins, rng_range)
        lo, hi = ref_range(t, rng_range)
        np.testing.assert_array_equal(h.counts, np.histogram(_f64(t), bins, (lo, hi))[0])


def test_counts_large(big_offset_normal: np.ndarray) -> None:
    x = big_offset_normal
    for bins, rng_range in [(256, None), (1000, (9998.0, 10001.5))]:
        h = pws.histogram(x, bins=bins, range=rng_range)
        assert_hist_equals_ref(h, x, bins, rng_range)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_values_exactly_on_edges(dtype: type) -> None:
    for lo, hi, bins in [(-1.0, 1.0, 256), (-2.0, 3.0, 10), (0.1, 0.7, 6), (-1e3, 1e3, 77)]:
        edges = np.linspace(lo, hi, bins + 1)
        on = edges.astype(dtype)
        x = np.concatenate(
            [on, np.nextafter(on, dtype(-np.inf)), np.nextafter(on, dtype(np.inf)), [hi, hi, lo]]
        ).astype(dtype)
        h = pws.histogram(x, bins=bins, range=(lo, hi))
        assert_hist_equals_ref(h, x, bins, (lo, hi))
        np.testing.assert_array_equal(h.counts, np.histogram(_f64(x), bins, (lo, hi))[0])


def test_edges_not_representable_in_float32(rng: np.random.Generator) -> None:
    # float32 values straddling float64 edges that float32 cannot represent
    lo, hi, bins = -0.3, 0.7, 10
    edges = np.linspace(lo, hi, bins + 1)
    x = np.concatenate(
        [
            edges.astype(np.float32),
            np.nextafter(edges.astype(np.float32), np.float32(np.inf)),
            np.nextafter(edges.astype(np.float32), np.float32(-np.inf)),
            rng.uniform(lo, hi, 10_000).astype(np.float32),
        ]
    )
    h = pws.histogram(x, bins=bins, range=(lo, hi))
    assert_hist_equals_ref(h, x, bins, (lo, hi))


def test_under_overflow_and_nan_counters(rng: np.random.Generator) -> None:
    x = rng.standard_normal(10_000).astype(np.float32)
    x[:7] = np.nan
    x[7:10] = np.inf
    x[10:15] = -np.inf
    h = pws.histogram(x, bins=16, range=(-1.0, 1.5))
    assert_hist_equals_ref(h, x, 16, (-1.0, 1.5))
    assert h.nan_count == 7
    assert h.underflow == np.count_nonzero(x < -1.0)
    assert h.overflow == np.count_nonzero(x > 1.5)
    assert h.counts.sum() + h.underflow + h.overflow + h.nan_count == x.size


def test_auto_range_uses_finite_min_max(rng: np.random.Generator) -> None:
    x = rng.standard_normal(1000).astype(np.float32)
    x[[0, 1, 2]] = [np.inf, -np.inf, np.nan]
    h = pws.histogram(x, bins=10)
    f = x[np.isfinite(x)]
    assert h.edges[0] == f.min() and h.edges[-1] == f.max()
    assert (h.underflow, h.overflow, h.nan_count) == (1, 1, 1)
    assert_hist_equals_ref(h, x, 10, None)


@pytest.mark.parametrize(
    ("values", "rng_range"),
    [([], None), ([np.nan, np.inf], None), ([2.0, 2.0, 2.0], None), ([1.0, 3.0], (1.0, 1.0))],
    ids=["empty", "nonfinite", "constant", "zero_width_range"],
)
def test_degenerate_ranges_follow_numpy(values: list[float], rng_range) -> None:
    x = np.array(values, dtype=np.float32)
    h = pws.histogram(x, bins=4, range=rng_range)
    assert_hist_equals_ref(h, x, 4, rng_range)


def test_default_bins_is_256(rng: np.random.Generator) -> None:
    x = rng.standard_normal(100).astype(np.float32)
    assert len(pws.histogram(x).counts) == 256


def test_strided_and_transposed(rng: np.random.Generator) -> None:
    base = rng.standard_normal((500, 400)).astype(np.float32)
    for v in (base.T, base[::3, 1::2], base[::-1, ::-2]):
        h = pws.histogram(v, bins=50, range=(-2.0, 2.0))
        assert_hist_equals_ref(h, v, 50, (-2.0, 2.0))
    t = torch.from_numpy(base).T[::2]
    assert_hist_equals_ref(pws.histogram(t, bins=50), t, 50, None)


# ----------------------------------------------------------------------------------------------
# determinism across thread counts
# ----------------------------------------------------------------------------------------------
_THREADS_SCRIPT = """
import json, sys
import numpy as np
import pyweightstat as pws
x = (np.random.default_rng(5).standard_normal(3_000_001) * 3).astype(np.float32)
x[::1001] = np.nan
h = pws.histogram(x, bins=1000, range=(-4.0, 4.0))
s = pws.describe(x, bins=333, range=(-5.0, 5.0))
lg = pws.log_histogram(x, mantissa_bits=7)
print(json.dumps([h.counts.tolist(), [h.underflow, h.overflow, h.nan_count],
                  s.hist.counts.tolist(), lg.counts.tolist(), int(lg.first)]))
"""


def test_bit_identical_for_any_thread_count() -> None:
    if hasattr(pws, "set_num_threads"):
        x = (np.random.default_rng(5).standard_normal(3_000_001) * 3).astype(np.float32)
        x[::1001] = np.nan
        results = []
        before = pws.get_num_threads() if hasattr(pws, "get_num_threads") else os.cpu_count()
        for n in (1, 2, 3, 7):
            pws.set_num_threads(n)
            h = pws.histogram(x, bins=1000, range=(-4.0, 4.0))
            s = pws.describe(x, bins=333, range=(-5.0, 5.0))
            lg = pws.log_histogram(x, mantissa_bits=7)
            results.append(
                (h.counts.tolist(), s.hist.counts.tolist(), lg.counts.tolist(), int(lg.first))
            )
        pws.set_num_threads(before or 1)
        assert all(r == results[0] for r in results)
        return
    outs = []
    for n in ("1", "2", "5"):
        env = dict(os.environ, OMP_NUM_THREADS=n)
        proc = subprocess.run(
            [sys.executable, "-c", _THREADS_SCRIPT],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        outs.append(json.loads(proc.stdout))
    assert all(o == outs[0] for o in outs)


# ----------------------------------------------------------------------------------------------
# histogram filled by describe
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rng_range", [None, (-1.0, 2.0)])
def test_describe_hist_equals_histogram(rng_range, rng: np.random.Generator) -> None:
    x = rng.standard_normal(50_001).astype(np.float32)
    x[:3] = [np.nan, np.inf, -np.inf]
    s = pws.describe(x, bins=64, range=rng_range)
    h = pws.histogram(x, bins=64, range=rng_range)
    np.testing.assert_array_equal(s.hist.counts, h.counts)
    np.testing.assert_array_equal(s.hist.edges, h.edges)
    assert (s.hist.underflow, s.hist.overflow, s.hist.nan_count) == (
        h.underflow,
        h.overflow,
        h.nan_count,
    )
    assert_hist_equals_ref(s.hist, x, 64, rng_range)
    assert pws.describe(x).hist is None


def test_describe_many_with_bins(rng: np.random.Generator) -> None:
    xs = [rng.standard_normal(n).astype(np.float32) for n in (10, 1000, 0, 5)]
    summaries, total = pws.describe_many(xs, total=True, bins=20, range=(-3.0, 3.0))
    for s, x in zip(summaries, xs, strict=True):
        assert_hist_equals_ref(s.hist, x, 20, (-3.0, 3.0))
    assert_hist_equals_ref(total.hist, np.concatenate(xs), 20, (-3.0, 3.0))


# ----------------------------------------------------------------------------------------------
# merge, update, serialisation
# ----------------------------------------------------------------------------------------------
def test_merge_and_add(rng: np.random.Generator) -> None:
    a = rng.standard_normal(1000).astype(np.float32)
    b = (rng.standard_normal(3000) + 2).astype(np.float32)
    b[:4] = np.nan
    ha = pws.histogram(a, bins=30, range=(-2.0, 2.0))
    hb = pws.histogram(b, bins=30, range=(-2.0, 2.0))
    both = np.concatenate([a, b])
    counts_a = ha.counts.copy()
    assert_hist_equals_ref(ha.merge(hb), both, 30, (-2.0, 2.0))
    np.testing.assert_array_equal(ha.counts, counts_a)  # operands are not modified
    assert_hist_equals_ref(ha + hb, both, 30, (-2.0, 2.0))
    assert (ha + hb).total == ha.total + hb.total


def test_update_equals_histogram_of_concatenation(rng: np.random.Generator) -> None:
    chunks = [rng.standard_normal(n).astype(np.float32) for n in (100, 0, 5000, 1)]
    h = pws.histogram(chunks[0], bins=40, range=(-3.0, 3.0))
    for c in chunks[1:]:
        h.update(c)
    assert_hist_equals_ref(h, np.concatenate(chunks), 40, (-3.0, 3.0))
    h.update(torch.from_numpy(chunks[2]).to(torch.bfloat16))
    both = np.concatenate([*chunks, to_float64(torch.from_numpy(chunks[2]).to(torch.bfloat16))])
    assert_hist_equals_ref(h, both, 40, (-3.0, 3.0))


@pytest.mark.parametrize(
    ("kw1", "kw2"),
    [
        ({"bins": 10, "range": (0.0, 1.0)}, {"bins": 11, "range": (0.0, 1.0)}),
        ({"bins": 10, "range": (0.0, 1.0)}, {"bins": 10, "range": (0.0, 1.5)}),
        ({"bins": 10, "range": (0.0, 1.0)}, {"bins": 10, "range": (-1e-9, 1.0)}),
    ],
)
def test_merge_mismatched_edges_raises(kw1: dict, kw2: dict) -> None:
    x = np.linspace(0, 1, 100, dtype=np.float32)
    h1, h2 = pws.histogram(x, **kw1), pws.histogram(x, **kw2)
    with pytest.raises(ValueError, match="edges"):
        h1.merge(h2)
    with pytest.raises(ValueError, match="edges"):
        _ = h1 + h2


def test_merge_uniform_with_log_raises() -> None:
    x = np.linspace(0, 1, 100, dtype=np.float32)
    with pytest.raises(ValueError):
        pws.histogram(x, bins=10).merge(pws.log_histogram(x))


def test_to_dict_from_dict_round_trip(rng: np.random.Generator) -> None:
    x = rng.standard_normal(1000).astype(np.float32)
    x[0] = np.nan
    h = pws.histogram(x, bins=17, range=(-1.0, 1.0))
    d = h.to_dict()
    json.dumps(d)  # plain JSON-serialisable data
    h2 = pws.Histogram.from_dict(d)
    np.testing.assert_array_equal(h2.counts, h.counts)
    np.testing.assert_array_equal(h2.edges, h.edges)
    assert (h2.underflow, h2.overflow, h2.nan_count, h2.total, h2.kind) == (
        h.underflow,
        h.overflow,
        h.nan_count,
        h.total,
        h.kind,
    )
    assert_hist_equals_ref(h2 + h, np.concatenate([x, x]), 17, (-1.0, 1.0))


# ----------------------------------------------------------------------------------------------
# quantile / cdf / density
# ----------------------------------------------------------------------------------------------
def test_density_matches_numpy(rng: np.random.Generator) -> None:
    x = rng.uniform(-1, 3, 10_000).astype(np.float32)
    h = pws.histogram(x, bins=25, range=(-1.0, 3.0))
    expected, _ = np.histogram(x.astype(np.float64), 25, (-1.0, 3.0), density=True)
    np.testing.assert_allclose(h.density(), expected, rtol=1e-12)


def test_cdf_matches_cumulative_counts(rng: np.random.Generator) -> None:
    x = rng.standard_normal(10_000).astype(np.float32)
    h = pws.histogram(x, bins=25, range=(-5.0, 5.0))
    counts, *_ = ref_histogram(x, 25, (-5.0, 5.0))
    cdf = np.asarray(h.cdf())
    expected = np.cumsum(counts) / counts.sum()
    np.testing.assert_allclose(cdf[-expected.size :], expected, rtol=1e-12)
    assert np.all(np.diff(cdf) >= 0) and cdf[-1] == pytest.approx(1.0)


@pytest.mark.parametrize("q", [0.0, 0.01, 0.25, 0.5, 0.9, 1.0])
def test_quantile_within_one_bin_of_numpy(q: float, rng: np.random.Generator) -> None:
    x = rng.standard_normal(100_000).astype(np.float32)
    bins = 200
    h = pws.histogram(x, bins=bins)
    width = (h.edges[-1] - h.edges[0]) / bins
    expected = np.quantile(x.astype(np.float64), q)
    assert abs(float(h.quantile(q)) - expected) <= width * (1 + 1e-9)
    qs = np.array([0.1, 0.5, 0.9])
    np.testing.assert_allclose(h.quantile(qs), np.quantile(x.astype(np.float64), qs), atol=width)
