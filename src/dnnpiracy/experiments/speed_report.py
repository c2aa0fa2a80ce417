"""The Markdown report of a ``dnnpiracy bench`` result (results/bench.md and the terminal)."""

from __future__ import annotations

import math

from dnnpiracy.experiments.speed import PIPELINES


def _f(v, fmt: str) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def _mib(kib) -> str:
    return "—" if kib is None else f"{kib / 1024:.1f}"


def bench_markdown(res: dict) -> str:
    """A Markdown report of a :func:`run_bench` result (for results/bench.md and the terminal)."""
    lines = [f"# dnnpiracy bench: {res['arch']} ({res['weights']}), {res['dataset']}"
             + (" — quick" if res["quick"] else ""), ""]
    lines += [("| detector | batch | bare img/s | pirated img/s | Captum img/s | pirated/bare "
               "| pirated/Captum | with heatmap img/s | with heatmap/Captum | p50 ms | p99 ms "
               "| RSS +MiB bare / pirated / Captum |"),
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, e in res["detectors"].items():
        label = name if name == e["detector"] else f"{name} ({e['detector']})"
        for b, row in e["batches"].items():
            lat = e["latency_batch1_ms"]["pirated"] if b == "1" else {"p50": None, "p99": None}
            m = row["rss_increase_kib"]
            lines.append(f"| {label} | {b} | {_f(row['bare_images_per_s'], '.0f')} "
                         f"| {_f(row['pirated_images_per_s'], '.0f')} "
                         f"| {_f(row['captum_images_per_s'], '.0f')} "
                         f"| {_f(row['pirated_over_bare'], '.3f')} | {_f(row['pirated_over_captum'], '.2f')} "
                         f"| {_f(row.get('heatmap_images_per_s'), '.0f')} "
                         f"| {_f(row.get('heatmap_over_captum'), '.2f')} "
                         f"| {_f(lat['p50'], '.2f')} | {_f(lat['p99'], '.2f')} "
                         f"| {_mib(m['bare'])} / {_mib(m['pirated'])} / {_mib(m['captum'])} |")
    lines += ["", ("| detector | fit s | max \\|heatmap − Captum\\| | predictions equal | flag mismatches "
                   "| latency p50/p99 ms: bare · pirated · Captum |"), "|---|---:|---:|---|---:|---|"]
    for name, e in res["detectors"].items():
        lat = e["latency_batch1_ms"]
        lat_s = " · ".join(f"{lat[k]['p50']:.2f}/{lat[k]['p99']:.2f}" for k in PIPELINES)
        note = f" ({e['gan_epochs']} GAN epochs)" if e.get("gan_epochs") else ""
        lines.append(f"| {name}{note} | {e['fit_seconds']:.1f} | {e['max_heatmap_abs_diff']:.2e} "
                     f"| {'yes' if e['predictions_equal'] else 'NO'} | {e['flag_mismatches']} | {lat_s} |")
    c = res["criteria"]
    head = res["headline"]
    lines += ["", (f"Headline ({head['detector']}, batch {head['batch_size']}): pirated/bare "
                   f"{res['pirated_over_bare']:.3f}, pirated/Captum {res['pirated_over_captum']:.2f} "
                   f"(like for like, both computing the heatmap: "
                   f"{res.get('like_for_like_over_captum', res['pirated_over_captum']):.2f}), "
                   f"latency p50 {res['latency_p50_ms']:.2f} ms, p99 {res['latency_p99_ms']:.2f} ms, "
                   f"fit {res['detector_fit_seconds']:.1f} s, "
                   f"max heatmap diff {res['max_heatmap_abs_diff']:.2e}, "
                   f"peak RSS {_mib(res['peak_rss_kib'])} MiB.")]
    targets = ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in c["passed"].items())
    scope = ("applies" if c["applies"]
             else "not applicable: needs a full resnet34 run of the default detector at batch 256")
    lines.append(f"Acceptance ({scope}): {targets}.")
    m, t = res["machine"], res["torch"]
    lines += ["", (f"Machine: {m['cpu_model']}, {m['nproc']} CPUs, {m['platform']}; load average "
                   f"{m['loadavg_start']} → {m['loadavg_end']}. torch {t['version']}, {t['threads']} threads. "
                   f"Commit {res['git_commit']}. Wall {res['wall_seconds']:.0f} s."),
              f"Method: {res['method']}."]
    if res.get("dataset_fallback"):
        lines.append(f"Data: {res['dataset_fallback']}.")
    for e in res["detectors"].values():
        if e.get("note"):
            lines.append(f"Note ({e['detector']}): {e['note']}.")
    return "\n".join(lines) + "\n"
