"""One end-to-end run (watermark -> detector -> evaluation) with a content-addressed cache of trained targets.

A target is keyed by everything that determines it (dataset, training config, trigger config, split); a second run
with the same key reuses it, a run interrupted mid-training resumes from its last epoch checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from dnnpiracy.attack import check_cross_fitting, fit_detector, resolve_spec
from dnnpiracy.config import DetectorConfig, TrainConfig, TriggerConfig, paper_tau
from dnnpiracy.data import Dataset, Splits, load_dataset, make_splits
from dnnpiracy.evaluation.evaluate import evaluate, inspect_sets
from dnnpiracy.evaluation.report import write_run_outputs
from dnnpiracy.io import git_commit
from dnnpiracy.models import arch_info
from dnnpiracy.watermark import Target, embed_watermark, verification_chance

# The CPU profile: what fits this 2-core machine (see docs/design.md).  The paper's own values live in
# TrainConfig's defaults (ResNet-34, 15 epochs).
CPU_TRAIN = TrainConfig(arch="resnet18", epochs=3, trigger_oversample=20)
QUICK_TRAIN = TrainConfig(arch="small-cnn", epochs=2, lr=1e-3, trigger_oversample=20)  # smoke run: a larger lr
PAPER_TRAIN = TrainConfig(trigger_oversample=20)


@dataclass(frozen=True)
class RunConfig:
    dataset: str = "fashion-mnist"
    train: TrainConfig = CPU_TRAIN
    trigger: TriggerConfig = TriggerConfig()
    detector: DetectorConfig = DetectorConfig()
    strategy: str = "uniform-other"   # the paper answers uniformly at random; see docs/results_notes.md (deviations)
    significance: float = 0.01
    data_dir: str | None = None


def default_cache_dir() -> Path:
    return Path(os.environ.get("DNNPIRACY_CACHE", Path.home() / ".cache" / "dnnpiracy" / "runs"))


def config_key(obj: dict) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def target_key(dataset: str, train: TrainConfig, trigger: TriggerConfig | None, splits: Splits) -> str:
    return config_key({"dataset": dataset, "train": asdict(train), "trigger": trigger.key_dict() if trigger else None,
                       "split": [splits.fraction, splits.seed], "v": 1})


def get_target(ds: Dataset, splits: Splits, train: TrainConfig, trigger: TriggerConfig | None,
               cache_dir: Path | None = None, progress: bool = True, log=print) -> Target:
    """Train (or reuse from the cache) the target for this configuration."""
    cache_dir = Path(cache_dir or default_cache_dir())
    key = target_key(ds.name, train, trigger, splits)
    base = cache_dir / "targets" / target_key(ds.name, train, None, splits)    # frontier starts from the clean one
    return embed_watermark(ds, splits, train, trigger, cache_dir / "targets" / key, progress=progress, log=log,
                           base_dir=base)


@dataclass
class RunResult:
    report: dict
    out_dir: Path
    extras: dict = field(default_factory=dict)


def split_traffic(evaluation_idx: torch.Tensor, n_traffic: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(evaluation, traffic): a seeded random ``n_traffic`` of the evaluation inputs become the pirate's unlabelled
    calibration traffic and leave the evaluation."""
    if not 0 < n_traffic < len(evaluation_idx):
        raise ValueError(f"traffic must be in [1, {len(evaluation_idx) - 1}] for {len(evaluation_idx)} evaluation "
                         f"inputs, got {n_traffic}")
    perm = torch.randperm(len(evaluation_idx), generator=torch.Generator().manual_seed(seed))
    return evaluation_idx[perm[n_traffic:]], evaluation_idx[perm[:n_traffic]]


