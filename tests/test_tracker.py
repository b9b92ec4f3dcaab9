"""WeightTracker: records against direct describe() calls and float64 NumPy, persistence,
TensorBoard round trip."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

import pyweightstat
from pyweightstat.stats.reference import ref_log_edges, ref_log_histogram
from pyweightstat.tracker import STAT_FIELDS, TOTAL_NAME, WeightTracker

M = 3  # mantissa bits used throughout


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def _train(model: nn.Module, tracker: WeightTracker, steps: int) -> list[dict[str, np.ndarray]]:
    """SGD steps on random data; returns a float64 snapshot of the weights after each step."""
    gen = torch.Generator().manual_seed(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    snaps = []
    for _ in range(steps):
        x = torch.randn(8, 6, generator=gen)
        y = torch.randint(0, 3, (8,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        tracker.step()
        snaps.append({n: p.detach().double().numpy().copy() for n, p in model.named_parameters()})
    return snaps


def _dense(counts: np.ndarray, first: int) -> np.ndarray:
    """Window counts placed on the full universal grid."""
    full = np.zeros(len(ref_log_edges(M)) - 1, np.int64)
    full[first : first + len(counts)] = counts
    return full


@pytest.fixture
def trained() -> tuple[nn.Module, WeightTracker, list[dict[str, np.ndarray]]]:
    model = _mlp()
    tracker = WeightTracker(model, every=1, mantissa_bits=M)
    snaps = _train(model, tracker, 4)
    return model, tracker, snaps


def test_layout(trained) -> None:
    model, tracker, _ = trained
    traj = tracker.trajectory()
    names = [n for n, _ in model.named_parameters()]
    assert traj["names"] == [*names, TOTAL_NAME]
    assert traj["stat_fields"] == STAT_FIELDS
    assert traj["stats"].shape == (4, len(names) + 1, len(STAT_FIELDS))
    assert traj["stats"].dtype == np.float64
    np.testing.assert_array_equal(traj["steps"], [1, 2, 3, 4])
    for key in ("hist_record", "hist_tensor", "hist_bucket", "hist_count"):
        assert traj[key].dtype == np.int64
    assert np.all(traj["hist_count"] > 0)
    assert traj["mantissa_bits"] == M and traj["every"] == 1


def test_records_match_describe_and_numpy(trained) -> None:
    _, tracker, snaps = trained
    traj = tracker.trajectory()
    col = {f: i for i, f in enumerate(STAT_FIELDS)}
    for rec, snap in enumerate(snaps):
        values = [*snap.values(), np.concatenate([v.ravel() for v in snap.values()])]
        for t, (name, v) in enumerate(zip(tracker.names, values, strict=True)):
            row = traj["stats"][rec, t]
            # the engine on the same float32 values, one tensor at a time
            direct = pyweightstat.describe(torch.from_numpy(v.astype(np.float32)), mantissa_bits=M)
            # the total is a merge of per-tensor states, not a single pass: not bit-identical
            exact = name != TOTAL_NAME
            for f in STAT_FIELDS:
                want = getattr(direct, f)
                if exact or f.endswith("count") or f in ("min", "max", "linf"):
                    assert row[col[f]] == want, (name, f)
                else:
                    scale = abs(want) + (direct.std if f == "mean" else 0.0)
                    assert abs(row[col[f]] - want) <= 1e-6 * scale + 1e-12, (name, f)
            hist = tracker.histogram(name, rec)
            np.testing.assert_array_equal(hist.counts, direct.hist.counts)
            assert hist.first == direct.hist.first
            # float64 NumPy/SciPy reference; the engine accumulates float32 input partly in
            # float32 lanes, so allow a few float32 epsilons relative to the data's scale
            x = v.ravel()
            tol = 1e-6
            assert row[col["count"]] == x.size
            np.testing.assert_allclose(row[col["mean"]], x.mean(), rtol=0, atol=tol * x.std())
            np.testing.assert_allclose(row[col["std"]], x.std(), rtol=tol)
            np.testing.assert_allclose(row[col["var"]], x.var(), rtol=2 * tol)
            np.testing.assert_allclose(row[col["skew"]], scipy.stats.skew(x), atol=10 * tol)
            np.testing.assert_allclose(row[col["kurtosis"]], scipy.stats.kurtosis(x), atol=10 * tol)
            assert row[col["min"]] == x.min() and row[col["max"]] == x.max()
            np.testing.assert_allclose(row[col["l1"]], np.abs(x).sum(), rtol=tol)
            np.testing.assert_allclose(row[col["l2"]], np.sqrt((x * x).sum()), rtol=tol)
            assert row[col["linf"]] == np.abs(x).max()
            assert row[col["zero_count"]] == np.count_nonzero(x == 0)
            ref_counts, *_ = ref_log_histogram(x, M)
            np.testing.assert_array_equal(_dense(hist.counts, hist.first), ref_counts)


def test_total_histogram_is_sum_of_tensors(trained) -> None:
    _, tracker, _ = trained
    total = tracker.histogram(TOTAL_NAME)
    parts = [tracker.histogram(n) for n in tracker.names[:-1]]
    summed = sum(_dense(h.counts, h.first) for h in parts)
    np.testing.assert_array_equal(_dense(total.counts, total.first), summed)


@pytest.mark.parametrize(("every", "initial"), [(1, False), (3, False), (3, True), (4, True)])
def test_every(every: int, initial: bool) -> None:
    model = _mlp()
    tracker = WeightTracker(model, every=every, mantissa_bits=M)
    if initial:
        tracker.record()  # the initial weights, step 0
    taken = []
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(10):
        model(torch.ones(2, 6)).sum().backward()
        opt.step()
        taken.append(tracker.step())
    expected = [s for s in range(1, 11) if s % every == 0]
    assert taken == [s % every == 0 for s in range(1, 11)]
    steps = tracker.trajectory()["steps"].tolist()
    assert steps == ([0] if initial else []) + expected
    assert tracker.num_steps == 10 and tracker.num_records == len(steps)


def test_deferred_conversion_matches_eager() -> None:
    eager_model, lazy_model = _mlp(), _mlp()
    eager = WeightTracker(eager_model, mantissa_bits=M)
    lazy = WeightTracker(lazy_model, mantissa_bits=M, lazy=True, max_pending=3)
    _train(eager_model, eager, 5)
    _train(lazy_model, lazy, 5)
    assert lazy.num_records == 5
    a, b = eager.trajectory(), lazy.trajectory()
    for key, value in a.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(value, b[key])
        else:
            assert value == b[key]


@pytest.mark.parametrize("lazy", [False, True])
def test_hist_every(lazy: bool, tmp_path: Path) -> None:
    # Moments at every record, histograms at records 0, 3, 6 (and where forced), compared with
    # a tracker that keeps everything, on identical models trained identically.
    model_all, model_some = _mlp(), _mlp()
    full = WeightTracker(model_all, mantissa_bits=M)
    some = WeightTracker(model_some, mantissa_bits=M, hist_every=3, lazy=lazy, max_pending=2)
    snaps = _train(model_all, full, 7)
    _train(model_some, some, 7)
    full.record()
    some.record(hist=False)  # record 7: not on the schedule either way
    full.record()
    some.record(hist=True)  # record 8: forced
    full.record()
    some.record(hist=False)  # record 9: on the schedule, skipped
    want = np.array([True, False, False, True, False, False, True, False, True, False])
    a, b = full.trajectory(), some.trajectory()
    np.testing.assert_array_equal(b["has_hist"], want)
    assert a["has_hist"].all() and b["hist_every"] == 3 and a["hist_every"] == 1
    np.testing.assert_array_equal(a["stats"], b["stats"])  # moments of every record, identical
    np.testing.assert_array_equal(some.hist_records, np.flatnonzero(want))
    assert set(b["hist_record"].tolist()) == set(np.flatnonzero(want).tolist())
    np.testing.assert_array_equal(b["hist_flows"][~want], 0)
    for rec in np.flatnonzero(want):
        for name in some.names:
            assert some.histogram(name, int(rec)) == full.histogram(name, int(rec))
    # Against NumPy: record 3 holds the weights after step 4.
    counts, *_ = ref_log_histogram(snaps[3]["0.weight"], M)
    h = some.histogram("0.weight", 3)
    np.testing.assert_array_equal(_dense(np.asarray(h.counts), h.first), counts)
    for rec in (1, 7, 9, -3):
        with pytest.raises(ValueError, match="without histograms"):
            some.histogram("0.weight", rec)
    with pytest.raises(TypeError, match="hist"):
        some.record(hist=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="hist_every"):
        WeightTracker(_mlp(), hist_every=0)
    # The schedule and the gaps survive a save/load round trip.
    loaded = WeightTracker.load(some.save(tmp_path / "some.npz"))
    c = loaded.trajectory()
    for key, value in b.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(value, c[key])
        else:
            assert value == c[key]
    with pytest.raises(ValueError, match="without histograms"):
        loaded.histogram(TOTAL_NAME, 1)


def test_load_format_version_1(trained, tmp_path: Path) -> None:
    # Files written before hist_every existed have histograms at every record.
    _, tracker, _ = trained
    path = tracker.save(tmp_path / "v2.npz")
    with np.load(path) as npz:
        data = {k: npz[k] for k in npz.files if k not in ("has_hist", "hist_every")}
    data["format_version"] = np.int64(1)
    np.savez(tmp_path / "v1.npz", **data)
    loaded = WeightTracker.load(tmp_path / "v1.npz")
    assert loaded.hist_every == 1 and loaded.hist_records.tolist() == [0, 1, 2, 3]
    assert loaded.histogram("0.weight", 1) == tracker.histogram("0.weight", 1)


def test_save_load_round_trip(trained, tmp_path: Path) -> None:
    _, tracker, _ = trained
    path = tracker.save(tmp_path / "run.tracker")  # no suffix added
    assert path == tmp_path / "run.tracker" and path.is_file()
    assert not list(tmp_path.glob("*.tmp"))
    loaded = WeightTracker.load(path)
    a, b = tracker.trajectory(), loaded.trajectory()
    assert a.keys() == b.keys()
    for key, value in a.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(value, b[key])
        else:
            assert value == b[key]
    assert loaded.num_steps == tracker.num_steps and loaded.model is None
    for name in tracker.names:
        h1, h2 = tracker.histogram(name, 2), loaded.histogram(name, 2)
        np.testing.assert_array_equal(h1.counts, h2.counts)
        assert h1.first == h2.first
    np.testing.assert_array_equal(loaded.stat("0.weight", "std"), a["stats"][:, 0, 3])
    with pytest.raises(RuntimeError, match="no model"):
        loaded.record()


def test_load_rejects_other_files(tmp_path: Path) -> None:
    path = tmp_path / "other.npz"
    np.savez(path, format_version=np.int64(99))
    with pytest.raises(ValueError, match="format version"):
        WeightTracker.load(path)


def test_non_finite_weights() -> None:
    model = _mlp()
    with torch.no_grad():
        model[0].weight[0, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
        model[0].bias.zero_()
    tracker = WeightTracker(model, mantissa_bits=M)
    tracker.record()
    col = {f: i for i, f in enumerate(STAT_FIELDS)}
    row = tracker.trajectory()["stats"][0, 0]
    assert row[col["nan_count"]] == 1 and row[col["posinf_count"]] == 1
    assert row[col["neginf_count"]] == 1 and row[col["count"]] == 30 - 3
    hist = tracker.histogram("0.weight", 0)
    assert (hist.nan_count, hist.overflow, hist.underflow) == (1, 1, 1)
    assert int(np.sum(hist.counts)) == 27
    bias = tracker.histogram("0.bias", 0)
    assert tracker.trajectory()["stats"][0, 1, col["zero_count"]] == 5
    assert int(np.sum(bias.counts)) == 5


class _Mixed(nn.Module):
    """Parameters of four dtypes, an empty one, a non-contiguous one and special values."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(9, 7)
        self.b = nn.Linear(7, 4).double()
        self.c = nn.Parameter(torch.randn(5, 6).to(torch.bfloat16))
        self.empty = nn.Parameter(torch.empty(0))
        self.d = nn.Parameter(torch.tensor([0.0, -0.0, 1e-42, -3e38, 2.0**-130, 5.0]))
        self.e = nn.Parameter(torch.randn(4, 3, dtype=torch.float16).t())  # not contiguous


