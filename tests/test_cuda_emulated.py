"""The CUDA kernels on the host: csrc/cuda/*.cu compiled as C++ against a CUDA emulator.

Most machines that run these tests (CI included) have no GPU, so ``tests/test_cuda.py`` is
skipped there. Here the engine's own launchers and kernels (``describe_cuda.cu``,
``fused_variants.cu``, ``distances_cuda.cu``) are compiled with ``-DPWS_CUDA_EMULATION`` against
``tests/cpp/cuda_emu`` (every CUDA thread a fiber, scheduled warp by warp or round robin;
barriers, warp shuffles, ballots, matches and atomics with their CUDA meaning; deadlocks, partial
warps and mismatched collectives reported; stream work queued until the host waits) and driven by
``tests/cpp/cuda_emu_check.cpp``. Their raw device results are checked against the float64
references and the CPU engine, as the GPU tests do: every count and histogram exactly, moments
within the SPEC bounds, bin edges bit for bit, and the same bits under different thread
interleavings.

This checks the kernels' logic (indexing, windows, reductions, barriers, which path a launch
takes); it cannot show timing, the GPU's memory model or its fused multiply-add rounding. The
GPU tests (``pytest -m cuda``) remain the word on a real device.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from cuda_cases import (
    DTYPES,
    assert_log_hist_matches_reference,
    extremes_beside_infinities,
    param_list,
    random_bit_patterns,
    weights_like,
)
from stats_checks import assert_same_counts, assert_summary_matches

import pyweightstat as pws
from pyweightstat import _C
from pyweightstat.stats.histogram import from_core
from pyweightstat.stats.reference import (
    ref_histogram,
    ref_histogram_edges,
    ref_log_num_buckets,
    ref_moments,
)
from pyweightstat.stats.summary import Summary

ROOT = Path(__file__).resolve().parents[1]
CHUNK = 1 << 16  # csrc/cuda/describe_cuda.h kChunk
HIST_NONE, HIST_UNIFORM, HIST_LOG = 0, 1, 2
EDGES_NONE, EDGES_RANGE, EDGES_DATA, EDGES_EXPLICIT = 0, 1, 2, 3
DTYPE_CODE = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}


# The engine's CUDA translation units (CMakeLists.txt PWS_CUDA_SOURCES).
CUDA_SOURCES = ("describe_cuda.cu", "fused_variants.cu", "distances_cuda.cu")


# ------------------------------------------------------------------------------ the driver
def _build_driver(out: Path, extra: list[str]) -> Path:
    """The emulated kernels and the driver, compiled with ``extra`` flags into ``out``."""
    common = ["-std=c++17", "-Wall", "-Wextra", *extra, f"-I{ROOT / 'csrc' / 'include'}"]
    emulated = [
        *common,
        "-Wno-unknown-pragmas",  # #pragma unroll
        "-DPWS_CUDA_EMULATION",
        *EMULATION_FLAGS,
        f"-I{ROOT / 'tests' / 'cpp' / 'cuda_emu'}",  # before any CUDA toolkit header
        "-x",
        "c++",
    ]
    units = [
        *[(emulated, ROOT / "csrc" / "cuda" / f) for f in CUDA_SOURCES],
        (common, ROOT / "tests" / "cpp" / "cuda_emu_check.cpp"),
    ]
    objs = _compile_all(units, out)
    exe = out / "cuda_emu_check"
    r = subprocess.run(
        [_cxx(), *extra, *map(str, objs), "-o", str(exe)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    return exe


@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the emulated kernels and the driver once for this module (about 20 s)."""
    return _build_driver(tmp_path_factory.mktemp("cuda_emu"), ["-O2", "-Werror"])


