"""Aggregate and render the scheme benchmark: rows, the held-out bar, the selection criterion, Markdown, figures.

Pure functions of the cells ``experiments/benchmark.py`` writes: nothing here trains or fits anything, so every
table and figure re-renders from the committed cells.
"""

from __future__ import annotations

import io
import math
import statistics
from collections.abc import Iterable

BAR_FPR, BAR_FNR, ALPHA = 0.01, 0.2, 0.01
EMBED_TRIGGER_ACC, EMBED_ACC_LOSS = 0.9, 0.01
TOL = 1e-6   # rates are ratios of counts: 3/15 is 0.2 up to float rounding


def _mean(xs: Iterable[float]) -> float:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return statistics.fmean(xs) if xs else float("nan")


def fresh_or_embedded_fnr(m: dict) -> float:
    """Fresh FNR where the target answers some fresh trigger with its label, else the embedded FNR."""
    f = m.get("fnr_fresh")
    return m["fnr"] if f is None or (isinstance(f, float) and math.isnan(f)) else f


def passes(m: dict) -> bool:
    """One target x detector meets the bar: FPR <= 0.01, FNR <= 0.2 and the owner's verdict is 'not pirated'."""
    return (m["fpr"] <= BAR_FPR + TOL and m["fnr"] <= BAR_FNR + TOL
            and not m["verification_pirated"]["pirated"])


def clean_accuracy(cells: list[dict]) -> dict[tuple[str, int], float]:
    """(dataset, seed) -> the unwatermarked target's test accuracy, from the clean-baseline reports in ``cells``
    (entries ``{"clean_baseline": True, "dataset", "seed", "test_accuracy"}``)."""
    return {(c["dataset"], c["seed"]): c["test_accuracy"] for c in cells if c.get("clean_baseline")}


def aggregate(cells: list[dict], development: Iterable[str], clean: dict | None = None) -> list[dict]:
    """One row per (scheme, dataset, detector): means over seeds, the owner's verdicts, the embedding check."""
    dev = set(development)
    clean = clean or {}
    groups: dict[tuple, list[dict]] = {}
    for c in cells:
        k = (c["cell"]["scheme"], c["cell"]["dataset"], c["cell"]["detector"])
        groups.setdefault(k, []).append(c)
    rows = []
    for (scheme, dataset, detector), cs in groups.items():
        cs = sorted(cs, key=lambda c: c["cell"]["seed"])
        ms = [c["metrics"] for c in cs]
        seeds = [c["cell"]["seed"] for c in cs]
        tr = [c["target_report"] for c in cs]
        base = [clean.get((dataset, s)) for s in seeds]
        cost = [b - r["test_accuracy"] if b is not None else None for b, r in zip(base, tr)]
        embeds = [r["trigger_accuracy"] >= EMBED_TRIGGER_ACC and (c is None or c <= EMBED_ACC_LOSS + TOL)
                  for r, c in zip(tr, cost)]
        rows.append({
            "scheme": scheme, "dataset": dataset, "detector": detector, "held_out": scheme not in dev,
            "seeds": seeds, "n_seeds": len(seeds),
            "target_test_accuracy": _mean(r["test_accuracy"] for r in tr),
            "target_trigger_accuracy": _mean(r["trigger_accuracy"] for r in tr),
            "watermark_accuracy_cost": _mean(cost) if all(c is not None for c in cost) else None,
            "embeds": all(embeds), "embeds_per_seed": embeds,
            "fpr_mean": _mean(m["fpr"] for m in ms), "fnr_mean": _mean(m["fnr"] for m in ms),
            "fnr_fresh_mean": _mean(m.get("fnr_fresh") for m in ms),
            "auroc_mean": _mean(m["auroc"] for m in ms),
            "tpr_at_1pct_fpr_mean": _mean(m["tpr_at_1pct_fpr"] for m in ms),
            "accuracy_loss_mean": _mean(m["accuracy_loss"] for m in ms),
            "owner_pirated_share": _mean(float(m["verification_pirated"]["pirated"]) for m in ms),
            "owner_p_values": [m["verification_pirated"]["p_value"] for m in ms],
            "target_verified_share": _mean(float(m["verification_target"]["pirated"]) for m in ms),
            "passes_per_seed": [passes(m) for m in ms],
            # the owner's test on an unwatermarked target of another seed ('pirated' = a false claim)
            "independent_pirated": [c["independent_verification"]["pirated"] for c in cs
                                    if "independent_verification" in c],
        })
    return sorted(rows, key=lambda r: (r["dataset"], r["held_out"], r["scheme"], r["detector"]))


