"""A table's grid of cells (one target x one detector, evaluated at every threshold of the sweep): their cache
keys, the subset a run may take (:class:`CellFilter`), and computing one (cached as ``cells/<key>.json``)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from dnnpiracy.attack import default_detector, fit_detector, make_cam, resolve_spec
from dnnpiracy.config import DetectorConfig, GanConfig, TrainConfig, TriggerConfig
from dnnpiracy.data import Dataset, Splits, make_splits
from dnnpiracy.evaluation.evaluate import evaluate, inspect_sets
from dnnpiracy.experiments.profiles import Profile
from dnnpiracy.experiments.runner import config_key, get_target
from dnnpiracy.io import git_commit, read_json, write_json
from dnnpiracy.models import arch_info
from dnnpiracy.watermark import fresh_triggers_for, verification_chance


@dataclass(frozen=True)
class Cell:
    """One target x one detector; evaluated at every threshold of the table's sweep."""

    dataset: str
    arch: str
    trigger_label: int
    blocks: int
    seed: int
    detector: str
    train: TrainConfig
    gan_epochs: int
    taus: tuple[float, ...] = ()           # the sweep is part of the key: a cell stores one result per value
    target_fprs: tuple[float, ...] = ()
    surrogate_fraction: float = DetectorConfig.surrogate_fraction
    calibration_folds: int = DetectorConfig.calibration_folds   # calibrated rule's cross-fitting (0 = leave-one-out)
    fpr_confidence: float | None = DetectorConfig.fpr_confidence  # calibrated: FPR <= target in this share
    scheme: str = "content"                 # the owner's watermark scheme (the paper's discs by default)

    def key(self) -> str:
        d = asdict(self)
        if d["scheme"] == "content":          # the paper's cells keep the keys they had before schemes
            del d["scheme"]
        if d["surrogate_fraction"] == 0.05:    # cells at the paper's 5 % keep the keys they had before the field
            del d["surrogate_fraction"]
        if d["fpr_confidence"] is None:        # cells of the average-only rule keep the keys they had before the field
            del d["fpr_confidence"]
        if resolve_spec(self.detector).rule == "paper":   # the paper rule cross-fits nothing, calibrates nothing
            del d["calibration_folds"]
            d.pop("fpr_confidence", None)
        else:                                             # a calibrated detector trains no GAN
            del d["gan_epochs"]
        return config_key({**d, "v": 1})

    def splits(self, ds: Dataset) -> Splits:
        """The cell's surrogate / evaluation split of the test set (seeded by the cell's seed)."""
        return make_splits(ds.test_y, self.surrogate_fraction, self.seed)

    def target_splits(self, ds: Dataset) -> Splits:
        """The split the cell's target is keyed by: always the paper's 5 % (its report's evaluation accuracy and its
        stored fresh triggers use it).  Training never sees the test set, so cells that give the attacker another
        share of it reuse the same trained target; they draw their own split and fresh triggers (``run_cell``)."""
        return make_splits(ds.test_y, DetectorConfig.surrogate_fraction, self.seed)

    def trigger_config(self) -> TriggerConfig:
        """The owner's watermark of the cell's target (seeded by the cell's seed)."""
        return TriggerConfig(trigger_label=self.trigger_label, blocks=self.blocks, seed=self.seed, scheme=self.scheme)


@dataclass(frozen=True)
class CellFilter:
    """A subset of a table's grid (empty = any): splits one table over processes or machines."""

    archs: frozenset[str] = frozenset()
    seeds: frozenset[int] = frozenset()
    blocks: frozenset[int] = frozenset()
    labels: frozenset[int] = frozenset()
    detectors: frozenset[str] = frozenset()   # design names, or "default" (the cell's dataset's default)

    def __call__(self, cell: Cell) -> bool:
        return ((not self.archs or cell.arch in self.archs) and (not self.seeds or cell.seed in self.seeds)
                and (not self.blocks or cell.blocks in self.blocks)
                and (not self.labels or cell.trigger_label in self.labels)
                and (not self.detectors or cell.detector in {default_detector(cell.dataset) if d == "default" else d
                                                             for d in self.detectors}))


