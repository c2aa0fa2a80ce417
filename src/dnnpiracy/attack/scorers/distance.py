"""Whole-vector distance scorers: k nearest surrogate neighbours of the predicted class, and the Mahalanobis
distance to its mean under one shared covariance."""

from __future__ import annotations

import torch

from dnnpiracy.attack.scorers.base import Scorer, class_groups


class KNNScorer(Scorer):
    """Mean Euclidean distance to the k nearest surrogate samples of the class (optionally L2-normalised)."""

    name = "knn"

    def __init__(self, evidence: str = "heatmap", k: int = 1, normalize: bool = False):
        self.evidence, self.k, self.normalize = evidence, k, normalize
        self.refs: dict[int, torch.Tensor] = {}

    def _prep(self, X: torch.Tensor) -> torch.Tensor:
        X = X.flatten(1).float()
        return torch.nn.functional.normalize(X, dim=1) if self.normalize else X

    def fit(self, ev, y, y_pred=None):
        X = self._prep(ev.need(self.evidence))
        self.refs = {c: X[idx] for c, idx in class_groups(y)}
        return self

    def score(self, ev, y):
        X = self._prep(ev.need(self.evidence))
        out = torch.full((len(X),), float("inf"))
        for c, idx in class_groups(y):
            ref = self.refs.get(c)
            if ref is None or len(ref) == 0:
                continue
            d = torch.cdist(X[idx], ref)
            out[idx] = d.topk(min(self.k, ref.shape[0]), dim=1, largest=False).values.mean(1)
        return out

    def loo_scores(self, ev, y_true, y_pred):
        """Exact leave-one-out: each sample's distances to the references of its predicted class, itself excluded."""
        X = self._prep(ev.need(self.evidence))
        dist = torch.cdist(X, X)
        dist.fill_diagonal_(float("inf"))
        out = torch.full((len(X),), float("inf"))
        for c, idx in class_groups(y_pred):
            cols = torch.nonzero(y_true == c).flatten()
            if len(cols) == 0:
                continue
            d = dist[idx][:, cols]
            k = min(self.k, len(cols))
            nearest = d.topk(k, dim=1, largest=False).values
            n_refs = len(cols) - (y_true[idx] == c).long()      # a sample of class c leaves c one reference short
            for i in range(len(idx)):
                kk = min(self.k, int(n_refs[i]))
                if kk > 0:
                    out[idx[i]] = nearest[i, :kk].mean()
        return out


