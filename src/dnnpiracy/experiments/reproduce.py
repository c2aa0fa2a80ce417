"""The paper's Tables I-V as a cached, resumable grid.

A table is a small TOML file in ``experiments/tables/`` (dataset x trigger labels x archs x blocks x taus x detectors
x seeds, plus the paper's numbers).  A *profile* maps it onto hardware: ``paper`` keeps the paper's hyperparameters,
``cpu`` shrinks what must shrink to fit a 2-core machine and says so in every table.

Caching is content-addressed at two levels: a trained target (keyed by dataset, training and trigger config, split)
is shared by every table that needs it, and a *cell* (target x detector x threshold sweep) is one JSON file written
atomically when finished.  A run killed at any point (even ``kill -9``) redoes only the unfinished cell.
"""

from __future__ import annotations

import math
import statistics
import time
import tomllib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path

import torch
from tqdm.auto import tqdm

from dnnpiracy.attack import default_detector, fit_detector, make_cam, resolve_spec
from dnnpiracy.config import DetectorConfig, GanConfig, TrainConfig, TriggerConfig
from dnnpiracy.data import DataError, Dataset, Splits, load_dataset, make_splits
from dnnpiracy.evaluation.evaluate import evaluate, inspect_sets
from dnnpiracy.evaluation.metrics import wilson_interval
from dnnpiracy.experiments.runner import config_key, default_cache_dir, get_target, target_key
from dnnpiracy.io import ArtifactError, atomic_write_bytes, atomic_write_text, git_commit, read_json, write_json
from dnnpiracy.models import arch_info
from dnnpiracy.watermark import fresh_triggers_for

TABLES = ("1", "2", "3", "4", "5")


@dataclass(frozen=True)
class Profile:
    name: str
    epochs: dict[str, int]            # dataset -> target training epochs
    gan_epochs: dict[str, int]        # dataset -> DCGAN epochs
    arch_map: dict[str, str]          # the paper's arch -> the arch used (tables other than III)
    keep_archs: bool                  # Table III keeps its architectures
    note: str
    # dataset -> the attacker's labelled share of the test set; unlisted datasets take the paper's 5 %
    surrogate_fractions: dict[str, float] = field(default_factory=dict)
    fpr_confidence: float | None = DetectorConfig.fpr_confidence     # the calibrated rule's (None: on average only)

    def surrogate_fraction(self, dataset: str) -> float:
        return self.surrogate_fractions.get(dataset, DetectorConfig.surrogate_fraction)


# The paper's attacker holds 500 labelled test images (5 % of a 10,000-image test set); on mnist-10k that is 25 %.
PAPER_SURROGATE = {"mnist-10k": 0.25}
_PAPER_SURROGATE_NOTE = ("surrogate set = the paper's 500 images (25 % of mnist-10k's 2,000-image test split, 5 % of a "
                         "10,000-image test set)")

PROFILES = {
    "paper": Profile("paper", {"mnist": 15, "mnist-10k": 15, "fashion-mnist": 15},
                     {"mnist": 200, "mnist-10k": 200, "fashion-mnist": 200}, {}, True,
                     "the paper's hyperparameters: ResNet-34 (101/152 in Table III), 15 epochs, batch 128, "
                     "lr 1e-4, DCGAN 200 epochs; triggers oversampled x20 per epoch; " + _PAPER_SURROGATE_NOTE,
                     PAPER_SURROGATE),
    "cpu": Profile("cpu", {"mnist": 2, "mnist-10k": 3, "fashion-mnist": 2},
                   {"mnist": 10, "mnist-10k": 10, "fashion-mnist": 25}, {"resnet34": "resnet18"}, True,
                   "reduced to fit 2 CPU cores: ResNet-18 instead of ResNet-34 (Table III keeps ResNet-34/101/152), "
                   "3 epochs on mnist-10k / 2 on Fashion-MNIST instead of 15, DCGAN 10 epochs on MNIST / 25 on "
                   "Fashion-MNIST instead of 200; "
                   "triggers oversampled x20 per epoch; batch 128, lr 1e-4, tau as the paper; " + _PAPER_SURROGATE_NOTE,
                   PAPER_SURROGATE),
}


