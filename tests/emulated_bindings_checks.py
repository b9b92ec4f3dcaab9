"""The CUDA bindings and Python dispatch, run on the host CUDA emulator (inner test module).

Not collected by a plain ``pytest`` run (its name does not start with ``test_``):
``tests/test_cuda_emulated.py::test_cuda_bindings_on_the_emulator`` builds ``pyweightstat._C``
with the CUDA engine compiled against ``tests/cpp/cuda_emu`` and runs this module in a fresh
interpreter where that build replaces the real ``_C``. Inputs are host tensors that claim to live
on ``cuda:0`` through DLPack (the emulator's device memory is host memory), so everything between
``pws.describe_many`` and the kernels runs as on a GPU machine: the DLPack import, the launch
tables, the device result buffers, ``CudaPlan``, the fetches (event waits, pinned staging, the
window copies of ``WindowRows``), ``fetch_many`` and the totals. The tracker's ``Plan`` wrapper and
everything tied to ``torch.cuda`` (streams, graphs, the caching allocator) need a real GPU and are
covered by ``tests/test_cuda.py`` only.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from cuda_cases import DTYPES, param_list, plan_inputs, weights_like
from stats_checks import assert_same_counts, assert_summary_matches

import pyweightstat as pws
from pyweightstat import _C
from pyweightstat.stats import _cuda
from pyweightstat.stats.reference import ref_moments
from pyweightstat.stats.summary import FIELDS, fields_from_states

_DL_CUDA = 2

# What one CudaPlan.launch(..., total=True) of aligned float32 tensors (a model's parameters)
# asks of the CUDA runtime once earlier results were dropped (test below; cudaGetDevice, a read
# of the runtime's thread-local state, is not counted): the zeroing of the histogram records (the
# total's included), the fused, merge and total kernels, and the recording of the event that
# marks the end of its work (an event of a dropped result, taken from a pool, after a check for a
# graph capture). Inputs of k kernel kinds (dtypes; strided or unaligned tensors) take a fused
# and a merge launch per kind.
_PLAN_LAUNCH_COMMON = {
    "kernel launch": 3,
    "cudaStreamIsCapturing": 1,
    "cudaEventRecord": 1,
}
PLAN_LAUNCH_CALLS_HIST = {**_PLAN_LAUNCH_COMMON, "cudaMemsetAsync": 1}
PLAN_LAUNCH_CALLS_MOMENTS = dict(_PLAN_LAUNCH_COMMON)

_get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_get_pointer.restype = ctypes.c_void_p
_get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]


def test_the_emulated_build_is_loaded() -> None:
    assert _C.__file__ == os.environ["PWS_EMU_MODULE"]
    assert pws.build_info()["cuda"] is True


class FakeCuda:
    """A host tensor exported through DLPack as if it lived on ``cuda:<device>``."""

    def __init__(self, t: torch.Tensor, device: int = 0) -> None:
        self.t = t
        self.device = device
        self.shape = tuple(t.shape)
        self.size = t.numel()

    def __dlpack_device__(self) -> tuple[int, int]:
        return (_DL_CUDA, self.device)

    def __dlpack__(self, stream: int | None = None, **kw: object) -> object:
        cap = torch.utils.dlpack.to_dlpack(self.t)
        ptr = _get_pointer(cap, b"dltensor")  # DLManagedTensor: DLTensor first
        ctypes.c_int32.from_address(ptr + 8).value = _DL_CUDA  # dl_tensor.device.device_type
        ctypes.c_int32.from_address(ptr + 12).value = self.device
        return cap


_data = weights_like


def _state(s: pws.Summary) -> tuple[np.ndarray, np.ndarray]:
    f, n = s._state()
    return np.array(f), np.array(n)


def _same_as_cpu(s: pws.Summary, c: pws.Summary, x: torch.Tensor, label: str) -> None:
    """The device result against the CPU engine (counts, extremes, histogram exactly) and the
    float64 reference (moments within the SPEC bounds)."""
    assert_summary_matches(s, ref_moments(x), label)
    assert_same_counts(s, c, label)
    assert (s.hist is None) == (c.hist is None), label
    if s.hist is not None:
        assert s.hist == c.hist, label


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"mantissa_bits": 3},
        {"mantissa_bits": 10},
        {"bins": 64},
        {"bins": 64, "range": (0.2, 0.4)},
    ],
)
def test_describe_is_deferred_and_matches_cpu(dtype: torch.dtype, kw: dict) -> None:
    x = _data(2 * 65536 + 4099, dtype, seed=3)
    s = pws.describe(FakeCuda(x), **kw)
    assert not s.on_host  # nothing copied before a value is read
    c = pws.describe(x, **kw)
    _same_as_cpu(s, c, x, f"{dtype} {kw}")
    assert s.on_host


def _param_list() -> list[torch.Tensor]:
    return param_list(sizes=(0, 1, 768, 3072, 9008, 70_000))  # smaller than on a GPU


@pytest.mark.parametrize(
    "kw",
    # log totals, device-computed edges, a uniform total (the kernels' side of every option is
    # covered by test_cuda_emulated.py; this checks the dispatch and the fetches)
    [{"mantissa_bits": 7}, {"bins": 64}, {"bins": 64, "range": (0, 0.5)}],
)
def test_describe_many_matches_cpu_per_tensor_and_total(kw: dict) -> None:
    xs = _param_list()
    res, total = pws.describe_many([FakeCuda(x) for x in xs], total=True, **kw)
    assert len(res) == len(xs) and not total.on_host
    cpu_res, cpu_total = pws.describe_many(xs, total=True, **kw)
    for i, (x, s, c) in enumerate(zip(xs, res, cpu_res, strict=True)):
        _same_as_cpu(s, c, x, f"tensor {i} {kw}")
    allx = torch.cat([x.reshape(-1).double() for x in xs])
    assert_summary_matches(total, ref_moments(allx), "total")
    assert total.hist == cpu_total.hist  # None for per-tensor uniform ranges, as on the CPU


def test_results_share_one_buffer_freed_after_the_first_read() -> None:
    xs = [_data(1000 + i, torch.float32, seed=i) for i in range(4)]
    res = pws.describe_many([FakeCuda(x) for x in xs])
    call = res[0]._fetch.call
    _ = res[2].mean  # one fetch copies every tensor's state ...
    assert call._res is not None and call._handle is None  # ... and frees the device buffer
    assert [s.count for s in res] == [990, 991, 992, 993]


def _plan_inputs() -> list[torch.Tensor]:
    return plan_inputs(first=300_007)  # smaller than on a GPU


def _plan(xs: list[torch.Tensor], hist_kind: int, m: int) -> object:
    caps = [FakeCuda(x).__dlpack__() for x in xs]
    return _C.CudaPlan(caps, [f"xs[{i}]" for i in range(len(xs))], 0, hist_kind, m)


def _check_fetch_many(out: tuple, expected_runs: list[list[pws.Summary]]) -> None:
    """fetch_many's arrays against Summaries of the same launches (bit-identical states)."""
    f, n, nnz, buckets, counts, flows = out
    runs, slots = len(expected_runs), len(expected_runs[0])
    assert f.shape == (runs, slots, 8) and n.shape == (runs, slots, 5)
    assert nnz.shape == (runs, slots) and int(nnz.sum()) == len(buckets) == len(counts)
    fields = fields_from_states(f, n)
    off = 0
    for r in range(runs):
        for t, s in enumerate(expected_runs[r]):
            fs, ns = _state(s)
            assert f[r, t].tobytes() == fs.tobytes(), (r, t)
            np.testing.assert_array_equal(n[r, t], ns)
            want = [float(getattr(s, k)) for k in FIELDS]
            np.testing.assert_array_equal([float(v) for v in fields[r, t]], want)
            k = int(nnz[r, t])
            if s.hist is not None:
                dense = np.asarray(s.hist.counts)
                idx = np.flatnonzero(dense)
                np.testing.assert_array_equal(buckets[off : off + k], idx + s.hist.first)
                np.testing.assert_array_equal(counts[off : off + k], dense[idx])
                assert tuple(flows[r, t]) == (
                    s.hist.underflow,
                    s.hist.overflow,
                    s.hist.nan_count,
                )
            else:
                assert k == 0
            off += k
    assert off == len(counts)


