"""``pyweightstat-run`` flags: help, and clear errors before any work starts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from pyweightstat.cli import build_parser, main

DATA = os.environ.get("PYWEIGHTSTAT_DATA")


def test_help_lists_every_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in (
        "--all",
        "--datasets",
        "--families",
        "--preset",
        "--config",
        "--out",
        "--device",
        "--workers",
        "--data-dir",
        "--report-only",
        "--no-resume",
    ):
        assert flag in out
    for word in ("smoke", "quick", "paper", "mnist", "fashion-mnist", "cifar10", "vit"):
        assert word in out


def test_list_flags_are_comma_separated():
    args = build_parser().parse_args(["--datasets", "mnist,cifar10", "--families", "dnn"])
    assert args.datasets == ["mnist", "cifar10"] and args.families == ["dnn"]
    assert args.out == "./pyweightstat-results" and args.workers is None and args.device == "auto"


def _err(capsys, argv, tmp_path, match):
    out = tmp_path / "study"
    code = main([*argv, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyweightstat-run: error:"), err
    assert match in lines[0]
    assert "Traceback" not in err
    assert not (out / "study.sqlite").exists()  # nothing was started


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--datasets", "imagenet"], "imagenet"),
        (["--families", "rnn"], "rnn"),
        (["--all", "--datasets", "mnist"], "--all"),
        (["--all", "--workers", "0"], "--workers"),
        ([], "nothing to run"),
        (["--report-only"], "no results database"),
        (["--report-only", "--no-resume"], "--no-resume"),
    ],
)
def test_usage_errors(capsys, tmp_path, argv, match):
    _err(capsys, argv, tmp_path, match)


def test_config_errors(capsys, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nepoch = [1]\n")
    _err(capsys, ["--all", "--preset", "smoke", "--config", str(bad)], tmp_path, "train.epoch")
    _err(capsys, ["--all", "--config", str(tmp_path / "nope.toml")], tmp_path, "not found")
    bad.write_text("[models.vit]\nheads = [3]\ndim = [16]\n")
    if DATA is None:
        pytest.skip("PYWEIGHTSTAT_DATA is not set")
    _err(
        capsys,
        ["--datasets", "mnist", "--families", "vit", "--preset", "smoke", "--config", str(bad)],
        tmp_path,
        "models.vit",
    )


def test_missing_data_is_a_clear_error(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("PYWEIGHTSTAT_DATA", raising=False)
    monkeypatch.setenv("PYWEIGHTSTAT_OFFLINE", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    empty = tmp_path / "empty"
    empty.mkdir()
    _err(
        capsys,
        ["--datasets", "mnist", "--families", "dnn", "--preset", "smoke", "--data-dir", str(empty)],
        tmp_path,
        "mnist",
    )
    _err(capsys, ["--all", "--data-dir", str(tmp_path / "nodir")], tmp_path, "--data-dir")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_without_gpu(capsys, tmp_path):
    _err(capsys, ["--all", "--device", "cuda"], tmp_path, "CUDA")


def test_incompatible_existing_study(capsys, tmp_path):
    from pyweightstat.study.store import ResultStore

    out = tmp_path / "study"
    with ResultStore(out) as st:
        st.set_meta("grid_fingerprint", {"something": "else"})
        st.set_meta("study_config", {"name": "paper"})
    if DATA is None:
        pytest.skip("PYWEIGHTSTAT_DATA is not set")
    code = main(
        ["--datasets", "mnist", "--families", "dnn", "--preset", "smoke", "--out", str(out)]
    )
    err = capsys.readouterr().err
    assert code == 2 and "different grid" in err and "--no-resume" in err
    assert Path(out / "study.sqlite").exists()  # left alone
