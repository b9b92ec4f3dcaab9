#!/usr/bin/env python
"""Throughput of the pyweightstat engine against pure-torch, NumPy and SciPy equivalents.

Everything runs in one process on the same tensors, so the ratios are comparable:

* the read floor ``torch.sum`` (and, on CUDA, a device-to-device copy: the bandwidth ceiling);
* the pure-torch pieces (``var_mean``, ``aminmax``, skew/kurtosis by tensor ops, ``histc``,
  norms, ``quantile``/``sort``) and their combination, the *pure-torch equivalent* of one
  ``describe`` call (moments, norms, NaN/Inf/zero counts) and of ``describe(bins=256)``;
* NumPy/SciPy where they apply (float32 only: NumPy has no bfloat16);
* ``pyweightstat.describe`` (moments), ``describe(bins=256, range=...)`` (moments and histogram
  in one pass), ``histogram``, ``log_histogram`` and ``quantile``;
* K x K distances of K = 256 histograms of 256 bins against a SciPy (or NumPy) double loop;
* ``describe_many`` over the parameter shapes of ViT-B/16 (its first 2 blocks with ``--quick``)
  against a Python loop of torch reductions; on CUDA also the time of a ViT-B/16 training step
  (bf16 autocast, batch 32), to express per-step tracking as a fraction of a step.

Results are checked while timing (the script stops with an error if pyweightstat disagrees
with the references). It prints a Markdown table and writes JSON (with machine metadata) and
the Markdown to ``bench/results/bench_stats_<device>_<date>.{json,md}``.

Usage::

    python bench/bench_stats.py                      # CPU, 1e6, 1e7, 1e8 elements
    python bench/bench_stats.py --quick              # CPU, up to 1e7, few repeats (< 1 min)
    python bench/bench_stats.py --device cuda        # GPU, 1e8 and 1e9 elements

Times are medians over ``--repeat`` runs after one warm-up run (``time.perf_counter``; on
CUDA ``torch.cuda.Event`` pairs with a synchronisation). Slow operations are repeated fewer
times so that each one stays within a time budget (1 s per operation with ``--quick``, 10 s
otherwise); one whose warm-up run alone exceeds the budget is timed by that run. The number of
runs is recorded with every result.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import pyweightstat as pws

HIST_BINS = 256
HIST_RANGE = (-5.0, 5.0)
QUANTILES = (0.01, 0.5, 0.99)
TORCH_QUANTILE_LIMIT = 2**24
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

# Issue 2 accuracy bounds (float32 input vs a float64 reference of the same values).
MEAN_TOL_STD, VAR_RTOL, SKEW_ATOL, KURT_ATOL, NORM_RTOL = 1e-6, 1e-5, 1e-4, 1e-3, 1e-6


# ----------------------------------------------------------------------------------------------
# timing
# ----------------------------------------------------------------------------------------------
@dataclass
class Timing:
    """Median time of an operation and how it was measured."""

    seconds: float
    runs: int


class Timer:
    """Median-of-repeats timer for CPU (perf_counter) or CUDA (events + synchronize).

    ``lead_cycles`` (CUDA): queue a sleep kernel of that many GPU cycles before the start event,
    so that the host is ahead and the events time the device work only (not the Python/launch
    time of the call while the GPU waits).
    """

    def __init__(self, device: str, repeat: int, budget_s: float, lead_cycles: int = 0) -> None:
        self.device = device
        self.repeat = repeat
        self.budget_s = budget_s
        self.lead_cycles = lead_cycles

    def _once(self, fn: Callable[[], Any]) -> tuple[float, Any]:
        if self.device == "cuda":
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            if self.lead_cycles:
                torch.cuda._sleep(self.lead_cycles)
            start.record()
            out = fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3, out
        t0 = time.perf_counter()
        out = fn()
        return time.perf_counter() - t0, out

    def __call__(self, fn: Callable[[], Any]) -> tuple[Timing, Any]:
        first, out = self._once(fn)  # warm-up (allocations, thread pools, lazy init)
        if first >= self.budget_s:  # too slow to repeat: the first run is the measurement
            return Timing(first, 1), out
        runs = max(1, min(self.repeat, int(self.budget_s / max(first, 1e-9))))
        times = []
        for _ in range(runs):
            t, out = self._once(fn)
            times.append(t)
        return Timing(statistics.median(times), runs), out


# ----------------------------------------------------------------------------------------------
# pure-torch equivalents
# ----------------------------------------------------------------------------------------------
def _as_float(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def torch_skew_kurt(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Biased skewness and excess kurtosis by tensor operations."""
    x = _as_float(t)
    var, mean = torch.var_mean(x, correction=0)
    d = x - mean
    d2 = d * d
    return (d2 * d).mean() / var**1.5, (d2 * d2).mean() / (var * var) - 3.0


