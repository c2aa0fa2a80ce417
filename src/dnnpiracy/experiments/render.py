"""A reproduced table as Markdown (``table<N>.md``) and its figures (ROC curves, the threshold sweep, FNR per label,
a heatmap gallery)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from dnnpiracy.attack import default_detector, make_cam
from dnnpiracy.data import Dataset
from dnnpiracy.experiments.aggregation import BARS
from dnnpiracy.experiments.cells import Cell
from dnnpiracy.experiments.profiles import Profile, table_stem
from dnnpiracy.experiments.runner import get_target, target_key
from dnnpiracy.io import atomic_write_bytes
from dnnpiracy.models import arch_info


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
