"""Scorers built on other scorers: an ensemble of standardised components, and per-class normalisation."""

from __future__ import annotations

import torch

from dnnpiracy.attack.scorers.base import LEAVE_ONE_OUT, Scorer, class_groups


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
        for c, idx in class_groups(y_pred):
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
