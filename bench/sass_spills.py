"""Register spills and fast-path length of the main loops of the CUDA fused kernels, from SASS.

No GPU needed: compiles ``csrc/cuda/describe_cuda.cu`` for one architecture with nvcc,
disassembles it with ``cuobjdump`` and, for each fused-kernel instantiation, finds the loop that
holds the 16-byte global loads and

* counts local-memory loads/stores (``LDL``/``STL``, i.e. spills) inside it: a spill that appears
  in a main loop after a change is a performance regression to look at before a GPU run;
* follows one iteration of its common path (every value finite, the warp's shift taken, its
  scale 1, no value outside the float range) through the branches and counts the instructions a
  warp issues on it, per value of the iteration. The moments kernels are bound by instruction
  issue on an H200 (bfloat16) and near it on an H100, so this count is the static measure of a
  change to their loop; the GPU benchmark is the real one.

    python bench/sass_spills.py                       # sm_90
    python bench/sass_spills.py --arch sm_80 --cuobjdump /path/to/cuobjdump
    python bench/sass_spills.py --sass saved.sass     # a listing written by --save-sass

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
HISTS = {0: "moments", 1: "uniform hist", 2: "log hist", 3: "log band hist"}


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


def main_loops(ins: list[tuple[int, str]]) -> list[tuple[int, int]]:
    """(head, closing branch) addresses of the main loops: the innermost backward-branch loops
    that hold at least 4 16-byte loads (a rescan loop with one load per iteration is not one).
    A moments kernel has three: the steps before the warp has its shift, then one loop for
    scale 1 and one for other scales."""
    loops = []
    for addr, text in ins:
        # a loop closes with a conditional branch back (out-of-line code placed after the
        # kernel returns into it with unconditional ones)
        m = re.match(r"@!?P[0-6] BRA\b.*0x([0-9a-f]+)", text)
        if not m or int(m.group(1), 16) >= addr:
            continue
        start = int(m.group(1), 16)
        body = [t for a, t in ins if start <= a <= addr]
        if sum("LDG.E.128" in t for t in body) >= 4:
            loops.append((start, addr))
    # innermost: drop a loop that contains another
    return [o for o in loops if not any(i != o and o[0] <= i[0] and i[1] <= o[1] for i in loops)]


def loop_spills(ins: list[tuple[int, str]], loops: list[tuple[int, int]]) -> tuple[int, int, int]:
    """(instructions, LDL, STL) of the loops' bodies together."""
    body = [t for a, t in ins if any(lo <= a <= hi for lo, hi in loops)]
    return len(body), sum("LDL" in t for t in body), sum("STL" in t for t in body)


FLOAT_MAX = "3.40282346638528859812e+38"


def _predicate_writes(text: str, preds: dict[str, bool | None]) -> dict[str, bool | None]:
    """Predicates that an instruction writes on the modelled common path.

    The model: a warp's shift is taken (``LOP3.LUT P, RZ, R, 0xff ...`` or
    ``ISETP.NE.AND P, PT, R, RZ`` (or a uniform register) test that flag against zero,
    ``ISETP.NE.AND P, PT, R, 0x1`` against kShiftSet), its
    scale is 1 (``FSETP.NEU ... R, 1``), every power sum is finite (``FSETP.GTU ... |R|, FLT_MAX``)
    and uniform predicates (the loop's exit tests) are false; ``PLOP3.LUT`` is evaluated from
    its table. Other writes (compares feeding selects) give an unknown value (``None``)."""
    m = re.match(r"(?:@!?U?P[0-6T] )?(\S+) (U?P[0-6]), ", text)
    if not m:
        return {}
    op, dst = m.group(1), m.group(2)
    if op.startswith("PLOP3.LUT"):
        operands = text.split(op, 1)[1]  # after any guard and the opcode: "P0, PT, a, b, c, lut"
        fields = [f.strip() for f in operands.split(",")]
        srcs, lut = fields[2:5], int(fields[5], 16)

        def value(p: str) -> bool:
            neg, name = p.startswith("!"), p.lstrip("!")
            if name in ("PT", "UPT"):
                v: bool | None = True
            elif name.startswith("UP"):
                v = preds.get(name, False)
            else:
                v = preds.get(name)
            if v is None:
                raise ValueError(f"PLOP3 on an unknown predicate: {text}")
            return v != neg

        a, b, c = (value(x) for x in srcs)
        return {dst: bool(lut >> (a << 2 | b << 1 | c) & 1)}
    if (op.startswith("LOP3.LUT") and ", RZ, " in text) or (
        op == "ISETP.NE.AND" and re.search(r", PT, (U?R\d+, RZ|RZ, U?R\d+), PT$", text)
    ):
        return {dst: True}  # a flag tested against zero: the warp's shift is taken
    if op == "ISETP.NE.AND" and re.search(r", PT, U?R\d+, 0x1, PT$", text):
        return {dst: False}  # has_shift != kShiftSet: the warp's shift is taken
    if op.startswith("FSETP.NEU") and re.search(r", 1, PT$", text):
        return {dst: False}
    if op.startswith("FSETP.GTU") and FLOAT_MAX in text:
        return {dst: False}
    if dst.startswith("UP"):
        return {dst: False}
    return {dst: None}  # unknown: an error only if a branch on the path depends on it


