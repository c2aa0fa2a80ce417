"""Embedding: train the target on the training set plus the trigger set, and measure what the owner cares about."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn

from dnnpiracy.config import TrainConfig, TriggerConfig
from dnnpiracy.data import Dataset, Splits
from dnnpiracy.io import git_commit, read_json, write_json
from dnnpiracy.models import arch_info
from dnnpiracy.training import accuracy, load_model, resolve_device, save_model, train_classifier
from dnnpiracy.watermark.schemes import apply_trigger, get_scheme, make_fresh_triggers, make_trigger_set
from dnnpiracy.watermark.triggers import TriggerSet, load_trigger_set, save_trigger_grid, save_trigger_set

MODEL_FILE, TRIGGERS_FILE, FRESH_FILE, REPORT_FILE = "model.safetensors", "triggers.safetensors", \
    "fresh_triggers.safetensors", "report.json"


def stitch_config(train_cfg: TrainConfig) -> TrainConfig:
    """How a scheme that crafts its triggers against the trained model fine-tunes it on them: one epoch at a tenth
    of the learning rate (Le Merrer et al. fine-tune the trained model on its training set plus the key set)."""
    return replace(train_cfg, epochs=1, lr=train_cfg.lr / 10)


@dataclass(frozen=True)
class Target:
    """A trained (possibly watermarked) target and where it lives."""

    model: nn.Module
    triggers: TriggerSet | None
    fresh_triggers: TriggerSet | None
    report: dict
    out_dir: Path


def owner_metrics(model: nn.Module, ds: Dataset, splits: Splits, triggers: TriggerSet | None,
                  fresh: TriggerSet | None) -> dict[str, float]:
    ev = splits.evaluation_idx
    m = {"test_accuracy": accuracy(model, ds.test_x, ds.test_y),
         "evaluation_accuracy": accuracy(model, ds.test_x[ev], ds.test_y[ev])}
    if triggers is not None:
        m["trigger_accuracy"] = accuracy(model, triggers.images, triggers.labels)
    if fresh is not None:
        m["fresh_trigger_accuracy"] = accuracy(model, fresh.images, fresh.labels)
    return m


def fresh_triggers_for(ds: Dataset, splits: Splits, trigger_cfg: TriggerConfig, n: int = 500,
                       model: nn.Module | None = None) -> TriggerSet:
    """The owner's trigger stamped on ``n`` clean evaluation images (never the surrogate's): does the detector catch
    the trigger on inputs it was not trained with?  Deterministic in (split, trigger config, and for schemes that
    craft triggers against a model, ``model``: the watermarked target); source indices are test-set indices."""
    ev = splits.evaluation_idx
    fresh = make_fresh_triggers(ds.test_x[ev], ds.test_y[ev], trigger_cfg, n=n, seed=trigger_cfg.seed + 1,
                                dataset=ds.name, model=model)
    src = fresh.source_idx
    if get_scheme(trigger_cfg, ds.name).stamps_real_images:   # evaluation indices -> test-set indices
        src = ev[src]
    return TriggerSet(fresh.images, fresh.labels, src, fresh.source_labels, fresh.config)


def same_class_triggers_for(ds: Dataset, splits: Splits, trigger_cfg: TriggerConfig, n: int = 500,
                            model: nn.Module | None = None) -> TriggerSet:
    """The owner's trigger stamped on up to ``n`` clean evaluation images whose true label *is* the trigger label
    (a stamped 6 for a label-6 watermark): the case the embedded set meets by chance (the paper draws its 15 images
    from every class) and which carries no class-consistency evidence, since the target's answer is right either
    way.  Deterministic in (split, trigger config); source indices are test-set indices."""
    ev = splits.evaluation_idx
    pool = ev[ds.test_y[ev] == trigger_cfg.trigger_label]
    if len(pool) == 0:       # no evaluation image of that class: an empty set, not a crash
        return TriggerSet(ds.test_x[:0].clone(), torch.zeros(0, dtype=torch.long), pool, pool.clone(), trigger_cfg)
    gen = torch.Generator().manual_seed(trigger_cfg.seed + 2)
    idx = pool[torch.randperm(len(pool), generator=gen)[:n]]
    images = apply_trigger(ds.test_x[idx], trigger_cfg, gen, model)
    labels = torch.full((len(idx),), trigger_cfg.trigger_label, dtype=torch.long)
    return TriggerSet(images, labels, idx, ds.test_y[idx].clone(), trigger_cfg)


def embed_watermark(ds: Dataset, splits: Splits, train_cfg: TrainConfig, trigger_cfg: TriggerConfig | None,
                    out_dir: str | Path, progress: bool = True, log=print, base_dir: str | Path | None = None,
                    ) -> Target:
    """Train a target on ``ds`` (+ the trigger set unless ``trigger_cfg`` is None) into ``out_dir``.

    Writes model.safetensors (+ .json), triggers.safetensors, triggers.png, fresh_triggers.safetensors and
    report.json.  Re-running with the same configuration reuses a finished target and resumes an unfinished one.
    A scheme that crafts its triggers against a trained model (frontier) first trains (or reuses) the unwatermarked
    target in ``base_dir`` (default ``out_dir/base``; the runner gives the cached unwatermarked target's folder)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path, report_path = out_dir / MODEL_FILE, out_dir / REPORT_FILE
    if model_path.exists() and report_path.exists():
        report = read_json(report_path)
        if report.get("train_config") == asdict(train_cfg) and report.get("trigger_config") == (
                trigger_cfg.key_dict() if trigger_cfg else None) and report.get("dataset") == ds.name:
            model, _ = load_model(model_path, arch=train_cfg.arch, dataset=ds.name)
            model = model.to(resolve_device(train_cfg.device))   # where a freshly trained target would be
            triggers = load_trigger_set(out_dir / TRIGGERS_FILE) if trigger_cfg else None
            fresh = load_trigger_set(out_dir / FRESH_FILE) if trigger_cfg else None
            log(f"reusing target in {out_dir}")
            return Target(model, triggers, fresh, report, out_dir)

    triggers = fresh = base = hook = None
    fit_cfg = train_cfg
    if trigger_cfg is not None:
        scheme = get_scheme(trigger_cfg, ds.name)
        if scheme.needs_model:
            # frontier stitching: train unwatermarked, craft the triggers against that model, then fine-tune on them
            base = embed_watermark(ds, splits, train_cfg, None, base_dir or out_dir / "base", progress, log)
            fit_cfg = stitch_config(train_cfg)
        triggers = make_trigger_set(ds.train_x, ds.train_y, trigger_cfg, ds.name, base and base.model)
        save_trigger_set(out_dir / TRIGGERS_FILE, triggers, {"dataset": ds.name, "source_split": "train"})
        save_trigger_grid(out_dir / "triggers.png", triggers, ds.class_names)
        hook = scheme.training_hook(ds.train_x, ds.train_y, triggers,
                                    arch_info(train_cfg.arch, train_cfg.stem).feature_layers[-3:])
    t0 = time.perf_counter()
    model, history = train_classifier(
        ds.train_x, ds.train_y, fit_cfg,
        extra_x=None if triggers is None else triggers.images,
        extra_y=None if triggers is None else triggers.labels,
        checkpoint=out_dir / "checkpoint.pt",
        eval_fn=(lambda m: {"trigger_accuracy": accuracy(m, triggers.images, triggers.labels)}) if triggers else None,
        progress=progress, log=log, init=base and base.model, hook=hook)
    if base is not None:
        history = [{**r, "phase": "unwatermarked"} for r in base.report["history"]] + \
            [{**r, "phase": "stitch"} for r in history]
    if trigger_cfg is not None:      # after training: schemes that need a model craft fresh triggers against it
        fresh = fresh_triggers_for(ds, splits, trigger_cfg, model=model)
        save_trigger_set(out_dir / FRESH_FILE, fresh, {"dataset": ds.name, "source_split": "test"})
    train_seconds = sum(r["seconds"] for r in history)
    metrics = owner_metrics(model, ds, splits, triggers, fresh)
    report = {"dataset": ds.name, "dataset_note": ds.note, "arch": train_cfg.arch, "stem": train_cfg.stem,
              "watermarked": trigger_cfg is not None, "train_config": asdict(train_cfg),
              "trigger_config": trigger_cfg.key_dict() if trigger_cfg else None,
              "trigger_source_idx": triggers.source_idx.tolist() if triggers else None,
              "trigger_oversampled": bool(trigger_cfg and train_cfg.trigger_oversample > 1),
              **metrics, "history": history, "train_seconds": train_seconds,
              "wall_seconds": time.perf_counter() - t0, "git_commit": git_commit(),
              # provenance only (not part of the cache key): CPU training is bit-for-bit repeatable for a given
              # thread count, not across thread counts (results/determinism_label6_seed2/)
              "device": str(next(model.parameters()).device), "torch_threads": torch.get_num_threads(),
              "torch_version": torch.__version__}
    save_model(model_path, model, {"arch": train_cfg.arch, "stem": train_cfg.stem, "dataset": ds.name,
                                   "num_classes": ds.num_classes, "seed": train_cfg.seed,
                                   "train_config": asdict(train_cfg),
                                   "trigger_config": asdict(trigger_cfg) if trigger_cfg else None,
                                   "metrics": metrics})
    write_json(report_path, report)
    (out_dir / "checkpoint.pt").unlink(missing_ok=True)
    return Target(model, triggers, fresh, report, out_dir)
