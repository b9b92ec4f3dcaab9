"""Host cost of converting one CUDA tracker record, without a GPU.

``WeightTracker`` on a CUDA model copies each record to its store three steps later, inside the
training loop. This measures the host part of that conversion for a ViT-B/16-sized record (153
states, ``--buckets`` non-empty log buckets per tensor): ``stats._cuda.fetch_many`` is replaced
by a function that returns fresh arrays of the shapes the real one returns (the device copies
are not timed: they need a GPU), so what is timed is the tracker's own work per record and the
final ``trajectory()``.

    python bench/bench_tracker_host.py                    # current tracker
    # another version, e.g. the one before the deferred statistics:
    git show aaaac45:src/pyweightstat/tracker.py > src/pyweightstat/_old_tracker.py
    python bench/bench_tracker_host.py --module pyweightstat._old_tracker

``--cpu`` times ``record()`` itself on CPU models of the study's families (MNIST CNN and DNN,
CIFAR-10 ViT; m = 3 and 7), where each record is converted at once, beside a training step.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import statistics
import sys
import time
from typing import Any

import numpy as np
import torch


def measure(module: str, records: int, buckets: int, tensors: int = 152) -> dict[str, Any]:
    """Median host time of converting one record, and of ``trajectory()`` at the end."""
    import pyweightstat.stats._cuda as cu

    width = tensors + 1
    rng = np.random.default_rng(0)
    f, n = rng.random((1, width, 8)), rng.integers(1, 100, (1, width, 5))
    nnz = np.full((1, width), buckets, np.int64)
    b = np.arange(buckets * width, dtype=np.int64)
    flows = np.zeros((1, width, 3), np.int64)

    def fake_fetch_many(results: list[Any]) -> tuple[np.ndarray, ...]:
        return f.copy(), n.copy(), nnz.copy(), b.copy(), b.copy(), flows.copy()

    saved = cu.fetch_many
    cu.fetch_many = fake_fetch_many
    try:
        mod = importlib.import_module(module)
        model = torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(tensors // 2)])
        tracker = mod.WeightTracker(model)

        class FakePlan:
            mantissa_bits = 3

        plan, times = FakePlan(), []
        for i in range(records):
            tracker._pending.append((i, mod._RawRecord(plan, None)))
            t0 = time.perf_counter()
            tracker._convert_oldest(1)
            times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        tracker.trajectory()
        traj_s = time.perf_counter() - t0
    finally:
        cu.fetch_many = saved
    return {
        "module": module,
        "records": records,
        "tensors": tensors,
        "buckets_per_tensor": buckets,
        "convert_median_us": 1e6 * statistics.median(times),
        "trajectory_ms": 1e3 * traj_s,
    }


def measure_cpu(module: str, records: int) -> list[dict[str, Any]]:
    """Host time of ``record()`` on CPU models of the study's families (each record converts at
    once on the CPU), beside the time of one training step (batch 128, Adam) of the same model."""
    from pyweightstat.models import build_model

    mod = importlib.import_module(module)
    specs = [
        ("mnist cnn", "cnn", (1, 28, 28), {"blocks": 2, "channels": [32, 64]}),
        ("mnist dnn", "dnn", (1, 28, 28), {}),
        ("cifar10 vit", "vit", (3, 32, 32), {}),
    ]
    out = []
    for label, family, shape, cfg in specs:
        torch.manual_seed(0)
        model = build_model(family, shape, 10, **cfg)
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        x, y = torch.randn(128, *shape), torch.randint(0, 10, (128,))

        def step(model: Any = model, opt: Any = opt, x: Any = x, y: Any = y) -> None:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()

        for _ in range(3):
            step()
        steps = []
        for _ in range(20):
            t0 = time.perf_counter()
            step()
            steps.append(time.perf_counter() - t0)
        step_s = statistics.median(steps)
        for m in (3, 7):
            tracker = mod.WeightTracker(model, mantissa_bits=m)
            for _ in range(5):
                tracker.record()
            times = []
            for _ in range(records):
                t0 = time.perf_counter()
                tracker.record()
                times.append(time.perf_counter() - t0)
            rec_s = statistics.median(times)
            out.append(
                {
                    "model": label,
                    "tensors": len(list(model.parameters())),
                    "parameters": sum(p.numel() for p in model.parameters()),
                    "mantissa_bits": m,
                    "record_median_us": 1e6 * rec_s,
                    "step_median_ms": 1e3 * step_s,
                    "record_pct_of_step": 100 * rec_s / step_s,
                }
            )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--module", default="pyweightstat.tracker")
    p.add_argument("--records", type=int, default=2000)
    p.add_argument("--buckets", type=int, default=200, help="non-empty buckets per tensor")
    p.add_argument("--json", help="also write the result to this file")
    p.add_argument(
        "--cpu",
        action="store_true",
        help="instead: record() on CPU models of the study's families, and a training step",
    )
    args = p.parse_args(argv)
    if args.cpu:
        rows = measure_cpu(args.module, min(args.records, 300))
        for r in rows:
            print(
                f"{args.module}: {r['model']:<12} ({r['tensors']} tensors, {r['parameters']} "
                f"parameters) m={r['mantissa_bits']}: record {r['record_median_us']:7.0f} us = "
                f"{r['record_pct_of_step']:.2f} % of a {r['step_median_ms']:.1f} ms step"
            )
        if args.json:
            with open(args.json, "w") as fh:
                json.dump({"module": args.module, "rows": rows}, fh, indent=2)
        return 0
    out = measure(args.module, args.records, args.buckets)
    out["host"] = platform.node()
    out["python"] = platform.python_version()
    print(
        f"{out['module']}: {out['convert_median_us']:.1f} us per record (median of "
        f"{out['records']}), trajectory() {out['trajectory_ms']:.0f} ms"
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
