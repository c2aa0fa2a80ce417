"""Per-class anomaly scorers.  Each is fitted on the surrogate set grouped by *ground-truth* label (the paper's T_l)
and scores a query against the class the target *predicted* for it; higher = more anomalous.

A scorer reads one kind of evidence from a :class:`~dnnpiracy.attack.heatmaps.Probe` (``heatmap``, ``cam``,
``features`` = penultimate layer, ``stages`` = every pooled stage, ``stages-max`` = every stage's per-channel
spatial maximum, ``input``), and is a few lines on top of
:class:`Scorer`: ``fit`` stores per-class statistics, ``score`` groups a batch by label (no per-image loop).
"""

from __future__ import annotations

import copy
import math

import torch

from dnnpiracy.attack.dcgan import Discriminator, discriminator_score, train_dcgan
from dnnpiracy.attack.heatmaps import Probe
from dnnpiracy.config import GanConfig


class Evidence(dict):
    """What a scorer may read about a batch: kind -> tensor with the batch on dim 0."""

    @classmethod
    def from_probe(cls, probe: Probe, x: torch.Tensor, penultimate: str | None = None) -> "Evidence":
        feats = probe.features
        ev = cls(input=x.detach().flatten(1).cpu(), logits=probe.logits)
        if probe.heatmaps is not None:     # a probe taken without the backward pass has none
            ev.update(heatmap=probe.heatmaps, cam=probe.cams.flatten(1))
        if feats:
            ev["features"] = feats[penultimate] if penultimate in feats else feats[list(feats)[-1]]
            ev["stages"] = torch.cat([feats[k] for k in feats], 1)
            ev.update({f"stage:{k}": v for k, v in feats.items()})
        if probe.maps is not None:   # the heatmap layer's activation maps, kept (B, K, h, w)
            ev["maps"] = probe.maps
        if probe.peaks:      # each stage channel's spatial maximum, all stages side by side
            ev["stages-max"] = torch.cat([probe.peaks[k] for k in probe.peaks], 1)
        return ev

    def take(self, idx: torch.Tensor) -> "Evidence":
        return Evidence({k: v[idx] for k, v in self.items()})

    @classmethod
    def cat(cls, parts: list["Evidence"]) -> "Evidence":
        """The batches of ``parts`` one after another (the kinds every part has)."""
        kinds = [k for k in parts[0] if all(k in p for p in parts)]
        return cls({k: torch.cat([p[k] for p in parts]) for k in kinds})

    def __len__(self) -> int:  # number of samples, not of kinds
        return len(next(iter(self.values()))) if dict.__len__(self) else 0

    def need(self, kind: str) -> torch.Tensor:
        if kind not in self:
            raise KeyError(f"this detector needs {kind!r} evidence, which the probe did not collect")
        return self[kind]


def _groups(y: torch.Tensor):
    for c in torch.unique(y).tolist():
        yield c, torch.nonzero(y == c).flatten()


LEAVE_ONE_OUT = 0   # ``folds`` value: cross-fit by leaving each surrogate input out alone


def stratified_folds(y: torch.Tensor, folds: int, seed: int = 0) -> torch.Tensor:
    """Fold index (0..folds-1) per sample: each class shuffled, then dealt round-robin with the count carried from
    one class to the next, so every fold is used and the fold sizes differ by at most one even when a class has
    fewer samples than there are folds (10 surrogate inputs per class, 20 folds)."""
    if folds < 2:
        raise ValueError(f"folds must be >= 2 (or LEAVE_ONE_OUT), got {folds}")
    gen = torch.Generator().manual_seed(seed)
    fold_of = torch.empty(len(y), dtype=torch.long)
    dealt = 0
    for _, idx in _groups(y):
        fold_of[idx] = (dealt + torch.randperm(len(idx), generator=gen)) % folds
        dealt += len(idx)
    return fold_of


