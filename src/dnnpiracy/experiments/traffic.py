"""Tables I-IV again, with the calibrated detectors' threshold set on unlabelled traffic (evaluation/traffic.py).

Reads the finished cells of ``reproduce`` from the cache (their stored clean and trigger scores): nothing is trained
or fitted, so it runs in seconds and changes no cell.  One row per (table, configuration, detector), mean over seeds,
beside the same cells' surrogate-calibrated rates and the dataset's bar (aggregation.BARS).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from dnnpiracy.attack import SCORERS, default_detector, make_cam, resolve_spec
from dnnpiracy.attack.scorers import Evidence
from dnnpiracy.config import DetectorConfig
from dnnpiracy.data import Dataset
from dnnpiracy.evaluation.plots import traffic_figure
from dnnpiracy.evaluation.traffic import traffic_calibration, traffic_fit
from dnnpiracy.experiments.aggregation import BARS, within_bar
from dnnpiracy.experiments.cells import Cell, table_cells
from dnnpiracy.experiments.profiles import PROFILES, Profile, load_table, resolve_dataset
from dnnpiracy.experiments.runner import config_key, default_cache_dir, get_target
from dnnpiracy.io import atomic_write_bytes, atomic_write_text, git_commit, read_json, write_json
from dnnpiracy.models import arch_info
from dnnpiracy.progress import progress_bar


def spec_traffic_rows(spec: dict, profile: Profile, ds_name: str, cache_dir: Path, target_fpr: float = 0.01,
                      n_traffic: int = 500, repeats: int = 200) -> list[dict]:
    """One table: every finished calibrated cell that kept its scores, grouped by configuration and detector."""
    groups: dict[tuple, list[dict]] = {}
    for cell in table_cells(spec, profile, ds_name):
        path = cache_dir / "cells" / f"{cell.key()}.json"
        if resolve_spec(cell.detector).rule != "calibrated" or not path.exists():
            continue
        out = read_json(path)
        base = next((r for r in out["results"] if r.get("target_fpr") == target_fpr), None)
        if not out.get("scores") or base is None:
            continue
        clean, trig = torch.tensor(out["scores"]["clean"]), torch.tensor(out["scores"]["triggers"])
        t = traffic_calibration(clean, trig, target_fpr, n_traffic, repeats, seed=cell.seed,
                                confidence=cell.fpr_confidence)
        c = traffic_calibration(clean, trig, target_fpr, n_traffic, repeats, seed=cell.seed, contaminated=True,
                                confidence=cell.fpr_confidence)
        groups.setdefault((cell.trigger_label, cell.arch, cell.blocks, cell.detector), []).append(
            {"seed": cell.seed, "surrogate_fpr": base["fpr"], "surrogate_fnr": base["fnr"],
             "traffic_fpr": t["fpr_mean"], "traffic_fnr": t["fnr_mean"],
             "contaminated_fpr": c["fpr_mean"], "contaminated_fnr": c["fnr_mean"], "n_clean": len(clean)})
    rows = []
    for (label, arch, blocks, det), per in sorted(groups.items()):
        mean = {k: statistics.fmean(p[k] for p in per) for k in per[0] if k not in ("seed", "n_clean")}
        rows.append({"table": spec["id"], "dataset": ds_name, "profile": profile.name, "trigger_label": label,
                     "arch": arch, "blocks": blocks, "detector": det, "seeds": [p["seed"] for p in per],
                     "n_clean": per[0]["n_clean"], **{f"{k}_mean": v for k, v in mean.items()}})
    return rows


def traffic_rows(tables: list[str], profile_name: str, cache_dir: Path | None = None, data_dir: str | None = None,
                 target_fpr: float = 0.01, n_traffic: int = 500, repeats: int = 200) -> list[dict]:
    cache_dir = Path(cache_dir or default_cache_dir())
    rows = []
    for table in tables:
        spec = load_table(table)
        ds_name = resolve_dataset(spec["dataset"], data_dir).name
        rows += spec_traffic_rows(spec, PROFILES[profile_name], ds_name, cache_dir, target_fpr, n_traffic, repeats)
    return rows


def bar_check(rows: list[dict], detector: str, source: str) -> dict[tuple[str, str], dict]:
    """Per (table, dataset): is the bar met by ``detector`` with the ``source`` threshold?  ``source`` names the
    rows' ``{source}_fpr_mean`` / ``{source}_fnr_mean`` keys ('surrogate', 'traffic'; 'threshold', 'fit')."""
    out = {}
    for key in sorted({(r["table"], r["dataset"]) for r in rows}):
        mine = [r for r in rows if (r["table"], r["dataset"]) == key and r["detector"] == detector]
        if not mine or key[1] not in BARS:
            continue
        failing = [r for r in mine if not within_bar(r[f"{source}_fpr_mean"], r[f"{source}_fnr_mean"], key[1])]
        out[key] = {"configurations": len(mine), "failing": len(failing), "met": not failing,
                    "worst_fpr": max(r[f"{source}_fpr_mean"] for r in mine),
                    "worst_fnr": max(r[f"{source}_fnr_mean"] for r in mine),
                    "mean_fnr": statistics.fmean(r[f"{source}_fnr_mean"] for r in mine)}
    return out


