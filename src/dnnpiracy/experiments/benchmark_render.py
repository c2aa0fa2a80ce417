"""Rendering a benchmark grid from its cached cells: the scheme benchmark (``schemes/schemes.md`` / ``.json``,
``matrix.png``, ``gallery.png``), a selection grid (``selection/<grid>.md``) or the peers grid (``peers/``)."""

from __future__ import annotations

from pathlib import Path

from dnnpiracy.attack import default_detector
from dnnpiracy.config import TriggerConfig
from dnnpiracy.experiments.benchmark import (
    BenchCell,
    _dataset,
    cell_path,
    designs,
    grid_targets,
    removal_cells,
)
from dnnpiracy.experiments.removal_cells import removal_path
from dnnpiracy.experiments.runner import default_cache_dir
from dnnpiracy.io import git_commit, read_json, write_json


def cached_cells(grid: dict, cache_dir: Path | None = None) -> tuple[list[dict], int]:
    """(the finished cells of ``grid`` in the cache, the number of cells the grid has)."""
    cache_dir = Path(cache_dir or default_cache_dir())
    outs, total = [], 0
    for t in grid_targets(grid):
        if t.scheme is None:
            continue
        for d in designs(grid, t.dataset):
            total += 1
            p = cell_path(cache_dir, BenchCell(t, d))
            if p.exists():
                outs.append(read_json(p))
    return outs, total


def clean_baselines(grid: dict, cache_dir: Path | None = None, cells: list[dict] = ()) -> list[dict]:
    """The unwatermarked targets' test accuracies (dataset, seed, test_accuracy): from the target cache, else from
    the ``clean_baseline`` a cell of that dataset and seed carries (``experiments/independent.py``)."""
    stored = {(c["cell"]["dataset"], c["cell"]["seed"]): c["clean_baseline"] for c in cells if "clean_baseline" in c}
    from dnnpiracy.experiments.runner import target_key
    cache_dir = Path(cache_dir or default_cache_dir())
    out = []
    for t in grid_targets(grid):
        if t.scheme is not None:
            continue
        ds = _dataset(t.dataset)
        rep = cache_dir / "targets" / target_key(ds.name, t.train, None, t.target_splits(ds)) / "report.json"
        if rep.exists():
            r = read_json(rep)
            out.append({"clean_baseline": True, "dataset": t.dataset, "seed": t.seed,
                        "test_accuracy": r["test_accuracy"], "wall_seconds": r.get("wall_seconds", 0.0)})
        elif (t.dataset, t.seed) in stored:
            s = stored[(t.dataset, t.seed)]
            out.append({"clean_baseline": True, "dataset": t.dataset, "seed": t.seed,
                        "test_accuracy": s["test_accuracy"], "wall_seconds": s.get("wall_seconds", 0.0)})
    return out


