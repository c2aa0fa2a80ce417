"""Seeded, resumable classifier training (Adam, the paper's defaults in :class:`~dnnpiracy.config.TrainConfig`).

A checkpoint (model + optimizer + RNG state + history, plain tensors only) is written atomically after every epoch;
calling :func:`train_classifier` again with the same ``checkpoint`` path resumes after the last finished epoch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from dnnpiracy.config import TrainConfig
from dnnpiracy.io import (
    ArtifactError,
    atomic_torch_save,
    git_commit,
    load_tensors,
    safe_torch_load,
    save_tensors,
)
from dnnpiracy.models import build_model
from dnnpiracy.progress import progress_bar


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


@torch.inference_mode()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    model.eval()
    device = next(model.parameters()).device
    return torch.cat([model(x[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)])


def predict_labels(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    if len(x) == 0:
        return torch.zeros(0, dtype=torch.long)
    return predict_logits(model, x, batch_size).argmax(1)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((predict_labels(model, x) == y).float().mean()) if len(y) else float("nan")


def _epoch_order(n_train: int, n_extra: int, oversample: int, gen: torch.Generator) -> torch.Tensor:
    """Indices into cat(train, extra): every training sample once, every extra (trigger) sample ``oversample`` times."""
    idx = torch.arange(n_train)
    if n_extra:
        idx = torch.cat([idx, (n_train + torch.arange(n_extra)).repeat(oversample)])
    return idx[torch.randperm(len(idx), generator=gen)]


def train_classifier(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    cfg: TrainConfig,
    extra_x: torch.Tensor | None = None,
    extra_y: torch.Tensor | None = None,
    checkpoint: str | Path | None = None,
    eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    init: nn.Module | None = None,
    hook: Callable[[nn.Module], torch.Tensor] | None = None,
) -> tuple[nn.Module, list[dict]]:
    """Train ``cfg.arch`` on train (+ extra samples, e.g. the trigger set, each seen ``trigger_oversample`` times
    per epoch), from scratch or, with ``init``, from that model's weights (fine-tuning).  Returns the model (eval
    mode) and the per-epoch history.  ``hook`` (a scheme's training-time step, e.g. entangled watermarks) is called
    after every ``hook.every``-th batch and its loss minimised in one more optimiser step."""
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    num_classes = int(max(train_y.max(), extra_y.max() if extra_y is not None and len(extra_y) else 0)) + 1
    num_classes = max(num_classes, 10)
    model = build_model(cfg.arch, cfg.stem, num_classes).to(device)
    if init is not None:
        model.load_state_dict(init.state_dict())
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    history: list[dict] = []
    start_epoch = 0

    ckpt_path = Path(checkpoint) if checkpoint else None
    if ckpt_path is not None and ckpt_path.exists():
        state = safe_torch_load(ckpt_path)
        if state.get("config") != asdict(cfg):
            raise ArtifactError(f"checkpoint {ckpt_path} was written for another configuration: "
                                f"{state.get('config')} != {asdict(cfg)}; delete it or choose another --out")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        history = state["history"]
        start_epoch = len(history)
        log(f"resuming from {ckpt_path} after epoch {start_epoch}")

    all_x = train_x if extra_x is None else torch.cat([train_x, extra_x])
    all_y = train_y if extra_y is None else torch.cat([train_y, extra_y])
    n_extra = 0 if extra_x is None else len(extra_x)
    loss_fn = nn.CrossEntropyLoss()

    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        order = _epoch_order(len(train_x), n_extra, cfg.trigger_oversample, gen)
        t0 = time.perf_counter()
        tot_loss, tot_correct, seen = 0.0, 0, 0
        bar = progress_bar(range(0, len(order), cfg.batch_size), desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   disable=not progress, leave=False, unit="batch")
        for start in bar:
            batch = order[start:start + cfg.batch_size]
            xb, yb = all_x[batch].to(device), all_y[batch].to(device)
            if len(batch) == 1 and model.training:  # BatchNorm cannot train on a single sample
                continue
            opt.zero_grad(set_to_none=True)
            out = model(xb)
            loss = loss_fn(out, yb)
            loss.backward()
            opt.step()
            if hook is not None and (start // cfg.batch_size) % hook.every == hook.every - 1:
                opt.zero_grad(set_to_none=True)
                hook(model).backward()
                opt.step()
            tot_loss += float(loss.detach()) * len(batch)
            tot_correct += int((out.argmax(1) == yb).sum())
            seen += len(batch)
            bar.set_postfix(loss=f"{tot_loss / seen:.4f}", acc=f"{tot_correct / seen:.4f}")
        model.eval()
        row = {"epoch": epoch + 1, "train_loss": tot_loss / max(seen, 1), "train_accuracy": tot_correct / max(seen, 1),
               "seconds": time.perf_counter() - t0}
        if eval_fn is not None:
            row.update(eval_fn(model))
        history.append(row)
        log("  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        if ckpt_path is not None:
            atomic_torch_save(ckpt_path, {"config": asdict(cfg), "model": model.state_dict(),
                                          "optimizer": opt.state_dict(), "generator": gen.get_state(),
                                          "torch_rng": torch.get_rng_state(), "history": history})
    model.eval()
    return model, history


# ------------------------------------------------------------------------------------------------ model artifacts
def save_model(path: str | Path, model: nn.Module, meta: dict) -> Path:
    """Weights as safetensors + JSON metadata (must include arch, stem, dataset, num_classes)."""
    meta = {"format": "dnnpiracy-model/1", "git_commit": git_commit(), **meta}
    return save_tensors(path, model.state_dict(), meta)


def load_model(path: str | Path, arch: str | None = None, dataset: str | None = None,
               stem: str | None = None) -> tuple[nn.Module, dict]:
    """Load a model artifact; refuses if its metadata disagrees with a requested arch/dataset/stem."""
    expect = {k: v for k, v in {"arch": arch, "dataset": dataset, "stem": stem}.items() if v is not None}
    tensors, meta = load_tensors(path, expect)
    if "arch" not in meta:
        raise ArtifactError(f"{path} has no metadata file {Path(path).with_suffix('.json')} naming its arch")
    model = build_model(meta["arch"], meta.get("stem", "imagenet"), meta.get("num_classes", 10))
    try:
        model.load_state_dict(tensors)
    except RuntimeError as exc:
        raise ArtifactError(f"weights in {path} do not fit {meta['arch']}: {str(exc).splitlines()[0]}") from exc
    model.eval()
    return model, meta
