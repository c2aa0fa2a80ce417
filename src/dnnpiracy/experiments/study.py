"""The detector study behind the default: every (heatmap layer, scorer, threshold rule) on the same trained targets,
with the same surrogate set, clean evaluation inputs and trigger inputs.  Probes (forward + Grad-CAM) are computed
once per layer and shared by all scorers."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from dnnpiracy.attack import fit_detector, make_cam
from dnnpiracy.config import DetectorConfig
from dnnpiracy.data import Dataset, Splits
from dnnpiracy.evaluation.evaluate import evaluate, inspect_sets
from dnnpiracy.models import arch_info
from dnnpiracy.progress import progress_bar
from dnnpiracy.watermark import Target, verification_chance

SUMMARY_KEYS = ("fpr", "fnr", "fnr_fresh", "auroc", "auroc_fresh", "tpr_at_1pct_fpr", "accuracy_loss",
                "target_trigger_accuracy", "pirated_trigger_accuracy")


def study_target(target: Target, ds: Dataset, splits: Splits, detectors: list[str], layers: list[str | None],
                 base: DetectorConfig, tau: float, progress: bool = True, log=print) -> list[dict]:
    """One row per (layer, detector) on one target."""
    info = arch_info(target.report["arch"], target.report["stem"])
    trig_label = target.triggers.config.trigger_label
    ev_idx, sur_idx = splits.evaluation_idx, splits.surrogate_idx
    rows = []
    for layer in layers:
        cam = make_cam(target.model, info, layer)
        t0 = time.perf_counter()
        probes = {"clean": cam(ds.test_x[ev_idx]), "surrogate": cam(ds.test_x[sur_idx]),
                  "triggers": cam(target.triggers.images), "fresh": cam(target.fresh_triggers.images)}
        probe_s = time.perf_counter() - t0
        for name in progress_bar(detectors, desc=f"layer {cam.layer}", disable=not progress, leave=False):
            cfg = replace(base, detector=name, heatmap_layer=layer)
            det = fit_detector(target.model, info, ds.test_x[sur_idx], ds.test_y[sur_idx], cfg, tau,
                               ds.num_classes, probe=probes["surrogate"], dataset=ds.name)
            c, t, f = inspect_sets(det, ds.test_x[ev_idx], ds.test_y[ev_idx], target.triggers,
                                   target.fresh_triggers, probes)
            m = evaluate(det, c, t, f, trig_label, chance=verification_chance(target.triggers.config, ds.num_classes))
            row = {"dataset": ds.name, "arch": target.report["arch"], "trigger_label": trig_label,
                   "seed": target.report["train_config"]["seed"], "layer": cam.layer, "detector": name,
                   "rule": det.spec.rule, "tau": tau if det.spec.rule == "paper" else None,
                   "target_fpr": base.target_fpr if det.spec.rule == "calibrated" else None,
                   **{k: m.get(k) for k in SUMMARY_KEYS}, "fit_seconds": det.fit_info["fit_seconds"],
                   "probe_seconds": probe_s}
            if det.spec.rule == "paper":
                row["alpha"] = det.fit_info["alpha"]
                row["trigger_margins"] = t.margins.tolist()
            rows.append(row)
            log(f"{cam.layer:8s} {name:34s} FPR {row['fpr']:.4f} FNR {row['fnr']:.3f} "
                f"fresh {row['fnr_fresh']:.3f} AUROC {row['auroc']:.3f} TPR@1% {row['tpr_at_1pct_fpr']:.3f}")
    return rows


def rows_to_markdown(rows: list[dict]) -> str:
    head = "| dataset | label | seed | layer | detector | rule | FPR | FNR (15) | FNR fresh | AUROC | TPR@1%FPR |\n"
    head += "|---|---|---|---|---|---|---|---|---|---|---|\n"

    def f(v, p=3):
        return "n/a" if v is None or v != v else f"{v:.{p}f}"

    def rule(r):
        return f"paper (tau {r['tau']})" if r["rule"] == "paper" else f"calibrated ({r['target_fpr']})"

    body = "".join(
        f"| {r['dataset']} | {r['trigger_label']} | {r['seed']} | {r['layer']} | {r['detector']} | {rule(r)} | "
        f"{f(r['fpr'], 4)} | {f(r['fnr'])} | {f(r['fnr_fresh'])} | {f(r['auroc'])} | {f(r['tpr_at_1pct_fpr'])} |\n"
        for r in rows)
    return head + body


def merge_rows(path: Path, new_rows: list[dict]) -> list[dict]:
    """Merge ``new_rows`` into the JSON at ``path`` (same dataset/label/seed/layer/detector/rule/tau replaces)."""
    from dnnpiracy.io import read_json

    def key(r):
        return (r["dataset"], r["arch"], r["trigger_label"], r["seed"], r["layer"], r["detector"], r["rule"],
                r.get("tau"), r.get("target_fpr"))

    old = read_json(path)["rows"] if path.exists() else []
    merged = {key(r): r for r in old}
    merged.update({key(r): r for r in new_rows})
    return sorted(merged.values(), key=lambda r: (r["dataset"], r["trigger_label"], r["seed"], r["layer"],
                                                  r["detector"], str(r.get("tau"))))


def write_study(out_path: Path, new_rows: list[dict]) -> None:
    """Merge rows into OUT.json and render OUT.md (OUT_notes.md, the hand-written analysis, goes on top)."""
    from dnnpiracy.io import atomic_write_text, write_json

    merged = merge_rows(out_path.with_suffix(".json"), new_rows)
    write_json(out_path.with_suffix(".json"), {"rows": merged})
    notes = out_path.with_name(out_path.name + "_notes.md")
    head = notes.read_text() + "\n" if notes.exists() else ""
    atomic_write_text(out_path.with_suffix(".md"), head + "## All rows\n\n" + rows_to_markdown(merged))
