"""Local Outlier Factor on the target's penultimate features (Breunig et al. 2000), the query detector MEA-Defender's
authors (Lv et al., S&P 2024) test their composite triggers against.  scikit-learn's ``LocalOutlierFactor`` in
novelty mode does the work; this class only adapts it to the scorer interface (one model for all classes, as a
class-agnostic query filter is used there)."""

from __future__ import annotations

import torch

from dnnpiracy.attack.scorers.base import Evidence, Scorer


class LOFScorer(Scorer):
    """Score = -score_samples (the local outlier factor: about 1 for inliers, larger for outliers) of the query's
    penultimate features against the surrogate set's, with ``k`` neighbours."""

    name = "lof"
    evidence = "features"

    def __init__(self, k: int = 20):
        self.k = k
        self.model = None

    def fit(self, ev: Evidence, y: torch.Tensor, y_pred: torch.Tensor | None = None) -> "LOFScorer":
        from sklearn.neighbors import LocalOutlierFactor
        x = ev.need(self.evidence).double().numpy()
        self.model = LocalOutlierFactor(n_neighbors=min(self.k, len(x) - 1), novelty=True).fit(x)
        return self

    def score(self, ev: Evidence, y: torch.Tensor) -> torch.Tensor:
        if self.model is None:
            raise RuntimeError("LOFScorer.score before fit")
        return torch.from_numpy(-self.model.score_samples(ev.need(self.evidence).double().numpy())).float()
