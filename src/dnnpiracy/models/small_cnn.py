"""A small CNN (2 conv + 2 fc) for fast experiments and tests.  conv1: 28x28, conv2: 14x14 (the heatmap layer)."""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, 32, 3, 1, 1), nn.ReLU(inplace=True))
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Sequential(nn.Conv2d(32, 64, 3, 1, 1), nn.ReLU(inplace=True))
        self.pool2 = nn.Sequential(nn.MaxPool2d(2), nn.Flatten())
        self.fc1 = nn.Sequential(nn.Linear(64 * 7 * 7, 128), nn.ReLU(inplace=True))
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool2(self.conv2(self.pool1(self.conv1(x))))
        return self.fc(self.fc1(x))
