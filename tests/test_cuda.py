"""The CUDA engine against the float64 reference and the CPU engine (``pytest -m cuda``).

Counts, extremes and histograms must be exactly equal; moments must meet the SPEC bounds;
results must be bit-identical across runs and between ``describe_many`` and per-tensor calls.
Every test is skipped without a CUDA build of pyweightstat and a visible GPU.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from cuda_cases import (
    DTYPES,
    assert_log_hist_matches_reference,
    extremes_beside_infinities,
    param_list,
    plan_inputs,
    random_bit_patterns,
    weights_like,
)
from stats_checks import assert_same_counts, assert_summary_matches, full_log_counts

import pyweightstat as pws
from pyweightstat import _C
from pyweightstat.stats import api
from pyweightstat.stats.reference import (
    ref_histogram,
    ref_histogram_edges,
    ref_log_histogram,
    ref_log_num_buckets,
    ref_moments,
    ref_range,
)


def _cuda_usable() -> bool:
    try:
        return bool(pws.build_info()["cuda"]) and torch.cuda.is_available()
    except Exception:
        return False


pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not _cuda_usable(), reason="needs a CUDA build of pyweightstat and a GPU"),
]

DEV = "cuda"


def _data(n: int, dtype: torch.dtype, seed: int = 0, specials: bool = True) -> torch.Tensor:
    """Weights-like values with zeros, NaN and +/-Inf sprinkled in, made on the GPU."""
    return weights_like(n, dtype, seed, specials, device=DEV)


def _state(s: pws.Summary) -> tuple[np.ndarray, np.ndarray]:
    f, n = s._state()
    return np.array(f), np.array(n)


def _assert_same_summary(a: pws.Summary, b: pws.Summary) -> None:
    """Bit-identical states and equal histograms."""
    fa, na = _state(a)
    fb, nb = _state(b)
    np.testing.assert_array_equal(na, nb)
    assert fa.tobytes() == fb.tobytes(), (fa, fb)
    assert (a.hist is None) == (b.hist is None)
    if a.hist is not None:
        assert a.hist == b.hist


# ------------------------------------------------------------------------------ moments
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 7, 1000, 65536 + 13, 1_000_003])
def test_moments_match_reference_and_cpu(dtype: torch.dtype, n: int) -> None:
    x = _data(n, dtype, seed=n)
    s = pws.describe(x)
    assert not s.on_host  # nothing copied before a value is read
    assert_summary_matches(s, ref_moments(x), f"{dtype} n={n}")
    assert_same_counts(s, pws.describe(x.cpu()), f"{dtype} n={n}")


@pytest.mark.parametrize("mantissa_bits", [None, 3])
def test_extremes_of_threads_that_met_an_infinity(mantissa_bits: int | None) -> None:
    # 16-bit inputs take their extremes on packed words (HMNMX2) and re-read them in a thread
    # that met an infinity; the same cases as the emulated test
    for dtype in DTYPES:
        long, short = extremes_beside_infinities(dtype)
        for x, want in ((long, (-3.0, 7.0, 1, 1, 2)), (short, (-2.5, 0.5, 0, 1, 1))):
            s = pws.describe(x.cuda(), mantissa_bits=mantissa_bits)
            got = (s.min, s.max, s.posinf_count, s.neginf_count, s.zero_count)
            assert got == want, (dtype, x.numel())
            c = pws.describe(x, mantissa_bits=mantissa_bits)
            assert got == (c.min, c.max, c.posinf_count, c.neginf_count, c.zero_count)
            if mantissa_bits is not None:
                assert s.hist == c.hist


def test_large_offset_accuracy() -> None:
    # SPEC: 1e4 + N(0, 1) in float32 (catastrophic cancellation for naive sums).
    g = torch.Generator(device=DEV).manual_seed(1)
    x = (1e4 + torch.randn(1 << 24, generator=g, device=DEV, dtype=torch.float32)).contiguous()
    assert_summary_matches(pws.describe(x), ref_moments(x), "1e4 + N(0,1)")


def test_constant_and_empty() -> None:
    c = pws.describe(torch.full((5000,), 2.5, device=DEV))
    assert c.count == 5000 and c.mean == 2.5 and c.var == 0.0
    assert np.isnan(c.skew) and np.isnan(c.kurtosis)
    e = pws.describe(torch.empty(0, device=DEV))
    assert e.count == 0 and np.isnan(e.mean) and np.isnan(e.min) and e.l1 == 0.0
    only_nan = pws.describe(torch.full((100,), float("nan"), device=DEV))
    assert only_nan.count == 0 and only_nan.nan_count == 100 and np.isnan(only_nan.max)
    h = pws.log_histogram(torch.empty((0, 3), device=DEV), mantissa_bits=3)
    assert h.counts.size == 0 and h.total == 0
    u = pws.histogram(torch.empty(0, device=DEV), bins=4)
    np.testing.assert_array_equal(u.counts, np.zeros(4, np.int64))
    np.testing.assert_array_equal(u.edges, np.linspace(0.0, 1.0, 5))


# ------------------------------------------------------------------------------ layouts
def _strided_cases() -> list[tuple[str, torch.Tensor]]:
    base = _data(6 * 50 * 70, torch.float32, seed=3).reshape(6, 50, 70)
    big = _data(2 * 3 * 2 * 3 * 2 * 3 * 2 * 5, torch.float32, seed=4).reshape(
        2, 3, 2, 3, 2, 3, 2, 5
    )
    return [
        ("transposed", base.transpose(0, 2)),
        ("sliced", base[:, ::3, 1:]),
        ("unaligned", base.reshape(-1)[1:]),
        ("expanded", _data(70, torch.float32, seed=5).expand(40, 70)),
        ("scalar", torch.tensor(1.5, device=DEV)),
        ("bf16 permuted", base.to(torch.bfloat16).permute(1, 2, 0)),
        ("f64 column", base.to(torch.float64)[:, :, 3]),
        ("8-d permuted", big.permute(7, 6, 5, 4, 3, 2, 1, 0)),
    ]


@pytest.mark.parametrize("case", range(8))
def test_strided_inputs(case: int) -> None:
    label, x = _strided_cases()[case]
    s = pws.describe(x, mantissa_bits=4)
    assert_summary_matches(s, ref_moments(x), label)
    counts, under, over, nan = ref_log_histogram(x, 4)
    np.testing.assert_array_equal(full_log_counts(s.hist, ref_log_num_buckets(4)), counts)
    assert (s.hist.underflow, s.hist.overflow, s.hist.nan_count) == (under, over, nan)
    assert s.hist == pws.log_histogram(x.cpu(), mantissa_bits=4)


# ------------------------------------------------------------------------------ histograms
@pytest.mark.parametrize("dtype", DTYPES)
# shared-memory counters (<= 6000 bins), global memory (20000)
@pytest.mark.parametrize("bins", [1, 7, 256, 6000, 20000])
@pytest.mark.parametrize("with_range", [False, True])
def test_uniform_histogram_exact(dtype: torch.dtype, bins: int, with_range: bool) -> None:
    x = _data(200_003, dtype, seed=bins)
    rng = (0.2, 0.4) if with_range else None
    if with_range:  # values exactly on edges
        e = torch.tensor(ref_histogram_edges(0.2, 0.4, bins), device=DEV).to(dtype)
        x = torch.cat([x, e, e])
    h = pws.histogram(x, bins=bins, range=rng)
    counts, under, over, nan = ref_histogram(x, bins, rng)
    np.testing.assert_array_equal(h.counts, counts)
    assert (h.underflow, h.overflow, h.nan_count) == (under, over, nan)
    lo, hi = ref_range(x, rng)
    np.testing.assert_array_equal(h.edges, ref_histogram_edges(lo, hi, bins))
    assert h == pws.histogram(x.cpu(), bins=bins, range=rng)


def test_uniform_edges_on_device_match_linspace() -> None:
    # Awkward ranges: the device recomputes np.linspace's exact float64 edges.
    for lo, hi, bins in [(-1e-3, 7.1, 13), (1e-30, 3e-30, 1000), (5.0, 5.0, 3), (-2.0, 1e6, 77)]:
        x = torch.tensor([lo, hi], device=DEV, dtype=torch.float64)
        h = pws.histogram(x, bins=bins)
        np.testing.assert_array_equal(h.edges, ref_histogram_edges(*ref_range(x), bins))
        h2 = pws.histogram(x, bins=bins, range=(lo, hi) if lo < hi else None)
        assert h2.total == 2


def test_uniform_explicit_edges() -> None:
    x = _data(10_000, torch.float32, seed=9)
    with pytest.raises(ValueError, match="equally spaced"):
        pws.Histogram(np.zeros(3, np.int64), np.array([0.0, 0.25, 0.3, 1.0]))
    # edges that are equal-width but not exactly np.linspace's: counted against these edges
    edges = np.linspace(0.1, 0.5, 33)
    edges[1:-1] += 1e-9
    like = pws.Histogram(np.zeros(32, np.int64), edges)
    h = api._histogram_same_layout(x, like)
    v = x.cpu().double().numpy()
    counts, _ = np.histogram(v[np.isfinite(v)], bins=like.edges)
    np.testing.assert_array_equal(h.counts, counts)
    assert h == api._histogram_same_layout(x.cpu(), like)


@pytest.mark.parametrize("dtype", DTYPES)
# shared-memory counters (m <= 5); a shared band of them, global memory outside it (m >= 6)
@pytest.mark.parametrize("m", [0, 3, 4, 5, 7, 10])
def test_log_histogram_exact(dtype: torch.dtype, m: int) -> None:
    x = _data(300_001, dtype, seed=m)
    x = torch.cat([x, -x[:1000], x[:500] * 1e-3, torch.zeros(7, device=DEV, dtype=dtype)])
    h = pws.log_histogram(x, mantissa_bits=m)
    counts, under, over, nan = ref_log_histogram(x, m)
    np.testing.assert_array_equal(full_log_counts(h, ref_log_num_buckets(m)), counts)
    assert (h.underflow, h.overflow, h.nan_count) == (under, over, nan)
    nz = np.flatnonzero(counts)
    assert h.first == nz[0] and h.counts.size == nz[-1] - nz[0] + 1  # trimmed window
    assert h == pws.log_histogram(x.cpu(), mantissa_bits=m)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("m", [0, 3, 5, 10])  # m = 10: a shared band, global memory outside it
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_log_histogram_random_bit_patterns(dtype: torch.dtype, m: int, layout: str) -> None:
    # Every class of float at once (normals of every exponent, subnormals, +-0, +-Inf, NaN), for
    # the branch-free bucket formula of the kernels' fast and general paths.
    g = torch.Generator().manual_seed(m)
    x = random_bit_patterns(1_000_003, dtype, g).to(DEV)
    if layout == "strided":  # the generic kernel's strided loads
        x = x[: 2 * (x.numel() // 2)].reshape(-1, 2).t()
    assert_log_hist_matches_reference(pws.log_histogram(x, mantissa_bits=m), x, m)


def test_log_histogram_window_across_chunks() -> None:
    # The window comes from each chunk's finite extremes: the lowest and highest buckets sit in
    # different chunks, one chunk holds no finite value at all, and a tensor has only NaN.
    n = 3 * 65536 + 17
    x = torch.full((n,), 0.5, device=DEV)
    x[65536 : 2 * 65536] = float("nan")
    x[65536 + 5] = float("inf")
    x[100] = -3e-39  # a negative subnormal: the zero bucket
    x[2 * 65536 + 9] = -7.0  # the lowest bucket, in the third chunk
    x[n - 1] = 1e30  # the highest, in the last (short) chunk
    only_nan = torch.full((1000,), float("nan"), device=DEV)
    for m in (0, 3):
        res = pws.describe_many([x, only_nan], mantissa_bits=m)
        for t, r in zip([x, only_nan], res, strict=True):
            assert_log_hist_matches_reference(r.hist, t, m)
        assert res[1].hist.counts.size == 0


def test_float64_beyond_float32_range_goes_to_overflow() -> None:
    x = torch.tensor([1.0, 1e300, -1e300, 2.0], device=DEV, dtype=torch.float64)
    h = pws.log_histogram(x, mantissa_bits=3)
    assert (h.underflow, h.overflow, h.in_range) == (1, 1, 2)
    assert h == pws.log_histogram(x.cpu(), mantissa_bits=3)


def test_quantile_matches_cpu() -> None:
    x = _data(100_000, torch.float32, seed=11)
    q = [0.0, 0.01, 0.5, 0.99, 1.0]
    np.testing.assert_array_equal(pws.quantile(x, q), pws.quantile(x.cpu(), q))


def _assert_matches_cpu(s: pws.Summary, x: torch.Tensor, ref: dict, kw: dict) -> None:
    """A device result of ``x`` (described with ``kw``) against the float64 reference and the CPU
    engine: moments within the bounds, counts, extremes and histogram exactly."""
    label = f"{x.dtype} n={x.numel()}"
    assert_summary_matches(s, ref, label)
    c = pws.describe(x.cpu(), **kw)
    assert_same_counts(s, c, label)
    if kw:
        assert s.hist == c.hist, label


@pytest.mark.parametrize("kw", [{}, {"bins": 64}])  # bins without range: data edges need the merge
def test_two_level_merge_of_large_tensors(kw: dict) -> None:
    # Tensors of more than 256 chunks (16.7 M values) have their chunk states merged in groups of
    # 256 first; in one launch with tensors that have no groups (the group-table search).
    sizes = [(1000, torch.float32), (20_000_003, torch.float32), (70_000, torch.bfloat16)]
    sizes += [(17_000_000, torch.bfloat16), (16_777_216, torch.float32)]  # 256 chunks: one level
    xs = [_data(n, dtype, seed=n) for n, dtype in sizes]
    res, total = pws.describe_many(xs, total=True, **kw)
    for x, s in zip(xs, res, strict=True):
        _assert_matches_cpu(s, x, ref_moments(x), kw)
    allx = torch.cat([x.reshape(-1).double() for x in xs])
    assert_summary_matches(total, ref_moments(allx), "total")


@pytest.fixture(scope="module")
def long_chunk_inputs() -> list[tuple[torch.Tensor, dict]]:
    # From 320 x 2^17 values on, a tensor is cut in chunks of 2^17, from 320 x 2^18 in chunks of
    # 2^18 values (describe_cuda.h chunk_length); 10^8 values: 382 chunks, merged in two levels.
    # With a uniform histogram the chunks stay at 2^16 values.
    sizes = [(320 << 17, torch.bfloat16), (50_000_017, torch.float32), (10**8 + 7, torch.bfloat16)]
    assert [_C.cuda_chunk_length(n) for n, _ in sizes] == [1 << 17, 1 << 17, 1 << 18]
    assert {_C.cuda_chunk_length(n, uniform_histogram=True) for n, _ in sizes} == {1 << 16}
    xs = [_data(n, dtype, seed=n) for n, dtype in sizes]
    xs[1][(1 << 17) - 1 : (1 << 17) + 2] = torch.tensor([float("nan"), float("inf"), 0.0])
    return [(x, ref_moments(x)) for x in xs]


@pytest.mark.parametrize("kw", [{}, {"mantissa_bits": 7}, {"bins": 64}])
def test_longer_chunks_of_large_tensors(kw: dict, long_chunk_inputs: list) -> None:
    xs = [x for x, _ in long_chunk_inputs]
    res = pws.describe_many(xs, **kw)
    for (x, ref), s in zip(long_chunk_inputs, res, strict=True):
        _assert_matches_cpu(s, x, ref, kw)
        _assert_same_summary(s, pws.describe(x, **kw))  # one tensor alone: the same launch shape


# ------------------------------------------------------------------------------ many tensors
def _param_list() -> list[torch.Tensor]:
    # > 200 tensors (two launches), mixed dtypes, sizes and layouts, with empties.
    return param_list(device=DEV)


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"mantissa_bits": 3},
        {"mantissa_bits": 7},
        {"bins": 64},
        {"bins": 64, "range": (0.0, 0.5)},
    ],
)
def test_describe_many_matches_per_tensor_and_total(kw: dict) -> None:
    xs = _param_list()
    res, total = pws.describe_many(xs, total=True, **kw)
    assert len(res) == len(xs) and not total.on_host
    for x, s in zip(xs, res, strict=True):
        _assert_same_summary(s, pws.describe(x, **kw))
    cpu_res, cpu_total = pws.describe_many([x.cpu() for x in xs], total=True, **kw)
    for s, c in zip(res, cpu_res, strict=True):
        assert s.count == c.count and s.nan_count == c.nan_count and s.zero_count == c.zero_count
        assert s.hist == c.hist
    allx = torch.cat([x.reshape(-1).double() for x in xs])
    assert_summary_matches(total, ref_moments(allx), "total")
    assert total.hist == cpu_total.hist  # None for per-tensor uniform ranges, as on the CPU


def test_repeated_runs_bit_identical() -> None:
    xs = [*_param_list()[:40], _data(3_000_000, torch.float32, seed=5)]
    a = pws.describe_many(xs, mantissa_bits=5)
    b = pws.describe_many(xs, mantissa_bits=5)
    for sa, sb in zip(a, b, strict=True):
        _assert_same_summary(sa, sb)
    ua = pws.histogram(xs[-1], bins=300)
    ub = pws.histogram(xs[-1], bins=300)
    assert ua == ub


def test_results_shared_buffer_and_lifetime() -> None:
    xs = [_data(1000 + i, torch.float32, seed=i) for i in range(4)]
    res = pws.describe_many(xs)
    assert all(not s.on_host for s in res)
    call = res[0]._fetch.call
    _ = res[2].mean  # one fetch copies every tensor's state ...
    assert call._res is not None and call._handle is None  # ... and frees the device buffer
    del xs
    # _data puts 10 non-finite values (5 NaN, 3 +Inf, 2 -Inf) into each tensor
    assert [s.count for s in res] == [990, 991, 992, 993]


class _NotTorch:
    """A DLPack producer that is not a torch.Tensor (legacy default stream, cudaMallocAsync)."""

    def __init__(self, t: torch.Tensor) -> None:
        self._t = t
        self.shape = tuple(t.shape)

    def __dlpack__(self, stream: int | None = None, **kw: object) -> object:
        return self._t.__dlpack__(stream=stream)

    def __dlpack_device__(self) -> tuple[int, int]:
        return self._t.__dlpack_device__()


def test_other_dlpack_producer() -> None:
    x = _data(123_457, torch.float32, seed=21)
    torch.cuda.synchronize()
    s = pws.describe(_NotTorch(x), mantissa_bits=3)
    _assert_same_summary(s, pws.describe(x, mantissa_bits=3))
    res, total = pws.describe_many([_NotTorch(x), _NotTorch(x[:1000])], total=True)
    assert total.count == res[0].count + res[1].count
    del s, res, total
    gc.collect()  # frees the cudaMallocAsync buffers (stream-ordered)
    torch.cuda.synchronize()


# ------------------------------------------------------------------------------ > 2**31 values
def test_more_than_2_pow_31_values() -> None:
    n = (1 << 31) + 17
    free, _ = torch.cuda.mem_get_info()
    if free < 3 * n:
        pytest.skip("needs ~6 GiB of free GPU memory")
    x = torch.ones(n, dtype=torch.bfloat16, device=DEV)
    x[:1000] = -2.0
    x[-17:] = 4.0
    x[(1 << 31) + 3] = float("nan")  # replaces one of the seventeen 4.0 values
    s = pws.describe(x, mantissa_bits=2)
    k = n - 1000 - 17  # ones
    assert s.count == n - 1 and s.nan_count == 1 and s.zero_count == 0
    assert (s.min, s.max) == (-2.0, 4.0)
    mean = (k - 2000.0 + 64.0) / (n - 1)
    var = (k * (1 - mean) ** 2 + 1000 * (-2 - mean) ** 2 + 16 * (4 - mean) ** 2) / (n - 1)
    assert abs(s.mean - mean) <= 1e-6 * np.sqrt(var)
    assert abs(s.var - var) <= 1e-5 * var

    assert s.l1 == k + 2000.0 + 64.0
    h = s.hist
    assert h.total == n - 1 and h.nan_count == 1 and int(h.counts.max()) == k
    del x
    torch.cuda.empty_cache()


# ------------------------------------------------------------------------------ streams, no sync
def test_side_stream_ordering() -> None:
    side = torch.cuda.Stream()
    x = torch.zeros(4_000_000, device=DEV)
    torch.cuda.synchronize()
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)  # delay the producer: a missing dependency would show
        x.fill_(3.0)
        s = pws.describe(x, mantissa_bits=3)
    assert s.count == 4_000_000 and s.mean == 3.0 and s.min == 3.0  # fetch waits on `side`


def test_plan_launches_on_the_current_stream() -> None:
    # Plan.launch takes the current stream's handle from torch's raw getter: the same stream as
    # torch.cuda.current_stream, a side stream inside torch.cuda.stream(side) included.
    from pyweightstat.stats import _cuda

    side = torch.cuda.Stream()
    x = torch.zeros(4_000_000, device=DEV)
    plan = _cuda.Plan([x], 3)
    assert plan._stream() == torch.cuda.current_stream().cuda_stream
    torch.cuda.synchronize()
    with torch.cuda.stream(side):
        assert plan._stream() == side.cuda_stream != torch.cuda.default_stream().cuda_stream
        torch.cuda._sleep(50_000_000)  # delay the producer: a launch on another stream would
        x.fill_(3.0)  # read the zeros
        res = plan.launch()
    f, n, *_ = _cuda.fetch_many([res])
    assert n[0, 0, 0] == 4_000_000 and n[0, 0, 4] == 0  # count, zeros
    assert f[0, 0, 0] == 3.0 and f[0, 0, 4] == 3.0 and f[0, 0, 5] == 3.0  # mean, min, max


def test_plan_launch_phases_add_up_to_at_most_the_call() -> None:
    # bench_stats' in-loop diagnostic: the C++ layer's clock of each phase of a launch on a GPU
    from pyweightstat.stats import _cuda

    x = torch.randn(1_000_000, device=DEV)
    plan = _cuda.Plan([x, x[:1000]], 3)
    _cuda.fetch_many([plan.launch()])  # warm-up
    for _ in range(3):
        t0 = time.perf_counter()
        res = plan.launch()
        wall = time.perf_counter() - t0
        phases = _cuda.last_launch_phases()
        assert phases is not None and len(phases) == 8 and min(phases.values()) >= 0
        assert 0 < sum(phases.values()) <= wall and phases["pass"] > 0
    n = _cuda.fetch_many([res])[1]
    assert n[0, 0, 0] == 1_000_000 and n[0, 2, 0] == 1_001_000


def test_enqueue_does_not_block_the_host() -> None:
    xs = _param_list()[:60]
    assert pws.describe_many(xs, mantissa_bits=3, total=True)[1].count > 0  # warm-up
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    torch.cuda._sleep(400_000_000)  # ~0.2 s of GPU time queued ahead of the engine's work
    res, total = pws.describe_many(xs, mantissa_bits=3, total=True)
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    t2 = time.perf_counter()
    assert t1 - t0 < 0.5 * (t2 - t0), (t1 - t0, t2 - t0)
    try:
        with warnings.catch_warnings():  # torch warns that the debug mode is a prototype
            warnings.simplefilter("ignore", UserWarning)
            torch.cuda.set_sync_debug_mode("error")
        pws.describe_many(xs, bins=32, range=(0.0, 1.0), total=True)  # no torch-side sync either
        pws.describe_many(xs, bins=32)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert total.count == sum(s.count for s in res)


def _warm_up_beside_a_capture(xs: list[torch.Tensor]) -> None:
    """Load the kernels of describe_many(xs, mantissa_bits=3, total=True) on a side stream, as
    torch recommends before capturing a graph."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            _, total = pws.describe_many(xs, mantissa_bits=3, total=True)
            _ = total.count
    torch.cuda.current_stream().wait_stream(side)