def meets_bar(row: dict) -> bool:
    """The held-out bar on a row: mean FPR <= 0.01, mean FNR <= 0.2, 'not pirated' in every seed."""
    return (row["fpr_mean"] <= BAR_FPR + TOL and row["fnr_mean"] <= BAR_FNR + TOL
            and row["owner_pirated_share"] == 0.0)


# ------------------------------------------------------------------------------------------------------ selection
def n_terms(detector: str) -> int:
    """How many scores a design sums (1 for a single scorer)."""
    from dnnpiracy.attack import build_scorer, resolve_spec
    from dnnpiracy.config import DetectorConfig
    scorer = build_scorer(resolve_spec(detector).scorer, DetectorConfig())
    return len(getattr(scorer, "components", [scorer]))


def selection_scores(cells: list[dict], exclude_scheme: str | None = None) -> list[dict]:
    """The protocol's criterion per candidate (docs/heldout_protocol.md): share of development targets passed,
    then the mean of (FNR + fresh FNR) / 2, then the mean FPR, then the number of terms; best first."""
    by_det: dict[str, list[dict]] = {}
    for c in cells:
        if c["cell"]["scheme"] != exclude_scheme:
            by_det.setdefault(c["cell"]["detector"], []).append(c["metrics"])
    out = []
    for det, ms in by_det.items():
        out.append({"detector": det, "n_targets": len(ms), "pass_share": _mean(float(passes(m)) for m in ms),
                    "mean_fnr_embedded_fresh": _mean((m["fnr"] + fresh_or_embedded_fnr(m)) / 2 for m in ms),
                    "mean_fpr": _mean(m["fpr"] for m in ms), "mean_fnr": _mean(m["fnr"] for m in ms),
                    "mean_auroc": _mean(m["auroc"] for m in ms), "terms": n_terms(det)})
    return sorted(out, key=lambda r: (-r["pass_share"], r["mean_fnr_embedded_fresh"], r["mean_fpr"], r["terms"]))


def mea_defender_claim(cells: list[dict], max_fpr: float = 0.0075) -> list[dict]:
    """MEA-Defender's authors report that a LOF query detector catches about 1 % of their composite triggers at
    0.75 % FPR.  Per dataset and seed: the share of ``halfmix`` triggers (embedded and fresh) the ``lof`` column
    ranks above every clean score but a ``max_fpr`` share (the oracle threshold, from the cell's stored scores)."""
    import torch

    from dnnpiracy.evaluation.metrics import tpr_at_fpr
    out = []
    for c in cells:
        if c["cell"]["scheme"] == "halfmix" and c["cell"]["detector"] == "lof":
            sc = {k: torch.tensor(v) for k, v in c["scores"].items()}
            out.append({"dataset": c["cell"]["dataset"], "seed": c["cell"]["seed"], "max_fpr": max_fpr,
                        "tpr_embedded": tpr_at_fpr(sc["clean"], sc["triggers"], max_fpr),
                        "tpr_fresh": tpr_at_fpr(sc["clean"], sc["fresh"], max_fpr)})
    return sorted(out, key=lambda r: (r["dataset"], r["seed"]))


# -------------------------------------------------------------------------------------------------------- render
def _f(v, p=3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.{p}f}"


def _p(v: float) -> str:
    return f"{v:.2g}"


def _k_of_n(flags: list[bool] | None) -> str:
    return f"{sum(flags)}/{len(flags)}" if flags else "-"


