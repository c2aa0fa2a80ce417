"""What the whole cpu grid costs on this machine: each table's compute (its cells' own time + each of its targets'
recorded build time), and all five tables together with every target counted once (Tables IV and V reuse
Table I's label-0 targets).  This is the number the issue's 6-hour budget is about.

Reads the cache of `dnnpiracy reproduce --profile cpu` (computes nothing).  Writes results/bench/grid_cost.{md,json}.

    python scripts/grid_cost.py [--profile cpu]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from dnnpiracy.experiments.reproduce import PROFILES, compute_seconds, load_table, resolve_dataset, table_cells
from dnnpiracy.experiments.runner import default_cache_dir
from dnnpiracy.io import atomic_write_text, git_commit, read_json, write_json

BUDGET_SECONDS = 6 * 3600


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--profile", default="cpu", choices=sorted(PROFILES))
    args = ap.parse_args()
    t0 = time.perf_counter()
    cache = default_cache_dir()
    per_table, all_cells, all_outs, missing = {}, {}, {}, 0
    for table in "12345":
        spec = load_table(table)
        ds = resolve_dataset(spec["dataset"], None)
        cells = table_cells(spec, PROFILES[args.profile], ds.name)
        done = [c for c in cells if (cache / "cells" / f"{c.key()}.json").exists()]
        missing += len(cells) - len(done)
        outs = [read_json(cache / "cells" / f"{c.key()}.json") for c in done]
        per_table[table] = {"cells": len(cells), "done": len(done), **compute_seconds(done, outs, ds, cache)}
        for c, o in zip(done, outs):
            all_cells.setdefault(ds.name, {})[c.key()] = c
            all_outs.setdefault(ds.name, {})[c.key()] = o
    total = {"detectors": 0.0, "targets": 0.0, "total": 0.0, "n_targets": 0}
    for name, cells in all_cells.items():   # every distinct cell and target once, across tables
        ds = resolve_dataset(name, None)
        c = compute_seconds(list(cells.values()), [all_outs[name][k] for k in cells], ds, cache)
        for k in total:
            total[k] += c[k]
    meta = {"command": "python " + " ".join(sys.argv), "git_commit": git_commit(),
            "wall_seconds": time.perf_counter() - t0, "profile": args.profile, "budget_seconds": BUDGET_SECONDS}
    lines = [f"# Cost of the {args.profile} grid on this machine", "",
             "Compute = each finished cell's own time (less the time it spent obtaining its target) + each distinct "
             "target's recorded build time (training and the owner's metrics, `report.json` `wall_seconds`), whenever "
             "and by whichever cell it was built. Targets built while another job shared the cores count as they ran.",
             "", "| table | cells | detectors (s) | targets | targets (s) | total (s) | total (h) |",
             "|---|---|---|---|---|---|---|"]
    for t, c in per_table.items():
        lines.append(f"| {t} | {c['done']}/{c['cells']} | {c['detectors']:.0f} | {c['n_targets']} | "
                     f"{c['targets']:.0f} | {c['total']:.0f} | {c['total'] / 3600:.2f} |")
    lines.append(f"| all five, each target once | {sum(c['done'] for c in per_table.values())}/"
                 f"{sum(c['cells'] for c in per_table.values())} | {total['detectors']:.0f} | {total['n_targets']} | "
                 f"{total['targets']:.0f} | {total['total']:.0f} | {total['total'] / 3600:.2f} |")
    verdict = "within" if total["total"] <= BUDGET_SECONDS and not missing else "NOT within"
    lines += ["", f"Budget: 6 h = {BUDGET_SECONDS} s -> {verdict} the budget"
              + (f" ({missing} cells not finished)" if missing else "") + ".", "",
              f"Wall time {meta['wall_seconds']:.1f} s (reads the cache). Command `{meta['command']}`, "
              f"commit {meta['git_commit']}."]
    out = Path(f"results/bench/grid_cost{'' if args.profile == 'cpu' else '_' + args.profile}")
    write_json(out.with_suffix(".json"), {"tables": per_table, "all": total, "missing_cells": missing, "meta": meta})
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