def load_table(table: str) -> dict:
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}; choose one of {', '.join(TABLES)} or all")
    text = resources.files("dnnpiracy.experiments.tables").joinpath(f"table{table}.toml").read_text()
    spec = tomllib.loads(text)
    spec["id"] = table
    return spec


def resolve_dataset(name: str, data_dir: str | None) -> Dataset:
    """'mnist' means the full MNIST when its files are present or downloadable, else mnist-10k (and says so)."""
    if name == "mnist":
        try:
            return load_dataset("mnist", data_dir, download=True)
        except DataError:
            return load_dataset("mnist-10k", data_dir)
    return load_dataset(name, data_dir)


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


def table_stem(spec: dict) -> str:
    """The file stem of a table's outputs: ``table<N>``, or ``table<N>-<scheme>`` for another watermark scheme."""
    scheme = spec.get("scheme", "content")
    return f"table{spec['id']}" + ("" if scheme == "content" else f"-{scheme}")


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
    fresh = fresh_triggers_for(ds, splits, trigger)       # from this cell's evaluation split, never its surrogate
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
        m = evaluate(d, c, t, f, cell.trigger_label, "uniform", cell.seed)
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


def _mean_std(xs: list[float]) -> tuple[float, float]:
    xs = [x for x in xs if x == x]
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def aggregate(spec: dict, profile: Profile, cells: list[Cell], outs: list[dict]) -> list[dict]:
    """One row per (configuration, detector, threshold) with mean/std over seeds and pooled Wilson intervals."""
    groups: dict[tuple, list[tuple[dict, dict]]] = {}
    for cell, out in zip(cells, outs):
        for r in out["results"]:
            thr_kind = "tau" if "tau" in r else "target_fpr"
            key = (cell.arch, cell.trigger_label, cell.blocks, out["detector_name"], thr_kind, r[thr_kind])
            groups.setdefault(key, []).append((cell, r, out))
    rows = []
    for (arch, label, blocks, det, thr_kind, thr), items in groups.items():
        rs = [r for _, r, _ in items]
        k_fp, n_fp = sum(r["k_fp"] for r in rs), sum(r["n_clean"] for r in rs)
        k_fn, n_fn = sum(r["k_fn"] for r in rs), sum(r["n_triggers"] for r in rs)
        fpr_m, fpr_s = _mean_std([r["fpr"] for r in rs])
        fnr_m, fnr_s = _mean_std([r["fnr"] for r in rs])
        pkey = {"1": str(label), "2": str(label), "3": arch, "4": str(blocks),
                "5": str(float(thr)) if thr_kind == "tau" else None}.get(spec["id"])
        paper = spec.get("paper", {}).get(pkey) if pkey is not None else None
        rows.append({
            "table": spec["id"], "dataset": items[0][0].dataset, "trigger_label": label, "arch": arch,
            "blocks": blocks, "tau": thr if thr_kind == "tau" else None,
            "target_fpr": thr if thr_kind == "target_fpr" else None,
            "fpr_confidence": items[0][0].fpr_confidence if thr_kind == "target_fpr" else None,
            "detector": det, "profile": profile.name,
            "seeds": sorted({c.seed for c, _, _ in items}),
            "target_test_accuracy": _mean_std([r["target_test_accuracy"] for r in rs])[0],
            "target_trigger_accuracy": _mean_std([r["target_trigger_accuracy"] for r in rs])[0],
            "fpr_mean": fpr_m, "fpr_std": fpr_s, "fpr_ci95": wilson_interval(k_fp, n_fp),
            "fnr_mean": fnr_m, "fnr_std": fnr_s, "fnr_ci95": wilson_interval(k_fn, n_fn),
            "fnr_fresh_mean": _mean_std([r["fnr_fresh"] for r in rs])[0],
            "auroc_mean": _mean_std([r["auroc"] for r in rs])[0],
            "accuracy_loss_mean": _mean_std([r["accuracy_loss"] for r in rs])[0],
            "paper_test_accuracy": paper[0] if paper else None,
            "paper_fpr": paper[2] if paper else None, "paper_fnr": paper[3] if paper else None,
        })
    return rows