def schemes_markdown(rows: list[dict], grid: dict, default_name: str, meta: dict, summaries: dict) -> str:
    """results/schemes.md: the default per scheme x dataset, then the FNR matrix of every detector."""
    L = [f"# {grid['title']}", "",
         "Rows: watermark scheme x dataset; `held out` = never used to design or select a detector "
         "(protocol: `docs/heldout_protocol.md`, committed before the selection run). "
         f"Targets: {meta['profile']}. Calibrated detectors at target FPR 0.01 with 90 % confidence. Rates are "
         "fractions; FPR over the clean evaluation split; FNR over the 15 embedded triggers; fresh FNR over the "
         "scheme's trigger on 500 new evaluation images, counted where the target answers the trigger's label. "
         "`owner pirated` = seeds in which the owner's binomial test (alpha 0.01) still proves piracy against the "
         "pirated model; the test is against chance 1/10, and 1/2 for `frontier` (Le Merrer et al.'s null). "
         "`unwatermarked model 'pirated'` = seeds in which the same test says 'pirated' of the unwatermarked target "
         "trained with the grid's next seed, a model that is not a copy: a false claim "
         "(`experiments/independent.py`).", "",
         f"`default` is `{default_name}` here.", ""]
    for ds in sorted({r["dataset"] for r in rows}):
        mine = [r for r in rows if r["dataset"] == ds and r["detector"] == default_name]
        L += [f"## {ds}: the default detector", "",
              "| scheme | held out | embeds | target acc | wm cost | trigger acc | FPR | FNR | fresh FNR | AUROC | "
              "TPR@1%FPR | owner pirated | p-values | bar | unwatermarked model 'pirated' |", "|" + "---|" * 15]
        for r in mine:
            bar = "met" if meets_bar(r) else "**missed**"
            L.append(f"| {r['scheme']} | {'yes' if r['held_out'] else 'no'} | {'yes' if r['embeds'] else '**no**'} "
                     f"| {_f(r['target_test_accuracy'])} | {_f(r['watermark_accuracy_cost'])} "
                     f"| {_f(r['target_trigger_accuracy'], 2)} | {_f(r['fpr_mean'], 4)} | {_f(r['fnr_mean'])} "
                     f"| {_f(r['fnr_fresh_mean'])} | {_f(r['auroc_mean'])} | {_f(r['tpr_at_1pct_fpr_mean'])} "
                     f"| {round(r['owner_pirated_share'] * r['n_seeds'])}/{r['n_seeds']} "
                     f"| {', '.join(_p(p) for p in r['owner_p_values'])} | {bar} "
                     f"| {_k_of_n(r.get('independent_pirated'))} |")
        L.append("")
    order = {d: i for i, d in enumerate(meta.get("detector_order", []))}
    dets = sorted(dict.fromkeys(r["detector"] for r in rows), key=lambda d: (order.get(d, len(order)), d))
    for ds in sorted({r["dataset"] for r in rows}):
        L += [f"## {ds}: FNR of every detector (mean over seeds; FPR in brackets)", "",
              "| scheme | " + " | ".join(f"`{d}`" for d in dets) + " |", "|---|" + "---|" * len(dets)]
        for scheme in dict.fromkeys(r["scheme"] for r in rows if r["dataset"] == ds):
            cells = {r["detector"]: r for r in rows if r["dataset"] == ds and r["scheme"] == scheme}
            L.append(f"| {scheme} | " + " | ".join(
                f"{_f(cells[d]['fnr_mean'])} ({_f(cells[d]['fpr_mean'], 4)})" if d in cells else "-"
                for d in dets) + " |")
        L.append("")
    if meta.get("mea_defender"):
        L += ["## MEA-Defender's claim: LOF catches about 1 % of its triggers at 0.75 % FPR", "",
              "LOF (scikit-learn, k = 20) on the target's penultimate features, fitted on the surrogate set; share of "
              "`halfmix` triggers above the clean score that 0.75 % of clean evaluation inputs exceed (fresh: the "
              "scheme's trigger on 500 new images, all counted here).", "",
              "| dataset | seed | TPR embedded | TPR fresh |", "|---|---|---|---|"]
        L += [f"| {r['dataset']} | {r['seed']} | {_f(r['tpr_embedded'])} | {_f(r['tpr_fresh'])} |"
              for r in meta["mea_defender"]]
        L.append("")
    L += ["## Schemes", "", "| scheme | reference | what a trigger is |", "|---|---|---|"]
    L += [f"| {n} | {s['reference']} | {s['summary']} |" for n, s in summaries.items()]
    L += ["", "Heat map of the matrix (colour: FNR at an oracle threshold with clean FPR <= 1 %; text: the calibrated "
          "detector's FNR and FPR):", "", "![matrix](matrix.png)", "",
          "Each scheme's first embedded triggers (seed of the grid's first column, label after the arrow):", "",
          "![gallery](gallery.png)", "",
          f"Cells: {meta['cells_done']}/{meta['cells_total']} finished; {meta.get('failed', 0)} failed. "
          f"Compute of the finished cells: {meta['compute_seconds']:.0f} s (targets {meta['target_seconds']:.0f} s, "
          f"detectors {meta['detector_seconds']:.0f} s) on {', '.join(meta['devices'])}; the cells were computed at "
          f"commit(s) {', '.join(meta.get('cell_commits', [])) or 'n/a'} (each cell records its own command-free "
          f"provenance: commit, device, seconds). Rendered by `{meta['command']}` at commit {meta['git_commit']}, "
          f"wall time of that invocation {meta['wall_seconds']:.0f} s."]
    return "\n".join(L) + "\n"


