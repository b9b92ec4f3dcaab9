"""One training loop for every model family.

A run is described by one :class:`TrainConfig` (unknown keys rejected) and executed by
:func:`train`, which returns a :class:`TrainResult` with per-epoch metrics, the final weights
(CPU tensors) and, when ``track_every > 0``, the :class:`~pyweightstat.tracker.WeightTracker`
that recorded the weights during training.

Determinism: the model is built and initialised after ``torch.manual_seed(seed)`` and the
mini-batch order comes from a ``torch.Generator`` seeded with ``seed``; the caller's global RNG
state is restored afterwards. On the CPU, with the same thread count, the same config gives
bit-identical final weights.

Metrics: ``train_loss`` / ``train_acc`` of an epoch are averages over the mini-batches of that
epoch (measured while the weights change, as usual); ``test_loss`` / ``test_acc`` are evaluated
on the whole test split after the epoch. A run whose loss becomes NaN/Inf stops at once with
``status="diverged"``; the test metrics of its last weights are still evaluated (samples with
non-finite logits count as wrong).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .models import INIT_SCHEMES, build_model, count_parameters, init_weights
from .models.registry import FAMILIES, family_options

__all__ = ["DEFAULT_LR", "TrainConfig", "TrainResult", "evaluate", "train"]

DEFAULT_LR = {"sgd": 0.01, "adam": 1e-3}
SGD_MOMENTUM = 0.9
EVAL_BATCH = 1000
_DATASETS = ("mnist", "fashion-mnist", "cifar10")


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass
class TrainConfig:
    """Everything that defines one training run.

    Attributes
    ----------
    dataset : str
        ``mnist``, ``fashion-mnist`` or ``cifar10``.
    family : str
        ``dnn``, ``cnn`` or ``vit``.
    model : dict
        Family options passed to :func:`~pyweightstat.models.build_model`.
    init : str
        Initialiser: ``default``, ``normal``, ``uniform``, ``xavier`` or ``kaiming``.
    init_scale : float
        σ of ``normal`` / half-width of ``uniform``.
    optimizer : str
        ``sgd`` (momentum 0.9) or ``adam``.
    lr : float or None
        Learning rate; ``None`` means 0.01 for SGD, 1e-3 for Adam.
    lr_mult : float
        Multiplier applied to the learning rate (the perturbation axis of the study).
    batch_size : int
        Mini-batch size.
    epochs : int
        Number of passes over the training split.
    seed : int
        Seeds the initialisation and the mini-batch order.
    device : str
        ``cpu``, ``cuda`` or ``cuda:N``.
    train_size, test_size : int or None
        Deterministic subsets (seed 0, independent of ``seed``), ``None`` for the full split.
    track_every : int
        Record the weights every this many optimiser steps (0: no tracker).
    track_mantissa_bits : int
        Resolution of the tracker's universal log histograms.
    data_dir : str or None
        Root data directory searched first.
    """

    dataset: str = "mnist"
    family: str = "dnn"
    model: dict[str, Any] = field(default_factory=dict)
    init: str = "default"
    init_scale: float = 0.05
    optimizer: str = "sgd"
    lr: float | None = None
    lr_mult: float = 1.0
    batch_size: int = 128
    epochs: int = 3
    seed: int = 0
    device: str = "cpu"
    train_size: int | None = None
    test_size: int | None = None
    track_every: int = 0
    track_mantissa_bits: int = 3
    data_dir: str | None = None

    def __post_init__(self) -> None:
        self._validate()

    def _validate(self) -> None:
        def choice(name: str, allowed: tuple[str, ...]) -> None:
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")

        def integer(name: str, minimum: int, optional: bool = False) -> None:
            v = getattr(self, name)
            if optional and v is None:
                return
            if not _is_int(v):
                raise TypeError(f"{name} must be an int, got {type(v).__name__}")
            if v < minimum:
                raise ValueError(f"{name} must be >= {minimum}, got {v}")

        def positive(name: str, optional: bool = False) -> None:
            v = getattr(self, name)
            if optional and v is None:
                return
            if not _is_real(v):
                raise TypeError(f"{name} must be a number, got {type(v).__name__}")
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be finite and > 0, got {v}")

        choice("dataset", _DATASETS)
        choice("family", tuple(FAMILIES))
        choice("init", INIT_SCHEMES)
        choice("optimizer", tuple(DEFAULT_LR))
        if not isinstance(self.model, Mapping):
            raise TypeError(f"model must be a dict of family options, got {self.model!r}")
        self.model = dict(self.model)
        unknown = sorted(set(self.model) - set(family_options(self.family)))
        if unknown:
            raise ValueError(
                f"model has unknown option(s) {unknown} for family {self.family!r}; "
                f"allowed: {sorted(family_options(self.family))}"
            )
        positive("init_scale")
        positive("lr", optional=True)
        positive("lr_mult")
        integer("batch_size", 1)
        integer("epochs", 1)
        integer("seed", 0)
        integer("train_size", 1, optional=True)
        integer("test_size", 1, optional=True)
        integer("track_every", 0)
        integer("track_mantissa_bits", 0)
        if self.track_mantissa_bits > 10:
            raise ValueError(f"track_mantissa_bits must be <= 10, got {self.track_mantissa_bits}")
        if not isinstance(self.device, str):
            raise TypeError(f"device must be a str, got {type(self.device).__name__}")
        try:
            torch.device(self.device)
        except RuntimeError as exc:
            raise ValueError(f"device {self.device!r} is not a valid torch device") from exc
        if self.data_dir is not None and not isinstance(self.data_dir, str):
            self.data_dir = str(self.data_dir)

    @property
    def effective_lr(self) -> float:
        """The learning rate actually used: ``(lr or the optimizer's default) * lr_mult``."""
        base = DEFAULT_LR[self.optimizer] if self.lr is None else self.lr
        return float(base) * float(self.lr_mult)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Build a config from a mapping, rejecting unknown keys.

        Parameters
        ----------
        d : mapping
            Field name -> value; missing fields take their defaults.

        Returns
        -------
        TrainConfig

        Raises
        ------
        ValueError
            For unknown keys or invalid values.
        TypeError
            For values of the wrong type.
        """
        if not isinstance(d, Mapping):
            raise TypeError(f"from_dict needs a mapping, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig key(s) {unknown}; allowed: {sorted(names)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """Return the config as a plain dict (JSON-serialisable)."""
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    """What one training run produced.

    Attributes
    ----------
    status : str
        ``"done"`` or ``"diverged"``.
    history : list of dict
        One dict per epoch (the last one partial for a diverged run): ``epoch``, ``train_loss``,
        ``train_acc``, ``test_loss``, ``test_acc``.
    test_acc, test_loss, train_acc, train_loss : float
        Final metrics (from the last history entry).
    state_dict : dict
        Final weights, detached CPU tensors.
    tracker : WeightTracker or None
        The weight tracker, when ``track_every > 0``.
    wall_s : float
        Wall time of the whole run (data already loaded).
    samples_per_s : float
        Training samples per second of the optimisation steps (evaluation excluded).
    n_params : int
        Number of parameters.
    steps : int
        Optimiser steps taken.
    config : dict
        The config that produced this result.
    """

    status: str
    history: list[dict[str, float]]
    test_acc: float
    test_loss: float
    train_acc: float
    train_loss: float
    state_dict: dict[str, torch.Tensor]
    tracker: Any
    wall_s: float
    samples_per_s: float
    n_params: int
    steps: int = 0
    config: dict[str, Any] = field(default_factory=dict)


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = EVAL_BATCH
) -> tuple[float, float]:
    """Return ``(mean cross-entropy loss, accuracy)`` of ``model`` on ``(x, y)``.

    Samples whose logits are not all finite count as wrong.

    Parameters
    ----------
    model : torch.nn.Module
    x, y : torch.Tensor
        Inputs and int64 labels, on the model's device.
    batch_size : int
        Evaluation batch size.

    Returns
    -------
    (float, float)
    """
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    for i in range(0, len(x), batch_size):
        logits = model(x[i : i + batch_size])
        yb = y[i : i + batch_size]
        loss_sum += F.cross_entropy(logits, yb, reduction="sum").double()
        ok = (logits.argmax(dim=1) == yb) & torch.isfinite(logits).all(dim=1)
        correct += ok.sum()
    model.train(was_training)
    n = max(len(x), 1)
    return float(loss_sum) / n, int(correct) / n


def _make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    lr = cfg.effective_lr
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=SGD_MOMENTUM)
    return torch.optim.Adam(model.parameters(), lr=lr)


def _prepare_data(cfg: TrainConfig, data: Any, device: torch.device) -> Any:
    if data is None:
        from .data import load_dataset

        return load_dataset(
            cfg.dataset,
            data_dir=cfg.data_dir,
            train_size=cfg.train_size,
            test_size=cfg.test_size,
            device=device,
            seed=0,
        )
    if getattr(data, "name", cfg.dataset) != cfg.dataset:
        raise ValueError(f"data is {data.name!r} but cfg.dataset is {cfg.dataset!r}")
    if data.train_x.device != device:
        data = dataclasses.replace(
            data,
            train_x=data.train_x.to(device),
            train_y=data.train_y.to(device),
            test_x=data.test_x.to(device),
            test_y=data.test_y.to(device),
        )
    return data


def train(
    cfg: TrainConfig,
    *,
    data: Any = None,
    progress: bool = False,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train one model as described by ``cfg``.

    Parameters
    ----------
    cfg : TrainConfig
        The run.
    data : pyweightstat.data.Dataset, optional
        Pre-loaded data (its ``name`` must equal ``cfg.dataset``; ``cfg.train_size`` /
        ``test_size`` are then not applied). Loaded with :func:`~pyweightstat.data.load_dataset`
        when omitted.
    progress : bool
        Show a tqdm progress bar over the optimisation steps.
    on_epoch : callable, optional
        Called as ``on_epoch(epoch, metrics)`` after every epoch (and once for the partial epoch
        of a diverged run) with that epoch's history entry.

    Returns
    -------
    TrainResult
        Never raises for a diverging run: ``status`` says ``"diverged"``.
    """
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    cfg._validate()
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"cfg.device is {cfg.device!r} but CUDA is not available")
    data = _prepare_data(cfg, data, device)
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices):
        return _train(cfg, data, device, progress, on_epoch)


