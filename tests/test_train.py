"""Training loop: config validation, determinism, divergence, metrics, tracker wiring."""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pyweightstat.train import DEFAULT_LR, TrainConfig, TrainResult, evaluate, train

DATA = os.environ.get("PYWEIGHTSTAT_DATA")
pytestmark = pytest.mark.skipif(
    not DATA or not Path(DATA, "mnist").is_dir(),
    reason="set PYWEIGHTSTAT_DATA to the shared data directory",
)

TINY = {"train_size": 512, "test_size": 256, "batch_size": 64, "epochs": 2}


@pytest.fixture(scope="module")
def tiny():
    from pyweightstat.data import load_dataset

    return load_dataset("mnist", train_size=512, test_size=256)


def test_config_defaults_and_round_trip():
    cfg = TrainConfig()
    assert cfg.effective_lr == DEFAULT_LR["sgd"] == 0.01
    adam = TrainConfig.from_dict({"optimizer": "adam", "lr_mult": 10.0})
    assert adam.effective_lr == pytest.approx(1e-2)
    assert TrainConfig(lr=0.5, lr_mult=0.1).effective_lr == pytest.approx(0.05)
    again = TrainConfig.from_dict(adam.to_dict())
    assert again == adam


@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        ({"epochz": 3}, ValueError, r"unknown TrainConfig key\(s\) \['epochz'\]"),
        ({"optimizer": "rmsprop"}, ValueError, "optimizer"),
        ({"family": "rnn"}, ValueError, "family"),
        ({"dataset": "svhn"}, ValueError, "dataset"),
        ({"init": "orthogonal"}, ValueError, "init"),
        ({"lr": -0.1}, ValueError, "lr"),
        ({"lr": float("nan")}, ValueError, "lr"),
        ({"lr_mult": 0}, ValueError, "lr_mult"),
        ({"epochs": 0}, ValueError, "epochs"),
        ({"batch_size": 1.5}, TypeError, "batch_size"),
        ({"seed": True}, TypeError, "seed"),
        ({"track_every": -1}, ValueError, "track_every"),
        ({"track_mantissa_bits": 11}, ValueError, "track_mantissa_bits"),
        ({"train_size": 0}, ValueError, "train_size"),
        ({"model": [1, 2]}, TypeError, "model"),
        ({"family": "cnn", "model": {"width": 3}}, ValueError, r"unknown option\(s\) \['width'\]"),
        ({"device": "gpu0"}, ValueError, "device"),
    ],
)
def test_config_rejects_bad_values(changes, error, match):
    with pytest.raises(error, match=match):
        TrainConfig.from_dict(changes)


def _cfg(**kw):
    base = {"dataset": "mnist", "family": "dnn", "model": {"width": 32, "depth": 1}, **TINY}
    base.update(kw)
    return TrainConfig.from_dict(base)


@pytest.mark.parametrize(
    ("family", "model", "optimizer"),
    [
        ("dnn", {"width": 32, "depth": 1}, "sgd"),
        ("cnn", {"blocks": 1, "channels": 4}, "adam"),
        ("vit", {"dim": 16, "depth": 1, "heads": 2, "patch_size": 7}, "adam"),
    ],
)
def test_same_seed_same_weights(tiny, family, model, optimizer):
    cfg = _cfg(family=family, model=model, optimizer=optimizer, init="kaiming")
    a, b = train(cfg, data=tiny), train(cfg, data=tiny)
    c = train(dataclasses.replace(cfg, seed=1), data=tiny)
    assert a.status == b.status == "done"
    assert a.state_dict.keys() == b.state_dict.keys()
    for k in a.state_dict:
        assert torch.equal(a.state_dict[k], b.state_dict[k]), k
    assert any(not torch.equal(a.state_dict[k], c.state_dict[k]) for k in a.state_dict)
    assert a.history == b.history


