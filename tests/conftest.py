"""Shared pytest configuration: report header, markers, CUDA skip and common fixtures."""

from __future__ import annotations

import numpy as np
import pytest


def _build_info() -> dict | str:
    try:
        import pyweightstat

        return pyweightstat.build_info()
    except Exception as exc:  # the header must never break the run
        return f"unavailable ({type(exc).__name__}: {exc})"


def _cuda_usable() -> bool:
    info = _build_info()
    if not isinstance(info, dict) or not info.get("cuda", False):
        return False
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: long-running tests, excluded with -m 'not slow'")
    config.addinivalue_line("markers", "cuda: needs a CUDA build and a visible NVIDIA GPU")


def pytest_report_header(config: pytest.Config) -> list[str]:
    import scipy
    import torch

    lines = [
        f"torch {torch.__version__}, numpy {np.__version__}, scipy {scipy.__version__}",
        f"pyweightstat build_info: {_build_info()}",
    ]
    if torch.cuda.is_available():
        lines.append(f"GPU: {torch.cuda.get_device_name(0)}")
    else:
        lines.append("GPU: none visible to torch")
    return lines


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _cuda_usable():
        return
    skip = pytest.mark.skip(reason="needs a CUDA build of pyweightstat and a visible GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng() -> np.random.Generator:
    """A NumPy generator with a fixed seed (fresh for every test)."""
    return np.random.default_rng(20240817)


@pytest.fixture(scope="session")
def big_offset_normal() -> np.ndarray:
    """10^7 float32 values of 10^4 + N(0, 1), shared by the large moment/histogram tests."""
    g = np.random.default_rng(7)
    return (1e4 + g.standard_normal(10_000_000)).astype(np.float32)