@pytest.mark.parametrize("mantissa_bits", [0, 3, 10])
def test_cpu_records_match_summary_conversion(
    monkeypatch: pytest.MonkeyPatch, mantissa_bits: int
) -> None:
    """The CPU records, built from the engine's raw result without Summary objects, store the
    same columns bit for bit as converting ``describe_many(..., total=True)`` (the former path,
    still taken for non-CPU parameters)."""
    import pyweightstat.tracker as tracker_mod

    made = 0
    host_record = tracker_mod._host_record

    def counted(*args: Any) -> Any:
        nonlocal made
        rec = host_record(*args)
        made += rec is not None
        return rec

    torch.manual_seed(3)
    model = _Mixed()
    fast = WeightTracker(model, mantissa_bits=mantissa_bits, hist_every=2)
    slow = WeightTracker(model, mantissa_bits=mantissa_bits, hist_every=2)
    for step in range(5):
        with torch.no_grad():
            model.a.weight.mul_(1.5).add_(0.01 * step)
            model.b.bias.add_(-0.25)
            if step == 2:
                model.a.weight[0, :4] = torch.tensor([float("nan"), float("inf"), -float("inf"), 0])
                model.c[0, 0] = float("nan")
        with monkeypatch.context() as mp:
            mp.setattr(tracker_mod, "_host_record", counted)
            fast.record()
        with monkeypatch.context() as mp:
            mp.setattr(tracker_mod, "_host_record", lambda *args: None)
            slow.record()
    assert made == 5  # every fast record took the new path
    a, b = fast.trajectory(), slow.trajectory()
    assert a["has_hist"].tolist() == [True, False, True, False, True]
    assert len(a["hist_bucket"]) > 0 and a["hist_flows"].sum() > 0
    for key, value in a.items():
        if isinstance(value, np.ndarray):
            assert value.dtype == b[key].dtype, key
            np.testing.assert_array_equal(value, b[key], err_msg=key)
        else:
            assert value == b[key], key
    # and the total is the merge of the tensors (a float64 reference for its count and mean)
    vals = np.concatenate([p.detach().double().numpy().ravel() for p in model.parameters()])
    finite = vals[np.isfinite(vals)]
    col = {f: i for i, f in enumerate(STAT_FIELDS)}
    total = a["stats"][-1, -1]
    assert total[col["count"]] == len(finite)
    assert total[col["mean"]] == pytest.approx(finite.mean(), rel=1e-12, abs=1e-300)


