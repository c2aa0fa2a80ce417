"""Copy the finished cells of one table's grid from the cache into a folder (e.g. results/cells/table1), so that a
later session, whose cache starts empty, can render or extend the table without recomputing them:

    python scripts/export_cells.py --table 1 --out results/cells/table1
    cp results/cells/table1/*.json ~/.cache/dnnpiracy/runs/cells/      # in the later session

The cells are matched by their cache keys (the grid of the table's TOML under the chosen profile), so a cell of
another grid or profile is never copied.  The dataset is resolved as ``reproduce`` resolves it (mnist-10k unless
the full MNIST files are present)."""

from __future__ import annotations

import argparse
import shutil
from dataclasses import replace
from pathlib import Path

from dnnpiracy.experiments.reproduce import PROFILES, load_table, table_cells
from dnnpiracy.experiments.runner import default_cache_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", required=True, choices=["1", "2", "3", "4", "5"])
    ap.add_argument("--profile", default="cpu", choices=sorted(PROFILES))
    ap.add_argument("--dataset", help="the dataset the table ran on (default: mnist-10k for 'mnist' tables)")
    ap.add_argument("--fpr-confidence", type=float, default=None,
                    help="the calibrated rule's confidence the cells used (default: the profile's)")
    ap.add_argument("--cache-dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    spec = load_table(args.table)
    dataset = args.dataset or ("mnist-10k" if spec["dataset"] == "mnist" else spec["dataset"])
    profile = PROFILES[args.profile]
    if args.fpr_confidence is not None:
        profile = replace(profile, fpr_confidence=args.fpr_confidence or None)
    cells_dir = (args.cache_dir or default_cache_dir()) / "cells"
    cells = table_cells(spec, profile, dataset)
    args.out.mkdir(parents=True, exist_ok=True)
    found = [c for c in cells if (cells_dir / f"{c.key()}.json").exists()]
    for c in found:
        shutil.copy2(cells_dir / f"{c.key()}.json", args.out / f"{c.key()}.json")
    print(f"table {args.table} ({dataset}, {args.profile}): {len(found)}/{len(cells)} finished cells -> {args.out}")


if __name__ == "__main__":
    main()
