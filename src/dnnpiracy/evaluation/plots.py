"""Figures for the reproduced tables: FPR/FNR against the threshold (Table V), ROC curves per table (one dataset
each), and a heatmap gallery (clean vs trigger inputs, per class).  Each function returns PNG bytes; callers write
them atomically."""

from __future__ import annotations

import io

import torch


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _png(fig) -> bytes:
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def roc_points(clean_scores, trigger_scores) -> tuple[list[float], list[float]]:
    """(FPR, TPR) at every distinct threshold, flagging score > threshold; starts at (0, 0) and ends at (1, 1).
    Non-finite scores count as the most anomalous (+inf) or least (-inf / NaN never flags)."""
    c = torch.as_tensor(clean_scores, dtype=torch.float64)
    t = torch.as_tensor(trigger_scores, dtype=torch.float64)
    c, t = torch.nan_to_num(c, nan=-torch.inf), torch.nan_to_num(t, nan=-torch.inf)
    thr = torch.unique(torch.cat([c, t])).flip(0)           # descending
    fpr = [0.0] + [float((c >= s).double().mean()) for s in thr.tolist()]
    tpr = [0.0] + [float((t >= s).double().mean()) for s in thr.tolist()]
    if fpr[-1] < 1.0 or tpr[-1] < 1.0:
        fpr.append(1.0)
        tpr.append(1.0)
    return fpr, tpr


