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

The measuring tools (throughput, latency, RSS, machine facts) are in ``experiments.timing``; the Markdown report is
``experiments.speed_report``.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from dnnpiracy.attack import GradCAM, PiratedClassifier, fit_detector, resolve_spec
from dnnpiracy.attack.captum_cam import CaptumGradCAM
from dnnpiracy.config import DetectorConfig, GanConfig
from dnnpiracy.data import DataError, load_dataset, make_splits
from dnnpiracy.experiments.timing import (
    latencies_ms,
    loadavg,
    machine_info,
    peak_rss_kib,
    rss_increase_kib,
    throughput,
    torch_info,
)
from dnnpiracy.io import git_commit
from dnnpiracy.models import DEFAULT_STEM, arch_info, build_model

PIPELINES = ("bare", "pirated", "captum")
TAU = 0.65          # the paper's Fashion-MNIST margin; only the paper rule uses it
QUICK_GAN_EPOCHS = 5
# the serving targets (ResNet-34, batch 256, default detector, heatmap at the default layer)
CRITERIA = {"pirated_over_bare": 0.5, "pirated_over_captum": 1.5, "max_heatmap_abs_diff": 1e-5,
            "detector_fit_seconds": 60.0}

METHOD = ("pirated computes Grad-CAM only where the detector reads the heatmap; `with heatmap` is the same "
          "classifier computing it anyway (the paper's pipeline), Captum's always does, and the Captum "
          "criterion compares those two; "
          "images/s = calls x batch / elapsed after one warm-up call; per (pipeline, batch) the median "
          "of `rounds` measurements, interleaved and reversed every other round; ratios are the median "
          "of per-round ratios; latency = single-image calls, pipelines interleaved call by call; "
          "rss_increase_kib = RSS growth during one call, sampled every 0.5 ms after malloc_trim")


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


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


# ---------------------------------------------------------------------------------------------------- phases
def _warn_if_busy(machine: dict, echo) -> None:
    load = machine["loadavg_start"]
    if load and load[0] > 0.5:
        echo(f"warning: load average {load[0]:.2f} on {machine['nproc']} CPUs: other processes are running, "
             "so timings are noisy; with every core busy, torch's spin-waiting OpenMP threads can run 30x "
             "slower (measured): set OMP_WAIT_POLICY=PASSIVE or use `dnnpiracy --threads 1 bench`")


def _fit_detectors(model, info, ds, sur_x, sur_y, detectors, quick: bool, rss_stages: dict, echo) -> dict[str, dict]:
    """Per requested name: the fitted detector, its Captum reference (the same detector, heatmaps from Captum,
    always computed), the same detector computing the heatmap anyway (None where it reads the heatmap), and the
    result entry begun with its fit."""
    dets: dict[str, dict] = {}
    for name in detectors:
        gan = GanConfig(epochs=QUICK_GAN_EPOCHS) if quick else GanConfig()
        cfg = DetectorConfig(detector=name, gan=gan)
        echo(f"fitting detector {name!r} on {len(sur_x)} surrogate images ...")
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
    return dets


def heatmap_check(det, ref, queries: torch.Tensor, singles: int) -> dict:
    """Our heatmaps against Captum's (batched, and image by image for the first ``singles``), and the decisions
    they lead to."""
    ours, theirs = det.cam(queries), ref.cam(queries)
    diff = float((ours.heatmaps - theirs.heatmaps).abs().max())
    ins_ours, ins_ref = det.inspect(queries, ours), ref.inspect(queries, theirs)
    single_diff = 0.0
    for i in range(min(singles, len(queries))):
        x1 = queries[i][None]
        single_diff = max(single_diff, float((det.cam(x1).heatmaps - ref.cam(x1).heatmaps).abs().max()))
    return {
        "max_heatmap_abs_diff": max(diff, single_diff),
        "max_heatmap_abs_diff_batched": diff, "max_heatmap_abs_diff_single": single_diff,
        "heatmap_check_images": len(queries),
        "heatmap_check_single_images": min(singles, len(queries)),
        "predictions_equal": bool(torch.equal(ours.predictions, theirs.predictions)),
        "flag_mismatches": int((ins_ours.flags != ins_ref.flags).sum()),
        "flag_rate": float(ins_ours.flags.float().mean()),
    }


