"""Universal log-linear histograms against the frexp-based float64 reference."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from stats_checks import full_log_counts

import pyweightstat as pws
from pyweightstat.stats.reference import (
    ref_log_centre_index,
    ref_log_edges,
    ref_log_histogram,
    ref_log_num_buckets,
    to_float64,
)


def assert_log_hist_equals_ref(h, x, m: int) -> None:
    counts, under, over, nans = ref_log_histogram(x, m)
    n = ref_log_num_buckets(m)
    full = full_log_counts(h, n)
    np.testing.assert_array_equal(full, counts)
    assert (int(h.underflow), int(h.overflow), int(h.nan_count)) == (under, over, nans)
    first, length = int(h.first), len(h.counts)
    edges = np.asarray(h.edges)
    assert edges.dtype == np.float64 and edges.size == length + 1
    np.testing.assert_array_equal(edges, ref_log_edges(m)[first : first + length + 1])
    assert h.kind == "log"


def _wide_values(rng: np.random.Generator, n: int) -> np.ndarray:
    mags = np.exp2(rng.uniform(-140, 120, n)) * rng.choice([-1.0, 1.0], n)
    return np.concatenate([mags, rng.standard_normal(n) * 0.02])


@pytest.mark.parametrize("m", [0, 1, 3, 7, 10])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_counts_equal_reference(m: int, dtype: torch.dtype, rng: np.random.Generator) -> None:
    with np.errstate(over="ignore"):
        t = torch.from_numpy(_wide_values(rng, 20_000)).to(dtype)
    h = pws.log_histogram(t, mantissa_bits=m)
    assert_log_hist_equals_ref(h, t, m)


def test_default_mantissa_bits_is_7(rng: np.random.Generator) -> None:
    x = rng.standard_normal(10_000).astype(np.float32)
    h = pws.log_histogram(x)
    assert_log_hist_equals_ref(h, x, 7)


def test_large_input(big_offset_normal: np.ndarray) -> None:
    h = pws.log_histogram(big_offset_normal, mantissa_bits=7)
    assert_log_hist_equals_ref(h, big_offset_normal, 7)


@pytest.mark.parametrize("m", [0, 5, 10])
def test_values_on_every_bucket_edge(m: int) -> None:
    edges = ref_log_edges(m)[1:-1].astype(np.float32)  # every finite edge is a float32
    x = np.concatenate(
        [
            edges,
            np.nextafter(edges, np.float32(np.inf)),
            np.nextafter(edges, np.float32(-np.inf)),
        ]
    )
    h = pws.log_histogram(x, mantissa_bits=m)
    assert_log_hist_equals_ref(h, x, m)
    assert int(h.counts.sum()) == x.size


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_zero_and_subnormals_in_centre_bucket(dtype: type) -> None:
    tiny = np.finfo(dtype).smallest_subnormal
    x = np.array([0.0, -0.0, tiny, -tiny, 3 * tiny, 1.0], dtype=dtype)
    m = 7
    h = pws.log_histogram(x, mantissa_bits=m)
    assert_log_hist_equals_ref(h, x, m)
    full = full_log_counts(h, ref_log_num_buckets(m))
    c = ref_log_centre_index(m)
    expected_centre = 5 if dtype is not np.float16 else 2  # float16 subnormals are float32 normals
    assert full[c] == expected_centre


def test_special_value_counters() -> None:
    x = np.array([np.nan, np.inf, -np.inf, -np.inf, np.nan, np.nan, 2.0], dtype=np.float32)
    h = pws.log_histogram(x)
    assert (h.underflow, h.overflow, h.nan_count) == (2, 1, 3)
    assert int(h.counts.sum()) == 1
    assert_log_hist_equals_ref(h, x, 7)


def test_float64_beyond_float32_range_rounds_to_inf() -> None:
    x = np.array([1e300, -1e300, 3.5e38, 1e-300, -1e-300, 1.0])
    h = pws.log_histogram(x, mantissa_bits=4)
    assert (h.underflow, h.overflow) == (1, 2)
    assert_log_hist_equals_ref(h, x, 4)


def test_empty_input() -> None:
    h = pws.log_histogram(np.empty(0, dtype=np.float32))
    assert int(np.asarray(h.counts).sum()) == 0
    assert (h.underflow, h.overflow, h.nan_count) == (0, 0, 0)
    assert h.total == 0


# ----------------------------------------------------------------------------------------------
# merging across windows, describe, update
# ----------------------------------------------------------------------------------------------
def test_merge_different_windows(rng: np.random.Generator) -> None:
    m = 5
    a = (1e-3 * rng.random(1000) + 1e-6).astype(np.float32)  # small positive
    b = (-1e4 * rng.random(500) - 1.0).astype(np.float32)  # large negative
    c = np.array([np.nan, np.inf], dtype=np.float32)
    ha, hb, hc = (pws.log_histogram(v, mantissa_bits=m) for v in (a, b, c))
    assert int(ha.first) != int(hb.first)
    both = np.concatenate([a, b])
    assert_log_hist_equals_ref(ha.merge(hb), both, m)
    assert_log_hist_equals_ref(hb + ha, both, m)
    assert_log_hist_equals_ref(ha + hb + hc, np.concatenate([both, c]), m)
    assert_log_hist_equals_ref(hc + ha, np.concatenate([c, a]), m)
    empty = pws.log_histogram(np.empty(0, dtype=np.float32), mantissa_bits=m)
    assert_log_hist_equals_ref(empty + ha, a, m)
    assert_log_hist_equals_ref(ha + empty, a, m)


def test_merge_different_mantissa_bits_raises() -> None:
    x = np.linspace(-1, 1, 100, dtype=np.float32)
    with pytest.raises(ValueError):
        pws.log_histogram(x, mantissa_bits=3).merge(pws.log_histogram(x, mantissa_bits=4))


def test_update_grows_window(rng: np.random.Generator) -> None:
    m = 6
    parts = [
        rng.standard_normal(100).astype(np.float32),
        np.float32([1e30, -1e-30]),
        np.empty(0, np.float32),
        rng.standard_normal(10).astype(np.float32) * 1e-20,
    ]
    h = pws.log_histogram(parts[0], mantissa_bits=m)
    for p in parts[1:]:
        h.update(p)
    assert_log_hist_equals_ref(h, np.concatenate(parts), m)


@pytest.mark.parametrize("m", [2, 7])
def test_describe_fills_log_hist(m: int, rng: np.random.Generator) -> None:
    x = rng.standard_normal(20_000).astype(np.float32)
    x[:3] = [np.nan, np.inf, 0.0]
    s = pws.describe(x, mantissa_bits=m)
    assert_log_hist_equals_ref(s.hist, x, m)
    summaries, total = pws.describe_many([x, x[:10] * 1e6, x[:0]], total=True, mantissa_bits=m)
    assert_log_hist_equals_ref(summaries[1].hist, x[:10] * 1e6, m)
    assert_log_hist_equals_ref(total.hist, np.concatenate([x, x[:10] * 1e6]), m)


def test_summary_merge_merges_log_hist(rng: np.random.Generator) -> None:
    a = rng.standard_normal(300).astype(np.float32)
    b = rng.standard_normal(200).astype(np.float32) * 1e5
    s = pws.describe(a, mantissa_bits=3) + pws.describe(b, mantissa_bits=3)
    assert_log_hist_equals_ref(s.hist, np.concatenate([a, b]), 3)


def test_to_dict_from_dict_round_trip(rng: np.random.Generator) -> None:
    x = rng.standard_normal(1000).astype(np.float32)
    h = pws.log_histogram(x, mantissa_bits=5)
    d = h.to_dict()
    json.dumps(d)
    h2 = pws.Histogram.from_dict(d)
    assert_log_hist_equals_ref(h2, x, 5)
    assert_log_hist_equals_ref(h2 + pws.log_histogram(-x, mantissa_bits=5), np.r_[x, -x], 5)


def test_torch_and_numpy_agree(rng: np.random.Generator) -> None:
    x = rng.standard_normal((100, 50)).astype(np.float32)
    h1 = pws.log_histogram(x.T, mantissa_bits=4)
    h2 = pws.log_histogram(torch.from_numpy(x).T, mantissa_bits=4)
    np.testing.assert_array_equal(h1.counts, h2.counts)
    assert int(h1.first) == int(h2.first)
    assert_log_hist_equals_ref(h1, to_float64(x.T), 4)
