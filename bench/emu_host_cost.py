"""Host cost of the tracker's CUDA calls, without a GPU: ``CudaPlan.launch`` and ``fetch_many``
of the CUDA engine compiled against the host CUDA emulator (``tests/cpp/cuda_emu``).

On a GPU machine ``WeightTracker`` makes one ``CudaPlan.launch`` per record on the training
thread and one ``fetch_many`` per batch of 16 records on its background thread. This measures
pyweightstat's own host work in those two calls for a ViT-B/16-shaped plan (152 tensors, each cut
to ``--values`` values so that the emulated kernels run quickly):

* ``launch``: host time per ``CudaPlan.launch`` (the emulator queues the kernels and runs them
  when the host waits, so this is the bindings' and launchers' work plus the emulator's cheap
  stand-ins for the CUDA calls; the driver's own cost is not in it);
* ``launch_phases_median_us``: that time by phase in the C++ layer (``CUDA_LAUNCH_PHASES``:
  the allocator, the runtime calls of the pass, the total and the event, the GIL);
* ``calls_per_launch``: what one launch (with its total) asks of the CUDA runtime and of the
  Python allocator on the calling thread, by name (the emulator's ``PWS_EMU_TRACE`` lines): on a
  GPU each of these is a driver or caching-allocator call, which a count shows without a GPU;
* ``fetch_many``: wall time per batch and the part of it during which the calling thread held
  the GIL (what a host-bound training thread waits for while the background thread converts):
  a second Python thread ticks in a loop with a 10 us switch interval, and every gap between its
  ticks longer than ``--gap`` microseconds counts as GIL held by the fetch.

    python bench/emu_host_cost.py                  # builds the emulated module (about 1 minute)
    python bench/emu_host_cost.py --module PATH    # reuses one (printed by a first run)

Compare two versions of the sources by running it on each; timings are of this host's CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter where the emulated build is pyweightstat._C.
_INNER = r"""
import ctypes, importlib.util, json, os, statistics, sys, threading, time
spec = importlib.util.spec_from_file_location("pyweightstat._C", os.environ["PWS_EMU_MODULE"])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
sys.modules["pyweightstat._C"] = mod
import torch
sys.path.insert(0, os.path.join(os.environ["PWS_ROOT"], "bench"))
from bench_stats import vit_b16_shapes

cfg = json.loads(os.environ["PWS_EMU_CFG"])
_get = ctypes.pythonapi.PyCapsule_GetPointer
_get.restype, _get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]

def cap(t):  # a host tensor exported as if it lived on cuda:0 (the emulator's memory is host)
    c = torch.utils.dlpack.to_dlpack(t)
    ctypes.c_int32.from_address(_get(c, b"dltensor") + 8).value = 2
    return c

g = torch.Generator().manual_seed(0)
shapes = vit_b16_shapes()[: cfg["tensors"]]
xs = [torch.randn(min(cfg["values"], torch.Size(s).numel()), generator=g) * 0.02 for s in shapes]
plan = mod.CudaPlan([cap(x) for x in xs], [f"p{i}" for i in range(len(xs))], 0, 2, 3)
kept = []
def alloc(nbytes):  # as the tracker's torch allocator: one host tensor per buffer
    kept.append(torch.empty(nbytes, dtype=torch.uint8))
    return kept[-1]

def calls_of_one_launch():  # the runtime calls (PWS_EMU_TRACE) and allocations of one launch
    trace = os.path.join(os.environ["PWS_EMU_TRACE_DIR"], "launch.trace")
    before = len(kept)
    os.environ["PWS_EMU_TRACE"] = trace
    try:
        r = plan.launch(0, alloc, True)
    finally:
        del os.environ["PWS_EMU_TRACE"]
    mod.fetch_many([r])
    counts = {"python allocator": len(kept) - before}
    with open(trace) as fh:
        for line in fh:
            key = "kernel launch" if line.startswith("launch ") else line.split()[1]
            counts[key] = counts.get(key, 0) + 1
    return counts

batch, rounds = cfg["batch"], cfg["rounds"]
mod.fetch_many([plan.launch(0, alloc, True) for _ in range(batch)])  # warm-up
calls = calls_of_one_launch()
launch_s, fetch_s, held_s, control_s, phases, nnz = [], [], [], [], [], 0

def ticker_gaps(fn):  # run fn while a second thread ticks: the gaps over the threshold, summed
    gaps, stop = [], [False]
    def tick():
        last = time.perf_counter()
        while not stop[0]:
            t = time.perf_counter()
            gaps.append(t - last)
            last = t
    th = threading.Thread(target=tick)
    sys.setswitchinterval(1e-5)
    th.start()
    time.sleep(0.002)
    gaps.clear()
    t0 = time.perf_counter()
    out = fn()
    elapsed = time.perf_counter() - t0
    stop[0] = True
    th.join()
    sys.setswitchinterval(0.005)
    return out, elapsed, sum(x for x in gaps if x > cfg["gap_us"] * 1e-6)