def test_stat_fields_match_engine() -> None:
    assert STAT_FIELDS == tuple(pyweightstat.FIELDS)


def test_tensorboard_round_trip(trained, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    _, tracker, _ = trained
    with SummaryWriter(log_dir=str(tmp_path)) as writer:
        written = tracker.to_tensorboard(writer, tag_prefix="w")
    assert written == tracker.num_records * len(tracker.names)
    acc = EventAccumulator(str(tmp_path), size_guidance={"histograms": 0})
    acc.Reload()
    assert sorted(acc.Tags()["histograms"]) == sorted(f"w/{n}" for n in tracker.names)
    traj = tracker.trajectory()
    col = {f: i for i, f in enumerate(STAT_FIELDS)}
    edges = ref_log_edges(M)
    for t, name in enumerate(tracker.names):
        events = acc.Histograms(f"w/{name}")
        assert [e.step for e in events] == traj["steps"].tolist()
        for rec, event in enumerate(events):
            value = event.histogram_value
            ours = tracker.histogram(name, rec)
            counts = np.asarray(ours.counts)
            np.testing.assert_array_equal(np.asarray(value.bucket), counts)
            assert sum(value.bucket) == value.num == counts.sum() == traj["stats"][rec, t, 0]
            limits = np.asarray(value.bucket_limit)
            np.testing.assert_array_equal(
                limits, edges[ours.first + 1 : ours.first + 1 + len(counts)]
            )
            assert value.min == traj["stats"][rec, t, col["min"]]
            assert value.max == traj["stats"][rec, t, col["max"]]
            assert edges[ours.first] <= value.min and value.max <= limits[-1]


def test_tensorboard_log_dir(trained, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, tracker, _ = trained
    assert tracker.to_tensorboard(tmp_path / "tb") == 4 * len(tracker.names)
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"histograms": 0})
    acc.Reload()
    assert len(acc.Histograms(f"weights/{TOTAL_NAME}")) == 4
    with pytest.raises(TypeError, match="writer"):
        tracker.to_tensorboard(object())