class Pipelines:
    """What is timed, per detector: the bare model, the pirated classifier, the Captum-based one, and (for a
    detector that reads no heatmap) the pirated classifier computing the heatmap anyway."""

    def __init__(self, model: torch.nn.Module, dets: dict[str, dict]):
        self.model = model
        self.pirated = {n: PiratedClassifier(d["det"], "uniform") for n, d in dets.items()}
        self.captum = {n: PiratedClassifier(d["ref"], "uniform") for n, d in dets.items()}
        self.with_heat = {n: PiratedClassifier(d["heat"], "uniform") for n, d in dets.items()
                          if d["heat"] is not None}

    def bare(self, x):
        with torch.inference_mode():
            return self.model(x)

    def jobs(self, xb: torch.Tensor, b: int) -> list[tuple[tuple, Callable[[], object]]]:
        """(key, call) for every pipeline on the batch ``xb`` of size ``b``."""
        jobs: list[tuple[tuple, Callable[[], object]]] = [(("bare", b), lambda xb=xb: self.bare(xb))]
        for n in self.pirated:
            jobs.append((("pirated", n, b), lambda xb=xb, n=n: self.pirated[n].predict(xb)))
            jobs.append((("captum", n, b), lambda xb=xb, n=n: self.captum[n].predict(xb)))
            if n in self.with_heat:
                jobs.append((("heatmap", n, b), lambda xb=xb, n=n: self.with_heat[n].predict(xb)))
        return jobs

    def latency_fns(self) -> dict[str, Callable]:
        fns: dict[str, Callable] = {"bare": self.bare}
        for n in self.pirated:
            fns[f"pirated {n}"] = self.pirated[n].predict
            fns[f"captum {n}"] = self.captum[n].predict
        return fns

    def memory(self, xb: torch.Tensor) -> dict[str, int | None]:
        """RSS growth during one call of each pipeline on ``xb``."""
        mem = {"bare": rss_increase_kib(lambda xb=xb: self.bare(xb))}
        for n in self.pirated:
            mem[f"pirated {n}"] = rss_increase_kib(lambda xb=xb, n=n: self.pirated[n].predict(xb))
            mem[f"captum {n}"] = rss_increase_kib(lambda xb=xb, n=n: self.captum[n].predict(xb))
        return mem


def _throughput_rounds(pipes: Pipelines, queries: torch.Tensor, batch_sizes, rounds: int, seconds: float,
                       rss_stages: dict, echo) -> dict[tuple, list[float]]:
    """Images per second of every pipeline and batch size: ``rounds`` rounds of interleaved measurements, the
    order reversed every other round."""
    samples: dict[tuple, list[float]] = {}
    for b in batch_sizes:
        jobs = pipes.jobs(queries[:b], b)
        for r in range(rounds):
            echo(f"batch {b}: round {r + 1}/{rounds}")
            for key, fn in (jobs if r % 2 == 0 else jobs[::-1]):
                samples.setdefault(key, []).append(throughput(fn, b, seconds))
        rss_stages[f"throughput batch {b}"] = peak_rss_kib()
    return samples


def _batch_row(samples: dict, mem: dict, n: str, b: int) -> dict:
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
    return row


def _detector_result(entry: dict, n: str, batch_sizes, samples: dict, mem: dict, lat: dict) -> dict:
    entry["batches"] = {str(b): _batch_row(samples, mem, n, b) for b in batch_sizes}
    entry["latency_batch1_ms"] = {"bare": lat["bare"], "pirated": lat[f"pirated {n}"],
                                  "captum": lat[f"captum {n}"]}
    return entry


def _headline(out_dets: dict[str, dict], batch_sizes) -> dict:
    """The headline numbers: the default detector (else the first) at the largest batch size."""
    head = _headline_detector(list(out_dets))
    big = str(max(batch_sizes))
    h = out_dets[head]
    return {
        "headline": {"detector": head, "batch_size": int(big)},
        "pirated_over_bare": h["batches"][big]["pirated_over_bare"],
        "pirated_over_captum": h["batches"][big]["pirated_over_captum"],
        "like_for_like_over_captum": h["batches"][big]["like_for_like_over_captum"],
        "latency_p50_ms": h["latency_batch1_ms"]["pirated"]["p50"],
        "latency_p99_ms": h["latency_batch1_ms"]["pirated"]["p99"],
        "detector_fit_seconds": h["fit_seconds"],
    }


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
    _warn_if_busy(machine, echo)

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

    dets = _fit_detectors(model, info, ds, sur_x, sur_y, detectors, quick, rss_stages, echo)
    echo("checking heatmaps against Captum ...")
    for d in dets.values():
        d["entry"].update(heatmap_check(d["det"], d["ref"], queries, singles))
    rss_stages["heatmap check"] = peak_rss_kib()

    pipes = Pipelines(model, dets)
    samples = _throughput_rounds(pipes, queries, batch_sizes, rounds, seconds, rss_stages, echo)
    echo(f"latency: {latency_calls} single-image calls per pipeline ...")
    lat = latencies_ms(pipes.latency_fns(), queries, latency_calls)
    rss_stages["latency"] = peak_rss_kib()
    mem = {b: pipes.memory(queries[:b]) for b in batch_sizes}
    out_dets = {n: _detector_result(d["entry"], n, batch_sizes, samples, mem, lat) for n, d in dets.items()}

    result = {
        "benchmark": "dnnpiracy bench",
        **_headline(out_dets, batch_sizes),
        "max_heatmap_abs_diff": max(e["max_heatmap_abs_diff"] for e in out_dets.values()),
        "peak_rss_kib": peak_rss_kib(),
        "arch": arch, "stem": stem, "weights": weights, "heatmap_layer": info.heatmap_layer,
        "feature_layers": list(info.feature_layers),
        "dataset": ds.name, "dataset_fallback": fallback, "surrogate_size": len(sur),
        "surrogate_fraction": splits.fraction, "query_images": n_queries, "strategy": "uniform", "tau": TAU,
        "quick": quick, "batch_sizes": list(batch_sizes), "seconds_per_measure": seconds, "rounds": rounds,
        "latency_calls": latency_calls, "method": METHOD, "detectors": out_dets,
        "peak_rss_kib_by_stage": rss_stages,
        "machine": {**machine, "loadavg_end": loadavg()},
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


__all__ = ["CRITERIA", "PIPELINES", "Pipelines", "heatmap_check", "run_bench"]