class MahalanobisScorer(Scorer):
    """Class-conditional Gaussians with one shared, shrunk covariance (Lee et al. 2018); score = squared
    Mahalanobis distance to the predicted class's mean."""

    name = "mahalanobis"

    def __init__(self, evidence: str = "features", shrinkage: float = 0.1):
        self.evidence, self.shrinkage = evidence, shrinkage
        self.means: dict[int, torch.Tensor] = {}
        self.precision = torch.empty(0)

    def fit(self, ev, y, y_pred=None):
        X = ev.need(self.evidence).flatten(1).double()
        self.means = {c: X[idx].mean(0) for c, idx in class_groups(y)}
        centred = torch.cat([X[idx] - self.means[c] for c, idx in class_groups(y)])
        cov = centred.T @ centred / max(len(centred) - 1, 1)
        d = cov.shape[0]
        target = torch.eye(d, dtype=cov.dtype) * cov.diagonal().mean().clamp_min(1e-12)
        shrunk = (1 - self.shrinkage) * cov + self.shrinkage * target
        # positive definite once shrunk: a Cholesky inverse is several times cheaper than pinv's eigendecomposition
        # (this fit runs once per cross-fitting fold); pinv stays the fallback for a degenerate covariance
        chol, info = torch.linalg.cholesky_ex(shrunk)
        self.precision = (torch.cholesky_inverse(chol) if int(info) == 0
                          else torch.linalg.pinv(shrunk, hermitian=True))
        return self

    def score(self, ev, y):
        X = ev.need(self.evidence).flatten(1).double()
        out = torch.full((len(X),), float("inf"), dtype=torch.float64)
        labels = torch.unique(y).tolist()
        known = [c for c in labels if c in self.means]
        if not known:
            return out.float()
        # every query minus its predicted class's mean, then one (B, d) x (d, d) product for the whole batch:
        # one large GEMM instead of one per class (the same values up to float64 rounding)
        row = torch.full((int(y.max()) + 1,), -1, dtype=torch.long)
        row[torch.tensor(known)] = torch.arange(len(known))
        row = row[y]
        means = torch.stack([self.means[c] for c in known])
        if len(known) == len(labels):
            diff = X - means[row]
            out = ((diff @ self.precision) * diff).sum(1)
        else:
            ok = row >= 0
            diff = X[ok] - means[row[ok]]
            out[ok] = ((diff @ self.precision) * diff).sum(1)
        return out.float()

    def loo_scores(self, ev, y_true, y_pred):
        """Exact leave-one-out in closed form (one eigendecomposition instead of n refits).

        Leaving x_i (true class c, n_c inputs) out lowers the pooled scatter W by b d d^T with d = x_i - m_c,
        b = n_c / (n_c - 1), and moves m_c to m_c - (x_i - m_c) / (n_c - 1).  The refitted shrunk covariance is
        a W + s_i I - a b d d^T (a = (1 - shrinkage) / (n - 2), s_i = shrinkage * trace / dim of the refit): diagonal
        in W's eigenbasis up to a rank-one term, which Sherman-Morrison inverts."""
        X = ev.need(self.evidence).flatten(1).double()
        n, dim = X.shape
        labels = torch.unique(y_true)
        means = {int(c): X[y_true == c].mean(0) for c in labels}
        counts = {int(c): int((y_true == c).sum()) for c in labels}
        D = X - torch.stack([means[int(c)] for c in y_true])                 # x_i - m_{y_i}
        w, U = _scatter_eigen(D)
        n_c = torch.tensor([counts[int(c)] for c in y_true], dtype=torch.float64)
        b = n_c / (n_c - 1).clamp_min(1)
        a = (1 - self.shrinkage) / max(n - 2, 1)
        trace_refit = (w.sum() - b * (D * D).sum(1)) / max(n - 2, 1)          # trace of the refit's covariance
        s = self.shrinkage * trace_refit.clamp_min(1e-12 * dim) / dim
        inv = 1.0 / (a * w[None, :] + s[:, None])                           # (n, dim): A_i^-1 in the eigenbasis
        own = y_pred == y_true
        R = torch.empty_like(X)
        R[own] = b[own, None] * D[own]                                       # x_i - (its class's mean without it)
        other = ~own
        known = torch.tensor([int(p) in means for p in y_pred])             # the predicted class has references
        R[other & ~known] = 0.0                                              # scored inf below
        ok = other & known
        if ok.any():
            R[ok] = X[ok] - torch.stack([means[int(p)] for p in y_pred[ok]])
        V, Rt = D @ U, R @ U
        rr = (inv * Rt * Rt).sum(1)
        rd = (inv * Rt * V).sum(1)
        dd = (inv * V * V).sum(1)
        if U.shape[1] < dim:   # the rest of the space: W is 0 there, the refit's covariance s_i I (d lies in the span)
            rr = rr + ((R * R).sum(1) - (Rt * Rt).sum(1)).clamp_min(0) / s
        g = a * b
        out = rr + g * rd ** 2 / (1 - g * dd)
        out[other & ~known] = float("inf")
        out[own & (n_c < 2)] = float("inf")                                  # its class is empty without it
        return out.float()


def _scatter_eigen(D: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues w >= 0 and orthonormal eigenvectors U (dim x r) of the scatter W = D^T D on the span of D's rows.
    With fewer rows than columns this goes through the n x n Gram matrix D D^T (O(n^2 dim), not O(dim^3)); the
    directions left out have eigenvalue 0."""
    n, dim = D.shape
    if n >= dim:
        w, U = torch.linalg.eigh(D.T @ D)
        return w.clamp_min(0), U
    w, P = torch.linalg.eigh(D @ D.T)
    keep = w > w.max().clamp_min(0) * 1e-12 * n
    w, P = w[keep], P[:, keep]
    return w, (D.T @ P) / w.sqrt()
