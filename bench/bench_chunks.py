"""Work-split sweep of the CUDA moments pass: chunk length and merge group size.

At 10^8 values a pass has about 30 us of fixed cost (about 14 us inside the fused kernel, 15-17 us
after it), which decides whether the 10^8 rows meet the bandwidth target. The work split that
shapes it is fixed in a build (65,536-value chunks, chunk states merged in groups of 256), but the
CUDA launcher reads two environment variables once per process, for this sweep:

* ``PWS_CUDA_CHUNK``: values per work item (one block of the fused kernel), a power of two from
  2^12 to 2^20;
* ``PWS_CUDA_MERGE_GROUP``: chunk states merged by one block of the merge kernel (a tensor with
  more chunks is merged in two levels), 2 to 2^16.

Each setting runs in a child process (this script with ``--child``), which times, for each dtype
and size, the device copy, ``pws.describe`` (events after a sleep kernel, so device time only) and
the fused kernel's device time (torch.profiler), and checks the result against a float64
reference. The parent writes ``bench_chunks_<date>.{json,md}`` to ``--out``::

    python bench/bench_chunks.py --out bench/results --sizes 1e8 --chunks 15,16,17,18 \\
        --groups 256,4096
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

# the sibling module: a script's own directory is first on sys.path
from bench_stats import (
    DTYPES,
    Timer,
    check_summary,
    fused_kernel_seconds,
    kernel_profile,
    make_tensor,
    reference_moments,
)

import pyweightstat as pws

DEFAULT_CHUNK_LOG2, DEFAULT_GROUP = 16, 256  # the build's work split (csrc/cuda/describe_cuda.h)


def child(sizes: list[int], dtypes: list[str], repeat: int) -> list[dict[str, Any]]:
    """Time every (dtype, size) under this process's work split; one dict each."""
    timer = Timer("cuda", repeat, 2.0, lead_cycles=4_000_000)
    rows = []
    for n in sizes:
        for name in dtypes:
            t = make_tensor(n, DTYPES[name], "cuda", seed=1)
            ref = reference_moments(t)
            copy_t, _ = timer(lambda t=t: t.clone())
            pass_t, s = timer(lambda t=t: pws.describe(t))
            check_summary(s, ref, f"describe {name} {n}")
            kernels = kernel_profile(lambda t=t: pws.describe(t), 20, "call", lambda _m: None)
            fused = fused_kernel_seconds(kernels, 20)
            bytes_read = n * t.element_size()
            rows.append(
                {
                    "dtype": name,
                    "n": n,
                    "copy_s": copy_t.seconds,
                    "pass_s": pass_t.seconds,
                    "fused_s": fused,
                    # the copy moves 2 x bytes_read in copy_s: the pass's read bandwidth over it
                    "pct_of_copy": 100.0
                    * (bytes_read / pass_t.seconds)
                    / (2 * bytes_read / copy_t.seconds),
                }
            )
            del t
            torch.cuda.empty_cache()
    return rows


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The sweep as a Markdown table, one row per setting, dtype and size."""
    out = [
        f"Work-split sweep of the CUDA moments pass on {meta['device']}, torch {meta['torch']}, "
        f"{meta['date']} (bench/bench_chunks.py). Default split: chunk 2^{DEFAULT_CHUNK_LOG2}, "
        f"merge group {DEFAULT_GROUP}.",
        "",
        "| dtype | n | chunk | merge group | blocks | pass (us) | % of copy bandwidth "
        "| fused kernel (us) | after it (us) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        fused = r["fused_s"]
        after = r["pass_s"] - fused if fused is not None else None
        chunk = 1 << r["chunk_log2"]
        out.append(
            f"| {r['dtype']} | {r['n']:.0e} | 2^{r['chunk_log2']} | {r['group']} | "
            f"{-(-r['n'] // chunk)} | {1e6 * r['pass_s']:.1f} | {r['pct_of_copy']:.1f} % | "
            + (f"{1e6 * fused:.1f} | {1e6 * after:.1f} |" if fused is not None else "- | - |")
        )
    return "\n".join(out) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1e8", help="comma-separated sizes")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--chunks", default="15,16,17,18", help="log2 of the chunk lengths")
    p.add_argument("--groups", default="256,4096", help="merge group sizes")
    p.add_argument("--repeat", type=int, default=20, help="timed runs per measurement")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the sweep (or, with ``--child``, one setting of it)."""
    args = parse_args(argv)
    if not torch.cuda.is_available() or not pws.build_info().get("cuda", False):
        sys.exit("bench_chunks.py needs a GPU and a pyweightstat build with CUDA kernels")
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    dtypes = args.dtypes.split(",")
    if args.child:
        print(json.dumps(child(sizes, dtypes, args.repeat)))
        return 0
    rows: list[dict[str, Any]] = []
    settings = [(int(c), int(g)) for c in args.chunks.split(",") for g in args.groups.split(",")]
    for chunk_log2, group in settings:
        env = dict(os.environ, PWS_CUDA_CHUNK=str(1 << chunk_log2), PWS_CUDA_MERGE_GROUP=str(group))
        cmd = [sys.executable, __file__, "--child", "--sizes", args.sizes, "--dtypes", args.dtypes]
        cmd += ["--repeat", str(args.repeat)]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            print(f"chunk 2^{chunk_log2}, group {group}: failed\n{r.stderr[-2000:]}", flush=True)
            continue
        for row in json.loads(r.stdout.strip().splitlines()[-1]):
            rows.append({"chunk_log2": chunk_log2, "group": group, **row})
            print(
                f"chunk 2^{chunk_log2:<2} group {group:<5} {row['dtype']:<9} {row['n']:.0e}: "
                f"pass {1e6 * row['pass_s']:7.1f} us  {row['pct_of_copy']:5.1f} % of copy"
                + (f"  fused {1e6 * row['fused_s']:7.1f} us" if row["fused_s"] else ""),
                flush=True,
            )
    rows.sort(key=lambda r: (r["dtype"], r["n"], r["chunk_log2"], r["group"]))
    meta = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "build_info": pws.build_info(),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"bench_chunks_{meta['date'][:10]}"
    stem.with_suffix(".json").write_text(json.dumps({"metadata": meta, "rows": rows}, indent=2))
    stem.with_suffix(".md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