def table_cells(spec: dict, profile: Profile, dataset_name: str) -> list[Cell]:
    cells = []
    named = [default_detector(dataset_name) if d == "default" else d for d in spec["detectors"]]
    designs = list(dict.fromkeys(named))      # the cache key names the design; "default" may repeat one
    for arch in spec["archs"]:
        used = arch if (spec["id"] == "3" and profile.keep_archs) else profile.arch_map.get(arch, arch)
        for label in spec["trigger_labels"]:
            for blocks in spec["blocks"]:
                for seed in spec["seeds"]:
                    train = TrainConfig(arch=used, epochs=profile.epochs[dataset_name], seed=seed,
                                        trigger_oversample=20)
                    for det in designs:
                        cells.append(Cell(dataset_name, used, label, blocks, seed, det, train,
                                          profile.gan_epochs[dataset_name], tuple(spec["taus"]),
                                          tuple(spec.get("target_fprs", [0.01])),
                                          profile.surrogate_fraction(dataset_name),
                                          fpr_confidence=profile.fpr_confidence,
                                          scheme=spec.get("scheme", "content")))
    return cells


def run_cell(cell: Cell, spec: dict, ds: Dataset, cache_dir: Path, progress: bool, log) -> dict:
    """Train/reuse the target, fit the detector once, evaluate at every tau (paper rule) or target FPR
    (calibrated rule).  Cached as cells/<key>.json."""
    path = cache_dir / "cells" / f"{cell.key()}.json"
    if path.exists():
        return read_json(path)
    t0 = time.perf_counter()
    splits = cell.splits(ds)
    trigger = cell.trigger_config()
    t_target = time.perf_counter()
    target = get_target(ds, cell.target_splits(ds), cell.train, trigger, cache_dir, progress, log)
    target_seconds = time.perf_counter() - t_target      # training, when this cell built the target; else loading
    fresh = fresh_triggers_for(ds, splits, trigger, model=target.model)  # this cell's evaluation split, not surrogate
    info = arch_info(cell.arch, cell.train.stem)
    sur, ev = splits.surrogate_idx, splits.evaluation_idx
    taus = list(cell.taus)
    cfg = DetectorConfig(detector=cell.detector, seed=cell.seed, gan=GanConfig(epochs=cell.gan_epochs),
                         calibration_folds=cell.calibration_folds, fpr_confidence=cell.fpr_confidence)
    det = fit_detector(target.model, info, ds.test_x[sur], ds.test_y[sur], cfg, taus[0], ds.num_classes)
    cam = make_cam(target.model, info)
    probes = {"clean": cam(ds.test_x[ev]), "triggers": cam(target.triggers.images),
              "fresh": cam(fresh.images)}
    if det.spec.rule == "paper":
        variants = [("tau", t, det.with_tau(t)) for t in taus]
    else:
        fprs = list(cell.target_fprs)
        variants = [("target_fpr", a, det.with_target_fpr(a)) for a in fprs]
    results, scores = [], None
    for kind, value, d in variants:
        c, t, f = inspect_sets(d, ds.test_x[ev], ds.test_y[ev], target.triggers, fresh, probes)
        if scores is None:   # the scores do not depend on the threshold: kept once, for the ROC figures
            scores = {name: [float(f"{v:.6g}") for v in s.inspection.scores.tolist()]
                      for name, s in (("clean", c), ("triggers", t), ("fresh", f))}
        m = evaluate(d, c, t, f, cell.trigger_label, "uniform", cell.seed,
                     chance=verification_chance(trigger, ds.num_classes))
        results.append({kind: value, **{k: m[k] for k in (
            "fpr", "fnr", "fnr_fresh", "auroc", "tpr_at_1pct_fpr", "target_test_accuracy", "pirated_test_accuracy",
            "accuracy_loss", "target_trigger_accuracy", "pirated_trigger_accuracy", "n_clean", "n_triggers")},
            "k_fp": round(m["fpr"] * m["n_clean"]), "k_fn": round(m["fnr"] * m["n_triggers"])})
    out = {"cell": {**asdict(cell), "train": asdict(cell.train)}, "detector_name": det.name, "rule": det.spec.rule,
           "target_report": {k: target.report.get(k) for k in ("test_accuracy", "trigger_accuracy",
                                                              "fresh_trigger_accuracy", "train_seconds",
                                                              "wall_seconds")},
           "results": results, "scores": scores, "fit_seconds": det.fit_info["fit_seconds"],
           "seconds": time.perf_counter() - t0, "target_seconds": target_seconds,
           "device": compute_device(target.model),
           "git_commit": git_commit(), "dataset_note": ds.note}
    write_json(path, out)
    return out


def compute_device(model: torch.nn.Module) -> str:
    """Where a cell ran, for its wall time: the GPU's name, or the CPU with its thread count."""
    dev = next(model.parameters()).device
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"cpu ({torch.get_num_threads()} threads)"
