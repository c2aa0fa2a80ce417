"""Run outputs: report.json, a Markdown summary and a figure (heatmaps of clean vs trigger inputs; per-class score
histograms with the thresholds marked)."""

from __future__ import annotations

import io
from pathlib import Path

import torch

from dnnpiracy.io import atomic_write_bytes, atomic_write_text, write_json


def _fmt(v, p: int = 4) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return "n/a" if v != v else f"{v:.{p}f}"
    return str(v)


def summary_markdown(r: dict) -> str:
    vt, vp = r["verification_target"], r["verification_pirated"]
    lines = [
        f"# dnnpiracy run: {r['dataset']}, {r['arch']}, trigger label {r['trigger_label']}, detector {r['detector']}",
        "",
        f"{r.get('dataset_note', '')}",
        "",
        "Rates are fractions of inputs (not percent). FNR is over the embedded trigger inputs "
        f"({r['n_triggers']}); FPR over {r['n_clean']} clean evaluation inputs (test set minus the surrogate set).",
        "",
        "| metric | value |", "|---|---|",
        f"| target test accuracy (evaluation split) | {_fmt(r['target_test_accuracy'])} |",
        f"| pirated test accuracy (evaluation split) | {_fmt(r['pirated_test_accuracy'])} |",
        f"| accuracy loss | {_fmt(r['accuracy_loss'])} |",
        f"| target trigger accuracy | {_fmt(r['target_trigger_accuracy'])} |",
        f"| pirated trigger accuracy | {_fmt(r['pirated_trigger_accuracy'])} |",
        f"| FPR (95 % Wilson CI) | {_fmt(r['fpr'])} ({_fmt(r['fpr_ci95'][0])}-{_fmt(r['fpr_ci95'][1])}) |",
        f"| FNR (95 % Wilson CI) | {_fmt(r['fnr'])} ({_fmt(r['fnr_ci95'][0])}-{_fmt(r['fnr_ci95'][1])}) |",
        f"| FNR on fresh triggers predicted as the trigger label ({r.get('n_fresh_effective', 0)}) | "
        f"{_fmt(r.get('fnr_fresh'))} |",
        f"| AUROC (clean vs triggers) | {_fmt(r['auroc'])} |",
        f"| TPR at 1 % FPR | {_fmt(r['tpr_at_1pct_fpr'])} |",
        f"| owner's verdict vs target | {vt['verdict']} ({vt['n_trigger_label']}/{vt['n_queries']}, "
        f"p = {vt['p_value']:.2e}) |",
        f"| owner's verdict vs pirated | {vp['verdict']} ({vp['n_trigger_label']}/{vp['n_queries']}, "
        f"p = {vp['p_value']:.2e}) |",
        "",
        f"Detector: `{r['detector']}` ({r['detector_spec'].get('description') or r['detector_spec']['scorer']}), "
        f"rule {r['detector_spec']['rule']}"
        + (f", tau {r['tau']}" if r.get("tau") is not None else f", target FPR {r['target_fpr']}" + (
            f" held with {conf:.0%} confidence over surrogate draws"
            if (conf := r.get("config", {}).get("detector", {}).get("fpr_confidence")) else " on average"))
        + f", heatmap layer {r['detector_spec']['heatmap_layer']}.",
        "",
        "Timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in r["timings"].items()),
        "",
        f"Seed {r['seed']}, commit {r['git_commit']}, torch {r['torch']}, {r['threads']} threads.",
    ]
    return "\n".join(lines) + "\n"


def headline_text(r: dict) -> str:
    """The run's headline numbers in three lines, for the figure: FPR, FNR, fresh FNR and the owner's verdicts."""
    def verdict(v: dict) -> str:
        return (f"{v['verdict']} ({v['n_trigger_label']}/{v['n_queries']} answered with their watermark label, "
                f"p = {v['p_value']:.2e})")
    fpr_ci, fnr_ci = r.get("fpr_ci95") or [None, None], r.get("fnr_ci95") or [None, None]
    return "\n".join([
        f"FPR {_fmt(r.get('fpr'))} (95 % CI {_fmt(fpr_ci[0])}-{_fmt(fpr_ci[1])}) on {r.get('n_clean', '?')} clean "
        f"inputs   FNR {_fmt(r.get('fnr'))} (95 % CI {_fmt(fnr_ci[0])}-{_fmt(fnr_ci[1])}) on "
        f"{r.get('n_triggers', '?')} trigger inputs   fresh FNR {_fmt(r.get('fnr_fresh'))} "
        f"({r.get('n_fresh_effective', 0)} fresh triggers)",
        f"owner's verdict, stolen target: {verdict(r['verification_target'])}",
        f"owner's verdict, pirated classifier: {verdict(r['verification_pirated'])}",
    ])


