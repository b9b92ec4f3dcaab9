"""Quantiles through the universal log histogram: relative error <= 2^-m, any input size."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import pyweightstat as pws
from pyweightstat.stats.reference import ref_quantile_bound

QS = np.array([0.0, 0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999, 1.0])


def _data(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "normal":
        return rng.standard_normal(n)
    if kind == "lognormal":
        return rng.lognormal(0.0, 3.0, n)
    if kind == "weights":  # typical layer weights: small, both signs
        return 0.02 * rng.standard_normal(n)
    if kind == "offset":
        return 1e4 + rng.standard_normal(n)
    return -rng.exponential(1.0, n)


def assert_quantiles_within_bound(got, x, q, m: int) -> None:
    exact, bound = ref_quantile_bound(x, q, m)
    got = np.atleast_1d(np.asarray(got, dtype=np.float64))
    err = np.abs(got - exact)
    bad = ~(err <= bound)
    assert not bad.any(), (
        f"q={np.asarray(q)[bad]}: got {got[bad]}, exact {exact[bad]}, bound {bound[bad]}"
    )


@pytest.mark.parametrize("kind", ["normal", "lognormal", "weights", "offset", "negative"])
@pytest.mark.parametrize("n", [1, 2, 10, 999, 100_000])
@pytest.mark.parametrize("m", [3, 7, 10])
def test_quantile_error_bound(kind: str, n: int, m: int, rng: np.random.Generator) -> None:
    x = _data(kind, n, rng).astype(np.float32)
    assert_quantiles_within_bound(pws.quantile(x, QS, mantissa_bits=m), x, QS, m)


def test_relative_error_at_most_2_pow_minus_m(rng: np.random.Generator) -> None:
    """On continuous data the bound is the plain relative 2^-m (0.78 % at m = 7)."""
    x = rng.lognormal(0.0, 2.0, 1_000_000).astype(np.float32)
    q = np.linspace(0.05, 0.95, 31)  # order-statistic gaps here are << 2^-2m relative
    got = np.asarray(pws.quantile(x, q), dtype=np.float64)
    exact = np.quantile(x.astype(np.float64), q)
    assert np.all(np.abs(got - exact) <= 2.0**-7 * np.abs(exact) * 1.001)


def test_default_mantissa_bits_is_7(rng: np.random.Generator) -> None:
    x = rng.lognormal(0.0, 1.0, 10_000).astype(np.float32)
    assert_quantiles_within_bound(pws.quantile(x, QS), x, QS, 7)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_dtypes(dtype: torch.dtype, rng: np.random.Generator) -> None:
    t = torch.from_numpy(rng.standard_normal(50_000)).to(dtype)
    assert_quantiles_within_bound(pws.quantile(t, QS), t, QS, 7)


def test_scalar_q_returns_float(rng: np.random.Generator) -> None:
    x = rng.standard_normal(1000).astype(np.float32)
    v = pws.quantile(x, 0.3)
    assert isinstance(v, float)
    assert_quantiles_within_bound(v, x, [0.3], 7)
    arr = pws.quantile(x, [0.3, 0.6])
    assert isinstance(arr, np.ndarray) and arr.shape == (2,)


def test_nan_is_ignored(rng: np.random.Generator) -> None:
    x = rng.standard_normal(5000).astype(np.float32)
    x[::7] = np.nan
    finite = x[~np.isnan(x)]
    assert_quantiles_within_bound(pws.quantile(x, QS), finite, QS, 7)


def test_empty_gives_nan() -> None:
    v = pws.quantile(np.empty(0, dtype=np.float32), 0.5)
    assert math.isnan(v)


def test_histogram_quantile_method(rng: np.random.Generator) -> None:
    x = rng.standard_normal(30_000).astype(np.float32)
    h = pws.log_histogram(x, mantissa_bits=6)
    assert_quantiles_within_bound(h.quantile(QS), x, QS, 6)
    a, b = x[:1000], x[1000:]
    merged = pws.log_histogram(a, mantissa_bits=6) + pws.log_histogram(b, mantissa_bits=6)
    np.testing.assert_array_equal(merged.quantile(QS), h.quantile(QS))


def test_more_than_2_pow_24_elements() -> None:
    """torch.quantile refuses inputs above 2^24 elements; pyweightstat.quantile does not."""
    n = 2**24 + 5
    g = torch.Generator().manual_seed(11)
    t = torch.randn(n, generator=g, dtype=torch.float32)
    with pytest.raises(RuntimeError):
        torch.quantile(t, 0.5)
    q = np.array([0.01, 0.5, 0.99])
    got = pws.quantile(t, q)
    x = t.numpy()
    assert_quantiles_within_bound(got, x, q, 7)