def _f(v, p=3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{p}f}"


def _rate(r: dict, key: str, p: int) -> str:
    lo, hi = r[f"{key}_ci95"]
    return f"{_f(r[f'{key}_mean'], p)} +- {_f(r[f'{key}_std'], p)} [{_f(lo, p)}, {_f(hi, p)}]"


def _threshold(r: dict) -> str:
    if r["tau"] is not None:
        return f"tau {r['tau']}"
    conf = r.get("fpr_confidence")
    return f"target FPR {r['target_fpr']}" + (f" ({conf:.0%} confidence)" if conf else " (on average)")


# the bar for the default detector, per dataset: (max FPR, max FNR), each on the mean over seeds
BARS = {"mnist": (0.01, 0.01), "mnist-10k": (0.01, 0.01), "fashion-mnist": (0.01, 0.2)}
# rates are ratios of counts: 9 misses in 45 is FNR 0.2 exactly, but 9/45 in floating point is 0.2000000000000000111
# (and float32 rates are off by ~1e-8).  Counts of at most ~10^5 put distinct rates >= 1e-5 apart, so 1e-6 admits
# only rounding.
BAR_TOLERANCE = 1e-6


def within_bar(fpr, fnr, dataset: str):
    """FPR and FNR at or under the bar for ``dataset`` (up to floating-point rounding).  Floats give a bool;
    tensors of per-draw rates give a bool tensor, element by element."""
    max_fpr, max_fnr = BARS[dataset]
    return (fpr <= max_fpr + BAR_TOLERANCE) & (fnr <= max_fnr + BAR_TOLERANCE)


def bar_summary(rows: list[dict], detector: str, target_fpr: float = 0.01) -> dict | None:
    """Does ``detector`` (at ``target_fpr``) meet the dataset's bar in every configuration of the table?"""
    mine = [r for r in rows if r["detector"] == detector and r["target_fpr"] == target_fpr]
    if not mine or mine[0]["dataset"] not in BARS:
        return None
    max_fpr, max_fnr = BARS[mine[0]["dataset"]]
    worst_fpr = max(r["fpr_mean"] for r in mine)
    worst_fnr = max(r["fnr_mean"] for r in mine)
    failing = [r for r in mine if not within_bar(r["fpr_mean"], r["fnr_mean"], r["dataset"])]
    return {"detector": detector, "target_fpr": target_fpr, "bar_fpr": max_fpr, "bar_fnr": max_fnr,
            "configurations": len(mine), "worst_fpr_mean": worst_fpr, "worst_fnr_mean": worst_fnr,
            "mean_fpr": statistics.fmean(r["fpr_mean"] for r in mine),
            "mean_fnr": statistics.fmean(r["fnr_mean"] for r in mine),
            "failing": [(r["trigger_label"], r["arch"], r["blocks"]) for r in failing], "met": not failing}


def _compute(meta: dict) -> str:
    c = meta.get("compute_seconds")
    if not c:   # rendered before the split was recorded
        return f"{meta['cell_seconds']:.0f} s summed over the cells (target training included where a cell built it)"
    return (f"{c['total']:.0f} s ({c['total'] / 3600:.1f} h) = detectors {c['detectors']:.0f} s + "
            f"{c['n_targets']} targets {c['targets']:.0f} s")