def run_figure(ds, target, det, clean, trig, n_show: int = 6, report: dict | None = None) -> bytes:
    """PNG bytes of :func:`run_figure_fig`."""
    fig = run_figure_fig(ds, target, det, clean, trig, n_show, report)
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def run_figure_fig(ds, target, det, clean, trig, n_show: int = 6, report: dict | None = None):
    """The run's figure: Grad-CAM of clean and trigger inputs (top), per-class anomaly-score histograms with the
    thresholds (bottom), and, given the ``report``, its headline numbers in a box above the title."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nc = det.num_classes
    fig = plt.figure(figsize=(15, 8.5))
    gs = fig.add_gridspec(2, 1, height_ratios=[1.1, 1])
    top = gs[0].subgridspec(2, 2 * n_show, hspace=0.35)
    gen = torch.Generator().manual_seed(0)
    picks = torch.randperm(len(clean.y), generator=gen)[:n_show]
    groups = [("clean", clean.x[picks], clean.inspection.probe.heatmaps[picks], clean.inspection.flags[picks]),
              ("trigger", trig.x[:n_show], trig.inspection.probe.heatmaps[:n_show], trig.inspection.flags[:n_show])]
    for row, (name, xs, hs, fl) in enumerate(groups):
        for k in range(min(n_show, len(xs))):
            ax = fig.add_subplot(top[row, 2 * k])
            ax.imshow(xs[k, 0], cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"{name}", fontsize=7)
            ax.axis("off")
            ax = fig.add_subplot(top[row, 2 * k + 1])
            ax.imshow(xs[k, 0], cmap="gray", vmin=0, vmax=1)
            ax.imshow(hs[k, 0], cmap="jet", alpha=0.5, vmin=0, vmax=1)
            ax.set_title("flagged" if bool(fl[k]) else "passed", fontsize=7, color="red" if bool(fl[k]) else "green")
            ax.axis("off")
    bottom = gs[1].subgridspec(2, (nc + 1) // 2, hspace=0.6, wspace=0.3)
    cs, cy = clean.inspection.scores, clean.inspection.predictions
    ts, ty = trig.inspection.scores, trig.inspection.predictions
    for c in range(nc):
        ax = fig.add_subplot(bottom[c // ((nc + 1) // 2), c % ((nc + 1) // 2)])
        sc = cs[(cy == c) & torch.isfinite(cs)]
        st = ts[(ty == c) & torch.isfinite(ts)]
        allv = torch.cat([sc, st])
        if len(allv):
            bins = torch.linspace(float(allv.min()), float(allv.max()) + 1e-9, 30).numpy()
            ax.hist(sc.numpy(), bins=bins, color="tab:blue", alpha=0.7, label="clean")
            if len(st):
                ax.hist(st.numpy(), bins=bins, color="tab:red", alpha=0.9, label="trigger")
        thr = float(det.thresholds[c])
        if thr != float("inf"):
            ax.axvline(thr, color="k", ls="--", lw=1)
        name = ds.class_names[c] if c < len(ds.class_names) else str(c)
        ax.set_title(f"predicted {name}", fontsize=8)
        ax.set_xlabel("anomaly score", fontsize=6)
        ax.set_ylabel("inputs (log)", fontsize=6)
        ax.tick_params(labelsize=6)
        ax.set_yscale("log")
        if c == 0:
            ax.legend(fontsize=6)
    fig.suptitle(f"{ds.name} / {det.name}: Grad-CAM at {det.cam.layer} (top), anomaly scores per predicted class "
                 f"with the threshold (dashed, bottom)", fontsize=10, y=1.0)
    if report is not None:
        fig.text(0.5, 1.015, headline_text(report), ha="center", va="bottom", fontsize=9, family="monospace",
                 bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "0.6"})
    return fig


def write_run_outputs(out_dir: Path, report: dict, ds, target, det, clean, trig) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "report.json", report)
    if target.triggers is not None:     # the owner's trigger set, beside the run (for `verify --url`)
        from dnnpiracy.watermark import save_trigger_set
        save_trigger_set(out_dir / "triggers.safetensors", target.triggers, {"dataset": ds.name,
                                                                             "source_split": "train"})
    atomic_write_text(out_dir / "summary.md", summary_markdown(report))
    atomic_write_bytes(out_dir / "figure.png", run_figure(ds, target, det, clean, trig, report=report))
