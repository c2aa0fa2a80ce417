"""Where the default detector's FPR and FNR scatter comes from: one table's default-detector cells as a
(trigger label x seed) grid.  The seed fixes the target *and* the surrogate draw, and every label of one seed shares
that draw (`Cell.splits`), so a column that is low or high throughout points at the surrogate set, not the target.

Reads the cached cells of `dnnpiracy reproduce --table N --profile cpu` (computes nothing; a missing cell is a
blank).  Writes results/tables/tableN_per_seed.{md,json}.

    python scripts/table_per_seed.py --table 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from dnnpiracy.attack import default_detector
from dnnpiracy.experiments.reproduce import PROFILES, load_table, resolve_dataset, table_cells
from dnnpiracy.experiments.runner import default_cache_dir
from dnnpiracy.io import atomic_write_text, git_commit, read_json, write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--table", default="1", choices=list("12345"))
    ap.add_argument("--profile", default="cpu", choices=sorted(PROFILES))
    args = ap.parse_args()
    t0 = time.perf_counter()
    spec = load_table(args.table)
    ds_name = resolve_dataset(spec["dataset"], None).name
    design = default_detector(ds_name)
    cache = default_cache_dir() / "cells"
    cells = [c for c in table_cells(spec, PROFILES[args.profile], ds_name) if c.detector == design]
    grid: dict[tuple[int, str, int], dict] = {}
    for c in cells:
        path = cache / f"{c.key()}.json"
        if not path.exists():
            continue
        out = read_json(path)
        r = next(r for r in out["results"] if r.get("target_fpr") == 0.01)
        grid[(c.trigger_label, c.arch, c.blocks, c.seed)] = {"fpr": r["fpr"], "fnr": r["fnr"], "k_fp": r["k_fp"],
                                                             "k_fn": r["k_fn"], "n_clean": r["n_clean"]}
    if not grid:
        sys.exit(f"no cached {design} cells of table {args.table}: "
                 f"run `dnnpiracy reproduce --table {args.table}` first")
    seeds = sorted({k[3] for k in grid})
    rows = sorted({k[:3] for k in grid})
    lines = [f"# Table {args.table}: the default detector per seed", "",
             f"Detector `{design}` on {ds_name}, target FPR 0.01, profile `{args.profile}`. One cell per "
             "(configuration, seed): FPR (false positives / clean inputs) and FNR (misses / 15 triggers). The seed "
             "fixes both the target and the surrogate draw; all configurations of one seed share the same surrogate "
             "draw.", "",
             "| label | arch | blocks | " + " | ".join(f"seed {s} FPR | seed {s} FNR" for s in seeds) + " |",
             "|---|---|---|" + "---|---|" * len(seeds)]
    for label, arch, blocks in rows:
        cols = []
        for s in seeds:
            g = grid.get((label, arch, blocks, s))
            cols += ([f"{g['fpr']:.4f} ({g['k_fp']})", f"{g['fnr']:.3f} ({g['k_fn']})"] if g else ["", ""])
        lines.append(f"| {label} | {arch} | {blocks} | " + " | ".join(cols) + " |")
    per_seed = {s: {m: statistics.fmean(v[m] for k, v in grid.items() if k[3] == s) for m in ("fpr", "fnr")}
                for s in seeds}
    lines += ["", "| seed | mean FPR | mean FNR |", "|---|---|---|"]
    lines += [f"| {s} | {per_seed[s]['fpr']:.4f} | {per_seed[s]['fnr']:.3f} |" for s in seeds]
    meta = {"command": "python " + " ".join(sys.argv), "git_commit": git_commit(),
            "wall_seconds": time.perf_counter() - t0, "detector": design, "dataset": ds_name}
    lines += ["", f"Wall time {meta['wall_seconds']:.1f} s (reads cached cells). Command `{meta['command']}`, "
              f"commit {meta['git_commit']}."]
    out = Path(f"results/tables/table{args.table}_per_seed")
    write_json(out.with_suffix(".json"), {"cells": [{"trigger_label": k[0], "arch": k[1], "blocks": k[2],
                                                      "seed": k[3], **v} for k, v in sorted(grid.items())],
                                           "per_seed": per_seed, "meta": meta})
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
