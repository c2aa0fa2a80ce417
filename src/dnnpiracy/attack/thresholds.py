"""Threshold rules: turn per-class scores into a per-class threshold; a query is flagged when score > threshold."""

from __future__ import annotations

import math

import torch


def paper_thresholds(in_sample: torch.Tensor, y_true: torch.Tensor, tau: float, num_classes: int) -> torch.Tensor:
    """The paper's rule: alpha_y = the largest score over T_y (surrogate inputs of class y, scored by the detector
    fitted on them); threshold_y = alpha_y + tau.  A class with no surrogate input never flags (threshold +inf)."""
    alpha = torch.full((num_classes,), math.inf)
    for c in range(num_classes):
        s = in_sample[(y_true == c) & torch.isfinite(in_sample)]
        if len(s):
            alpha[c] = s.max()
    return alpha + tau


def conformal_threshold(oof_scores: torch.Tensor, target_fpr: float) -> float:
    """Split-conformal (cross-fitted) threshold: the ceil((n+1)(1-a))-th smallest out-of-fold clean score, so a fresh
    clean input exceeds it with probability <= a (exchangeability).  +inf when n is too small for that a."""
    s = torch.sort(oof_scores[torch.isfinite(oof_scores)].double()).values
    n = len(s)
    k = math.ceil((n + 1) * (1 - target_fpr))
    return float(s[k - 1]) if 1 <= k <= n else math.inf


def calibrated_thresholds(oof_scores: torch.Tensor, target_fpr: float, num_classes: int) -> torch.Tensor:
    """One threshold for all classes (a few dozen surrogate inputs per class cannot pin a 1 % quantile)."""
    return torch.full((num_classes,), conformal_threshold(oof_scores, target_fpr))
