"""Assertion helpers shared by the engine tests (tolerances of issue 2, 'Accuracy')."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pyweightstat.stats.reference import SUMMARY_FIELDS, ref_moments

COUNT_FIELDS = ("count", "nan_count", "posinf_count", "neginf_count", "zero_count")

# Bounds of issue 2 for float32 input against a float64 two-pass reference of the same values.
# They apply to float16/bfloat16/float64 input too (moments are accumulated in high precision).
MEAN_TOL_STD = 1e-6  # |mean - ref| <= 1e-6 * std
VAR_RTOL = 1e-5
SKEW_ATOL = 1e-4
KURT_ATOL = 1e-3
NORM_RTOL = 1e-6


def summary_dict(s: Any) -> dict[str, float | int]:
    """Read the Summary fields of an engine result as plain Python numbers."""
    out: dict[str, float | int] = {}
    for name in SUMMARY_FIELDS:
        value = getattr(s, name)
        out[name] = int(value) if name in COUNT_FIELDS else float(value)
    return out


def _same_nan(a: float, b: float) -> bool:
    return math.isnan(a) and math.isnan(b)


def assert_summary_matches(s: Any, ref: dict[str, float | int], label: str = "") -> None:
    """Check an engine ``Summary`` against :func:`ref_moments` output with issue 2's bounds.

    Counts, min and max must be exact; NaN must appear exactly where the reference has NaN.
    """
    got = summary_dict(s)
    where = f" [{label}]" if label else ""
    for name in COUNT_FIELDS:
        assert got[name] == ref[name], f"{name}{where}: got {got[name]}, expected {ref[name]}"
    for name in SUMMARY_FIELDS:
        if name in COUNT_FIELDS:
            continue
        g, r = got[name], float(ref[name])
        assert math.isnan(g) == math.isnan(r), f"{name}{where}: got {g}, expected {r}"
    for name in ("min", "max"):
        g, r = got[name], float(ref[name])
        assert g == r or _same_nan(g, r), f"{name}{where}: got {g!r}, expected exactly {r!r}"
    if ref["count"] == 0:
        return
    std = float(ref["std"])
    mean_err = abs(got["mean"] - float(ref["mean"]))
    assert mean_err <= MEAN_TOL_STD * std, (
        f"mean{where}: got {got['mean']!r}, expected {ref['mean']!r} "
        f"(error {mean_err:.3g} > {MEAN_TOL_STD}*std = {MEAN_TOL_STD * std:.3g})"
    )
    for name in ("var", "std"):
        g, r = got[name], float(ref[name])
        assert abs(g - r) <= VAR_RTOL * r, f"{name}{where}: got {g!r}, expected {r!r}"
    for name, tol in (("skew", SKEW_ATOL), ("kurtosis", KURT_ATOL)):
        g, r = got[name], float(ref[name])
        if math.isnan(r):
            continue
        assert abs(g - r) <= tol, f"{name}{where}: got {g!r}, expected {r!r} (atol {tol})"
    for name in ("l1", "l2", "linf"):
        g, r = got[name], float(ref[name])
        assert abs(g - r) <= NORM_RTOL * r, f"{name}{where}: got {g!r}, expected {r!r}"


def assert_same_counts(s: Any, c: Any, label: str = "") -> None:
    """Two engine results (e.g. a device's and the CPU engine's) with equal counts and equal
    extremes (NaN where both have none)."""
    for name in COUNT_FIELDS:
        assert getattr(s, name) == getattr(c, name), (label, name)
    for name in ("min", "max"):
        a, b = getattr(s, name), getattr(c, name)
        assert a == b or _same_nan(a, b), (label, name, a, b)


def assert_describe_matches(x: Any, s: Any, label: str = "") -> None:
    """Shorthand: compare ``s`` with ``ref_moments(x)``."""
    assert_summary_matches(s, ref_moments(x), label)


def full_log_counts(h: Any, n_buckets: int) -> np.ndarray:
    """Expand a log ``Histogram`` window (``first``, ``counts``) onto the full universal grid."""
    counts = np.asarray(h.counts)
    assert counts.dtype == np.int64, f"counts dtype is {counts.dtype}, expected int64"
    first = int(h.first)
    assert 0 <= first and first + counts.size <= n_buckets, (first, counts.size, n_buckets)
    full = np.zeros(n_buckets, dtype=np.int64)
    full[first : first + counts.size] = counts
    return full
