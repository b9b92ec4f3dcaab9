"""Register spills inside the main loops of the CUDA fused kernels, read from their SASS.

No GPU needed: compiles ``csrc/cuda/describe_cuda.cu`` for one architecture with nvcc,
disassembles it with ``cuobjdump`` and, for each fused-kernel instantiation, finds the loop that
holds the 16-byte global loads and counts local-memory loads/stores (``LDL``/``STL``, i.e. spills)
inside it. A spill that appears in a main loop after a change is a performance regression to look
at before a GPU run.

    python bench/sass_spills.py                       # sm_90
    python bench/sass_spills.py --arch sm_80 --cuobjdump /path/to/cuobjdump

``cuobjdump`` comes with the CUDA toolkit; where the toolkit lacks it, the
``nvidia-cuda-cuobjdump`` package from the Python package index ships one
(``nvidia/cu13/bin/cuobjdump``).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KINDS = {0: "float32", 1: "float16", 2: "bfloat16", 3: "generic"}
HISTS = {0: "moments", 1: "uniform hist", 2: "log hist"}


def find_cuobjdump(given: str | None) -> str:
    """The cuobjdump to use: the argument, the PATH, or the pip package's copy."""
    if given:
        return given
    found = shutil.which("cuobjdump")
    if found:
        return found
    for site in sys.path:
        cand = Path(site) / "nvidia" / "cu13" / "bin" / "cuobjdump"
        if cand.is_file():
            return str(cand)
    sys.exit("cuobjdump not found: pass --cuobjdump (pip package nvidia-cuda-cuobjdump ships one)")


def instructions(function_sass: str) -> list[tuple[int, str]]:
    """(address, instruction) pairs of one function's SASS listing."""
    out = []
    for line in function_sass.splitlines():
        m = re.search(r"/\*([0-9a-f]+)\*/\s+(.*?);", line)
        if m:
            out.append((int(m.group(1), 16), m.group(2).strip()))
    return out


def main_loop_spills(ins: list[tuple[int, str]]) -> tuple[int, int, int] | None:
    """(instructions, LDL, STL) of the main loop: the innermost backward-branch loop that holds
    at least 4 16-byte loads (a rescan loop with one load per iteration is not it)."""
    best = None
    for addr, text in ins:
        m = re.search(r"BRA\b.*0x([0-9a-f]+)", text)
        if not m or int(m.group(1), 16) >= addr:
            continue
        start = int(m.group(1), 16)
        body = [t for a, t in ins if start <= a <= addr]
        if sum("LDG.E.128" in t for t in body) < 4:
            continue
        stats = (len(body), sum("LDL" in t for t in body), sum("STL" in t for t in body))
        if best is None or stats[0] < best[0]:
            best = stats
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="sm_90", help="GPU architecture to compile for")
    p.add_argument("--cuobjdump", help="path of cuobjdump")
    p.add_argument("--nvcc", default="nvcc", help="path of nvcc")
    args = p.parse_args(argv)
    cuobjdump = find_cuobjdump(args.cuobjdump)
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "describe.cubin"
        cmd = [args.nvcc, "-std=c++17", "-O3", f"-arch={args.arch}", "-cubin", "-o", str(cubin)]
        cmd += [f"-I{ROOT / 'csrc' / 'include'}", f"-I{ROOT / 'csrc'}"]
        cmd += [str(ROOT / "csrc" / "cuda" / "describe_cuda.cu")]
        subprocess.run(cmd, check=True)
        sass = subprocess.run(
            [cuobjdump, "-sass", str(cubin)], check=True, capture_output=True, text=True
        ).stdout
    print(f"{'kernel':<32} {'loop instr':>10} {'LDL':>5} {'STL':>5}")
    worst = 0
    for part in sass.split("Function : ")[1:]:
        name = part.split("\n", 1)[0]
        m = re.search(r"fused_kernelILi(\d)ELb([01])ELi(\d)E", name)
        if not m:
            continue
        kind, state, hist = int(m.group(1)), m.group(2) == "1", int(m.group(3))
        label = f"{KINDS[kind]}, {HISTS[hist]}{'' if state else ' only'}"
        res = main_loop_spills(instructions(part))
        if res is None:
            print(f"{label:<32} {'(no loop with 16-byte loads found)':>22}")
            continue
        n, ldl, stl = res
        worst = max(worst, ldl + stl) if kind != 3 else worst
        print(f"{label:<32} {n:>10} {ldl:>5} {stl:>5}")
    print(
        "\nspills in a specialised kernel's main loop" if worst else "\nno spills in the main loops"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
