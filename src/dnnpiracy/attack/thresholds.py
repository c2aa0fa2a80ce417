"""Threshold rules: turn per-class scores into a per-class threshold; a query is flagged when score > threshold."""

from __future__ import annotations

import math

import torch


def paper_thresholds(in_sample: torch.Tensor, y_true: torch.Tensor, tau: float, num_classes: int,
                     alpha_of: str = "max") -> torch.Tensor:
    """The paper's rule: alpha_y = the largest score over T_y (surrogate inputs of class y, scored by the detector
    fitted on them); threshold_y = alpha_y + tau.  A class with no surrogate input never flags (threshold +inf).
    ``alpha_of="mean"`` reads alpha_y as the class's mean score instead (a reading of the text tested against the
    paper's Table V)."""
    if alpha_of not in ("max", "mean"):
        raise ValueError(f"alpha_of must be 'max' or 'mean', got {alpha_of!r}")
    alpha = torch.full((num_classes,), math.inf)
    for c in range(num_classes):
        s = in_sample[(y_true == c) & torch.isfinite(in_sample)]
        if len(s):
            alpha[c] = s.max() if alpha_of == "max" else s.mean()
    return alpha + tau


def exceed_probability(n: int, rank: int, target_fpr: float) -> float:
    """P(realised FPR > target_fpr) when the threshold is the ``rank``-th largest of ``n`` exchangeable clean scores.

    A fresh clean score exceeds that order statistic with probability FPR ~ Beta(rank, n + 1 - rank), and
    P(Beta(rank, n + 1 - rank) > a) = P(Binomial(n, a) <= rank - 1)."""
    if not 1 <= rank <= n:
        raise ValueError(f"rank must be in 1..{n}, got {rank}")
    log_a, log_b = math.log(target_fpr), math.log1p(-target_fpr)
    return min(1.0, sum(math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_a
                                 + (n - i) * log_b) for i in range(rank)))


def threshold_rank(n: int, target_fpr: float, confidence: float | None = None) -> int | None:
    """Which order statistic to threshold at: the rank (1 = largest) of the out-of-fold clean score.

    ``confidence=None``: split conformal, rank = n + 1 - ceil((n+1)(1-a)), so the FPR is <= a *on average* over
    calibration draws (None when n is too small: n >= 1/a - 1 is needed).  ``confidence=c``: the largest rank whose
    FPR exceeds a with probability <= 1 - c over calibration draws (training-conditional, "PAC" conformal), never
    less conservative than the average rule; when even the largest score cannot give that confidence (n < log(1-c) /
    log(1-a)) but the average rule can be met, the largest score (rank 1) is the best available."""
    k = math.ceil((n + 1) * (1 - target_fpr))
    mean_rank = n + 1 - k if 1 <= k <= n else None
    if confidence is None or mean_rank is None:
        return mean_rank
    rank = 1
    while rank < mean_rank and exceed_probability(n, rank + 1, target_fpr) <= 1 - confidence:
        rank += 1
    return rank


def conformal_threshold(oof_scores: torch.Tensor, target_fpr: float, confidence: float | None = None) -> float:
    """Split-conformal (cross-fitted) threshold: the out-of-fold clean score of rank ``threshold_rank`` (1 =
    largest), so a fresh clean input exceeds it with probability <= a on average (``confidence=None``), or with
    probability <= a in at least a fraction ``confidence`` of calibration draws.  +inf when n is too small for the
    average rule."""
    s = torch.sort(oof_scores[torch.isfinite(oof_scores)].double()).values
    rank = threshold_rank(len(s), target_fpr, confidence)
    return float(s[len(s) - rank]) if rank is not None else math.inf


def calibrated_thresholds(oof_scores: torch.Tensor, target_fpr: float, num_classes: int,
                          confidence: float | None = None) -> torch.Tensor:
    """One threshold for all classes (a few dozen surrogate inputs per class cannot pin a 1 % quantile)."""
    return torch.full((num_classes,), conformal_threshold(oof_scores, target_fpr, confidence))
