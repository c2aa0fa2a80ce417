"""Model registry: ``build_model(arch, stem)`` plus, per architecture, its default heatmap layer, the layers whose
pooled activations serve as features, and the penultimate layer."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dnnpiracy.models.resnet import RESNET_SPECS, STEMS, ResNet
from dnnpiracy.models.small_cnn import SmallCNN

ARCHS = ("small-cnn", *RESNET_SPECS)
DEFAULT_STEM = "imagenet"


@dataclass(frozen=True)
class ArchInfo:
    heatmap_layer: str           # default Grad-CAM layer (>= 7x7 on 28x28 input)
    feature_layers: tuple[str, ...]  # stages whose spatially pooled activations are "features"
    penultimate: str             # layer whose output feeds the classifier head


def arch_info(arch: str, stem: str = DEFAULT_STEM) -> ArchInfo:
    if arch == "small-cnn":
        return ArchInfo("conv2", ("conv1", "conv2", "fc1"), "fc1")
    if arch not in RESNET_SPECS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    # the deepest stage that still has >= 7x7 resolution on 28x28 input
    heatmap = {"imagenet": "layer1", "nopool": "layer2", "cifar": "layer3"}[stem]
    return ArchInfo(heatmap, ("layer1", "layer2", "layer3", "layer4", "avgpool"), "avgpool")


def build_model(arch: str, stem: str = DEFAULT_STEM, num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    if arch == "small-cnn":
        return SmallCNN(num_classes, in_channels)
    if arch not in RESNET_SPECS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    if stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}; choose one of {', '.join(STEMS)}")
    block, layers = RESNET_SPECS[arch]
    return ResNet(block, layers, num_classes, in_channels, stem)


def stage_sizes(model: nn.Module, layers: tuple[str, ...], size: int = 28, in_channels: int = 1) -> dict[str, list]:
    """Output shape (C, H, W) of each named stage for one ``size`` x ``size`` input."""
    shapes: dict[str, list] = {}
    hooks = [model.get_submodule(name).register_forward_hook(
        lambda _m, _i, out, name=name: shapes.__setitem__(name, list(out.shape[1:]))) for name in layers]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, in_channels, size, size))
    model.train(was_training)
    for h in hooks:
        h.remove()
    return shapes


__all__ = ["ARCHS", "STEMS", "DEFAULT_STEM", "ArchInfo", "arch_info", "build_model", "stage_sizes", "ResNet",
           "SmallCNN"]