def torch_norms(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L1, L2 and L-infinity norms."""
    x = _as_float(t)
    a = x.abs()
    return a.sum(), torch.linalg.vector_norm(x), a.max()


def torch_moments(t: torch.Tensor) -> dict[str, torch.Tensor]:
    """Pure-torch equivalent of ``pyweightstat.describe`` (everything a Summary holds).

    It does not exclude non-finite values from the moments (that would cost more passes); the
    benchmark data is finite.
    """
    x = _as_float(t)
    mn, mx = torch.aminmax(x)
    var, mean = torch.var_mean(x, correction=0)
    d = x - mean
    d2 = d * d
    m3, m4 = (d2 * d).mean(), (d2 * d2).mean()
    a = x.abs()
    return {
        "min": mn,
        "max": mx,
        "mean": mean,
        "var": var,
        "skew": m3 / var**1.5,
        "kurtosis": m4 / (var * var) - 3.0,
        "l1": a.sum(),
        "l2": torch.linalg.vector_norm(x),
        "linf": a.max(),
        "nan_count": torch.isnan(x).sum(),
        "posinf_count": (x == math.inf).sum(),
        "neginf_count": (x == -math.inf).sum(),
        "zero_count": (x == 0).sum(),
    }


def torch_fused(t: torch.Tensor) -> dict[str, torch.Tensor]:
    """Pure-torch equivalent of ``describe(bins=256, range=...)``: moments plus ``histc``."""
    out = torch_moments(t)
    out["hist"] = torch.histc(_as_float(t), HIST_BINS, *HIST_RANGE)
    return out


def sort_quantile(t: torch.Tensor, qs: tuple[float, ...]) -> torch.Tensor:
    """Linear-interpolation quantiles from a full sort (works for any size)."""
    s = torch.sort(t.reshape(-1)).values
    n = s.numel()
    out = []
    for q in qs:
        h = q * (n - 1)
        k = math.floor(h)
        k1 = min(k + 1, n - 1)
        out.append(s[k].double() + (h - k) * (s[k1].double() - s[k].double()))
    return torch.stack(out)


# ----------------------------------------------------------------------------------------------
# checks (run on the results of the timed calls)
# ----------------------------------------------------------------------------------------------
class CheckError(AssertionError):
    """pyweightstat disagreed with a reference while benchmarking."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise CheckError(msg)


def reference_moments(t: torch.Tensor, chunk: int = 1 << 25) -> dict[str, float]:
    """float64 two-pass reference (torch in float64, in chunks to bound memory; untimed)."""
    x = t.reshape(-1)
    n = x.numel()
    parts = [x[i : i + chunk] for i in range(0, n, chunk)]  # views; float64 one chunk at a time

    def total(fn: Callable[[torch.Tensor], torch.Tensor]) -> float:
        return math.fsum(float(fn(p.double())) for p in parts)

    mean = total(torch.sum) / n
    mean += total(lambda p: (p - mean).sum()) / n  # correction pass
    m2 = total(lambda p: ((p - mean) ** 2).sum()) / n
    std = math.sqrt(m2)
    return {
        "count": n,
        "mean": mean,
        "var": m2,
        "std": std,
        "skew": total(lambda p: (((p - mean) / std) ** 3).sum()) / n,
        "kurtosis": total(lambda p: (((p - mean) / std) ** 4).sum()) / n - 3.0,
        "min": min(float(p.min()) for p in parts),  # exact in the input dtype
        "max": max(float(p.max()) for p in parts),
        "l1": total(lambda p: p.abs().sum()),
        "l2": math.sqrt(total(lambda p: (p * p).sum())),
        "linf": max(float(p.abs().max()) for p in parts),
    }


def check_summary(s: Any, ref: dict[str, float], what: str) -> None:
    """Issue 2 accuracy bounds."""
    _check(int(s.count) == ref["count"], f"{what}: count {s.count} != {ref['count']}")
    _check(float(s.min) == ref["min"] and float(s.max) == ref["max"], f"{what}: min/max")
    _check(
        abs(float(s.mean) - ref["mean"]) <= MEAN_TOL_STD * ref["std"],
        f"{what}: mean {s.mean} vs {ref['mean']}",
    )
    _check(abs(float(s.var) - ref["var"]) <= VAR_RTOL * ref["var"], f"{what}: var")
    _check(abs(float(s.skew) - ref["skew"]) <= SKEW_ATOL, f"{what}: skew {s.skew}")
    _check(abs(float(s.kurtosis) - ref["kurtosis"]) <= KURT_ATOL, f"{what}: kurtosis")
    for k in ("l1", "l2", "linf"):
        _check(abs(float(getattr(s, k)) - ref[k]) <= NORM_RTOL * ref[k], f"{what}: {k}")


def check_torch_moments(m: dict[str, torch.Tensor], ref: dict[str, float], what: str) -> None:
    """Loose check that the pure-torch pipeline computes the same things (float32 accuracy)."""
    _check(abs(float(m["mean"]) - ref["mean"]) <= 1e-3 * ref["std"] + 1e-6, f"{what}: mean")
    _check(abs(float(m["var"]) - ref["var"]) <= 1e-3 * ref["var"], f"{what}: var")


def check_hist(h: Any, t: torch.Tensor, histc: torch.Tensor | None, what: str) -> None:
    """Exact against np.histogram in float64 (up to 1e7 values), else close to torch.histc."""
    counts = np.asarray(h.counts)
    n = t.numel()
    if n <= 10_000_000:
        x64 = t.double().reshape(-1).cpu().numpy()
        expected, _ = np.histogram(x64, HIST_BINS, HIST_RANGE)
        _check(np.array_equal(counts, expected), f"{what}: counts differ from np.histogram")
        inside = int(np.count_nonzero((x64 >= HIST_RANGE[0]) & (x64 <= HIST_RANGE[1])))
        _check(int(counts.sum()) == inside, f"{what}: in-range count")
    if histc is not None:
        diff = np.abs(counts - histc.cpu().double().numpy()).sum()
        _check(diff <= max(16, 1e-5 * n), f"{what}: counts differ from torch.histc by {diff}")


def check_quantiles(got: Any, sorted_vals: torch.Tensor, what: str, m: int = 7) -> None:
    """Within the log-histogram bound around the exact linear quantile."""
    s = sorted_vals.reshape(-1)
    n = s.numel()
    got = np.atleast_1d(np.asarray(got, dtype=np.float64))
    for q, g in zip(QUANTILES, got, strict=True):
        h = q * (n - 1)
        k = math.floor(h)
        lo, hi = float(s[k]), float(s[min(k + 1, n - 1)])
        exact = lo + (h - k) * (hi - lo)
        bound = (2.0**-m + 2.0**-23) * max(abs(lo), abs(hi)) + (hi - lo) + 2.0**-125
        _check(abs(g - exact) <= bound, f"{what}: q={q}: {g} vs {exact} (bound {bound})")


# ----------------------------------------------------------------------------------------------
# results
# ----------------------------------------------------------------------------------------------
@dataclass
class Row:
    """One timed operation."""

    section: str
    dtype: str
    n: int
    op: str
    impl: str
    seconds: float
    runs: int
    bytes_read: int
    baseline: str = ""  # name of the pure-torch equivalent this is compared with
    speedup: float | None = None  # baseline time / this time
    ratio_to_sum: float | None = None  # torch.sum time / this time (1.0 = read floor)
    note: str = ""

    @property
    def gbps(self) -> float:
        return self.bytes_read / self.seconds / 1e9 if self.seconds > 0 else float("nan")

    @property
    def elems_per_s(self) -> float:
        return self.n / self.seconds if self.seconds > 0 else float("nan")


def _fmt_n(n: int) -> str:
    e = math.log10(n) if n > 0 else 0
    return f"1e{int(e)}" if n > 0 and abs(e - round(e)) < 1e-9 else f"{n:,}"


def markdown_table(rows: list[Row]) -> str:
    """The throughput table (one line per timed operation)."""
    head = (
        "| dtype | n | operation | implementation | time (ms) | GB/s | Gelem/s | "
        "vs torch.sum | speedup vs pure torch | note |\n"
        "|---|---|---|---|---:|---:|---:|---:|---:|---|\n"
    )
    lines = []
    for r in rows:
        ratio = f"{100 * r.ratio_to_sum:.0f} %" if r.ratio_to_sum is not None else ""
        speed = f"{r.speedup:.1f}× ({r.baseline})" if r.speedup is not None else ""
        lines.append(
            f"| {r.dtype} | {_fmt_n(r.n)} | {r.op} | {r.impl} | {1e3 * r.seconds:.3f} | "
            f"{r.gbps:.2f} | {r.elems_per_s / 1e9:.3f} | {ratio} | {speed} | {r.note} |"
        )
    return head + "\n".join(lines) + "\n"


def machine_metadata(device: str) -> dict[str, Any]:
    """CPU model, cores, library versions, build info, date and GPU name."""
    cpu_model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import scipy

    meta: dict[str, Any] = {
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": cpu_model,
        "logical_cores": os.cpu_count(),
        "affinity_cores": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else None,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "pyweightstat": getattr(pws, "__version__", "unknown"),
        "build_info": pws.build_info(),
        "pyweightstat_threads": pws.get_num_threads() if hasattr(pws, "get_num_threads") else None,
        "device": device,
    }
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        meta.update(
            gpu=torch.cuda.get_device_name(0),
            gpu_memory_gib=round(p.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
        )
    return meta


# ----------------------------------------------------------------------------------------------
# the benchmark sections
# ----------------------------------------------------------------------------------------------
def make_tensor(n: int, dtype: torch.dtype, device: str, seed: int) -> torch.Tensor:
    """N(0, 1) values (float32 generated, then rounded to ``dtype``)."""
    g = torch.Generator(device=device).manual_seed(seed)
    t = torch.randn(n, generator=g, device=device, dtype=torch.float32)
    return t if dtype == torch.float32 else t.to(dtype)


def bench_tensor(
    t: torch.Tensor, dtype_name: str, timer: Timer, device: str, rows: list[Row], log: Callable
) -> None:
    """Every single-tensor operation on ``t``."""
    n = t.numel()
    nbytes = n * t.element_size()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    ref = reference_moments(t)
    sec = "single tensor"

    def add(op: str, impl: str, tm: Timing, **kw: Any) -> Row:
        r = Row(sec, dtype_name, n, op, impl, tm.seconds, tm.runs, nbytes, **kw)
        rows.append(r)
        log(f"  {dtype_name:9s} {_fmt_n(n):>6s} {op:28s} {impl:14s} {1e3 * tm.seconds:10.3f} ms")
        return r

    # read floor and bandwidth ceiling
    t_sum, _ = timer(lambda: torch.sum(t))
    add("sum (read floor)", "torch", t_sum)
    if device == "cuda":
        dst = torch.empty_like(t)
        t_copy, _ = timer(lambda: dst.copy_(t))
        r = add("device copy (ceiling)", "torch", t_copy)
        r.bytes_read = 2 * nbytes
        r.note = "GB/s counts read + write"
        del dst

    # pure-torch pieces
    tm, _ = timer(lambda: torch.var_mean(t, correction=0))
    add("mean + var", "torch.var_mean", tm)
    tm, _ = timer(lambda: torch.aminmax(t))
    add("min + max", "torch.aminmax", tm)
    tm, _ = timer(lambda: torch_skew_kurt(t))
    add("skew + kurtosis", "torch ops", tm)
    tm, _ = timer(lambda: torch_norms(t))
    add("L1/L2/Linf norms", "torch ops", tm)
    tm, histc = timer(lambda: torch.histc(_as_float(t), HIST_BINS, *HIST_RANGE))
    t_histc = add("histogram 256 bins", "torch.histc", tm)
    tm, tmom = timer(lambda: torch_moments(t))
    check_torch_moments(tmom, ref, "torch_moments")
    t_tmom = add("moments (Summary)", "pure torch", tm)
    tm, _ = timer(lambda: torch_fused(t))
    t_tfused = add("moments + hist 256", "pure torch", tm)
    t_tquant = None
    if n <= TORCH_QUANTILE_LIMIT:
        tm, _ = timer(lambda: torch.quantile(_as_float(t), torch.tensor(QUANTILES, device=device)))
        t_tquant = add("quantiles (3)", "torch.quantile", tm)
    tm, _ = timer(lambda: torch.sort(t.reshape(-1)).values)
    t_sort = add("quantiles (3)", "torch.sort", tm)
    sorted_vals = torch.sort(t.reshape(-1)).values
    tq = sort_quantile(t, QUANTILES)
    sync()

    # NumPy / SciPy (CPU float32 only)
    if device == "cpu" and t.dtype == torch.float32:
        import scipy.stats

        a = t.numpy()
        tm, _ = timer(lambda: np.sum(a))
        add("sum", "numpy", tm)
        tm, _ = timer(lambda: (np.mean(a), np.var(a)))
        add("mean + var", "numpy", tm)
        tm, _ = timer(lambda: (scipy.stats.skew(a), scipy.stats.kurtosis(a)))
        add("skew + kurtosis", "scipy.stats", tm)
        tm, _ = timer(lambda: np.histogram(a, HIST_BINS, HIST_RANGE))
        add("histogram 256 bins", "numpy", tm)
        tm, _ = timer(lambda: np.quantile(a, QUANTILES))
        add("quantiles (3)", "numpy", tm)

    # pyweightstat
    tm, s = timer(lambda: pws.describe(t))
    check_summary(s, ref, f"describe {dtype_name} {n}")
    r_pass = add(
        "moments (Summary)",
        "pyweightstat",
        tm,
        baseline="pure torch",
        speedup=t_tmom.seconds / tm.seconds,
    )
    if device == "cuda" and timer.lead_cycles:
        host_timer = Timer(device, timer.repeat, timer.budget_s)
        tm, _ = host_timer(lambda: pws.describe(t))
        add("moments, no lead", "pyweightstat", tm, note="events include the host's call time")
    if device == "cuda":  # where the fixed cost of one pass goes (fused vs merge kernel)
        fused = fused_kernel_seconds(
            kernel_profile(lambda: pws.describe(t), 20, "call", log, top=4), 20
        )
        if fused is not None:
            # the merge kernel's own profile includes its wait for the fused kernel (it is
            # resident before that ends): what the pass pays after the fused kernel is this
            after = r_pass.seconds - fused
            r_pass.note = f"fused kernel {1e6 * fused:.1f} us, after it {1e6 * after:.1f} us"
            log(
                f"    pass {1e6 * r_pass.seconds:.1f} us - fused kernel {1e6 * fused:.1f} us"
                f" = {1e6 * after:.1f} us after the fused kernel (merge, launch gaps)"
            )
    tm, s = timer(lambda: pws.describe(t, bins=HIST_BINS, range=HIST_RANGE))
    check_summary(s, ref, f"describe(bins) {dtype_name} {n}")
    check_hist(s.hist, t, histc, f"describe(bins) {dtype_name} {n}")
    add(
        "moments + hist 256",
        "pyweightstat",
        tm,
        baseline="pure torch",
        speedup=t_tfused.seconds / tm.seconds,
        note="one pass",
    )
    tm, h = timer(lambda: pws.histogram(t, bins=HIST_BINS, range=HIST_RANGE))
    check_hist(h, t, histc, f"histogram {dtype_name} {n}")
    _check(np.array_equal(np.asarray(h.counts), np.asarray(s.hist.counts)), "hist != describe.hist")
    add(
        "histogram 256 bins",
        "pyweightstat",
        tm,
        baseline="torch.histc",
        speedup=t_histc.seconds / tm.seconds,
    )
    # The tracker's setting on one large tensor: the shared-counter log path at full bandwidth
    # (its ratio to torch.sum against the moments row shows what the histogram adds).
    tm, s3 = timer(lambda: pws.describe(t, mantissa_bits=3))
    _check(s3.hist is not None and s3.hist.in_range == s3.count, "describe(m=3) histogram count")
    add("moments + log hist (m=3)", "pyweightstat", tm, note="tracker setting, one pass")
    tm, _ = timer(lambda: pws.log_histogram(t, mantissa_bits=7))
    add("log histogram (m=7)", "pyweightstat", tm)
    tm, q = timer(lambda: pws.quantile(t, list(QUANTILES)))
    check_quantiles(q, sorted_vals, f"quantile {dtype_name} {n}")
    check_quantiles(tq.cpu().numpy(), sorted_vals, f"sort quantile {dtype_name} {n}", m=23)
    base = t_tquant if t_tquant is not None else t_sort
    add(
        "quantiles (3)",
        "pyweightstat",
        tm,
        baseline=base.impl,
        speedup=base.seconds / tm.seconds,
        note="log histogram, rel. error <= 2^-7",
    )
    for r in rows:
        if r.n == n and r.dtype == dtype_name and r.section == sec and r.ratio_to_sum is None:
            if not r.op.startswith("device copy"):
                r.ratio_to_sum = t_sum.seconds / r.seconds


def bench_distances(
    timer: Timer, rows: list[Row], log: Callable, k: int, pairs_budget: int
) -> None:
    """K x K distance matrix of K histograms of 256 bins vs a SciPy/NumPy double loop."""
    import scipy.spatial.distance as ssd
    import scipy.stats

    g = torch.Generator().manual_seed(1)
    hists = []
    for i in range(k):
        x = torch.randn(20_000, generator=g) * (0.8 + 0.4 * i / k) + 0.3 * i / k
        hists.append(pws.histogram(x, bins=HIST_BINS, range=HIST_RANGE))
    counts = np.stack([np.asarray(h.counts, dtype=np.float64) for h in hists])
    edges = np.asarray(hists[0].edges)
    centres = 0.5 * (edges[:-1] + edges[1:])
    probs = counts / counts.sum(axis=1, keepdims=True)
    cdfs = np.cumsum(counts, axis=1) / counts.sum(axis=1, keepdims=True)

    loops: dict[str, tuple[str, Callable[[int, int], float]]] = {
        "wasserstein": (
            "scipy.stats.wasserstein_distance",
            lambda i, j: scipy.stats.wasserstein_distance(centres, centres, counts[i], counts[j]),
        ),
        "js": (
            "scipy jensenshannon**2",
            lambda i, j: ssd.jensenshannon(probs[i], probs[j], base=2) ** 2,
        ),
        "ks": ("numpy", lambda i, j: float(np.max(np.abs(cdfs[i] - cdfs[j])))),
        "hellinger": (
            "numpy",
            lambda i, j: float(np.sqrt(max(0.0, 1.0 - np.sum(np.sqrt(probs[i] * probs[j]))))),
        ),
        "tv": ("numpy", lambda i, j: 0.5 * float(np.sum(np.abs(probs[i] - probs[j])))),
    }
    all_pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    step = max(1, len(all_pairs) // pairs_budget)
    subset = all_pairs[::step]
    n_cells = k * k * HIST_BINS
    for metric, (impl, fn) in loops.items():
        tm, d = timer(lambda metric=metric: pws.pairwise_distances(hists, metric))
        t0 = time.perf_counter()
        vals = [fn(i, j) for i, j in subset]
        loop_s = (time.perf_counter() - t0) * len(all_pairs) / len(subset)
        for (i, j), v in zip(subset, vals, strict=True):
            _check(
                abs(d[i, j] - v) <= 1e-9 * abs(v) + 1e-12,
                f"pairwise {metric} ({i},{j}): {d[i, j]} vs {v}",
            )
        note = (
            f"loop extrapolated from {len(subset)} of {len(all_pairs)} pairs"
            if len(subset) < len(all_pairs)
            else "full loop"
        )
        rows.append(
            Row(
                "distances",
                "int64 counts",
                n_cells,
                f"{k}x{k} {metric}",
                impl,
                loop_s,
                1,
                0,
                note=note,
            )
        )
        rows.append(
            Row(
                "distances",
                "int64 counts",
                n_cells,
                f"{k}x{k} {metric}",
                "pyweightstat",
                tm.seconds,
                tm.runs,
                0,
                baseline=impl,
                speedup=loop_s / tm.seconds,
            )
        )
        log(f"  {metric:12s} pyweightstat {1e3 * tm.seconds:9.3f} ms   {impl} {loop_s:9.3f} s")


def vit_b16_shapes(depth: int = 12) -> list[tuple[int, ...]]:
    """Parameter shapes of ViT-B/16 (224 px, 1000 classes), in module order.

    ``depth`` < 12 keeps only the first blocks (used by ``--quick``).
    """
    d, mlp = 768, 3072
    shapes: list[tuple[int, ...]] = [(d, 3, 16, 16), (d,), (1, 1, d), (1, 197, d)]
    for _ in range(depth):
        shapes += [(d,), (d,), (3 * d, d), (3 * d,), (d, d), (d,)]  # LN1, qkv, proj
        shapes += [(d,), (d,), (mlp, d), (mlp,), (d, mlp), (d,)]  # LN2, fc1, fc2
    shapes += [(d,), (d,), (1000, d), (1000,)]  # final LN, head
    return shapes


class _ViT(torch.nn.Module):
    """A ViT-B/16-sized model from torch.nn layers (pre-LN encoder, GELU MLP, CLS token)."""

    def __init__(self, d: int = 768, depth: int = 12, heads: int = 12, classes: int = 1000) -> None:
        super().__init__()
        self.patch = torch.nn.Conv2d(3, d, 16, 16)
        self.cls = torch.nn.Parameter(torch.zeros(1, 1, d))
        self.pos = torch.nn.Parameter(torch.randn(1, 197, d) * 0.02)
        layer = torch.nn.TransformerEncoderLayer(
            d, heads, 4 * d, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = torch.nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = torch.nn.LayerNorm(d)
        self.head = torch.nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        return self.head(self.norm(self.encoder(x))[:, 0])


def bench_many(
    timer: Timer, rows: list[Row], log: Callable, device: str, train_step: bool, depth: int = 12
) -> dict[str, Any]:
    """describe_many over ViT-B/16 parameters vs a Python loop; training-step cost estimate."""
    g = torch.Generator(device=device).manual_seed(2)
    params = [torch.randn(s, generator=g, device=device) * 0.02 for s in vit_b16_shapes(depth)]
    n = sum(p.numel() for p in params)
    nbytes = 4 * n
    info: dict[str, Any] = {"tensors": len(params), "parameters": n, "blocks": depth}
    label = (
        f"ViT-B/16 ({len(params)} tensors)" if depth == 12 else f"ViT-B/16, {depth} of 12 blocks"
    )
    sec = "many tensors"

    tm_loop, _ = timer(lambda: [torch_moments(p) for p in params])
    rows.append(
        Row(
            sec,
            "float32",
            n,
            label,
            "torch loop",
            tm_loop.seconds,
            tm_loop.runs,
            nbytes,
        )
    )
    tm, (summaries, total) = timer(lambda: pws.describe_many(params, total=True))
    for p, s in zip(params[:3], summaries[:3], strict=False):
        check_summary(s, reference_moments(p), "describe_many")
    _check(int(total.count) == n, "describe_many total count")
    rows.append(
        Row(
            sec,
            "float32",
            n,
            label,
            "describe_many",
            tm.seconds,
            tm.runs,
            nbytes,
            baseline="torch loop",
            speedup=tm_loop.seconds / tm.seconds,
        )
    )
    tm3, _ = timer(lambda: pws.describe_many(params, total=True, mantissa_bits=3))
    rows.append(
        Row(
            sec,
            "float32",
            n,
            label,
            "describe_many m=3",
            tm3.seconds,
            tm3.runs,
            nbytes,
            baseline="torch loop",
            speedup=tm_loop.seconds / tm3.seconds,
            note="tracker setting: + log histograms",
        )
    )
    log(
        f"  describe_many {1e3 * tm.seconds:.3f} ms, with log hist {1e3 * tm3.seconds:.3f} ms, "
        f"torch loop {1e3 * tm_loop.seconds:.3f} ms"
    )
    info.update(
        describe_many_s=tm.seconds, describe_many_m3_s=tm3.seconds, torch_loop_s=tm_loop.seconds
    )
    params.clear()

    if train_step:
        torch.manual_seed(0)
        model = _ViT().to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        x = torch.randn(32, 3, 224, 224, device=device)
        y = torch.randint(0, 1000, (32,), device=device)

        def step() -> None:
            with torch.autocast(device_type=device, dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        step_timer = Timer(device, repeat=10, budget_s=60.0)
        tm_step, _ = step_timer(step)
        tm_track, _ = timer(
            lambda: pws.describe_many(model.parameters(), total=True, mantissa_bits=3)
        )
        frac = tm_track.seconds / tm_step.seconds
        info.update(
            train_step_s=tm_step.seconds,
            describe_many_params_s=tm_track.seconds,
            describe_many_fraction=frac,
        )
        log(
            f"  ViT-B/16 step (bs 32, bf16 autocast) {1e3 * tm_step.seconds:.1f} ms; "
            f"describe_many(model.parameters()) {100 * frac:.2f} % of a step"
        )
        info.update(bench_tracker(model, step, tm_step.seconds, device, log))
        del model, opt
    return info


def kernel_profile(
    fn: Callable[[], Any], calls: int, unit: str, log: Callable, top: int = 12
) -> list[dict[str, Any]]:
    """Device time of each kernel and copy over ``calls`` calls of ``fn`` (torch.profiler),
    logged per call, largest first; empty (and logged) where the profiler is unavailable. A
    diagnostic, never a reason to fail the run."""
    try:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(calls):
                fn()
            torch.cuda.synchronize()
        kernels = []
        for ev in prof.key_averages():
            total = getattr(ev, "device_time_total", None)
            if total is None:
                total = getattr(ev, "cuda_time_total", 0.0)
            if total > 0:
                kernels.append({"name": ev.key[:90], "calls": ev.count, "total_us": total})
    except Exception as exc:
        log(f"  (kernel profile unavailable: {exc})")
        return []
    kernels.sort(key=lambda k: -k["total_us"])
    for k in kernels[:top]:
        per = k["total_us"] / calls
        log(f"    {per:9.1f} us/{unit}  x{k['calls'] / calls:g}  {k['name']}")
    return kernels[:top]


def fused_kernel_seconds(kernels: list[dict[str, Any]], calls: int) -> float | None:
    """Device seconds per call of the fused kernels in a :func:`kernel_profile` list (None when
    the profile is empty or names none)."""
    total_us = sum(k["total_us"] for k in kernels if "fused_kernel" in k["name"])
    return total_us * 1e-6 / calls if total_us > 0 else None


def _host_profile(
    fn: Callable[[], Any], calls: int, top: int = 12, only: str | None = None
) -> list[dict[str, Any]]:
    """The functions with the most own host time over ``calls`` calls of ``fn`` (cProfile), per
    call and as a share of all the profiled time; with ``only``, just those whose file or name
    contains it."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        fn()
    prof.disable()
    stats = pstats.Stats(prof).stats
    total = sum(tottime for (_, _, tottime, _, _) in stats.values()) or 1.0
    rows = []
    for (file, line, name), (_, ncalls, tottime, _, _) in stats.items():
        if only is not None and only not in file and only not in name:
            continue
        where = f"{Path(file).name}:{line}" if line else file
        row = {"function": f"{name} ({where})", "calls": ncalls, "share": tottime / total}
        rows.append({**row, "tottime_per_call_s": tottime / calls})
    rows.sort(key=lambda r: -r["tottime_per_call_s"])
    return rows[:top]


def _against_neighbours(base_s: list[float], test_s: list[float]) -> list[float]:
    """(test block - mean of its two base neighbours) / that mean, for blocks B T B T ... B
    (``len(base_s) == len(test_s) + 1``): slow drifts of the host or the GPU cancel."""
    return [
        (t - 0.5 * (base_s[i] + base_s[i + 1])) / (0.5 * (base_s[i] + base_s[i + 1]))
        for i, t in enumerate(test_s)
    ]


def _phase_medians(rows: list[dict[str, float]]) -> dict[str, float]:
    """Median seconds of each launch phase over ``rows`` (``_cuda.last_launch_phases()``)."""
    return {name: statistics.median(r[name] for r in rows) for name in rows[0]} if rows else {}


def _phase_text(medians: dict[str, float]) -> str:
    """``name us, ...`` of the phases that take at least 0.5 us (medians in seconds)."""
    return ", ".join(f"{k} {1e6 * v:.1f}" for k, v in medians.items() if v >= 5e-7) or "-"


def _split_medians(values: list[float], flags: list[bool]) -> dict[str, Any]:
    """Median of ``values`` where ``flags`` is true and where it is false (None if none), and the
    fraction of true flags."""
    yes = [v for v, f in zip(values, flags, strict=True) if f]
    no = [v for v, f in zip(values, flags, strict=True) if not f]
    return {
        "fraction": len(yes) / len(values) if values else None,
        "median_when_true_s": statistics.median(yes) if yes else None,
        "median_when_false_s": statistics.median(no) if no else None,
    }


# the in-loop tracker.step() splits of bench_tracker: (key, the condition in words)
_STEP_SPLITS = (
    ("tracker_step_bg_busy", "the background thread was converting a batch"),
    ("tracker_step_gc", "a garbage collection ran"),
)


def _split_text(split: dict[str, Any], what: str) -> str:
    """One line on a :func:`_split_medians` result whose flag means ``what``."""
    yes, no = split["median_when_true_s"], split["median_when_false_s"]
    return (
        f"`tracker.step()` calls where {what}: {100 * split['fraction']:.0f} %, median "
        + (f"{1e3 * yes:.3f} ms" if yes is not None else "-")
        + " against "
        + (f"{1e3 * no:.3f} ms" if no is not None else "-")
        + " in the others"
    )


def _append_last_phases(rows: list[dict[str, float]]) -> None:
    """Append the calling thread's last launch phases to ``rows`` (if it launched any)."""
    from pyweightstat.stats import _cuda

    row = _cuda.last_launch_phases()
    if row is not None:
        rows.append(row)


@contextmanager
def _gc_counter() -> Iterator[list[int]]:
    """While it lasts, ``counter[0]`` counts the garbage collections started (any generation)."""
    counter = [0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            counter[0] += 1

    gc.callbacks.append(on_gc)
    try:
        yield counter
    finally:
        gc.callbacks.remove(on_gc)


def _hot_and_cold_launches(
    launch: Callable[[], Any],
    sync: Callable[[], None],
    sweep: Callable[[], None],
    rounds: int = 20,
    clock: Callable[[], float] = time.perf_counter,
    after: Callable[[str], None] | None = None,
) -> tuple[list[float], list[float]]:
    """Host times of ``launch()`` hot (right after another launch) and cold (right after
    ``sweep()``, which evicts the CPU caches as the host work of a training step does), each
    with the device idle first (``sync()``): ``(hot, cold)``, ``rounds`` of each. ``after``
    is called with ``"hot"`` or ``"cold"`` after each timed launch, outside the timed window.

    Tells apart two explanations of a tracker record that costs the training thread more inside
    the loop than back to back: the host's cold caches (then cold is close to the in-loop time)
    or the device's state (then cold stays near hot)."""
    hot: list[float] = []
    cold: list[float] = []

    def timed(kind: str, times: list[float]) -> None:
        t = clock()
        launch()
        times.append(clock() - t)
        if after is not None:
            after(kind)

    for _ in range(rounds):
        sync()
        launch()
        timed("hot", hot)
        sync()
        sweep()
        timed("cold", cold)
    return hot, cold


@contextmanager
def _timed_plan_launches(
    sink: Callable[[], list[float]],
    enabled: bool = True,
    phases: Callable[[], list[dict[str, float]]] | None = None,
    matches: list[float] | None = None,
) -> Iterator[None]:
    """While it lasts (and ``enabled``), every ``Plan.launch`` appends its host time to the list
    that ``sink()`` returns at that call (CUDA plans only), with ``phases`` the launch's phases
    in the C++ layer (``_cuda.last_launch_phases()``) to the list ``phases()`` returns, and with
    ``matches`` every ``Plan.matches`` (the tracker's check that the storage did not move) its
    host time to that list."""
    if not enabled:
        yield
        return
    from pyweightstat.stats import _cuda

    plan_launch, plan_matches = _cuda.Plan.launch, _cuda.Plan.matches

    def timed_matches(plan: Any, tensors: list[Any]) -> bool:
        t = time.perf_counter()
        try:
            return plan_matches(plan, tensors)
        finally:
            matches.append(time.perf_counter() - t)  # type: ignore[union-attr]

    def timed_launch(plan: Any) -> Any:
        t = time.perf_counter()
        try:
            return plan_launch(plan)
        finally:
            sink().append(time.perf_counter() - t)
            if phases is not None:
                _append_last_phases(phases())

    _cuda.Plan.launch = timed_launch  # type: ignore[method-assign]
    if matches is not None:
        _cuda.Plan.matches = timed_matches  # type: ignore[method-assign]
    try:
        yield
    finally:
        _cuda.Plan.launch = plan_launch  # type: ignore[method-assign]
        _cuda.Plan.matches = plan_matches  # type: ignore[method-assign]


def bench_tracker(
    model: torch.nn.Module, step: Callable[[], None], step_s: float, device: str, log: Callable
) -> dict[str, Any]:
    """Per-step cost of ``WeightTracker`` (every=1, m=3) in a training loop of ``model``.

    Three measurements:

    * ``tracker_gpu_s``: device time of one record. A ~10 ms sleep kernel is queued first so
      that the host is ahead and the events time only the GPU work (CUDA only); also
      ``plan_no_hist_gpu_s`` (moments only) and ``tracker_hist_every4_gpu_s`` (the mean over a
      ``hist_every=4`` cycle);
    * ``tracker_host_s``: host time of one ``record()`` call (no synchronisation), the mean
      over 48 calls (conversions run in batches: some calls copy a batch, most none), with a
      profile of those calls by function (``tracker_host_profile``) and, on CUDA, the host time
      to enqueue one training step (``train_step_host_s``: above the step's GPU time the loop is
      host-bound, and the tracker's host time adds to every step);
    * ``tracker_ab_fraction``: what tracking adds to a step, from alternating blocks of ``k``
      training steps without and with ``tracker.step()`` (P T P ... T P, one tracker with the
      default settings, background conversion included: a tracked block waits for its batches
      before its clock stops); the median over tracked blocks of (T - mean of its two P
      neighbours) / that mean, and ``tracker_ab_mean_fraction`` from the means of all blocks;
      with the host time of every ``tracker.step()`` in the tracked blocks, the background
      thread's CPU time per converted record (``tracker_background_cpu_per_record_s``) and,
      from one more tracked block under cProfile, pyweightstat's own time per step on the
      training thread (``tracker_in_loop_profile``): where a host-bound loop pays for tracking.
    """
    from pyweightstat import WeightTracker

    out: dict[str, Any] = {}
    tracker = WeightTracker(model, mantissa_bits=3, max_pending=10**9)
    for _ in range(3):
        tracker.record()  # builds the plan, warms the allocator
    host = []
    for _ in range(48):
        t0 = time.perf_counter()
        tracker.record()
        host.append(time.perf_counter() - t0)
    out["tracker_host_s"] = statistics.fmean(host)
    out["tracker_host_median_s"] = statistics.median(host)
    out["tracker_host_max_s"] = max(host)
    out["tracker_host_profile"] = _host_profile(tracker.record, 48)
    log(
        f"  record() host time: mean {1e3 * out['tracker_host_s']:.3f} ms, median "
        f"{1e3 * out['tracker_host_median_s']:.3f} ms, max {1e3 * out['tracker_host_max_s']:.3f} "
        "ms; by function (cProfile, 48 calls, own time per call):"
    )
    for row in out["tracker_host_profile"]:
        log(f"    {1e3 * row['tottime_per_call_s']:8.3f} ms  x{row['calls']:<5} {row['function']}")
    if device == "cuda":
        from pyweightstat.stats import _cuda

        def gpu_time(fn: Callable[[], Any]) -> float:
            times = []
            for _ in range(20):
                torch.cuda.synchronize()
                torch.cuda._sleep(20_000_000)  # ~10 ms: the host is ahead, events time the GPU
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            return statistics.median(times)

        out["tracker_gpu_s"] = gpu_time(tracker.record)
        host_step = []
        for _ in range(5):
            torch.cuda.synchronize()
            torch.cuda._sleep(400_000_000)  # ~200 ms: the GPU is busy, the host only enqueues
            t0 = time.perf_counter()
            step()
            host_step.append(time.perf_counter() - t0)
        torch.cuda.synchronize()
        out["train_step_host_s"] = statistics.median(host_step)
        log(
            f"  host time to enqueue one training step: {1e3 * out['train_step_host_s']:.1f} ms "
            f"(GPU step {1e3 * step_s:.1f} ms)"
        )
        params = list(model.parameters())
        plain = _cuda.Plan(params, None)
        out["plan_no_hist_gpu_s"] = gpu_time(plain.launch)
        del plain
        # hist_every=4: moments at every record, histograms at every 4th (mean over a cycle)
        sparse = WeightTracker(model, mantissa_bits=3, max_pending=10**9, hist_every=4)
        for _ in range(4):
            sparse.record()  # builds both plans

        # The plans' launches only: a record() in the timed window would also copy the record
        # of 3 steps before, which waits behind the sleep and would leave the GPU idle.
        with_hist, moments_only = sparse._plans[True], sparse._plans[False]

        def cycle() -> None:
            with_hist.launch()
            for _ in range(3):
                moments_only.launch()

        out["tracker_hist_every4_gpu_s"] = gpu_time(cycle) / 4
        del sparse
        log(
            f"  GPU time per record: {1e3 * out['tracker_gpu_s']:.3f} ms with m=3 histograms "
            f"({100 * out['tracker_gpu_s'] / step_s:.2f} % of a step), "
            f"{1e3 * out['plan_no_hist_gpu_s']:.3f} ms for moments only; "
            f"hist_every=4: {1e3 * out['tracker_hist_every4_gpu_s']:.3f} ms "
            f"({100 * out['tracker_hist_every4_gpu_s'] / step_s:.2f} %)"
        )
        out["tracker_kernels_5_records"] = kernel_profile(tracker.record, 5, "record", log)
        sweep_buf = np.ones(64 << 20, np.float32)  # 256 MiB: more than a host CPU's caches
        hot_cold_phases: dict[str, list[dict[str, float]]] = {"hot": [], "cold": []}
        hot, cold = _hot_and_cold_launches(
            tracker._plans[True].launch,
            torch.cuda.synchronize,
            lambda: float(sweep_buf.sum()),
            after=lambda kind: _append_last_phases(hot_cold_phases[kind]),
        )
        del sweep_buf
        out["plan_launch_hot_host_median_s"] = statistics.median(hot)
        out["plan_launch_cold_host_median_s"] = statistics.median(cold)
        for kind, rows in hot_cold_phases.items():
            out[f"plan_launch_{kind}_phases_median_s"] = _phase_medians(rows)
        log(
            f"  Plan.launch host time, device idle: {1e3 * statistics.median(hot):.3f} ms back to "
            f"back, {1e3 * statistics.median(cold):.3f} ms after a 256 MiB sweep of host memory "
            "(cold CPU caches; medians of 20); phases in the C++ layer (median us): back to back "
            f"{_phase_text(out['plan_launch_hot_phases_median_s'])}; cold "
            f"{_phase_text(out['plan_launch_cold_phases_median_s'])}"
        )
    t0 = time.perf_counter()
    out["tracker_final_flush_records"] = len(tracker._pending)
    tracker.trajectory()  # copies what is still pending (on CUDA: the last 3 records)
    out["tracker_final_flush_s"] = time.perf_counter() - t0
    del tracker

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    # A/B in alternating blocks P T P T ... P of k steps; each tracked block is compared with
    # the mean of its two neighbours (slow drifts of the host or the GPU cancel). A tracked
    # block also waits for its background conversions, so it pays for all of its records.
    k = 20 if device == "cuda" else 3
    pairs = 30 if device == "cuda" else 3
    tracked = WeightTracker(model, mantissa_bits=3)
    tracked.record()  # builds the plan outside the timed blocks
    tracked.trajectory()

    step_host: list[float] = []  # host time of each tracker.step() inside the training loop
    drain_host: list[float] = []  # host time of a tracked block's final wait for its batches
    # the background thread's CPU time per batch of records it converts (time.thread_time there)
    bg_cpu: list[tuple[float, int]] = []
    run_job = tracked._run_job

    def timed_job(job: Any) -> None:
        records, t = len(job.records), time.thread_time()
        try:
            run_job(job)
        finally:
            bg_cpu.append((time.thread_time() - t, records))

    tracked._run_job = timed_job  # type: ignore[method-assign]

    # Inside tracker.step(): the host time of Plan.launch (the enqueue: Python, bindings and the
    # CUDA driver's launch calls), and whether the GPU was still busy with the training step when
    # the tracker was called (a launch then waits for room in a full launch queue, if any).
    launch_host: list[float] = []
    launch_phases: list[dict[str, float]] = []
    matches_host: list[float] = []  # Plan.matches: the check that the storage did not move
    gpu_busy: list[bool] = []
    # ... and whether the tracker's background thread was converting a batch when the call began
    # (it competes for the GIL, which Plan.launch releases during its driver calls), and whether
    # a garbage collection ran inside the call
    bg_busy: list[bool] = []
    had_gc: list[bool] = []

    def block(tr: WeightTracker | None) -> float:
        step()
        sync()
        before = tracked.num_records
        t0 = time.perf_counter()
        for _ in range(k):
            step()
            if tr is not None:
                if device == "cuda":
                    gpu_busy.append(not torch.cuda.current_stream().query())
                bg_busy.append(any(not future.done() for future, _ in tr._jobs))
                collections = gcs[0]
                t1 = time.perf_counter()
                tr.step()
                step_host.append(time.perf_counter() - t1)
                had_gc.append(gcs[0] != collections)
        if tr is not None:
            t1 = time.perf_counter()
            tr._drain()
            drain_host.append(time.perf_counter() - t1)
        sync()
        seconds = (time.perf_counter() - t0) / k
        assert tracked.num_records == before + (k if tr is not None else 0)
        return seconds

    with (
        _timed_plan_launches(
            lambda: launch_host, device == "cuda", lambda: launch_phases, matches_host
        ),
        _gc_counter() as gcs,
    ):
        times = [block(tracked if i % 2 else None) for i in range(2 * pairs + 1)]
    plain_s, tracked_s = times[0::2], times[1::2]
    fracs = _against_neighbours(plain_s, tracked_s)
    out.update(
        tracker_ab_fraction=statistics.median(fracs),
        tracker_ab_fractions=fracs,
        tracker_ab_mean_fraction=statistics.fmean(tracked_s) / statistics.fmean(plain_s) - 1,
        tracker_ab_plain_s=statistics.median(plain_s),
        tracker_ab_tracked_s=statistics.median(tracked_s),
        tracker_ab_steps=k,
        tracker_ab_rounds=pairs,
        tracker_step_host_median_s=statistics.median(step_host),
        tracker_step_host_mean_s=statistics.fmean(step_host),
        tracker_step_host_max_s=max(step_host),
        tracker_step_host_p99_s=sorted(step_host)[
            min(len(step_host) - 1, int(0.99 * len(step_host)))
        ],
        tracker_drain_host_mean_s=statistics.fmean(drain_host),
        tracker_step_bg_busy=_split_medians(step_host, bg_busy),
        tracker_step_gc=_split_medians(step_host, had_gc),
    )
    if launch_host:
        out["tracker_launch_host_median_s"] = statistics.median(launch_host)
        out["tracker_launch_host_mean_s"] = statistics.fmean(launch_host)
        out["tracker_gpu_busy_fraction"] = sum(gpu_busy) / len(gpu_busy)
        out["tracker_launch_phases_median_s"] = _phase_medians(launch_phases)
        out["tracker_matches_host_median_s"] = statistics.median(matches_host)
    tracked._drain()
    converted = sum(r for _, r in bg_cpu)
    out["tracker_background_cpu_per_record_s"] = (
        sum(t for t, _ in bg_cpu) / converted if converted else None
    )
    # Where the training thread's time goes in tracked steps: one more tracked block under
    # cProfile (training thread only; the profiler slows Python code, so read shares, not times),
    # pyweightstat's functions by own time per step.
    out["tracker_in_loop_profile"] = _host_profile(
        lambda: (step(), tracked.step()), k, only="pyweightstat"
    )
    tracked._drain()
    gpu_txt = (
        f"GPU {1e3 * out['tracker_gpu_s']:.3f} ms ({100 * out['tracker_gpu_s'] / step_s:.2f} %), "
        if "tracker_gpu_s" in out
        else ""
    )
    log(
        f"  WeightTracker.record(): {gpu_txt}host {1e3 * out['tracker_host_s']:.3f} ms, "
        f"final flush of {out['tracker_final_flush_records']} records "
        f"{1e3 * out['tracker_final_flush_s']:.3f} ms; "
        f"A/B over {pairs} tracked blocks of {k} steps: {100 * out['tracker_ab_fraction']:+.2f} "
        f"% per step (median; ratio of means {100 * out['tracker_ab_mean_fraction']:+.2f} %) "
        f"({[round(100 * f, 2) for f in fracs]})"
    )
    mean_pct = 100 * out["tracker_step_host_mean_s"] / out["tracker_ab_plain_s"]
    log(
        f"  tracker.step() host time inside the training loop ({len(step_host)} calls): median "
        f"{1e3 * out['tracker_step_host_median_s']:.3f} ms, mean "
        f"{1e3 * out['tracker_step_host_mean_s']:.3f} ms, p99 "
        f"{1e3 * out['tracker_step_host_p99_s']:.3f} ms, max "
        f"{1e3 * out['tracker_step_host_max_s']:.3f} ms ({mean_pct:.2f} % of an untracked step); "
        f"wait for the background batches at a block's end: mean "
        f"{1e3 * out['tracker_drain_host_mean_s']:.3f} ms per {k} steps"
    )
    if launch_host:
        log(
            f"  of which Plan.launch: median {1e3 * out['tracker_launch_host_median_s']:.3f} ms, "
            f"mean {1e3 * out['tracker_launch_host_mean_s']:.3f} ms; the GPU was still busy with "
            f"the training step at {100 * out['tracker_gpu_busy_fraction']:.0f} % of the "
            "tracker.step() calls; Plan.launch's phases in the C++ layer (median us): "
            f"{_phase_text(out['tracker_launch_phases_median_s'])}; Plan.matches median "
            f"{1e3 * out['tracker_matches_host_median_s']:.3f} ms"
        )
    for key, what in _STEP_SPLITS:
        log(f"  {_split_text(out[key], what)}")
    bg = out["tracker_background_cpu_per_record_s"]
    log(
        "  background conversion thread: "
        + (f"{1e3 * bg:.3f} ms of CPU time per record" if bg is not None else "no batches")
        + f" ({len(bg_cpu)} batches); pyweightstat's own time per tracked step under cProfile "
        f"(training thread, {k} steps; share of the profiled step):"
    )
    for row in out["tracker_in_loop_profile"]:
        log(
            f"    {1e3 * row['tottime_per_call_s']:8.3f} ms  {100 * row['share']:5.1f} %  "
            f"x{row['calls']:<5} {row['function']}"
        )
    if device == "cuda":
        out.update(bench_plan_tables(model, step, k, pairs=20, log=log))
    return out


def bench_plan_tables(
    model: torch.nn.Module, step: Callable[[], None], k: int, pairs: int, log: Callable
) -> dict[str, Any]:
    """Per-step tracking with the plan's launch tables as kernel parameters (the default) against
    a copy of them in device memory (``Plan(device_table=True)``): alternating tracked blocks of
    ``k`` training steps, P D P D ... P, each D block against the mean of its two P neighbours;
    the host time of every ``tracker.step()`` and of its ``Plan.launch`` in both forms (CUDA).
    """
    from pyweightstat import WeightTracker
    from pyweightstat.stats import _cuda

    trackers = {}
    for device_table in (False, True):
        _cuda.DEVICE_TABLES = device_table
        try:
            tr = WeightTracker(model, mantissa_bits=3)
            tr.record()  # builds the plan (and, for True, copies its tables at the launch)
            tr.trajectory()
        finally:
            _cuda.DEVICE_TABLES = None
        assert next(iter(tr._plans.values())).device_table is device_table
        trackers[device_table] = tr
    step_host: dict[bool, list[float]] = {False: [], True: []}
    launch_host: dict[bool, list[float]] = {False: [], True: []}
    launch_phases: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    current: list[bool] = [False]

    def block(device_table: bool) -> float:
        tr = trackers[device_table]
        current[0] = device_table
        step()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(k):
            step()
            t1 = time.perf_counter()
            tr.step()
            step_host[device_table].append(time.perf_counter() - t1)
        tr._drain()
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) / k

    with _timed_plan_launches(
        lambda: launch_host[current[0]], phases=lambda: launch_phases[current[0]]
    ):
        times = [block(bool(i % 2)) for i in range(2 * pairs + 1)]
    fracs = _against_neighbours(times[0::2], times[1::2])
    out = {
        "plan_tables_ab_fraction": statistics.median(fracs),
        "plan_tables_ab_fractions": fracs,
        "plan_tables_steps": k,
        "plan_tables_rounds": pairs,
    }
    for device_table, name in ((False, "param"), (True, "device")):
        out[f"plan_tables_{name}_step_host_median_s"] = statistics.median(step_host[device_table])
        out[f"plan_tables_{name}_step_host_mean_s"] = statistics.fmean(step_host[device_table])
        out[f"plan_tables_{name}_launch_host_median_s"] = statistics.median(
            launch_host[device_table]
        )
        out[f"plan_tables_{name}_launch_phases_median_s"] = _phase_medians(
            launch_phases[device_table]
        )
    log(
        f"  plan tables in device memory vs as kernel parameters ({pairs} blocks of {k} tracked "
        f"steps each): step time {100 * out['plan_tables_ab_fraction']:+.2f} % (median); "
        "tracker.step() host time median/mean "
        f"{1e3 * out['plan_tables_device_step_host_median_s']:.3f}/"
        f"{1e3 * out['plan_tables_device_step_host_mean_s']:.3f} ms against "
        f"{1e3 * out['plan_tables_param_step_host_median_s']:.3f}/"
        f"{1e3 * out['plan_tables_param_step_host_mean_s']:.3f} ms; Plan.launch median "
        f"{1e3 * out['plan_tables_device_launch_host_median_s']:.3f} ms against "
        f"{1e3 * out['plan_tables_param_launch_host_median_s']:.3f} ms; its phases (median us): "
        f"device {_phase_text(out['plan_tables_device_launch_phases_median_s'])}; parameters "
        f"{_phase_text(out['plan_tables_param_launch_phases_median_s'])}"
    )
    return out


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--sizes", default=None, help="comma-separated sizes, e.g. 1e6,1e7,1e8")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--repeat", type=int, default=None, help="timed runs per operation")
    p.add_argument("--quick", action="store_true", help="sizes up to 1e7, few repeats")
    p.add_argument("--k", type=int, default=256, help="number of histograms for K x K distances")
    p.add_argument("--train-step", action="store_true", help="also time a ViT-B/16 step (CPU)")
    p.add_argument("--threads", type=int, default=None, help="torch and pyweightstat threads")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--no-save", action="store_true", help="print only, write no files")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = args.device
    if device == "cuda":
        if not torch.cuda.is_available():
            sys.exit("--device cuda: torch sees no GPU")
        if not pws.build_info().get("cuda", False):
            sys.exit("--device cuda: this pyweightstat build has no CUDA kernels")
    if args.threads:
        torch.set_num_threads(args.threads)
        if hasattr(pws, "set_num_threads"):
            pws.set_num_threads(args.threads)
    if args.sizes:
        sizes = [int(float(s)) for s in args.sizes.split(",")]
    elif args.quick:
        sizes = [10**6, 10**7] if device == "cpu" else [10**7, 10**8]
    else:
        sizes = [10**6, 10**7, 10**8] if device == "cpu" else [10**8, 10**9]
    repeat = args.repeat or (3 if args.quick else (5 if device == "cpu" else 20))
    budget = 1.0 if args.quick else 10.0
    # CUDA: ~2 ms of sleep ahead of each timed call (H100 clocks ~2 GHz), so times are device
    # times; describe_many and the training step use their own timers without it.
    timer = Timer(device, repeat, budget, lead_cycles=4_000_000 if device == "cuda" else 0)
    many_timer = Timer(device, repeat, budget)
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    for d in dtypes:
        if d not in DTYPES:
            sys.exit(f"--dtypes: unknown dtype {d!r}; choose from {sorted(DTYPES)}")

    def log(msg: str) -> None:
        print(msg, flush=True)

    meta = machine_metadata(device)
    log(f"# pyweightstat benchmark on {device}: {meta.get('gpu', meta['cpu_model'])}")
    log(f"  sizes {[_fmt_n(s) for s in sizes]}, dtypes {dtypes}, repeat {repeat}")
    rows: list[Row] = []
    skipped: list[str] = []
    for size in sizes:
        for name in dtypes:
            dtype = DTYPES[name]
            if device == "cuda":
                free, _ = torch.cuda.mem_get_info()
                need = size * 24  # data, pure-torch temporaries, sort values + indices
                if need > free:
                    skipped.append(f"{name} {_fmt_n(size)}: needs ~{need / 2**30:.1f} GiB")
                    log(f"  skipped {skipped[-1]}")
                    continue
            t = make_tensor(size, dtype, device, seed=size % 1000)
            bench_tensor(t, name, timer, device, rows, log)
            del t
            if device == "cuda":
                torch.cuda.empty_cache()
    log("# K x K distances")
    bench_distances(many_timer, rows, log, args.k, pairs_budget=300 if args.quick else 2000)
    log("# describe_many over ViT-B/16 parameters")
    many = bench_many(
        many_timer,
        rows,
        log,
        device,
        train_step=(device == "cuda" or args.train_step),
        depth=2 if args.quick else 12,
    )

    targets: dict[str, Any] = {}
    largest = {r.dtype: r.n for r in rows if r.section == "single tensor"}
    for r in rows:
        if r.section != "single tensor" or r.impl != "pyweightstat" or r.n != largest.get(r.dtype):
            continue
        if r.op == "moments (Summary)":
            targets[f"{r.dtype} {_fmt_n(r.n)} moments vs torch.sum (target >= 50 %)"] = (
                r.ratio_to_sum
            )
        if r.op == "moments + hist 256":
            targets[f"{r.dtype} {_fmt_n(r.n)} moments+hist speedup (target >= 10x)"] = r.speedup
    table = markdown_table(rows)
    header = (
        f"Machine: {meta.get('gpu', meta['cpu_model'])}, {meta['logical_cores']} logical cores, "
        f"torch {meta['torch']}, numpy {meta['numpy']}, pyweightstat {meta['pyweightstat']} "
        f"({meta['build_info'].get('simd', '?')}), {meta['date_utc']}\n\n"
    )
    md = (
        header
        + table
        + "\n"
        + "\n".join(
            f"- {k}: {v:.2f}" if isinstance(v, float) else f"- {k}: {v}" for k, v in targets.items()
        )
    )
    if device == "cuda":
        copy = {
            r.dtype: r.gbps
            for r in rows
            if r.op == "device copy (ceiling)" and r.n == largest.get(r.dtype)
        }
        for r in rows:
            if (
                r.section == "single tensor"
                and r.impl == "pyweightstat"
                and r.op == "moments (Summary)"
                and r.n == largest.get(r.dtype)
                and copy.get(r.dtype)
            ):
                key = f"{r.dtype} {_fmt_n(r.n)} fused pass vs copy bandwidth (target >= 80 %)"
                targets[key] = r.gbps / copy[r.dtype]
                md += f"\n- {key}: {100 * targets[key]:.1f} %"
    if "describe_many_fraction" in many:
        frac = many["describe_many_fraction"]
        md += (
            f"\n- ViT-B/16 describe_many(model.parameters(), m=3) timed with events: "
            f"{100 * frac:.2f} % of a step (host-bound: includes the per-tensor Python work)"
        )
    if "tracker_ab_fraction" in many:
        ab = many["tracker_ab_fraction"]
        targets["ViT-B/16 per-step tracking, A/B (target <= 1 %)"] = ab
        md += (
            f"\n- ViT-B/16 per-step tracking (WeightTracker every step, m=3), A/B: "
            f"{100 * ab:+.2f} % of a step (median over {many['tracker_ab_rounds']} tracked blocks "
            f"of {many['tracker_ab_steps']} steps, each against its two untracked neighbours; "
            f"ratio of means {100 * many['tracker_ab_mean_fraction']:+.2f} %; blocks: "
            f"{', '.join(f'{100 * f:+.1f}' for f in many['tracker_ab_fractions'])} %)"
        )
        if "tracker_gpu_s" in many:
            step_s = many["train_step_s"]
            targets["ViT-B/16 tracking GPU time per record / step (target <= 1 %)"] = (
                many["tracker_gpu_s"] / step_s
            )
            md += (
                f"\n- its GPU time per record: {1e3 * many['tracker_gpu_s']:.3f} ms = "
                f"{100 * many['tracker_gpu_s'] / step_s:.2f} % of a "
                f"{1e3 * step_s:.1f} ms step"
            )
        if "tracker_hist_every4_gpu_s" in many:  # informational: not the every-record target
            frac4 = many["tracker_hist_every4_gpu_s"] / many["train_step_s"]
            md += (
                f"\n- with hist_every=4 (moments every step, histograms every 4th): "
                f"{1e3 * many['tracker_hist_every4_gpu_s']:.3f} ms = {100 * frac4:.2f} % per step"
            )
        md += (
            f"\n- its host time per record() call: {1e3 * many['tracker_host_s']:.3f} ms "
            "(mean over 48 back-to-back calls, no training between them: the enqueue, plus on "
            "CUDA the copies of records 3 steps old, a batch at a time)"
        )
        if "tracker_step_host_mean_s" in many:
            md += (
                "\n- host time of `tracker.step()` inside the A/B training loop (the background "
                f"conversion runs during the steps): median "
                f"{1e3 * many['tracker_step_host_median_s']:.3f} ms, mean "
                f"{1e3 * many['tracker_step_host_mean_s']:.3f} ms, p99 "
                f"{1e3 * many['tracker_step_host_p99_s']:.3f} ms, max "
                f"{1e3 * many['tracker_step_host_max_s']:.3f} ms; the mean is "
                f"{100 * many['tracker_step_host_mean_s'] / many['tracker_ab_plain_s']:.2f} % of "
                f"an untracked step ({1e3 * many['tracker_ab_plain_s']:.1f} ms)"
            )
        if "tracker_launch_host_median_s" in many:
            md += (
                f"\n- of which `Plan.launch`: median "
                f"{1e3 * many['tracker_launch_host_median_s']:.3f} ms, mean "
                f"{1e3 * many['tracker_launch_host_mean_s']:.3f} ms; the GPU was still busy with "
                f"the training step at {100 * many['tracker_gpu_busy_fraction']:.0f} % of the calls"
                + (
                    f"; `Plan.matches` median {1e3 * many['tracker_matches_host_median_s']:.3f} ms"
                    if "tracker_matches_host_median_s" in many
                    else ""
                )
            )
        if many.get("tracker_launch_phases_median_s"):
            md += (
                "\n- `Plan.launch`'s phases in the C++ layer, median µs: in the loop "
                f"{_phase_text(many['tracker_launch_phases_median_s'])}; back to back "
                f"{_phase_text(many.get('plan_launch_hot_phases_median_s', {}))}; after a sweep "
                f"of host memory {_phase_text(many.get('plan_launch_cold_phases_median_s', {}))}"
            )
        for key, what in _STEP_SPLITS:
            split = many.get(key)
            if split and split["fraction"] is not None:
                md += f"\n- {_split_text(split, what)}"
        if "plan_tables_ab_fraction" in many:
            md += (
                "\n- the plan's launch tables in device memory instead of kernel parameters "
                f"({many['plan_tables_rounds']} alternating blocks of {many['plan_tables_steps']} "
                f"tracked steps): step time {100 * many['plan_tables_ab_fraction']:+.2f} % "
                "(median); `tracker.step()` host time median "
                f"{1e3 * many['plan_tables_device_step_host_median_s']:.3f} ms against "
                f"{1e3 * many['plan_tables_param_step_host_median_s']:.3f} ms, `Plan.launch` "
                f"median {1e3 * many['plan_tables_device_launch_host_median_s']:.3f} ms against "
                f"{1e3 * many['plan_tables_param_launch_host_median_s']:.3f} ms"
            )
        if "train_step_host_s" in many:
            md += (
                f"\n- host time to enqueue one training step: "
                f"{1e3 * many['train_step_host_s']:.1f} ms (GPU step "
                f"{1e3 * many['train_step_s']:.1f} ms; when it is the larger, the loop is "
                "host-bound and the tracker's host time adds to each step)"
            )
    print()
    print(md)
    if not args.no_save:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        stem = f"bench_stats_{device}_{dt.date.today().isoformat()}"
        payload = {
            "metadata": meta,
            "args": vars(args),
            "sizes": sizes,
            "repeat": repeat,
            "skipped": skipped,
            "rows": [asdict(r) | {"gbps": r.gbps, "elems_per_s": r.elems_per_s} for r in rows],
            "describe_many": many,
            "targets": targets,
        }
        (out / f"{stem}.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
        (out / f"{stem}.md").write_text(md + "\n")
        print(f"\nwrote {out / stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
