"""The copy plan of the CUDA result fetches (csrc/bindings/window_rows.h), checked on the host:
it runs on a GPU only through the CUDA bindings, so a small C++ program exercises its layout
logic with memcpy in place of the device copies."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_window_rows_copies_every_window_exactly(tmp_path: Path) -> None:
    cxx = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no C++ compiler on PATH")
    exe = tmp_path / "window_rows_check"
    subprocess.run(
        [cxx, "-std=c++17", "-O1", "-Wall", "-Wextra",
         f"-I{ROOT / 'csrc' / 'bindings'}", str(ROOT / "tests" / "cpp" / "window_rows_check.cpp"),
         "-o", str(exe)],
        check=True,
    )  # fmt: skip
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=False)
    m = re.fullmatch(r"bad=(\d+) dense=(\d+) sparse=(\d+)\s*", out.stdout)
    assert m, out.stdout + out.stderr
    bad, dense, sparse = (int(g) for g in m.groups())
    assert out.returncode == 0 and bad == 0
    assert dense > 0 and sparse > 0  # both copy modes were exercised
