"""The peers report (``results/peers/peers.md`` / ``.json`` / ``tradeoff.png``): every attack of the peers grid as a
column, detectors (detect and lie) and removal attacks alike, read by the criterion of docs/peers_protocol.md.

An attack *evades* on a target when the owner's verification (binomial, alpha 0.01) of what the attacker deploys says
"not pirated"; the accuracy loss is the stolen model's clean accuracy on the evaluation split minus the deployed one's.
"""

from __future__ import annotations

import io
from collections import defaultdict
from pathlib import Path

from dnnpiracy.experiments.bench_report import _f, _p


def attack_name(cell: dict) -> tuple[str, str, str]:
    """(attack, kind, attacker data) of a detector or removal cell."""
    c = cell["cell"]
    if "removal" in c:
        return c["removal"] + ("" if c["data"] == "surrogate" else f"@{c['data']}"), "removal", c["data"]
    return c["detector"], "detector", "surrogate"


def cell_outcome(cell: dict) -> dict:
    m = cell["metrics"]
    if "removal" in cell["cell"]:
        v = m["verification_removed"]
        return {"accuracy_loss": m["accuracy_loss"], "deployed_trigger_accuracy": m["removed_trigger_accuracy"],
                "p_value": v["p_value"], "evades": not v["pirated"], "seconds": cell["seconds"]}
    v = m["verification_pirated"]
    return {"accuracy_loss": m["accuracy_loss"], "deployed_trigger_accuracy": m["pirated_trigger_accuracy"],
            "p_value": v["p_value"], "evades": not v["pirated"], "fpr": m["fpr"], "fnr": m["fnr"],
            "seconds": cell["seconds"]}


