"""Inputs shared by the CUDA tests: ``tests/test_cuda.py`` on a GPU, and the host-emulated
``tests/test_cuda_emulated.py`` / ``tests/emulated_bindings_checks.py`` everywhere else."""

from __future__ import annotations

import numpy as np
import torch
from stats_checks import full_log_counts

import pyweightstat as pws
from pyweightstat.stats.reference import ref_log_histogram, ref_log_num_buckets

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def weights_like(
    n: int, dtype: torch.dtype, seed: int = 0, specials: bool = True, device: str = "cpu"
) -> torch.Tensor:
    """``n`` weights-like values (0.3 + 0.05 N(0, 1)) on ``device``; with ``specials`` (and
    ``n >= 64``) 10 zeros, 5 NaN, 3 +Inf, 2 -Inf and 5 negative zeros at random places."""
    g = torch.Generator(device=device).manual_seed(seed)
    x = (0.3 + 0.05 * torch.randn(n, generator=g, device=device, dtype=torch.float64)).to(dtype)
    if specials and n >= 64:
        idx = torch.randperm(n, generator=g, device=device)[:40]
        x[idx[:10]] = 0.0
        x[idx[10:15]] = float("nan")
        x[idx[15:18]] = float("inf")
        x[idx[18:20]] = float("-inf")
        x[idx[20:25]] = -0.0
    return x


def random_bit_patterns(n: int, dtype: torch.dtype, g: torch.Generator) -> torch.Tensor:
    """Every class of float (normals of every exponent, subnormals, +-0, +-Inf, NaN): ``n``
    random bit patterns of ``dtype`` (float64: every float32 value, widened), followed by their
    finite values again, so that whole groups of a kernel take its fast path."""
    if dtype in (torch.float32, torch.float64):
        bits = torch.randint(-(2**31), 2**31, (n,), generator=g, dtype=torch.int64)
        x = bits.to(torch.int32).view(torch.float32).to(dtype)
    else:
        bits = torch.randint(-(2**15), 2**15, (n,), generator=g, dtype=torch.int64)
        x = bits.to(torch.int16).view(dtype)
    return torch.cat([x, x[torch.isfinite(x)]])


def extremes_beside_infinities(dtype: torch.dtype, chunk: int = 1 << 16) -> list[torch.Tensor]:
    """Tensors of 0.5s whose finite minimum and maximum share a thread's 16-byte loads with an
    infinity: the 16-bit kernels take the extremes on packed words and re-read the values of a
    thread that met an infinity. In the first tensor the thread meets ``-inf`` and ``-3`` in one
    load and ``+inf`` and ``7`` one loop step (1024 loads) apart, in whole steps of a chunk; in
    the second ``-inf`` and ``-2.5`` fall in the partial step of a short last chunk. Each also
    holds zeros in that thread's loads. (Vector indices are those of the 16-bit kernels: 8 values
    per load, 256 threads.)"""
    a = torch.full((2 * chunk + 4099,), 0.5, dtype=torch.float64)
    a[8 * 1000 + 1], a[8 * 1000 + 5], a[8 * 1000 + 6] = float("-inf"), -3.0, 0.0
    a[8 * 3000 + 6], a[8 * (3000 + 1024) + 2], a[8 * 3000 + 7] = float("inf"), 7.0, -0.0
    b = torch.full((chunk + 4099,), 0.5, dtype=torch.float64)
    b[chunk + 8 * 100 + 3], b[chunk + 8 * 100], b[chunk + 8 * 356] = float("-inf"), -2.5, 0.0
    return [a.to(dtype), b.to(dtype)]


def param_list(
    sizes: tuple[int, ...] = (0, 1, 768, 3072, 70_000, 590_000), device: str = "cpu"
) -> list[torch.Tensor]:
    """230 tensors, more than one launch table (200), cycling through ``sizes`` (multiples of
    16, or < 16) and the dtypes, every 7th transposed, every 5th with special values."""
    xs = []
    for i in range(230):
        n = sizes[i % len(sizes)]
        x = weights_like(n, DTYPES[i % 4], seed=100 + i, specials=i % 5 == 0, device=device)
        if i % 7 == 0 and n >= 768:
            x = x.reshape(-1, 16).t()
        xs.append(x)
    return xs


def plan_inputs(first: int = 1_000_003, device: str = "cpu") -> list[torch.Tensor]:
    """The inputs of the plan tests: every dtype, an unaligned, a strided and an empty tensor,
    and one with no special values; the first tensor has ``first`` values."""
    return [
        weights_like(first, torch.float32, device=device),
        weights_like(70_000, torch.bfloat16, 1, device=device),
        weights_like(5000, torch.float16, 2, device=device),
        weights_like(3000, torch.float64, 3, device=device),
        weights_like(40_000, torch.float32, 4, device=device)[1:],  # not 16-byte aligned
        weights_like(64 * 33, torch.float32, 5, device=device).view(64, 33).t(),  # strided
        torch.empty(0, device=device),
        weights_like(3, torch.float32, 6, specials=False, device=device),
    ]


def assert_log_hist_matches_reference(h: pws.Histogram, x: torch.Tensor, m: int) -> None:
    """Exact counts, counters and window (no empty bucket at either end) against the float64
    reference, and equality with the CPU engine."""
    counts, under, over, nan = ref_log_histogram(x, m)
    np.testing.assert_array_equal(full_log_counts(h, ref_log_num_buckets(m)), counts)
    assert (h.underflow, h.overflow, h.nan_count) == (under, over, nan)
    nz = np.flatnonzero(counts)
    if nz.size:
        assert h.first == nz[0] and h.counts.size == nz[-1] - nz[0] + 1  # the exact window
    else:
        assert h.counts.size == 0
    assert h == pws.log_histogram(x.cpu(), mantissa_bits=m)
