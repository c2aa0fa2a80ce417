"""The scheme benchmark: watermark schemes x datasets (rows) against detectors (columns), cached and resumable.

A grid is a TOML file in ``experiments/grids/`` (datasets, schemes, which are development schemes, seeds, trigger
labels, detectors).  Each (dataset, scheme, seed) is one *target*, trained once through the content-addressed target
cache (``runner.get_target``); each target x detector is one *cell*, a JSON file in ``<cache>/bench_cells/`` written
atomically.  The target is probed once (surrogate, clean evaluation inputs, embedded and fresh triggers) and every
detector of the grid is fitted and evaluated on those probes, so a detector column costs its fit alone.  A run killed
at any point redoes only the unfinished cells of one target.

Profile: the CPU profile of ``reproduce`` (ResNet-18; 2 epochs on Fashion-MNIST, 3 on mnist-10k; triggers seen x20
per epoch; DCGAN 25 / 10 epochs; the paper's 500 surrogate images).
"""

from __future__ import annotations

import time
import tomllib
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from dnnpiracy.attack import default_detector, fit_detector, make_cam, resolve_spec
from dnnpiracy.config import DetectorConfig, GanConfig, TrainConfig, TriggerConfig, paper_tau
from dnnpiracy.data import Dataset, load_dataset, make_splits
from dnnpiracy.evaluation.evaluate import evaluate, inspect_sets
from dnnpiracy.experiments.executor import RayOptions, map_jobs
from dnnpiracy.experiments.removal_cells import RemovalCell, removal_path, run_removals
from dnnpiracy.experiments.reproduce import PROFILES, compute_device
from dnnpiracy.experiments.runner import config_key, default_cache_dir, get_target
from dnnpiracy.io import git_commit, read_json, write_json
from dnnpiracy.models import arch_info
from dnnpiracy.watermark import fresh_triggers_for, verification_chance

CPU = PROFILES["cpu"]
CELL_DIR = "bench_cells"


def load_grid(name: str) -> dict:
    """A grid by name (``schemes``, ``selection``) or a path to a TOML file of the same shape."""
    path = Path(name)
    if path.suffix == ".toml" and path.exists():
        text = path.read_text()
    else:
        try:
            text = resources.files("dnnpiracy.experiments.grids").joinpath(f"{name}.toml").read_text()
        except FileNotFoundError:
            raise ValueError(f"unknown grid {name!r}: give schemes, selection or a .toml path") from None
    grid = tomllib.loads(text)
    grid.setdefault("name", path.stem if path.suffix == ".toml" else name)
    missing = {"datasets", "schemes", "development", "seeds", "trigger_labels", "detectors"} - set(grid)
    if missing:
        raise ValueError(f"grid {name!r} lacks {', '.join(sorted(missing))}")
    if len(grid["trigger_labels"]) != len(grid["seeds"]):
        raise ValueError(f"grid {name!r}: one trigger label per seed ({len(grid['seeds'])} seeds, "
                         f"{len(grid['trigger_labels'])} labels)")
    for d in grid["detectors"]:
        if d != "default":
            resolve_spec(d)          # an unknown detector fails here, before any training
    for r in grid.get("removals", []):        # removal columns (the peers grid), checked before any training
        RemovalCell(None, r, "surrogate")
    for data in grid.get("removal_data", ["surrogate"]):
        RemovalCell(None, "ftal", data)
    return grid


@dataclass(frozen=True)
class SchemeTarget:
    """One trained target of the grid: a dataset, a watermark scheme (None = the unwatermarked baseline), a seed,
    and how it is trained and attacked (the CPU profile unless the grid says otherwise)."""

    dataset: str
    scheme: str | None
    seed: int
    trigger_label: int
    train: TrainConfig
    surrogate_fraction: float       # the attacker's labelled share of the test set
    gan_epochs: int                 # the paper detector's DCGAN epochs

    def trigger_config(self) -> TriggerConfig | None:
        if self.scheme is None:
            return None
        return TriggerConfig(trigger_label=self.trigger_label, seed=self.seed, scheme=self.scheme)

    def splits(self, ds: Dataset):
        """The attacker's split (surrogate / evaluation), seeded by the seed."""
        return make_splits(ds.test_y, self.surrogate_fraction, self.seed)

    def target_splits(self, ds: Dataset):
        """The split the target is keyed by (the paper's 5 %; training never sees the test set)."""
        return make_splits(ds.test_y, DetectorConfig.surrogate_fraction, self.seed)


