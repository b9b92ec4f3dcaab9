"""describe / describe_many / Summary against the float64 reference (issue 2, 'Accuracy')."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from stats_checks import COUNT_FIELDS, assert_summary_matches, summary_dict

import pyweightstat as pws
from pyweightstat.stats.reference import SUMMARY_FIELDS, ref_moments, to_float64


def _sample(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "normal":
        return rng.standard_normal(n)
    if kind == "offset":  # large common offset: 1e4 + N(0, 1)
        return 1e4 + rng.standard_normal(n)
    if kind == "exponential":
        return rng.exponential(3.0, n)
    if kind == "student_t":  # heavy tails
        return rng.standard_t(5, n)
    if kind == "lognormal":
        return rng.lognormal(0.0, 1.0, n)
    if kind == "tiny":
        return 1e-3 * rng.standard_normal(n) - 5e-3
    raise ValueError(kind)


KINDS = ("normal", "offset", "exponential", "student_t", "lognormal", "tiny")


# ----------------------------------------------------------------------------------------------
# accuracy
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", [1, 2, 3, 100, 4097, 100_003, 1_000_000])
def test_float32_accuracy(kind: str, n: int, rng: np.random.Generator) -> None:
    x = _sample(kind, n, rng).astype(np.float32)
    assert_summary_matches(pws.describe(x), ref_moments(x), f"{kind} n={n}")


@pytest.mark.parametrize("kind", ["exponential", "student_t"])  # offset: test below
def test_float32_accuracy_1e7(kind: str, rng: np.random.Generator) -> None:
    x = _sample(kind, 10_000_000, rng).astype(np.float32)
    assert_summary_matches(pws.describe(x), ref_moments(x), kind)


def test_offset_normal_1e7_against_scipy(big_offset_normal: np.ndarray) -> None:
    import scipy.stats as st

    x = big_offset_normal
    s = pws.describe(x)
    f = x.astype(np.float64)
    assert_summary_matches(s, ref_moments(x), "1e4 + N(0,1)")
    assert abs(s.skew - st.skew(f)) <= 1e-4
    assert abs(s.kurtosis - st.kurtosis(f)) <= 1e-3
    assert s.var == pytest.approx(np.var(f), rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["offset", "student_t"])
def test_float32_accuracy_1e8(kind: str) -> None:
    g = np.random.default_rng(3)
    x = np.empty(100_000_000, dtype=np.float32)
    for i in range(0, x.size, 10_000_000):  # generate in chunks to limit float64 memory
        x[i : i + 10_000_000] = _sample(kind, 10_000_000, g)
    assert_summary_matches(pws.describe(x), ref_moments(x), kind)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", ["normal", "offset", "exponential", "student_t", "tiny"])
@pytest.mark.parametrize("n", [1, 7, 1000, 1_000_000])
def test_half_precision_read_natively(
    dtype: torch.dtype, kind: str, n: int, rng: np.random.Generator
) -> None:
    # the reference sees exactly the rounded values the engine reads
    t = torch.from_numpy(_sample(kind, n, rng)).to(dtype)
    assert_summary_matches(pws.describe(t), ref_moments(t), f"{dtype} {kind} n={n}")


def test_bfloat16_1e7(rng: np.random.Generator) -> None:
    t = torch.from_numpy(_sample("offset", 10_000_000, rng).astype(np.float32)).to(torch.bfloat16)
    assert_summary_matches(pws.describe(t), ref_moments(t), "bf16 offset 1e7")


@pytest.mark.parametrize("kind", KINDS)
def test_float64_input(kind: str, rng: np.random.Generator) -> None:
    x = _sample(kind, 300_001, rng)
    assert_summary_matches(pws.describe(x), ref_moments(x), kind)
    assert_summary_matches(pws.describe(torch.from_numpy(x)), ref_moments(x), f"torch {kind}")


def test_numpy_float16(rng: np.random.Generator) -> None:
    x = rng.standard_normal(5000).astype(np.float16)
    assert_summary_matches(pws.describe(x), ref_moments(x))


# ----------------------------------------------------------------------------------------------
# input kinds and layouts
# ----------------------------------------------------------------------------------------------
def test_numpy_and_torch_agree(rng: np.random.Generator) -> None:
    x = rng.standard_normal((300, 170)).astype(np.float32)
    ref = ref_moments(x)
    assert_summary_matches(pws.describe(x), ref, "numpy")
    assert_summary_matches(pws.describe(torch.from_numpy(x)), ref, "torch")
    param = torch.nn.Parameter(torch.from_numpy(x.copy()))  # requires_grad tensors are accepted
    assert_summary_matches(pws.describe(param), ref, "parameter")


@pytest.mark.parametrize(
    "view",
    [
        lambda a: a[::3],
        lambda a: a.reshape(600, 500).T,
        lambda a: a.reshape(600, 500)[10:400:7, 3:450:2],
        lambda a: a.reshape(20, 30, 500)[:, ::2, 1::5],
        lambda a: a.reshape(600, 500)[:, :1],
    ],
    ids=["step3", "transposed", "2d_slice", "3d_slice", "column"],
)
def test_strided_views(view, rng: np.random.Generator) -> None:
    base = (2.0 + rng.standard_normal(300_000)).astype(np.float32)
    base[::97] = 0.0
    v = view(base)
    assert not v.flags.c_contiguous or v.size == 1
    ref = ref_moments(v)
    assert_summary_matches(pws.describe(v), ref, "numpy")
    t = view(torch.from_numpy(base))
    assert_summary_matches(pws.describe(t), ref, "torch")


def test_negative_strides(rng: np.random.Generator) -> None:
    """NumPy exports negative strides through DLPack: they must be read correctly."""
    base = rng.standard_normal((400, 300)).astype(np.float32)
    for v in (base[::-1], base[:, ::-2], base[::-3, ::-1]):
        assert_summary_matches(pws.describe(v), ref_moments(v), f"strides {v.strides}")


def test_torch_flipped_and_expanded(rng: np.random.Generator) -> None:
    t = torch.from_numpy(rng.standard_normal(1000).astype(np.float32))
    assert_summary_matches(pws.describe(t.flip(0)), ref_moments(t))
    e = t[:10].expand(50, 10)  # stride 0: every element is read 50 times
    assert_summary_matches(pws.describe(e), ref_moments(e.contiguous()))


def test_zero_dim_and_empty_shapes() -> None:
    assert_summary_matches(pws.describe(np.float32(2.5)), ref_moments([2.5]))
    assert_summary_matches(pws.describe(torch.tensor(-1.5)), ref_moments([-1.5]))
    for shape in [(0,), (3, 0), (0, 5, 2)]:
        s = pws.describe(torch.empty(shape))
        assert s.count == 0 and math.isnan(s.mean)


def test_big_endian_numpy(rng: np.random.Generator) -> None:
    """DLPack has no byte order: a non-native array is either read correctly or refused."""
    x = rng.standard_normal(1000)
    for dtype in (">f4", ">f8", "<f4"):
        xb = x.astype(dtype)
        try:
            s = pws.describe(xb)
        except ValueError as exc:
            assert "byte order" in str(exc) or "endian" in str(exc), str(exc)
        else:
            assert_summary_matches(s, ref_moments(xb), dtype)


def test_read_only_numpy(rng: np.random.Generator) -> None:
    x = rng.standard_normal(1000).astype(np.float32)
    x.flags.writeable = False
    assert_summary_matches(pws.describe(x), ref_moments(x))


# ----------------------------------------------------------------------------------------------
# special values
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_nan_and_inf_counted_and_excluded(dtype: type, rng: np.random.Generator) -> None:
    x = rng.standard_normal(10_001).astype(dtype)
    x[rng.choice(x.size, 37, replace=False)] = np.nan
    x[rng.choice(x.size, 5, replace=False)] = np.inf
    x[rng.choice(x.size, 11, replace=False)] = -np.inf
    x[rng.choice(x.size, 9, replace=False)] = 0.0
    s = pws.describe(x)
    ref = ref_moments(x)
    assert_summary_matches(s, ref)
    assert s.nan_count + s.posinf_count + s.neginf_count + s.count == x.size
    assert math.isfinite(s.mean) and math.isfinite(s.l2)


def test_negative_zero_counts_as_zero() -> None:
    s = pws.describe(np.array([0.0, -0.0, 1.0, -0.0], dtype=np.float32))
    assert s.zero_count == 3
    assert s.min == 0.0 and s.max == 1.0


@pytest.mark.parametrize(
    "values",
    [[], [np.nan], [np.inf, -np.inf, np.nan, np.nan]],
    ids=["empty", "nan", "nonfinite"],
)
def test_empty_gives_nan_moments(values: list[float]) -> None:
    x = np.array(values, dtype=np.float32)
    s = pws.describe(x)
    assert_summary_matches(s, ref_moments(x))
    assert s.count == 0
    for name in ("mean", "var", "std", "skew", "kurtosis", "min", "max", "linf"):
        assert math.isnan(getattr(s, name)), name
    assert s.l1 == 0.0 and s.l2 == 0.0


@pytest.mark.parametrize("n", [1, 2, 1000, 1_000_003])
@pytest.mark.parametrize("value", [0.1, -3.0, 1e4 + 0.5, 0.0])
def test_constant_input(n: int, value: float) -> None:
    x = np.full(n, value, dtype=np.float32)
    s = pws.describe(x)
    assert s.mean == np.float32(value), (s.mean, np.float32(value))
    assert s.var == 0.0 and s.std == 0.0
    assert math.isnan(s.skew) and math.isnan(s.kurtosis)
    assert_summary_matches(s, ref_moments(x))


@pytest.mark.parametrize("scale", [1e9, 1e12, 1e19, 1e30])
@pytest.mark.parametrize("n", [3, 100_000])
def test_large_magnitudes(scale: float, n: int, rng: np.random.Generator) -> None:
    """Finite float32 data whose squares/fourth powers overflow float32 (diverged weights)."""
    x = (scale * rng.standard_normal(n)).astype(np.float32)
    assert np.all(np.isfinite(x))
    assert_summary_matches(pws.describe(x), ref_moments(x), f"scale {scale:g}")


def test_extreme_float32_values() -> None:
    big = np.finfo(np.float32).max
    x = np.array([big, -big, big, 1.0, np.finfo(np.float32).tiny, 1e-45], dtype=np.float32)
    assert_summary_matches(pws.describe(x), ref_moments(x))


# ----------------------------------------------------------------------------------------------
# merging and serialisation
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("splits", [[1], [0], [5000, 5001], [1, 2, 3, 50_000], [99_999]])
def test_merge_of_chunks_equals_whole(splits: list[int], rng: np.random.Generator) -> None:
    x = (1e4 + rng.standard_normal(100_000)).astype(np.float32)
    x[::1000] = np.nan
    x[5::777] = 0.0
    chunks = np.split(x, splits)
    parts = [pws.describe(c) for c in chunks]
    merged = parts[0]
    for p in parts[1:]:
        merged = merged.merge(p)
    ref = ref_moments(x)
    assert_summary_matches(merged, ref, "merge")
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    assert_summary_matches(total, ref, "+")
    whole = pws.describe(x)
    for name in (*COUNT_FIELDS, "min", "max"):
        assert getattr(merged, name) == getattr(whole, name), name


def test_cpu_record_total_is_the_left_fold_of_merges(rng: np.random.Generator) -> None:
    """The CPU tracker's one-call record (``describe_cpu_record``): each slot's state equals
    ``describe``'s, the total equals merging the Summaries left to right, bit for bit, and the
    float64 reference of the concatenation; its buckets are each histogram's non-empty ones."""
    from torch.utils.dlpack import to_dlpack

    from pyweightstat import _C

    sizes = [7, 0, 300, 1, 64]
    parts = [(1e3 * k + rng.standard_normal(n)).astype(np.float32) for k, n in enumerate(sizes)]
    parts[2][::9] = np.nan
    tensors = [torch.from_numpy(p) for p in parts]
    names = [f"t{i}" for i in range(len(parts))]
    f, n, nnz, buckets, counts, flows = _C.describe_cpu_record(
        [to_dlpack(t) for t in tensors], names, 5
    )
    summaries = [pws.describe(p, mantissa_bits=5) for p in parts]
    folded = summaries[0]
    for s in summaries[1:]:
        folded = folded.merge(s)
    for i, s in enumerate([*summaries, folded]):
        np.testing.assert_array_equal(f[i], s._state()[0])
        np.testing.assert_array_equal(n[i], s._state()[1])
        c = np.asarray(s.hist.counts)
        assert nnz[i] == np.count_nonzero(c)
        lo = int(nnz[:i].sum())
        np.testing.assert_array_equal(buckets[lo : lo + nnz[i]], np.flatnonzero(c) + s.hist.first)
        np.testing.assert_array_equal(counts[lo : lo + nnz[i]], c[c != 0])
        assert tuple(flows[i]) == (s.hist.underflow, s.hist.overflow, s.hist.nan_count)
    assert_summary_matches(pws.Summary(f[-1], n[-1]), ref_moments(np.concatenate(parts)), "fold")
    f0, n0, nnz0, b0, c0, fl0 = _C.describe_cpu_record([to_dlpack(t) for t in tensors], names, -1)
    np.testing.assert_array_equal(f0, f)
    np.testing.assert_array_equal(n0, n)
    assert not nnz0.any() and len(b0) == len(c0) == 0 and not fl0.any()
    with pytest.raises(ValueError, match="at least one"):
        _C.describe_cpu_record([], [], 3)
    with pytest.raises(ValueError, match="mantissa_bits"):
        _C.describe_cpu_record([to_dlpack(tensors[0])], ["t0"], 11)


