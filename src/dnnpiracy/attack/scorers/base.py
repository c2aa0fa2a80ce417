"""The scorer interface: :class:`Evidence` (what a scorer may read about a batch), :class:`Scorer` (fit per class
on the surrogate set, score against the predicted class, out-of-fold scores), and the cross-fitting folds."""

from __future__ import annotations

import copy

import torch

from dnnpiracy.attack.heatmaps import Probe


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


def class_groups(y: torch.Tensor):
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
    for _, idx in class_groups(y):
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
        too high (measured against 20-fold cross-fitting on the development targets, commit d5ffd1d)."""
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
