"""Expand a study config into a deterministic list of run configs.

Each (dataset, family) cell samples ``runs_per_cell`` distinct points from the product of its
axes: the family's capacity axes (``[models.<family>]``) and the training perturbations
(optimizer, learning-rate multiplier, initialiser, epochs, seed).

Sampling is *balanced* and *prefix-stable*: run ``i`` takes, on every axis independently, the
element ``i mod len(axis)`` of a seeded permutation of that axis drawn for the cycle
``i // len(axis)``. Every value of every axis therefore appears equally often (up to one), and
run ``i`` does not depend on ``runs_per_cell``, so raising ``runs_per_cell`` extends a study
without changing the runs already made. A combination drawn twice is skipped. When the whole
product is not larger than ``runs_per_cell``, the whole product is used.

Each run config has a stable ``run_id``: a hash of everything that decides the run's result
(data subset, training config, measurement settings), not of where or how it is executed.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import zlib
from typing import Any

import numpy as np

from .config import StudyConfig

__all__ = ["cell_axes", "expand_grid", "run_id_of"]

_ID_KEYS = ("dataset", "family", "train", "measure", "subset_seed")


def run_id_of(run_config: dict[str, Any]) -> str:
    """Return the stable id of a run config: 16 hex digits of a SHA-256.

    Parameters
    ----------
    run_config : dict
        A run config as made by :func:`expand_grid` (only its ``dataset``, ``family``,
        ``train``, ``measure`` and ``subset_seed`` entries are hashed).

    Returns
    -------
    str
    """
    payload = {k: run_config.get(k) for k in _ID_KEYS}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cell_axes(cfg: StudyConfig, family: str) -> list[tuple[str, tuple[Any, ...]]]:
    """Return the sampled axes of a family's cells as ``(name, values)`` pairs.

    Parameters
    ----------
    cfg : StudyConfig
    family : str

    Returns
    -------
    list of (str, tuple)
        Capacity axes named ``model.<kwarg>``, then the perturbation axes ``optimizer``,
        ``lr_mult``, ``init``, ``epochs`` and ``seed``.
    """
    if family not in cfg.models:
        raise ValueError(f"family {family!r} has no [models.{family}] table in the config")
    axes: list[tuple[str, tuple[Any, ...]]] = [
        (f"model.{k}", tuple(v)) for k, v in sorted(cfg.models[family].items())
    ]
    t = cfg.train
    axes += [
        ("optimizer", t.optimizers),
        ("lr_mult", tuple(float(x) for x in t.lr_mults)),
        ("init", t.inits),
        ("epochs", t.epochs),
        ("seed", t.seeds),
    ]
    return axes


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def _point_to_run(cfg: StudyConfig, dataset: str, family: str, point: dict[str, Any]) -> dict:
    model = {k[len("model.") :]: _plain(v) for k, v in point.items() if k.startswith("model.")}
    t = cfg.train
    train = {
        "dataset": dataset,
        "family": family,
        "model": model,
        "init": point["init"],
        "init_scale": float(t.init_scale),
        "optimizer": point["optimizer"],
        "lr": None,
        "lr_mult": float(point["lr_mult"]),
        "batch_size": t.batch_size,
        "epochs": int(point["epochs"]),
        "seed": int(point["seed"]),
        "train_size": cfg.data.train_size,
        "test_size": cfg.data.test_size,
        "track_every": t.track_every,
        "track_mantissa_bits": t.track_mantissa_bits,
    }
    m = cfg.measure
    run = {
        "dataset": dataset,
        "family": family,
        "train": train,
        "measure": {
            "mantissa_bits": m.mantissa_bits,
            "near_zero": float(m.near_zero),
            "node_strength": m.node_strength,
        },
        "subset_seed": cfg.data.subset_seed,
    }
    run["run_id"] = run_id_of(run)
    return run


def _sample_cell(cfg: StudyConfig, dataset: str, family: str) -> list[dict[str, Any]]:
    axes = cell_axes(cfg, family)
    n = cfg.runs_per_cell
    total = 1
    for _, vals in axes:
        total *= len(vals)
    key = [cfg.seed, zlib.crc32(dataset.encode()), zlib.crc32(family.encode())]
    names = [a for a, _ in axes]
    if total <= n:
        rng = np.random.default_rng([*key, 999_999])
        combos = list(itertools.product(*(range(len(v)) for _, v in axes)))
        order = rng.permutation(len(combos))
        picks = [combos[i] for i in order]
    else:
        seen: set[tuple[int, ...]] = set()
        picks = []
        perms: dict[tuple[int, int], np.ndarray] = {}
        i = 0
        while len(picks) < n and i < 64 * n:
            combo = []
            for a, (_, vals) in enumerate(axes):
                cyc, pos = divmod(i, len(vals))
                if (a, cyc) not in perms:
                    perms[(a, cyc)] = np.random.default_rng([*key, a, cyc]).permutation(len(vals))
                combo.append(int(perms[(a, cyc)][pos]))
            tup = tuple(combo)
            if tup not in seen:
                seen.add(tup)
                picks.append(tup)
            i += 1
        if len(picks) < n:  # pathological axis lengths: fill from the shuffled product
            rng = np.random.default_rng([*key, 999_999])
            every = itertools.product(*(range(len(v)) for _, v in axes))
            rest = [c for c in every if c not in seen]
            for j in rng.permutation(len(rest))[: n - len(picks)]:
                picks.append(rest[int(j)])
    runs = []
    for idx, combo in enumerate(picks):
        point = {names[a]: axes[a][1][c] for a, c in enumerate(combo)}
        run = _point_to_run(cfg, dataset, family, point)
        run["index"] = idx
        runs.append(run)
    return runs


def expand_grid(cfg: StudyConfig) -> list[dict[str, Any]]:
    """Expand a study config into its run configs, in a deterministic order.

    Parameters
    ----------
    cfg : StudyConfig

    Returns
    -------
    list of dict
        One dict per run, ordered by dataset, family, then sample index, with keys
        ``run_id``, ``dataset``, ``family``, ``index``, ``train`` (the fields of
        :class:`pyweightstat.train.TrainConfig` except ``device`` and ``data_dir``, which are
        execution details), ``measure`` and ``subset_seed``.
    """
    runs: list[dict[str, Any]] = []
    for ds in cfg.datasets:
        for fam in cfg.families:
            runs.extend(_sample_cell(cfg, ds, fam))
    return runs
