"""Device timeline of one CUDA pass: what runs between the start of ``pws.describe`` and its end.

At 10^8 values a pass costs about 15 us more than its fused kernel (``bench_chunks.py``'s "after
it" column), which decides the bfloat16 row of the bandwidth target. This script shows where that
time goes: for each case it queues a sleep kernel (so the host has enqueued everything before the
GPU gets to it), then the call, ``--repeat`` times under ``torch.profiler``, and reads every GPU
activity (kernels, memsets, copies) from the trace. Per activity, in queue order, it reports the
median over the repeats of its start after the previous activity's end (the gap) and of its
duration, and the whole span from the sleep kernel's end to the last activity's end; ``torch.sum``
of the same values is the reference of one small reduction. The profiler's tracing can stretch
gaps by a microsecond or two, and it may run a programmatic dependent launch without its overlap:
read the gaps as upper bounds::

    python bench/pass_timeline.py --out bench/results
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

import pyweightstat as pws

GPU_CATS = {"kernel", "gpu_memset", "gpu_memcpy"}
SLEEP = "spin"  # torch.cuda._sleep's kernel name contains it


def gpu_events(fn: Any, repeat: int, lead_cycles: int) -> list[list[dict[str, Any]]]:
    """GPU activities of ``repeat`` calls of ``fn``, one list per call (after its sleep kernel)."""
    from torch.profiler import ProfilerActivity, profile

    fn()  # warm-up: allocator, module loading
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(repeat):
            torch.cuda._sleep(lead_cycles)
            fn()
        torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "trace.json"
        prof.export_chrome_trace(str(path))
        trace = json.loads(path.read_text())
    return calls_from_trace(trace)


def calls_from_trace(trace: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """The GPU activities of a Chrome trace in time order, cut into calls at each sleep kernel:
    one list per call, the sleep kernel first (calls with nothing after it are dropped)."""
    evs = [
        e
        for e in trace.get("traceEvents", [])
        if e.get("ph") == "X" and e.get("cat") in GPU_CATS and "ts" in e
    ]
    evs.sort(key=lambda e: float(e["ts"]))
    calls: list[list[dict[str, Any]]] = []
    for e in evs:
        name = str(e.get("name", "?"))
        if SLEEP in name:
            calls.append([{"name": name, "ts": float(e["ts"]), "dur": float(e.get("dur", 0.0))}])
        elif calls:
            calls[-1].append({"name": name, "ts": float(e["ts"]), "dur": float(e.get("dur", 0.0))})
    return [c for c in calls if len(c) > 1]


def summarize(calls: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """Median gap and duration per activity position, and the median span (microseconds)."""
    shape = [len(c) for c in calls]
    common = statistics.mode(shape)
    calls = [c for c in calls if len(c) == common]
    rows = []
    for i in range(1, common):
        gaps = [c[i]["ts"] - (c[i - 1]["ts"] + c[i - 1]["dur"]) for c in calls]
        durs = [c[i]["dur"] for c in calls]
        rows.append(
            {
                "name": calls[0][i]["name"][:100],
                "gap_us": statistics.median(gaps),
                "dur_us": statistics.median(durs),
            }
        )
    spans = [c[-1]["ts"] + c[-1]["dur"] - (c[0]["ts"] + c[0]["dur"]) for c in calls]
    return {"calls": len(calls), "activities": rows, "span_us": statistics.median(spans)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="folder for pass_timeline_<date>.*")
    ap.add_argument("--repeat", type=int, default=20, help="calls per case (default 20)")
    ap.add_argument(
        "--sizes", default="1e8,65536", help="comma-separated value counts (default 1e8,65536)"
    )
    ap.add_argument("--dtypes", default="bfloat16,float32", help="default bfloat16,float32")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available() or not pws.build_info()["cuda"]:
        print("pass_timeline: needs a GPU and a CUDA build of pyweightstat", file=sys.stderr)
        return 2
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    dtypes = [getattr(torch, d) for d in args.dtypes.split(",")]
    results = []
    lines = []
    for n in sizes:
        for dt in dtypes:
            x = torch.randn(n, device="cuda").to(dt)
            for label, fn in (
                ("pws.describe", lambda x=x: pws.describe(x)),
                ("torch.sum", lambda x=x: x.sum()),
            ):
                s = summarize(gpu_events(fn, args.repeat, 2_000_000))
                results.append({"dtype": str(dt).split(".")[-1], "n": n, "call": label, **s})
                head = f"{str(dt).split('.')[-1]:>9} n={n:<11} {label:<13}"
                lines.append(f"{head} span {s['span_us']:8.1f} us ({s['calls']} calls)")
                for a in s["activities"]:
                    lines.append(
                        f"{'':>40} gap {a['gap_us']:7.1f} us  run {a['dur_us']:8.1f} us  "
                        f"{a['name']}"
                    )
            del x
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        date = datetime.date.today().isoformat()
        meta = {
            "device": torch.cuda.get_device_name(0),
            "torch": torch.__version__,
            "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        (args.out / f"pass_timeline_{date}.json").write_text(
            json.dumps({"meta": meta, "results": results}, indent=2)
        )
        (args.out / f"pass_timeline_{date}.md").write_text(
            f"Pass timeline on {meta['device']}, torch {meta['torch']}, {meta['date_utc']} "
            f"(bench/pass_timeline.py; medians; gap = start after the previous activity's end, "
            f"the first one after the sleep kernel's end)\n\n```\n{text}\n```\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