def test_merge_with_empty_and_different_offsets(rng: np.random.Generator) -> None:
    a = (1e4 + rng.standard_normal(1000)).astype(np.float32)
    b = (-50 + 0.01 * rng.standard_normal(10)).astype(np.float32)
    empty = pws.describe(np.empty(0, dtype=np.float32))
    both = np.concatenate([a, b])
    assert_summary_matches(pws.describe(a) + pws.describe(b), ref_moments(both))
    assert_summary_matches(empty + pws.describe(a), ref_moments(a))
    assert_summary_matches(pws.describe(a) + empty, ref_moments(a))
    assert (empty + empty).count == 0


def test_merge_does_not_modify_operands(rng: np.random.Generator) -> None:
    a = pws.describe(rng.standard_normal(100).astype(np.float32))
    b = pws.describe(rng.standard_normal(50).astype(np.float32) + 3)
    before = summary_dict(a), summary_dict(b)
    _ = a + b
    assert (summary_dict(a), summary_dict(b)) == before


def test_to_dict_from_dict_round_trip(rng: np.random.Generator) -> None:
    x = rng.standard_normal(1000).astype(np.float32)
    x[3] = np.nan
    s = pws.describe(x)
    d = s.to_dict()
    for name in SUMMARY_FIELDS:
        assert name in d, name
    s2 = pws.Summary.from_dict(d)
    assert summary_dict(s2) == summary_dict(s)
    # the restored state still merges exactly like the original
    y = rng.standard_normal(10).astype(np.float32)
    assert_summary_matches(s2 + pws.describe(y), ref_moments(np.concatenate([x, y])))
    assert pickle.loads(pickle.dumps(d)) == d  # plain data only


