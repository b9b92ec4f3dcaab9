"""Hypothesis property tests over sizes, dtypes, strides, byte orders and special values."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stats_checks import assert_summary_matches, full_log_counts

import pyweightstat as pws
from pyweightstat.stats.reference import (
    ref_histogram,
    ref_log_histogram,
    ref_log_num_buckets,
    ref_moments,
    ref_quantile_bound,
    to_float64,
)

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

DTYPES = ["float16", "bfloat16", "float32", "float64"]


@dataclass
class Case:
    """One generated input: the array passed to the engine plus a description."""

    x: object
    label: str


@st.composite
def inputs(draw: st.DrawFn) -> Case:
    n = draw(st.integers(0, 2000))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**32 - 1))
    kind = draw(st.sampled_from(["normal", "offset", "exponential", "weights", "wide"]))
    step = draw(st.integers(1, 4))
    container = "torch" if dtype == "bfloat16" else draw(st.sampled_from(["numpy", "torch"]))
    big_endian = container == "numpy" and draw(st.booleans())
    reverse = container == "numpy" and draw(st.booleans())
    n_special = draw(st.integers(0, 5))

    g = np.random.default_rng(seed)
    m = n * step
    if kind == "normal":
        v = g.standard_normal(m)
    elif kind == "offset":
        v = 1e3 + g.standard_normal(m)
    elif kind == "exponential":
        v = g.exponential(1.0, m)
    elif kind == "weights":
        v = 0.02 * g.standard_normal(m)
    else:
        v = g.standard_normal(m) * np.exp2(g.uniform(-20, 20, m))
    if m:
        specials = g.choice([np.nan, np.inf, -np.inf, 0.0, -0.0], n_special)
        v[g.integers(0, m, n_special)] = specials
    label = f"{container} {dtype} n={n} step={step} {kind} be={big_endian} rev={reverse}"

    with np.errstate(over="ignore"):
        if container == "torch":
            t = torch.from_numpy(v).to(getattr(torch, dtype))
            return Case(t[::step], label)
        a = v.astype({"float16": np.float16, "float32": np.float32, "float64": np.float64}[dtype])
    if big_endian:
        a = a.astype(a.dtype.newbyteorder(">"))
    a = a[::-step] if reverse else a[::step]
    return Case(a, label)


@SETTINGS
@given(case=inputs())
def test_describe_matches_reference(case: Case) -> None:
    assert_summary_matches(pws.describe(case.x), ref_moments(case.x), case.label)


@SETTINGS
@given(case=inputs(), bins=st.integers(1, 300), use_range=st.booleans())
def test_histogram_counts_exact(case: Case, bins: int, use_range: bool) -> None:
    rng_range = (-1.5, 2.25) if use_range else None
    h = pws.histogram(case.x, bins=bins, range=rng_range)
    counts, under, over, nans = ref_histogram(case.x, bins, rng_range)
    np.testing.assert_array_equal(h.counts, counts, err_msg=case.label)
    assert (h.underflow, h.overflow, h.nan_count) == (under, over, nans), case.label


@SETTINGS
@given(case=inputs(), m=st.integers(0, 10))
def test_log_histogram_counts_exact(case: Case, m: int) -> None:
    h = pws.log_histogram(case.x, mantissa_bits=m)
    counts, under, over, nans = ref_log_histogram(case.x, m)
    np.testing.assert_array_equal(full_log_counts(h, ref_log_num_buckets(m)), counts, case.label)
    assert (h.underflow, h.overflow, h.nan_count) == (under, over, nans), case.label


@SETTINGS
@given(case=inputs(), cut=st.floats(0.0, 1.0))
def test_merge_of_two_parts_equals_whole(case: Case, cut: float) -> None:
    v = to_float64(case.x)
    k = int(cut * v.size)
    flat = case.x.reshape(-1) if isinstance(case.x, torch.Tensor) else np.ravel(case.x)
    a, b = flat[:k], flat[k:]
    merged = pws.describe(a, mantissa_bits=4) + pws.describe(b, mantissa_bits=4)
    assert_summary_matches(merged, ref_moments(v), case.label)
    counts, *_ = ref_log_histogram(v, 4)
    np.testing.assert_array_equal(full_log_counts(merged.hist, ref_log_num_buckets(4)), counts)


@SETTINGS
@given(case=inputs(), q=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=5))
def test_quantile_within_bound(case: Case, q: list[float]) -> None:
    v = to_float64(case.x)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return
    got = np.atleast_1d(np.asarray(pws.quantile(v, q), dtype=np.float64))
    exact, bound = ref_quantile_bound(v, q, 7)
    assert np.all(np.abs(got - exact) <= bound), (case.label, q, got, exact, bound)
