"""What a table's finished cells come to: one row per configuration, detector and threshold (mean and spread over
the seeds, pooled Wilson intervals), the default detector's bar per dataset, and the compute they cost."""

from __future__ import annotations

import statistics
from pathlib import Path

from dnnpiracy.data import Dataset
from dnnpiracy.evaluation.metrics import wilson_interval
from dnnpiracy.experiments.cells import Cell
from dnnpiracy.experiments.profiles import Profile
from dnnpiracy.experiments.runner import target_key
from dnnpiracy.io import read_json


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
