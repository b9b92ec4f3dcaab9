"""The universal log-linear bucket layout (edges fixed by the float32 format).

With ``m`` mantissa bits and ``C = 254 * 2**m``, a value rounded to float32 falls in one of
``2*C + 1`` buckets, in ascending value order: ``C`` negative normal buckets, one centre bucket
``[-2**-126, 2**-126]`` holding exact zeros and subnormals, and ``C`` positive normal buckets.
A positive normal value with exponent ``e`` (``2**e <= x < 2**(e+1)``) and top mantissa bits ``t``
falls in ``[2**e (1 + t/2**m), 2**e (1 + (t+1)/2**m))``; negative values mirror this. Every
histogram ever computed with the same ``m`` shares these edges, so histograms from different
tensors, steps, runs and machines merge by adding counts.
"""

from __future__ import annotations

import numpy as np

MIN_NORMAL = 2.0**-126


def center(m: int) -> int:
    """Index of the centre (zero and subnormal) bucket."""
    return 254 << m


def num_buckets(m: int) -> int:
    """Number of buckets of the universal layout with ``m`` mantissa bits."""
    return 2 * center(m) + 1


def _pos_edge(k: np.ndarray, m: int) -> np.ndarray:
    """Lower edge of the k-th positive normal bucket (k = 0 .. C; k = C gives 2**128)."""
    k = np.asarray(k, dtype=np.int64)
    t = (k & ((1 << m) - 1)).astype(np.float64)
    e = (k >> m) - 126
    return np.ldexp(1.0 + t / float(1 << m), e.astype(np.int32))


def edges(first: int, n: int, m: int) -> np.ndarray:
    """Edges (``n + 1`` values) of the buckets ``first .. first + n - 1``."""
    c = center(m)
    i = np.arange(first, first + n + 1, dtype=np.int64)
    out = np.empty(i.shape, dtype=np.float64)
    neg = i <= c
    out[neg] = -_pos_edge(c - i[neg], m)
    out[~neg] = _pos_edge(i[~neg] - c - 1, m)
    return out