def short_name(detector: str) -> str:
    """A detector name short enough for an axis: ensembles as the '+'-joined initials of their terms."""
    if detector.startswith("ensemble:"):
        return "+".join(detector.split(":", 1)[1].split(","))
    return detector.replace("ensemble-", "ens-")


def matrix_png(rows: list[dict], detectors: list[str]) -> bytes:
    """Heat map, one panel per dataset: scheme x detector coloured by FNR at clean FPR <= 1 % (1 - TPR@1%FPR, the
    oracle threshold), annotated with the calibrated detector's FNR / FPR."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    datasets = sorted({r["dataset"] for r in rows})
    schemes = list(dict.fromkeys(r["scheme"] for r in rows))
    fig, axes = plt.subplots(len(datasets), 1, figsize=(1.1 * len(detectors) + 3.5,
                                                      (0.5 * len(schemes) + 2.6) * len(datasets)), squeeze=False)
    for ax, ds in zip(axes[:, 0], datasets):
        M = np.full((len(schemes), len(detectors)), np.nan)
        for r in rows:
            if r["dataset"] == ds and r["detector"] in detectors:
                i, j = schemes.index(r["scheme"]), detectors.index(r["detector"])
                M[i, j] = 1 - r["tpr_at_1pct_fpr_mean"]
                ax.text(j, i, f"{r['fnr_mean']:.2f}\n{r['fpr_mean']:.3f}", ha="center", va="center", fontsize=6,
                        color="black" if M[i, j] > 0.5 else "white")
        im = ax.imshow(M, cmap="viridis", vmin=0, vmax=1, aspect="auto")
        held = {r["scheme"]: r["held_out"] for r in rows}
        ax.set_yticks(range(len(schemes)), [f"{s}{' (held out)' if held[s] else ''}" for s in schemes], fontsize=7)
        ax.set_xticks(range(len(detectors)), [short_name(d) for d in detectors], rotation=60, ha="right",
                      fontsize=6)
        ax.set_title(f"{ds}: FNR at clean FPR <= 1 % (text: calibrated FNR / FPR)", fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.03)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def gallery_png(sets: dict[tuple[str, str], "object"], per_row: int = 5) -> bytes:
    """One row per (scheme, dataset): the first triggers of each set, titled with their labels."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(sets)
    fig, axes = plt.subplots(len(keys), per_row, figsize=(1.3 * per_row, 1.35 * len(keys)), squeeze=False)
    for i, key in enumerate(keys):
        ts = sets[key]
        for j in range(per_row):
            ax = axes[i][j]
            ax.axis("off")
            if j < len(ts):
                ax.imshow(ts.images[j, 0].numpy(), cmap="gray", vmin=0, vmax=1)
                ax.set_title(f"-> {int(ts.labels[j])}", fontsize=6)
        axes[i][0].text(-4, 14, f"{key[0]}\n{key[1]}", fontsize=7, ha="right", va="center")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


__all__ = ["mea_defender_claim", "aggregate", "meets_bar", "passes", "selection_scores", "schemes_markdown",
           "matrix_png", "gallery_png", "clean_accuracy", "fresh_or_embedded_fnr", "short_name", "n_terms"]
