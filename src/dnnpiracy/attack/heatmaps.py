"""Grad-CAM heatmaps for the predicted class, batched: one forward gives the prediction, the activations at the
heatmap layer and the pooled activations at any feature layers; one backward (from the heatmap layer on, with
respect to the activations only: no weight gradients) gives every sample's own gradient.

Shaped like pytorch-grad-cam: :class:`CAM` keeps hooks, batching, upsampling and scaling; a variant only says how to
weight the activation channels (:class:`GradCAM` is the spatial mean of the gradient, as in the paper).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Probe:
    """What one pass of the stolen model tells about a batch of queries."""

    logits: torch.Tensor                      # (B, C)
    heatmaps: torch.Tensor                    # (B, 1, H, W) in [0, 1], at the input size
    cams: torch.Tensor                        # (B, 1, h, w) raw ReLU'd CAM at layer resolution
    features: dict[str, torch.Tensor] = field(default_factory=dict)  # layer -> (B, d), spatially mean-pooled

    @property
    def predictions(self) -> torch.Tensor:
        return self.logits.argmax(1)


def minmax_scale(maps: torch.Tensor) -> torch.Tensor:
    """Per-image min-max scaling to [0, 1]; a constant map becomes all zeros (never NaN)."""
    flat = maps.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    span = hi - lo
    scaled = torch.where(span > 0, (flat - lo) / torch.where(span > 0, span, torch.ones_like(span)),
                         torch.zeros_like(flat))
    return scaled.view_as(maps)


@contextmanager
def _frozen(model: nn.Module):
    """Parameters need no gradient for a CAM; freezing them skips weight gradients and graph building upstream."""
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)


def _pool(t: torch.Tensor) -> torch.Tensor:
    return t.mean((2, 3)) if t.ndim == 4 else t.flatten(1)


class CAM:
    """Base class: hooks ``layer`` (and ``feature_layers``), runs batches, upsamples and scales."""

    def __init__(self, model: nn.Module, layer: str, feature_layers: tuple[str, ...] = (),
                 batch_size: int = 256):
        self.model = model
        self.layer = layer
        self.feature_layers = tuple(feature_layers)
        self.batch_size = batch_size
        try:
            self._layer_module = model.get_submodule(layer)
            self._feature_modules = {n: model.get_submodule(n) for n in self.feature_layers}
        except AttributeError as exc:
            raise ValueError(f"model has no layer named {exc}; choose one of "
                             f"{[n for n, _ in model.named_children()]}") from exc

    def channel_weights(self, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """(B, K, h, w) activations and gradients -> (B, K, 1, 1) channel weights."""
        raise NotImplementedError

    def __call__(self, x: torch.Tensor, targets: torch.Tensor | None = None) -> Probe:
        parts = [self._batch(x[i:i + self.batch_size], None if targets is None else targets[i:i + self.batch_size])
                 for i in range(0, len(x), self.batch_size)]
        if len(parts) == 1:
            return parts[0]
        feats = {k: torch.cat([p.features[k] for p in parts]) for k in parts[0].features}
        return Probe(torch.cat([p.logits for p in parts]), torch.cat([p.heatmaps for p in parts]),
                     torch.cat([p.cams for p in parts]), feats)

    def _batch(self, x: torch.Tensor, targets: torch.Tensor | None) -> Probe:
        store: dict[str, torch.Tensor] = {}

        def grab_layer(_m, _i, out):
            leaf = out.detach().requires_grad_(True)   # the graph starts here: backward stops at this layer
            store["act"] = leaf
            return leaf

        def grab_feature(name):
            def hook(_m, _i, out):
                store[name] = _pool(out.detach())
            return hook

        handles = [self._layer_module.register_forward_hook(grab_layer)]
        handles += [m.register_forward_hook(grab_feature(n)) for n, m in self._feature_modules.items()]
        self.model.eval()
        device = next(self.model.parameters()).device
        x = x.to(device)
        try:
            with _frozen(self.model), torch.enable_grad():
                logits = self.model(x)
                act = store["act"]
                idx = logits.argmax(1) if targets is None else targets.to(device)
                chosen = logits.gather(1, idx[:, None]).sum()  # samples do not interact in eval mode
                (grads,) = torch.autograd.grad(chosen, act)
        finally:
            for h in handles:
                h.remove()
        with torch.no_grad():
            cam = F.relu((self.channel_weights(act.detach(), grads) * act.detach()).sum(1, keepdim=True))
            up = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)
            heat = minmax_scale(up)
        feats = {n: store[n].cpu() for n in self.feature_layers}
        if self.layer in self.feature_layers:
            feats[self.layer] = _pool(act.detach()).cpu()
        return Probe(logits.detach().cpu(), heat.cpu(), cam.cpu(), feats)


class GradCAM(CAM):
    """Selvaraju et al.: channel weight = spatial mean of the gradient of the class score."""

    def channel_weights(self, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        return grads.mean((2, 3), keepdim=True)


class GradCAMPlusPlus(CAM):
    """Chattopadhay et al.: positive gradients weighted by second-order terms (exp-score approximation)."""

    def channel_weights(self, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        g2, g3 = grads.pow(2), grads.pow(3)
        denom = 2 * g2 + (activations * g3).sum((2, 3), keepdim=True)
        alpha = g2 / torch.where(denom != 0, denom, torch.ones_like(denom))
        return (alpha * F.relu(grads)).sum((2, 3), keepdim=True)


CAM_METHODS: dict[str, type[CAM]] = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus}