def table_markdown(spec: dict, profile: Profile, rows: list[dict], meta: dict) -> str:
    """One line per configuration with the paper's numbers and every detector side by side (Table V, whose
    detectors sweep different thresholds, gets one line per detector and threshold instead)."""
    default = default_detector(rows[0]["dataset"] if rows else None)
    lines = [f"# Table {spec['id']}: {spec['title']}", "",
             f"Profile `{profile.name}`: {profile.note}.", "",
             f"Dataset: {meta['dataset_note']}", "",
             *([f"Surrogate set: {meta['surrogate_size']} labelled test images per seed "
                f"({meta['surrogate_fraction']:g} of the test set, stratified); the rest of the test set is the clean "
                "evaluation split.", ""]
               if meta.get("surrogate_size") else []),
             "Rates are fractions (not percent). FPR over the clean evaluation split (test minus surrogate); FNR over "
             "the 15 embedded trigger inputs. Our columns: mean +- std over the seeds listed in each row, "
             "[Wilson 95 % interval pooled over those seeds]. The paper's detector uses its rule (alpha_y + tau); "
             f"the others a calibrated threshold. `default` is `{default}` on this dataset.", ""]
    dets = sorted({r["detector"] for r in rows}, key=lambda d: (d != "paper", d != default, d))
    side_by_side = spec["id"] != "5"
    if side_by_side:
        configs: dict[tuple, dict[str, dict]] = {}
        for r in rows:
            configs.setdefault((r["trigger_label"], r["arch"], r["blocks"]), {})[r["detector"]] = r
        head = "| label | arch | blocks | seeds | target acc | trigger acc | published: acc, FPR, FNR |"
        sep = "|---|---|---|---|---|---|---|"
        for d in dets:
            name = {"paper": "paper detector", default: "default"}.get(d, d)
            head += f" {name} FPR | {name} FNR | {name} AUROC |"
            sep += "---|---|---|"
        lines += [head, sep]
        for (label, arch, blocks), per in sorted(configs.items()):
            any_r = next(iter(per.values()))
            seeds = sorted({s for r in per.values() for s in r["seeds"]})
            line = (f"| {label} | {arch} | {blocks} | {','.join(map(str, seeds))} | "
                    f"{_f(any_r['target_test_accuracy'])} | {_f(any_r['target_trigger_accuracy'], 2)} | "
                    f"{_f(any_r['paper_test_accuracy'], 4)}, {_f(any_r['paper_fpr'], 2)}, "
                    f"{_f(any_r['paper_fnr'], 2)} |")
            for d in dets:
                r = per.get(d)
                line += (" n/a | n/a | n/a |" if r is None else
                         f" {_rate(r, 'fpr', 4)} | {_rate(r, 'fnr', 3)} | {_f(r['auroc_mean'])} |")
            lines.append(line)
        thr = {d: _threshold(next(r for r in rows if r["detector"] == d)) for d in dets}
        lines += ["", "Thresholds: " + "; ".join(f"{d}: {t}" for d, t in thr.items()) + "."]
    else:
        lines += ["| label | arch | blocks | threshold | paper FPR | paper FNR | detector | seeds | target acc | "
                  "trigger acc | FPR | FNR | AUROC | acc. loss |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        key = lambda r: (r["trigger_label"], r["arch"], r["blocks"], dets.index(r["detector"]),  # noqa: E731
                         r["tau"] if r["tau"] is not None else -1, r["target_fpr"] or 0)
        for r in sorted(rows, key=key):
            lines.append(
                f"| {r['trigger_label']} | {r['arch']} | {r['blocks']} | {_threshold(r)} | {_f(r['paper_fpr'], 4)} | "
                f"{_f(r['paper_fnr'], 2)} | {r['detector']} | {','.join(map(str, r['seeds']))} | "
                f"{_f(r['target_test_accuracy'])} | {_f(r['target_trigger_accuracy'], 2)} | {_rate(r, 'fpr', 4)} | "
                f"{_rate(r, 'fnr', 3)} | {_f(r['auroc_mean'])} | {_f(r['accuracy_loss_mean'], 4)} |")
    bar = meta.get("bar")
    if bar:
        verdict = "met" if bar["met"] else f"NOT met in {len(bar['failing'])} of {bar['configurations']}"
        lines += ["", f"Bar for the default detector on {rows[0]['dataset']} (mean over seeds, every configuration): "
                  f"FPR <= {bar['bar_fpr']} and FNR <= {bar['bar_fnr']} -> {verdict}. Worst FPR "
                  f"{bar['worst_fpr_mean']:.4f}, worst FNR {bar['worst_fnr_mean']:.3f}; averaged over the "
                  f"{bar['configurations']} configurations FPR {bar['mean_fpr']:.4f}, FNR {bar['mean_fnr']:.3f}."]
    lines += ["", f"Cells: {meta['cells_done']}/{meta['cells_total']} finished. Wall time of this invocation "
              f"{meta['wall_seconds']:.0f} s. Compute of the finished cells, each target counted once whenever it "
              f"was built: {_compute(meta)}, on "
              f"{', '.join(meta.get('devices') or ['cpu'])}. "
              f"Command `{meta['command']}`, commit {meta['git_commit']}."
              + (f" Re-rendered from the cache by `{meta['rendered_by']}` at commit {meta.get('rendered_commit')}."
                 if meta.get("rendered_by") else "")]
    return "\n".join(lines) + "\n"