class Scorer:
    """Fit per class on (evidence, true labels); score (evidence, predicted labels)."""

    name = "base"
    evidence = "heatmap"

    def fit(self, ev: Evidence, y: torch.Tensor, y_pred: torch.Tensor | None = None) -> "Scorer":
        """Fit on the surrogate set grouped by true label ``y``; ``y_pred`` (the target's predictions) is used only
        by scorers that calibrate on out-of-fold scores (ensembles, class normalisation)."""
        raise NotImplementedError

    def score(self, ev: Evidence, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def reads(self) -> set[str]:
        """The kinds of evidence this scorer reads (a detector skips the heatmap when none of them needs it)."""
        return {self.evidence}

    def oof_scores(self, ev: Evidence, y_true: torch.Tensor, y_pred: torch.Tensor, folds: int = LEAVE_ONE_OUT,
                   seed: int = 0) -> torch.Tensor:
        """Out-of-fold scores: each sample scored (against its predicted label) by a copy fitted without it.

        ``folds`` = K stratified folds, or LEAVE_ONE_OUT (0): each sample held out alone, so the copy that scores it
        is fitted on n - 1 samples, as near as cross-fitting gets to the deployed fit on all n.  With K folds the
        copies see n (1 - 1/K) samples, and a distance scorer in a space of more dimensions than samples scores
        held-out inputs systematically higher than the full fit scores fresh ones: the conformal threshold lands
        too high (measured: results/detector_selection_round3.md)."""
        if folds == LEAVE_ONE_OUT or folds >= len(ev):
            return self.loo_scores(ev, y_true, y_pred)
        return self._kfold_scores(ev, y_true, y_pred, stratified_folds(y_true, folds, seed))

    def loo_scores(self, ev: Evidence, y_true: torch.Tensor, y_pred: torch.Tensor) -> torch.Tensor:
        """Leave-one-out scores.  The generic version refits n times; scorers with a closed form override it."""
        return self._kfold_scores(ev, y_true, y_pred, torch.arange(len(ev)))

    def _kfold_scores(self, ev: Evidence, y_true: torch.Tensor, y_pred: torch.Tensor,
                      fold_of: torch.Tensor) -> torch.Tensor:
        out = torch.empty(len(ev))
        for f in torch.unique(fold_of).tolist():
            held = fold_of == f
            part = copy.deepcopy(self).fit(ev.take(~held), y_true[~held])
            out[held] = part.score(ev.take(held), y_pred[held]).float()
        return out


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
        self.refs = {c: X[idx] for c, idx in _groups(y)}
        return self

    def score(self, ev, y):
        X = self._prep(ev.need(self.evidence))
        out = torch.full((len(X),), float("inf"))
        for c, idx in _groups(y):
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
        for c, idx in _groups(y_pred):
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
        self.means = {c: X[idx].mean(0) for c, idx in _groups(y)}
        centred = torch.cat([X[idx] - self.means[c] for c, idx in _groups(y)])
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


class PatchKNNScorer(Scorer):
    """Local anomaly: the query's most unusual patch.  Every ``patch`` x ``patch`` window of the image (stride
    ``stride``) is compared with the windows of the predicted class's surrogate images at the same place, give or
    take ``reach`` grid steps; a window's score is its distance to the nearest of those, and the query's score is
    the largest window score (PatchCore, Roth et al. 2022, on pixels), or with ``top`` = k the mean of its k
    largest window scores (several stamps leave several unusual windows; one natural oddity leaves few).  Knows
    nothing of the trigger's shape: a small stamp anywhere in an otherwise ordinary image is what it is sensitive
    to, and what a whole-image distance averages away."""

    name = "patch-knn"

    def __init__(self, evidence: str = "input", patch: int = 7, stride: int = 2, reach: int = 1,
                 class_conditional: bool = True, top: int = 1):
        if top < 1:
            raise ValueError(f"top must be >= 1, got {top}")
        self.evidence, self.patch, self.stride, self.reach = evidence, patch, stride, reach
        self.class_conditional, self.top = class_conditional, top
        self.refs: dict[int, torch.Tensor] = {}   # class -> _candidates(its windows)

    def _patches(self, X: torch.Tensor) -> torch.Tensor:
        """(N, K, h, w) maps, or (N, D) flat square one-channel images -> (N, L, K*patch*patch) windows on a
        g x g grid."""
        X = X.float()
        if X.ndim == 2:
            side = math.isqrt(X.shape[1])
            if side * side != X.shape[1]:
                raise ValueError(f"patch scorer needs square images, got {X.shape[1]} values per image")
            X = X.view(-1, 1, side, side)
        if X.ndim != 4 or X.shape[-1] != X.shape[-2] or X.shape[-1] < self.patch:
            raise ValueError(f"patch scorer needs square maps of side >= {self.patch}, got shape {tuple(X.shape)}")
        cols = torch.nn.functional.unfold(X, self.patch, stride=self.stride)
        return cols.transpose(1, 2).contiguous()

    def _neighbours(self, L: int) -> torch.Tensor:
        """(L, (2 reach + 1)^2) grid positions within reach of each position; at the border, positions repeat
        (a repeated candidate does not change a minimum)."""
        g = math.isqrt(L)
        i, j = torch.arange(g).repeat_interleave(g), torch.arange(g).repeat(g)
        off = torch.arange(-self.reach, self.reach + 1)
        ii = (i[:, None] + off[None, :]).clamp(0, g - 1)                # (L, 2r+1)
        jj = (j[:, None] + off[None, :]).clamp(0, g - 1)
        return (ii[:, :, None] * g + jj[:, None, :]).flatten(1)          # (L, (2r+1)^2)

    def _candidates(self, R: torch.Tensor) -> torch.Tensor:
        """(n, L, d) reference windows -> per position, the n*m windows within reach as the columns of one
        (L, d + 1, n*m) matrix [-2 r; |r|^2], so that [q, 1] times it is |r|^2 - 2 q.r for every candidate in one
        batched matrix product, with no broadcast add and no transpose per query batch.  Computed once per class at
        fit time."""
        n, L, d = R.shape
        nb = self._neighbours(L)                                             # (L, m)
        cand = R[:, nb].permute(1, 0, 2, 3).reshape(L, n * nb.shape[1], d)
        return torch.cat([-2.0 * cand, cand.pow(2).sum(-1, keepdim=True)], 2).transpose(1, 2).contiguous()

    @staticmethod
    def _min_sq_dists(Q: torch.Tensor, cand: torch.Tensor, group: int = 0) -> torch.Tensor:
        """(B, L, d) query windows against each position's candidates (``_candidates``) -> (L, B) squared distance
        to the nearest candidate, or with ``group`` = m, (L, B, n*m / m) to the nearest of each run of m candidates
        (one reference image's windows within reach).  |q|^2 is constant per window, so it is added after the
        minimum, on the small result."""
        Qt = Q.transpose(0, 1)                                                # (L, B, d)
        part = torch.bmm(torch.cat([Qt, Qt.new_ones(*Qt.shape[:2], 1)], 2), cand)   # (L, B, n*m)
        part = part.view(*part.shape[:2], -1, group).amin(3) if group else part.amin(2)
        q_sq = Qt.pow(2).sum(-1)
        return part.add_(q_sq[..., None] if group else q_sq).clamp_(min=0.0)

    def _per_ref(self, Q: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
        """(B, n, L): per query window, its distance to the nearest window of each of the n reference images
        within reach."""
        d2 = self._min_sq_dists(Q, self._candidates(R), group=(2 * self.reach + 1) ** 2)   # (L, B, n)
        return d2.sqrt().permute(1, 2, 0)

    def chunk(self, L: int, n_refs: int) -> int:
        """Queries per batched distance computation: about 2^25 distances (128 MiB) at a time."""
        return max(1, (1 << 25) // max(1, L * n_refs * (2 * self.reach + 1) ** 2))

    def _worst(self, window_dists: torch.Tensor) -> torch.Tensor:
        """(L, B) window distances -> (B,) image scores: the largest window distance, or the mean of the ``top``
        largest."""
        if self.top == 1:
            return window_dists.amax(0)
        return window_dists.topk(min(self.top, len(window_dists)), 0).values.mean(0)

    def _groups_of(self, y: torch.Tensor):
        if self.class_conditional:
            yield from _groups(y)
        else:
            yield -1, torch.arange(len(y))

    def fit(self, ev, y, y_pred=None):
        P = self._patches(ev.need(self.evidence))
        groups = _groups(y) if self.class_conditional else [(-1, torch.arange(len(P)))]
        self.refs = {c: self._candidates(P[idx]) for c, idx in groups}
        return self

    def score(self, ev, y):
        P = self._patches(ev.need(self.evidence))
        out = torch.full((len(P),), float("inf"))
        for c, idx in self._groups_of(y):
            ref = self.refs.get(c)
            if ref is None:
                continue
            n_refs = ref.shape[2] // (2 * self.reach + 1) ** 2
            for chunk in idx.split(self.chunk(P.shape[1], n_refs)):
                # nearest candidate per window, then the most unusual window(s) of the query
                out[chunk] = self._worst(self._min_sq_dists(P[chunk], ref).sqrt())
        return out

    def loo_scores(self, ev, y_true, y_pred):
        """Exact leave-one-out: each sample against the references of its predicted class, itself excluded."""
        P = self._patches(ev.need(self.evidence))
        out = torch.full((len(P),), float("inf"))
        for c, idx in self._groups_of(y_pred):
            cols = torch.nonzero(y_true == c).flatten() if self.class_conditional else torch.arange(len(P))
            if len(cols) == 0:
                continue
            for chunk in idx.split(self.chunk(P.shape[1], len(cols))):
                d = self._per_ref(P[chunk], P[cols])                       # (b, n, L)
                d[chunk[:, None] == cols[None, :]] = float("inf")          # a sample is not its own reference
                best = self._worst(d.min(1).values.T)
                ok = torch.isfinite(best)
                out[chunk[ok]] = best[ok]
        return out


class WindowStatsScorer(Scorer):
    """Local statistics no natural image has.  Every ``patch`` x ``patch`` window of the query (stride 1) is
    summarised by two numbers, its mean and its standard deviation; a window's score is the distance from that pair
    to the nearest pair of any surrogate window (any class, any place), and the query's score is its most unusual
    window.  The pairs live on a ``bins`` x ``bins`` grid (mean in [0, 1], 2 x std in [0, 1]): fitting counts
    the surrogate windows per cell, and scoring measures each empty cell the first time a query reaches it.

    What it sees: a stamped *solid* pattern (white blocks, a BadNets square) is flat at an intensity extreme, where
    natural scans are not; no 5x5 window of the 10,000 Fashion-MNIST test images is fully saturated, and every
    radius-3 disc holds one.  What it cannot see: a blended or noise-like trigger leaves no flat window.  It knows
    the *kind* of watermark (a stamped solid patch), not its shape, place or colour; and it reads only the input,
    so it costs no pass of the model.

    Inside :class:`EnsembleScorer` its out-of-fold scores are mostly 0 or one grid step (1 / ``bins``), so its
    interquartile range, and with it the term's weight in the sum, is set by ``bins``: a flat white disc scores
    some 40 standardised units and decides the sum alone; a query without one is left to the other terms."""

    name = "window-stats"
    evidence = "input"

    def __init__(self, patch: int = 5, bins: int = 200):
        if patch < 2 or bins < 2:
            raise ValueError(f"patch and bins must be >= 2, got {patch}, {bins}")
        self.patch, self.bins = patch, bins
        self.counts = torch.zeros(0, dtype=torch.long)   # ((bins+1)^2,) surrogate windows per grid cell
        self._known = torch.zeros(0)     # per cell: distance to the nearest occupied cell once measured, else NaN

    def window_stats(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, D) flat square one-channel images -> the (N, L) mean and standard deviation of every window."""
        if not X.is_floating_point():
            raise ValueError(f"window scorer needs float images in [0, 1], got dtype {X.dtype}")
        X = X.float()
        side = math.isqrt(X.shape[1])
        if side * side != X.shape[1] or side < self.patch:
            raise ValueError(f"window scorer needs square images of side >= {self.patch}, got {X.shape[1]} values")
        if len(X) and not (X.min() >= 0 and X.max() <= 1):     # NaN fails too
            raise ValueError(f"window scorer needs images in [0, 1], got values in [{float(X.min()):g}, "
                             f"{float(X.max()):g}]")
        X = X.view(-1, 1, side, side)
        mean = torch.nn.functional.avg_pool2d(X, self.patch, 1)
        std = (torch.nn.functional.avg_pool2d(X * X, self.patch, 1) - mean * mean).clamp_min(0).sqrt()
        return mean.flatten(1), std.flatten(1)

    def grid_cells(self, X: torch.Tensor) -> torch.Tensor:
        """(N, D) flat square one-channel images in [0, 1] -> (N, L) grid cell of each window's (mean, 2 std)."""
        mean, std = self.window_stats(X)
        i = (mean.clamp(0, 1) * self.bins).round().long()
        j = (2 * std).clamp(0, 1).mul(self.bins).round().long()
        return i * (self.bins + 1) + j

    def _coords(self, cells: torch.Tensor) -> torch.Tensor:
        return torch.stack([cells // (self.bins + 1), cells % (self.bins + 1)], 1).float()

    def _nearest(self, cells: torch.Tensor, occupied: torch.Tensor) -> torch.Tensor:
        """Distance (in units of the unit square) from each of ``cells`` to the nearest of ``occupied``."""
        if len(occupied) == 0:
            return torch.full((len(cells),), math.inf)
        ref = self._coords(occupied)
        return torch.cat([torch.cdist(self._coords(part), ref).amin(1)
                          for part in cells.split(4096)]) / self.bins if len(cells) else torch.zeros(0)

    def fit(self, ev, y, y_pred=None):
        cells = self.grid_cells(ev.need(self.evidence)).flatten()
        self.counts = torch.bincount(cells, minlength=(self.bins + 1) ** 2)
        self._known = torch.zeros(0)
        return self

    def window_distances(self, X: torch.Tensor) -> torch.Tensor:
        """(N, D) images -> (N, L) each window's distance to the nearest surrogate window's cell: 0 where a surrogate
        window shares the cell.  A cell's distance is measured the first time a query reaches it and kept, so a
        served stream soon costs one lookup per window."""
        if len(self.counts) != (self.bins + 1) ** 2:
            raise RuntimeError("window scorer is not fitted: call fit on the surrogate set first")
        if len(self._known) != len(self.counts):
            self._known = torch.where(self.counts > 0, 0.0, math.nan)
        cells = self.grid_cells(X)
        dist = self._known[cells]
        new = torch.isnan(dist)
        if new.any():
            todo = torch.unique(cells[new])
            self._known[todo] = self._nearest(todo, torch.nonzero(self.counts).flatten())
            dist = self._known[cells]
        return dist

    def score(self, ev, y):
        return self.window_distances(ev.need(self.evidence)).amax(1)

    def loo_scores(self, ev, y_true, y_pred):
        """Exact leave-one-out: a sample's windows lie in occupied cells, at distance 0, except in the cells only
        it occupies; those are measured against the cells the other samples occupy."""
        cells = self.grid_cells(ev.need(self.evidence))
        total = torch.bincount(cells.flatten(), minlength=(self.bins + 1) ** 2)
        out = torch.zeros(len(cells))
        for n, own in enumerate(cells):
            uniq, count = torch.unique(own, return_counts=True)
            private = uniq[total[uniq] == count]
            if len(private):
                others = total.clone()
                others[private] = 0
                out[n] = self._nearest(private, torch.nonzero(others).flatten()).max()
        return out


class DkNNScorer(Scorer):
    """Label disagreement among the nearest surrogate images, stage by stage (Deep k-Nearest Neighbors, Papernot &
    McDaniel 2018).  In each chosen stage of the target (its spatially pooled activations, standardised by the
    surrogate's per-channel mean and spread, compared by cosine), the ``k`` surrogate images nearest to the query
    vote with their true labels; the score is the number of votes, summed over the stages, for a label other than
    the one the target predicts.  A trigger input is answered with the trigger label because the target memorised
    it, yet in the early stages it still looks like its source class (a sneaker with discs is near sneakers), while
    a clean input's neighbours mostly share its predicted label.  Unlike a distance to the predicted class, it reads
    what the other classes say.

    ``stages`` indexes the architecture's feature stages in order (``ArchInfo.feature_layers``: for a ResNet
    layer1..layer4, avgpool; (1, 2) is layer2 and layer3), so the same detector runs on every architecture."""

    name = "dknn"
    evidence = "stages"       # the per-stage kinds ("stage:<layer>") that Evidence.from_probe sets beside it
    eps = 1e-6

    def __init__(self, stages: tuple[int, ...] = (1, 2), k: int = 25):
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if not stages:
            raise ValueError("dknn needs at least one stage")
        self.stages, self.k = tuple(stages), k
        self.refs: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}   # kind -> (mean, spread, Z)
        self.labels = torch.empty(0, dtype=torch.long)

    def _kinds(self, ev: Evidence) -> list[str]:
        kinds = [k for k in ev if k.startswith("stage:")]
        bad = [i for i in self.stages if not -len(kinds) <= i < len(kinds)]
        if bad:
            raise KeyError(f"dknn reads feature stages {list(self.stages)}, but the probe collected "
                           f"{len(kinds)} ({', '.join(kinds) or 'none'})")
        return [kinds[i] for i in self.stages]

    def _standardise(self, X: torch.Tensor, mean: torch.Tensor, spread: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize((X.double() - mean) / spread, dim=-1)

    def _votes(self, sims: torch.Tensor, ref_labels: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(B, n) similarities to the references -> (B,) number of the k nearest whose label is not ``y``."""
        nn = sims.topk(min(self.k, sims.shape[1]), 1).indices
        return (ref_labels[nn] != y[:, None]).sum(1).double()

    def fit(self, ev, y, y_pred=None):
        self.refs = {}
        for kind in self._kinds(ev):
            X = ev.need(kind).flatten(1).double()
            mean, spread = X.mean(0), X.var(0, unbiased=False).sqrt() + self.eps
            self.refs[kind] = (mean, spread, self._standardise(X, mean, spread))
        self.labels = y.clone()
        return self

    def score(self, ev, y):
        out = torch.zeros(len(ev), dtype=torch.float64)
        for kind, (mean, spread, Z) in self.refs.items():
            out += self._votes(self._standardise(ev.need(kind).flatten(1), mean, spread) @ Z.T, self.labels, y)
        return out.float()

    def loo_scores(self, ev, y_true, y_pred):
        """Exact leave-one-out: for each sample, the mean and spread of the other n - 1 (one downdate each), every
        reference re-standardised with them, and the sample's vote taken among the others."""
        n = len(ev)
        out = torch.zeros(n, dtype=torch.float64)
        for kind in self._kinds(ev):
            X = ev.need(kind).flatten(1).double()
            s1, s2 = X.sum(0), (X * X).sum(0)
            for chunk in torch.arange(n).split(max(1, (1 << 24) // max(1, n * X.shape[1]))):
                xi = X[chunk]
                mean = (s1 - xi) / (n - 1)                                         # (b, d) without sample i
                spread = ((s2 - xi * xi) / (n - 1) - mean * mean).clamp_min(0).sqrt() + self.eps
                Z = self._standardise(X[None], mean[:, None], spread[:, None])     # (b, n, d)
                q = self._standardise(xi, mean, spread)                            # (b, d)
                sims = torch.einsum("bd,bnd->bn", q, Z)
                sims[torch.arange(len(chunk)), chunk] = -float("inf")             # not its own neighbour
                out[chunk] += self._votes(sims, y_true, y_pred[chunk])
        return out.float()


class DCGANScorer(Scorer):
    """The paper's detector: -log D_y(h) with D_y the discriminator of a DCGAN trained on class y's heatmaps."""

    name = "dcgan"
    evidence = "heatmap"

    def __init__(self, cfg: GanConfig | None = None, seed: int = 0):
        self.cfg, self.seed = cfg or GanConfig(), seed
        self.discriminators: dict[int, Discriminator] = {}

    def fit(self, ev, y, y_pred=None):
        X = ev.need("heatmap")
        self.discriminators = {c: train_dcgan(X[idx], self.cfg, seed=self.seed + c) for c, idx in _groups(y)}
        return self

    def score(self, ev, y):
        X = ev.need("heatmap")
        out = torch.full((len(X),), float("inf"))
        for c, idx in _groups(y):
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
        for c, idx in _groups(y):
            med = m[idx].median()
            self.stats[c] = (float(med), float((m[idx] - med).abs().median().clamp_min(1e-6)))
        return self

    def score(self, ev, y):
        m = ev.need("heatmap").flatten(1).mean(1)
        out = torch.full((len(m),), float("inf"))
        for c, idx in _groups(y):
            if c in self.stats:
                med, mad = self.stats[c]
                out[idx] = (m[idx] - med).abs() / mad
        return out


class EnergyScorer(Scorer):
    """Negative free energy, -logsumexp(logits) (Liu et al. 2020): high when the target is unsure about every
    class.  Needs no fitting; useful as one component of an ensemble."""

    name = "energy"
    evidence = "logits"

    def fit(self, ev, y, y_pred=None):
        return self

    def score(self, ev, y):
        return -torch.logsumexp(ev.need("logits").float(), 1)


class ConfidentDkNNScorer(DkNNScorer):
    """Deep-kNN label disagreement weighted by the target's confidence: the votes against the predicted label y
    times the softmax margin p_y - max_{c != y} p_c (0 when y is not the target's answer).  In DkNN's terms, a query
    whose softmax is confident while its early-stage neighbours disagree (low credibility) is suspicious.  A trigger
    the target memorised is answered with near certainty; a clean input that the target confuses with a neighbouring
    class (a shirt answered "T-shirt") has disagreeing neighbours too, but a small margin, so it no longer looks like
    one.  The weight is the query's own, so leave-one-out stays exact."""

    name = "dknn-margin"

    @staticmethod
    def margin(ev: Evidence, y: torch.Tensor) -> torch.Tensor:
        p = ev.need("logits").double().softmax(1)
        own = p.gather(1, y[:, None]).squeeze(1)
        other = p.scatter(1, y[:, None], -1.0).amax(1)
        return (own - other).clamp_min(0)

    def reads(self) -> set[str]:
        return {self.evidence, "logits"}

    def score(self, ev, y):
        return (super().score(ev, y).double() * self.margin(ev, y)).float()

    def loo_scores(self, ev, y_true, y_pred):
        return (super().loo_scores(ev, y_true, y_pred).double() * self.margin(ev, y_pred)).float()


class EnsembleScorer(Scorer):
    """Combine scorers of different evidence: each component's score is standardised by the median and the
    interquartile range (the standard deviation where that is 0) of its own out-of-fold scores on the surrogate
    set, then the standardised scores are summed (``combine="sum"``) or maxed (``"max"``)."""

    name = "ensemble"
    evidence = "+"

    def __init__(self, components: list[Scorer], combine: str = "sum", folds: int = LEAVE_ONE_OUT, seed: int = 0):
        if combine not in ("sum", "max"):
            raise ValueError(f"combine must be 'sum' or 'max', got {combine!r}")
        self.components, self.combine, self.folds, self.seed = components, combine, folds, seed
        self.centre = torch.zeros(len(components))
        self.scale = torch.ones(len(components))
        self._standardised = False

    def oof_scores(self, ev, y_true, y_pred, folds: int | None = None, seed: int | None = None) -> torch.Tensor:
        """Each component's own out-of-fold scores, standardised and combined (computed once: no nested folds).
        Sets the standardisation used by :meth:`score`."""
        folds = self.folds if folds is None else folds
        seed = self.seed if seed is None else seed
        raw = torch.stack([c.oof_scores(ev, y_true, y_pred, folds, seed) for c in self.components], 1)
        for j in range(raw.shape[1]):
            col = raw[:, j][torch.isfinite(raw[:, j])].double()
            q1, med, q3 = torch.quantile(col, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
            # a count-valued component (dknn) can have no spread between its quartiles: then its standard deviation
            spread = float(q3 - q1) if q3 > q1 else float(col.std()) if len(col) > 1 and col.std() > 0 else 1.0
            self.centre[j], self.scale[j] = float(med), spread
        self._standardised = True
        return self._combine((raw - self.centre) / self.scale)

    def fit(self, ev, y, y_pred: torch.Tensor | None = None):
        if not getattr(self, "_standardised", False):
            self.oof_scores(ev, y, y if y_pred is None else y_pred)
        for comp in self.components:
            comp.fit(ev, y)
        return self

    def reads(self) -> set[str]:
        return set().union(*(c.reads() for c in self.components))

    def _combine(self, z: torch.Tensor) -> torch.Tensor:
        return z.sum(1) if self.combine == "sum" else z.max(1).values

    def score(self, ev, y):
        z = torch.stack([(c.score(ev, y) - self.centre[j]) / self.scale[j]
                         for j, c in enumerate(self.components)], 1)
        return self._combine(z)


class ClassNormalizedScorer(Scorer):
    """Wrap a scorer so that every predicted class is held to its own spread: a score becomes
    (score - median_y) / IQR_y, with the median and interquartile range of the out-of-fold surrogate scores of the
    inputs predicted as y.  One global threshold on these then means "unusual for this class", so a tight class
    (e.g. T-shirt features) does not hide its outliers behind a loose one (e.g. Bag)."""

    name = "class-normalized"

    def __init__(self, base: Scorer, min_per_class: int = 5):
        self.base, self.min_per_class = base, min_per_class
        self.evidence = base.evidence
        self.centre: dict[int, float] = {}
        self.scale: dict[int, float] = {}
        self._global = (0.0, 1.0)

    def reads(self) -> set[str]:
        return self.base.reads()

    def _stats(self, raw: torch.Tensor, y_pred: torch.Tensor) -> None:
        def robust(v: torch.Tensor) -> tuple[float, float]:
            q1, med, q3 = torch.quantile(v.double(), torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
            return float(med), float(max(q3 - q1, 1e-9))
        ok = torch.isfinite(raw)
        self._global = robust(raw[ok])
        self.centre, self.scale = {}, {}
        for c, idx in _groups(y_pred):
            v = raw[idx][ok[idx]]
            if len(v) >= self.min_per_class:
                self.centre[c], self.scale[c] = robust(v)

    def _normalise(self, raw: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        centre = torch.tensor([self.centre.get(int(c), self._global[0]) for c in y.tolist()], dtype=raw.dtype)
        scale = torch.tensor([self.scale.get(int(c), self._global[1]) for c in y.tolist()], dtype=raw.dtype)
        return (raw - centre) / scale

    def oof_scores(self, ev, y_true, y_pred, folds: int = LEAVE_ONE_OUT, seed: int = 0) -> torch.Tensor:
        raw = self.base.oof_scores(ev, y_true, y_pred, folds, seed)
        self._stats(raw, y_pred)
        self._calibrated = True
        return self._normalise(raw, y_pred)

    def fit(self, ev, y, y_pred: torch.Tensor | None = None):
        y_pred = y if y_pred is None else y_pred
        if not getattr(self, "_calibrated", False):
            self.oof_scores(ev, y, y_pred)
        self.base.fit(ev, y, y_pred)
        return self

    def score(self, ev, y):
        return self._normalise(self.base.score(ev, y), y)
