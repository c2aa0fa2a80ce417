"""Measure every architecture and stem: stage output sizes on 28x28 input and the cost of one training step."""

from __future__ import annotations

import time

import torch

from dnnpiracy.models import ARCHS, STEMS, arch_info, build_model, stage_sizes


def time_train_step(model: torch.nn.Module, batch: int = 128, steps: int = 4, warmup: int = 1) -> float:
    """Median seconds of one Adam training step on a random batch of 28x28 images."""
    x, y = torch.rand(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def measure_models(archs: list[str] | None = None, time_steps: bool = False, echo=print) -> list[dict]:
    rows = []
    for arch in archs or list(ARCHS):
        for stem in (STEMS if arch != "small-cnn" else ("-",)):
            model = build_model(arch, stem if stem != "-" else "imagenet")
            info = arch_info(arch, stem if stem != "-" else "imagenet")
            layers = ("conv1", "conv2") if arch == "small-cnn" else ("layer1", "layer2", "layer3", "layer4")
            sizes = stage_sizes(model, layers)
            row = {"arch": arch, "stem": stem, "heatmap_layer": info.heatmap_layer,
                   "stage_hw": {k: v[1] for k, v in sizes.items()},
                   "params_m": sum(p.numel() for p in model.parameters()) / 1e6}
            if time_steps:
                s = time_train_step(model, steps=2 if arch in ("resnet101", "resnet152") or stem == "cifar" else 4)
                row["ms_per_step"] = s * 1000
                row["min_per_epoch_60k"] = s * 469 / 60
            rows.append(row)
            extra = f"  {row['ms_per_step']:8.0f} ms/step  {row['min_per_epoch_60k']:6.1f} min/epoch" \
                if time_steps else ""
            echo(f"{arch:10s} {stem:9s} heatmap {info.heatmap_layer:7s} stages "
                 + " ".join(f"{k}:{v}" for k, v in row["stage_hw"].items()) + f"  {row['params_m']:.1f}M" + extra)
    return rows
