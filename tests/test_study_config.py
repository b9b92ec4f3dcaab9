"""Study presets, TOML overrides, validation and the sampled grid."""

from __future__ import annotations

import collections
import importlib.resources

import pytest

from pyweightstat.study.config import (
    DATASETS,
    FAMILIES,
    PRESETS,
    StudyConfigError,
    load_preset_dict,
    load_study_config,
    study_config_from_dict,
)
from pyweightstat.study.grid import cell_axes, expand_grid, run_id_of


@pytest.mark.parametrize("name", PRESETS)
def test_presets_are_package_data_and_valid(name):
    res = importlib.resources.files("pyweightstat.study").joinpath("presets", f"{name}.toml")
    assert res.is_file()
    cfg = load_study_config(name)
    assert cfg.name == name
    assert cfg.datasets == DATASETS and cfg.families == FAMILIES
    assert set(cfg.models) == set(FAMILIES)


def test_preset_sizes_match_the_issue():
    smoke, quick, paper = (load_study_config(p) for p in PRESETS)
    assert 2 <= smoke.runs_per_cell <= 3
    assert smoke.data.train_size is not None and smoke.data.train_size <= 1000
    assert quick.runs_per_cell >= 16
    assert paper.runs_per_cell >= 48
    assert paper.data.train_size is None and paper.data.test_size is None
    # the SPEC.md perturbations and capacity axes are all in the paper preset
    assert set(paper.train.optimizers) == {"sgd", "adam"}
    assert set(paper.train.lr_mults) == {0.1, 1.0, 10.0}
    assert set(paper.train.inits) == {"default", "normal", "uniform", "xavier", "kaiming"}
    assert set(paper.models["dnn"]["width"]) == {5, 10, 20, 50, 100, 200}
    assert set(paper.models["dnn"]["depth"]) == {1, 2, 3}
    assert set(paper.models["cnn"]["blocks"]) == {1, 2, 3, 4}
    assert set(paper.models["vit"]["heads"]) == {2, 4, 8, 16}
    assert set(paper.models["vit"]["depth"]) == {1, 2, 3, 4}


def test_overrides_merge_key_by_key():
    cfg = load_study_config(
        "quick", {"runs_per_cell": 5, "train": {"epochs": [2]}, "models": {"dnn": {"width": 7}}}
    )
    assert cfg.runs_per_cell == 5
    assert cfg.train.epochs == (2,)
    assert cfg.train.optimizers == ("sgd", "adam")  # untouched keys keep the preset's value
    assert cfg.models["dnn"] == {"width": (7,), "depth": (1, 2, 3)}


def test_override_file(tmp_path):
    f = tmp_path / "o.toml"
    f.write_text('[data]\ntrain_size = "full"\n[analysis]\ngroup_mode = "delta"\n')
    cfg = load_study_config("smoke", f)
    assert cfg.data.train_size is None
    assert cfg.analysis.group_mode == "delta"


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"train": {"epoch": [1]}}, "train.epoch"),
        ({"colour": 1}, "colour"),
        ({"runs_per_cell": 0}, "runs_per_cell"),
        ({"train": {"optimizers": ["rmsprop"]}}, "rmsprop"),
        ({"train": {"inits": ["zeros"]}}, "zeros"),
        ({"train": {"lr_mults": [-1.0]}}, "lr_mults"),
        ({"train": {"epochs": []}}, "epochs"),
        ({"datasets": ["imagenet"]}, "imagenet"),
        ({"analysis": {"group_quantile": 0.7}}, "group_quantile"),
        ({"analysis": {"group_mode": "best"}}, "group_mode"),
        ({"measure": {"mantissa_bits": 11}}, "mantissa_bits"),
        ({"data": {"train_size": -5}}, "train_size"),
        ({"models": {"mlp": {"width": 3}}}, "mlp"),
        ({"seed": "zero"}, "seed"),
    ],
)
def test_bad_overrides_are_rejected_with_the_key(over, match):
    with pytest.raises(StudyConfigError, match=match):
        load_study_config("quick", over)


def test_bad_files(tmp_path):
    with pytest.raises(StudyConfigError, match="not found"):
        load_study_config("quick", tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("this is = = not toml")
    with pytest.raises(StudyConfigError, match="not valid TOML"):
        load_study_config("quick", bad)
    with pytest.raises(StudyConfigError, match="unknown preset"):
        load_study_config("huge")


def test_selected_family_needs_a_models_table():
    d = load_preset_dict("smoke")
    del d["models"]["vit"]
    with pytest.raises(StudyConfigError, match=r"models\.vit"):
        study_config_from_dict(d)
    cfg = study_config_from_dict({**d, "families": ["dnn", "cnn"]})
    assert cfg.families == ("dnn", "cnn")


def test_to_dict_round_trip():
    for p in PRESETS:
        cfg = load_study_config(p)
        assert study_config_from_dict(cfg.to_dict()) == cfg


def test_grid_is_deterministic_with_unique_stable_ids():
    cfg = load_study_config("quick")
    a, b = expand_grid(cfg), expand_grid(load_study_config("quick"))
    assert a == b
    assert len(a) == cfg.runs_per_cell * len(DATASETS) * len(FAMILIES)
    ids = [r["run_id"] for r in a]
    assert len(set(ids)) == len(ids)
    for r in a:
        assert r["run_id"] == run_id_of(r)
        # execution details do not change a run's identity
        assert run_id_of({**r, "device": "cuda", "data_dir": "/x"}) == r["run_id"]
    # each cell holds distinct points of its grid
    for ds in DATASETS:
        for fam in FAMILIES:
            cell = [r for r in a if r["dataset"] == ds and r["family"] == fam]
            assert len({repr(sorted(r["train"].items())) for r in cell}) == cfg.runs_per_cell


def test_grid_is_prefix_stable_and_balanced():
    small = expand_grid(load_study_config("quick", {"runs_per_cell": 8}))
    big = expand_grid(load_study_config("quick", {"runs_per_cell": 24}))
    for ds in DATASETS:
        for fam in FAMILIES:
            s = [r["run_id"] for r in small if (r["dataset"], r["family"]) == (ds, fam)]
            b = [r["run_id"] for r in big if (r["dataset"], r["family"]) == (ds, fam)]
            assert b[: len(s)] == s
    cfg = load_study_config("quick", {"runs_per_cell": 30})
    runs = [r for r in expand_grid(cfg) if (r["dataset"], r["family"]) == ("mnist", "dnn")]
    for axis, values in cell_axes(cfg, "dnn"):
        if axis.startswith("model."):
            got = [r["train"]["model"][axis[6:]] for r in runs]
        else:
            got = [r["train"][axis] for r in runs]
        counts = collections.Counter(got)
        assert set(counts) <= set(values)
        expected = len(runs) / len(values)
        assert max(counts.values()) - min(counts.get(v, 0) for v in values) <= 2, (axis, counts)
        assert min(counts.get(v, 0) for v in values) >= int(expected) - 1


def test_whole_product_when_small():
    cfg = load_study_config(
        "smoke",
        {
            "runs_per_cell": 50,
            "train": {
                "optimizers": ["sgd"],
                "lr_mults": [1.0],
                "inits": ["default"],
                "seeds": [0],
                "epochs": [1],
            },
            "models": {"dnn": {"width": [5, 10], "depth": [1]}},
            "families": ["dnn"],
            "datasets": ["mnist"],
        },
    )
    runs = expand_grid(cfg)
    assert sorted(r["train"]["model"]["width"] for r in runs) == [5, 10]