def threshold_sweep_figure(rows: list[dict], title: str, default_detector: str | None = None) -> bytes:
    """Table V: FPR and FNR of the paper's detector against tau (with the paper's numbers), and of the calibrated
    detector against its target FPR.  Error bars are the Wilson 95 % intervals pooled over seeds."""
    plt = _plt()
    paper_rows = sorted([r for r in rows if r["tau"] is not None], key=lambda r: r["tau"])
    cal_rows = sorted([r for r in rows if r["target_fpr"] is not None], key=lambda r: r["target_fpr"])
    if default_detector is not None:    # the default first, then the others by name
        cal_rows.sort(key=lambda r: (r["detector"] != default_detector, r["detector"], r["target_fpr"]))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))

    def band(ax, xs, rs, key, colour, label, bars=True, **style):
        mean = [r[f"{key}_mean"] for r in rs]
        lo = [max(r[f"{key}_mean"] - r[f"{key}_ci95"][0], 0) for r in rs]
        hi = [max(r[f"{key}_ci95"][1] - r[f"{key}_mean"], 0) for r in rs]
        ax.errorbar(xs, mean, yerr=[lo, hi] if bars else None, color=colour, ms=4, capsize=3, label=label,
                    **{"marker": "o", **style})

    ax = axes[0]
    if paper_rows:
        xs = [r["tau"] for r in paper_rows]
        band(ax, xs, paper_rows, "fpr", "tab:blue", "FPR (ours)")
        band(ax, xs, paper_rows, "fnr", "tab:red", "FNR (ours)")
        pp = [(r["tau"], r["paper_fpr"], r["paper_fnr"]) for r in paper_rows if r["paper_fpr"] is not None]
        if pp:
            ax.plot([p[0] for p in pp], [p[1] for p in pp], "s--", color="tab:blue", alpha=0.5, mfc="none",
                    label="FPR (paper)")
            ax.plot([p[0] for p in pp], [p[2] for p in pp], "s--", color="tab:red", alpha=0.5, mfc="none",
                    label="FNR (paper)")
        ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel("tau")
    ax.set_ylabel("rate")
    ax.set_ylim(-0.03, 1.03)
    ax.set_title(f"paper detector ({paper_rows[0]['detector'] if paper_rows else 'none'}): alpha_y + tau",
                 fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[1]
    cal_dets = list(dict.fromkeys(r["detector"] for r in cal_rows))     # first = the default (rows sorted so)
    for i, det in enumerate(cal_dets):
        rs = [r for r in cal_rows if r["detector"] == det]
        xs = [r["target_fpr"] for r in rs]
        style = "-" if i == 0 else "--"
        for key, colour in (("fpr", "tab:blue"), ("fnr", "tab:red")):
            band(ax, xs, rs, key, colour, f"{key.upper()} {det}", bars=i == 0, ls=style,
                 marker="o" if i == 0 else "x", alpha=1.0 if i == 0 else 0.6)
    if cal_rows:
        grid = sorted({r["target_fpr"] for r in cal_rows})
        ax.plot(grid, grid, ":", color="gray", label="FPR = target")
        ax.set_xscale("log")
    ax.set_title("calibrated detectors (first = default): threshold at a target FPR", fontsize=9)
    ax.set_xlabel("target FPR")
    ax.set_ylim(-0.03, 1.03)
    ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return _png(fig)


def roc_figure(curves: dict[str, list[tuple[str, list, list]]], title: str) -> bytes:
    """One panel per detector; each curve is one target (label/seed), clean vs the 15 trigger inputs."""
    plt = _plt()
    names = list(curves)
    fig, axes = plt.subplots(1, max(len(names), 1), figsize=(5 * max(len(names), 1), 4.5), squeeze=False)
    for ax, name in zip(axes[0], names):
        for label, c, t in curves[name]:
            f, r = roc_points(c, t)
            ax.plot(f, r, lw=1, alpha=0.7, label=label)
        ax.plot([0, 1], [0, 1], ":", color="gray")
        ax.axvline(0.01, color="k", lw=0.6, ls="--")
        ax.set_xscale("symlog", linthresh=1e-3)
        ax.set_xlim(0, 1)
        ax.set_xlabel("FPR (clean evaluation inputs)")
        ax.set_ylabel("TPR (trigger inputs)")
        ax.set_title(name, fontsize=9)
        if len(curves[name]) <= 12:
            ax.legend(fontsize=6, loc="lower right")
    fig.suptitle(title, fontsize=10)
    return _png(fig)


def traffic_figure(rows: list[dict], title: str) -> bytes:
    """FNR (top) and FPR (bottom) per configuration, surrogate- vs traffic-calibrated threshold, one colour pair per
    detector; the 1 % line marks the target FPR."""
    plt = _plt()
    names = sorted({r["detector"] for r in rows})
    configs = sorted({(r["table"], r["trigger_label"], r["arch"], r["blocks"]) for r in rows})
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 0.45 * len(configs) * len(names)), 7), sharex=True)
    width = 0.8 / (2 * len(names))
    for i, name in enumerate(names):
        per = {(r["table"], r["trigger_label"], r["arch"], r["blocks"]): r for r in rows if r["detector"] == name}
        for j, src in enumerate(("surrogate", "traffic")):
            x = [k + (2 * i + j - len(names) + 0.5) * width for k, c in enumerate(configs) if c in per]
            for ax, rate in zip(axes, ("fnr", "fpr")):
                ax.bar(x, [per[c][f"{src}_{rate}_mean"] for c in configs if c in per], width,
                       label=f"{name}, {src}", alpha=1.0 if src == "traffic" else 0.45, color=f"C{i}")
    axes[1].axhline(0.01, color="k", lw=0.8, ls="--")
    axes[0].set_ylabel("FNR (15 triggers, mean over seeds)")
    axes[1].set_ylabel("FPR (clean, mean over seeds)")
    axes[1].set_xticks(range(len(configs)))
    axes[1].set_xticklabels([f"T{t} L{lab}\n{a}, {b}b" for t, lab, a, b in configs], fontsize=7)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return _png(fig)