def render(grid: dict, out_dir: Path, cache_dir: Path | None = None, command: str = "", wall_seconds: float = 0.0,
           failed: int = 0, overwrite: bool = False) -> list[Path]:
    """Write the grid's report from the cached cells: the benchmark (``schemes.md`` / ``.json`` and
    ``schemes/{matrix,gallery}.png``) or, for a selection grid, ``selection/<grid>.md`` / ``.json``.  A render that
    would hold fewer cells than the report already in ``out_dir`` stops with a ValueError unless ``overwrite``."""
    from dnnpiracy.experiments import bench_report as br
    from dnnpiracy.io import atomic_write_bytes, atomic_write_text
    from dnnpiracy.watermark import SCHEMES
    out_dir = Path(out_dir)
    cells, total = cached_cells(grid, cache_dir)
    if grid.get("removals"):
        return render_peers_grid(grid, out_dir, cells, total, cache_dir, command, wall_seconds, failed)
    clean = clean_baselines(grid, cache_dir, cells)
    selection = grid["name"] != "schemes" and set(grid["schemes"]) <= set(grid["development"])
    stem = out_dir / "selection" / grid["name"] if selection else out_dir / "schemes" / "schemes"
    json_path = stem.with_suffix(".json")
    if json_path.exists() and not overwrite:
        before = read_json(json_path).get("meta", {}).get("cells_done", 0)
        if before > len(cells):
            raise ValueError(f"{json_path} holds {before} cells, this render only {len(cells)} (another cache?); "
                             "pass overwrite to replace it")
    per_target = {(c["cell"]["scheme"], c["cell"]["dataset"], c["cell"]["seed"]): c for c in cells}
    target_seconds = sum(c["target_report"]["wall_seconds"] or 0.0 for c in per_target.values()) + \
        sum(c["wall_seconds"] for c in clean)
    detector_seconds = sum(c["seconds"] for c in cells) + sum(c.get("probe_seconds", 0.0) for c in per_target.values())
    meta = {"grid": grid["name"], "cells_done": len(cells), "cells_total": total, "failed": failed,
            "command": command, "git_commit": git_commit(), "wall_seconds": wall_seconds,
            "target_seconds": target_seconds, "detector_seconds": detector_seconds,
            "compute_seconds": target_seconds + detector_seconds,
            "devices": sorted({c["device"] for c in cells}) or ["cpu"],
            "protocol": "docs/heldout_protocol.md", "development": grid["development"],
            "profile": profile_note(grid), "cell_commits": sorted({c["git_commit"] for c in cells})}
    rows = br.aggregate(cells, grid["development"], br.clean_accuracy(clean))
    if selection:
        ranking = br.selection_scores(cells)
        loso = {s: (br.selection_scores(cells, exclude_scheme=s) or [{}])[0].get("detector")
                for s in grid["schemes"]}
        write_json(json_path, {"meta": meta, "ranking": ranking, "leave_one_scheme_out": loso, "rows": rows})
        atomic_write_text(stem.with_suffix(".md"), selection_markdown(grid, ranking, loso, rows, meta))
        return [json_path, stem.with_suffix(".md")]
    default_name = default_detector(grid["datasets"][0])
    meta["mea_defender"] = br.mea_defender_claim(cells)
    meta["detector_order"] = designs(grid, grid["datasets"][0])
    summaries = {n: SCHEMES[n](TriggerConfig(scheme=n)).describe() for n in grid["schemes"]}
    write_json(json_path, {"meta": {**meta, "default": default_name}, "rows": rows, "clean_baselines": clean})
    atomic_write_text(stem.with_suffix(".md"), br.schemes_markdown(rows, grid, default_name, meta, summaries))
    paths = [json_path, stem.with_suffix(".md")]
    if rows:
        present = {r["detector"] for r in rows}
        dets = [d for d in designs(grid, grid["datasets"][0]) if d in present]    # the grid's order, default first
        paths.append(atomic_write_bytes(stem.parent / "matrix.png", br.matrix_png(rows, dets)))
    paths.append(atomic_write_bytes(stem.parent / "gallery.png", br.gallery_png(gallery_sets(grid, cache_dir))))
    return paths


def render_peers_grid(grid: dict, out_dir: Path, cells: list[dict], total: int, cache_dir: Path | None,
                      command: str, wall_seconds: float, failed: int) -> list[Path]:
    """The peers report (``peers/peers.md`` / ``.json`` / ``tradeoff.png``) from the cached detector and removal
    cells of ``grid``."""
    from dnnpiracy.experiments.peers_report import render_peers
    cache_dir = Path(cache_dir or default_cache_dir())
    wanted = [c for t in grid_targets(grid) if t.scheme is not None for c in removal_cells(grid, t)]
    removals = [read_json(removal_path(cache_dir, c)) for c in wanted if removal_path(cache_dir, c).exists()]
    meta = {"grid": grid["name"], "cells_done": len(cells), "failed": failed, "command": command,
            "git_commit": git_commit(), "wall_seconds": wall_seconds, "profile": profile_note(grid),
            "devices": sorted({c["device"] for c in cells + removals}) or ["cpu"],
            "cell_commits": sorted({c["git_commit"] for c in cells + removals})}
    return render_peers(grid, out_dir, cells, removals, (total, len(wanted)), meta,
                        default_detector(grid["datasets"][0]))