def compute_seconds(cells: list[Cell], outs: list[dict], ds: Dataset, cache_dir: Path) -> dict:
    """What the finished cells cost, each target counted once whichever cell built it (or whether an earlier table
    did): ``detectors`` = the cells' own time less any time they spent obtaining their target (cells written before
    ``target_seconds`` was recorded count whole), ``targets`` = each distinct target's recorded build time
    (``wall_seconds`` of its report: training and the owner's metrics).  A target built on another machine (cells
    merged from a GPU) has no report here: its build time as its cells recorded it counts instead (the report's
    ``wall_seconds``, or ``train_seconds`` in cells written before that was kept; ``n_targets_from_cells`` counts
    these)."""
    detectors = sum(o["seconds"] - o.get("target_seconds", 0.0) for o in outs)
    # the cells of one target differ only in their detector: one representative each, so each split is drawn once
    by_target: dict[tuple, tuple[Cell, list[dict]]] = {}
    for c, o in zip(cells, outs):
        by_target.setdefault((c.train, c.trigger_config(), c.seed), (c, []))[1].append(o)
    targets, found, from_cells = 0.0, 0, 0
    for cell, its_outs in by_target.values():
        report = (cache_dir / "targets" / target_key(ds.name, cell.train, cell.trigger_config(), cell.target_splits(ds))
                  / "report.json")
        if report.exists():
            found += 1
            targets += float(read_json(report).get("wall_seconds", 0.0))
        elif all("target_seconds" in o for o in its_outs):   # older cells count their target inside `seconds`
            built = [o.get("target_report", {}) for o in its_outs]
            secs = next((b.get(k) for k in ("wall_seconds", "train_seconds") for b in built if b.get(k) is not None),
                        None)
            if secs is not None:
                from_cells += 1
                targets += float(secs)
    return {"detectors": detectors, "targets": targets, "total": detectors + targets, "n_targets": found + from_cells,
            "n_targets_from_cells": from_cells}


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


def reproduce(table: str, profile_name: str, out_dir: Path = Path("results"), cache_dir: Path | None = None,
              data_dir: str | None = None, max_cells: int | None = None, progress: bool = True, log=print,
              command: str = "", cached_only: bool = False,
              fpr_confidence: float | None = DetectorConfig.fpr_confidence, only: CellFilter = CellFilter(),
              overwrite: bool = False, scheme: str = "content", executor: str = "local", ray_options=None) -> dict:
    """Run (or resume) one table; write results/table<N>.md and .json from every finished cell (``scheme``: the
    owner's watermark scheme; another than the paper's writes table<N>-<scheme>.*)."""
    if profile_name not in PROFILES:
        raise ValueError(f"unknown profile {profile_name!r}; choose one of {', '.join(PROFILES)}")
    profile = replace(PROFILES[profile_name], fpr_confidence=fpr_confidence)
    spec = load_table(table)
    if scheme != "content":
        spec["scheme"] = scheme
        spec["title"] = f"{spec['title']} (watermark scheme {scheme!r})"
    return reproduce_spec(spec, profile, out_dir, cache_dir, data_dir, max_cells,
                          progress, log, command, cached_only, only, overwrite, executor, ray_options)


