"""Watermark-removal attacks: the alternative to detect-and-lie that the paper argues against (they cost accuracy).

Each attack makes a new classifier from the stolen one with the attacker's data only (``x``, and ``y`` where the
attack reads labels).  :class:`Removal` owns the plumbing (a copy of the stolen model, a seeded fixed-step training
loop, Adam); a subclass says what it trains and on which targets:

- ``ftal``: fine-tune all layers (Adi et al. 2018);
- ``rtal``: re-initialise the output layer, then fine-tune all layers (Adi et al. 2018);
- ``fine-pruning``: prune the last stage's dormant channels, then fine-tune (Liu et al. 2018);
- ``distillation``: a fresh network trained on the stolen model's softened answers (Shafieinejad et al. 2019).

One call per method: ``REMOVALS[name]().remove(model, x, y, seed=..., arch=..., stem=...)``.  The settings are the
ones fixed in docs/peers_protocol.md.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dnnpiracy.models import build_model
from dnnpiracy.training import predict_labels, predict_logits


@dataclass
class RemovalResult:
    model: nn.Module
    info: dict


class Removal:
    """Base class: ``remove`` copies the stolen model, lets the subclass ``prepare`` it, then trains it for ``steps``
    Adam steps of ``batch_size`` on the attacker's data with the subclass's ``loss``."""

    name = "base"
    reference = ""
    reads_labels = True
    steps = 100
    lr = 1e-4
    batch_size = 64

    def prepare(self, stolen: nn.Module, x: torch.Tensor, y: torch.Tensor | None, arch: str, stem: str,
                num_classes: int, gen: torch.Generator) -> tuple[nn.Module, dict]:
        """The network to train, and what the subclass wants reported (default: a copy of the stolen model)."""
        return copy.deepcopy(stolen), {}

    def loss(self, model: nn.Module, xb: torch.Tensor, yb: torch.Tensor | None, teacher: torch.Tensor | None
             ) -> torch.Tensor:
        return F.cross_entropy(model(xb), yb)

    def teacher_outputs(self, stolen: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
        return None

    def remove(self, stolen: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, seed: int = 0,
               arch: str = "resnet18", stem: str = "imagenet", num_classes: int = 10) -> RemovalResult:
        if self.reads_labels and y is None:
            raise ValueError(f"removal {self.name!r} trains on labelled data: pass y")
        if y is not None and len(y) != len(x):
            raise ValueError(f"{len(x)} images but {len(y)} labels")
        if len(x) == 0:
            raise ValueError("the attacker's data is empty")
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        stolen = stolen.eval()
        model, info = self.prepare(stolen, x, y, arch, stem, num_classes, gen)
        teacher = self.teacher_outputs(stolen, x)
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=self.lr)
        order = torch.empty(0, dtype=torch.long)
        for _ in range(self.steps):
            if len(order) < self.batch_size:      # reshuffle when an epoch's worth is used up
                order = torch.cat([order, torch.randperm(len(x), generator=gen)])
            idx, order = order[: self.batch_size], order[self.batch_size:]
            if len(idx) < 2:                      # BatchNorm needs two samples in train mode
                continue
            opt.zero_grad()
            self.loss(model, x[idx], None if y is None else y[idx],
                      None if teacher is None else teacher[idx]).backward()
            opt.step()
        model.eval()
        return RemovalResult(model, {"removal": self.name, "steps": self.steps, "lr": self.lr,
                                     "batch_size": self.batch_size, "n_data": len(x), **info})


class FTAL(Removal):
    name = "ftal"
    reference = "Adi et al. 2018: fine-tune all layers"


class RTAL(Removal):
    name = "rtal"
    reference = "Adi et al. 2018: re-initialise the output layer, then fine-tune all layers"

    def prepare(self, stolen, x, y, arch, stem, num_classes, gen):
        model = copy.deepcopy(stolen)
        head = output_layer(model)
        head.reset_parameters()
        return model, {}


class FinePruning(Removal):
    """Prune the channels of the last convolutional stage in increasing order of their mean activation on the
    attacker's data, ``fraction_step`` of them at a time, while its accuracy stays within ``max_drop`` of the stolen
    model's; the pruned channels are held at zero by a forward hook, then all layers are fine-tuned."""

    name = "fine-pruning"
    reference = "Liu et al. 2018: prune dormant last-stage channels, then fine-tune"
    max_drop = 0.04
    fraction_step = 0.05
    layer = "layer4"

    def prepare(self, stolen, x, y, arch, stem, num_classes, gen):
        model = copy.deepcopy(stolen).eval()
        stage = dict(model.named_modules())[self.layer]
        acts = channel_means(model, stage, x)
        order = torch.argsort(acts)                       # most dormant first
        mask = torch.ones(len(acts))
        hook = stage.register_forward_hook(lambda _m, _i, out: out * mask.view(1, -1, 1, 1).to(out.dtype))
        base = float((predict_labels(model, x) == y).float().mean())
        step = max(1, int(round(self.fraction_step * len(acts))))
        kept = 0
        for n in range(step, len(acts), step):
            mask[order[:n]] = 0
            acc = float((predict_labels(model, x) == y).float().mean())
            if base - acc > self.max_drop:
                break
            kept = n
        mask.fill_(1)
        mask[order[:kept]] = 0
        model._pruning_hook = hook      # keep the hook alive with the model
        return model, {"pruned_channels": kept, "channels": len(acts), "attacker_accuracy_before": base}


class Distillation(Removal):
    """A freshly initialised network of the stolen one's architecture, trained on the stolen model's softmax at
    temperature ``T`` over the attacker's inputs (KL divergence x T^2); labels are never read."""

    name = "distillation"
    reference = "Shafieinejad et al. 2019: retrain on the stolen model's answers"
    reads_labels = False
    steps = 300
    lr = 1e-3
    T = 4.0

    def prepare(self, stolen, x, y, arch, stem, num_classes, gen):
        return build_model(arch, stem, num_classes, x.shape[1]), {"temperature": self.T}

    def teacher_outputs(self, stolen, x):
        return predict_logits(stolen, x).float().clone()   # a normal tensor, not an inference one

    def loss(self, model, xb, yb, teacher):
        T = self.T
        return F.kl_div(F.log_softmax(model(xb) / T, 1), F.softmax(teacher / T, 1), reduction="batchmean") * T * T


def output_layer(model: nn.Module) -> nn.Linear:
    """The classifier head: the last nn.Linear of the model."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("the model has no nn.Linear output layer")
    return linears[-1]


@torch.no_grad()
def channel_means(model: nn.Module, stage: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Each output channel's mean activation of ``stage`` over ``x`` (and over space)."""
    total, seen = None, 0
    grab = {}
    hook = stage.register_forward_hook(lambda _m, _i, out: grab.__setitem__("out", out))
    try:
        for i in range(0, len(x), batch_size):
            model(x[i:i + batch_size])
            out = grab["out"].float()
            s = out.mean(dim=(2, 3)).sum(0) if out.dim() == 4 else out.sum(0)
            total = s if total is None else total + s
            seen += len(out)
    finally:
        hook.remove()
    return total / seen


REMOVALS: dict[str, type[Removal]] = {c.name: c for c in (FTAL, RTAL, FinePruning, Distillation)}

__all__ = ["Removal", "RemovalResult", "FTAL", "RTAL", "FinePruning", "Distillation", "REMOVALS", "output_layer",
           "channel_means"]