def aggregate(cells: list[dict], default_name: str) -> list[dict]:
    """One row per (scheme, dataset, attack), over the seeds present."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for cell in cells:
        name, kind, data = attack_name(cell)
        c = cell["cell"]
        groups[(c["scheme"], c["dataset"], name, kind, data)].append(cell)
    rows = []
    for (scheme, dataset, name, kind, data), cs in sorted(groups.items()):
        outs = [cell_outcome(c) for c in sorted(cs, key=lambda c: c["cell"]["seed"])]
        row = {"scheme": scheme, "dataset": dataset, "attack": "default" if name == default_name else name,
               "design": name, "kind": kind, "data": data, "seeds": [c["cell"]["seed"] for c in cs],
               "accuracy_loss_mean": sum(o["accuracy_loss"] for o in outs) / len(outs),
               "evasion_share": sum(o["evades"] for o in outs) / len(outs),
               "deployed_trigger_accuracy_mean": sum(o["deployed_trigger_accuracy"] for o in outs) / len(outs),
               "p_values": [o["p_value"] for o in outs], "evades_per_seed": [o["evades"] for o in outs],
               "seconds": sum(o["seconds"] for o in outs)}
        if kind == "detector":
            row["fpr_mean"] = sum(o["fpr"] for o in outs) / len(outs)
            row["fnr_mean"] = sum(o["fnr"] for o in outs) / len(outs)
        rows.append(row)
    return rows


def winners(rows: list[dict], n_seeds: int) -> list[dict]:
    """Per (scheme, dataset), among surrogate-data attacks: the one evading in every seed with the smallest mean
    accuracy loss; if none evades in every seed, the highest evasion share (ties: smaller loss)."""
    out = []
    by = defaultdict(list)
    for r in rows:
        if r["data"] == "surrogate" and len(r["seeds"]) == n_seeds:
            by[(r["scheme"], r["dataset"])].append(r)
    for (scheme, dataset), rs in sorted(by.items()):
        full = [r for r in rs if r["evasion_share"] == 1.0]
        pick = min(full, key=lambda r: r["accuracy_loss_mean"]) if full else \
            min(rs, key=lambda r: (-r["evasion_share"], r["accuracy_loss_mean"]))
        ours = next((r for r in rs if r["attack"] == "default"), None)
        out.append({"scheme": scheme, "dataset": dataset, "attack": pick["attack"], "kind": pick["kind"],
                    "evades_every_seed": bool(full), "evasion_share": pick["evasion_share"],
                    "accuracy_loss_mean": pick["accuracy_loss_mean"],
                    "default_evasion_share": ours["evasion_share"] if ours else None,
                    "default_accuracy_loss_mean": ours["accuracy_loss_mean"] if ours else None,
                    "attacks_compared": len(rs)})
    return out


def markdown(rows: list[dict], wins: list[dict], meta: dict) -> str:
    L = [f"# {meta['title']}", "",
         "Protocol, settings and criterion: `docs/peers_protocol.md` (committed before any peer cell). *Evades* = the "
         "owner's verification (binomial test on the 15 embedded triggers, alpha 0.01) of what the attacker deploys "
         "says 'not pirated'. *Accuracy loss* = the stolen model's clean accuracy on the evaluation split minus the "
         "deployed classifier's (for a detector: the pirated answers; for a removal attack: the new model's). "
         "`default` is this package's detector; `paper` the paper's, read literally.", "",
         "## Which attack defeats verification at the lowest accuracy cost (surrogate data only)", "",
         "| scheme | dataset | attacks compared | winner | kind | evades every seed | evasion share | accuracy loss "
         "| `default`: evasion / loss |", "|---" * 9 + "|"]
    for w in wins:
        dflt = "n/a" if w["default_evasion_share"] is None else \
            f"{_f(w['default_evasion_share'], 2)} / {_f(w['default_accuracy_loss_mean'], 4)}"
        L.append(f"| {w['scheme']} | {w['dataset']} | {w['attacks_compared']} | `{w['attack']}` | {w['kind']} | "
                 f"{'yes' if w['evades_every_seed'] else '**no**'} | {_f(w['evasion_share'], 2)} | "
                 f"{_f(w['accuracy_loss_mean'], 4)} | {dflt} |")
    L += ["", "![accuracy lost vs evasion](tradeoff.png)", "", "## Every cell (mean over seeds)", "",
          "| scheme | dataset | attack | kind | data | seeds | evasion share | accuracy loss | deployed trigger acc "
          "| FPR | FNR | owner's p-values |", "|---" * 12 + "|"]
    for r in rows:
        L.append(f"| {r['scheme']} | {r['dataset']} | `{r['attack']}` | {r['kind']} | {r['data']} "
                 f"| {len(r['seeds'])} | {_f(r['evasion_share'], 2)} | {_f(r['accuracy_loss_mean'], 4)} "
                 f"| {_f(r['deployed_trigger_accuracy_mean'], 2)} | {_f(r.get('fpr_mean'), 4)} "
                 f"| {_f(r.get('fnr_mean'), 3)} | {', '.join(_p(p) for p in r['p_values'])} |")
    L += ["", f"Cells: {meta['cells_done']} detector + {meta['removal_cells_done']} removal of "
          f"{meta['cells_total']} + {meta['removal_cells_total']}. Compute of the cells {meta['cell_seconds']:.0f} s "
          f"(targets reused from the scheme benchmark's cache) on {', '.join(meta['devices'])}. Command "
          f"`{meta['command']}`, commit {meta['git_commit']}, wall time of the invocation "
          f"{meta['wall_seconds']:.0f} s. "
          f"Profile: {meta['profile']}."]
    return "\n".join(L) + "\n"


def tradeoff_png(rows: list[dict]) -> bytes:
    """x: mean clean accuracy lost, y: share of targets where the owner's verification fails; one point per attack
    (over every scheme and seed of a dataset), one panel per dataset."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    datasets = sorted({r["dataset"] for r in rows})
    fig, axes = plt.subplots(1, len(datasets), figsize=(6.5 * len(datasets), 5), squeeze=False)
    for ax, d in zip(axes[0], datasets):
        pts = defaultdict(list)
        for r in rows:
            if r["dataset"] == d:
                pts[(r["attack"], r["kind"])].append(r)
        for i, ((name, kind), rs) in enumerate(sorted(pts.items())):
            n = sum(len(r["seeds"]) for r in rs)
            x = sum(r["accuracy_loss_mean"] * len(r["seeds"]) for r in rs) / n
            y = sum(r["evasion_share"] * len(r["seeds"]) for r in rs) / n
            ax.scatter([100 * x], [y], marker="o" if kind == "detector" else "s",
                       color="tab:red" if name == "default" else ("tab:blue" if kind == "detector" else "tab:gray"))
            ax.annotate(name, (100 * x, y), fontsize=8, xytext=(4, 3 + 9 * (i % 4)), textcoords="offset points")
        ax.set_xlabel("clean accuracy lost (percentage points, mean)")
        ax.set_ylabel("share of targets where the owner's verification fails")
        ax.set_ylim(-0.05, 1.05)
        ax.set_title(f"{d}: circles = detect-and-lie, squares = removal")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def render_peers(grid: dict, out_dir: Path, cells: list[dict], removal_cells: list[dict], totals: tuple[int, int],
                 meta: dict, default_name: str) -> list[Path]:
    from dnnpiracy.io import atomic_write_bytes, atomic_write_text, write_json
    stem = Path(out_dir) / "peers" / "peers"
    rows = aggregate(cells + removal_cells, default_name)
    wins = winners(rows, len(grid["seeds"]))
    meta = {**meta, "title": grid["title"], "cells_total": totals[0], "removal_cells_total": totals[1],
            "removal_cells_done": len(removal_cells), "protocol": "docs/peers_protocol.md", "default": default_name,
            "cell_seconds": sum(c["seconds"] for c in cells + removal_cells)}
    json_path = write_json(stem.with_suffix(".json"), {"meta": meta, "winners": wins, "rows": rows})
    md = atomic_write_text(stem.with_suffix(".md"), markdown(rows, wins, meta))
    paths = [json_path, md]
    if rows:
        paths.append(atomic_write_bytes(stem.parent / "tradeoff.png", tradeoff_png(rows)))
    return paths


__all__ = ["aggregate", "winners", "markdown", "tradeoff_png", "render_peers", "attack_name"]