def reproduce_spec(spec: dict, profile: Profile, out_dir: Path = Path("results"), cache_dir: Path | None = None,
                   data_dir: str | None = None, max_cells: int | None = None, progress: bool = True, log=print,
                   command: str = "", cached_only: bool = False, only: CellFilter = CellFilter(),
                   overwrite: bool = False, executor: str = "local", ray_options=None) -> dict:
    """Run (or resume) the table's cells in order and render it (``executor="ray"``: the cells are first computed
    as Ray tasks, one per target, then rendered from the cache); ``cached_only`` renders the finished cells alone
    (e.g. cells computed on another machine and merged into the cache) and computes nothing; ``only`` restricts
    both to a subset of the grid.

    An existing ``table<N>.json`` in ``out_dir`` that holds a cell this invocation will not end with (an empty or
    partial cache, another subset, another profile) is not overwritten unless ``overwrite``: a ValueError names the
    counts.  A computing run writes into ``out_dir`` only once it holds every cell the table there held, so a run
    killed before that leaves the table as it was.  A ``cached_only`` render of the same cells keeps the command and
    commit that computed them and records its own beside them."""
    table = spec["id"]
    t0 = time.perf_counter()
    ds = resolve_dataset(spec["dataset"], data_dir)
    cache_dir = Path(cache_dir or default_cache_dir())
    cells = table_cells(spec, profile, ds.name)
    surrogate_size = int(len(cells[0].splits(ds).surrogate_idx)) if cells else 0
    done_cells, outs = [], []
    selected = [c for c in cells if only(c)]
    if not selected:
        raise ValueError(f"no cell of table {table} matches {only}")
    todo = selected if max_cells is None else selected[:max_cells]
    if cached_only:
        todo = [c for c in todo if (cache_dir / "cells" / f"{c.key()}.json").exists()]
    previous = existing_table_meta(out_dir / f"{table_stem(spec)}.json")
    final_keys = {c.key() for c in todo}
    holds_previous, lost = guard_existing(previous, final_keys)
    if lost and not overwrite:
        raise ValueError(
            f"{out_dir / f'{table_stem(spec)}.json'} holds {previous['cells_done']} finished cells; this invocation "
            f"would end with {len(todo)}, without {lost} of them (cache {cache_dir}"
            f"{', --cached-only' if cached_only else ''}{'' if only == CellFilter() else ', a subset of the grid'}): "
            "writing it would lose rows.  Render elsewhere (--out) or pass --overwrite")
    command_meta = {"command": command, "git_commit": git_commit()}
    same_cells = previous is not None and (set(previous["cell_keys"]) == final_keys if "cell_keys" in previous
                                           else previous.get("cells_done") == len(final_keys))
    if cached_only and not overwrite and same_cells and previous.get("command"):
        # a pure re-render of the same cells: the command and commit that computed them stay
        command_meta = {"command": previous["command"], "git_commit": previous.get("git_commit"),
                        "rendered_by": command, "rendered_commit": git_commit()}

    def write_tables() -> tuple[list[dict], dict]:
        """Aggregate every finished cell so far (called after each cell: a killed run leaves a valid table)."""
        rows = aggregate(spec, profile, done_cells, outs)
        meta = {"dataset_note": ds.note, "cells_done": len(outs), "cells_total": len(cells),
                "cell_keys": [c.key() for c in done_cells],
                "surrogate_fraction": profile.surrogate_fraction(ds.name), "surrogate_size": surrogate_size,
                "wall_seconds": time.perf_counter() - t0, "cell_seconds": sum(o["seconds"] for o in outs),
                "compute_seconds": compute_seconds(done_cells, outs, ds, cache_dir),
                "devices": sorted({o.get("device", "cpu (2 threads)") for o in outs}),
                **command_meta, "bar": bar_summary(rows, default_detector(ds.name))}
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / f"{table_stem(spec)}.json", {"rows": rows, "meta": meta, "profile": asdict(profile)})
        atomic_write_text(out_dir / f"{table_stem(spec)}.md", table_markdown(spec, profile, rows, meta))
        return rows, meta

    if executor != "local" and not cached_only:
        compute_remote(spec, todo, data_dir, cache_dir, executor, ray_options, progress, log)
    for cell in tqdm(todo, desc=f"table {table} ({profile.name})", disable=not progress, unit="cell"):
        log_path = cache_dir / "logs" / f"{cell.key()}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a") as fh:
            def cell_log(msg, fh=fh):
                fh.write(msg + "\n")
                fh.flush()
            out = run_cell(cell, spec, ds, cache_dir, False, cell_log)
        done_cells.append(cell)
        outs.append(out)
        if holds_previous({c.key() for c in done_cells}):   # until then the table in out_dir holds more: leave it
            write_tables()
    rows, meta = write_tables()
    write_figures(spec, profile, ds, done_cells, outs, rows, out_dir, cache_dir, train_missing=not cached_only)
    return {"rows": rows, "meta": meta}