def profile_note(grid: dict) -> str:
    """How the grid's targets are trained and attacked, in words."""
    parts = []
    for d, t in {t.dataset: t for t in grid_targets(grid)}.items():
        tr = t.train
        parts.append(f"{d}: {tr.arch}, {tr.epochs} epochs, lr {tr.lr:g}, batch {tr.batch_size}, triggers "
                     f"x{tr.trigger_oversample} per epoch, surrogate {t.surrogate_fraction:g} of the test set, "
                     f"DCGAN {t.gan_epochs} epochs")
    return "; ".join(parts)


def gallery_sets(grid: dict, cache_dir: Path | None = None) -> dict:
    """Each scheme's embedded trigger set of the grid's first seed, per dataset (made again: it is deterministic;
    a scheme crafted against a trained model is read from the cached target, and left out when that is absent)."""
    from dnnpiracy.experiments.runner import target_key
    from dnnpiracy.watermark import SCHEMES, load_trigger_set, make_trigger_set
    cache_dir = Path(cache_dir or default_cache_dir())
    sets = {}
    for t in grid_targets(grid):
        if t.scheme is None or t.seed != grid["seeds"][0]:
            continue
        ds = _dataset(t.dataset)
        if not SCHEMES[t.scheme].needs_model:
            sets[(t.scheme, t.dataset)] = make_trigger_set(ds.train_x, ds.train_y, t.trigger_config(), t.dataset)
            continue
        f = cache_dir / "targets" / target_key(ds.name, t.train, t.trigger_config(), t.target_splits(ds)) / \
            "triggers.safetensors"
        if f.exists():
            sets[(t.scheme, t.dataset)] = load_trigger_set(f)
    return sets


def selection_markdown(grid: dict, ranking: list[dict], loso: dict, rows: list[dict], meta: dict) -> str:
    from dnnpiracy.experiments.bench_report import _f
    L = [f"# {grid['title']}", "",
         "Protocol and criterion: `docs/heldout_protocol.md` (committed before this run). A candidate *passes* a "
         "development target when FPR <= 0.01, FNR <= 0.2 and the owner's verification says 'not pirated'. Ranked by "
         "the share passed, then the mean of (FNR + fresh FNR) / 2, then the mean FPR, then the number of terms.", "",
         "| rank | detector | targets | share passed | mean (FNR + fresh FNR)/2 | mean FNR | mean FPR | mean AUROC "
         "| terms |", "|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(ranking, 1):
        L.append(f"| {i} | `{r['detector']}` | {r['n_targets']} | {_f(r['pass_share'], 3)} "
                 f"| {_f(r['mean_fnr_embedded_fresh'])} | {_f(r['mean_fnr'])} | {_f(r['mean_fpr'], 4)} "
                 f"| {_f(r['mean_auroc'])} | {r['terms']} |")
    win = ranking[0]["detector"] if ranking else None
    L += ["", f"**Selected: `{win}`.**", "", "Leave-one-scheme-out (the criterion without one development scheme):", ""]
    L += [f"- without `{s}`: `{w}`" + ("" if w == win else " (differs)") for s, w in loso.items()]
    L += ["", "## Per target (FPR / FNR / fresh FNR / owner's verdict on the pirated model)", "",
          "| dataset | scheme | detector | FPR | FNR | fresh FNR | AUROC | owner | passes |", "|---" * 9 + "|"]
    for r in rows:
        L.append(f"| {r['dataset']} | {r['scheme']} | `{r['detector']}` | {_f(r['fpr_mean'], 4)} "
                 f"| {_f(r['fnr_mean'])} "
                 f"| {_f(r['fnr_fresh_mean'])} | {_f(r['auroc_mean'])} "
                 f"| {'pirated' if r['owner_pirated_share'] else 'not pirated'} | {all(r['passes_per_seed'])} |")
    L += ["", f"Cells {meta['cells_done']}/{meta['cells_total']}; compute {meta['compute_seconds']:.0f} s "
          f"(targets {meta['target_seconds']:.0f} s, detectors {meta['detector_seconds']:.0f} s) on "
          f"{', '.join(meta['devices'])}. Command `{meta['command']}`, commit {meta['git_commit']}, wall time "
          f"{meta['wall_seconds']:.0f} s."]
    return "\n".join(L) + "\n"