@pytest.mark.parametrize("allocator", ["cudaMallocAsync", "python"])
def test_plan_and_fetch_many_match_describe_many(allocator: str) -> None:
    xs = _plan_inputs()
    plan = _plan(xs, 2, 3)
    alloc = None
    kept: list[torch.Tensor] = []
    if allocator == "python":  # an allocator callable, as the torch path passes

        def alloc(nbytes: int) -> torch.Tensor:
            # torch's caching allocator hands a freed block out again only in stream order; the
            # emulator runs queued work late, so this stand-in keeps everything it handed out
            kept.append(torch.empty(nbytes, dtype=torch.uint8))
            return kept[-1]

    results, expected = [], []
    for r in range(3):  # the plan reads the tensors' current values at each launch
        if r:
            for x in xs:
                x.mul_(1.5)
        results.append(plan.launch(0, alloc, True))
        summaries, total = pws.describe_many([FakeCuda(x) for x in xs], total=True, mantissa_bits=3)
        cpu, cpu_total = pws.describe_many(xs, total=True, mantissa_bits=3)
        for i, (x, s, c) in enumerate(zip(xs, summaries, cpu, strict=True)):
            _same_as_cpu(s, c, x, f"run {r} tensor {i}")
        assert total.hist == cpu_total.hist
        expected.append([*summaries, total])
    _check_fetch_many(_C.fetch_many(results), expected)