for _ in range(rounds):
    results = []
    for _ in range(batch):
        t0 = time.perf_counter()
        results.append(plan.launch(0, alloc, True))
        launch_s.append(time.perf_counter() - t0)
        phases.append(mod.cuda_last_launch_ns())
    for r in results:  # run the queued kernels first: only the copies and conversion are timed
        mod.fetch_many([r])
    out, elapsed, held = ticker_gaps(lambda: mod.fetch_many(results))
    fetch_s.append(elapsed)
    held_s.append(held)
    # the noise floor: the same ticks while the main thread sleeps as long (GIL released)
    control_s.append(ticker_gaps(lambda: time.sleep(elapsed))[2])
    nnz = int(out[2].sum())
    kept.clear()
print(json.dumps({
    "tensors": len(xs), "values_per_tensor_max": cfg["values"], "batch": batch,
    "launch_median_us": 1e6 * statistics.median(launch_s),
    "launch_mean_us": 1e6 * statistics.fmean(launch_s),
    "fetch_many_median_ms": 1e3 * statistics.median(fetch_s),
    "fetch_many_gil_held_median_ms": 1e3 * statistics.median(held_s),
    "control_gaps_median_ms": 1e3 * statistics.median(control_s),
    "nonempty_buckets_per_batch": nnz,
    "calls_per_launch": calls,
    "launch_phases_median_us": {
        name: statistics.median(p[i] for p in phases) / 1e3
        for i, name in enumerate(mod.CUDA_LAUNCH_PHASES)
    },
}))
"""


def build_module(out: Path) -> Path:
    """The emulated ``pyweightstat._C`` (as tests/test_cuda_emulated.py builds it), in ``out``."""
    sys.path.insert(0, str(ROOT / "tests"))
    import test_cuda_emulated as t

    host, _ = t._module_flags([])
    srcs = [ROOT / "csrc" / "cpu" / f for f in ("describe.cpp", "distances.cpp")]
    bindings = ("module.cpp", "dlpack_view.cpp", "register_stats.cpp", "register_distances.cpp")
    srcs += [ROOT / "csrc" / "bindings" / f for f in bindings]
    shared = t._compile_all([(host, s) for s in srcs], out)
    return t._build_module(out, ["-O2"], shared)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--module", help="an emulated _C built by an earlier run")
    p.add_argument("--values", type=int, default=4096, help="values per tensor at most")
    p.add_argument("--tensors", type=int, default=152, help="the first N ViT-B/16 tensors")
    p.add_argument("--batch", type=int, default=16, help="records per fetch_many")
    p.add_argument("--rounds", type=int, default=4, help="timed batches")
    p.add_argument("--gap", type=float, default=50.0, help="tick gap (us) counted as GIL held")
    p.add_argument("--json", help="also write the result to this file")
    args = p.parse_args(argv)
    module = args.module
    if module is None:
        out = Path(tempfile.mkdtemp(prefix="pws_emu_"))
        module = str(build_module(out))
        print(f"emulated module: {module}", file=sys.stderr)
    cfg = {"values": args.values, "batch": args.batch, "rounds": args.rounds, "gap_us": args.gap}
    cfg["tensors"] = args.tensors
    env = {**os.environ, "PWS_EMU_MODULE": module, "PWS_ROOT": str(ROOT)}
    env["PWS_EMU_CFG"] = json.dumps(cfg)
    with tempfile.TemporaryDirectory(prefix="pws_emu_trace_") as trace_dir:
        env["PWS_EMU_TRACE_DIR"] = trace_dir
        r = subprocess.run(
            [sys.executable, "-c", _INNER], env=env, capture_output=True, text=True, check=False
        )
    if r.returncode != 0:
        print(r.stdout, r.stderr, file=sys.stderr)
        return r.returncode
    res = json.loads(r.stdout.strip().splitlines()[-1])
    print(
        f"CudaPlan.launch: median {res['launch_median_us']:.1f} us (mean "
        f"{res['launch_mean_us']:.1f}); fetch_many of {res['batch']} records: median "
        f"{res['fetch_many_median_ms']:.3f} ms, GIL held {res['fetch_many_gil_held_median_ms']:.3f}"
        f" ms (noise floor: {res['control_gaps_median_ms']:.3f} ms of gaps while sleeping as long; "
        f"{res['nonempty_buckets_per_batch']} non-empty buckets)"
    )
    calls = res["calls_per_launch"]
    print(
        f"one CudaPlan.launch (with its total) on the training thread: {sum(calls.values())} "
        "calls: " + ", ".join(f"{v} x {k}" for k, v in sorted(calls.items()))
    )
    print(
        "its phases in the C++ layer (median us): "
        + ", ".join(f"{k} {v:.1f}" for k, v in res["launch_phases_median_us"].items())
    )
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
