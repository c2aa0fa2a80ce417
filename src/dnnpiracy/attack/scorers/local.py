"""Local scorers: the query's most unusual window, compared with the surrogate set's windows (patch distances,
or each window's mean and spread)."""

from __future__ import annotations

import math

import torch

from dnnpiracy.attack.scorers.base import Scorer, class_groups


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
            yield from class_groups(y)
        else:
            yield -1, torch.arange(len(y))

    def fit(self, ev, y, y_pred=None):
        P = self._patches(ev.need(self.evidence))
        groups = class_groups(y) if self.class_conditional else [(-1, torch.arange(len(P)))]
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
