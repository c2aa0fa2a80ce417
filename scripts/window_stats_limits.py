"""Where the window term (``window-stats``, round 10) is blind: its detection rate on stamps that are not flat.

The round-10 scorer flags a query whose most unusual 5x5 window has a (mean, std) pair no surrogate window has. A
solid white disc is such a window; a grey disc, a disc blended into the image, a disc of noise or a stamp smaller
than the window may not be. The scorer reads only the input, so this needs no target: for each surrogate draw (the
paper's 500 images, split seeds 100..) it is fitted on the surrogate set, thresholded by the project's calibrated
rule (target FPR 0.01, 90 % confidence, leave-one-out scores), and measured on the rest of the test set (FPR) and on
500 of those images with each kind of stamp (detection rate = 1 - FNR). Four stamps per image, at random places,
as the owner's trigger. The default detector adds the patch and Deep-kNN terms, which this does not measure.
The figure (``<out>.png``) draws the plane the term works in, for the first draw: how many surrogate windows have
each (mean, std) pair, and the windows of clean and stamped evaluation images far enough from all of them to flag
their image.

    python scripts/window_stats_limits.py --draws 8 --out results/studies/window_stats_limits
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from dnnpiracy.attack import WindowStatsScorer
from dnnpiracy.attack.scorers import Evidence
from dnnpiracy.attack.thresholds import conformal_threshold
from dnnpiracy.data import load_dataset, make_splits
from dnnpiracy.evaluation.plots import window_plane_figure
from dnnpiracy.experiments.reproduce import PROFILES
from dnnpiracy.io import atomic_write_bytes, atomic_write_text, git_commit, write_json
from dnnpiracy.watermark import disc_mask


def stamp(images: torch.Tensor, kind: str, gen: torch.Generator, blocks: int = 4) -> torch.Tensor:
    """Stamp ``blocks`` marks of ``kind`` on each (1, H, W) image at random places (entirely inside it)."""
    out = images.clone()
    h, w = images.shape[-2:]
    radius = 1 if kind == "white disc, radius 1" else 3
    for im in out:
        for _ in range(blocks):
            if kind == "white square 4x4 (BadNets-like)":
                top, left = (int(torch.randint(0, n - 4 + 1, (1,), generator=gen)) for n in (h, w))
                im[:, top:top + 4, left:left + 4] = 1.0
                continue
            cy, cx = (int(torch.randint(radius, n - radius, (1,), generator=gen)) for n in (h, w))
            m = disc_mask(h, w, cy, cx, radius)
            if kind in ("white disc (the owner's trigger)", "white disc, radius 1"):
                im[:, m] = 1.0
            elif kind == "grey disc (0.6)":
                im[:, m] = 0.6
            elif kind == "white disc blended 50 %":
                im[:, m] = 0.5 * im[:, m] + 0.5
            elif kind == "noise disc (uniform 0-1)":
                im[:, m] = torch.rand(int(m.sum()), generator=gen)
            else:
                raise ValueError(f"unknown stamp {kind!r}")
    return out


KINDS = ["white disc (the owner's trigger)", "grey disc (0.6)", "white disc blended 50 %", "noise disc (uniform 0-1)",
         "white disc, radius 1", "white square 4x4 (BadNets-like)"]


def flagging_windows(scorer: WindowStatsScorer, x: torch.Tensor, thr: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(means, stds) of the windows of ``x`` whose distance exceeds the threshold: the windows that flag an image."""
    flat = x.flatten(1)
    mean, std = scorer.window_stats(flat)
    far = scorer.window_distances(flat) > thr
    return mean[far], std[far]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default="fashion-mnist,mnist-10k")
    ap.add_argument("--draws", type=int, default=8)
    ap.add_argument("--out", default="results/studies/window_stats_limits")
    args = ap.parse_args()
    t0 = time.perf_counter()
    rows, panels = [], []
    for name in args.datasets.split(","):
        ds = load_dataset(name)
        fraction = PROFILES["cpu"].surrogate_fraction(name)
        per_kind: dict[str, list[float]] = {k: [] for k in KINDS}
        fprs = []
        for split_seed in range(100, 100 + args.draws):
            sp = make_splits(ds.test_y, fraction, split_seed)
            xs, ys = ds.test_x[sp.surrogate_idx], ds.test_y[sp.surrogate_idx]
            ev = Evidence(input=xs.flatten(1))
            scorer = WindowStatsScorer().fit(ev, ys)
            thr = conformal_threshold(scorer.loo_scores(ev, ys, ys), 0.01, 0.9)
            xe = ds.test_x[sp.evaluation_idx]
            fprs.append(float((scorer.score(Evidence(input=xe.flatten(1)), ys[:0]) > thr).float().mean()))
            gen = torch.Generator().manual_seed(split_seed)
            pick = sp.evaluation_idx[torch.randperm(len(sp.evaluation_idx), generator=gen)[:500]]
            stamped = {kind: stamp(ds.test_x[pick], kind, gen) for kind in KINDS}
            for kind, xt in stamped.items():
                per_kind[kind].append(float((scorer.score(Evidence(input=xt.flatten(1)), ys[:0]) > thr)
                                            .float().mean()))
            if split_seed == 100:
                shown = {"clean evaluation images": xe, KINDS[0]: stamped[KINDS[0]], KINDS[1]: stamped[KINDS[1]]}
                panels.append({"name": f"{name}: windows beyond the threshold (draw 100)",
                               "counts": scorer.counts.view(scorer.bins + 1, scorer.bins + 1),
                               "markers": {k: flagging_windows(scorer, x, thr) for k, x in shown.items()}})
        for kind, rates in per_kind.items():
            rows.append({"dataset": name, "stamp": kind, "draws": args.draws, "fpr_mean": sum(fprs) / len(fprs),
                         "fpr_max": max(fprs), "detection_mean": sum(rates) / len(rates),
                         "detection_min": min(rates)})
        print(name, "done", flush=True)
    meta = {"command": " ".join(["python", *sys.argv]), "git_commit": git_commit(),
            "wall_seconds": time.perf_counter() - t0, "split_seeds": list(range(100, 100 + args.draws)),
            "stamp_seed": "the split seed", "threshold": "target FPR 0.01, 90 % confidence, leave-one-out"}
    out = Path(args.out)
    write_json(out.with_suffix(".json"), {"rows": rows, "meta": meta})
    lines = ["# Where the window term is blind (`window-stats` alone, round 10)", "",
             "The window term fitted on the paper's 500 surrogate images, thresholded by the calibrated rule "
             "(target FPR 0.01, 90 % confidence), then measured on the rest of the test set (FPR) and on 500 of those "
             "images with four stamps of each kind at random places (detection rate = 1 - FNR). Mean and worst over "
             f"{args.draws} surrogate draws. Reads only the input: no target is involved, and the default "
             "detector's patch and Deep-kNN terms are not measured here.", "",
             "| dataset | stamp | FPR mean | FPR max | detected (mean) | detected (worst draw) |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['dataset']} | {r['stamp']} | {r['fpr_mean']:.4f} | {r['fpr_max']:.4f} | "
              f"{r['detection_mean']:.3f} | {r['detection_min']:.3f} |" for r in rows]
    lines += ["", f"Figure: `{out.with_suffix('.png').name}`.", "",
              f"Command `{meta['command']}`, commit {meta['git_commit']}, wall {meta['wall_seconds']:.0f} s."]
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    atomic_write_bytes(out.with_suffix(".png"), window_plane_figure(
        panels, "The window term's plane: surrogate windows per (mean, std) cell (grey, log scale) and the windows "
                "of evaluation images, clean or stamped, that flag their image"))
    print(f"wrote {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