def traffic_markdown(rows: list[dict], meta: dict) -> str:
    lines = ["# Threshold calibrated on unlabelled traffic vs on the surrogate set", "",
             f"Profile `{meta['profile']}`; target FPR {meta['target_fpr']}; {meta['n_traffic']} clean evaluation "
             f"inputs drawn at random play the pirate's first, unlabelled traffic ({meta['repeats']} draws per cell, "
             "seeded by the cell's seed: the cells of one seed share their evaluation images and draws, so rows are "
             "correlated); FPR is measured on the clean inputs not drawn, FNR on the 15 trigger "
             "inputs. *Contaminated*: the 15 trigger queries are part of the calibration traffic (the owner verified "
             "while the pirate calibrated). The surrogate columns are the same cells' numbers in tableN.md. All "
             "rates are means over the seeds (and draws). `default` is the dataset's default detector: "
             + ", ".join(f"`{default_detector(d)}` on {d}" for d in sorted({r["dataset"] for r in rows})) + ".", ""]
    for det in sorted({r["detector"] for r in rows}):
        for src in ("surrogate", "traffic"):
            for (table, ds), b in bar_check(rows, det, src).items():
                bar = BARS[ds]
                verdict = "met" if b["met"] else f"NOT met in {b['failing']} of {b['configurations']}"
                lines.append(f"- Table {table} ({ds}), {det}, {src}-calibrated: bar FPR <= {bar[0]}, FNR <= {bar[1]} "
                             f"{verdict} "
                             f"(worst FPR {b['worst_fpr']:.4f}, worst FNR {b['worst_fnr']:.3f}, "
                             f"mean FNR {b['mean_fnr']:.3f})")
    lines += ["", "| table | label | arch | blocks | detector | seeds | surrogate FPR | surrogate FNR | traffic FPR "
                  "| traffic FNR | contaminated FPR | contaminated FNR |", "|---" * 12 + "|"]
    for r in rows:
        name = f"{r['detector']} (default)" if r["detector"] == default_detector(r["dataset"]) else r["detector"]
        lines.append(f"| {r['table']} | {r['trigger_label']} | {r['arch']} | {r['blocks']} | {name} | "
                     f"{','.join(map(str, r['seeds']))} | {r['surrogate_fpr_mean']:.4f} | "
                     f"{r['surrogate_fnr_mean']:.3f} | "
                     f"{r['traffic_fpr_mean']:.4f} | {r['traffic_fnr_mean']:.3f} | {r['contaminated_fpr_mean']:.4f} | "
                     f"{r['contaminated_fnr_mean']:.3f} |")
    lines += ["", f"Wall time {meta['wall_seconds']:.0f} s (from cached scores; no training). Command "
                  f"`{meta['command']}`, commit {meta['git_commit']}."]
    return "\n".join(lines) + "\n"


def write_traffic_study(tables: list[str], profile_name: str, out: Path, cache_dir: Path | None = None,
                        data_dir: str | None = None, target_fpr: float = 0.01, n_traffic: int = 500,
                        repeats: int = 200, command: str = "") -> dict:
    t0 = time.perf_counter()
    rows = traffic_rows(tables, profile_name, cache_dir, data_dir, target_fpr, n_traffic, repeats)
    if not rows:
        raise ValueError(f"no finished calibrated cells with scores for tables {','.join(tables)} (profile "
                         f"{profile_name}) in the cache: run `dnnpiracy reproduce` first")
    meta = {"profile": profile_name, "tables": tables, "target_fpr": target_fpr, "n_traffic": n_traffic,
            "repeats": repeats, "wall_seconds": time.perf_counter() - t0, "command": command,
            "git_commit": git_commit()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out.with_suffix(".json"), {"rows": rows, "meta": meta})
    atomic_write_text(out.with_suffix(".md"), traffic_markdown(rows, meta))
    atomic_write_bytes(out.with_suffix(".png"), traffic_figure(
        rows, f"Threshold from the labelled surrogate set (pale) vs {n_traffic} unlabelled clean queries (solid), "
              f"profile {profile_name}, target FPR {target_fpr}"))
    return {"rows": rows, "meta": meta}