# ----------------------------------------------------------------------------------------------
# many tensors at once
# ----------------------------------------------------------------------------------------------
def _tensor_list(rng: np.random.Generator) -> list[torch.Tensor]:
    shapes = [(3,), (64, 32), (0,), (1,), (1000,), (16, 3, 3, 3), (257, 129)]
    out = []
    for i, shape in enumerate(shapes):
        t = torch.from_numpy(rng.standard_normal(shape).astype(np.float32) * (i + 1) + i)
        out.append(t)
    out.append(torch.from_numpy(rng.standard_normal(500)).to(torch.bfloat16))
    out.append(torch.from_numpy(rng.standard_normal((40, 30))).to(torch.float16).T)
    out.append(torch.from_numpy(rng.standard_normal(77)))  # float64
    out.append(torch.full((50,), 2.0))
    return out


def test_describe_many_equals_describe(rng: np.random.Generator) -> None:
    xs = _tensor_list(rng)
    summaries = pws.describe_many(xs)
    assert len(summaries) == len(xs)
    for i, (s, x) in enumerate(zip(summaries, xs, strict=True)):
        assert_summary_matches(s, ref_moments(x), f"tensor {i}")
        assert summary_dict(s).keys() == summary_dict(pws.describe(x)).keys()


def test_describe_many_total(rng: np.random.Generator) -> None:
    xs = _tensor_list(rng)
    summaries, total = pws.describe_many(xs, total=True)
    assert len(summaries) == len(xs)
    everything = np.concatenate([to_float64(x) for x in xs])
    assert_summary_matches(total, ref_moments(everything), "total")
    assert total.count == sum(s.count for s in summaries)


