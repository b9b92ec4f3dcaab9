"""Study configuration: presets shipped as TOML, user overrides, validation.

A study is described by one :class:`StudyConfig`. It is loaded from a preset shipped with the
package (``pyweightstat/study/presets/<name>.toml``) and optionally overridden by a user TOML file
with the same layout (tables are merged key by key; a key the preset does not have is an error,
so a typo never passes silently)::

    name = "quick"
    runs_per_cell = 16          # runs sampled per (dataset, family) cell
    seed = 0                    # seeds the sampling of the grid

    [data]                      # deterministic subsets ("full" or 0 = the whole split)
    train_size = 3000
    test_size = 1000

    [train]                     # training perturbations: every list is one axis of the grid
    epochs = [1, 2]
    optimizers = ["sgd", "adam"]
    lr_mults = [0.1, 1.0, 10.0]
    inits = ["default", "normal", "uniform", "xavier", "kaiming"]
    seeds = [0, 1, 2]

    [models.dnn]                # capacity: every list is one axis (keys are build_model kwargs)
    width = [5, 10, 20, 50, 100, 200]
    depth = [1, 2, 3]

    [measure]                   # what is computed on the final weights
    [analysis]                  # groups and statistical tests

Everything is validated by :func:`load_study_config` before any training starts.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.resources
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "DATASETS",
    "FAMILIES",
    "INITS",
    "OPTIMIZERS",
    "PRESETS",
    "AnalysisConfig",
    "DataConfig",
    "MeasureConfig",
    "StudyConfig",
    "StudyConfigError",
    "TrainGrid",
    "apply_overrides",
    "load_preset_dict",
    "load_study_config",
    "read_overrides",
    "study_config_from_dict",
]

DATASETS: tuple[str, ...] = ("mnist", "fashion-mnist", "cifar10")
FAMILIES: tuple[str, ...] = ("dnn", "cnn", "vit")
OPTIMIZERS: tuple[str, ...] = ("sgd", "adam")
INITS: tuple[str, ...] = ("default", "normal", "uniform", "xavier", "kaiming")
PRESETS: tuple[str, ...] = ("smoke", "quick", "paper")
GROUP_MODES: tuple[str, ...] = ("quantile", "delta")


class StudyConfigError(ValueError):
    """A study preset, override file or command-line selection is invalid."""


@dataclass(frozen=True)
class DataConfig:
    """Data subsets used by every run.

    Attributes
    ----------
    train_size, test_size : int or None
        Size of the deterministic subset of each split; ``None`` uses the whole split.
    subset_seed : int
        Seed of the subset selection (the same subset for every run of a study).
    """

    train_size: int | None = None
    test_size: int | None = None
    subset_seed: int = 0


@dataclass(frozen=True)
class TrainGrid:
    """Training settings; list-valued fields are axes of the sampled grid.

    Attributes
    ----------
    batch_size : int
    epochs : tuple of int
        Axis: number of epochs.
    optimizers : tuple of str
        Axis: ``"sgd"`` (lr 0.01, momentum 0.9) and/or ``"adam"`` (lr 1e-3).
    lr_mults : tuple of float
        Axis: multipliers of the optimizer's base learning rate.
    inits : tuple of str
        Axis: initialisers (``default``, ``normal``, ``uniform``, ``xavier``, ``kaiming``).
    init_scale : float
        sigma of ``normal`` and half-width of ``uniform``.
    seeds : tuple of int
        Axis: training seeds.
    track_every : int
        Record the weight trajectory every this many steps (0 = off).
    track_mantissa_bits : int
        Resolution of the trajectory's log histograms.
    """

    batch_size: int = 128
    epochs: tuple[int, ...] = (1,)
    optimizers: tuple[str, ...] = OPTIMIZERS
    lr_mults: tuple[float, ...] = (0.1, 1.0, 10.0)
    inits: tuple[str, ...] = INITS
    init_scale: float = 0.05
    seeds: tuple[int, ...] = (0,)
    track_every: int = 0
    track_mantissa_bits: int = 3


@dataclass(frozen=True)
class MeasureConfig:
    """What is computed on each run's final weights.

    Attributes
    ----------
    mantissa_bits : int
        Resolution of the stored universal log histograms (quantile error ``2**-m``).
    near_zero : float
        Threshold of the near-zero fraction (``|w| < near_zero``).
    node_strength : bool
        Compute node strengths and layer fluctuations.
    """

    mantissa_bits: int = 7
    near_zero: float = 1e-3
    node_strength: bool = True


@dataclass(frozen=True)
class AnalysisConfig:
    """Groups and statistical tests of the analysis.

    Attributes
    ----------
    group_mode : str
        ``"quantile"``: optimal = top ``group_quantile`` of test accuracy within a cell,
        suboptimal = bottom ``group_quantile``. ``"delta"``: optimal = within ``group_delta``
        of the cell's best accuracy, suboptimal = every other run.
    group_quantile : float
    group_delta : float
    accuracy_bin_width : float
        Width of the accuracy bins of the distribution heatmaps.
    alpha : float
        Significance level of the claims table.
    min_group_size : int
        A cell whose optimal or suboptimal group has fewer runs is "inconclusive".
    n_permutations, n_bootstrap : int
        Resamples of the permutation tests and bootstrap intervals.
    cv_folds : int
        Folds of the cross-validated accuracy prediction.
    trajectory_points : int
        Points of the normalised training-progress grid for trajectory comparisons.
    seed : int
        Seed of every resampling procedure (the analysis is deterministic).
    """

    group_mode: str = "quantile"
    group_quantile: float = 0.25
    group_delta: float = 0.02
    accuracy_bin_width: float = 0.025
    alpha: float = 0.05
    min_group_size: int = 3
    n_permutations: int = 9999
    n_bootstrap: int = 1999
    cv_folds: int = 5
    trajectory_points: int = 20
    seed: int = 0


@dataclass(frozen=True)
class StudyConfig:
    """One study: which cells, how the grid is sampled, what is measured and tested.

    Attributes
    ----------
    name : str
        Preset name (or the name given by an override file).
    description : str
    datasets, families : tuple of str
        The cells of the study (their product).
    runs_per_cell : int
        Runs sampled per (dataset, family) cell from the product of the capacity and
        training-perturbation axes.
    seed : int
        Seeds the sampling of the grid.
    data : DataConfig
    train : TrainGrid
    models : dict
        ``family -> {build_model kwarg -> tuple of values}``; each key is an axis.
    measure : MeasureConfig
    analysis : AnalysisConfig
    """

    name: str = "custom"
    description: str = ""
    datasets: tuple[str, ...] = DATASETS
    families: tuple[str, ...] = FAMILIES
    runs_per_cell: int = 4
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainGrid = field(default_factory=TrainGrid)
    models: Mapping[str, Mapping[str, tuple[Any, ...]]] = field(default_factory=dict)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)

    def to_dict(self) -> dict[str, Any]:
        """Return a plain, JSON- and TOML-compatible dict (lists instead of tuples).

        ``None`` subset sizes are written as ``"full"``.
        """
        out = _plain(dataclasses.asdict(self))
        out["models"] = {f: {k: list(v) for k, v in kw.items()} for f, kw in self.models.items()}
        for key in ("train_size", "test_size"):
            if out["data"][key] is None:
                out["data"][key] = "full"
        return out

    def grid_fingerprint(self) -> dict[str, Any]:
        """The part of the config that decides what each run is (data, train, models, measure).

        Two studies with the same fingerprint produce identical runs for identical run ids, so
        they can share a results database; the analysis settings and the cell selection may
        differ.
        """
        d = self.to_dict()
        return {k: d[k] for k in ("data", "train", "models", "measure")}

    def with_selection(
        self, datasets: tuple[str, ...] | None = None, families: tuple[str, ...] | None = None
    ) -> StudyConfig:
        """Return a copy restricted to other datasets and/or families (validated).

        Parameters
        ----------
        datasets, families : tuple of str, optional
            The new selection (``None`` keeps the current one).

        Returns
        -------
        StudyConfig
        """
        d = self.to_dict()
        if datasets is not None:
            d["datasets"] = list(datasets)
        if families is not None:
            d["families"] = list(families)
        return study_config_from_dict(d)


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def load_preset_dict(name: str) -> dict[str, Any]:
    """Read a shipped preset as a raw dict.

    Parameters
    ----------
    name : str
        One of :data:`PRESETS`.

    Returns
    -------
    dict
        The parsed TOML.

    Raises
    ------
    StudyConfigError
        When the preset does not exist.
    """
    if name not in PRESETS:
        raise StudyConfigError(f"unknown preset {name!r}; available presets: {', '.join(PRESETS)}")
    res = importlib.resources.files("pyweightstat.study").joinpath("presets", f"{name}.toml")
    with res.open("rb") as fh:
        return tomllib.load(fh)


def _merge(base: dict[str, Any], over: Mapping[str, Any], path: str) -> dict[str, Any]:
    """Deep-merge ``over`` into a copy of ``base``; unknown keys are errors (except models)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        where = f"{path}{key}"
        if key not in out:
            if path.startswith("models.") or path == "models.":
                out[key] = copy.deepcopy(value)
                continue
            known = ", ".join(sorted(out)) or "(none)"
            raise StudyConfigError(f"unknown config key {where!r}; known keys here: {known}")
        if isinstance(out[key], dict):
            if not isinstance(value, Mapping):
                raise StudyConfigError(f"config key {where!r} must be a table")
            out[key] = _merge(out[key], value, f"{where}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_study_config(
    preset: str = "quick",
    overrides: str | Path | Mapping[str, Any] | None = None,
) -> StudyConfig:
    """Load a preset, apply TOML overrides and validate everything.

    Parameters
    ----------
    preset : str
        Name of a shipped preset (``smoke``, ``quick``, ``paper``).
    overrides : path or mapping, optional
        A TOML file (or an already parsed dict) with the preset's layout; its keys replace the
        preset's. Unknown keys are rejected with the key's dotted path.

    Returns
    -------
    StudyConfig

    Raises
    ------
    StudyConfigError
        On an unknown preset, unreadable or malformed TOML, unknown keys or invalid values.
    """
    return apply_overrides(load_preset_dict(preset), overrides)


