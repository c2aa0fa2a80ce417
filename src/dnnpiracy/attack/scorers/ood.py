"""Two published out-of-distribution scores on the target's penultimate features, as their papers define them (one
reference set for all classes, unlike the per-class scorers of ``distance``):

- :class:`TiedMahalanobisScorer` (Lee et al. 2018): class means and one covariance shared by all classes (the
  pseudo-inverse, as scikit-learn's ``EmpiricalCovariance``); score = the smallest squared Mahalanobis distance to
  any class mean.  Lee et al.'s input preprocessing and layer ensemble are not used.
- :class:`KthNeighbourScorer` (Sun et al. 2022, "deep nearest neighbours"): L2-normalised features; score = the
  Euclidean distance to the k-th nearest reference feature.

pytorch-ood implements both but imports torchvision, which does not import beside this project's torch build, so
these are written here and tested against scikit-learn (tests/test_peers.py)."""

from __future__ import annotations

import torch

from dnnpiracy.attack.scorers.base import Scorer


class TiedMahalanobisScorer(Scorer):
    name = "mahalanobis-lee"
    evidence = "features"

    def __init__(self):
        self.means: torch.Tensor | None = None
        self.precision: torch.Tensor | None = None

    def fit(self, ev, y, y_pred=None):
        X = ev.need(self.evidence).double()
        classes = int(y.max()) + 1
        means = torch.zeros(classes, X.shape[1], dtype=torch.float64)
        for c in torch.unique(y).tolist():
            means[c] = X[y == c].mean(0)
        present = torch.zeros(classes, dtype=torch.bool)
        present[torch.unique(y)] = True
        centred = X - means[y]
        cov = centred.T @ centred / len(X)
        self.means, self.present = means, present
        self.precision = torch.linalg.pinv(cov, hermitian=True)
        return self

    def distances(self, X: torch.Tensor) -> torch.Tensor:
        """(B, classes) squared Mahalanobis distances to each class mean (inf for a class with no sample)."""
        diff = X.double()[:, None, :] - self.means[None]                  # (B, C, d)
        d = torch.einsum("bcd,de,bce->bc", diff, self.precision, diff)
        return d.masked_fill(~self.present[None], float("inf"))

    def score(self, ev, y):
        if self.precision is None:
            raise RuntimeError("TiedMahalanobisScorer.score before fit")
        return self.distances(ev.need(self.evidence)).amin(1).float()


class KthNeighbourScorer(Scorer):
    name = "knn-ood"
    evidence = "features"

    def __init__(self, k: int = 5):
        self.k = k
        self.ref: torch.Tensor | None = None

    @staticmethod
    def normalise(X: torch.Tensor) -> torch.Tensor:
        X = X.double()
        return X / X.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def fit(self, ev, y, y_pred=None):
        self.ref = self.normalise(ev.need(self.evidence))
        return self

    def _kth(self, d: torch.Tensor) -> torch.Tensor:
        k = min(self.k, d.shape[1])
        return d.topk(k, dim=1, largest=False).values[:, -1]

    def score(self, ev, y):
        if self.ref is None:
            raise RuntimeError("KthNeighbourScorer.score before fit")
        return self._kth(torch.cdist(self.normalise(ev.need(self.evidence)), self.ref)).float()

    def loo_scores(self, ev, y_true, y_pred):
        Z = self.normalise(ev.need(self.evidence))
        d = torch.cdist(Z, Z)
        d.fill_diagonal_(float("inf"))
        return self._kth(d).float()


__all__ = ["TiedMahalanobisScorer", "KthNeighbourScorer"]