def common_path_length(ins: list[tuple[int, str]], loop: tuple[int, int]) -> int:
    """Instructions a warp issues in one iteration of the loop on the modelled common path
    (predicated-off instructions included: they issue too)."""
    at = {a: i for i, (a, _) in enumerate(ins)}
    head, tail = loop
    preds: dict[str, bool | None] = {}

    def known(p: str, text: str) -> bool:
        v = preds.get(p)
        if v is None:
            raise ValueError(f"the path depends on a predicate the model does not know: {text}")
        return v

    i, n = at[head], 0
    while n < 100_000:
        addr, text = ins[i]
        n += 1
        if addr == tail:  # the loop's own exit test decides nothing inside an iteration
            return n
        m = re.match(r"(?:@(!?)(P[0-6]) )?BRA (?:\S+ )?0x([0-9a-f]+)", text)
        if m:
            taken = m.group(2) is None or known(m.group(2), text) != bool(m.group(1))
            if taken:
                i = at[int(m.group(3), 16)]
                continue
        else:
            g = re.match(r"@(!?)(P[0-6]) ", text)
            writes = _predicate_writes(text, preds)
            if g is not None and preds.get(g.group(2)) is None:
                writes = dict.fromkeys(writes)  # a write under an unknown guard: unknown
            elif g is not None and preds[g.group(2)] == bool(g.group(1)):
                writes = {}  # guarded off
            preds.update(writes)
        i += 1
    raise ValueError("the modelled path does not return to the loop head")


VALUES_PER_ITERATION = {0: 16, 1: 32, 2: 32}  # 4 loads of 16 bytes: float32, float16, bfloat16


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="sm_90", help="GPU architecture to compile for")
    p.add_argument("--cuobjdump", help="path of cuobjdump")
    p.add_argument("--nvcc", default="nvcc", help="path of nvcc")
    p.add_argument("--sass", help="read this cuobjdump -sass listing instead of compiling")
    p.add_argument("--save-sass", help="also write the listing to this file")
    args = p.parse_args(argv)
    if args.sass:
        sass = Path(args.sass).read_text()
    else:
        cuobjdump = find_cuobjdump(args.cuobjdump)
        with tempfile.TemporaryDirectory() as tmp:
            cubin = Path(tmp) / "describe.cubin"
            cmd = [args.nvcc, "-std=c++17", "-O3", f"-arch={args.arch}", "-cubin"]
            cmd += ["-o", str(cubin), f"-I{ROOT / 'csrc' / 'include'}", f"-I{ROOT / 'csrc'}"]
            cmd += [str(ROOT / "csrc" / "cuda" / "describe_cuda.cu")]
            subprocess.run(cmd, check=True)
            sass = subprocess.run(
                [cuobjdump, "-sass", str(cubin)], check=True, capture_output=True, text=True
            ).stdout
        if args.save_sass:
            Path(args.save_sass).write_text(sass)
    print(f"{'kernel':<32} {'loop instr':>10} {'LDL':>5} {'STL':>5} {'path/value':>10}")
    worst = 0
    for part in sass.split("Function : ")[1:]:
        name = part.split("\n", 1)[0]
        m = re.search(r"fused_kernelILi(\d)ELb([01])ELi(\d)E", name)
        if not m:
            continue
        kind, state, hist = int(m.group(1)), m.group(2) == "1", int(m.group(3))
        label = f"{KINDS[kind]}, {HISTS[hist]}{'' if state else ' only'}"
        ins = instructions(part)
        loops = main_loops(ins)
        if not loops:
            print(f"{label:<32} {'(no loop with 16-byte loads found)':>22}")
            continue
        n, ldl, stl = loop_spills(ins, loops)
        worst = max(worst, ldl + stl) if kind != 3 else worst
        per_value = "-"
        if kind in VALUES_PER_ITERATION and state and hist == 0:
            # the steady state: the shortest modelled path among the loops (scale 1)
            paths = []
            for loop in loops:
                try:
                    paths.append(common_path_length(ins, loop))
                except (KeyError, ValueError):
                    continue  # a loop off the modelled path (e.g. one for scales other than 1)
            if not paths:
                raise ValueError(f"{label}: no main loop follows the modelled path")
            per_value = f"{min(paths) / VALUES_PER_ITERATION[kind]:.2f}"
        print(f"{label:<32} {n:>10} {ldl:>5} {stl:>5} {per_value:>10}")
    print(
        "\nspills in a specialised kernel's main loop" if worst else "\nno spills in the main loops"
    )
    print(
        "loop instr: the main loops together; path/value: instructions a warp issues per value"
        " on the common path of the moments loop (scale 1, every value finite)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
