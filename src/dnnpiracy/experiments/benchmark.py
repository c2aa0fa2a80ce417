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
from importlib import resources
from pathlib import Path

from tqdm.auto import tqdm

from dnnpiracy.attack import default_detector, fit_detector, make_cam, resolve_spec
from dnnpiracy.config import DetectorConfig, GanConfig, TrainConfig, TriggerConfig, paper_tau
from dnnpiracy.data import Dataset, load_dataset, make_splits
from dnnpiracy.evaluation.evaluate import evaluate, inspect_sets
from dnnpiracy.experiments.reproduce import PROFILES, compute_device
from dnnpiracy.experiments.runner import config_key, default_cache_dir, get_target
from dnnpiracy.io import git_commit, read_json, write_json
from dnnpiracy.models import arch_info
from dnnpiracy.watermark import fresh_triggers_for, get_scheme

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
    return grid


@dataclass(frozen=True)
class SchemeTarget:
    """One trained target of the grid: a dataset, a watermark scheme (None = the unwatermarked baseline), a seed."""

    dataset: str
    scheme: str | None
    seed: int
    trigger_label: int

    @property
    def train(self) -> TrainConfig:
        return TrainConfig(arch="resnet18", epochs=CPU.epochs[self.dataset], seed=self.seed, trigger_oversample=20)

    def trigger_config(self) -> TriggerConfig | None:
        if self.scheme is None:
            return None
        return TriggerConfig(trigger_label=self.trigger_label, seed=self.seed, scheme=self.scheme)

    def splits(self, ds: Dataset):
        """The attacker's split: the paper's 500 surrogate images, seeded by the seed."""
        return make_splits(ds.test_y, CPU.surrogate_fraction(ds.name), self.seed)

    def target_splits(self, ds: Dataset):
        return make_splits(ds.test_y, DetectorConfig.surrogate_fraction, self.seed)


@dataclass(frozen=True)
class BenchCell:
    target: SchemeTarget
    detector: str                    # a design name ("default" is resolved before a cell is made)
    target_fpr: float = 0.01
    fpr_confidence: float | None = DetectorConfig.fpr_confidence

    def key(self) -> str:
        d = {**asdict(self.target), "train": asdict(self.target.train), "detector": self.detector,
             "target_fpr": self.target_fpr, "fpr_confidence": self.fpr_confidence,
             "surrogate_fraction": CPU.surrogate_fraction(self.target.dataset), "v": 1}
        if resolve_spec(self.detector).rule == "paper":
            d["gan_epochs"] = CPU.gan_epochs[self.target.dataset]
            del d["target_fpr"], d["fpr_confidence"]
        return config_key(d)


def grid_targets(grid: dict) -> list[SchemeTarget]:
    """Targets in the order they are built: seed by seed, each dataset's schemes (the development schemes first)."""
    order = [s for s in grid["schemes"] if s in grid["development"]] + \
            [s for s in grid["schemes"] if s not in grid["development"]]
    out = []
    for seed, label in zip(grid["seeds"], grid["trigger_labels"]):
        for dataset in grid["datasets"]:
            out += [SchemeTarget(dataset, s, seed, label) for s in order]
    if grid.get("clean_baseline"):
        out += [SchemeTarget(d, None, seed, label) for seed, label in zip(grid["seeds"], grid["trigger_labels"])
                for d in grid["datasets"]]
    return out


def designs(grid: dict, dataset: str) -> list[str]:
    return list(dict.fromkeys(default_detector(dataset) if d == "default" else d for d in grid["detectors"]))


def cell_path(cache_dir: Path, cell: BenchCell) -> Path:
    return cache_dir / CELL_DIR / f"{cell.key()}.json"


def run_target(t: SchemeTarget, dets: list[str], ds: Dataset, cache_dir: Path, progress: bool = False,
               log=print) -> list[dict]:
    """Train (or reuse) the target, then fit and evaluate every detector of ``dets`` whose cell is not cached."""
    cells = [BenchCell(t, d) for d in dets]
    todo = [c for c in cells if not cell_path(cache_dir, c).exists()]
    if todo:
        trigger = t.trigger_config()
        t0 = time.perf_counter()
        target = get_target(ds, t.target_splits(ds), t.train, trigger, cache_dir, progress, log)
        target_seconds = time.perf_counter() - t0
        splits = t.splits(ds)
        fresh = fresh_triggers_for(ds, splits, trigger)
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
    return [read_json(cell_path(cache_dir, c)) for c in cells]


def _run_cell(cell: BenchCell, ds, target, fresh, splits, probes, info) -> dict:
    t = cell.target
    t0 = time.perf_counter()
    sur, ev = splits.surrogate_idx, splits.evaluation_idx
    cfg = DetectorConfig(detector=cell.detector, seed=t.seed, target_fpr=cell.target_fpr,
                         fpr_confidence=cell.fpr_confidence, gan=GanConfig(epochs=CPU.gan_epochs[t.dataset]))
    det = fit_detector(target.model, info, ds.test_x[sur], ds.test_y[sur], cfg, paper_tau(ds.name),
                       ds.num_classes, probe=probes["surrogate"])
    c, tr, f = inspect_sets(det, ds.test_x[ev], ds.test_y[ev], target.triggers, fresh, probes)
    m = evaluate(det, c, tr, f, t.trigger_label, "uniform-other", t.seed)
    scores = {name: [float(f"{v:.6g}") for v in s.inspection.scores.tolist()] for name, s in
              (("clean", c), ("triggers", tr), ("fresh", f))}
    out = {"cell": {**asdict(t), "detector": cell.detector, "target_fpr": cell.target_fpr,
                    "fpr_confidence": cell.fpr_confidence, "train": asdict(t.train)},
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
             detectors: tuple[str, ...] = ()) -> dict:
    """Build every target of ``grid`` and (unless ``targets_only``) every cell.  Returns {"cells": [...],
    "failed": [...], "seconds": wall}.  A cell or target that fails is reported with its error; the rest go on."""
    cache_dir = Path(cache_dir or default_cache_dir())
    t0 = time.perf_counter()
    targets = [t for t in grid_targets(grid) if (not only_datasets or t.dataset in only_datasets)
               and (not only_seeds or t.seed in only_seeds)]
    datasets: dict[str, Dataset] = {}
    outs, failed = [], []
    bar = tqdm(targets, desc=f"grid {grid['name']}", unit="target", disable=not progress, mininterval=5)
    for t in bar:
        bar.set_postfix_str(f"{t.dataset} {t.scheme or 'clean'} seed {t.seed}", refresh=False)
        ds = datasets.get(t.dataset) or datasets.setdefault(t.dataset, load_dataset(t.dataset))
        try:
            if targets_only or t.scheme is None:
                get_target(ds, t.target_splits(ds), t.train, t.trigger_config(), cache_dir, False, log)
                continue
            dets = [d for d in designs(grid, t.dataset) if not detectors or d in detectors]
            outs += run_target(t, dets, ds, cache_dir, False, log)
        except Exception as exc:   # noqa: BLE001 - one failed target must not lose the grid
            failed.append({"target": asdict(t), "error": f"{type(exc).__name__}: {exc}"})
            log(f"FAILED {t}: {exc}")
    return {"cells": outs, "failed": failed, "seconds": time.perf_counter() - t0}


def scheme_summary(cfg_scheme: str, dataset: str) -> dict:
    return get_scheme(TriggerConfig(scheme=cfg_scheme), dataset).describe()


__all__ = ["load_grid", "SchemeTarget", "BenchCell", "grid_targets", "designs", "run_target", "run_grid",
           "cell_path", "CELL_DIR", "scheme_summary"]