def compute_remote(spec: dict, cells: list[Cell], data_dir, cache_dir: Path, executor: str, ray_options, progress,
                   log) -> None:
    """Compute the unfinished ``cells`` through ``executor``, one job per target (no two jobs build one target)."""
    from dnnpiracy.experiments.executor import map_jobs
    groups: dict[tuple, list[Cell]] = {}
    for c in cells:
        if not (cache_dir / "cells" / f"{c.key()}.json").exists():
            groups.setdefault((c.dataset, c.train, c.trigger_config(), c.seed), []).append(c)
    jobs = [(g, spec, data_dir, str(cache_dir)) for g in groups.values()]
    _, failed = map_jobs(cells_job, jobs, executor, ray_options, progress, f"table {spec['id']}",
                         label=lambda j: f"{j[0][0].arch} label {j[0][0].trigger_label} blocks {j[0][0].blocks} "
                                         f"seed {j[0][0].seed}", log=log)
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(jobs)} targets failed; the finished cells are cached: "
                           + "; ".join(f"{f['job']}: {f['error']}" for f in failed))


def cells_job(job: tuple) -> int:
    """One target's cells (module-level, so a Ray worker can import it); returns how many were computed."""
    cells, spec, data_dir, cache_dir = job
    ds = resolve_dataset(spec["dataset"], data_dir)
    for c in cells:
        run_cell(c, spec, ds, Path(cache_dir), False, lambda _m: None)
    return len(cells)


def guard_existing(previous: dict | None, final_keys: set[str]) -> tuple[Callable[[set[str]], bool], int]:
    """For a table already written (``previous``, its meta) and a run that ends with the cells ``final_keys``:
    (whether a set of finished cells holds everything the table holds, how many of its cells the run would drop).
    A table written before the keys were recorded is judged by its count of cells."""
    if previous is None:
        return (lambda done: True), 0
    if "cell_keys" in previous:
        held = set(previous["cell_keys"])
        return (lambda done: held <= done), len(held - final_keys)
    n = int(previous.get("cells_done", 0))
    return (lambda done: len(done) >= n), max(0, n - len(final_keys))


def existing_table_meta(path: Path) -> dict | None:
    """The ``meta`` of a table already written at ``path`` (None when there is none, or it cannot be read: a corrupt
    file holds nothing to lose)."""
    try:
        return read_json(path).get("meta") if path.exists() else None
    except (ArtifactError, AttributeError):
        return None