def test_cuda_graph_capture_and_replay() -> None:
    xs = [_data(n, torch.float32, seed=n) for n in (5, 3000, 70_000, 200_000)]
    _warm_up_beside_a_capture(xs)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        res, total = pws.describe_many(xs, mantissa_bits=3, total=True)
    g.replay()
    with torch.no_grad():
        for x in xs:
            x.mul_(-2.0).add_(1.0)  # new values in the captured input buffers
    g.replay()
    torch.cuda.synchronize()
    for x, s in zip(xs, res, strict=True):
        assert_summary_matches(s, ref_moments(x), "graph replay")
        counts, under, over, nan = ref_log_histogram(x, 3)
        np.testing.assert_array_equal(full_log_counts(s.hist, ref_log_num_buckets(3)), counts)
        assert (s.hist.underflow, s.hist.overflow, s.hist.nan_count) == (under, over, nan)
    assert total.count == sum(s.count for s in res)
    assert total.hist == api.merge_all(res).hist


def test_reading_results_during_capture_raises() -> None:
    # A read inside the capture would sync a capturing stream (invalidating the user's graph):
    # it raises a clear error instead, and the capture itself still ends cleanly.
    xs = [_data(n, torch.float32, seed=n) for n in (3000, 70_000)]
    _warm_up_beside_a_capture(xs)
    g = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="after the capture ends"):
        with torch.cuda.graph(g):
            res = pws.describe_many(xs, mantissa_bits=3)
            _ = res[0].count
    g.replay()
    torch.cuda.synchronize()
    assert res[1].count == pws.describe(xs[1].cpu()).count  # readable after a replay


