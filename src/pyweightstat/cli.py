"""``pyweightstat-run``: run the optimal-vs-suboptimal study, store results, write the report.

Examples::

    pyweightstat-run --all                          # every data set x family, default preset
    pyweightstat-run --datasets mnist,cifar10 --families dnn --preset smoke
    pyweightstat-run --all --config my.toml --workers 2 --out results/
    pyweightstat-run --report-only --out results/   # re-analyse the stored runs

Everything (flags, preset, TOML overrides, data files, model configs) is validated before any
training starts; a problem is reported in one line with exit status 2. Re-running the same
command resumes: finished runs are skipped. Interrupting (Ctrl-C, or even SIGKILL) loses at
most the runs in flight.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "main"]

PROG = "pyweightstat-run"
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """A user error: reported as one line, exit status 2."""


def _csv_list(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(f"empty name in list {text!r}")
    return items


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``pyweightstat-run``."""
    from pyweightstat.study.config import DATASETS, FAMILIES, PRESETS

    p = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Train families of DNN/CNN/ViT networks on MNIST, Fashion-MNIST and CIFAR-10, "
            "record the statistics of their weights with the pyweightstat engine, and test "
            "whether optimal networks resemble each other while suboptimal ones vary (Zheng et "
            "al. 2024, C1/C2). Results go to a resumable SQLite database in --out, with "
            "report.md, report.html, figures/, runs.csv and stats.csv."
        ),
        epilog=(
            "Presets: smoke (CI pipeline check, ~2 min), quick (CPU default, <= 30 min on 2 "
            "cores), paper (GPU default, full data sets). Re-running the same command resumes "
            "an interrupted study. Data sets are looked up in --data-dir, $PYWEIGHTSTAT_DATA, "
            "then ~/.cache/pyweightstat."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sel = p.add_argument_group("what to run")
    sel.add_argument(
        "--all",
        action="store_true",
        help=f"every data set ({', '.join(DATASETS)}) x every family ({', '.join(FAMILIES)})",
    )
    sel.add_argument(
        "--datasets",
        type=_csv_list,
        metavar="LIST",
        default=None,
        help=f"comma-separated data sets among {','.join(DATASETS)} "
        "(default with --families alone: all)",
    )
    sel.add_argument(
        "--families",
        type=_csv_list,
        metavar="LIST",
        default=None,
        help=f"comma-separated model families among {','.join(FAMILIES)} "
        "(default with --datasets alone: all)",
    )
    sel.add_argument(
        "--preset",
        choices=PRESETS,
        default=None,
        help="sweep preset (default: paper when the device is a GPU, else quick; "
        "with --report-only: the stored one)",
    )
    sel.add_argument(
        "--config",
        metavar="FILE.toml",
        default=None,
        help="TOML file overriding preset keys (same layout as the shipped "
        "presets; unknown keys are errors)",
    )
    ex = p.add_argument_group("where and how")
    ex.add_argument(
        "--out",
        metavar="DIR",
        default="./pyweightstat-results",
        help="study directory (database, weights, report)",
    )
    ex.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="training device"
    )
    ex.add_argument(
        "--workers",
        type=int,
        metavar="N",
        default=None,
        help="runs trained in parallel, each in its own process (one GPU each when several "
        "are visible; CPU threads divided between them); 1 trains in this process "
        "(default: 1 on a GPU, min(4, CPU cores) on the CPU)",
    )
    ex.add_argument(
        "--data-dir", metavar="DIR", default=None, help="directory searched first for the data sets"
    )
    mode = p.add_argument_group("mode")
    mode.add_argument(
        "--report-only",
        action="store_true",
        help="do not train: re-run the analysis and report on the stored runs",
    )
    mode.add_argument(
        "--no-resume",
        action="store_true",
        help="start a fresh database (the old one and its weights are moved "
        "aside into DIR/previous-<timestamp>/, never deleted)",
    )
    return p


# ----------------------------------------------------------------------------------------------


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise CliError("--device cuda was requested but no CUDA device is available")
    return device


