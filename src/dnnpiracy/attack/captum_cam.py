"""The reference pipeline for ``dnnpiracy bench``: Grad-CAM heatmaps from Captum's ``LayerGradCam``, built the way
one would build the pirated classifier on Captum.  Captum does not return the logits or any other layer's
activations, so this CAM needs its own (no-grad) forward for the prediction and the pooled features, and then
Captum's forward + backward for the heatmap.

It is a :class:`~dnnpiracy.attack.heatmaps.CAM`, so a detector can swap it in (``dataclasses.replace(detector,
cam=CaptumGradCAM(...))``) and everything after the heatmap (scoring, threshold, label strategy) is the same code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dnnpiracy.attack.heatmaps import CAM, Probe, _peak, _pool, minmax_scale


class CaptumGradCAM(CAM):
    """Grad-CAM by ``captum.attr.LayerGradCam(model, layer).attribute(x, target=pred, relu_attributions=True)``,
    bilinearly upsampled (``align_corners=False``) and min-max scaled per image, as :class:`GradCAM` does."""

    def __init__(self, model: nn.Module, layer: str, feature_layers: tuple[str, ...] = (),
                 batch_size: int = 256):
        super().__init__(model, layer, feature_layers, batch_size)
        from captum.attr import LayerGradCam
        self._captum = LayerGradCam(model, self._layer_module)

    def _batch(self, x: torch.Tensor, targets: torch.Tensor | None, heatmaps: bool = True) -> Probe:
        store: dict[str, torch.Tensor] = {}

        def grab_feature(name):
            def hook(_m, _i, out):
                store[name] = _pool(out.detach())
                store["peak:" + name] = _peak(out.detach())
            return hook

        modules = dict(self._feature_modules)
        handles = [m.register_forward_hook(grab_feature(n)) for n, m in modules.items()]
        self.model.eval()
        device = next(self.model.parameters()).device
        x = x.to(device)
        try:
            with torch.no_grad():                  # the prediction and the features: Captum gives neither
                logits = self.model(x)
        finally:
            for h in handles:
                h.remove()
        feats = {n: store[n].cpu() for n in self.feature_layers}
        peaks = {n: store["peak:" + n].cpu() for n in self.feature_layers if store["peak:" + n] is not None}
        if not heatmaps:
            return Probe(logits.cpu(), None, None, feats, peaks)
        idx = logits.argmax(1) if targets is None else targets.to(device)
        attr = self._captum.attribute(x, target=idx, relu_attributions=True).detach()
        up = F.interpolate(attr, size=x.shape[-2:], mode="bilinear", align_corners=False)
        heat = minmax_scale(up)
        return Probe(logits.cpu(), heat.cpu(), attr.cpu(), feats, peaks)


__all__ = ["CaptumGradCAM"]