# ------------------------------------------------------------------------------ distances
@pytest.mark.parametrize("metric", range(5))
def test_pairwise_distances_cuda_matches_cpu(metric: int) -> None:
    rng = np.random.default_rng(metric)
    counts = rng.integers(0, 50, size=(37, 300)).astype(np.int64)
    counts[:, :10] = 0
    counts[5] = 0  # an empty histogram: NaN row and column
    counts[7] = counts[3]  # identical rows: distance 0
    centres = np.linspace(-1.0, 1.0, 300)
    got = _C.pairwise_distances_cuda(counts, centres, metric, 0)
    ref = _C.pairwise_distances(counts, centres, metric)
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-15, equal_nan=True)


# ------------------------------------------------------------------------------ scale extremes
@pytest.mark.parametrize(
    ("scale", "offset"),
    [(1e-30, 0.0), (1e-15, 0.0), (1e15, 0.0), (1e30, 0.0), (1e-20, 1e-15), (1e25, 1e30)],
)
def test_tiny_and_huge_scales_match_reference(scale: float, offset: float) -> None:
    # float32 powers of (x - shift) would underflow or overflow without the warp's scale.
    g = torch.Generator(device=DEV).manual_seed(11)
    base = torch.randn(1_000_003, generator=g, device=DEV, dtype=torch.float64)
    x = (offset + scale * base).to(torch.float32)
    assert_summary_matches(pws.describe(x), ref_moments(x), f"{offset} + {scale} N(0,1)")