def test_describe_many_empty_list() -> None:
    assert list(pws.describe_many([])) == []
    summaries, total = pws.describe_many([], total=True)
    assert list(summaries) == [] and total.count == 0


def test_describe_many_accepts_model_parameters() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8, 4)
    )
    params = list(model.parameters())
    summaries, total = pws.describe_many(model.parameters(), total=True)  # a generator
    assert len(summaries) == len(params)
    for s, p in zip(summaries, params, strict=True):
        assert_summary_matches(s, ref_moments(p), str(tuple(p.shape)))
    everything = np.concatenate([to_float64(p) for p in params])
    assert_summary_matches(total, ref_moments(everything), "total")


# ----------------------------------------------------------------------------------------------
# more than 2^31 elements
# ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_more_than_2_pow_31_elements() -> None:
    n = 2**31 + 17
    t = torch.ones(n, dtype=torch.float16)  # 4 GiB
    t[-17:] = 2.0
    t[0] = -3.0
    t[1:5] = 0.0
    s = pws.describe(t)
    assert s.count == n
    assert s.min == -3.0 and s.max == 2.0
    assert s.zero_count == 4
    ones = n - 17 - 1 - 4
    total = ones + 2.0 * 17 - 3.0
    assert s.l1 == pytest.approx(ones + 2.0 * 17 + 3.0, rel=1e-12)
    assert s.mean == pytest.approx(total / n, rel=1e-12)
    assert s.l2 == pytest.approx(math.sqrt(ones + 4.0 * 17 + 9.0), rel=1e-12)
    h = pws.histogram(t, bins=5, range=(-3.0, 2.0))
    np.testing.assert_array_equal(h.counts, [1, 0, 0, 4, ones + 17])