def fnr_by_label_figure(rows: list[dict], title: str, max_fnr: float | None = None,
                        default_detector: str | None = None) -> bytes:
    """Per trigger label, each calibrated detector's FNR on the 15 embedded triggers (solid) beside its FNR on fresh
    triggers (the owner's stamp on new images; hatched): where a design gains on one and loses on the other."""
    plt = _plt()
    rows = [r for r in rows if r.get("target_fpr") is not None and r.get("fnr_fresh_mean") is not None]
    names = sorted({r["detector"] for r in rows}, key=lambda d: (d != default_detector, d))
    labels = sorted({r["trigger_label"] for r in rows})
    fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(labels) * max(1, len(names)) / 2), 4))
    width = 0.8 / (2 * max(1, len(names)))
    for i, name in enumerate(names):
        per = {r["trigger_label"]: r for r in rows if r["detector"] == name}
        tag = f"{name} (default)" if name == default_detector else name
        for j, (key, kind) in enumerate((("fnr_mean", "embedded"), ("fnr_fresh_mean", "fresh"))):
            x = [k + (2 * i + j - len(names) + 0.5) * width for k, lab in enumerate(labels) if lab in per]
            ax.bar(x, [per[lab][key] for lab in labels if lab in per], width, color=f"C{i}",
                   hatch="//" if kind == "fresh" else None, alpha=0.55 if kind == "fresh" else 1.0,
                   label=f"{tag}, {kind}")
    if max_fnr is not None:
        ax.axhline(max_fnr, color="k", lw=0.8, ls="--", label=f"bar: FNR <= {max_fnr:g}")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels([f"label {lab}" for lab in labels], fontsize=8)
    ax.set_ylabel("FNR (mean over seeds)")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(title, fontsize=10)
    return _png(fig)


def heatmap_gallery(clean_x, clean_y, clean_maps, clean_pred, trig_x, trig_src, trig_maps, trig_pred,
                    class_names: list[str], title: str) -> bytes:
    """Per class c: a clean input of class c and a trigger input made from a class-c image, each with its Grad-CAM
    heatmap for the predicted label (the evidence the paper's DCGAN sees)."""
    plt = _plt()
    nc = len(class_names)
    fig, axes = plt.subplots(4, nc, figsize=(1.3 * nc, 6.2))
    for c in range(nc):
        ci = torch.nonzero(clean_y == c).flatten()
        ti = torch.nonzero(trig_src == c).flatten()
        for row, (idx, xs, maps, pred, kind) in enumerate([(ci, clean_x, clean_maps, clean_pred, "clean"),
                                                           (ti, trig_x, trig_maps, trig_pred, "trigger")]):
            ax_img, ax_map = axes[2 * row, c], axes[2 * row + 1, c]
            ax_img.axis("off")
            ax_map.axis("off")
            if len(idx) == 0:
                continue
            k = int(idx[0])
            ax_img.imshow(xs[k, 0].numpy(), cmap="gray", vmin=0, vmax=1)
            ax_img.set_title(f"{kind} {class_names[c]}", fontsize=6)
            ax_map.imshow(xs[k, 0].numpy(), cmap="gray", vmin=0, vmax=1)
            ax_map.imshow(maps[k, 0].numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
            ax_map.set_title(f"pred {class_names[int(pred[k])]}", fontsize=6)
    fig.suptitle(title, fontsize=9)
    return _png(fig)


__all__ = ["roc_points", "threshold_sweep_figure", "roc_figure", "heatmap_gallery"]


def window_plane_figure(panels: list[dict], title: str) -> bytes:
    """The window term's plane, one panel per dataset: how many surrogate windows have each (mean, std) pair (log
    scale; the empty cells are what the term flags), with markers for the unusual windows of stamped images.
    ``panels``: dicts with ``name``, ``counts`` ((bins+1, bins+1) tensor over mean x 2 std) and ``markers``
    (label -> (means, stds))."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.6), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        counts = panel["counts"].double()
        ax.imshow(torch.log10(counts.T + 1).numpy(), origin="lower", extent=(0, 1, 0, 0.5), aspect="auto",
                  cmap="Greys")
        colours = ("tab:red", "tab:blue", "tab:green", "tab:orange")
        for (label, (m, s)), colour in zip(panel["markers"].items(), colours):
            ax.scatter(m.numpy(), s.numpy(), s=6, alpha=0.5, color=colour, label=label)
        ax.set_xlabel("window mean")
        ax.set_ylabel("window standard deviation")
        ax.set_title(panel["name"], fontsize=10)
        ax.legend(fontsize=7, loc="upper right")
    fig.suptitle(title, fontsize=10)
    return _png(fig)