def _selection(args: argparse.Namespace) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None]:
    from pyweightstat.study.config import DATASETS, FAMILIES

    if args.all and (args.datasets or args.families):
        raise CliError("--all cannot be combined with --datasets/--families")
    if args.all:
        return DATASETS, FAMILIES
    for flag, names, allowed in (
        ("--datasets", args.datasets, DATASETS),
        ("--families", args.families, FAMILIES),
    ):
        for n in names or []:
            if n not in allowed:
                raise CliError(f"{flag}: unknown name {n!r}; choose from {','.join(allowed)}")
    if args.datasets is None and args.families is None:
        if args.report_only:
            return None, None
        raise CliError("nothing to run: give --all, or --datasets and/or --families")
    ds = tuple(dict.fromkeys(args.datasets)) if args.datasets else DATASETS
    fam = tuple(dict.fromkeys(args.families)) if args.families else FAMILIES
    return ds, fam


def _check_data(cfg: Any, data_dir: str | None) -> dict[str, Any]:
    """Load (verify + parse) every selected data set once; errors become CliError."""
    from pyweightstat.data import load_dataset

    shapes = {}
    for name in cfg.datasets:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                d = load_dataset(
                    name,
                    data_dir=data_dir,
                    train_size=cfg.data.train_size,
                    test_size=cfg.data.test_size,
                    seed=cfg.data.subset_seed,
                )
        except Exception as exc:
            lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
            msg = " ".join(lines) if lines else type(exc).__name__
            raise CliError(f"data set {name!r} is not usable: {msg}") from None
        shapes[name] = (tuple(d.in_shape), int(d.num_classes))
    return shapes


def _check_runs(runs: Sequence[dict[str, Any]], shapes: dict[str, Any]) -> None:
    """Every run config must be a valid TrainConfig whose model can be built."""
    from pyweightstat.models import build_model
    from pyweightstat.train import TrainConfig

    built: set[str] = set()
    for rc in runs:
        try:
            TrainConfig.from_dict({**rc["train"], "device": "cpu"})
        except (TypeError, ValueError) as exc:
            raise CliError(f"invalid run config in {rc['dataset']}/{rc['family']}: {exc}") from None
        key = f"{rc['dataset']}|{rc['family']}|{sorted(rc['train']['model'].items())}"
        if key in built:
            continue
        built.add(key)
        in_shape, ncls = shapes[rc["dataset"]]
        try:
            build_model(rc["family"], in_shape, ncls, **rc["train"]["model"])
        except (TypeError, ValueError) as exc:
            raise CliError(
                f"models.{rc['family']} {rc['train']['model']} cannot be built for "
                f"{rc['dataset']}: {exc}"
            ) from None