def test_fields_from_states_equal_summary_properties() -> None:
    from pyweightstat.stats.summary import FIELDS, fields_from_states

    rng = np.random.default_rng(3)
    xs = [
        rng.normal(size=1000),
        np.array([], dtype=np.float64),
        np.array([np.nan, np.inf, -np.inf]),
        np.array([2.5, 2.5, 2.5]),
        np.array([1.0, -np.inf, 0.0, -0.0]),
        rng.standard_cauchy(77).astype(np.float32),
    ]
    summaries = [pws.describe(x) for x in xs]
    f = np.stack([s._state()[0] for s in summaries])
    n = np.stack([s._state()[1] for s in summaries])
    got = fields_from_states(f.reshape(2, 3, 8), n.reshape(2, 3, 5)).reshape(len(xs), -1)
    want = np.array([[getattr(s, k) for k in FIELDS] for s in summaries], dtype=np.float64)
    np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="states"):
        fields_from_states(f[:, :7], n)
    # random states over many magnitudes: bit-identical to the properties (skew included)
    f = rng.normal(size=(2000, 8))
    f[:, 1] = np.abs(f[:, 1]) * 10.0 ** rng.uniform(-30, 30, 2000)
    f[:, 6:] = np.abs(f[:, 6:])
    n = rng.integers(0, 10**9, size=(2000, 5))
    want = np.array(
        [[getattr(pws.Summary(a, b), k) for k in FIELDS] for a, b in zip(f, n, strict=True)]
    )
    np.testing.assert_array_equal(fields_from_states(f, n), want)
