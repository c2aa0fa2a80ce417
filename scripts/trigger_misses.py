"""Which embedded triggers the calibrated detectors miss: by the true label of the image each was stamped on.

The owner samples its 15 trigger images from the whole training set (the paper's procedure), so about one in ten
is already of the trigger label: a stamped 6 relabelled 6. Such a trigger carries no ownership evidence (a model
without the watermark answers 6 too) and its source class gives the pirate's class-consistency evidence nothing to
read. This splits each table's FNR into triggers made from images of the trigger label ("same-class") and the
rest ("informative"), per detector.

A calibrated detector flags a query when its score exceeds one threshold shared by all classes, so the triggers a
cell missed are exactly its ``k_fn`` lowest-scoring ones; the cell keeps all 15 scores, and the target's report
keeps the triggers' source indices. Computes nothing: reads the cached cells and target reports.

    python scripts/trigger_misses.py --tables 1,2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from dnnpiracy.attack import default_detector, resolve_spec
from dnnpiracy.experiments.reproduce import PROFILES, load_table, resolve_dataset, table_cells
from dnnpiracy.experiments.runner import default_cache_dir, target_key
from dnnpiracy.io import atomic_write_text, git_commit, read_json, write_json


def cell_misses(out: dict, source_labels: list[int], trigger_label: int, target_fpr: float = 0.01) -> dict:
    """Misses at ``target_fpr``, split by whether the trigger's source image already had the trigger label."""
    res = next(r for r in out["results"] if r.get("target_fpr") == target_fpr)
    scores = out["scores"]["triggers"]
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    k = res["k_fn"]
    if 0 < k < len(scores) and not scores[order[k - 1]] < scores[order[k]]:   # a tie (rounded scores) or a NaN
        raise ValueError(f"cannot tell which {k} of the triggers were missed: scores {scores[order[k - 1]]} and "
                         f"{scores[order[k]]} straddle the threshold")
    missed = set(order[:k])
    same = [i for i, y in enumerate(source_labels) if y == trigger_label]
    return {"n": len(scores), "n_same": len(same), "missed": k,
            "missed_same": sum(i in missed for i in same), "fpr": res["fpr"]}


def table_rows(table: str, profile: str) -> list[dict]:
    spec = load_table(table)
    ds = resolve_dataset(spec["dataset"], None)
    cache = default_cache_dir()
    rows: dict[tuple[str, str, int, int], dict] = {}
    for c in table_cells(spec, PROFILES[profile], ds.name):
        if resolve_spec(c.detector).rule != "calibrated":
            continue
        path = cache / "cells" / f"{c.key()}.json"
        key = target_key(ds.name, c.train, c.trigger_config(), c.target_splits(ds))
        report = cache / "targets" / key / "report.json"
        if not path.exists() or not report.exists():
            continue
        out = read_json(path)
        if not out.get("scores"):
            continue
        src = [int(ds.train_y[i]) for i in read_json(report)["trigger_source_idx"]]
        m = cell_misses(out, src, c.trigger_label)
        r = rows.setdefault((c.detector, c.arch, c.blocks, c.trigger_label), {
            "table": table, "dataset": ds.name, "detector": c.detector, "arch": c.arch, "blocks": c.blocks,
            "trigger_label": c.trigger_label, "seeds": [], "n": 0, "n_same": 0, "missed": 0, "missed_same": 0})
        r["seeds"].append(c.seed)
        for k in ("n", "n_same", "missed", "missed_same"):
            r[k] += m[k]
    for r in rows.values():
        n_inf = r["n"] - r["n_same"]
        r["fnr"] = r["missed"] / r["n"]
        r["fnr_same"] = r["missed_same"] / r["n_same"] if r["n_same"] else None
        r["fnr_informative"] = (r["missed"] - r["missed_same"]) / n_inf if n_inf else None
        r["default"] = r["detector"] == default_detector(ds.name)
    return sorted(rows.values(), key=lambda r: (not r["default"], r["detector"], r["arch"], r["blocks"],
                                                r["trigger_label"]))


def _f(v) -> str:
    return "" if v is None else f"{v:.3f}"


def markdown(rows: list[dict], meta: dict) -> str:
    lines = ["# Missed triggers by the label of the image they were stamped on", "",
             f"Calibrated detectors at target FPR 0.01 (90 % confidence), {meta['profile']} profile, pooled over "
             "the seeds listed. "
             "`same-class`: triggers stamped on a training image that already has the trigger label (a stamped 6 "
             "relabelled 6: no ownership evidence, nothing for class-consistency evidence to read); `informative`: "
             "the rest. FNR = missed / triggers in the group, over all seeds of the row (the tables average per seed, "
             "which for 15 triggers per seed is the same number).", ""]
    for table in sorted({r["table"] for r in rows}):
        sub = [r for r in rows if r["table"] == table]
        lines += [f"## Table {table} ({sub[0]['dataset']})", "",
                  "| detector | arch | blocks | label | seeds | triggers | same-class | missed | missed same-class | "
                  "FNR | FNR same-class | FNR informative |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in sub:
            name = r["detector"] + (" (default)" if r["default"] else "")
            lines.append(f"| {name} | {r['arch']} | {r['blocks']} | {r['trigger_label']} | "
                         f"{','.join(map(str, sorted(r['seeds'])))} | {r['n']} | "
                         f"{r['n_same']} | {r['missed']} | {r['missed_same']} | {_f(r['fnr'])} | {_f(r['fnr_same'])} | "
                         f"{_f(r['fnr_informative'])} |")
        for det in sorted({r["detector"] for r in sub}):
            d = [r for r in sub if r["detector"] == det]
            n, ns, m, ms = (sum(r[k] for r in d) for k in ("n", "n_same", "missed", "missed_same"))
            lines.append(f"| **{det}, all rows** | | | | | {n} | {ns} | {m} | {ms} | {_f(m / n)} | "
                         f"{_f(ms / ns if ns else None)} | {_f((m - ms) / (n - ns) if n > ns else None)} |")
        lines.append("")
    lines.append(f"Wall time {meta['wall_seconds']:.1f} s (reads the cache). Command `{meta['command']}`, "
                 f"commit {meta['git_commit']}.")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tables", default="1,2", help="comma-separated tables among 1-4")
    ap.add_argument("--profile", default="cpu", choices=sorted(PROFILES))
    ap.add_argument("--out", default="results/studies/trigger_misses", help="writes OUT.md and OUT.json")
    args = ap.parse_args()
    t0 = time.perf_counter()
    tables = [t.strip() for t in args.tables.split(",") if t.strip()]
    if not tables or any(t not in {"1", "2", "3", "4"} for t in tables):
        sys.exit(f"--tables must be among 1,2,3,4; got {args.tables!r}")
    rows = [r for t in tables for r in table_rows(t, args.profile)]
    if not rows:
        sys.exit("no finished calibrated cell with kept scores and a cached target: run `dnnpiracy reproduce` first")
    meta = {"command": "python " + " ".join(sys.argv), "git_commit": git_commit(),
            "wall_seconds": time.perf_counter() - t0, "profile": args.profile}
    out = Path(args.out)
    write_json(out.with_suffix(".json"), {"rows": rows, "meta": meta})
    atomic_write_text(out.with_suffix(".md"), markdown(rows, meta))
    print(f"wrote {out.with_suffix('.md')} ({len(rows)} rows)")


if __name__ == "__main__":
    main()