def run(cfg: RunConfig, out_dir: str | Path, cache_dir: Path | None = None, progress: bool = True,
        log=print) -> RunResult:
    """Watermark a target (or reuse it), fit the detector on the surrogate set, evaluate, write the report."""
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    ds = load_dataset(cfg.dataset, cfg.data_dir)
    splits = make_splits(ds.test_y, cfg.detector.surrogate_fraction, cfg.detector.seed)
    ev, traffic = splits.evaluation_idx, None
    spec = resolve_spec(cfg.detector.detector, ds.name)
    fit_on_traffic = bool(cfg.detector.traffic) and cfg.detector.traffic_use == "fit"
    # everything that can be checked is checked before any training: a bad option loses nothing
    if cfg.detector.traffic:
        ev, traffic = split_traffic(ev, cfg.detector.traffic, cfg.detector.seed)
        if fit_on_traffic and spec.rule != "calibrated":
            raise ValueError(f"traffic_use='fit' needs a calibrated detector; {cfg.detector.detector!r} uses the "
                             f"{spec.rule} rule")
    if spec.rule == "calibrated" and not fit_on_traffic:   # (traffic adds inputs only the target can label)
        check_cross_fitting(ds.test_y[splits.surrogate_idx])
    timings["load_data"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    target = get_target(ds, splits, cfg.train, cfg.trigger, cache_dir, progress, log)
    timings["target"] = time.perf_counter() - t0

    tau = cfg.detector.tau if cfg.detector.tau is not None else paper_tau(ds.name)
    info = arch_info(cfg.train.arch, cfg.train.stem)
    sur = splits.surrogate_idx
    t0 = time.perf_counter()
    log(f"fitting detector {cfg.detector.detector!r} on {len(sur)} surrogate inputs")
    if fit_on_traffic:
        log(f"... and on {len(traffic)} unlabelled clean queries (held out of the evaluation), labelled by the target")
    det = fit_detector(target.model, info, ds.test_x[sur], ds.test_y[sur], cfg.detector, tau, ds.num_classes,
                       dataset=ds.name, traffic_x=ds.test_x[traffic] if fit_on_traffic else None)
    if traffic is not None and not fit_on_traffic:
        log(f"re-thresholding on {len(traffic)} unlabelled clean queries (held out of the evaluation)")
        det = det.calibrate_on_traffic(ds.test_x[traffic], cfg.detector.target_fpr)
    timings["fit_detector"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    log(f"inspecting {len(ev)} clean evaluation inputs, {len(target.triggers)} triggers, "
        f"{len(target.fresh_triggers)} fresh triggers")
    clean, trig, fresh = inspect_sets(det, ds.test_x[ev], ds.test_y[ev], target.triggers, target.fresh_triggers)
    metrics = evaluate(det, clean, trig, fresh, cfg.trigger.trigger_label, cfg.strategy, cfg.detector.seed,
                       cfg.significance, verification_chance(cfg.trigger, ds.num_classes))
    timings["evaluate"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start

    report = {
        "dataset": ds.name, "dataset_note": ds.note, "arch": cfg.train.arch, "stem": cfg.train.stem,
        "detector": det.name, "detector_spec": det.describe(), "trigger_label": cfg.trigger.trigger_label,
        "tau": tau if det.spec.rule == "paper" else None, "target_fpr": cfg.detector.target_fpr,
        "seed": cfg.train.seed, "strategy": cfg.strategy,
        "units": "rates are fractions in [0,1]; fnr counts the embedded triggers (15 by default)",
        **metrics,
        "target_report": {k: target.report.get(k) for k in ("test_accuracy", "evaluation_accuracy",
                                                            "trigger_accuracy", "fresh_trigger_accuracy",
                                                            "trigger_oversampled", "train_seconds")},
        "target_dir": str(target.out_dir), "config": asdict(cfg), "surrogate_size": int(len(sur)),
        "evaluation_size": int(len(ev)), "traffic_size": cfg.detector.traffic, "timings": timings,
        "git_commit": git_commit(),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
    write_run_outputs(out_dir, report, ds, target, det, clean, trig)
    return RunResult(report, out_dir, {"detector": det, "target": target, "dataset": ds, "splits": splits})


__all__ = ["RunConfig", "RunResult", "run", "split_traffic", "get_target", "target_key", "default_cache_dir",
           "CPU_TRAIN", "QUICK_TRAIN", "PAPER_TRAIN"]