def _train(
    cfg: TrainConfig,
    data: Any,
    device: torch.device,
    progress: bool,
    on_epoch: Callable[[int, dict[str, float]], None] | None,
) -> TrainResult:
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.family, data.in_shape, data.num_classes, **cfg.model)
    init_weights(model, cfg.init, cfg.init_scale)
    model.to(device).train()
    optimizer = _make_optimizer(cfg, model)
    tracker = None
    if cfg.track_every > 0:
        from .tracker import WeightTracker

        tracker = WeightTracker(model, every=cfg.track_every, mantissa_bits=cfg.track_mantissa_bits)

    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    n = len(data.train_x)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    history: list[dict[str, float]] = []
    status, steps, samples, train_time = "done", 0, 0, 0.0
    bar = tqdm(total=steps_per_epoch * cfg.epochs, disable=not progress, unit="step", leave=False)
    try:
        for epoch in range(1, cfg.epochs + 1):
            perm = torch.randperm(n, generator=gen).to(device)
            loss_sum, seen = 0.0, 0
            correct = torch.zeros((), dtype=torch.int64, device=device)
            t0 = time.perf_counter()
            for i in range(0, n, cfg.batch_size):
                idx = perm[i : i + cfg.batch_size]
                xb, yb = data.train_x[idx], data.train_y[idx]
                logits = model(xb)
                loss = F.cross_entropy(logits, yb)
                loss_value = loss.item()
                if not math.isfinite(loss_value):
                    status = "diverged"
                    break
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if tracker is not None:
                    tracker.step()
                steps += 1
                loss_sum += loss_value * len(idx)
                seen += len(idx)
                correct += (logits.detach().argmax(dim=1) == yb).sum()
                bar.update()
            train_time += time.perf_counter() - t0
            samples += seen
            test_loss, test_acc = evaluate(model, data.test_x, data.test_y)
            metrics = {
                "epoch": epoch,
                "train_loss": loss_sum / seen if seen and status == "done" else math.nan,
                "train_acc": int(correct) / seen if seen else math.nan,
                "test_loss": test_loss,
                "test_acc": test_acc,
            }
            history.append(metrics)
            bar.set_postfix(loss=f"{metrics['train_loss']:.4f}", test_acc=f"{test_acc:.4f}")
            if on_epoch is not None:
                on_epoch(epoch, dict(metrics))
            if status == "diverged":
                break
    finally:
        bar.close()

    last = history[-1]
    state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    return TrainResult(
        status=status,
        history=history,
        test_acc=last["test_acc"],
        test_loss=last["test_loss"],
        train_acc=last["train_acc"],
        train_loss=last["train_loss"],
        state_dict=state,
        tracker=tracker,
        wall_s=time.perf_counter() - t_start,
        samples_per_s=samples / train_time if train_time > 0 else math.nan,
        n_params=count_parameters(model),
        steps=steps,
        config=cfg.to_dict(),
    )
