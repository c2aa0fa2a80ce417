"""The paper's Tables I-V as a cached, resumable grid.

A table is a small TOML file in ``experiments/tables/`` (dataset x trigger labels x archs x blocks x taus x detectors
x seeds, plus the paper's numbers).  A *profile* maps it onto hardware: ``paper`` keeps the paper's hyperparameters,
``cpu`` shrinks what must shrink to fit a 2-core machine and says so in every table.

Caching is content-addressed at two levels: a trained target (keyed by dataset, training and trigger config, split)
is shared by every table that needs it, and a *cell* (target x detector x threshold sweep) is one JSON file written
atomically when finished.  A run killed at any point (even ``kill -9``) redoes only the unfinished cell.

This module drives a table (run or resume its cells, write it without losing rows); the parts live beside it:
``profiles`` (profiles, table specs), ``cells`` (the grid, cache keys, computing a cell), ``aggregation`` (rows,
bars, compute), ``render`` (Markdown, figures).  Their public names are importable from here too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

from dnnpiracy.attack import default_detector
from dnnpiracy.config import DetectorConfig
from dnnpiracy.experiments.aggregation import BAR_TOLERANCE, BARS, aggregate, bar_summary, compute_seconds, within_bar
from dnnpiracy.experiments.cells import Cell, CellFilter, compute_device, run_cell, table_cells
from dnnpiracy.experiments.profiles import (
    PAPER_SURROGATE,
    PROFILES,
    TABLES,
    Profile,
    load_table,
    resolve_dataset,
    table_stem,
)
from dnnpiracy.experiments.render import table_markdown, write_figures
from dnnpiracy.experiments.runner import default_cache_dir
from dnnpiracy.io import ArtifactError, atomic_write_text, git_commit, read_json, write_json
from dnnpiracy.progress import progress_bar


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
    for cell in progress_bar(todo, desc=f"table {table} ({profile.name})", disable=not progress, unit="cell"):
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


__all__ = ["TABLES", "PROFILES", "PAPER_SURROGATE", "Profile", "Cell", "CellFilter", "BARS", "BAR_TOLERANCE",
           "load_table", "resolve_dataset", "table_stem", "table_cells", "run_cell", "compute_device", "aggregate",
           "bar_summary", "within_bar", "compute_seconds", "table_markdown", "write_figures", "reproduce",
           "reproduce_spec", "compute_remote", "cells_job", "guard_existing", "existing_table_meta"]
