"""Entangled watermarks (Jia et al., USENIX Security 2021): a training-time hook that makes the triggers' hidden
representations indistinguishable from those of clean images of the trigger label, so that a model extracted from the
watermarked one, and a detector reading activations, cannot separate them.

Between ordinary batches the hook takes a *watermark step*: the triggers beside as many clean training images of the
trigger label; loss = cross-entropy on them - kappa * sum over hidden layers of the soft nearest neighbour loss
(Frosst et al. 2019) of "is a trigger", which is largest when the two groups are entangled."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def soft_nearest_neighbour_loss(x: torch.Tensor, y: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """SNNL = -mean_i log( sum_{j != i, y_j = y_i} e^{-d_ij / T} / sum_{k != i} e^{-d_ik / T} ), with d the squared
    Euclidean distance between the flattened rows, divided by its mean over pairs (so T = 1 suits any layer)."""
    x = x.flatten(1)
    n = len(x)
    off = ~torch.eye(n, dtype=torch.bool, device=x.device)
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)        # no sqrt: a finite gradient at d = 0
    d = d / d[off].mean().detach().clamp_min(1e-12)
    e = torch.exp(-d / temperature) * off
    same = (y[:, None] == y[None, :]) & off
    num = (e * same).sum(1)
    return -torch.log((num + 1e-12) / (e.sum(1) + 1e-12)).mean()


class EntangleHook:
    """The watermark step, called by ``train_classifier`` every ``every`` batches; returns the loss to minimise."""

    def __init__(self, triggers_x: torch.Tensor, triggers_y: torch.Tensor, same_class_x: torch.Tensor,
                 layers: tuple[str, ...], seed: int, kappa: float = 2.0, every: int = 4):
        self.tx, self.ty, self.cx = triggers_x, triggers_y, same_class_x
        self.layers, self.kappa, self.every = layers, kappa, every
        self.gen = torch.Generator().manual_seed(40_009 + seed)

    def __call__(self, model: nn.Module) -> torch.Tensor:
        dev = next(model.parameters()).device
        pick = torch.randint(0, len(self.cx), (len(self.tx),), generator=self.gen)
        x = torch.cat([self.tx, self.cx[pick]]).to(dev)
        y = torch.cat([self.ty, self.ty]).to(dev)            # the clean images are of the trigger label
        is_trigger = torch.cat([torch.ones(len(self.tx)), torch.zeros(len(self.tx))]).to(dev)
        feats: dict[str, torch.Tensor] = {}
        handles = [model.get_submodule(n).register_forward_hook(
            lambda _m, _i, out, n=n: feats.__setitem__(n, out.mean((2, 3)) if out.dim() == 4 else out))
            for n in self.layers]
        norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        momenta = [m.momentum for m in norms]
        for m in norms:          # batch statistics as in training, but this skewed batch leaves the running ones
            m.momentum = 0.0
        try:
            logits = model(x)
        finally:
            for h in handles:
                h.remove()
            for m, mo in zip(norms, momenta):
                m.momentum = mo
        snnl = sum(soft_nearest_neighbour_loss(feats[n], is_trigger) for n in self.layers)
        return F.cross_entropy(logits, y) - self.kappa * snnl


Hook = Callable[[nn.Module], torch.Tensor]
