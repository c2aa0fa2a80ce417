"""Scorers that read only the target's logits."""

from __future__ import annotations

import torch

from dnnpiracy.attack.scorers.base import Scorer


class EnergyScorer(Scorer):
    """Negative free energy, -logsumexp(logits) (Liu et al. 2020): high when the target is unsure about every
    class.  Needs no fitting; useful as one component of an ensemble."""

    name = "energy"
    evidence = "logits"

    def fit(self, ev, y, y_pred=None):
        return self

    def score(self, ev, y):
        return -torch.logsumexp(ev.need("logits").float(), 1)