# The emulated sources: no fused multiply-adds the device code did not ask for (the edges must be
# np.linspace's bits on every host), and byte buffers read as wider types.
# PWS_MERGE_GROUP=2: a tensor of more than 2 chunks takes the two-level merge of its chunk
# states (256 on a GPU build, i.e. above 16.7 M values), so both merge shapes run here.
EMULATION_FLAGS = ["-ffp-contract=off", "-fno-strict-aliasing", "-DPWS_MERGE_GROUP=2"]
# AddressSanitizer + UndefinedBehaviorSanitizer, aborting at the first report.
SANITIZE = ["-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
SANITIZE += ["-fno-omit-frame-pointer"]
SANITIZER_ENV = {"ASAN_OPTIONS": "detect_leaks=0:detect_stack_use_after_return=0"}


def _cxx() -> str:
    cxx = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no C++ compiler on PATH")
    return cxx


def _module_flags(extra: list[str]) -> tuple[list[str], list[str]]:
    """Compiler flags of the emulated module's host (C++) and emulated (.cu) sources."""
    import pybind11  # in the test extras: the module is built here, outside the package build

    includes = [
        f"-I{ROOT / 'csrc' / 'include'}",
        f"-I{sysconfig.get_paths()['include']}",
        f"-I{pybind11.get_include()}",
    ]
    # -O1: the CPU engine is only needed for the dispatch here, not for speed
    base = ["-std=c++17", "-O1", "-fPIC", "-fvisibility=hidden", "-Wall", "-Wextra", *extra]
    host = [*base, "-Wno-unknown-pragmas", "-DPWS_HAVE_CUDA=1", '-DPWS_VERSION="emu"', *includes]
    emulated = [
        *base,
        "-Werror",
        "-Wno-unknown-pragmas",
        "-DPWS_CUDA_EMULATION",
        *EMULATION_FLAGS,
        f"-I{ROOT / 'tests' / 'cpp' / 'cuda_emu'}",
        *includes,
        "-x",
        "c++",
    ]
    return host, emulated


def _compile_all(units: list[tuple[list[str], Path]], out: Path) -> list[Path]:
    cxx = _cxx()
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return list(pool.map(lambda u: _compile(cxx, u[0], u[1], out), units))


@pytest.fixture(scope="module")
def shared_objects(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The objects both emulated modules share: the CPU engine and the bindings other than
    register_cuda.cpp (not what these modules test; compiled once, without sanitizers)."""
    host, _ = _module_flags([])
    srcs = [ROOT / "csrc" / "cpu" / f for f in ("describe.cpp", "distances.cpp")]
    bindings = ("module.cpp", "dlpack_view.cpp", "register_stats.cpp", "register_distances.cpp")
    srcs += [ROOT / "csrc" / "bindings" / f for f in bindings]
    return _compile_all([(host, s) for s in srcs], tmp_path_factory.mktemp("cuda_emu_shared"))


def _build_module(out: Path, extra: list[str], shared: list[Path]) -> Path:
    """``pyweightstat._C`` with its CUDA engine compiled against the emulator, in ``out``; the
    CUDA bindings and the emulated CUDA sources get the ``extra`` flags."""
    host, emulated = _module_flags(extra)
    units = [(host, ROOT / "csrc" / "bindings" / "register_cuda.cpp")]
    units += [(emulated, ROOT / "csrc" / "cuda" / f) for f in CUDA_SOURCES]
    objs = [*shared, *_compile_all(units, out)]
    so = out / ("_C" + sysconfig.get_config_var("EXT_SUFFIX"))
    r = subprocess.run(
        [_cxx(), "-shared", *extra, *map(str, objs), "-o", str(so)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    return so


@pytest.fixture(scope="module")
def emu_module(tmp_path_factory: pytest.TempPathFactory, shared_objects: list[Path]) -> Path:
    """The emulated ``pyweightstat._C``."""
    return _build_module(tmp_path_factory.mktemp("cuda_emu_module"), [], shared_objects)


@pytest.fixture(scope="module")
def emu_module_sanitized(
    tmp_path_factory: pytest.TempPathFactory, shared_objects: list[Path]
) -> Path:
    """The emulated ``pyweightstat._C`` with its bindings and CUDA sources under ASan + UBSan."""
    out = tmp_path_factory.mktemp("cuda_emu_module_san")
    return _build_module(out, SANITIZE, shared_objects)


def _compile(cxx: str, flags: list[str], src: Path, out: Path) -> Path:
    obj = out / (src.name + ".o")
    r = subprocess.run(
        [cxx, *flags, "-c", str(src), "-o", str(obj)], capture_output=True, text=True
    )
    assert r.returncode == 0, f"compiling {src.name} failed:\n{r.stderr}"
    return obj


# Loads the emulated build as pyweightstat._C before anything imports the real one, then runs the
# inner test module in this fresh interpreter.
_INNER_LOADER = """
import importlib.util, os, sys
path = os.environ["PWS_EMU_MODULE"]
spec = importlib.util.spec_from_file_location("pyweightstat._C", path)
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
sys.modules["pyweightstat._C"] = mod
import pytest
sys.exit(pytest.main(sys.argv[1:]))
"""


def _run_inner(module: Path, args: list[str], env: dict[str, str]) -> None:
    inner = ROOT / "tests" / "emulated_bindings_checks.py"
    cmd = [sys.executable, "-c", _INNER_LOADER, "-q", "-p", "no:cacheprovider", "-rfEs"]
    r = subprocess.run(
        [*cmd, str(inner), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **env, "PWS_EMU_MODULE": str(module)},
        timeout=1200,
    )
    tail = r.stdout[-8000:] + r.stderr[-4000:]
    assert r.returncode == 0, tail
    summary = r.stdout.strip().splitlines()[-1]
    assert re.search(r"\b\d+ passed\b", summary) and "skipped" not in summary, tail


def test_cuda_bindings_on_the_emulator(emu_module: Path) -> None:
    # tests/emulated_bindings_checks.py: describe/describe_many/quantile on "CUDA" inputs,
    # CudaPlan + fetch_many, scattered windows, totals, refused inputs; see its docstring.
    _run_inner(emu_module, [], {})


def test_chunk_length_follows_the_environment(emu_module: Path) -> None:
    # the default rule is checked above; PWS_CUDA_CHUNK replaces it by one length for every tensor
    _run_inner(emu_module, ["-k", "chunk_length"], {"PWS_CUDA_CHUNK": "4096"})


@pytest.mark.parametrize("merge", ["kernel", "inline"])
def test_small_launch_tables_give_the_same_bits(
    emu_module: Path, tmp_path: Path, merge: str
) -> None:
    # the same calls with the small launch tables (the default) and without: identical raw states
    dumps = []
    for small in ("1", "0"):
        dump = tmp_path / f"states_{small}.bin"
        env = {"PWS_CUDA_SMALL_TABLE": small, "PWS_CUDA_MERGE": merge, "PWS_STATE_DUMP": str(dump)}
        _run_inner(emu_module, ["-k", "small_launch_tables"], env)
        dumps.append(dump.read_bytes())
    assert len(dumps[0]) > 0 and dumps[0] == dumps[1]


def test_cuda_bindings_under_address_and_undefined_behaviour_sanitizers(
    emu_module_sanitized: Path,
) -> None:
    # The fetch path (pinned staging, WindowRows' dense and per-window copies, fetch_many) and
    # the launches with byte-exact device buffers; the sanitizer runtimes are preloaded into the
    # interpreter. The larger describe_many cases are left to the run above.
    runtimes = []
    for lib in ("libasan.so", "libubsan.so"):
        path = subprocess.run(
            [_cxx(), f"-print-file-name={lib}"], capture_output=True, text=True
        ).stdout.strip()
        assert os.path.isabs(path), f"the compiler has no {lib}: {path!r}"
        runtimes.append(path)
    keep = "plan or scattered or moments_only or share or quantiles or refused or deferred"
    _run_inner(
        emu_module_sanitized, ["-k", keep], {**SANITIZER_ENV, "LD_PRELOAD": ":".join(runtimes)}
    )


def _pad(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 8)


@dataclass
class Describe:
    """One describe_many call of the CUDA engine."""

    xs: list[torch.Tensor]
    hist_kind: int = HIST_NONE
    bins: int = 0
    m: int = 0
    edge_mode: int = EDGES_NONE
    lo: float = 0.0
    hi: float = 1.0
    total: int = 0  # 1: the total's state; 2: and its histogram
    edges: np.ndarray | None = None  # EDGES_EXPLICIT: (P, bins + 1)

    def encode(self) -> bytes:
        head = (self.hist_kind, self.bins, self.m, self.edge_mode)
        parts = [
            struct.pack("<q", 0),
            struct.pack("<4q2d2q", *head, self.lo, self.hi, self.total, len(self.xs)),
        ]
        for x in self.xs:
            # only the bytes the view spans (torch strides are >= 0): a sanitizer build of the
            # driver then reports any read outside the view, even inside its storage
            span = 1 + sum((n - 1) * st for n, st in zip(x.shape, x.stride(), strict=True))
            span = span if x.numel() > 0 else 0
            start = x.storage_offset() * x.element_size()
            storage = x.untyped_storage()
            raw = torch.empty(0, dtype=torch.uint8).set_(storage, 0, (storage.nbytes(),))
            data = raw[start : start + span * x.element_size()].numpy().tobytes()
            parts.append(struct.pack("<4q", DTYPE_CODE[x.dtype], x.dim(), 0, len(data)))
            parts.append(struct.pack(f"<{2 * x.dim()}q", *x.shape, *x.stride()))
            parts.append(_pad(data))
        if self.edge_mode == EDGES_EXPLICIT:
            assert self.edges is not None
            parts.append(np.ascontiguousarray(self.edges, np.float64).tobytes())
        return b"".join(parts)


@dataclass
class Distances:
    """One K x K pairwise-distance call."""

    counts: np.ndarray
    centres: np.ndarray
    metric: int

    def encode(self) -> bytes:
        k, b = self.counts.shape
        return (
            struct.pack("<4q", 1, k, b, self.metric)
            + np.ascontiguousarray(self.counts, np.int64).tobytes()
            + np.ascontiguousarray(self.centres, np.float64).tobytes()
        )


@dataclass
class DescribeResult:
    summaries: list[Summary]  # one per tensor
    total: Summary  # slot P (meaningful when the case asked for a total)
    records: np.ndarray  # raw int64 histogram records, (P + 1, record)
    edges: np.ndarray  # (edge_arrays, bins + 1)


class _Buf:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int, dtype: Any = np.int64) -> np.ndarray:
        size = n * np.dtype(dtype).itemsize
        a = np.frombuffer(self.data, dtype, n, self.pos)
        self.pos += size + (-size % 8)
        return a

    def i64(self) -> int:
        return int(self.take(1)[0])


def _log_hist(rec: np.ndarray, nb: int, m: int) -> Any:
    """The Histogram the CUDA bindings make of a log record (header: see kHistHeader)."""
    first = nb - int(rec[3]) if rec[4] > 0 else 0
    stop = int(rec[4]) if rec[4] > 0 else 0
    counts = rec[5 + first : 5 + stop].copy()
    return from_core((first, counts, int(rec[0]), int(rec[1]), int(rec[2])), False, None, m)


def run(exe: Path, cases: list[Any], tmp_path: Path, env: dict[str, str] | None = None) -> list:
    """Run the cases in one driver process; a case's error comes back as its message string."""
    src, dst = tmp_path / "cases.bin", tmp_path / "results.bin"
    src.write_bytes(struct.pack("<q", len(cases)) + b"".join(c.encode() for c in cases))
    r = subprocess.run(
        [str(exe), str(src), str(dst)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=600,
    )
    assert r.returncode == 0, f"driver failed ({r.returncode}):\n{r.stderr}"
    buf = _Buf(dst.read_bytes())
    out: list[Any] = []
    for c in cases:
        if buf.i64() != 0:
            out.append(bytes(buf.take(buf.i64(), np.uint8)).decode())
            continue
        if isinstance(c, Distances):
            k = c.counts.shape[0]
            out.append(buf.take(k * k, np.float64).reshape(k, k).copy())
            continue
        p, nb, record, edge_arrays = (buf.i64() for _ in range(4))
        rows = []
        for _ in range(p + 1):
            rows.append((buf.take(8, np.float64).copy(), buf.take(5).copy()))
        records = buf.take((p + 1) * record).reshape(p + 1, record).copy()
        edges = buf.take(edge_arrays * (c.bins + 1), np.float64).reshape(edge_arrays, c.bins + 1)
        summaries = []
        for i, (f, n) in enumerate(rows):
            hist = None
            if c.hist_kind == HIST_LOG:
                hist = _log_hist(records[i], nb, c.m)
            elif c.hist_kind == HIST_UNIFORM:
                e = edges[0] if edge_arrays == 1 else (edges[i] if i < p else None)
                rec = records[i]
                hist = from_core(
                    (0, rec[5 : 5 + c.bins].copy(), int(rec[0]), int(rec[1]), int(rec[2])),
                    True,
                    e if e is not None else np.linspace(0.0, 1.0, c.bins + 1),
                    0,
                )
            summaries.append(Summary(f, n, hist))
        out.append(DescribeResult(summaries[:p], summaries[p], records, edges))
    assert buf.pos == len(buf.data)
    return out


# ------------------------------------------------------------------------------ data
_data = weights_like


def _layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """The same kind of values in another memory layout."""
    if layout == "contiguous":  # aligned: the vector-load kernels
        return x
    if layout == "unaligned":  # contiguous but not 16-byte aligned: the generic kernel
        return x[1:]
    if layout == "transposed":
        return x[: x.numel() // 4 * 4].reshape(-1, 4).t()
    if layout == "expanded":  # stride 0
        return x[:1000].expand(70, 1000)
    raise AssertionError(layout)


# ------------------------------------------------------------------------------ moments, log
@pytest.mark.parametrize("dtype", DTYPES)
def test_moments_and_log_histograms_every_layout(emu: Path, tmp_path: Path, dtype) -> None:
    # Two full chunks and a partial one with a tail shorter than a vector (n % 8 = 3), in each
    # layout, with no histogram and with log histograms whose counters sit in shared memory
    # (m = 0, 3, 5) or, for m = 10, in a band of it in shared memory and global memory outside.
    x0 = _data(2 * CHUNK + 4099, dtype, seed=DTYPE_CODE[dtype])
    layouts = ["contiguous", "unaligned", "transposed", "expanded"]
    xs = [_layout(x0, lay) for lay in layouts]
    ms = [None, 0, 3, 5, 10]
    cases = [Describe(xs, HIST_NONE if m is None else HIST_LOG, m=m or 0, total=1) for m in ms]
    results = run(emu, cases, tmp_path)
    for m, res in zip(ms, results, strict=True):
        assert isinstance(res, DescribeResult), res
        for lay, x, s in zip(layouts, xs, res.summaries, strict=True):
            label = f"{dtype} {lay} m={m}"
            assert_summary_matches(s, ref_moments(x), label)
            assert_same_counts(s, pws.describe(x))
            if m is not None:
                assert_log_hist_matches_reference(s.hist, x, m)
        allx = torch.cat([x.reshape(-1).double() for x in xs])
        assert_summary_matches(res.total, ref_moments(allx), f"total m={m}")


@pytest.mark.parametrize("m", [0, 3, 7, 10])
def test_log_histogram_random_bit_patterns(emu: Path, tmp_path: Path, m: int) -> None:
    # Every class of float (normals of every exponent, subnormals, +-0, +-Inf, NaN) for the
    # branch-free bucket formula of the fast and general paths, contiguous and strided.
    g = torch.Generator().manual_seed(m)
    xs = []
    for dtype in DTYPES:
        x = random_bit_patterns(150_001, dtype, g)
        xs += [x, x[: 2 * (x.numel() // 2)].reshape(-1, 2).t()]
    (res,) = run(emu, [Describe(xs, HIST_LOG, m=m)], tmp_path)
    for x, s in zip(xs, res.summaries, strict=True):
        assert_log_hist_matches_reference(s.hist, x, m)
        assert_same_counts(s, pws.describe(x))


def test_log_window_across_chunks_and_special_tensors(emu: Path, tmp_path: Path) -> None:
    # The window comes from each thread's finite extremes: the lowest and highest buckets sit in
    # different chunks, one chunk has no finite value at all; plus an all-NaN tensor, a 0-d
    # tensor, an empty one, a constant one and all-zero one.
    n = 3 * CHUNK + 17
    x = torch.full((n,), 0.5, dtype=torch.float32)
    x[CHUNK : 2 * CHUNK] = float("nan")
    x[5] = 1e-30
    x[2 * CHUNK + 9] = -3e30
    x[n - 1] = 7e20
    xs = [
        x,
        torch.full((1000,), float("nan")),
        torch.tensor(1.5),
        torch.empty(0),
        torch.full((5000,), 2.5, dtype=torch.float64),
        torch.zeros(777, dtype=torch.bfloat16),
    ]
    (res,) = run(emu, [Describe(xs, HIST_LOG, m=3, total=2)], tmp_path)
    for i, (x_, s) in enumerate(zip(xs, res.summaries, strict=True)):
        # the moments of xs[0] (one -3e30 among 0.5s) are dominated by one value: its kurtosis,
        # ~1.3e5, is only within ~1e-7 relative on the CPU engine too, outside the SPEC's
        # absolute bound; its counts and extremes are checked instead
        if i > 0:
            assert_summary_matches(s, ref_moments(x_))
        assert_same_counts(s, pws.describe(x_))
        assert_log_hist_matches_reference(s.hist, x_, 3)
    empty = res.summaries[3]
    assert empty.count == 0 and np.isnan(empty.mean) and empty.l1 == 0.0
    const = res.summaries[4]
    assert const.mean == 2.5 and const.var == 0.0
    total = res.total
    assert total.hist == pws.describe_many(xs, mantissa_bits=3, total=True)[1].hist


def test_extremes_of_threads_that_met_an_infinity(emu: Path, tmp_path: Path) -> None:
    # 16-bit inputs: extremes on packed words, re-read for a thread that met an infinity
    xs = [x for dtype in DTYPES for x in extremes_beside_infinities(dtype, CHUNK)]
    results = run(emu, [Describe(xs), Describe(xs, HIST_LOG, m=3)], tmp_path)
    for res in results:  # the moments kernels, and the log-histogram ones
        for x, s in zip(xs, res.summaries, strict=True):
            long = x.numel() > 2 * CHUNK
            assert (s.min, s.max) == ((-3.0, 7.0) if long else (-2.5, 0.5)), x.dtype
            counts = (s.posinf_count, s.neginf_count, s.zero_count)
            assert counts == ((1, 1, 2) if long else (0, 1, 1)), x.dtype
            assert_same_counts(s, pws.describe(x))


def test_shift_of_warps_whose_first_values_are_not_finite(emu: Path, tmp_path: Path) -> None:
    # A warp takes its shift from each lane's first finite value. Lanes whose first value (every
    # 4th element: the first of each 16-byte load, for every dtype) is NaN or infinite must
    # search past it; a warp whose first values are all NaN picks its shift in a later group.
    g = torch.Generator().manual_seed(5)
    xs = []
    for dtype in DTYPES:
        a = torch.randn(2 * CHUNK + 40, generator=g, dtype=torch.float64)
        a[: 1 << 14 : 4] = float("nan")
        a[1 << 12 : 1 << 13 : 8] = float("inf")
        a[1 << 13 : 1 << 14 : 8] = float("-inf")
        b = torch.randn(2 * CHUNK, generator=g, dtype=torch.float64) + 3.0
        b[: 1 << 13] = float("nan")  # every lane's first group (and the next) NaN
        b[1 << 12 : (1 << 12) + 64 : 2] = 1.5  # a few finite values inside the NaN run
        xs += [a.to(dtype), b.to(dtype)]
    (res,) = run(emu, [Describe(xs)], tmp_path)
    for x, s in zip(xs, res.summaries, strict=True):
        assert_summary_matches(s, ref_moments(x), f"non-finite first values, {x.dtype}")


def test_scale_of_warps_whose_first_values_are_equal_or_zero(emu: Path, tmp_path: Path) -> None:
    # The scale comes from the spread of the lanes' first values, of the whole group when those
    # are all equal, and of |shift| when the group's values are all equal; a warp that has seen
    # only zeros waits for a nonzero value (then adds its zeros under the new shift). Tiny values
    # after zeros or after a constant run must not lose their d^4 to float32 subnormals.
    g = torch.Generator().manual_seed(8)

    def randn(n: int) -> torch.Tensor:
        return torch.randn(n, generator=g, dtype=torch.float64)

    def prefixed(prefix: float, width: int, body: torch.Tensor) -> torch.Tensor:
        x = body.clone().view(-1, CHUNK)
        x[:, :width] = prefix  # the start of every chunk
        return x.reshape(-1)

    xs = []
    for dtype in (torch.float32, torch.bfloat16):
        xs += [
            prefixed(0.0, 1024, 1e-12 * randn(2 * CHUNK)).to(dtype),  # lanes' first values zero
            prefixed(0.0, 1 << 14, 1e-12 * randn(2 * CHUNK)).to(dtype),  # whole groups zero
            prefixed(0.0, 1 << 14, 1e4 + randn(2 * CHUNK)).to(dtype),  # zeros, then an offset
        ]
    sparse = torch.rand(2 * CHUNK, generator=g) < 0.03
    xs.append(torch.where(sparse, 1e-12 * randn(2 * CHUNK), 0.0).to(torch.float32))
    xs.append(prefixed(2e-5, 1024, 2e-5 * (1 + 2**-21 * randn(2 * CHUNK))).to(torch.float32))
    xs.append(prefixed(0.0, 1 << 14, 1e-3 * randn(2 * CHUNK)).to(torch.float16))
    xs.append(torch.zeros(CHUNK + 7, dtype=torch.float32))
    (res,) = run(emu, [Describe(xs)], tmp_path)
    for i, (x, s) in enumerate(zip(xs, res.summaries, strict=True)):
        assert_summary_matches(s, ref_moments(x), f"case {i}, {x.dtype}")


# (scale, offset) of scale * N(0, 1) + offset; float32 and bfloat16 share the float32 range
WIDE_SCALES = [
    (1e-30, 0.0),
    (1e30, 0.0),
    (1.0, 1e4),
    (1e-20, 1e-15),
    (1e25, 1e30),
    (1e-5, 0.0),
    (1e5, 0.0),
]
# float16 ones: a spread below 2^-16 (subnormal values, scaled sums) and unscaled ones
HALF_SCALES = [(1e-6, 0.0), (1e-3, 0.0), (1.0, 1e3), (3e3, 0.0)]


@pytest.mark.parametrize(
    ("scale", "offset", "dtype"),
    [(s, o, torch.float32) for s, o in WIDE_SCALES]
    + [(s, o, torch.bfloat16) for s, o in WIDE_SCALES]
    + [(s, o, torch.float16) for s, o in HALF_SCALES],
)
def test_scale_extremes_and_large_offset(
    emu: Path, tmp_path: Path, scale: float, offset: float, dtype: torch.dtype
) -> None:
    # The warp's shift and power-of-two scale keep float32 power sums in range and accurate
    # (SPEC: 1e4 + N(0, 1)); 1e-5 and 1e5 sit on either side of the spreads that take no scale
    # (2^+-16). The 16-bit kernels run the rest of a chunk in a loop made for the warp's scale
    # (1 or not), so each dtype meets both. Warps also meet regime jumps: 1e-10 values, then 1e3
    # (scaled sums); 1e-4, then 1e9 (unscaled sums whose fourth powers overflow float32, so
    # those groups take the float64 path); float16 has no room for them.
    g = torch.Generator().manual_seed(11)
    base = torch.randn(3 * CHUNK, generator=g, dtype=torch.float64)
    z = torch.randn(CHUNK, generator=g, dtype=torch.float64)
    xs = [(offset + scale * base).to(dtype)]
    if dtype != torch.float16:
        xs += [
            torch.cat([1e-10 * z[: 1 << 12], 1e3 * z[1 << 12 :]]).to(dtype),
            torch.cat([1e-4 * z[: 1 << 12], 1e9 * z[1 << 12 :]]).to(dtype),
        ]
    (res,) = run(emu, [Describe(xs)], tmp_path)
    for x, s in zip(xs, res.summaries, strict=True):
        assert_summary_matches(s, ref_moments(x), f"{offset} + {scale} N(0,1), {dtype}")


# ------------------------------------------------------------------------------ uniform
# 4000: shared counters with the opt-in above 48 KB; 20000: counters in global memory
@pytest.mark.parametrize("bins", [1, 7, 256, 4000, 20000])
def test_uniform_histograms_every_edge_mode(emu: Path, tmp_path: Path, bins: int) -> None:
    xs = [
        _data(CHUNK + 333, torch.float32, seed=bins),
        _layout(_data(5000, torch.bfloat16, seed=bins + 1), "transposed"),
        _data(4096, torch.float64, seed=bins + 2),
    ]
    explicit = np.stack([np.linspace(0.25, 0.35, bins + 1)] * len(xs))
    explicit[1] = np.linspace(-1.0, 1.0, bins + 1)
    cases = [
        Describe(xs, HIST_UNIFORM, bins=bins, edge_mode=EDGES_RANGE, lo=0.2, hi=0.4, total=2),
        Describe(xs, HIST_UNIFORM, bins=bins, edge_mode=EDGES_DATA),
        Describe(xs, HIST_UNIFORM, bins=bins, edge_mode=EDGES_EXPLICIT, edges=explicit),
    ]
    res_range, res_data, res_explicit = run(emu, cases, tmp_path)
    for i, x in enumerate(xs):
        for res, kw, mode in (
            (res_range, {"range": (0.2, 0.4)}, "range"),
            (res_data, {}, "data"),
        ):
            s = res.summaries[i]
            c = pws.describe(x, bins=bins, **kw)
            assert_summary_matches(s, ref_moments(x), f"bins={bins} {mode}")
            np.testing.assert_array_equal(s.hist.edges, c.hist.edges)  # np.linspace, bit for bit
            lo, hi = kw.get("range", (c.min, c.max))
            np.testing.assert_array_equal(s.hist.edges, ref_histogram_edges(lo, hi, bins))
            counts, under, over, nan = ref_histogram(x, bins, (lo, hi))
            np.testing.assert_array_equal(s.hist.counts, counts)
            assert (s.hist.underflow, s.hist.overflow, s.hist.nan_count) == (under, over, nan)
            assert s.hist == c.hist
        e = res_explicit.summaries[i].hist
        counts, under, over, nan = ref_histogram(x, bins, (explicit[i][0], explicit[i][-1]))
        np.testing.assert_array_equal(e.counts, counts)
        assert (e.underflow, e.overflow, e.nan_count) == (under, over, nan)
    total = res_range.total.hist
    cpu_total = pws.describe_many(xs, bins=bins, range=(0.2, 0.4), total=True)[1].hist
    np.testing.assert_array_equal(total.counts, cpu_total.counts)
    assert (total.underflow, total.overflow, total.nan_count) == (
        cpu_total.underflow,
        cpu_total.overflow,
        cpu_total.nan_count,
    )


# ------------------------------------------------------------------------------ many tensors
def _param_list() -> list[torch.Tensor]:
    return param_list(sizes=(0, 1, 768, 3072, 9008, 70_000))  # smaller than on a GPU


def test_describe_many_matches_cpu_per_tensor_and_total(emu: Path, tmp_path: Path) -> None:
    xs = _param_list()
    (res,) = run(emu, [Describe(xs, HIST_LOG, m=3, total=2)], tmp_path)
    cpu_res, cpu_total = pws.describe_many(xs, mantissa_bits=3, total=True)
    for i, (x, s, c) in enumerate(zip(xs, res.summaries, cpu_res, strict=True)):
        assert_summary_matches(s, ref_moments(x), f"tensor {i}")
        assert_same_counts(s, c)
        assert s.hist == c.hist, i
    allx = torch.cat([x.reshape(-1).double() for x in xs])
    assert_summary_matches(res.total, ref_moments(allx), "total")
    assert res.total.hist == cpu_total.hist


def _fused_launches(trace: Path) -> list[dict[str, int]]:
    """Every launch of a PWS_EMU_TRACE file: its dynamic shared memory, kernel attribute and
    grid.x."""
    out = []
    for line in trace.read_text().splitlines():
        if not line.startswith("launch "):
            continue  # a runtime call ("call NAME")
        f = dict(kv.split("=") for kv in line.split()[1:])
        grid = int(f["grid"].split(",")[0])
        out.append({"smem": int(f["smem"]), "attr": int(f["attr"]), "grid": grid})
    return out


def _band_octaves(m: int, budget: int) -> int:
    """Octaves of a log band (csrc/cuda/describe_cuda.cu LogBand): as many whole octaves of 2^m
    buckets, for both signs, as fit in ``budget`` bytes beside the header and the zero bucket."""
    return min((budget // 4 - 6) // (2 << m), 254)


def _band_bytes(m: int, budget: int) -> int:
    """Shared memory of a log band: the header, the zero bucket and both signs' octaves."""
    return (6 + 2 * _band_octaves(m, budget) * (1 << m)) * 4


def _band_edges(m: int, budget: int) -> tuple[float, float]:
    """The band's |x| range [2^e1, 2^e2) (LogBand: centred on 2^-6, at most 2^16, from 2^-126)."""
    octaves = _band_octaves(m, budget)
    e1 = max(min(-6 - octaves // 2, 16 - octaves), -126)
    return 2.0**e1, 2.0 ** (e1 + octaves)


def _values_around_bands(dtype: torch.dtype) -> torch.Tensor:
    """Weights-like values, then both signs of every band edge of m = 3..10 and of the values
    beside them, tiny, subnormal and huge values, zeros and the specials."""
    edges = []
    for m in range(3, 11):
        for budget in (72 * 1024, 12 * 1024):
            edges += list(_band_edges(m, budget))
    edge = torch.tensor(edges, dtype=torch.float64).to(dtype)
    bits = edge.view(torch.int32 if dtype == torch.float32 else torch.int16)
    beside = torch.cat([(bits - 1).view(dtype), (bits + 1).view(dtype)])  # positive: -1 is lower
    odd = torch.tensor([1e-30, 1e-41, 0.0, -0.0, 1e30, 3e38, float("inf"), float("-inf")])
    odd = torch.cat([odd, torch.tensor([float("nan")] * 3)]).to(dtype)
    some = torch.cat([edge, beside, odd])
    some = torch.cat([some, -some])
    base = weights_like(CHUNK + 4099, dtype, seed=3, specials=False)
    base[:: (CHUNK + 4099) // some.numel()][: some.numel()] = some
    return base


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_shared_band_global_and_opt_in_counter_paths(emu: Path, tmp_path: Path, dtype) -> None:
    # Which counters the fused launches use, read from the emulator's launch trace (the merge
    # launches there use no shared memory), and the same results
    # on every path. On the default device (72 KB budget): m = 3 (16 KB) and m = 5 (64 KB, the
    # opt-in attribute raised above the default 48 KB) keep their whole record in shared memory,
    # m = 7 and m = 10 a band of it (values outside it count in global memory); on a device with
    # 16 KB of shared memory (12 KB budget) m = 3 and m = 5 take a band too; on one with 4 KB
    # nothing fits and every counter is global (lanes aggregated by __match_any_sync). The data
    # put values on both sides of every band edge.
    xs = [_values_around_bands(dtype), _data(9000, torch.float16, seed=4)]
    ms = (3, 5, 7, 10)
    paths = {"default": None, "small": 16 * 1024, "none": 4096}
    by_path = {}
    for label, optin in paths.items():
        for m in ms:
            trace = tmp_path / f"{label}-{m}.trace"
            env = {"PWS_EMU_TRACE": str(trace)}
            if optin is not None:
                env["PWS_EMU_SMEM_OPTIN"] = str(optin)
            (res,) = run(emu, [Describe(xs, HIST_LOG, m=m)], tmp_path, env=env)
            by_path[label, m] = res
            launches = _fused_launches(trace)
            smem = {ln["smem"] for ln in launches}
            whole = (5 + ref_log_num_buckets(m)) * 4
            if label == "default":
                need = whole if whole <= 72 * 1024 else _band_bytes(m, 72 * 1024)
                assert need <= 72 * 1024 and need in smem <= {0, need}, (m, smem)
                if need > 48 * 1024:
                    assert all(ln["attr"] >= need for ln in launches if ln["smem"]), launches
            elif label == "small":
                need = _band_bytes(m, 12 * 1024)
                assert whole > 12 * 1024 and need in smem <= {0, need}, (m, smem)
            else:
                assert smem == {0}, (m, smem)  # nothing fits: global counters
    for m in ms:
        for i, x in enumerate(xs):
            hists = [by_path[label, m].summaries[i].hist for label in paths]
            assert_log_hist_matches_reference(hists[0], x, m)
            assert hists[1:] == hists[:-1], (m, i)
            assert_same_counts(by_path["default", m].summaries[i], by_path["none", m].summaries[i])


@pytest.mark.parametrize("schedule", ["warp", "warp-reverse", "thread"])
def test_results_do_not_depend_on_the_thread_order(
    emu: Path, tmp_path: Path, schedule: str
) -> None:
    # The emulator runs a block's threads warp by warp (from either end) or round robin, and
    # switches at random atomics (seeded): every order must give the right results, and the same
    # bits (states and every histogram record).
    xs = [*_param_list()[:40], _data(3 * CHUNK + 5, torch.float32, seed=9)]
    cases = [Describe(xs, HIST_LOG, m=3, total=2), Describe(xs, HIST_LOG, m=10, total=2)]
    runs = []
    for seed in (1, 2):
        env = {"PWS_EMU_SCHEDULE": schedule, "PWS_EMU_SEED": str(seed), "PWS_EMU_YIELD_EVERY": "3"}
        runs.append(run(emu, cases, tmp_path, env=env))
    for m, a, b in zip((3, 10), *runs, strict=True):
        np.testing.assert_array_equal(a.records, b.records)
        for x, sa, sb in zip(xs, a.summaries, b.summaries, strict=True):
            assert sa._state()[0].tobytes() == sb._state()[0].tobytes()
            np.testing.assert_array_equal(sa._state()[1], sb._state()[1])
            assert_same_counts(sa, pws.describe(x))
            assert sa.hist == pws.log_histogram(x, mantissa_bits=m)
        assert a.total.hist == pws.describe_many(xs, mantissa_bits=m, total=True)[1].hist


def test_work_split_from_the_environment(emu: Path, tmp_path: Path) -> None:
    # bench/bench_chunks.py sweeps the work split through PWS_CUDA_CHUNK, PWS_CUDA_BLOCKS,
    # PWS_CUDA_MERGE_GROUP and PWS_CUDA_MERGE: 4,096-value chunks merged in groups of 3 (two
    # levels from 4 chunks on), 2^23-value chunks merged in pairs, 3 chunks per tensor (lengths
    # rounded up to a multiple of 512, at least 4,096: 17,920 values for the first tensor, 7,168
    # for the second, 4,096 for the third), and the merge inside the fused kernel
    # (PWS_CUDA_MERGE=inline), read from the launch trace (the fused launches' grids are the chunk
    # counts; launches without shared memory are the merge and total kernels). The same exact
    # counts and histograms, moments within the bounds. Invalid values are refused by name.
    xs = [
        _data(13 * 4096 + 7, torch.float32, seed=11),
        _data(5 * 4096, torch.bfloat16, seed=12),
        _data(100, torch.float16, seed=13),
    ]
    allx = torch.cat([x.double() for x in xs])
    splits = [
        ({"PWS_CUDA_CHUNK": "4096", "PWS_CUDA_MERGE_GROUP": "3"}, [14, 5, 1]),
        ({"PWS_CUDA_CHUNK": str(1 << 23), "PWS_CUDA_MERGE_GROUP": "2"}, [1, 1, 1]),
        ({"PWS_CUDA_BLOCKS": "3", "PWS_CUDA_MERGE_GROUP": "2"}, [3, 3, 1]),
        ({"PWS_CUDA_BLOCKS": "3", "PWS_CUDA_MERGE": "inline"}, [3, 3, 1]),
        ({"PWS_CUDA_CHUNK": "4096", "PWS_CUDA_MERGE": "inline"}, [14, 5, 1]),
    ]
    for i, (env, chunks) in enumerate(splits):
        trace = tmp_path / f"split-{i}.trace"
        (res,) = run(
            emu,
            [Describe(xs, HIST_LOG, m=3, total=2)],
            tmp_path,
            env={**env, "PWS_EMU_TRACE": str(trace)},
        )
        assert isinstance(res, DescribeResult), res
        launches = _fused_launches(trace)
        grids = [ln["grid"] for ln in launches if ln["smem"] > 0]
        assert sorted(grids) == sorted(chunks), (env, grids)
        merges = 0 if env.get("PWS_CUDA_MERGE") == "inline" else len(xs)  # one per table
        assert sum(ln["smem"] == 0 for ln in launches) == 1 + merges, (env, launches)
        for x, s in zip(xs, res.summaries, strict=True):
            assert_summary_matches(s, ref_moments(x), str(env))
            assert_same_counts(s, pws.describe(x))
            assert_log_hist_matches_reference(s.hist, x, 3)
        assert_summary_matches(res.total, ref_moments(allx), f"total, {env}")
        assert res.total.hist == pws.describe_many(xs, mantissa_bits=3, total=True)[1].hist
    bad = {
        "PWS_CUDA_CHUNK": ["5000", "1024", str(1 << 24), "4k"],
        "PWS_CUDA_BLOCKS": ["0", str((1 << 20) + 1)],
        "PWS_CUDA_MERGE_GROUP": ["1", "x"],
        "PWS_CUDA_MERGE": ["fast"],
    }
    for name, values in bad.items():
        for v in values:
            (msg,) = run(emu, [Describe(xs[2:])], tmp_path, env={name: v})
            assert isinstance(msg, str) and f"{name}={v} is not" in msg, (name, v, msg)


def test_layout_that_cannot_be_merged_is_refused(emu: Path, tmp_path: Path) -> None:
    # 8 dimensions that no merge can join (every one sliced): more than kMaxCudaDims = 6.
    big = _data(3**8, torch.float32, seed=4).reshape([3] * 8)[(slice(0, 2),) * 8]
    ok = _data(100, torch.float32, seed=5)
    weird, fine = run(emu, [Describe([big]), Describe([ok])], tmp_path)
    assert isinstance(weird, str) and "cannot be merged" in weird
    assert_summary_matches(fine.summaries[0], ref_moments(ok))  # the next case still runs


# ------------------------------------------------------------------------------ sanitizers
@pytest.fixture(scope="module")
def emu_sanitized(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The driver built with AddressSanitizer and UndefinedBehaviorSanitizer (about 30 s)."""
    return _build_driver(tmp_path_factory.mktemp("cuda_emu_san"), ["-O1", *SANITIZE])


def test_kernels_under_address_and_undefined_behaviour_sanitizers(
    emu_sanitized: Path, tmp_path: Path
) -> None:
    # Inputs and device buffers are allocated to the byte, so any read past a tensor's end, any
    # shared-memory access past the launch's dynamic size, and any undefined integer operation
    # (the bucket formulas' shifts and casts) aborts the driver. Every dtype, every layout, both
    # counter placements and every histogram kind.
    cases: list[Any] = []
    for dtype in DTYPES:
        x = _data(CHUNK + 4099, dtype, seed=DTYPE_CODE[dtype])
        xs = [_layout(x, lay) for lay in ("contiguous", "unaligned", "transposed")]
        xs += [torch.empty(0, dtype=dtype), torch.tensor(1.5, dtype=dtype)]
        cases += [Describe(xs, HIST_LOG, m=m, total=2) for m in (3, 10)]
        cases += [
            Describe(xs, HIST_UNIFORM, bins=b, edge_mode=EDGES_RANGE, lo=0.2, hi=0.4, total=2)
            for b in (7, 20000)
        ]
        cases.append(Describe(xs, HIST_UNIFORM, bins=64, edge_mode=EDGES_DATA))
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 50, size=(9, 300)).astype(np.int64)
    counts[5] = 0
    cases += [Distances(counts, np.linspace(-1.0, 1.0, 300), metric) for metric in range(5)]
    results = run(emu_sanitized, cases, tmp_path, env=SANITIZER_ENV)  # asserts a clean exit
    for case, res in zip(cases, results, strict=True):
        if isinstance(case, Describe):  # and the results are still right
            assert isinstance(res, DescribeResult), res
            for x, s in zip(case.xs, res.summaries, strict=True):
                assert_same_counts(s, pws.describe(x))
        else:
            ref = _C.pairwise_distances(case.counts, case.centres, case.metric)
            np.testing.assert_allclose(res, ref, rtol=1e-12, atol=1e-15, equal_nan=True)


# ------------------------------------------------------------------------------ distances
def test_pairwise_distances_match_cpu(emu: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 50, size=(37, 300)).astype(np.int64)
    counts[:, :10] = 0
    counts[5] = 0  # an empty histogram: NaN row and column
    counts[7] = counts[3]  # identical rows: distance 0
    centres = np.linspace(-1.0, 1.0, 300)
    results = run(emu, [Distances(counts, centres, metric) for metric in range(5)], tmp_path)
    for metric, got in enumerate(results):
        ref = _C.pairwise_distances(counts, centres, metric)
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-15, equal_nan=True)
        assert np.isnan(got[5]).all() and got[3, 7] == 0.0


def test_host_cost_bench_runs_on_the_emulator(emu_module: Path, tmp_path: Path) -> None:
    # bench/emu_host_cost.py on a small plan: it runs, and the batch it fetched holds the
    # non-empty log buckets of the CPU engine (per tensor and total, once per record).
    out = tmp_path / "cost.json"
    script = ROOT / "bench" / "emu_host_cost.py"
    args = ["--module", str(emu_module), "--tensors", "6", "--values", "300", "--batch", "2"]
    args += ["--rounds", "1", "--json", str(out)]
    r = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(out.read_text())
    assert (res["tensors"], res["batch"]) == (6, 2)
    assert res["launch_median_us"] > 0 and res["fetch_many_median_ms"] > 0
    phases = res["launch_phases_median_us"]  # the launch by phase (the kernels are queued work)
    assert list(phases)[:4] == ["result", "allocate", "release_gil", "pass"] and len(phases) == 8
    assert min(phases.values()) >= 0 and phases["allocate"] > 0 and phases["pass"] > 0
    sys.path.insert(0, str(ROOT / "bench"))
    from bench_stats import vit_b16_shapes

    g = torch.Generator().manual_seed(0)  # the bench's inputs
    xs = [
        torch.randn(min(300, torch.Size(s).numel()), generator=g) * 0.02
        for s in vit_b16_shapes()[:6]
    ]
    res_cpu, total = pws.describe_many(xs, total=True, mantissa_bits=3)
    nonempty = sum(int(np.count_nonzero(s.hist.counts)) for s in [*res_cpu, total])
    assert res["nonempty_buckets_per_batch"] == 2 * nonempty