def test_result_fields_and_learning(tiny):
    seen = []
    cfg = _cfg(optimizer="adam", epochs=3)
    rng_before = torch.get_rng_state()
    r = train(cfg, data=tiny, on_epoch=lambda e, m: seen.append((e, m)))
    assert torch.equal(torch.get_rng_state(), rng_before)  # caller's RNG untouched
    assert isinstance(r, TrainResult) and r.status == "done"
    assert [h["epoch"] for h in r.history] == [1, 2, 3] and [e for e, _ in seen] == [1, 2, 3]
    assert set(r.history[0]) == {"epoch", "train_loss", "train_acc", "test_loss", "test_acc"}
    assert r.test_acc == r.history[-1]["test_acc"] and 0.0 <= r.test_acc <= 1.0
    assert r.history[-1]["train_loss"] < r.history[0]["train_loss"]
    assert r.test_acc > 0.6  # 512 MNIST samples, 3 epochs: far above chance (0.1)
    assert r.steps == 3 * math.ceil(512 / 64)
    assert r.n_params == 784 * 32 + 32 + 32 * 10 + 10
    assert all(t.device.type == "cpu" and not t.requires_grad for t in r.state_dict.values())
    assert r.samples_per_s > 0 and r.wall_s > 0 and r.config == cfg.to_dict()
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))
    model.load_state_dict({k.replace("net.", ""): v for k, v in r.state_dict.items()})
    _, acc = evaluate(model, tiny.test_x, tiny.test_y)
    assert acc == r.test_acc


def test_loads_data_itself_when_not_given():
    r = train(_cfg(epochs=1, train_size=128, test_size=64), progress=True)
    assert r.status == "done" and r.steps == 2


def test_huge_learning_rate_diverges_without_exception(tiny):
    r = train(_cfg(lr=1e6), data=tiny)
    assert r.status == "diverged"
    assert math.isnan(r.train_loss) and 0.0 <= r.test_acc <= 1.0
    assert r.steps < 2 * math.ceil(512 / 64)
    assert len(r.history) == 1


def test_nan_in_the_data_diverges_at_that_step(tiny):
    poisoned = dataclasses.replace(tiny, train_x=tiny.train_x.clone())
    poisoned.train_x[:] = float("nan")
    r = train(_cfg(), data=poisoned)
    assert r.status == "diverged" and r.steps == 0
    # the untouched initial weights are evaluated on the clean test set
    assert math.isfinite(r.test_loss) and 0.0 <= r.test_acc <= 1.0


def test_evaluate_counts_non_finite_logits_as_wrong():
    class Fixed(nn.Module):
        """Logits one-hot on column 0; rows flagged in column 1 get a NaN logit."""

        def forward(self, x):
            out = F.one_hot(x[:, 0].long(), 3).float()
            out[x[:, 1] > 0, 0] = float("nan")
            return out

    # row 1 would be "right" by argmax (NaN is treated as the maximum) but must count as wrong
    x = torch.tensor([[0.0, 0.0], [0.0, 1.0], [2.0, 0.0], [1.0, 0.0]])
    y = torch.tensor([0, 0, 2, 0])
    _, acc = evaluate(Fixed(), x, y, batch_size=3)
    assert acc == pytest.approx(2 / 4)


def test_data_mismatch_is_rejected(tiny):
    with pytest.raises(ValueError, match=r"cfg\.dataset"):
        train(_cfg(dataset="fashion-mnist"), data=tiny)
    with pytest.raises(TypeError, match="TrainConfig"):
        train({"dataset": "mnist"}, data=tiny)


def test_tracker_is_stepped_after_every_optimiser_step(tiny, monkeypatch):
    created = []

    class FakeTracker:
        def __init__(self, model, every=1, mantissa_bits=3):
            self.model, self.every, self.mantissa_bits, self.calls = model, every, mantissa_bits, 0
            created.append(self)

        def step(self):
            self.calls += 1

    fake = types.ModuleType("pyweightstat.tracker")
    fake.WeightTracker = FakeTracker
    monkeypatch.setitem(sys.modules, "pyweightstat.tracker", fake)
    r = train(_cfg(track_every=3, track_mantissa_bits=5), data=tiny)
    assert r.tracker is created[0] and r.tracker.calls == r.steps == 16
    assert r.tracker.every == 3 and r.tracker.mantissa_bits == 5
    r = train(_cfg(), data=tiny)
    assert r.tracker is None and len(created) == 1
