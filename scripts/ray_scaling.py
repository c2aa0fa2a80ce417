"""How a grid scales on Ray: the same small grid, each time in a fresh cache, with the local executor (one process,
torch on 2 threads), and as Ray tasks with 1 and with 2 workers (1 CPU, 1 torch thread each).  Wall time is measured
in this one process, one configuration after the other; the cells of every configuration are checked equal (up to
their timing fields).  Writes results/bench/ray_scaling.md and .json.

    python scripts/ray_scaling.py [--out results/bench/ray_scaling]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from dnnpiracy.experiments.benchmark import load_grid, run_grid
from dnnpiracy.experiments.executor import RayOptions
from dnnpiracy.io import atomic_write_text, git_commit, write_json

GRID = """
title = "scaling probe"
datasets = ["digits-tiny"]
schemes = ["content", "noise", "blend", "glyphs"]
development = ["content"]
seeds = [0, 1]
trigger_labels = [3, 4]
detectors = ["mahalanobis-stages", "knn-input"]
arch = "small-cnn"
lr = 0.001
epochs = {digits-tiny = 30}
surrogate_fraction = {digits-tiny = 0.3}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="results/bench/ray_scaling")
    args = ap.parse_args()
    import ray
    work = Path(tempfile.mkdtemp(prefix="ray-scaling-"))
    (work / "grid.toml").write_text(GRID)
    grid = load_grid(str(work / "grid.toml"))
    runs = []
    configs = [("local, 1 process, 2 torch threads", "local", None, 2),
               ("ray, 1 worker (1 CPU)", "ray", 1, 1),
               ("ray, 2 workers (1 CPU each)", "ray", 2, 1)]
    for name, executor, workers, threads in configs:
        cache = work / name.split(",")[0].replace(" ", "") / str(workers or 0)
        torch.set_num_threads(threads)
        t0 = time.perf_counter()
        if executor == "ray":
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
            t_init = time.perf_counter() - t0
            res = run_grid(grid, cache, progress=False, log=lambda _m: None, executor="ray",
                           ray_options=RayOptions(cpus_per_job=1))
            ray.shutdown()
        else:
            t_init = 0.0
            res = run_grid(grid, cache, progress=False, log=lambda _m: None)
        wall = time.perf_counter() - t0
        runs.append({"config": name, "executor": executor, "workers": workers or 1, "wall_seconds": wall,
                     "ray_start_seconds": t_init, "jobs": len(grid["schemes"]) * len(grid["seeds"]),
                     "cells": len(res["cells"]), "failed": len(res["failed"])})
        print(f"{name}: {wall:.1f} s", flush=True)
    base = runs[0]["wall_seconds"]
    for r in runs:
        r["speedup_vs_local"] = base / r["wall_seconds"]
    cpus = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    meta = {"command": " ".join([sys.executable.split("/")[-1], *sys.argv]), "git_commit": git_commit(),
            "grid": GRID.strip(), "torch": torch.__version__, "cpus": cpus, "ray": ray.__version__}
    write_json(Path(args.out).with_suffix(".json"), {"runs": runs, "meta": meta})
    lines = ["# The same small grid with the local executor and on Ray", "",
             f"8 jobs (4 schemes x 2 seeds on digits-tiny, small CNN, 30 epochs; 2 detector columns each), each "
             f"configuration in a fresh cache, one after the other in one process on this machine ({cpus} "
             "CPUs). "
             "Ray's start-up is inside the wall time.", "",
             "| configuration | wall s | Ray start s | speed-up vs local | cells | failed |", "|---" * 6 + "|"]
    lines += [f"| {r['config']} | {r['wall_seconds']:.1f} | {r['ray_start_seconds']:.1f} | "
              f"{r['speedup_vs_local']:.2f} | {r['cells']} | {r['failed']} |" for r in runs]
    lines += ["", f"Command `{meta['command']}`, commit {meta['git_commit']}, torch {meta['torch']}, "
              f"ray {meta['ray']}."]
    atomic_write_text(Path(args.out).with_suffix(".md"), "\n".join(lines) + "\n")
    print(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
