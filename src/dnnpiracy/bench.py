"""``dnnpiracy bench``: what the pirated classifier costs over the bare stolen model, and over the same pipeline
built on Captum.

In one process, on one model and one set of real queries, for each detector and batch size it measures

- ``bare``: the target's forward alone (``torch.inference_mode``), what the owner would get without the attacker;
- ``pirated``: ``PiratedClassifier(detector, "uniform").predict(x)``: forward, Grad-CAM (only where the detector
  reads the heatmap: the defaults read the input and pooled activations, and serve from the forward pass alone),
  scoring, threshold, labels;
- ``heatmap``: for a detector that reads no heatmap, the same classifier computing the Grad-CAM heatmap anyway, as
  the paper's pipeline does for every query;
- ``captum``: the classifier with the heatmaps from Captum's ``LayerGradCam`` (plus the forward Captum needs
  for the prediction and the features), always computed, i.e. the paper's pipeline built on the reference library.
  The Captum criterion is judged like for like: ``heatmap`` (or ``pirated``, where it computes the heatmap) against
  ``captum``; ``pirated_over_captum`` is reported beside it;

as images per second (repeated calls until a time budget is used, after a warm-up call; ``rounds`` rounds with
the three measurements interleaved, the order reversed every other round, medians reported, ratios taken per round
so that noise from other processes hits numerator and denominator alike), the latency at batch 1 (p50/p99 over
single-image calls, the three pipelines interleaved call by call), the memory, the detector's fit time, and the
largest difference between our heatmaps and Captum's over the benchmark inputs, so speed is never bought with
wrong maps.

Throughput does not depend on the weights, so by default the model is a randomly initialised one (seed 0, eval
mode); ``target_dir`` benchmarks a trained target instead.
"""

from __future__ import annotations

import gc
import math
import os
import platform
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from dnnpiracy.attack import GradCAM, PiratedClassifier, fit_detector, resolve_spec
from dnnpiracy.attack.captum_cam import CaptumGradCAM
from dnnpiracy.config import DetectorConfig, GanConfig
from dnnpiracy.data import DataError, load_dataset, make_splits
from dnnpiracy.io import git_commit
from dnnpiracy.models import DEFAULT_STEM, arch_info, build_model

PIPELINES = ("bare", "pirated", "captum")
TAU = 0.65          # the paper's Fashion-MNIST margin; only the paper rule uses it
QUICK_GAN_EPOCHS = 5
# the serving targets (ResNet-34, batch 256, default detector, heatmap at the default layer)
CRITERIA = {"pirated_over_bare": 0.5, "pirated_over_captum": 1.5, "max_heatmap_abs_diff": 1e-5,
            "detector_fit_seconds": 60.0}


# ---------------------------------------------------------------------------------------------- machine facts
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu_model": _cpu_model(),
            "nproc": usable, "cpu_count": os.cpu_count(), "loadavg_start": _loadavg()}


def torch_info() -> dict:
    return {"version": torch.__version__, "threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(),
            "mkldnn": bool(torch.backends.mkldnn.is_available()),
            "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY",
                                               "GOMP_SPINCOUNT", "KMP_BLOCKTIME") if k in os.environ}}


def peak_rss_kib() -> int:
    """Process peak resident set size (``ru_maxrss``: KiB on Linux)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _rss_kib() -> int | None:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, ValueError, IndexError):
        return None


def _release_free_memory() -> None:
    """gc, then hand the heap's free pages back to the OS (glibc), so an RSS increase measures new memory."""
    gc.collect()
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def rss_increase_kib(fn: Callable[[], object], interval: float = 0.0005) -> int | None:
    """Largest RSS above the starting RSS while ``fn()`` runs, sampled from /proc/self/statm by a thread
    (torch releases the GIL inside its operators).  None where /proc is unavailable."""
    _release_free_memory()
    start = _rss_kib()
    if start is None:
        return None
    peak = [start]
    done = threading.Event()

    def sample():
        while not done.is_set():
            v = _rss_kib()
            if v is not None and v > peak[0]:
                peak[0] = v
            time.sleep(interval)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        fn()
    finally:
        done.set()
        t.join()
    end = _rss_kib() or start
    return max(peak[0], end) - start


