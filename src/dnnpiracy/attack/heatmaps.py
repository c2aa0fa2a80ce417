"""Grad-CAM heatmaps for the predicted class, batched: one forward gives the prediction, the activations at the
heatmap layer and the pooled activations at any feature layers; one backward (from the heatmap layer on, with
respect to the activations only: no weight gradients) gives every sample's own gradient.

Eval-mode BatchNorm layers backpropagate through :class:`_EvalBatchNormInputGrad` (input gradient only, the same
bits as ATen's backward, a fraction of its cost) for batches of ``LEAN_BN_MIN_BATCH`` or more.

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
    heatmaps: torch.Tensor | None             # (B, 1, H, W) in [0, 1], at the input size (None: not computed)
    cams: torch.Tensor | None                 # (B, 1, h, w) raw ReLU'd CAM at layer resolution (None: not computed)
    features: dict[str, torch.Tensor] = field(default_factory=dict)  # layer -> (B, d), spatially mean-pooled
    peaks: dict[str, torch.Tensor] = field(default_factory=dict)     # layer -> (B, d), spatial max per channel
    maps: torch.Tensor | None = None          # (B, K, h, w) activations of the heatmap layer (Grad-CAM's A^k)

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


# below this batch size the Python cost of the lean BatchNorm backward exceeds what it saves (ResNet-34, 1 thread:
# batch 8 +-0 %, 16 +3 %, 32 and 48 +4-10 % on the whole CAM)
LEAN_BN_MIN_BATCH = 8


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


class _EvalBatchNormInputGrad(torch.autograd.Function):
    """Eval-mode BatchNorm whose backward computes the input gradient only.

    Forward: the module's own ``F.batch_norm`` call (training=False), bit for bit.  Backward: ``(grad * invstd) *
    weight`` with ``invstd = float(1 / sqrt(double(running_var) + eps))``, the exact arithmetic of ATen's eval-mode
    backward (so Captum's heatmaps are matched bit for bit), without the per-channel reductions ATen also makes for
    the weight and bias gradients nobody asked for; on ResNet shapes that kernel costs 5-20x the two products
    (e.g. 3.9 ms against 0.3 ms for 256x256x2x2).
    """

    @staticmethod
    def forward(ctx, x, bn, invstd, weight):
        ctx.invstd, ctx.weight = invstd, weight
        return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)

    @staticmethod
    def backward(ctx, grad):
        g = grad * ctx.invstd
        if ctx.weight is not None:
            g = g.mul_(ctx.weight)
        return g, None, None, None


def _bn_constants(bn: nn.BatchNorm2d, cache: dict | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(invstd, weight) shaped (C, 1, 1); cached while the buffers are the same tensors, unmodified."""
    var, w = bn.running_var, bn.weight
    key = (var.data_ptr(), var._version, bn.eps, None if w is None else (w.data_ptr(), w._version))
    hit = cache.get(bn) if cache is not None else None
    if hit is None or hit[0] != key:
        v = var.detach()
        invstd = (1.0 / torch.sqrt(v.double() + bn.eps)).to(v.dtype)[:, None, None]
        hit = (key, invstd, None if w is None else w.detach()[:, None, None])
        if cache is not None:
            cache[bn] = hit
    return hit[1], hit[2]


def _lean_eval_bn(bn: nn.BatchNorm2d, cache: dict | None = None):
    invstd, weight = _bn_constants(bn, cache)
    original = bn.forward

    def forward(x):
        if (x.requires_grad and x.dim() == 4 and x.is_contiguous() and not bn.training
                and not (bn.weight is not None and bn.weight.requires_grad)):   # inside _frozen only
            return _EvalBatchNormInputGrad.apply(x, bn, invstd, weight)
        return original(x)
    return forward


@contextmanager
def _lean_batchnorm(model: nn.Module, enabled: bool = True, cache: dict | None = None):
    """Within the block, eval-mode BatchNorm2d layers of ``model`` backpropagate through
    :class:`_EvalBatchNormInputGrad` (identical values, less work); anything else runs the module's own forward."""
    mods = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d) and not m.training
            and m.track_running_stats and m.running_var is not None and "forward" not in vars(m)] if enabled else []
    for m in mods:
        m.forward = _lean_eval_bn(m, cache)
    try:
        yield
    finally:
        for m in mods:
            del m.forward


def _pool(t: torch.Tensor) -> torch.Tensor:
    return t.mean((2, 3)) if t.ndim == 4 else t.flatten(1)