def test_regime_jump_inside_a_chunk_matches_reference() -> None:
    # One warp sees 1e-10-scale values first and 1e3-scale values later: d**4 overflows float32
    # for the later groups, which then go through the float64 path.
    g = torch.Generator(device=DEV).manual_seed(12)
    z = torch.randn(1 << 16, generator=g, device=DEV, dtype=torch.float64)
    x = torch.cat([1e-10 * z[: 1 << 12], 1e3 * z[1 << 12 :]]).to(torch.float32)
    assert_summary_matches(pws.describe(x), ref_moments(x), "regime jump")


_SMALL_TABLE_CASES = [(1, 0), (65_536, 1), (3 * 65_536 + 17, 2), (50_000_000, 3)]


def _small_table_states() -> bytes:
    """Raw states of one-tensor and four-tensor moments passes (the small launch table's cases)
    and of a five-tensor one (always the full table), float32 and bfloat16."""
    out = []
    for dtype in (torch.float32, torch.bfloat16):
        xs = [_data(n, dtype, seed=seed) for n, seed in _SMALL_TABLE_CASES]
        groups = [[x] for x in xs] + [xs, [*xs, xs[0]]]
        for group in groups:
            res, total = pws.describe_many(group, total=True)
            for s in [*res, total]:
                out += [np.asarray(a).tobytes() for a in s._state()]
    return b"".join(out)