def make_target(grid: dict, dataset: str, scheme: str | None, seed: int, label: int) -> SchemeTarget:
    """A grid's target: the CPU profile of ``reproduce`` unless the grid sets ``arch``, ``lr``, ``epochs``,
    ``surrogate_fraction`` or ``gan_epochs`` (the last three per dataset)."""
    train = TrainConfig(arch=grid.get("arch", "resnet18"), epochs=grid.get("epochs", {}).get(dataset,
                        CPU.epochs.get(dataset, 3)), lr=grid.get("lr", TrainConfig.lr), seed=seed,
                        trigger_oversample=20)
    return SchemeTarget(dataset, scheme, seed, label, train,
                        grid.get("surrogate_fraction", {}).get(dataset, CPU.surrogate_fraction(dataset)),
                        grid.get("gan_epochs", {}).get(dataset, CPU.gan_epochs.get(dataset, 10)))


@dataclass(frozen=True)
class BenchCell:
    target: SchemeTarget
    detector: str                    # a design name ("default" is resolved before a cell is made)
    target_fpr: float = 0.01
    fpr_confidence: float | None = DetectorConfig.fpr_confidence

    def key(self) -> str:
        d = {**asdict(self.target), "detector": self.detector, "target_fpr": self.target_fpr,
             "fpr_confidence": self.fpr_confidence, "v": 1}
        if resolve_spec(self.detector).rule == "paper":
            del d["target_fpr"], d["fpr_confidence"]
        else:
            del d["gan_epochs"]
        return config_key(d)


def grid_targets(grid: dict) -> list[SchemeTarget]:
    """Targets in the order they are built: seed by seed, each dataset's schemes (the development schemes first)."""
    order = [s for s in grid["schemes"] if s in grid["development"]] + \
            [s for s in grid["schemes"] if s not in grid["development"]]
    out = []
    for seed, label in zip(grid["seeds"], grid["trigger_labels"]):
        for dataset in grid["datasets"]:
            out += [make_target(grid, dataset, s, seed, label) for s in order]
    if grid.get("clean_baseline"):
        out += [make_target(grid, d, None, seed, label) for seed, label in zip(grid["seeds"], grid["trigger_labels"])
                for d in grid["datasets"]]
    return out


def designs(grid: dict, dataset: str) -> list[str]:
    return list(dict.fromkeys(default_detector(dataset) if d == "default" else d for d in grid["detectors"]))


def cell_path(cache_dir: Path, cell: BenchCell) -> Path:
    return cache_dir / CELL_DIR / f"{cell.key()}.json"


def run_target(t: SchemeTarget, dets: list[str], ds: Dataset, cache_dir: Path, progress: bool = False,
               log=print, removals: tuple[RemovalCell, ...] = ()) -> list[dict]:
    """Train (or reuse) the target, then fit and evaluate every detector of ``dets`` and run every removal attack of
    ``removals`` whose cell is not cached."""
    cells = [BenchCell(t, d) for d in dets]
    todo = [c for c in cells if not cell_path(cache_dir, c).exists()]
    removal_todo = [c for c in removals if not removal_path(cache_dir, c).exists()]
    if todo or removal_todo:        # the target is trained or loaded once for both kinds of cell
        trigger = t.trigger_config()
        t0 = time.perf_counter()
        target = get_target(ds, t.target_splits(ds), t.train, trigger, cache_dir, progress, log)
        target_seconds = time.perf_counter() - t0
        splits = t.splits(ds)
        fresh = fresh_triggers_for(ds, splits, trigger, model=target.model)
    if todo:
        info = arch_info(t.train.arch, t.train.stem)
        sur, ev = splits.surrogate_idx, splits.evaluation_idx
        cam = make_cam(target.model, info)
        t0 = time.perf_counter()
        probes = {"surrogate": cam(ds.test_x[sur]), "clean": cam(ds.test_x[ev]),
                  "triggers": cam(target.triggers.images),
                  "fresh": cam(fresh.images)}
        probe_seconds = time.perf_counter() - t0
        for cell in todo:
            out = _run_cell(cell, ds, target, fresh, splits, probes, info)
            out.update(probe_seconds=probe_seconds, target_seconds=target_seconds)
            write_json(cell_path(cache_dir, cell), out)
    if removal_todo:
        run_removals(removal_todo, ds, target, fresh, splits, cache_dir)
    return [read_json(cell_path(cache_dir, c)) for c in cells] + [read_json(removal_path(cache_dir, c))
                                                                   for c in removals]