def _peak(t: torch.Tensor) -> torch.Tensor | None:
    """Each channel's largest response anywhere in the map: what a local pattern (a stamped disc) leaves, where
    the spatial mean dilutes it over the whole image.  None for a layer without a spatial map."""
    return t.amax((2, 3)) if t.ndim == 4 else None


class CAM:
    """Base class: hooks ``layer`` (and ``feature_layers``), runs batches, upsamples and scales."""

    def __init__(self, model: nn.Module, layer: str, feature_layers: tuple[str, ...] = (),
                 batch_size: int = 256):
        self.model = model
        self.layer = layer
        self.feature_layers = tuple(feature_layers)
        self.batch_size = batch_size
        self._bn_cache: dict = {}
        try:
            self._layer_module = model.get_submodule(layer)
            self._feature_modules = {n: model.get_submodule(n) for n in self.feature_layers}
        except AttributeError as exc:
            raise ValueError(f"model has no layer named {exc}; choose one of "
                             f"{[n for n, _ in model.named_children()]}") from exc

    def channel_weights(self, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """(B, K, h, w) activations and gradients -> (B, K, 1, 1) channel weights."""
        raise NotImplementedError

    def __call__(self, x: torch.Tensor, targets: torch.Tensor | None = None, heatmaps: bool = True) -> Probe:
        """Probe ``x`` in batches.  ``heatmaps=False`` skips the backward pass: the probe then has the logits, the
        pooled features and the heatmap layer's maps, but no heatmap (for a detector that reads none)."""
        parts = [self._batch(x[i:i + self.batch_size], None if targets is None else targets[i:i + self.batch_size],
                             heatmaps) for i in range(0, len(x), self.batch_size)]
        if len(parts) == 1:
            return parts[0]
        cat = lambda ts: None if ts[0] is None else torch.cat(ts)         # noqa: E731
        feats = {k: torch.cat([p.features[k] for p in parts]) for k in parts[0].features}
        peaks = {k: torch.cat([p.peaks[k] for p in parts]) for k in parts[0].peaks}
        return Probe(torch.cat([p.logits for p in parts]), cat([p.heatmaps for p in parts]),
                     cat([p.cams for p in parts]), feats, peaks, cat([p.maps for p in parts]))

    def _batch(self, x: torch.Tensor, targets: torch.Tensor | None, heatmaps: bool = True) -> Probe:
        store: dict[str, torch.Tensor] = {}

        def grab_layer(_m, _i, out):
            leaf = out.detach().requires_grad_(True)   # the graph starts here: backward stops at this layer
            store["act"] = leaf
            return leaf

        def grab_feature(name):
            def hook(_m, _i, out):
                store[name] = _pool(out.detach())
                store["peak:" + name] = _peak(out.detach())
            return hook

        handles = [self._layer_module.register_forward_hook(grab_layer)]
        handles += [m.register_forward_hook(grab_feature(n)) for n, m in self._feature_modules.items()]
        self.model.eval()
        device = next(self.model.parameters()).device
        x = x.to(device)
        try:
            lean_bn = _lean_batchnorm(self.model, len(x) >= LEAN_BN_MIN_BATCH, self._bn_cache)
            if not heatmaps:       # forward only: no graph, no backward
                with torch.no_grad(), lean_bn:
                    logits = self.model(x)
            else:
                with _frozen(self.model), lean_bn, torch.enable_grad():
                    logits = self.model(x)
                    act = store["act"]
                    idx = logits.argmax(1) if targets is None else targets.to(device)
                    chosen = logits.gather(1, idx[:, None]).sum()  # samples do not interact in eval mode
                    (grads,) = torch.autograd.grad(chosen, act)
        finally:
            for h in handles:
                h.remove()
        act = store["act"].detach()
        feats = {n: store[n].cpu() for n in self.feature_layers}
        peaks = {n: store["peak:" + n].cpu() for n in self.feature_layers if store["peak:" + n] is not None}
        if self.layer in self.feature_layers:
            feats[self.layer] = _pool(act).cpu()
            peaks[self.layer] = _peak(act).cpu()
        if not heatmaps:
            return Probe(logits.detach().cpu(), None, None, feats, peaks, act.cpu())
        with torch.no_grad():
            cam = F.relu((self.channel_weights(act, grads) * act).sum(1, keepdim=True))
            up = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)
            heat = minmax_scale(up)
        return Probe(logits.detach().cpu(), heat.cpu(), cam.cpu(), feats, peaks, act.cpu())


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