def test_tensorboard_skips_records_without_histograms(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = _mlp()
    tracker = WeightTracker(model, mantissa_bits=M, hist_every=2)
    _train(model, tracker, 5)  # histograms at records 0, 2, 4 = steps 1, 3, 5
    assert tracker.to_tensorboard(tmp_path / "tb") == 3 * len(tracker.names)
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"histograms": 0})
    acc.Reload()
    assert [e.step for e in acc.Histograms(f"weights/{TOTAL_NAME}")] == [1, 3, 5]


def test_tensorboard_missing(trained, monkeypatch: pytest.MonkeyPatch) -> None:
    _, tracker, _ = trained
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # makes `import tensorboard` fail
    with pytest.raises(ImportError, match="pip install tensorboard"):
        tracker.to_tensorboard("unused")


def test_parameter_change_detected() -> None:
    model = _mlp()
    tracker = WeightTracker(model, mantissa_bits=M)
    model.extra = nn.Linear(2, 2)
    with pytest.raises(RuntimeError, match="parameters changed"):
        tracker.record()


def test_records_follow_replaced_parameters_and_modules() -> None:
    """The CPU tracker skips the walk of named_parameters() while no module or parameter slot
    changed; every kind of change is still seen at the next record."""
    model = _mlp()
    tracker = WeightTracker(model, mantissa_bits=M)
    col = STAT_FIELDS.index("mean")

    def recorded_mean(i: int) -> float:
        return float(tracker.trajectory()["stats"][-1, i, col])

    def current_mean(p: torch.Tensor) -> float:
        return float(p.detach().double().mean())

    tracker.record()
    tracker.record()  # from the snapshot
    assert recorded_mean(0) == pytest.approx(current_mean(model[0].weight), rel=1e-12)
    model[0].weight = nn.Parameter(torch.full_like(model[0].weight, 3.0))  # a new object
    tracker.record()
    assert recorded_mean(0) == 3.0
    model[2] = nn.Linear(model[2].in_features, model[2].out_features)  # a new submodule
    with torch.no_grad():
        model[2].bias.fill_(-2.0)
    tracker.record()
    assert recorded_mean(3) == -2.0
    with torch.no_grad():
        model[0].bias.data = torch.full_like(model[0].bias, 0.5)  # same object, new storage
    tracker.record()
    assert recorded_mean(1) == 0.5
    model[0].register_parameter("extra", nn.Parameter(torch.zeros(2)))
    with pytest.raises(RuntimeError, match="parameters changed"):
        tracker.record()

    class Reversed(
        nn.Sequential
    ):  # lists its parameters its own way: no snapshot, a walk each time
        def named_parameters(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
            return reversed(list(super().named_parameters(*args, **kwargs)))

    odd = Reversed(nn.Linear(3, 2))
    odd_tracker = WeightTracker(odd, mantissa_bits=M)
    odd_tracker.record()
    assert odd_tracker._params_snapshot is None
    assert odd_tracker.names[:2] == ["0.bias", "0.weight"]
    assert odd_tracker.trajectory()["stats"][0, 0, STAT_FIELDS.index("count")] == 2


def test_argument_errors(trained) -> None:
    _, tracker, _ = trained
    with pytest.raises(TypeError, match="model"):
        WeightTracker("model")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="every"):
        WeightTracker(_mlp(), every=0)
    with pytest.raises(TypeError, match="every"):
        WeightTracker(_mlp(), every=2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mantissa_bits"):
        WeightTracker(_mlp(), mantissa_bits=11)
    with pytest.raises(ValueError, match="no parameters"):
        WeightTracker(nn.ReLU())
    with pytest.raises(KeyError, match="unknown tensor"):
        tracker.histogram("nope")
    with pytest.raises(IndexError, match="out of range"):
        tracker.histogram("0.weight", 4)
    with pytest.raises(ValueError, match="field"):
        tracker.stat("0.weight", "median")


@pytest.mark.cuda
@pytest.mark.skipif(
    not (torch.cuda.is_available() and pyweightstat.build_info()["cuda"]),
    reason="needs a CUDA GPU and a CUDA build of the engine",
)
def test_cuda_records_without_sync() -> None:
    model = _mlp().cuda()
    tracker = WeightTracker(model, mantissa_bits=M, max_pending=1000)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(8, 6, device="cuda")
    try:
        with warnings.catch_warnings():  # torch warns that the debug mode is a prototype
            warnings.simplefilter("ignore", UserWarning)
            torch.cuda.set_sync_debug_mode("error")  # any synchronising torch call raises
        for _ in range(40):  # background conversions (batches of 16) run during the loop
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
            tracker.step()
        assert tracker._steps.n + sum(len(j.records) for _, j in tracker._jobs) >= 16
    finally:
        torch.cuda.set_sync_debug_mode("default")
    snaps = {n: p.detach().double().cpu().numpy() for n, p in model.named_parameters()}
    traj = tracker.trajectory()
    assert traj["steps"].tolist() == list(range(1, 41))
    stats = traj["stats"]
    for t, v in enumerate(snaps.values()):
        # the SPEC bound for the mean (float32 partial sums on the GPU): 1e-6 standard deviations
        assert abs(stats[-1, t, 1] - v.mean()) <= 1e-6 * v.std()
        assert stats[-1, t, 6] == v.min() and stats[-1, t, 7] == v.max()


@pytest.mark.cuda
@pytest.mark.skipif(
    not (torch.cuda.is_available() and pyweightstat.build_info()["cuda"]),
    reason="needs a CUDA GPU and a CUDA build of the engine",
)
def test_background_conversion_during_a_graph_capture(monkeypatch: pytest.MonkeyPatch) -> None:
    # The tracker's thread converts a batch (fetch_many: event and stream synchronisations,
    # pinned copies) while the training thread captures a CUDA graph in the default global
    # mode: neither the capture nor the conversion may fail.
    import threading

    from pyweightstat import tracker as tr_mod

    model = _mlp().cuda()
    tracker = WeightTracker(model, mantissa_bits=M, max_pending=1000)
    for _ in range(tr_mod._CONVERT_LAG + 1):
        tracker.record()
    inside, release = threading.Event(), threading.Event()
    real = WeightTracker._convert_raw

    def gated(run: list) -> tuple:
        inside.set()
        assert release.wait(30)
        return real(run)

    monkeypatch.setattr(WeightTracker, "_convert_raw", staticmethod(gated))
    assert tracker._submit_oldest(1)
    assert inside.wait(30)
    x = torch.randn(4096, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        y = x * 2  # warm-up outside the capture, as torch recommends
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):  # capture_error_mode="global"
        release.set()
        assert tracker._jobs[0][0].exception(timeout=60) is None  # converted during the capture
        y = x * 2
    x.add_(1.0)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(y, x * 2)
    snaps = {n: p.detach().double().cpu().numpy() for n, p in model.named_parameters()}
    traj = tracker.trajectory()
    assert traj["steps"].tolist() == [0] * (tr_mod._CONVERT_LAG + 1)
    for t, v in enumerate(snaps.values()):  # every record: the same, untouched weights
        assert np.all(traj["stats"][:, t, 6] == v.min())
        assert np.all(traj["stats"][:, t, 7] == v.max())


def test_pending_runs_convert_in_order_by_kind_and_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    # Device records of two plans (e.g. before and after model.to(...)) and host records may be
    # pending together: each run converts on its own, in order, and leaves the queue only once
    # it is converted.
    from pyweightstat import tracker as tr_mod

    model = _mlp()
    tracker = WeightTracker(model, mantissa_bits=M, lazy=True, max_pending=100)
    tracker.record()  # a host record (list of Summaries)
    width = len(tracker.names)
    stats_row = tracker._pending[0][1]
    # plan B: a moments-only plan (hist_every > 1)
    plan_a, plan_b = SimpleNamespace(mantissa_bits=M), SimpleNamespace(mantissa_bits=None)
    calls: list[list[int]] = []

    def fake_convert_raw(run: list) -> tuple:
        calls.append([step for step, _ in run])
        assert len({id(rec.plan) for _, rec in run}) == 1
        r = len(run)
        return (
            np.full((r, width, len(STAT_FIELDS)), float(run[0][0])),
            np.zeros((r, width), np.int64),
            np.empty(0, np.int64),
            np.empty(0, np.int64),
            np.zeros((r, width, 3), np.int64),
        )

    monkeypatch.setattr(WeightTracker, "_convert_raw", staticmethod(fake_convert_raw))
    for step, plan in ((1, plan_a), (2, plan_a), (3, plan_b)):
        tracker._pending.append((step, tr_mod._RawRecord(plan, None)))
    tracker._pending.append((4, stats_row))
    tracker._convert_oldest(3)  # the host record, then plan A's two records
    assert calls == [[1, 2]] and [s for s, _ in tracker._pending] == [3, 4]
    assert tracker._steps.values.tolist() == [0, 1, 2]

    def failing(run: list) -> tuple:
        raise RuntimeError("copy failed")

    monkeypatch.setattr(WeightTracker, "_convert_raw", staticmethod(failing))
    with pytest.raises(RuntimeError, match="copy failed"):
        tracker._convert_oldest(2)
    assert [s for s, _ in tracker._pending] == [3, 4]  # nothing lost
    monkeypatch.setattr(WeightTracker, "_convert_raw", staticmethod(fake_convert_raw))
    traj = tracker.trajectory()
    assert traj["steps"].tolist() == [0, 1, 2, 3, 4]
    assert traj["has_hist"].tolist() == [True, True, True, False, True]
    assert calls == [[1, 2], [3]]


def test_column_defers_copies_and_computation() -> None:
    from pyweightstat.tracker import _Column

    col = _Column(np.float64, (2,))
    calls = []

    def block() -> np.ndarray:
        calls.append(1)
        return np.full((3, 2), 7.0)

    col.extend(np.zeros((1, 2)))
    col.extend(block, 3)
    assert col.n == 4 and not calls  # the function is called on the first read
    for i in range(40):  # grows past the initial buffer
        col.extend(np.full((1, 2), float(i)))
    np.testing.assert_array_equal(col.values[1:4], 7.0)
    np.testing.assert_array_equal(col.values[4:, 0], np.arange(40.0))
    assert calls == [1] and col.n == len(col.values) == 44

    def failing() -> np.ndarray:
        raise RuntimeError("bad block")

    # Blocks pending before a failing one are stored once, whatever happens after it.
    col.extend(lambda: np.full((1, 2), -1.0), 1)
    col.extend(np.full((1, 2), -2.0))  # waits behind the pending function
    col.extend(failing, 1)
    col.extend(np.full((1, 2), -3.0))
    with pytest.raises(RuntimeError, match="bad block"):
        _ = col.values
    col._pending[0] = (lambda: np.full((1, 2), -4.0), 1)  # the failing block, fixed
    np.testing.assert_array_equal(col.values[44:, 0], [-1.0, -2.0, -4.0, -3.0])
    assert col.n == len(col.values) == 48
    with pytest.raises(ValueError, match="number of rows"):
        col.extend(failing)
    with pytest.raises(ValueError, match="shape"):
        col.extend(np.zeros((1, 3)))


class _FakeCudaParam:
    """A CPU tensor that reports a CUDA (or other) device: drives the tracker's plan logic."""

    def __init__(self, t: torch.Tensor) -> None:
        self.t, self.device = t, SimpleNamespace(type="cuda")

    def data_ptr(self) -> int:
        return self.t.data_ptr()

    def detach(self) -> torch.Tensor:
        return self.t.detach()


class _FakeCudaModel(nn.Module):
    def __init__(self, tensors: list[torch.Tensor]) -> None:
        super().__init__()
        self.fake = {f"p{i}": _FakeCudaParam(t) for i, t in enumerate(tensors)}

    def named_parameters(self, *args: Any, **kwargs: Any) -> Iterator[tuple[str, Any]]:
        return iter(list(self.fake.items()))


@pytest.mark.parametrize("background", [True, False])
def test_plan_logic_simulated_on_cpu(monkeypatch: pytest.MonkeyPatch, background: bool) -> None:
    # The CUDA plan path with a stand-in Plan (launch = a snapshot) and fetch_many (the CPU
    # engine on it): two plan kinds (hist_every=2), a storage move, and a trip to the CPU and
    # back, against a CPU tracker on identical values.
    from pyweightstat import describe_many
    from pyweightstat import tracker as tr_mod
    from pyweightstat.stats import _cuda

    built: list[Any] = []

    class FakePlan:
        def __init__(self, tensors: list[Any], mbits: int | None, names: Any = None) -> None:
            if any(t.device.type != "cuda" for t in tensors):
                raise ValueError("a Plan needs CUDA tensors")
            self.mantissa_bits, self.tensors = mbits, [t.t for t in tensors]
            self.ptrs = [t.data_ptr() for t in tensors]
            # Half the conversion budget: records convert two at a time, inside the loop below.
            self.result_bytes = tr_mod._CONVERT_BATCH_BYTES // 2
            built.append(self)

        def matches(self, tensors: list[Any]) -> bool:
            return [t.data_ptr() for t in tensors] == self.ptrs

        def launch(self) -> Any:
            return self, [t.clone() for t in self.tensors]

    def fake_fetch_many(results: list[Any]) -> tuple[np.ndarray, ...]:
        f, n, nnz, buckets, counts, flows = [], [], [], [], [], []
        for plan, values in results:
            summaries, total = describe_many(values, total=True, mantissa_bits=plan.mantissa_bits)
            for s in [*summaries, total]:
                sf, sn = s._state()
                f.append(sf)
                n.append(sn)
                h = s.hist
                c = np.zeros(0, np.int64) if h is None else np.asarray(h.counts)
                idx = np.flatnonzero(c)
                nnz.append(len(idx))
                buckets.append(idx + (0 if h is None else h.first))
                counts.append(c[idx])
                flows.append([0, 0, 0] if h is None else [h.underflow, h.overflow, h.nan_count])
        r = len(results)
        return (
            np.array(f).reshape(r, -1, 8),
            np.array(n).reshape(r, -1, 5),
            np.array(nnz).reshape(r, -1),
            np.concatenate(buckets).astype(np.int64),
            np.concatenate(counts).astype(np.int64),
            np.array(flows, np.int64).reshape(r, -1, 3),
        )

    monkeypatch.setattr(_cuda, "Plan", FakePlan)
    monkeypatch.setattr(_cuda, "fetch_many", fake_fetch_many)
    gen = torch.Generator().manual_seed(5)
    tensors = [torch.randn(40, generator=gen), torch.randn(7, generator=gen)]
    fake = _FakeCudaModel(tensors)
    plain = nn.Module()
    for i, t in enumerate(tensors):
        plain.register_parameter(f"p{i}", nn.Parameter(t.clone()))
    tg = WeightTracker(fake, mantissa_bits=M, hist_every=2, max_pending=100, background=background)
    tc = WeightTracker(plain, mantissa_bits=M, hist_every=2)
    for step in range(10):
        for t, p in zip(tensors, plain.parameters(), strict=True):
            t.mul_(1.1)
            p.data.mul_(1.1)
        if step == 3:  # storage moves: both plans are rebuilt
            fake.fake["p0"].t = fake.fake["p0"].t.clone()
            tensors[0] = fake.fake["p0"].t
        if step in (4, 5):  # to the CPU for one record (general path) and back: new storage
            for i, p in enumerate(fake.fake.values()):
                p.device = SimpleNamespace(type="cpu" if step == 4 else "cuda")
                p.t = tensors[i] = p.t.clone()
        tg.step()
        tc.step()
        if step == 4:  # a host record on the CPU converts everything pending at once
            assert not tg._pending and not tg._plans
        else:
            assert type(tg._pending[-1][1]).__name__ == "_RawRecord", step
            # batches of 2 once 3 newer records exist: 3 or 4 records stay pending
            assert len(tg._pending) <= tr_mod._CONVERT_LAG + 1, step
    assert not tg._plan_failed and set(tg._plans) == {True, False}
    # Records 0, 1: both kinds; 3 (storage moved): moments only; 4 (log due) on the CPU, where
    # the stale moments plan must not lead to a log plan over CPU tensors; 5, 6: both again.
    assert [p.mantissa_bits for p in built] == [M, None, None, None, M]
    a, b = tc.trajectory(), tg.trajectory()
    for key, value in a.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(value, b[key], err_msg=key)
        else:
            assert value == b[key], key


def test_column_computes_runs_of_deferred_partials_in_one_call() -> None:
    from functools import partial

    from pyweightstat.tracker import _Column

    calls: list[int] = []

    def rowwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        calls.append(len(a))
        return np.stack([a + b, a * b], axis=-1)

    col = _Column(np.float64, (2,))
    for i in range(5):
        col.extend(partial(rowwise, np.array([float(i)]), np.array([2.0])), 1)
    col.extend(np.array([[-1.0, -1.0]]))  # an array ends the run
    col.extend(partial(rowwise, np.array([9.0]), np.array([3.0])), 1)
    np.testing.assert_array_equal(col.values[:5], [[i + 2.0, 2.0 * i] for i in range(5)])
    np.testing.assert_array_equal(col.values[5:], [[-1.0, -1.0], [12.0, 27.0]])
    assert calls == [5, 1]  # the five consecutive records in one call


def test_study_compact_trajectory_keeps_the_schedule() -> None:
    # The study stores every statistic but only the whole network's histograms, and keeps which
    # records have them.
    from pyweightstat.study.runner import _compact_trajectory

    model = _mlp()
    tracker = WeightTracker(model, mantissa_bits=M, hist_every=2)
    _train(model, tracker, 5)
    traj = tracker.trajectory()
    out = _compact_trajectory(traj)
    assert out["hist_every"] == 2 and out["has_hist"].tolist() == [True, False, True, False, True]
    np.testing.assert_array_equal(out["stats"], traj["stats"])
    total = len(traj["names"]) - 1
    keep = traj["hist_tensor"] == total
    np.testing.assert_array_equal(out["hist_record"], traj["hist_record"][keep])
    np.testing.assert_array_equal(out["hist_count"], traj["hist_count"][keep])
    np.testing.assert_array_equal(out["hist_flows"], traj["hist_flows"][:, total])
    assert set(out["hist_record"].tolist()) == {0, 2, 4} and "hist_tensor" not in out


def test_convert_batch_follows_the_device_memory_budget() -> None:
    from types import SimpleNamespace

    from pyweightstat import tracker as tr_mod

    budget, most = tr_mod._CONVERT_BATCH_BYTES, tr_mod._CONVERT_BATCH
    for nbytes, want in [
        (0, most),
        (1000, most),
        (budget // (most + 5), most),
        (budget // 5, 5),
        (budget // 2, 2),
        (budget, 1),
        (10 * budget, 1),
    ]:
        assert tr_mod._convert_batch(SimpleNamespace(result_bytes=nbytes)) == want, nbytes


def _raw_conversion_stub(width: int, calls: list[list[int]], fail_at: set[int], gate: Any = None):
    """A stand-in for WeightTracker._convert_raw: rows filled with the step; raises for the
    steps in ``fail_at``; waits for ``gate`` (a threading.Event) if given."""

    def convert(run: list) -> tuple:
        if gate is not None:
            assert gate.wait(30)
        steps = [step for step, _ in run]
        if fail_at & set(steps):
            raise RuntimeError(f"copy failed at {sorted(fail_at & set(steps))}")
        calls.append(steps)
        r = len(run)
        return (
            np.repeat(np.array(steps, float), width * len(STAT_FIELDS)).reshape(r, width, -1),
            np.zeros((r, width), np.int64),
            np.empty(0, np.int64),
            np.empty(0, np.int64),
            np.zeros((r, width, 3), np.int64),
        )

    return convert


def test_background_failure_keeps_every_record_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    # A batch that fails on the background thread: the error is raised by the next read, what
    # it and the later batches did not store goes back in front of the pending records, and a
    # later read converts them all, in step order.
    from pyweightstat import tracker as tr_mod

    tracker = WeightTracker(_mlp(), mantissa_bits=M, max_pending=100)
    width = len(tracker.names)
    calls: list[list[int]] = []
    plan_a, plan_b = SimpleNamespace(mantissa_bits=M), SimpleNamespace(mantissa_bits=M)
    stub = _raw_conversion_stub(width, calls, fail_at={4})
    monkeypatch.setattr(WeightTracker, "_convert_raw", staticmethod(stub))
    records = [(s, tr_mod._RawRecord(plan_a if s < 4 else plan_b, None)) for s in range(1, 8)]
    tracker._pending.extend(records[:6])
    assert tracker._submit_oldest(2)  # stored
    assert tracker._submit_oldest(3)  # plan A's step 3 stored, plan B's 4 fails (and 5 with it)
    assert tracker._submit_oldest(1)  # after the failure: must not be stored before 4 and 5
    with pytest.raises(RuntimeError, match=r"copy failed at \[4\]"):
        tracker.stat(TOTAL_NAME, "mean")
    assert [s for s, _ in tracker._pending] == [4, 5, 6]
    assert tracker._steps.values.tolist() == [1, 2, 3]
    stub = _raw_conversion_stub(width, calls, fail_at=set())
    monkeypatch.setattr(WeightTracker, "_convert_raw", staticmethod(stub))
    tracker._pending.extend(records[6:])
    traj = tracker.trajectory()
    assert traj["steps"].tolist() == [1, 2, 3, 4, 5, 6, 7]
    assert traj["stats"][:, 0, 0].tolist() == [1, 2, 3, 4, 5, 6, 7]
    assert calls == [[1, 2], [3], [4, 5, 6, 7]]


def test_background_batches_are_bounded_and_ordered(monkeypatch: pytest.MonkeyPatch) -> None:
    # At most _MAX_JOBS batches are outstanding: the next submission waits for the oldest.
    import threading

    from pyweightstat import tracker as tr_mod

    tracker = WeightTracker(_mlp(), mantissa_bits=M, max_pending=100)
    width = len(tracker.names)
    calls: list[list[int]] = []
    gate = threading.Event()
    stub = _raw_conversion_stub(width, calls, fail_at=set(), gate=gate)
    monkeypatch.setattr(WeightTracker, "_convert_raw", staticmethod(stub))
    plan = SimpleNamespace(mantissa_bits=M)
    batches = [[(s, tr_mod._RawRecord(plan, None))] for s in range(1, tr_mod._MAX_JOBS + 2)]
    for batch in batches:
        tracker._pending.extend(batch)
    for _ in batches[:-1]:
        assert tracker._submit_oldest(1)  # returns at once: the thread waits at the gate
    assert len(tracker._jobs) == tr_mod._MAX_JOBS and not calls
    submitted = threading.Event()
    extra = threading.Thread(target=lambda: (tracker._submit_oldest(1), submitted.set()))
    extra.start()
    assert not submitted.wait(0.3)  # blocked behind the oldest batch
    gate.set()
    assert submitted.wait(30)
    extra.join()
    jobs = [job for _, job in tracker._jobs]
    tracker._drain()
    assert jobs and not any(job.records for job in jobs)  # stored runs (and results) released
    traj = tracker.trajectory()
    assert calls == [[s] for s in range(1, tr_mod._MAX_JOBS + 2)]
    assert traj["steps"].tolist() == list(range(1, tr_mod._MAX_JOBS + 2))


def test_drain_interrupted_while_waiting_forgets_no_batch() -> None:
    # An interrupt (Ctrl-C) while _drain waits leaves every batch known to the tracker.
    tracker = WeightTracker(_mlp(), mantissa_bits=M, max_pending=100)

    class Interrupted:
        def exception(self, timeout: float | None = None) -> None:
            raise KeyboardInterrupt

    jobs = [(Interrupted(), SimpleNamespace(records=[(1, None)]))]
    tracker._jobs = list(jobs)
    with pytest.raises(KeyboardInterrupt):
        tracker._drain()
    assert tracker._jobs == jobs
    tracker._jobs = []


def test_refused_background_batch_is_converted_on_the_training_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # After the interpreter began shutting down, concurrent.futures refuses new work: record()
    # then converts the batch itself instead of failing.
    import os

    from pyweightstat import tracker as tr_mod

    tracker = WeightTracker(_mlp(), mantissa_bits=M, max_pending=100)
    width = len(tracker.names)
    calls: list[list[int]] = []
    stub = _raw_conversion_stub(width, calls, fail_at=set())
    monkeypatch.setattr(WeightTracker, "_convert_raw", staticmethod(stub))

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    tracker._executor, tracker._executor_pid = SimpleNamespace(submit=refuse), os.getpid()
    plan = SimpleNamespace(mantissa_bits=M)
    tracker._pending.extend((s, tr_mod._RawRecord(plan, None)) for s in (1, 2, 3))
    assert not tracker._submit_oldest(2)
    assert [s for s, _ in tracker._pending] == [1, 2, 3] and not tracker._jobs
    tracker._executor = None
    assert tracker.trajectory()["steps"].tolist() == [1, 2, 3]


def test_store_checks_a_run_before_changing_any_column() -> None:
    from pyweightstat import tracker as tr_mod

    tracker = WeightTracker(_mlp(), mantissa_bits=M)
    tracker.record()
    width = len(tracker.names)
    before = {k: v for k, v in tracker.trajectory().items() if isinstance(v, np.ndarray)}
    bad = (
        np.zeros((1, width, len(STAT_FIELDS))),
        np.ones((1, width), np.int64),  # says one bucket per histogram ...
        np.zeros(3, np.int64),  # ... but three buckets in all
        np.zeros(3, np.int64),
        np.zeros((1, width, 3), np.int64),
    )
    with pytest.raises(ValueError, match="inconsistent"):
        tracker._store([(7, tr_mod._RawRecord(SimpleNamespace(mantissa_bits=M), None))], bad)
    after = tracker.trajectory()
    for key, value in before.items():
        np.testing.assert_array_equal(after[key], value, err_msg=key)


@pytest.mark.skipif(sys.platform != "linux", reason="fork")
def test_forked_child_gets_back_the_batches_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    # A child forked while a batch is on the tracker's thread has no such thread: its reads must
    # not wait forever, and the batch's records are converted there.
    import os
    import threading
    import time

    from pyweightstat import tracker as tr_mod

    tracker = WeightTracker(_mlp(), mantissa_bits=M, max_pending=100)
    width = len(tracker.names)
    gate = threading.Event()
    calls: list[list[int]] = []
    stub = _raw_conversion_stub(width, calls, fail_at=set(), gate=gate)
    monkeypatch.setattr(WeightTracker, "_convert_raw", staticmethod(stub))
    plan = SimpleNamespace(mantissa_bits=M)
    tracker._pending.extend((s, tr_mod._RawRecord(plan, None)) for s in (1, 2, 3))
    assert tracker._submit_oldest(2)
    with warnings.catch_warnings():  # Python 3.12 warns about fork() in a threaded process
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: the gate is set at once (no thread of the parent waits on it)
        code = 1
        try:
            gate.set()
            code = 0 if tracker.trajectory()["steps"].tolist() == [1, 2, 3] else 2
        finally:
            os._exit(code)
    try:
        deadline = time.monotonic() + 60
        while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        if done[0] == 0:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child waited for a thread it does not have")
        assert os.waitstatus_to_exitcode(done[1]) == 0
    finally:
        gate.set()
    assert tracker.trajectory()["steps"].tolist() == [1, 2, 3]


def test_plan_takes_the_stream_handle_from_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    # Plan.launch asks torch for the current stream's handle at every record: through the private
    # raw getter where torch has it (no torch.cuda.Stream object per record), else through the
    # public torch.cuda.current_stream.
    from pyweightstat.stats import _cuda

    asked: list[int] = []

    def raw(index: int) -> int:
        asked.append(index)
        return 1000 + index

    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", raw, raising=False)
    get = _cuda._current_stream_getter(3)
    assert get() == 1003 and get() == 1003 and asked == [3, 3]
    monkeypatch.delattr(torch._C, "_cuda_getCurrentRawStream")
    seen: list[torch.device] = []

    def current_stream(device: torch.device) -> SimpleNamespace:
        seen.append(device)
        return SimpleNamespace(cuda_stream=77)

    monkeypatch.setattr(torch.cuda, "current_stream", current_stream)
    assert _cuda._current_stream_getter(1)() == 77 and seen == [torch.device("cuda", 1)]