def read_overrides(overrides: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """Parse an override TOML file (or copy a mapping); errors name the file."""
    if isinstance(overrides, Mapping):
        return dict(overrides)
    p = Path(overrides)
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise StudyConfigError(f"config file not found: {p}") from None
    except tomllib.TOMLDecodeError as exc:
        raise StudyConfigError(f"config file {p} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise StudyConfigError(f"cannot read config file {p}: {exc}") from None


def apply_overrides(
    base: Mapping[str, Any], overrides: str | Path | Mapping[str, Any] | None = None
) -> StudyConfig:
    """Merge overrides into a raw config dict (preset layout) and validate the result.

    Parameters
    ----------
    base : mapping
        A raw config, e.g. :func:`load_preset_dict` or a stored ``StudyConfig.to_dict()``.
    overrides : path or mapping, optional
        TOML file or parsed dict with the same layout; unknown keys are rejected.

    Returns
    -------
    StudyConfig
    """
    merged = _merge(_defaults_dict(), dict(base), "")
    if overrides is not None:
        merged = _merge(merged, read_overrides(overrides), "")
    return study_config_from_dict(merged)


def _defaults_dict() -> dict[str, Any]:
    d = StudyConfig().to_dict()
    d["models"] = {}
    return d


# ----------------------------------------------------------------------------------------------
# validation


def _check_keys(d: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise StudyConfigError(
            f"unknown config key {where}{unknown[0]!r}; known keys: {', '.join(sorted(allowed))}"
        )


def _int(v: Any, name: str, minimum: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise StudyConfigError(f"{name} must be an integer, got {v!r}")
    if minimum is not None and v < minimum:
        raise StudyConfigError(f"{name} must be >= {minimum}, got {v}")
    return v


def _float(v: Any, name: str, lo: float | None = None, hi: float | None = None) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise StudyConfigError(f"{name} must be a finite number, got {v!r}")
    v = float(v)
    if lo is not None and not v > lo:
        raise StudyConfigError(f"{name} must be > {lo}, got {v}")
    if hi is not None and not v <= hi:
        raise StudyConfigError(f"{name} must be <= {hi}, got {v}")
    return v


def _list(v: Any, name: str) -> list[Any]:
    if not isinstance(v, (list, tuple)):
        v = [v]
    if len(v) == 0:
        raise StudyConfigError(f"{name} must not be empty")
    return list(v)


def _names(v: Any, name: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    items = _list(v, name)
    out: list[str] = []
    for it in items:
        if it not in allowed:
            raise StudyConfigError(f"{name}: unknown name {it!r}; choose from {', '.join(allowed)}")
        if it not in out:
            out.append(it)
    return tuple(out)


def _size(v: Any, name: str) -> int | None:
    if v in ("full", 0, None):
        return None
    return _int(v, name, 1)


def study_config_from_dict(d: Mapping[str, Any]) -> StudyConfig:
    """Validate a raw config dict (preset layout) and build a :class:`StudyConfig`.

    Parameters
    ----------
    d : mapping
        Parsed TOML with the preset layout.

    Returns
    -------
    StudyConfig

    Raises
    ------
    StudyConfigError
        Naming the offending key and the accepted values.
    """
    top = {f.name for f in dataclasses.fields(StudyConfig)}
    _check_keys(d, top, "")
    name = d.get("name", "custom")
    if not isinstance(name, str) or not name:
        raise StudyConfigError(f"name must be a non-empty string, got {name!r}")
    description = d.get("description", "")
    if not isinstance(description, str):
        raise StudyConfigError("description must be a string")
    datasets = _names(d.get("datasets", DATASETS), "datasets", DATASETS)
    families = _names(d.get("families", FAMILIES), "families", FAMILIES)
    runs_per_cell = _int(d.get("runs_per_cell", 4), "runs_per_cell", 1)
    seed = _int(d.get("seed", 0), "seed", 0)

    dd = d.get("data", {})
    _check_keys(dd, {f.name for f in dataclasses.fields(DataConfig)}, "data.")
    data = DataConfig(
        train_size=_size(dd.get("train_size"), "data.train_size"),
        test_size=_size(dd.get("test_size"), "data.test_size"),
        subset_seed=_int(dd.get("subset_seed", 0), "data.subset_seed", 0),
    )

    td = d.get("train", {})
    _check_keys(td, {f.name for f in dataclasses.fields(TrainGrid)}, "train.")
    tdef = TrainGrid()
    train = TrainGrid(
        batch_size=_int(td.get("batch_size", tdef.batch_size), "train.batch_size", 1),
        epochs=tuple(
            _int(e, "train.epochs", 1) for e in _list(td.get("epochs", tdef.epochs), "train.epochs")
        ),
        optimizers=_names(td.get("optimizers", tdef.optimizers), "train.optimizers", OPTIMIZERS),
        lr_mults=tuple(
            _float(x, "train.lr_mults", 0.0)
            for x in _list(td.get("lr_mults", tdef.lr_mults), "train.lr_mults")
        ),
        inits=_names(td.get("inits", tdef.inits), "train.inits", INITS),
        init_scale=_float(td.get("init_scale", tdef.init_scale), "train.init_scale", 0.0),
        seeds=tuple(
            _int(s, "train.seeds", 0) for s in _list(td.get("seeds", tdef.seeds), "train.seeds")
        ),
        track_every=_int(td.get("track_every", tdef.track_every), "train.track_every", 0),
        track_mantissa_bits=_int(
            td.get("track_mantissa_bits", tdef.track_mantissa_bits), "train.track_mantissa_bits", 0
        ),
    )
    if train.track_mantissa_bits > 10:
        raise StudyConfigError("train.track_mantissa_bits must be <= 10")

    md = d.get("models", {})
    if not isinstance(md, Mapping):
        raise StudyConfigError("models must be a table of [models.<family>] tables")
    _check_keys(md, set(FAMILIES), "models.")
    models: dict[str, dict[str, tuple[Any, ...]]] = {}
    for fam, kw in md.items():
        if not isinstance(kw, Mapping):
            raise StudyConfigError(f"models.{fam} must be a table of build_model arguments")
        axes: dict[str, tuple[Any, ...]] = {}
        for k, v in kw.items():
            vals = _list(v, f"models.{fam}.{k}")
            for x in vals:
                if isinstance(x, Mapping):
                    raise StudyConfigError(f"models.{fam}.{k} values must be scalars or lists")
            axes[str(k)] = tuple(tuple(x) if isinstance(x, list) else x for x in vals)
        models[fam] = axes
    for fam in families:
        if fam not in models:
            raise StudyConfigError(
                f"family {fam!r} is selected but the config has no [models.{fam}] table"
            )

    mdd = d.get("measure", {})
    _check_keys(mdd, {f.name for f in dataclasses.fields(MeasureConfig)}, "measure.")
    mdef = MeasureConfig()
    measure = MeasureConfig(
        mantissa_bits=_int(
            mdd.get("mantissa_bits", mdef.mantissa_bits), "measure.mantissa_bits", 0
        ),
        near_zero=_float(mdd.get("near_zero", mdef.near_zero), "measure.near_zero", 0.0),
        node_strength=bool(mdd.get("node_strength", mdef.node_strength)),
    )
    if measure.mantissa_bits > 10:
        raise StudyConfigError("measure.mantissa_bits must be <= 10")
    if not isinstance(mdd.get("node_strength", True), bool):
        raise StudyConfigError("measure.node_strength must be true or false")

    ad = d.get("analysis", {})
    _check_keys(ad, {f.name for f in dataclasses.fields(AnalysisConfig)}, "analysis.")
    adef = AnalysisConfig()
    mode = ad.get("group_mode", adef.group_mode)
    if mode not in GROUP_MODES:
        raise StudyConfigError(
            f"analysis.group_mode must be one of {', '.join(GROUP_MODES)}, got {mode!r}"
        )
    analysis = AnalysisConfig(
        group_mode=mode,
        group_quantile=_float(
            ad.get("group_quantile", adef.group_quantile), "analysis.group_quantile", 0.0, 0.5
        ),
        group_delta=_float(ad.get("group_delta", adef.group_delta), "analysis.group_delta", 0.0),
        accuracy_bin_width=_float(
            ad.get("accuracy_bin_width", adef.accuracy_bin_width),
            "analysis.accuracy_bin_width",
            0.0,
            1.0,
        ),
        alpha=_float(ad.get("alpha", adef.alpha), "analysis.alpha", 0.0, 0.5),
        min_group_size=_int(
            ad.get("min_group_size", adef.min_group_size), "analysis.min_group_size", 2
        ),
        n_permutations=_int(
            ad.get("n_permutations", adef.n_permutations), "analysis.n_permutations", 99
        ),
        n_bootstrap=_int(ad.get("n_bootstrap", adef.n_bootstrap), "analysis.n_bootstrap", 99),
        cv_folds=_int(ad.get("cv_folds", adef.cv_folds), "analysis.cv_folds", 2),
        trajectory_points=_int(
            ad.get("trajectory_points", adef.trajectory_points), "analysis.trajectory_points", 3
        ),
        seed=_int(ad.get("seed", adef.seed), "analysis.seed", 0),
    )
    return StudyConfig(
        name=name,
        description=description,
        datasets=datasets,
        families=families,
        runs_per_cell=runs_per_cell,
        seed=seed,
        data=data,
        train=train,
        models=models,
        measure=measure,
        analysis=analysis,
    )
