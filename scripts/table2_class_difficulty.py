"""Why Table II's default misses more triggers on some labels: per-class test accuracy of the cached Table II targets
beside the default detector's FNR for that trigger label.

Reads the cached targets of `dnnpiracy reproduce --table 2 --profile cpu` (trains nothing; fails if a target is not
cached) and results/tables/table2.json.  Writes results/studies/table2_class_difficulty.{md,json}.

    python scripts/table2_class_difficulty.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from dnnpiracy.attack import default_detector
from dnnpiracy.data import load_dataset
from dnnpiracy.experiments.reproduce import PROFILES, load_table, table_cells
from dnnpiracy.experiments.runner import default_cache_dir, get_target, target_key
from dnnpiracy.io import atomic_write_text, git_commit, read_json, write_json

OUT = Path("results/studies/table2_class_difficulty")


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    def ranks(v: list[float]) -> torch.Tensor:
        t = torch.tensor(v, dtype=torch.float64)
        r = torch.empty_like(t)
        order = t.argsort()
        r[order] = torch.arange(len(t), dtype=torch.float64)
        for x in t.unique():                      # ties: the mean of their ranks
            r[t == x] = r[t == x].mean()
        return r
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def main() -> None:
    t_start = time.perf_counter()
    torch.set_num_threads(2)
    ds = load_dataset("fashion-mnist")
    design = default_detector(ds.name)
    cache = default_cache_dir()
    table = read_json(Path("results/tables/table2.json"))
    fnr = {r["trigger_label"]: r for r in table["rows"] if r["detector"] == design}
    # one target per (trigger label, seed): the paper-detector cells name each target once
    cells = [c for c in table_cells(load_table("2"), PROFILES["cpu"], ds.name) if c.detector == "paper"]
    acc: dict[int, list[list[float]]] = {}
    for cell in cells:
        splits = cell.splits(ds)
        trigger = cell.trigger_config()
        if not (cache / "targets" / target_key(ds.name, cell.train, trigger, splits)).exists():
            sys.exit(f"target of trigger label {cell.trigger_label}, seed {cell.seed} is not cached: run "
                     "`dnnpiracy reproduce --table 2 --profile cpu` first")
        model = get_target(ds, splits, cell.train, trigger, cache, False, lambda *_: None).model.eval()
        with torch.no_grad():
            pred = torch.cat([model(ds.test_x[i:i + 1000]).argmax(1) for i in range(0, len(ds.test_x), 1000)])
        per_class = [(pred[ds.test_y == c] == c).float().mean().item() for c in range(ds.num_classes)]
        acc.setdefault(cell.trigger_label, []).append(per_class)
        print(f"label {cell.trigger_label} seed {cell.seed}: " + " ".join(f"{a:.3f}" for a in per_class), flush=True)
    rows = []
    for label in sorted(acc):
        mean = torch.tensor(acc[label]).mean(0)
        rows.append({"trigger_label": label, "class_name": ds.class_names[label], "seeds": len(acc[label]),
                     "class_accuracy": float(mean[label]), "per_class_accuracy": mean.tolist(),
                     "default_fnr_mean": fnr[label]["fnr_mean"], "default_auroc_mean": fnr[label]["auroc_mean"]})
    rho = spearman([r["class_accuracy"] for r in rows], [r["default_fnr_mean"] for r in rows])
    meta = {"detector": design, "spearman_class_accuracy_vs_fnr": rho, "wall_seconds": time.perf_counter() - t_start,
            "command": "python scripts/table2_class_difficulty.py", "git_commit": git_commit(),
            "source": "cached Table II targets (cpu profile) and results/tables/table2.json"}
    write_json(OUT.with_suffix(".json"), {"rows": rows, "meta": meta})
    lines = ["# Table II: trigger-label difficulty against the target's per-class accuracy", "",
             f"For each trigger label L: the test accuracy of class L on the targets watermarked with L (mean over "
             f"{rows[0]['seeds']} seeds, all 1,000 test images of the class) and the FNR and AUROC of the default "
             f"detector (`{design}`) from `table2.json`.", "",
             "| trigger label | class | class accuracy | default FNR | default AUROC |", "|---|---|---|---|---|"]
    lines += [f"| {r['trigger_label']} | {r['class_name']} | {r['class_accuracy']:.3f} | {r['default_fnr_mean']:.3f} | "
              f"{r['default_auroc_mean']:.3f} |" for r in rows]
    lines += ["", f"Spearman rank correlation between class accuracy and FNR: {rho:.2f}.", "",
              f"Wall time {meta['wall_seconds']:.0f} s. Command `{meta['command']}`, commit {meta['git_commit']}."]
    atomic_write_text(OUT.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