def test_small_launch_tables_give_the_same_bits() -> None:
    # describe_cuda.h kSmallBatch: moments launches of at most 4 tensors carry a small launch
    # table; a child process with PWS_CUDA_SMALL_TABLE=0 gives every launch the full one.
    assert _C.cuda_small_tables() and _C.CUDA_SMALL_BATCH == 4
    tests = Path(__file__).resolve().parent
    code = (
        f"import sys; sys.path.insert(0, {str(tests)!r}); import test_cuda as t; "
        "sys.stdout.write(t._small_table_states().hex())"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PWS_CUDA_SMALL_TABLE": "0"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    mine = _small_table_states()
    assert len(mine) > 0 and bytes.fromhex(r.stdout.strip()) == mine


# ------------------------------------------------------------------------------ plans
def _plan_inputs() -> list[torch.Tensor]:
    return plan_inputs(device=DEV)


def test_plan_and_fetch_many_match_describe_many() -> None:
    from pyweightstat.stats import _cuda
    from pyweightstat.stats.summary import FIELDS, fields_from_states

    xs = _plan_inputs()
    plan = _cuda.Plan(xs, 3)
    assert plan.matches(xs) and not plan.matches(xs[:-1])
    results, expected_runs = [], []
    for r in range(3):  # the plan reads the tensors' current values at each launch
        if r:
            with torch.no_grad():
                for x in xs:
                    x.mul_(1.5)
        results.append(plan.launch())
        summaries, total = pws.describe_many(xs, total=True, mantissa_bits=3)
        expected_runs.append([*summaries, total])
    f, n, nnz, buckets, counts, flows = _cuda.fetch_many(results)
    assert f.shape == (3, len(xs) + 1, 8) and n.shape == (3, len(xs) + 1, 5)
    assert nnz.shape == (3, len(xs) + 1) and int(nnz.sum()) == len(buckets) == len(counts)
    fields = fields_from_states(f, n)
    off = 0
    for r in range(3):
        for t, s in enumerate(expected_runs[r]):
            fs, ns = _state(s)
            assert f[r, t].tobytes() == fs.tobytes(), (r, t)
            np.testing.assert_array_equal(n[r, t], ns)
            got = [float(v) for v in fields[r, t]]
            want = [float(getattr(s, k)) for k in FIELDS]
            np.testing.assert_array_equal(got, want)
            h = s.hist
            dense = np.asarray(h.counts)
            idx = np.flatnonzero(dense)
            k = int(nnz[r, t])
            np.testing.assert_array_equal(buckets[off : off + k], idx + h.first)
            np.testing.assert_array_equal(counts[off : off + k], dense[idx])
            off += k
            assert tuple(flows[r, t]) == (h.underflow, h.overflow, h.nan_count)
    assert off == len(counts)


def test_plan_device_tables_give_the_same_bits() -> None:
    # Plan(device_table=True): the launch tables copied to device memory once, the launches carry
    # a pointer; the same kernels, so fetch_many's arrays are identical to the default form's.
    from pyweightstat.stats import _cuda

    xs = _plan_inputs()
    outs = []
    for device_table in (False, True):
        for m in (3, 7, None):  # log histograms in shared memory, in a band, and moments only
            plan = _cuda.Plan(xs, m, device_table=device_table)
            assert plan.device_table is device_table
            results = [plan.launch() for _ in range(2)]
            del plan  # the results keep the tables (and their device copy) alive
            outs.append(_cuda.fetch_many(results))
        dropped = _cuda.Plan(xs, 3, device_table=device_table).launch()
        del dropped  # freed unread: the device copy is freed after the device finished
    for a, b in zip(outs[:3], outs[3:], strict=True):
        for x, y in zip(a, b, strict=True):
            assert x.dtype == y.dtype and x.tobytes() == y.tobytes()


def test_plan_device_table_first_launched_in_a_graph_capture() -> None:
    # A plan whose first launch is captured keeps its tables as parameters in the graph (a copy
    # made during the capture would exist only in replays); its next eager launch copies them.
    from pyweightstat.stats import _cuda

    xs = [_data(n, torch.float32, seed=n) for n in (3000, 70_000)]
    plan = _cuda.Plan(xs, 3, device_table=True)
    _warm_up_beside_a_capture(xs)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        captured = plan.launch()
    g.replay()
    eager = plan.launch()
    torch.cuda.synchronize()
    want = _cuda.fetch_many([_cuda.Plan(xs, 3, device_table=False).launch()])
    for got in (_cuda.fetch_many([captured]), _cuda.fetch_many([eager])):
        for x, y in zip(got, want, strict=True):
            assert x.tobytes() == y.tobytes()


def test_plan_refuses_inputs_it_cannot_follow() -> None:
    from pyweightstat.stats import _cuda

    with pytest.raises(TypeError, match="CudaResult"):
        _cuda.fetch_many([None])
    with pytest.raises(ValueError, match="CUDA torch tensors"):
        _cuda.Plan([torch.zeros(3)], 3)
    with pytest.raises(TypeError, match="dtype"):
        _cuda.Plan([torch.zeros(3, dtype=torch.int32, device=DEV)], 3)


def test_fetch_many_waits_only_for_its_own_work() -> None:
    from pyweightstat.stats import _cuda

    x = _data(1 << 20, torch.float32)
    plan = _cuda.Plan([x], 3)
    _cuda.fetch_many([plan.launch()])  # sizes the pinned staging buffer for this layout
    res = plan.launch()
    torch.cuda._sleep(int(2e9))  # about a second of GPU time queued after the result's work
    _, n, *_ = _cuda.fetch_many([res])
    still_running = not torch.cuda.current_stream().query()
    torch.cuda.synchronize()
    assert still_running, "fetch_many waited for work queued after its results"
    assert int(n[0, 0, 0]) == pws.describe(x).count


def test_summary_read_waits_only_for_its_own_work() -> None:
    # Reading a describe_many Summary waits on the call's event, not on the whole stream.
    x = _data(1 << 20, torch.float32)
    # the same call first: sizes the pinned staging buffer (growing it would sync the device)
    _ = pws.describe_many([x, x[:1000]], mantissa_bits=3)[0].hist
    res = pws.describe_many([x, x[:1000]], mantissa_bits=3)
    torch.cuda._sleep(int(2e9))  # about a second of GPU time queued after the call's work
    count, hist = res[0].count, res[1].hist
    still_running = not torch.cuda.current_stream().query()
    torch.cuda.synchronize()
    assert still_running, "reading a Summary waited for work queued after its call"
    assert count == pws.describe(x.cpu()).count
    assert hist == pws.log_histogram(x[:1000].cpu(), mantissa_bits=3)


def test_fetches_of_scattered_windows() -> None:
    # Windows far apart on the m = 10 grid (one 2-D copy of their span would be ~40 MB): both
    # fetch paths copy window by window, and every window comes back exact.
    from pyweightstat.stats import _cuda

    g = torch.Generator(device=DEV).manual_seed(21)
    scales = [1e-30, -1e-20, 1e-10, 1.0, 3.0, 1e10, -1e20, 1e30]
    xs = [s * (1 + 0.01 * torch.rand(5000, generator=g, device=DEV)) for s in scales]
    summaries, total = pws.describe_many(xs, total=True, mantissa_bits=10)
    cpu = [x.cpu() for x in xs]
    for x, s in zip(cpu, summaries, strict=True):
        assert s.hist == pws.log_histogram(x, mantissa_bits=10)
    assert total.hist == pws.log_histogram(torch.cat(cpu), mantissa_bits=10)
    plan = _cuda.Plan(xs, 10)
    _, _, nnz, buckets, counts, _ = _cuda.fetch_many([plan.launch(), plan.launch()])
    off = 0
    for r in range(2):
        for t, s in enumerate([*summaries, total]):
            dense = np.asarray(s.hist.counts)
            idx = np.flatnonzero(dense)
            k = int(nnz[r, t])
            np.testing.assert_array_equal(buckets[off : off + k], idx + s.hist.first)
            np.testing.assert_array_equal(counts[off : off + k], dense[idx])
            off += k
    assert off == len(buckets)


def _field_tolerances(ref: np.ndarray) -> np.ndarray:
    """Per-field absolute tolerances (FIELDS order) for GPU vs CPU engine stats of one tensor."""
    from pyweightstat.stats.summary import FIELDS

    std = abs(ref[FIELDS.index("std")])
    tol = {
        "mean": 1e-6 * std,
        "var": 1e-5 * abs(ref[FIELDS.index("var")]),
        "std": 1e-5 * std,
        "skew": 1e-4,
        "kurtosis": 1e-3,
        "l1": 1e-6 * abs(ref[FIELDS.index("l1")]),
        "l2": 1e-6 * abs(ref[FIELDS.index("l2")]),
    }
    return np.array([tol.get(k, 0.0) for k in FIELDS])


@pytest.mark.parametrize("max_pending", [2, 256])  # bulk copies / copies 3 records behind
@pytest.mark.parametrize("hist_every", [1, 3])  # 3: a moments-only plan beside the log plan
@pytest.mark.parametrize("background", [True, False])
def test_tracker_on_cuda_matches_cpu_tracker(
    max_pending: int, hist_every: int, background: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    import copy

    from pyweightstat import WeightTracker
    from pyweightstat import tracker as tr_mod

    monkeypatch.setattr(tr_mod, "_CONVERT_BATCH", 2)  # conversions inside the 8 steps below

    torch.manual_seed(0)
    cpu = torch.nn.Sequential(torch.nn.Linear(20, 300), torch.nn.ReLU(), torch.nn.Linear(300, 5))
    gpu = copy.deepcopy(cpu).to(DEV)
    tc = WeightTracker(cpu, mantissa_bits=3, hist_every=hist_every)
    tg = WeightTracker(
        gpu, mantissa_bits=3, max_pending=max_pending, hist_every=hist_every, background=background
    )
    for step in range(8):
        with torch.no_grad():  # elementwise IEEE ops: identical values on both devices
            for model in (cpu, gpu):
                for p in model.parameters():
                    p.mul_(1.1).add_(0.01)
        if step == 2:  # move a parameter's storage: the plan must be rebuilt
            gpu[0].weight.data = gpu[0].weight.data.clone()
        tc.step()
        tg.step()
        if max_pending == 256 and step >= 3:
            assert 3 <= len(tg._pending) <= 4  # older records were copied, two at a time
    assert set(tg._plans) == ({True} if hist_every == 1 else {True, False})
    a, b = tc.trajectory(), tg.trajectory()
    np.testing.assert_array_equal(a["steps"], b["steps"])
    assert a["has_hist"].sum() == (8 + hist_every - 1) // hist_every
    hist_keys = ("hist_record", "hist_tensor", "hist_bucket", "hist_count", "hist_flows")
    for key in ("has_hist", *hist_keys):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    for r in range(len(a["steps"])):
        for t in range(len(a["names"])):
            ref, got = a["stats"][r, t], b["stats"][r, t]
            assert np.all(np.abs(got - ref) <= _field_tolerances(ref)), (r, t, ref, got)


def test_tracker_detects_replaced_parameters() -> None:
    from pyweightstat import WeightTracker

    model = torch.nn.Sequential(torch.nn.Linear(4, 4)).to(DEV)
    tracker = WeightTracker(model, max_pending=100)
    tracker.record()
    model[0] = torch.nn.Linear(4, 4).to(DEV)  # same names, new parameter objects
    tracker.record()
    with pytest.raises(RuntimeError, match="replaced"):
        tracker.trajectory()


def test_atypical_first_values_and_sorted_data_match_reference() -> None:
    # The warp's shift comes from its first values: an outlier there (every 128th value, the
    # first value of lane 0 of every warp) or sorted data must not make the power sums cancel.
    g = torch.Generator(device=DEV).manual_seed(13)
    z = torch.randn(1_000_003, generator=g, device=DEV, dtype=torch.float64)
    spiked = z.clone()
    spiked[::128] = 100.0
    for label, x in (("spikes at warp starts", spiked), ("sorted", torch.sort(z).values)):
        x32 = x.to(torch.float32)
        assert_summary_matches(pws.describe(x32), ref_moments(x32), label)