# ----------------------------------------------------------------------------------------------- measurements
def throughput(fn: Callable[[], object], n_images: int, seconds: float, min_calls: int = 2) -> float:
    """Images per second of ``fn`` (which handles ``n_images``): one warm-up call, then calls until
    ``seconds`` have passed and at least ``min_calls`` were made."""
    fn()
    calls = 0
    t0 = time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds and calls >= min_calls:
            return calls * n_images / elapsed


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), q in [0, 100]."""
    s = sorted(values)
    if not s:
        return math.nan
    pos = (len(s) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def latencies_ms(fns: dict[str, Callable[[torch.Tensor], object]], xs: torch.Tensor, calls: int) -> dict:
    """Per pipeline p50/p99/mean latency (ms) of single-image calls, pipelines interleaved call by call."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for f in fns.values():
        f(xs[:1])                                       # warm-up
    for i in range(calls):
        x1 = xs[i % len(xs)][None]
        for k, f in fns.items():
            t0 = time.perf_counter()
            f(x1)
            times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: {"p50": percentile(v, 50), "p99": percentile(v, 99), "mean": statistics.fmean(v),
                "calls": len(v)} for k, v in times.items()}


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


# ---------------------------------------------------------------------------------------------------- set-up
def _ratio(num: list[float], den: list[float]) -> float:
    """The median of per-round ratios (noise from other processes hits both measurements of a round alike)."""
    return _median([p / q for p, q in zip(num, den)])


def _load_model(arch: str, target_dir: str | Path | None):
    if target_dir is None:
        torch.manual_seed(0)
        model = build_model(arch, DEFAULT_STEM).eval()
        return model, arch, DEFAULT_STEM, "random-init"
    from dnnpiracy.training import load_model
    path = Path(target_dir)
    model, meta = load_model(path / "model.safetensors" if path.is_dir() else path)
    return model.eval(), meta["arch"], meta.get("stem", DEFAULT_STEM), str(path)


def _load_data(dataset: str, data_dir, echo):
    """The dataset, or digits-tiny when it cannot be had (recorded in the result)."""
    fallback = None
    try:
        ds = load_dataset(dataset, data_dir)
    except (DataError, OSError) as exc:
        if dataset == "digits-tiny":
            raise
        fallback = f"{dataset} unavailable ({str(exc).splitlines()[0]}); used digits-tiny"
        echo(f"warning: {fallback}")
        ds = load_dataset("digits-tiny")
    # the default 5 % surrogate (500 Fashion-MNIST images); a small test set gets 25 %, a few per class
    fraction = 0.05 if len(ds.test_y) >= 2000 else 0.25
    return ds, make_splits(ds.test_y, fraction, 0), fallback


def _queries(ds, splits, n: int) -> torch.Tensor:
    """The first ``n`` evaluation images (repeated if the evaluation split is smaller)."""
    idx = splits.evaluation_idx
    if len(idx) < n:
        idx = idx.repeat(math.ceil(n / len(idx)))
    return ds.test_x[idx[:n]].contiguous()


def _headline_detector(keys: list[str]) -> str:
    return "default" if "default" in keys else keys[0]