class _Progress:
    """Overall bar (runs, ETA) plus one bar per run in flight (epoch, accuracy)."""

    def __init__(
        self, total: int, done: int, epochs_of: dict[str, int], names: dict[str, str], slots: int
    ) -> None:
        from tqdm.auto import tqdm

        self.tty = sys.stderr.isatty()
        self.tqdm = tqdm
        self.total, self.count = total, done
        self.epochs_of, self.names = epochs_of, names
        self.bar = tqdm(
            total=total,
            initial=done,
            desc="study",
            unit="run",
            disable=not self.tty,
            position=0,
            dynamic_ncols=True,
        )
        self.run_bars: dict[str, Any] = {}
        self.free = list(range(1, slots + 1))
        self.t0 = time.perf_counter()

    def event(self, ev: dict[str, Any]) -> None:
        rid = ev["run_id"]
        if not self.tty:
            return
        if rid not in self.run_bars:
            pos = self.free.pop(0) if self.free else len(self.run_bars) + 1
            self.run_bars[rid] = (
                self.tqdm(
                    total=self.epochs_of.get(rid, 1),
                    desc=self.names.get(rid, rid),
                    unit="epoch",
                    position=pos,
                    leave=False,
                    dynamic_ncols=True,
                ),
                pos,
            )
        if ev["event"] == "epoch":
            b = self.run_bars[rid][0]
            b.update(1)
            acc = ev.get("metrics", {}).get("test_acc")
            if acc is not None:
                b.set_postfix(test_acc=f"{acc:.4f}")

    def finished(self, result: dict[str, Any]) -> None:
        rid = result["run_id"]
        self.count += 1
        if rid in self.run_bars:
            b, pos = self.run_bars.pop(rid)
            b.close()
            self.free.append(pos)
            self.free.sort()
        acc = result.get("metrics", {}).get("test_acc")
        acc_s = "-" if acc is None else f"{acc:.4f}"
        if self.tty:
            self.bar.update(1)
            self.bar.set_postfix(last=f"{self.names.get(rid, rid)} {result['status']} {acc_s}")
        else:
            wall = result.get("timings", {}).get("wall_s", float("nan"))
            print(
                f"[{self.count}/{self.total}] {self.names.get(rid, rid)} {result['status']} "
                f"test_acc={acc_s} ({wall:.1f} s)",
                file=sys.stderr,
                flush=True,
            )
            if result["status"] == "failed":
                err = (result.get("error") or "").strip().splitlines()
                print(f"    error: {err[0] if err else '?'}", file=sys.stderr, flush=True)

    def close(self) -> None:
        for b, _ in self.run_bars.values():
            b.close()
        self.bar.close()


def _run_study(args: argparse.Namespace, cfg: Any, device: str, store: Any) -> float:
    from pyweightstat.study.grid import expand_grid
    from pyweightstat.study.runner import ProcessExecutor, SerialExecutor

    runs = expand_grid(cfg)
    done = store.terminal_run_ids()
    todo = [r for r in runs if r["run_id"] not in done]
    names = {r["run_id"]: f"{r['dataset']}/{r['family']}#{r['index']}" for r in runs}
    epochs = {r["run_id"]: r["train"]["epochs"] for r in runs}
    print(
        f"{PROG}: preset {cfg.name}: {len(runs)} runs in {len(cfg.datasets) * len(cfg.families)}"
        f" cells, {len(runs) - len(todo)} already stored, {len(todo)} to run on {device} "
        f"with {args.workers} worker(s); results in {store.out_dir}",
        file=sys.stderr,
        flush=True,
    )
    t0 = time.perf_counter()
    if not todo:
        return 0.0
    executor = (
        SerialExecutor(args.data_dir, device)
        if args.workers == 1
        else ProcessExecutor(args.workers, args.data_dir, device)
    )
    progress = _Progress(len(runs), len(runs) - len(todo), epochs, names, args.workers)
    try:
        for result in executor.submit(todo, on_event=progress.event):
            store.commit_run(result)
            progress.finished(result)
    finally:
        progress.close()
        executor.close()
        wall = time.perf_counter() - t0
        store.set_meta("wall_s_total", float(store.get_meta("wall_s_total") or 0.0) + wall)
    return wall


def _report(store: Any, cfg: Any) -> dict[str, Path]:
    from pyweightstat.study.analysis import analyze, load_study_data
    from pyweightstat.study.report import build_report

    data = load_study_data(store)
    if not any(r["status"] in ("done", "diverged") for r in data.runs):
        raise CliError(f"no finished runs in {store.db_path} to analyse")
    res = analyze(data, cfg.analysis)
    paths = build_report(
        store.out_dir, data, res, study_config=cfg.to_dict(), wall_s=store.get_meta("wall_s_total")
    )
    runs_csv, stats_csv = store.export_csv()
    paths["runs_csv"], paths["stats_csv"] = runs_csv, stats_csv
    return paths


