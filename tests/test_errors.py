"""Every refusal of issue 2 gives a TypeError/ValueError that names the argument."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import pyweightstat as pws


def _names(exc: pytest.ExceptionInfo, word: str) -> None:
    msg = str(exc.value)
    assert re.search(rf"\b{re.escape(word)}\b", msg), f"message does not name {word!r}: {msg}"


BAD_DTYPES = [
    np.zeros(4, dtype=np.int32),
    np.zeros(4, dtype=np.int64),
    np.zeros(4, dtype=np.uint8),
    np.zeros(4, dtype=np.complex64),
    np.zeros(4, dtype=bool),
    torch.zeros(4, dtype=torch.int64),
    torch.zeros(4, dtype=torch.int8),
    torch.zeros(4, dtype=torch.complex64),
    torch.zeros(4, dtype=torch.bool),
    [1, 2, 3],
]
BAD_IDS = [
    "np_int32",
    "np_int64",
    "np_uint8",
    "np_complex64",
    "np_bool",
    "torch_int64",
    "torch_int8",
    "torch_complex64",
    "torch_bool",
    "list_of_ints",
]


@pytest.mark.parametrize("x", BAD_DTYPES, ids=BAD_IDS)
def test_unsupported_dtypes(x) -> None:
    for fn in (
        pws.describe,
        pws.histogram,
        pws.log_histogram,
        lambda v: pws.quantile(v, 0.5),
    ):
        with pytest.raises(TypeError) as exc:
            fn(x)
        _names(exc, "x")
        assert "float32" in str(exc.value), str(exc.value)


def test_describe_many_names_the_offending_item() -> None:
    xs = [torch.zeros(3), torch.zeros(3, dtype=torch.int32), torch.zeros(2)]
    with pytest.raises(TypeError) as exc:
        pws.describe_many(xs)
    assert "xs[1]" in str(exc.value), str(exc.value)


@pytest.mark.parametrize("obj", [object(), "abc", {"a": 1}, None, 3 + 4j])
def test_not_an_array(obj) -> None:
    with pytest.raises(TypeError) as exc:
        pws.describe(obj)
    _names(exc, "x")
    with pytest.raises(TypeError):
        pws.histogram(obj)


def test_describe_many_needs_an_iterable() -> None:
    with pytest.raises(TypeError) as exc:
        pws.describe_many(42)
    _names(exc, "xs")


@pytest.mark.parametrize("bins", [0, -3])
def test_bins_below_one(bins: int) -> None:
    x = np.zeros(3, dtype=np.float32)
    with pytest.raises(ValueError) as exc:
        pws.histogram(x, bins=bins)
    _names(exc, "bins")
    with pytest.raises(ValueError) as exc:
        pws.describe(x, bins=bins)
    _names(exc, "bins")


@pytest.mark.parametrize("bins", [2.5, "10", True])
def test_bins_not_an_integer(bins) -> None:
    with pytest.raises(TypeError) as exc:
        pws.histogram(np.zeros(3, dtype=np.float32), bins=bins)
    _names(exc, "bins")


@pytest.mark.parametrize(
    "bad_range",
    [(1.0, 0.0), (0.0, np.inf), (-np.inf, 0.0), (np.nan, 1.0), (0.0, np.nan)],
    ids=["reversed", "inf_hi", "inf_lo", "nan_lo", "nan_hi"],
)
def test_bad_range(bad_range) -> None:
    x = np.zeros(3, dtype=np.float32)
    with pytest.raises(ValueError) as exc:
        pws.histogram(x, bins=4, range=bad_range)
    _names(exc, "range")
    with pytest.raises(ValueError) as exc:
        pws.describe(x, bins=4, range=bad_range)
    _names(exc, "range")


def test_range_not_a_pair() -> None:
    x = np.zeros(3, dtype=np.float32)
    with pytest.raises((TypeError, ValueError)) as exc:
        pws.histogram(x, bins=4, range=(0.0, 1.0, 2.0))
    _names(exc, "range")


@pytest.mark.parametrize("m", [-1, 11])
def test_bad_mantissa_bits(m: int) -> None:
    x = np.zeros(3, dtype=np.float32)
    with pytest.raises(ValueError) as exc:
        pws.log_histogram(x, mantissa_bits=m)
    _names(exc, "mantissa_bits")


@pytest.mark.parametrize("q", [-0.1, 1.5, float("nan")])
def test_bad_quantile_probability(q: float) -> None:
    with pytest.raises(ValueError) as exc:
        pws.quantile(np.zeros(3, dtype=np.float32), q)
    _names(exc, "q")


def _hists():
    x = np.linspace(0, 1, 10, dtype=np.float32)
    return pws.histogram(x, bins=5, range=(0.0, 1.0)), pws.histogram(x, bins=6, range=(0.0, 1.0))


@pytest.mark.parametrize("metric", ["euclidean", "JS ", "", "kl"])
def test_unknown_metric(metric: str) -> None:
    h, _ = _hists()
    with pytest.raises(ValueError) as exc:
        pws.distance(h, h, metric)
    _names(exc, "metric")
    assert "wasserstein" in str(exc.value)  # lists what is accepted
    with pytest.raises(ValueError) as exc:
        pws.pairwise_distances([h, h], metric)
    _names(exc, "metric")


def test_mismatched_edges() -> None:
    h1, h2 = _hists()
    for call in (
        lambda: h1.merge(h2),
        lambda: h1 + h2,
        lambda: pws.distance(h1, h2, "tv"),
        lambda: pws.pairwise_distances([h1, h2], "tv"),
    ):
        with pytest.raises(ValueError) as exc:
            call()
        _names(exc, "edges")


def test_merge_with_wrong_type() -> None:
    s = pws.describe(np.zeros(3, dtype=np.float32))
    h, _ = _hists()
    with pytest.raises(TypeError):
        s.merge(h)
    with pytest.raises(TypeError):
        h.merge(s)


class _FakeCudaArray:
    """Claims to live on a CUDA device (DLPack device type 2, kDLCUDA)."""

    shape = (4,)
    dtype = np.float32

    def __dlpack_device__(self) -> tuple[int, int]:
        return (2, 0)

    def __dlpack__(self, *args, **kwargs):
        raise AssertionError("a CUDA input must be refused before it is exported")


def test_cuda_input_without_cuda_build() -> None:
    if pws.build_info()["cuda"]:
        pytest.skip("this build has CUDA")
    with pytest.raises((ValueError, TypeError)) as exc:
        pws.describe(_FakeCudaArray())
    assert "CUDA" in str(exc.value), str(exc.value)
    _names(exc, "x")
    with pytest.raises((ValueError, TypeError)) as exc:
        pws.describe_many([torch.zeros(2), _FakeCudaArray()])
    assert "CUDA" in str(exc.value) and "xs[1]" in str(exc.value), str(exc.value)
    if torch.cuda.is_available():
        with pytest.raises((ValueError, TypeError)) as exc:
            pws.describe(torch.zeros(3, device="cuda"))
        assert "CUDA" in str(exc.value)


def test_unsupported_dlpack_device() -> None:
    class Vulkan(_FakeCudaArray):
        def __dlpack_device__(self) -> tuple[int, int]:
            return (7, 0)

    with pytest.raises(ValueError) as exc:
        pws.describe(Vulkan())
    _names(exc, "x")


def test_torch_meta_tensor_refused() -> None:
    with pytest.raises((ValueError, TypeError)) as exc:
        pws.describe(torch.empty(3, device="meta"))
    _names(exc, "x")


def test_build_info_keys() -> None:
    info = pws.build_info()
    for key in ("version", "openmp", "cuda", "cuda_archs", "simd"):
        assert key in info, key
    assert isinstance(info["openmp"], bool) and isinstance(info["cuda"], bool)
    assert isinstance(info["cuda_archs"], list)
    assert info["version"] == pws.__version__
