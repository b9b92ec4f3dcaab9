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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--module", default="pyweightstat.tracker")
    p.add_argument("--records", type=int, default=2000)
    p.add_argument("--buckets", type=int, default=200, help="non-empty buckets per tensor")
    p.add_argument("--json", help="also write the result to this file")
    args = p.parse_args(argv)
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