def _traffic_fit_cell(cell: Cell, ds: Dataset, cache_dir: Path, design: str, target_fpr: float, n_traffic: int,
                      repeats: int, max_clean: int | None) -> dict:
    """One finished cell's cached target probed once; its default design fitted three ways per traffic draw."""
    splits = cell.splits(ds)      # as run_cell: the same surrogate and evaluation
    trigger = cell.trigger_config()
    target = get_target(ds, cell.target_splits(ds), cell.train, trigger, cache_dir, progress=False,
                        log=lambda *_: None)
    info = arch_info(cell.arch, cell.train.stem)
    cam = make_cam(target.model, info)
    sur, ev = splits.surrogate_idx, splits.evaluation_idx
    if max_clean is not None and len(ev) > max_clean:
        ev = ev[torch.randperm(len(ev), generator=torch.Generator().manual_seed(cell.seed))[:max_clean]]
    evidence = {}
    for name, x in (("surrogate", ds.test_x[sur]), ("clean", ds.test_x[ev]), ("triggers", target.triggers.images)):
        probe = cam(x)
        evidence[name] = (Evidence.from_probe(probe, x, info.penultimate), probe.predictions)
    cfg = DetectorConfig(detector=design, seed=cell.seed, fpr_confidence=cell.fpr_confidence)
    return traffic_fit(lambda: SCORERS[resolve_spec(design).scorer](cfg), evidence["surrogate"][0],
                       ds.test_y[sur], evidence["surrogate"][1], *evidence["clean"], *evidence["triggers"],
                       target_fpr, n_traffic, repeats, seed=cell.seed, folds=cfg.calibration_folds,
                       confidence=cfg.fpr_confidence)


def spec_traffic_fit_rows(spec: dict, profile: Profile, ds: Dataset, cache_dir: Path, target_fpr: float = 0.01,
                          n_traffic: int = 500, repeats: int = 10, max_clean: int | None = None,
                          progress: bool = True, detector: str = "default") -> list[dict]:
    """One table's finished cells of one calibrated design (the dataset's default unless named), refitted on
    surrogate + traffic (evaluation/traffic.py ``traffic_fit``).  Needs the cached targets (probes every clean
    evaluation input, or a seeded ``max_clean`` of them); trains nothing: a cell whose JSON is not in the cache is
    skipped."""
    design = default_detector(ds.name) if detector == "default" else detector
    if resolve_spec(design).rule != "calibrated":
        raise ValueError(f"detector {design!r} is not a calibrated detector: only those can be fitted on traffic")
    cells = [c for c in table_cells(spec, profile, ds.name)
             if c.detector == design and (cache_dir / "cells" / f"{c.key()}.json").exists()]
    groups: dict[tuple, list[dict]] = {}
    for cell in progress_bar(cells, desc=f"table {spec['id']} traffic fit", unit="cell", disable=not progress):
        # cached per cell and study parameters, so an interrupted study resumes and tables can be rendered apart
        key = config_key({"cell": cell.key(), "target_fpr": target_fpr, "n_traffic": n_traffic, "repeats": repeats,
                          "max_clean": max_clean, "v": 1})
        path = cache_dir / "traffic_fit" / f"{key}.json"
        if path.exists():
            r = read_json(path)
        else:
            r = {"seed": cell.seed, **_traffic_fit_cell(cell, ds, cache_dir, design, target_fpr, n_traffic, repeats,
                                                        max_clean), "git_commit": git_commit()}
            write_json(path, r)
        groups.setdefault((cell.trigger_label, cell.arch, cell.blocks, design), []).append(r)
    rows = []
    for (label, arch, blocks, det), per in sorted(groups.items()):
        means = {k: statistics.fmean(p[k] for p in per) for k in per[0] if k.endswith("_mean")}
        rows.append({"table": spec["id"], "dataset": ds.name, "profile": profile.name, "trigger_label": label,
                     "arch": arch, "blocks": blocks, "detector": det, "seeds": [p["seed"] for p in per],
                     "n_clean": per[0]["n_heldout"] + n_traffic, "n_surrogate": per[0]["n_surrogate"],
                     "repeats": repeats, **means})
    return rows