def write_figures(spec: dict, profile: Profile, ds: Dataset, cells: list[Cell], outs: list[dict], rows: list[dict],
                  out_dir: Path, cache_dir: Path, train_missing: bool = True) -> list[Path]:
    """figures/table<N>_roc.png (every finished cell that kept its scores), table5_sweep.png (FPR/FNR against the
    threshold) and, for the per-label tables, the calibrated detectors' FNR per label (embedded vs fresh triggers)
    and a heatmap gallery of the label-0 seed-0 target (skipped when that
    target is not cached and ``train_missing`` is False)."""
    from dnnpiracy.evaluation.plots import fnr_by_label_figure, heatmap_gallery, roc_figure, threshold_sweep_figure

    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    table, written = spec["id"], []
    curves: dict[str, list] = {}
    for cell, out in zip(cells, outs):
        if out.get("scores"):
            tag = {"3": cell.arch, "4": f"{cell.blocks} blocks"}.get(table, f"label {cell.trigger_label}")
            curves.setdefault(out["detector_name"], []).append(
                (f"{tag}, seed {cell.seed}", out["scores"]["clean"], out["scores"]["triggers"]))
    if curves:
        path = fig_dir / f"{table_stem(spec)}_roc.png"
        atomic_write_bytes(path, roc_figure(curves, f"Table {table} ({ds.name}, profile {profile.name}): ROC, "
                                                    "clean evaluation inputs vs the 15 trigger inputs"))
        written.append(path)
    if table == "5" and rows:
        path = fig_dir / "table5_sweep.png"
        atomic_write_bytes(path, threshold_sweep_figure(
            rows, f"Table V ({ds.name}, profile {profile.name}): FPR and FNR against the threshold",
            default_detector(ds.name)))
        written.append(path)
    if table in ("1", "2") and any(r.get("target_fpr") is not None for r in rows):
        path = fig_dir / f"{table_stem(spec)}_fnr_by_label.png"
        atomic_write_bytes(path, fnr_by_label_figure(
            rows, f"Table {table} ({ds.name}, profile {profile.name}): calibrated detectors' FNR per trigger label, "
            "embedded vs fresh triggers", BARS.get(ds.name, (None, None))[1], default_detector(ds.name)))
        written.append(path)
    first = next((c for c in cells if c.trigger_label == 0 and c.seed == 0), None)
    if table in ("1", "2") and first is not None:
        splits, target_splits = first.splits(ds), first.target_splits(ds)
        trigger = first.trigger_config()
        cached = (cache_dir / "targets" / target_key(ds.name, first.train, trigger, target_splits)).exists()
        if not (cached or train_missing):
            return written
        target = get_target(ds, target_splits, first.train, trigger, cache_dir, False, lambda *a: None)
        cam = make_cam(target.model, arch_info(first.arch, first.train.stem))
        ev = splits.evaluation_idx
        pick = torch.cat([ev[ds.test_y[ev] == c][:1] for c in range(ds.num_classes)])
        pc, pt = cam(ds.test_x[pick]), cam(target.triggers.images)
        path = fig_dir / f"table{table}_gallery.png"
        atomic_write_bytes(path, heatmap_gallery(
            ds.test_x[pick], ds.test_y[pick], pc.heatmaps, pc.predictions, target.triggers.images,
            target.triggers.source_labels, pt.heatmaps, pt.predictions, list(ds.class_names),
            f"{ds.name}, {first.arch}, trigger label 0, seed 0: Grad-CAM at {cam.layer} for the predicted label "
            "(rows 1-2 clean, rows 3-4 trigger inputs by source class; a class with no trigger stays blank)"))
        written.append(path)
    return written


__all__ = ["TABLES", "PROFILES", "Profile", "Cell", "CellFilter", "load_table", "table_cells", "run_cell", "aggregate",
           "reproduce", "reproduce_spec", "write_figures"]