def test_moments_only_plan() -> None:
    xs = _plan_inputs()
    plan = _plan(xs, 0, 0)
    out = _C.fetch_many([plan.launch(0, None, True), plan.launch(0, None, True)])
    summaries, total = pws.describe_many([FakeCuda(x) for x in xs], total=True)
    _check_fetch_many(out, [[*summaries, total]] * 2)


def test_fetches_of_scattered_windows() -> None:
    # Windows far apart on the m = 10 grid: both fetch paths copy window by window.
    g = torch.Generator().manual_seed(21)
    scales = [1e-30, -1e-20, 1e-10, 1.0, 3.0, 1e10, -1e20, 1e30]
    xs = [s * (1 + 0.01 * torch.rand(5000, generator=g)) for s in scales]
    summaries, total = pws.describe_many([FakeCuda(x) for x in xs], total=True, mantissa_bits=10)
    for x, s in zip(xs, summaries, strict=True):
        assert s.hist == pws.log_histogram(x, mantissa_bits=10)
    assert total.hist == pws.log_histogram(torch.cat(xs), mantissa_bits=10)
    plan = _plan(xs, 2, 10)
    out = _C.fetch_many([plan.launch(0, None, True), plan.launch(0, None, True)])
    _check_fetch_many(out, [[*summaries, total]] * 2)


def test_quantiles_and_distances_on_the_device() -> None:
    x = _data(200_003, torch.float32, seed=8)
    q = [0.01, 0.5, 0.99]
    np.testing.assert_array_equal(
        pws.quantile(FakeCuda(x), q, mantissa_bits=7), pws.quantile(x, q, mantissa_bits=7)
    )
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 50, size=(37, 300)).astype(np.int64)
    counts[5] = 0
    centres = np.linspace(-1.0, 1.0, 300)
    for metric in range(5):
        got = _C.pairwise_distances_cuda(counts, centres, metric, 0)
        ref = _C.pairwise_distances(counts, centres, metric)
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-15, equal_nan=True)


def test_refused_inputs_name_the_problem() -> None:
    with pytest.raises(ValueError, match="same GPU"):
        pws.describe_many(
            [FakeCuda(_data(10, torch.float32)), FakeCuda(_data(10, torch.float32), 1)]
        )
    big = _data(3**8, torch.float32, seed=4).reshape([3] * 8)[(slice(0, 2),) * 8]
    with pytest.raises(ValueError, match="cannot be merged"):
        pws.describe(FakeCuda(big))
    with pytest.raises(TypeError, match="CudaResult"):
        _C.fetch_many([None])
    with pytest.raises(TypeError, match="dtype"):
        pws.describe(FakeCuda(torch.zeros(3, dtype=torch.int32)))


