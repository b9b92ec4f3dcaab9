"""Host-side logic of the GPU benchmark scripts in ``bench/`` (their GPU parts need a device)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str) -> object:
    sys.path.insert(0, str(BENCH))  # the scripts import their siblings
    try:
        spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod  # dataclasses look their module up there
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(BENCH))


def _kernel(name: str, ts: float, dur: float, cat: str = "kernel") -> dict:
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur}


def test_pass_timeline_reads_gaps_and_durations_from_a_trace() -> None:
    pt = _load("pass_timeline")
    spin = "at::cuda::spin_kernel(long)"
    events = []
    # three calls: sleep kernel, then the fused and merge kernels, with known gaps and lengths
    for k, (gap0, fused, gap1, merge) in enumerate(
        [(2.0, 60.0, 1.0, 5.0), (3.0, 62.0, 1.0, 4.0), (2.5, 61.0, 2.0, 6.0)]
    ):
        t = 10_000.0 * k
        events.append(_kernel(spin, t, 1000.0))
        f0 = t + 1000.0 + gap0
        events.append(_kernel("fused_kernel<2, true, 0>", f0, fused))
        events.append(_kernel("merge_kernel", f0 + fused + gap1, merge))
    # noise the parser must skip: host events, a CPU op, a marker without duration fields
    events += [{"ph": "X", "cat": "cpu_op", "name": "aten::sum", "ts": 5.0, "dur": 3.0}]
    events += [{"ph": "i", "cat": "kernel", "name": "instant", "ts": 7.0}]
    events.append(_kernel(spin, 50_000.0, 1000.0))  # a trailing sleep with nothing after it
    calls = pt.calls_from_trace({"traceEvents": list(reversed(events))})
    assert len(calls) == 3 and all(len(c) == 3 for c in calls)
    s = pt.summarize(calls)
    assert s["calls"] == 3
    (fused, merge) = s["activities"]
    assert fused["name"].startswith("fused_kernel") and merge["name"] == "merge_kernel"
    assert fused["gap_us"] == pytest.approx(2.5) and fused["dur_us"] == pytest.approx(61.0)
    assert merge["gap_us"] == pytest.approx(1.0) and merge["dur_us"] == pytest.approx(5.0)
    # span from the sleep kernel's end to the merge kernel's end: 68, 70, 71.5
    assert s["span_us"] == pytest.approx(70.0)


def test_pass_timeline_keeps_the_common_shape() -> None:
    # a call with an extra activity (e.g. a one-off allocation memset) is left out of the medians
    pt = _load("pass_timeline")
    spin = "spin_kernel"
    calls = []
    for k in range(3):
        t = 1000.0 * k
        c = [{"name": spin, "ts": t, "dur": 100.0}, {"name": "a", "ts": t + 101.0, "dur": 10.0}]
        if k == 1:
            c.append({"name": "Memset (Device)", "ts": t + 112.0, "dur": 2.0})
        calls.append(c)
    s = pt.summarize(calls)
    assert s["calls"] == 2 and [a["name"] for a in s["activities"]] == ["a"]
    assert s["span_us"] == pytest.approx(11.0)


def _nvcc() -> str | None:
    for cand in (os.environ.get("CUDACXX"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if cand and Path(cand).exists():
            return cand
    return None


def test_launch_cost_microbenchmark_compiles(tmp_path: Path) -> None:
    # bench/launch_cost.cu runs in bench/gpu_check.sh only, so a compile error would first show on
    # a GPU machine: compile it here (sm_90, host warnings as errors) and run it once
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("no nvcc on this machine (the CUDA build is skipped here too)")
    exe, out = tmp_path / "launch_cost", tmp_path / "launch_cost.json"
    flags = ["-O2", "-std=c++17", "-arch=sm_90", "-Xcompiler", "-Wall,-Wextra,-Werror"]
    r = subprocess.run(
        [nvcc, *flags, str(BENCH / "launch_cost.cu"), "-o", str(exe)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    run = subprocess.run([str(exe), str(out)], capture_output=True, text=True, timeout=300)
    if run.returncode == 0:  # a GPU: six sizes, each a positive time
        rows = json.loads(out.read_text())["rows"]
        assert [row["param_bytes"] for row in rows] == [64, 1024, 4096, 16384, 28984, 32000]
        assert all(row[k] > 0 for row in rows for k in ("chain_us", "pair_us", "pdl_pair_us"))
    else:  # no GPU or driver: a CUDA error named with its call, nothing written
        assert run.returncode == 1 and "cudaSetDevice" in run.stderr, run.stderr
        assert not out.exists()


def test_ab_blocks_against_their_neighbours() -> None:
    # bench_stats' A/B: each test block against the mean of the base blocks on either side
    b = _load("bench_stats")
    fracs = b._against_neighbours([1.0, 3.0, 1.0, 4.0], [2.5, 1.0, 2.0])
    assert fracs == pytest.approx([(2.5 - 2.0) / 2.0, (1.0 - 2.0) / 2.0, (2.0 - 2.5) / 2.5])


def test_timed_plan_launches_restores_the_method(monkeypatch: pytest.MonkeyPatch) -> None:
    # bench_stats' timer of Plan.launch (CUDA only) wraps the method while it lasts, appends one
    # time per call to the list its sink names at that call, and puts the method back
    from pyweightstat.stats import _cuda

    b = _load("bench_stats")
    monkeypatch.setattr(_cuda.Plan, "launch", lambda self: "result")
    original = _cuda.Plan.launch
    lists: dict[str, list[float]] = {"a": [], "b": []}
    current = ["a"]
    with b._timed_plan_launches(lambda: lists[current[0]]):
        assert _cuda.Plan.launch(object()) == "result"
        current[0] = "b"
        _cuda.Plan.launch(object())
        _cuda.Plan.launch(object())
    assert _cuda.Plan.launch is original
    assert [len(lists["a"]), len(lists["b"])] == [1, 2] and min(lists["a"] + lists["b"]) >= 0
    with b._timed_plan_launches(lambda: lists["a"], enabled=False):
        assert _cuda.Plan.launch is original
    # with a phases sink: the C++ layer's phases of each launch, where it has any
    rows: list[dict[str, float]] = []
    phases = iter([{"pass": 1.0}, None, {"pass": 3.0}])
    monkeypatch.setattr(_cuda, "last_launch_phases", lambda: next(phases))
    with b._timed_plan_launches(lambda: lists["a"], phases=lambda: rows):
        for _ in range(3):
            _cuda.Plan.launch(object())
    assert rows == [{"pass": 1.0}, {"pass": 3.0}] and len(lists["a"]) == 4
    # with a matches list: Plan.matches is timed too, and put back
    monkeypatch.setattr(_cuda.Plan, "matches", lambda self, tensors: tensors == [1])
    original_matches = _cuda.Plan.matches
    checks: list[float] = []
    with b._timed_plan_launches(lambda: lists["a"], matches=checks):
        assert _cuda.Plan.matches(object(), [1]) and not _cuda.Plan.matches(object(), [2])
    assert _cuda.Plan.matches is original_matches and len(checks) == 2 and min(checks) >= 0


def test_phase_medians_and_split_medians() -> None:
    b = _load("bench_stats")
    rows = [
        {"pass": 3e-6, "event": 1e-7},
        {"pass": 1e-6, "event": 3e-7},
        {"pass": 2e-6, "event": 2e-7},
    ]
    assert b._phase_medians(rows) == {"pass": 2e-6, "event": 2e-7}
    assert b._phase_medians([]) == {}
    assert b._phase_text({"pass": 2e-6, "event": 2e-7}) == "pass 2.0"  # under 0.5 us: left out
    assert b._phase_text({}) == "-"
    split = b._split_medians([1.0, 5.0, 2.0, 7.0], [False, True, False, True])
    assert split == {"fraction": 0.5, "median_when_true_s": 6.0, "median_when_false_s": 1.5}
    none = b._split_medians([1.0], [False])
    assert none == {"fraction": 0.0, "median_when_true_s": None, "median_when_false_s": 1.0}


def test_gc_counter_counts_collections_while_it_lasts() -> None:
    import gc

    b = _load("bench_stats")
    callbacks = list(gc.callbacks)
    with b._gc_counter() as count:
        gc.collect()
        gc.collect(0)
        seen = count[0]
    gc.collect()
    assert seen == 2 and count[0] == 2 and gc.callbacks == callbacks


def test_hot_and_cold_launches_time_the_right_calls() -> None:
    # bench_stats' cold-cache diagnostic: the launch after a launch is "hot", the launch after
    # the sweep "cold"; a fake clock and a launch that costs 5 ticks when the sweep ran before it
    b = _load("bench_stats")
    now = [0.0]
    state = {"cold": False, "launches": 0, "syncs": 0}

    def launch() -> None:
        now[0] += 5.0 if state["cold"] else 1.0
        state["cold"] = False
        state["launches"] += 1

    def sync() -> None:
        state["syncs"] += 1

    def sweep() -> None:
        state["cold"] = True

    after: list[tuple[str, int, float]] = []  # outside the timed window: the clock still reads
    hot, cold = b._hot_and_cold_launches(
        launch,
        sync,
        sweep,
        rounds=4,
        clock=lambda: now[0],
        after=lambda kind: after.append((kind, state["launches"], now[0])),
    )
    assert hot == [1.0] * 4 and cold == [5.0] * 4
    assert state["launches"] == 12 and state["syncs"] == 8
    # after the second launch of each round (hot), then after the third (cold)
    want = [(kind, 3 * r + n) for r in range(4) for kind, n in (("hot", 2), ("cold", 3))]
    assert [(kind, n) for kind, n, _ in after] == want


def test_bench_tracker_runs_on_cpu() -> None:
    # bench_stats' tracker measurements on a small CPU model (the GPU run adds its CUDA parts):
    # every key the summary reads is there, and the in-loop splits cover every tracked step
    import torch

    b = _load("bench_stats")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 8), torch.randint(0, 2, (32,))

    def step() -> None:
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    lines: list[str] = []
    out = b.bench_tracker(model, step, 1e-3, "cpu", lines.append)
    for key in ("tracker_host_s", "tracker_ab_fraction", "tracker_step_host_median_s"):
        assert out[key] == out[key]  # a number, not NaN
    steps = out["tracker_ab_steps"] * out["tracker_ab_rounds"]
    for key in ("tracker_step_bg_busy", "tracker_step_gc"):
        split = out[key]
        assert 0.0 <= split["fraction"] <= 1.0
        assert split["median_when_false_s"] is not None or split["fraction"] == 1.0
    assert out["tracker_step_bg_busy"]["fraction"] == 0.0  # CPU records are converted in place
    assert len(out["tracker_ab_fractions"]) == out["tracker_ab_rounds"] and steps > 0
    assert any("garbage collection ran" in line for line in lines)