def traffic_fit_markdown(rows: list[dict], meta: dict) -> str:
    lines = ["# Detector fitted on surrogate + unlabelled traffic", "",
             f"Profile `{meta['profile']}`, target FPR {meta['target_fpr']}, "
             + ("the dataset's default detector" if meta.get("detector", "default") == "default"
                else f"detector `{meta['detector']}`") + ". In "
             f"each of {meta['repeats']} draws per cell, {meta['n_traffic']} clean evaluation inputs play the "
             "pirate's first, unlabelled traffic"
             + (f" (out of a seeded {meta['max_clean']} of the clean evaluation inputs)" if meta.get("max_clean")
                else "")
             + "; FPR is measured on the clean inputs not drawn, FNR on the 15 trigger inputs. Three thresholdings, "
             "paired on the same draws: **surrogate** = fitted and thresholded on the labelled surrogate inputs alone ("
             + ", ".join(f"{n} on {d}" for d, n in sorted({(r["dataset"], r["n_surrogate"]) for r in rows}))
             + "; the tables' rule); **threshold** = the same scorer, "
             "threshold re-set on the traffic's scores; **fit** = scorer fitted and thresholded (out-of-fold, "
             "split-conformal) on surrogate + traffic, each traffic query labelled by the target's prediction. Rates "
             "are means over seeds and draws.", ""]
    for mode in ("surrogate", "threshold", "fit"):
        for det in sorted({r["detector"] for r in rows}):
            for (table, ds), b in bar_check(rows, det, mode).items():
                verdict = "met" if b["met"] else f"NOT met in {b['failing']} of {b['configurations']}"
                lines.append(f"- Table {table} ({ds}), {mode}: bar FPR <= {BARS[ds][0]}, FNR <= {BARS[ds][1]} "
                             f"{verdict} (worst FPR {b['worst_fpr']:.4f}, worst FNR {b['worst_fnr']:.3f}, "
                             f"mean FNR {b['mean_fnr']:.3f})")
    lines += ["", "| table | label | arch | blocks | detector | seeds | AUROC surrogate | AUROC fit | FPR surrogate | "
                  "FNR surrogate | FPR threshold | FNR threshold | FPR fit | FNR fit |", "|---" * 14 + "|"]
    for r in rows:
        lines.append(f"| {r['table']} | {r['trigger_label']} | {r['arch']} | {r['blocks']} | {r['detector']} | "
                     f"{','.join(map(str, r['seeds']))} | {r['surrogate_auroc_mean']:.4f} | "
                     f"{r['fit_auroc_mean']:.4f} | "
                     f"{r['surrogate_fpr_mean']:.4f} | {r['surrogate_fnr_mean']:.3f} | "
                     f"{r['threshold_fpr_mean']:.4f} | {r['threshold_fnr_mean']:.3f} | "
                     f"{r['fit_fpr_mean']:.4f} | {r['fit_fnr_mean']:.3f} |")
    lines += ["", f"Wall time {meta['wall_seconds']:.0f} s on {meta['device']} (probes of cached targets and "
                  f"{meta['repeats']} refits per cell; no training). Command `{meta['command']}`, commit "
                  f"{meta['git_commit']}."]
    return "\n".join(lines) + "\n"


def write_traffic_fit_study(tables: list[str], profile_name: str, out: Path, cache_dir: Path | None = None,
                            data_dir: str | None = None, target_fpr: float = 0.01, n_traffic: int = 500,
                            repeats: int = 10, max_clean: int | None = None, command: str = "",
                            detector: str = "default") -> dict:
    t0 = time.perf_counter()
    cache_dir = Path(cache_dir or default_cache_dir())
    rows = []
    for table in tables:
        spec = load_table(table)
        ds = resolve_dataset(spec["dataset"], data_dir)
        rows += spec_traffic_fit_rows(spec, PROFILES[profile_name], ds, cache_dir, target_fpr, n_traffic, repeats,
                                      max_clean, detector=detector)
    if not rows:
        raise ValueError(f"no finished cells of the detector {detector!r} for tables {','.join(tables)} (profile "
                         f"{profile_name}) in the cache: run `dnnpiracy reproduce` first")
    meta = {"profile": profile_name, "tables": tables, "detector": detector, "target_fpr": target_fpr,
            "n_traffic": n_traffic,
            "repeats": repeats, "max_clean": max_clean, "wall_seconds": time.perf_counter() - t0,
            "device": f"cpu ({torch.get_num_threads()} threads)", "command": command, "git_commit": git_commit()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out.with_suffix(".json"), {"rows": rows, "meta": meta})
    atomic_write_text(out.with_suffix(".md"), traffic_fit_markdown(rows, meta))
    return {"rows": rows, "meta": meta}


__all__ = ["spec_traffic_rows", "traffic_rows", "bar_check", "traffic_markdown", "write_traffic_study",
           "spec_traffic_fit_rows", "traffic_fit_markdown", "write_traffic_fit_study"]