def _main(args: argparse.Namespace) -> int:
    from pyweightstat.study.config import (
        StudyConfigError,
        apply_overrides,
        load_preset_dict,
        study_config_from_dict,
    )
    from pyweightstat.study.grid import expand_grid
    from pyweightstat.study.store import ResultStore, StoreError

    if args.workers is not None and args.workers < 1:
        raise CliError(f"--workers must be >= 1, got {args.workers}")
    if args.report_only and args.no_resume:
        raise CliError("--report-only cannot be combined with --no-resume")
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        raise CliError(f"--data-dir {args.data_dir} is not a directory")
    datasets, families = _selection(args)
    out = Path(args.out)

    if args.report_only:
        try:
            store = ResultStore(out, must_exist=True)
        except StoreError as exc:
            raise CliError(f"--report-only: {exc}") from None
        with store:
            stored = store.get_meta("study_config")
            try:
                if args.preset is not None:
                    cfg = apply_overrides(load_preset_dict(args.preset), args.config)
                elif stored is not None:
                    cfg = apply_overrides(stored, args.config)
                else:
                    cfg = apply_overrides(load_preset_dict("quick"), args.config)
            except StudyConfigError as exc:
                raise CliError(str(exc)) from None
            paths = _report(store, cfg)
        print(f"{PROG}: report written to {paths['md']} and {paths['html']}", file=sys.stderr)
        return 0

    device = _resolve_device(args.device)
    if args.workers is None:
        args.workers = 1 if device == "cuda" else max(1, min(4, os.cpu_count() or 1))
    preset = args.preset or ("paper" if device == "cuda" else "quick")
    try:
        cfg = apply_overrides(load_preset_dict(preset), args.config)
        cfg = cfg.with_selection(datasets, families)
    except StudyConfigError as exc:
        raise CliError(str(exc)) from None
    runs = expand_grid(cfg)
    shapes = _check_data(cfg, args.data_dir)
    _check_runs(runs, shapes)

    # compatibility with a stored study (before anything is moved or written)
    db = out / "study.sqlite"
    if db.exists() and not args.no_resume:
        with ResultStore(out) as probe:
            old = probe.get_meta("grid_fingerprint")
            if old is not None and old != cfg.grid_fingerprint():
                raise CliError(
                    f"the study in {out} was made with a different grid (preset "
                    f"{(probe.get_meta('study_config') or {}).get('name', '?')!r}); use "
                    "--no-resume to start afresh (old results are moved aside) or another --out"
                )
    try:
        store = ResultStore(out, fresh=args.no_resume)
    except StoreError as exc:
        raise CliError(str(exc)) from None
    with store:
        if store.moved_aside is not None:
            print(f"{PROG}: previous results moved to {store.moved_aside}", file=sys.stderr)
        stored = store.get_meta("study_config")
        merged = cfg
        if stored is not None:  # the report covers every cell stored so far
            ds = tuple(dict.fromkeys([*stored.get("datasets", []), *cfg.datasets]))
            fam = tuple(dict.fromkeys([*stored.get("families", []), *cfg.families]))
            merged = study_config_from_dict(
                {**cfg.to_dict(), "datasets": list(ds), "families": list(fam)}
            )
        store.set_meta("study_config", merged.to_dict())
        store.set_meta("grid_fingerprint", cfg.grid_fingerprint())
        try:
            _run_study(args, cfg, device, store)
        except KeyboardInterrupt:
            n = sum(store.count_runs().values())
            print(
                f"\n{PROG}: interrupted; {n} runs are stored in {store.db_path}. Run the same "
                "command again to resume.",
                file=sys.stderr,
            )
            return EXIT_INTERRUPTED
        counts = store.count_runs()
        paths = _report(store, merged)
    print(
        f"{PROG}: {counts.get('done', 0)} done, {counts.get('diverged', 0)} diverged, "
        f"{counts.get('failed', 0)} failed; report: {paths['md']} / {paths['html']}",
        file=sys.stderr,
    )
    return 0 if counts.get("done", 0) + counts.get("diverged", 0) > 0 else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``pyweightstat-run``.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success, 2 on a usage/config/data error (one line on stderr, nothing trained),
        130 when interrupted, 1 when every run failed.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _main(args)
    except CliError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