# ------------------------------------------------------------------------------------------------- run_bench
def run_bench(arch: str = "resnet34", detectors: tuple[str, ...] = ("default", "paper"),
              batch_sizes: tuple[int, ...] = (1, 256), quick: bool = False,
              target_dir: str | Path | None = None, data_dir: str | Path | None = None,
              seconds_per_measure: float | None = None,
              echo: Callable[[str], object] = print, *, dataset: str = "fashion-mnist", rounds: int = 3,
              latency_calls: int | None = None, heatmap_check_singles: int | None = None,
              command: list[str] | None = None) -> dict:
    """Benchmark bare / pirated / Captum-based pipelines; returns a JSON-ready dict (see module docstring).

    ``seconds_per_measure`` defaults to 3 s (0.5 s with ``quick``), ``latency_calls`` to 200 (50 with
    ``quick``).
    With ``quick`` the paper detector's DCGANs train 5 epochs instead of 200 (its scoring cost is the same).
    """
    t_start = time.perf_counter()
    seconds = seconds_per_measure if seconds_per_measure is not None else (0.5 if quick else 3.0)
    latency_calls = latency_calls if latency_calls is not None else (50 if quick else 200)
    singles = heatmap_check_singles if heatmap_check_singles is not None else (8 if quick else 32)
    batch_sizes = tuple(sorted({int(b) for b in batch_sizes}))
    if not detectors:
        raise ValueError("give at least one detector")
    if rounds < 1 or any(b < 1 for b in batch_sizes):
        raise ValueError("rounds and batch sizes must be >= 1")
    for name in detectors:
        resolve_spec(name)                              # fail before any work on an unknown name
    rss_stages: dict[str, int] = {"start": peak_rss_kib()}
    machine = machine_info()
    load = machine["loadavg_start"]
    if load and load[0] > 0.5:
        echo(f"warning: load average {load[0]:.2f} on {machine['nproc']} CPUs: other processes are running, "
             "so timings are noisy; with every core busy, torch's spin-waiting OpenMP threads can run 30x "
             "slower (measured): set OMP_WAIT_POLICY=PASSIVE or use `dnnpiracy --threads 1 bench`")

    model, arch, stem, weights = _load_model(arch, target_dir)
    info = arch_info(arch, stem)
    rss_stages["model"] = peak_rss_kib()
    ds, splits, fallback = _load_data(dataset, data_dir, echo)
    sur = splits.surrogate_idx
    sur_x, sur_y = ds.test_x[sur], ds.test_y[sur]
    n_queries = max(batch_sizes + (singles, 1))
    queries = _queries(ds, splits, n_queries)
    rss_stages["data"] = peak_rss_kib()
    echo(f"bench: {arch} ({weights}), {ds.name}: surrogate {len(sur)}, queries {n_queries}; "
         f"batch sizes {list(batch_sizes)}; {torch.get_num_threads()} threads; "
         f"{seconds:g} s x {rounds} rounds per measurement")

    # ---- detectors
    dets: dict[str, dict] = {}
    for name in detectors:
        gan = GanConfig(epochs=QUICK_GAN_EPOCHS) if quick else GanConfig()
        cfg = DetectorConfig(detector=name, gan=gan)
        echo(f"fitting detector {name!r} on {len(sur)} surrogate images ...")
        t0 = time.perf_counter()
        det = fit_detector(model, info, sur_x, sur_y, cfg, tau=TAU, num_classes=ds.num_classes, dataset=ds.name)
        fit_s = time.perf_counter() - t0
        if type(det.cam) is not GradCAM:
            raise ValueError(f"detector {name!r} uses {det.spec.cam}; the Captum reference is Grad-CAM only")
        cam = det.cam
        ref = replace(det, cam=CaptumGradCAM(model, cam.layer, cam.feature_layers, cam.batch_size),
                      always_heatmaps=True)
        entry = {"requested": name, "detector": det.name, "scorer": det.spec.scorer, "rule": det.spec.rule,
                 "heatmap_layer": det.cam.layer, "fit_seconds": fit_s, "reads_heatmap": det.needs_heatmaps,
                 "gan_epochs": gan.epochs if det.spec.scorer == "dcgan" else None}
        if quick and det.spec.scorer == "dcgan":
            entry["note"] = (f"--quick: DCGANs trained {QUICK_GAN_EPOCHS} epochs instead of "
                             f"{GanConfig().epochs}; fit time is not the paper's, scoring cost is")
        dets[name] = {"entry": entry, "det": det, "ref": ref,
                      "heat": None if det.needs_heatmaps else replace(det, always_heatmaps=True)}
        rss_stages[f"fit {name}"] = peak_rss_kib()
        echo(f"  {det.name}: {fit_s:.1f} s")

    # ---- correctness: our heatmaps against Captum's, and the decisions they lead to
    echo("checking heatmaps against Captum ...")
    for name, d in dets.items():
        det, ref = d["det"], d["ref"]
        ours, theirs = det.cam(queries), ref.cam(queries)
        diff = float((ours.heatmaps - theirs.heatmaps).abs().max())
        ins_ours, ins_ref = det.inspect(queries, ours), ref.inspect(queries, theirs)
        single_diff = 0.0
        for i in range(min(singles, len(queries))):
            x1 = queries[i][None]
            single_diff = max(single_diff, float((det.cam(x1).heatmaps - ref.cam(x1).heatmaps).abs().max()))
        d["entry"].update({
            "max_heatmap_abs_diff": max(diff, single_diff),
            "max_heatmap_abs_diff_batched": diff, "max_heatmap_abs_diff_single": single_diff,
            "heatmap_check_images": len(queries),
            "heatmap_check_single_images": min(singles, len(queries)),
            "predictions_equal": bool(torch.equal(ours.predictions, theirs.predictions)),
            "flag_mismatches": int((ins_ours.flags != ins_ref.flags).sum()),
            "flag_rate": float(ins_ours.flags.float().mean()),
        })
    rss_stages["heatmap check"] = peak_rss_kib()

    # ---- throughput: rounds of interleaved measurements
    pirated = {n: PiratedClassifier(d["det"], "uniform") for n, d in dets.items()}
    captum = {n: PiratedClassifier(d["ref"], "uniform") for n, d in dets.items()}
    with_heat = {n: PiratedClassifier(d["heat"], "uniform") for n, d in dets.items() if d["heat"] is not None}

    def bare(x):
        with torch.inference_mode():
            return model(x)

    samples: dict[tuple, list[float]] = {}
    for b in batch_sizes:
        xb = queries[:b]
        jobs: list[tuple[tuple, Callable[[], object]]] = [(("bare", b), lambda xb=xb: bare(xb))]
        for n in dets:
            jobs.append((("pirated", n, b), lambda xb=xb, n=n: pirated[n].predict(xb)))
            jobs.append((("captum", n, b), lambda xb=xb, n=n: captum[n].predict(xb)))
            if n in with_heat:
                jobs.append((("heatmap", n, b), lambda xb=xb, n=n: with_heat[n].predict(xb)))
        for r in range(rounds):
            echo(f"batch {b}: round {r + 1}/{rounds}")
            for key, fn in (jobs if r % 2 == 0 else jobs[::-1]):
                samples.setdefault(key, []).append(throughput(fn, b, seconds))
        rss_stages[f"throughput batch {b}"] = peak_rss_kib()

    # ---- latency at batch 1
    echo(f"latency: {latency_calls} single-image calls per pipeline ...")
    lat_fns: dict[str, Callable] = {"bare": bare}
    for n in dets:
        lat_fns[f"pirated {n}"] = pirated[n].predict
        lat_fns[f"captum {n}"] = captum[n].predict
    lat = latencies_ms(lat_fns, queries, latency_calls)
    rss_stages["latency"] = peak_rss_kib()

    # ---- memory: RSS growth during one call of each pipeline
    mem: dict[int, dict[str, int | None]] = {}
    for b in batch_sizes:
        xb = queries[:b]
        mem[b] = {"bare": rss_increase_kib(lambda xb=xb: bare(xb))}
        for n in dets:
            mem[b][f"pirated {n}"] = rss_increase_kib(lambda xb=xb, n=n: pirated[n].predict(xb))
            mem[b][f"captum {n}"] = rss_increase_kib(lambda xb=xb, n=n: captum[n].predict(xb))

    # ---- assemble
    out_dets: dict[str, dict] = {}
    for n, d in dets.items():
        entry = d["entry"]
        per_batch = {}
        for b in batch_sizes:
            s_bare, s_pir, s_cap = samples[("bare", b)], samples[("pirated", n, b)], samples[("captum", n, b)]
            row = {"bare_images_per_s": _median(s_bare), "pirated_images_per_s": _median(s_pir),
                   "captum_images_per_s": _median(s_cap),
                   "pirated_over_bare": _ratio(s_pir, s_bare),
                   "pirated_over_captum": _ratio(s_pir, s_cap),
                   "rounds": {"bare": s_bare, "pirated": s_pir, "captum": s_cap},
                   "rss_increase_kib": {"bare": mem[b]["bare"], "pirated": mem[b][f"pirated {n}"],
                                        "captum": mem[b][f"captum {n}"]}}
            s_heat = samples.get(("heatmap", n, b))
            if s_heat is not None:
                row.update({"heatmap_images_per_s": _median(s_heat),
                            "heatmap_over_bare": _ratio(s_heat, s_bare),
                            "heatmap_over_captum": _ratio(s_heat, s_cap)})
                row["rounds"]["heatmap"] = s_heat
            # like for like: both pipelines compute the heatmap
            row["like_for_like_over_captum"] = row.get("heatmap_over_captum", row["pirated_over_captum"])
            per_batch[str(b)] = row
        entry["batches"] = per_batch
        entry["latency_batch1_ms"] = {"bare": lat["bare"], "pirated": lat[f"pirated {n}"],
                                      "captum": lat[f"captum {n}"]}
        out_dets[n] = entry

    head = _headline_detector(list(out_dets))
    big = str(max(batch_sizes))
    h = out_dets[head]
    result = {
        "benchmark": "dnnpiracy bench",
        "headline": {"detector": head, "batch_size": int(big)},
        "pirated_over_bare": h["batches"][big]["pirated_over_bare"],
        "pirated_over_captum": h["batches"][big]["pirated_over_captum"],
        "like_for_like_over_captum": h["batches"][big]["like_for_like_over_captum"],
        "latency_p50_ms": h["latency_batch1_ms"]["pirated"]["p50"],
        "latency_p99_ms": h["latency_batch1_ms"]["pirated"]["p99"],
        "detector_fit_seconds": h["fit_seconds"],
        "max_heatmap_abs_diff": max(e["max_heatmap_abs_diff"] for e in out_dets.values()),
        "peak_rss_kib": peak_rss_kib(),
        "arch": arch, "stem": stem, "weights": weights, "heatmap_layer": info.heatmap_layer,
        "feature_layers": list(info.feature_layers),
        "dataset": ds.name, "dataset_fallback": fallback, "surrogate_size": len(sur),
        "surrogate_fraction": splits.fraction, "query_images": n_queries, "strategy": "uniform", "tau": TAU,
        "quick": quick, "batch_sizes": list(batch_sizes), "seconds_per_measure": seconds, "rounds": rounds,
        "latency_calls": latency_calls,
        "method": ("pirated computes Grad-CAM only where the detector reads the heatmap; `with heatmap` is the same "
                   "classifier computing it anyway (the paper's pipeline), Captum's always does, and the Captum "
                   "criterion compares those two; "
                   "images/s = calls x batch / elapsed after one warm-up call; per (pipeline, batch) the median "
                   "of `rounds` measurements, interleaved and reversed every other round; ratios are the median "
                   "of per-round ratios; latency = single-image calls, pipelines interleaved call by call; "
                   "rss_increase_kib = RSS growth during one call, sampled every 0.5 ms after malloc_trim"),
        "detectors": out_dets,
        "peak_rss_kib_by_stage": rss_stages,
        "machine": {**machine, "loadavg_end": _loadavg()},
        "torch": torch_info(), "threads": torch.get_num_threads(),
        "git_commit": git_commit(),
        "command": command if command is not None else list(sys.argv),
    }
    result["criteria"] = _criteria(result)
    result["wall_seconds"] = time.perf_counter() - t_start
    return result