def test_chunk_length_rule() -> None:
    # describe_cuda.h: chunks of 2^16 values, of 2^17 or 2^18 for a tensor that keeps at least 320
    # chunks of that length, but 2^16 in a request with a uniform histogram; PWS_CUDA_CHUNK (when
    # the outer test sets it) fixes one length for all.
    base, big, least = 1 << 16, 1 << 18, 320
    assert (_C.CUDA_CHUNK, _C.CUDA_BIG_CHUNK, _C.CUDA_MIN_TENSOR_CHUNKS) == (base, big, least)
    fixed = os.environ.get("PWS_CUDA_CHUNK")
    cases = [0, 1, 1000, base, 10_000_000, 30_000_000, 50_000_000, 10**8, 10**9, 1 << 40]
    cases += [least * c + d for c in (1 << 17, 1 << 18, 1 << 19) for d in (-1, 0, 1)]
    for n in cases:
        if fixed is not None:
            want = int(fixed)
        else:  # the longest length that still gives `least` whole chunks, at most 2^18
            want = max([base] + [c for c in (1 << 17, 1 << 18) if n >= least * c])
        assert _C.cuda_chunk_length(n) == want, (n, fixed)
        uniform = base if fixed is None else int(fixed)
        assert _C.cuda_chunk_length(n, uniform_histogram=True) == uniform, (n, fixed)
    if fixed is None:  # the sizes of the benchmarks: 382 chunks of 2^18 for 10^8 values
        assert [-(-n // _C.cuda_chunk_length(n)) for n in (10**7, 5 * 10**7, 10**8, 10**9)] == [
            153,
            382,
            382,
            3815,
        ]


def test_small_launch_tables_give_the_same_bits() -> None:
    # describe_cuda.h kSmallBatch: moments-only launches of at most 4 tensors carry a small
    # launch table unless PWS_CUDA_SMALL_TABLE=0. The outer test runs this with and without it
    # and compares the raw states written to PWS_STATE_DUMP byte for byte; here, against the CPU.
    assert _C.CUDA_SMALL_BATCH == 4
    assert _C.cuda_small_tables() == (os.environ.get("PWS_CUDA_SMALL_TABLE", "1") != "0")
    sizes = [3 * 65536 + 17, 1, 0, 70_000, 5 * 65536, 4099]
    xs = [_data(n, DTYPES[i % len(DTYPES)], seed=40 + i) for i, n in enumerate(sizes)]
    xs.append(_data(64 * 33, torch.float32, seed=50).view(64, 33).t())  # strided: generic kind
    calls = [[x] for x in xs] + [xs[:4], xs[:5], xs]  # 1, 4 (small) and 5, 7 (big) tensors
    dump = []
    for group in calls:
        res, total = pws.describe_many([FakeCuda(x) for x in group], total=True)
        cpu, _ = pws.describe_many(group, total=True)
        for i, (x, s, c) in enumerate(zip(group, res, cpu, strict=True)):
            _same_as_cpu(s, c, x, f"{len(group)} tensors, tensor {i}")
        dump += [b"".join(a.tobytes() for a in _state(s)) for s in [*res, total]]
    # uniform bins from the data's range: a moments launch first, then the histogram launch
    s = pws.describe(FakeCuda(xs[0]), bins=64)
    _same_as_cpu(s, pws.describe(xs[0], bins=64), xs[0], "data-range bins")
    dump.append(b"".join(a.tobytes() for a in _state(s)) + np.asarray(s.hist.counts).tobytes())
    path = os.environ.get("PWS_STATE_DUMP")
    if path:
        with open(path, "wb") as fh:
            fh.write(b"".join(dump))


def test_plan_device_tables_give_the_same_bits() -> None:
    # CudaPlan(device_table=True): the tables copied to device memory at the first launch, the
    # kernels read them through a pointer; fetch_many's arrays equal the default form's, which
    # equal describe_many's (test_plan_and_fetch_many_match_describe_many).
    xs = _plan_inputs()
    assert _C.cuda_plan_device_tables() is False  # PWS_CUDA_PLAN_TABLE unset: parameters
    names = [f"xs[{i}]" for i in range(len(xs))]
    outs = []
    for device_table in (False, True):
        for hist_kind, m in ((2, 3), (2, 7), (0, 0)):
            caps = [FakeCuda(x).__dlpack__() for x in xs]
            plan = _C.CudaPlan(caps, names, 0, hist_kind, m, device_table)
            assert plan.device_table is device_table
            results = [plan.launch(0, None, True) for _ in range(2)]
            del plan  # the results keep the tables (and their device copy) alive
            outs.append(_C.fetch_many(results))
        caps = [FakeCuda(x).__dlpack__() for x in xs]
        dropped = _C.CudaPlan(caps, names, 0, 2, 3, device_table).launch(0, None, True)
        del dropped  # freed unread: the queued kernels run before the device copy is freed
    for a, b in zip(outs[:3], outs[3:], strict=True):
        for x, y in zip(a, b, strict=True):
            assert x.dtype == y.dtype and x.tobytes() == y.tobytes()
    summaries, total = pws.describe_many([FakeCuda(x) for x in xs], total=True, mantissa_bits=3)
    _check_fetch_many(outs[3], [[*summaries, total]] * 2)


def test_a_second_total_of_one_plan_result_counts_each_value_once() -> None:
    # A result's first total adds into the record that the pass zeroed with the tensors' records;
    # a second launch_total on the same result must clear it first (the emulator's fresh memory
    # is garbage, so a missed zeroing and a double count both show).
    xs = _plan_inputs()
    plan = _plan(xs, 2, 3)
    once = _C.fetch_many([plan.launch(0, None, True)])
    again = plan.launch(0, None, True)
    again.launch_total(True)
    twice = _C.fetch_many([again])
    for a, b in zip(once, twice, strict=True):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    summaries, total = pws.describe_many([FakeCuda(x) for x in xs], total=True, mantissa_bits=3)
    _check_fetch_many(twice, [[*summaries, total]])


def _traced(fn: Callable[[], object], trace: Path) -> tuple[object, Counter]:
    """``fn()`` and the runtime calls (``call NAME``) and kernel launches it made."""
    os.environ["PWS_EMU_TRACE"] = str(trace)
    try:
        out = fn()
    finally:
        del os.environ["PWS_EMU_TRACE"]
    lines = trace.read_text().splitlines() if trace.exists() else []
    trace.unlink(missing_ok=True)
    calls = Counter("kernel launch" if ln.startswith("launch ") else ln.split()[1] for ln in lines)
    return out, calls


def test_a_plan_launch_makes_few_runtime_calls(tmp_path: Path) -> None:
    # What a tracker's record costs the training thread besides Python: CudaPlan.launch with its
    # total, at every recorded step. On a GPU each runtime call below is driver work on that
    # thread, and each allocation a call into torch's caching allocator. Pinned here so that a
    # change that adds one is a decision, not an accident (bench/emu_host_cost.py reports them).
    params = [_data(n, torch.float32, seed=60 + i) for i, n in enumerate((300_007, 768, 4099))]
    mixed = _plan_inputs()  # 4 kernel kinds: float32, bfloat16, float16, generic
    kept: list[torch.Tensor] = []

    def alloc(nbytes: int) -> torch.Tensor:
        kept.append(torch.empty(nbytes, dtype=torch.uint8))
        return kept[-1]

    # allocations: the result with its scratch after it where the scratch is at most an eighth
    # of the result (log histograms); else the scratch apart, freed after the launches (moments)
    cases = [
        (params, 2, 3, PLAN_LAUNCH_CALLS_HIST, 1),
        (params, 0, 0, PLAN_LAUNCH_CALLS_MOMENTS, 2),
        (mixed, 2, 3, {**PLAN_LAUNCH_CALLS_HIST, "kernel launch": 2 * 4 + 1}, 1),
    ]
    for xs, hist_kind, m, want, allocations in cases:
        plan = _plan(xs, hist_kind, m)
        _C.fetch_many([plan.launch(0, alloc, True)])  # warm-up
        kept.clear()
        res, calls = _traced(lambda plan=plan: plan.launch(0, alloc, True), tmp_path / "t")
        assert len(kept) == allocations, (hist_kind, [t.numel() for t in kept])
        assert dict(calls) == want, (hist_kind, dict(calls))
        summaries, total = pws.describe_many(
            [FakeCuda(x) for x in xs], total=True, mantissa_bits=m if hist_kind else None
        )
        _check_fetch_many(_C.fetch_many([res]), [[*summaries, total]])


def test_plan_results_reuse_the_events_of_dropped_ones(tmp_path: Path) -> None:
    # A dropped result's event goes back to a pool (at most 64 per device) for the next result,
    # even if its work is still queued: recording it again replaces what it marked.
    xs = [_data(n, torch.float32, seed=70 + i) for i, n in enumerate((70_001, 513))]
    plan = _plan(xs, 2, 3)
    summaries, total = pws.describe_many([FakeCuda(x) for x in xs], total=True, mantissa_bits=3)
    assert total.count == sum(s.count for s in summaries) > 0  # read: its result (event) let go
    held = [plan.launch(0, None, True) for _ in range(70)]  # the pool's events, then new ones
    del held  # dropped unread, work still queued: 64 events kept, 6 destroyed
    held, calls = _traced(lambda: [plan.launch(0, None, True) for _ in range(70)], tmp_path / "t")
    assert calls["cudaEventCreateWithFlags"] == 70 - 64 and "cudaEventDestroy" not in calls
    _check_fetch_many(_C.fetch_many(held[::23]), [[*summaries, total]] * len(held[::23]))
    _, calls = _traced(lambda: held.clear(), tmp_path / "t")  # (and 70 cudaFreeAsync)
    assert calls["cudaEventDestroy"] == 6, dict(calls)  # the pool was full again


def test_launch_phases_account_for_a_plan_launch() -> None:
    # The host clock of each phase of a launch (bench_stats reads them inside a training loop):
    # per thread, in order, adding up to no more than the call, and each phase where its time
    # goes: a slow allocator in "allocate", the driver's calls in "pass", "total" and "event"
    # (PWS_EMU_CALL_US: each runtime call takes that long), and another Python thread that took
    # the GIL meanwhile in "acquire_gil".
    xs = [_data(n, torch.float32, seed=80 + i) for i, n in enumerate((20_011, 300))]
    plan = _plan(xs, 2, 3)
    seen: list[object] = []
    thread = threading.Thread(target=lambda: seen.append(_cuda.last_launch_phases()))
    thread.start()
    thread.join()
    assert seen == [None]  # nothing launched on that thread yet
    assert tuple(_C.CUDA_LAUNCH_PHASES) == (
        "result", "allocate", "release_gil", "pass", "total", "event", "acquire_gil", "finish"
    )  # fmt: skip
    kept: list[torch.Tensor] = []

    def slow_alloc(nbytes: int) -> torch.Tensor:
        time.sleep(0.02)
        kept.append(torch.empty(nbytes, dtype=torch.uint8))
        return kept[-1]

    t0 = time.perf_counter()
    results = [plan.launch(0, slow_alloc, True)]
    wall = time.perf_counter() - t0
    phases = _cuda.last_launch_phases()
    assert phases is not None and list(phases) == list(_C.CUDA_LAUNCH_PHASES)
    assert min(phases.values()) >= 0 and sum(phases.values()) <= wall
    assert phases["allocate"] >= 0.02 > sum(v for k, v in phases.items() if k != "allocate")

    call = 300e-6  # per runtime call or launch
    os.environ["PWS_EMU_CALL_US"] = "300"
    try:
        results.append(plan.launch(0, None, True))
        phases = _cuda.last_launch_phases()
        assert phases is not None
        # the pass: a memset and two launches; the total: one launch; the event: the capture
        # check and the record
        assert phases["pass"] >= 3 * call and phases["total"] >= call, phases
        assert phases["event"] >= 2 * call and phases["acquire_gil"] < call, phases

        stop = threading.Event()

        def spin() -> None:  # pure Python: gives the GIL up only when asked (switch interval)
            while not stop.is_set():
                pass

        interval = sys.getswitchinterval()
        sys.setswitchinterval(0.01)
        spinner = threading.Thread(target=spin)
        spinner.start()
        try:
            time.sleep(0.05)
            waits = []
            for _ in range(5):
                results.append(plan.launch(0, None, True))  # the spinner takes the GIL
                waits.append(_cuda.last_launch_phases()["acquire_gil"])
        finally:
            stop.set()
            spinner.join()
            sys.setswitchinterval(interval)
    finally:
        del os.environ["PWS_EMU_CALL_US"]
    assert sorted(waits)[2] >= 0.002, waits  # about the switch interval each
    summaries, total = pws.describe_many([FakeCuda(x) for x in xs], total=True, mantissa_bits=3)
    _check_fetch_many(_C.fetch_many(results), [[*summaries, total]] * len(results))
