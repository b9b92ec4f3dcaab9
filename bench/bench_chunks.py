"""Work-split sweep of the CUDA moments pass: chunk length, merge group and merge place.

At 10^8 values a pass has about 30 us of fixed cost (about 14 us inside the fused kernel, 15-17 us
after it, H200 2026-11-27 with 2^16-value chunks), which decides whether the 10^8 rows meet the
bandwidth target. The work split that shapes it is fixed in a build (chunks of 2^16 to 2^18 values
by tensor length, ``d`` below; chunk states merged in groups of 256 by a merge kernel), but the
CUDA launcher reads these environment variables once per process:

* ``PWS_CUDA_CHUNK``: values per work item (one block of the fused kernel), a power of two from
  2^12 to 2^23;
* ``PWS_CUDA_BLOCKS``: instead, about that many work items per tensor (here: one or two waves of
  the fused kernel's resident blocks, 4 per SM);
* ``PWS_CUDA_MERGE_GROUP``: chunk states merged by one block of the merge kernel (a tensor with
  more chunks is merged in two levels), 2 to 2^16;
* ``PWS_CUDA_MERGE``: ``kernel`` (a merge kernel after the fused one, the default) or ``inline``
  (the fused kernel's last block to finish a tensor merges its chunk states);
* ``PWS_CUDA_SMALL_TABLE``: ``0`` gives every launch the full 29 KB launch table, as before the
  twelfth session (``1``, the default: a moments launch of at most 4 tensors carries a table of
  under 1 KB); a merge field ending in ``-big`` (e.g. ``d/256/kernel-big``) sets it, so the sweep
  shows what the parameter size costs a pass (the same results bit for bit).

Each setting (``split/group/merge``, e.g. ``w1/4096/inline``) runs in a child process (this
script with ``--child``), which times, for each dtype and size, the device copy, ``pws.describe``
(events after a sleep kernel, so device time only) and the fused kernel's device time
(torch.profiler), and checks the result against a float64 reference; and the m = 7 log
histogram (the quantiles' default), whose blocks each flush their shared counters, and a pass
over the first 2^16 values (one chunk: the fixed cost) beside ``torch.sum`` of them. The parent
writes ``bench_chunks_<date>.{json,md}`` to ``--out``, after every setting. Then the ``--confirm``
settings with the fastest bfloat16 passes at the largest swept size run again at
``--confirm-size`` (10^9), with the default as their baseline, so that one device call shows
whether a split that helps at 10^8 costs the 10^9 rows::

    python bench/bench_chunks.py --out bench/results --sizes 1e8,1e9 \\
        --settings d/256/kernel,c16/256/kernel,w1/4096/kernel
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
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

DEFAULT_GROUP = 256  # the build's merge group (csrc/cuda/describe_cuda.h)
BLOCKS_PER_SM = 4  # resident blocks of the moments kernels (kMinBlocks in describe_cuda.cu)
# split/group/merge: the default first (the build's chunk-length rule), then the same with the
# full launch table in every launch (-big); fixed chunk lengths (2^16
# was the default until 2026-11-27); the rule with a one-level merge of up to 512 chunk states;
# one wave of blocks, with the merge kernel or inside the fused kernel
DEFAULT_SETTINGS = (
    "d/256/kernel",
    "d/256/kernel-big",
    "c16/256/kernel",
    "c17/256/kernel",
    "c18/256/kernel",
    "d/512/kernel",
    "w1/4096/kernel",
    "w1/4096/inline",
)


def split_env(split: str, sms: int) -> dict[str, str]:
    """The environment of a split: ``d`` the build's rule, ``cK`` chunks of 2^K values, ``wK``
    K waves of blocks."""
    if split == "d":
        return {}
    kind, k = split[0], int(split[1:])
    if kind == "c":
        return {"PWS_CUDA_CHUNK": str(1 << k)}
    if kind == "w":
        return {"PWS_CUDA_BLOCKS": str(k * sms * BLOCKS_PER_SM)}
    raise ValueError(f"unknown split {split!r} (cK: chunks of 2^K values; wK: K waves)")


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
            # the quantiles' histogram (m = 7, a band of its buckets in shared memory): each block
            # flushes its touched counters, so its cost also depends on the chunk count
            hist_t, h = timer(lambda t=t: pws.log_histogram(t, mantissa_bits=7))
            if int(h.counts.sum()) != n:
                raise AssertionError(f"log_histogram {name} {n}: {int(h.counts.sum())} counts")
            # a pass's fixed cost: one chunk (launches, one block, the merge) against torch.sum's
            # one small kernel
            small = t[: 1 << 16]
            small_t, _ = timer(lambda small=small: pws.describe(small))
            small_sum_t, _ = timer(lambda small=small: small.sum())
            bytes_read = n * t.element_size()
            rows.append(
                {
                    "dtype": name,
                    "n": n,
                    "copy_s": copy_t.seconds,
                    "pass_s": pass_t.seconds,
                    "fused_s": fused,
                    "loghist7_s": hist_t.seconds,
                    "small_pass_s": small_t.seconds,
                    "small_sum_s": small_sum_t.seconds,
                    # the copy moves 2 x bytes_read in copy_s: the pass's read bandwidth over it
                    "pct_of_copy": 100.0
                    * (bytes_read / pass_t.seconds)
                    / (2 * bytes_read / copy_t.seconds),
                }
            )
            del t
            torch.cuda.empty_cache()
    return rows


def work_items(n: int, split: str, sms: int) -> int:
    """Blocks of the fused kernel for one tensor of n values (chunk_of in describe_cuda.cu)."""
    if split == "d":
        chunk = int(pws._C.cuda_chunk_length(n))
    elif split[0] == "c":
        chunk = 1 << int(split[1:])
    else:
        per = -(-n // (int(split[1:]) * sms * BLOCKS_PER_SM))
        chunk = min(max(4096, -(-per // 512) * 512), 1 << 23)
    return -(-n // chunk)


def blocks_chunk_log2(n: int) -> int:
    """log2 of the chunk length the build's rule gives a tensor of n values."""
    return int(pws._C.cuda_chunk_length(n)).bit_length() - 1