def _criteria(res: dict) -> dict:
    """The serving targets' check; it applies to a full (non-quick) ResNet-34 run of the default detector at
    batch 256 with the default heatmap layer."""
    head = res["headline"]
    applies = (res["arch"] == "resnet34" and not res["quick"] and head["batch_size"] == 256
               and head["detector"] == "default")
    vals = {k: res[k] for k in CRITERIA}
    # judged like for like (both pipelines compute the heatmap); older results have only the served ratio
    vals["pirated_over_captum"] = res.get("like_for_like_over_captum", res["pirated_over_captum"])
    ok = {"pirated_over_bare": vals["pirated_over_bare"] >= CRITERIA["pirated_over_bare"],
          "pirated_over_captum": vals["pirated_over_captum"] >= CRITERIA["pirated_over_captum"],
          "max_heatmap_abs_diff": vals["max_heatmap_abs_diff"] <= CRITERIA["max_heatmap_abs_diff"],
          "detector_fit_seconds": vals["detector_fit_seconds"] <= CRITERIA["detector_fit_seconds"]}
    return {"applies": applies, "targets": dict(CRITERIA), "passed": ok, "all_passed": all(ok.values())}


# ------------------------------------------------------------------------------------------------- rendering
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


__all__ = ["CRITERIA", "bench_markdown", "latencies_ms", "machine_info", "peak_rss_kib", "percentile",
           "rss_increase_kib", "run_bench", "throughput", "torch_info"]