def _run_cell(cell: BenchCell, ds, target, fresh, splits, probes, info) -> dict:
    t = cell.target
    t0 = time.perf_counter()
    sur, ev = splits.surrogate_idx, splits.evaluation_idx
    cfg = DetectorConfig(detector=cell.detector, seed=t.seed, target_fpr=cell.target_fpr,
                         fpr_confidence=cell.fpr_confidence, gan=GanConfig(epochs=t.gan_epochs))
    det = fit_detector(target.model, info, ds.test_x[sur], ds.test_y[sur], cfg, paper_tau(ds.name),
                       ds.num_classes, probe=probes["surrogate"])
    c, tr, f = inspect_sets(det, ds.test_x[ev], ds.test_y[ev], target.triggers, fresh, probes)
    m = evaluate(det, c, tr, f, t.trigger_label, "uniform-other", t.seed,
                 chance=verification_chance(t.trigger_config(), ds.num_classes))
    scores = {name: [float(f"{v:.6g}") for v in s.inspection.scores.tolist()] for name, s in
              (("clean", c), ("triggers", tr), ("fresh", f))}
    out = {"cell": {**asdict(t), "detector": cell.detector, "target_fpr": cell.target_fpr,
                    "fpr_confidence": cell.fpr_confidence},
           "rule": det.spec.rule, "metrics": m,
           "target_report": {k: target.report.get(k) for k in ("test_accuracy", "evaluation_accuracy",
                                                              "trigger_accuracy", "fresh_trigger_accuracy",
                                                              "wall_seconds")},
           "scores": scores, "fit_seconds": det.fit_info["fit_seconds"],
           "seconds": time.perf_counter() - t0,
           "device": compute_device(target.model), "git_commit": git_commit(), "dataset_note": ds.note}
    return out


def run_grid(grid: dict, cache_dir: Path | None = None, targets_only: bool = False, progress: bool = True,
             log=print, only_datasets: tuple[str, ...] = (), only_seeds: tuple[int, ...] = (),
             detectors: tuple[str, ...] = (), executor: str = "local", ray_options: RayOptions | None = None) -> dict:
    """Build every target of ``grid`` and (unless ``targets_only``) every cell, one job per target, in this process
    or as Ray tasks (``executor``).  Returns {"cells": [...], "failed": [...], "seconds": wall}; a target that fails
    is reported with its error and the rest go on."""
    cache_dir = Path(cache_dir or default_cache_dir())
    t0 = time.perf_counter()
    jobs = [(t, [] if targets_only or t.scheme is None else
             [d for d in designs(grid, t.dataset) if not detectors or d in detectors], str(cache_dir),
             () if targets_only or t.scheme is None or detectors else removal_cells(grid, t))
            for t in grid_targets(grid)
            if (not only_datasets or t.dataset in only_datasets) and (not only_seeds or t.seed in only_seeds)]
    results, failed = map_jobs(target_job, jobs, executor, ray_options, progress, f"grid {grid['name']}",
                               label=lambda j: f"{j[0].dataset} {j[0].scheme or 'clean'} seed {j[0].seed}", log=log)
    if not targets_only:        # the owner's test on the unwatermarked targets (experiments/independent.py)
        from dnnpiracy.experiments.independent import annotate_grid
        annotate_grid(grid, cache_dir, log)
    return {"cells": [c for r in results for c in r], "failed": failed, "seconds": time.perf_counter() - t0}


def removal_cells(grid: dict, t: SchemeTarget) -> tuple[RemovalCell, ...]:
    """The removal cells of a target: every removal attack of the grid with every kind of attacker data."""
    return tuple(RemovalCell(t, r, data) for data in grid.get("removal_data", ["surrogate"])
                 for r in grid.get("removals", []))


def target_job(job: tuple) -> list[dict]:
    """One job of the grid: train or reuse the target, then compute its missing cells (``dets`` and the removal
    cells; none: only the target).  Module-level, so a Ray worker can import it."""
    t, dets, cache_dir = job[:3]
    removals = job[3] if len(job) > 3 else ()
    cache = Path(cache_dir)
    if (dets or removals) and all(cell_path(cache, BenchCell(t, d)).exists() for d in dets) and \
            all(removal_path(cache, c).exists() for c in removals):
        return [read_json(cell_path(cache, BenchCell(t, d))) for d in dets] + \
            [read_json(removal_path(cache, c)) for c in removals]
    ds = _dataset(t.dataset)
    if not dets and not removals:
        get_target(ds, t.target_splits(ds), t.train, t.trigger_config(), cache, False, lambda _m: None)
        return []
    return run_target(t, dets, ds, cache, False, lambda _m: None, removals)


@lru_cache(maxsize=2)
def _dataset(name: str) -> Dataset:
    return load_dataset(name)


__all__ = ["load_grid", "SchemeTarget", "BenchCell", "grid_targets", "designs", "run_target", "run_grid",
           "cell_path", "CELL_DIR", "removal_cells", "render"]


def render(*args, **kwargs):
    """The grid's report from the cached cells (``benchmark_render.render``)."""
    from dnnpiracy.experiments.benchmark_render import render as _render
    return _render(*args, **kwargs)
