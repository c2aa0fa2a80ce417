"""The paper's heatmap scorers: a per-class DCGAN discriminator, and the heatmap's mass against its class."""

from __future__ import annotations

import torch

from dnnpiracy.attack.dcgan import Discriminator, discriminator_score, train_dcgan
from dnnpiracy.attack.scorers.base import Scorer, class_groups
from dnnpiracy.config import GanConfig


class DCGANScorer(Scorer):
    """The paper's detector: -log D_y(h) with D_y the discriminator of a DCGAN trained on class y's heatmaps."""

    name = "dcgan"
    evidence = "heatmap"

    def __init__(self, cfg: GanConfig | None = None, seed: int = 0, d_steps: int = 1):
        self.cfg, self.seed, self.d_steps = cfg or GanConfig(), seed, d_steps
        self.discriminators: dict[int, Discriminator] = {}

    def fit(self, ev, y, y_pred=None):
        X = ev.need("heatmap")
        self.discriminators = {c: train_dcgan(X[idx], self.cfg, seed=self.seed + c,
                                              d_steps=getattr(self, "d_steps", 1)) for c, idx in class_groups(y)}
        return self

    def score(self, ev, y):
        X = ev.need("heatmap")
        out = torch.full((len(X),), float("inf"))
        for c, idx in class_groups(y):
            if c in self.discriminators:
                out[idx] = discriminator_score(self.discriminators[c], X[idx], self.cfg.img_size)
        return out


class HeatmapMassScorer(Scorer):
    """|mean heatmap value - class median| / class MAD: trigger heatmaps carry unusual mass (facts.md §8)."""

    name = "mass"
    evidence = "heatmap"

    def __init__(self):
        self.stats: dict[int, tuple[float, float]] = {}

    def fit(self, ev, y, y_pred=None):
        m = ev.need("heatmap").flatten(1).mean(1)
        for c, idx in class_groups(y):
            med = m[idx].median()
            self.stats[c] = (float(med), float((m[idx] - med).abs().median().clamp_min(1e-6)))
        return self

    def score(self, ev, y):
        m = ev.need("heatmap").flatten(1).mean(1)
        out = torch.full((len(m),), float("inf"))
        for c, idx in class_groups(y):
            if c in self.stats:
                med, mad = self.stats[c]
                out[idx] = (m[idx] - med).abs() / mad
        return out