def best_settings(
    rows: list[dict[str, Any]], settings: list[tuple[str, int, str]], k: int, dtype: str
) -> list[tuple[str, int, str]]:
    """The ``k`` settings other than the first (the default) with the fastest ``dtype`` pass at
    the largest size in ``rows``, fastest first."""
    mine = [r for r in rows if r["dtype"] == dtype]
    if k <= 0 or not mine:
        return []
    n = max(r["n"] for r in mine)
    ranked = sorted(
        (r["pass_s"], (r["split"], r["group"], r["merge"])) for r in mine if r["n"] == n
    )
    return [s for _, s in ranked if s != settings[0]][:k]


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The sweep as a Markdown table, one row per setting, dtype and size."""
    out = [
        f"Work-split sweep of the CUDA moments pass on {meta['device']}, torch {meta['torch']}, "
        f"{meta['date']} (bench/bench_chunks.py). Default split: the build's chunk-length rule "
        f"(2^16 to 2^18 values by tensor length), merge group {DEFAULT_GROUP}, merge kernel. With "
        "the inline merge, the fused kernel's time includes the merge.",
        "",
        "| dtype | n | split | merge group | merge | blocks | pass (us) | % of copy bandwidth "
        "| fused kernel (us) | after it (us) | log histogram m=7 (us) "
        "| 2^16 values: pass / torch.sum (us) |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        fused = r["fused_s"]
        after = r["pass_s"] - fused if fused is not None else None
        out.append(
            f"| {r['dtype']} | {r['n']:.0e} | {r['split_label']} | {r['group']} | {r['merge']} | "
            f"{r['blocks']} | {1e6 * r['pass_s']:.1f} | {r['pct_of_copy']:.1f} % | "
            + (f"{1e6 * fused:.1f} | {1e6 * after:.1f} |" if fused is not None else "- | - |")
            + (f" {1e6 * r['loghist7_s']:.1f} |" if "loghist7_s" in r else " - |")
            + (
                f" {1e6 * r['small_pass_s']:.1f} / {1e6 * r['small_sum_s']:.1f} |"
                if "small_pass_s" in r
                else " - |"
            )
        )
    return "\n".join(out) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1e8", help="comma-separated sizes")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument(
        "--settings",
        default=",".join(DEFAULT_SETTINGS),
        help="split/group/merge, comma-separated (split d: the build's rule; cK: chunks of 2^K "
        "values; wK: K waves; merge kernel or inline, -big: the full launch table)",
    )
    p.add_argument("--repeat", type=int, default=20, help="timed runs per measurement")
    p.add_argument(
        "--confirm",
        type=int,
        default=2,
        help="then time this many of the fastest settings (and the default) at --confirm-size",
    )
    p.add_argument("--confirm-size", default="1e9", help="size of the confirming runs")
    p.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="start no setting that would end after this many seconds (default: no limit)",
    )
    p.add_argument(
        "--confirm-dtype", default="bfloat16", help="dtype whose pass ranks the settings"
    )
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
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    settings = []
    for item in args.settings.split(","):
        split, group, merge = item.split("/")
        settings.append((split, int(group), merge))
    meta = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "build_info": pws.build_info(),
        "settings": args.settings,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"bench_chunks_{meta['date'][:10]}"

    def run(setting: tuple[str, int, str], sizes_arg: str) -> None:
        """Time one setting at ``sizes_arg`` in a child process; add its rows; save the tables."""
        split, group, merge = setting
        fixed = ("PWS_CUDA_CHUNK", "PWS_CUDA_BLOCKS")  # the setting's split alone
        env = {k: v for k, v in os.environ.items() if k not in fixed}
        env.update(split_env(split, sms))
        mode, _, table = merge.partition("-")
        if table not in ("", "big"):
            raise ValueError(f"unknown merge field {merge!r} (kernel or inline, then -big or not)")
        env.update(PWS_CUDA_MERGE_GROUP=str(group), PWS_CUDA_MERGE=mode)
        env.update(PWS_CUDA_SMALL_TABLE="0" if table == "big" else "1")
        cmd = [sys.executable, __file__, "--child", "--sizes", sizes_arg, "--dtypes", args.dtypes]
        cmd += ["--repeat", str(args.repeat)]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            print(f"{split}/{group}/{merge}: failed\n{r.stderr[-2000:]}", flush=True)
            return
        for row in json.loads(r.stdout.strip().splitlines()[-1]):
            blocks = work_items(row["n"], split, sms)
            if split == "d":
                label = f"rule: 2^{blocks_chunk_log2(row['n'])}"
            elif split[0] == "c":
                label = f"chunk 2^{split[1:]}"
            else:
                label = f"{split[1:]} wave(s)"
            rows.append(
                {"split": split, "split_label": label, "group": group, "merge": merge}
                | {"blocks": blocks, **row}
            )
            print(
                f"{label:<12} group {group:<5} {merge:<6} {row['dtype']:<9} {row['n']:.0e}: "
                f"pass {1e6 * row['pass_s']:7.1f} us  {row['pct_of_copy']:5.1f} % of copy"
                + (f"  fused {1e6 * row['fused_s']:7.1f} us" if row["fused_s"] else "")
                + f"  log hist m=7 {1e6 * row['loghist7_s']:8.1f} us",
                flush=True,
            )
        rows.sort(
            key=lambda r: (r["dtype"], r["n"], settings.index((r["split"], r["group"], r["merge"])))
        )
        # written after every setting: a run cut short by its time limit keeps what it measured
        stem.with_suffix(".json").write_text(json.dumps({"metadata": meta, "rows": rows}, indent=2))
        stem.with_suffix(".md").write_text(markdown(rows, meta))

    # --budget-s: start a child only if it should end in time, judging by the slowest child so
    # far (a confirming child at 10x the size counted twice), so that a device call's time limit
    # never cuts one short
    deadline = time.monotonic() + args.budget_s if args.budget_s else float("inf")
    longest = 0.0

    def timed_run(setting: tuple[str, int, str], sizes_arg: str, weight: float) -> bool:
        nonlocal longest
        if time.monotonic() + weight * longest > deadline:
            print(f"{'/'.join(map(str, setting))} at {sizes_arg}: skipped (--budget-s)", flush=True)
            return False
        t0 = time.monotonic()
        run(setting, sizes_arg)
        longest = max(longest, (time.monotonic() - t0) / weight)
        return True

    for setting in settings:
        if not timed_run(setting, args.sizes, 1.0):
            break
    # The settings that gave the fastest passes at the largest swept size, and the first one (the
    # build's default) as the baseline, again at --confirm-size: a split that only helps at 10^8
    # would cost the 10^9 rows, which the default has to keep.
    confirm = best_settings(rows, settings, args.confirm, args.confirm_dtype)
    if confirm and int(float(args.confirm_size)) not in sizes:
        meta["confirmed"] = []  # the settings run at --confirm-size
        for setting in [settings[0], *confirm]:
            if not timed_run(setting, args.confirm_size, 2.0):
                break
            meta["confirmed"].append("/".join(map(str, setting)))
        stem.with_suffix(".json").write_text(json.dumps({"metadata": meta, "rows": rows}, indent=2))
    print(markdown(rows, meta))
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
