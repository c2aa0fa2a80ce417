"""Detection and accuracy metrics.  Rates are fractions in [0, 1] unless a name says percent."""

from __future__ import annotations

import math

import torch


def rate(flags: torch.Tensor) -> float:
    return float(flags.float().mean()) if len(flags) else float("nan")


def fpr(clean_flags: torch.Tensor) -> float:
    """Fraction of clean inputs flagged as triggers."""
    return rate(clean_flags)


def fnr(trigger_flags: torch.Tensor) -> float:
    """Fraction of trigger inputs not flagged."""
    return rate(~trigger_flags.bool())


def auroc(clean_scores: torch.Tensor, trigger_scores: torch.Tensor) -> float:
    """P(score(trigger) > score(clean)) + 0.5 P(tie): the Mann-Whitney form of the ROC area."""
    if len(clean_scores) == 0 or len(trigger_scores) == 0:
        return float("nan")
    c = clean_scores.double().flatten()
    t = trigger_scores.double().flatten()
    allv = torch.cat([c, t])
    # average ranks with ties
    order = torch.argsort(allv, stable=True)
    sorted_v = allv[order]
    ranks = torch.empty_like(allv)
    i = 0
    n = len(allv)
    pos = torch.arange(1, n + 1, dtype=torch.float64)
    uniq, counts = torch.unique_consecutive(sorted_v, return_counts=True)
    start = 0
    avg = torch.empty(n, dtype=torch.float64)
    for cnt in counts.tolist():
        avg[start:start + cnt] = pos[start:start + cnt].mean()
        start += cnt
    ranks[order] = avg
    del i, uniq
    r_t = ranks[len(c):].sum()
    u = r_t - len(t) * (len(t) + 1) / 2
    return float(u / (len(c) * len(t)))


def tpr_at_fpr(clean_scores: torch.Tensor, trigger_scores: torch.Tensor, max_fpr: float = 0.01) -> float:
    """Largest fraction of triggers caught by a threshold that flags at most ``max_fpr`` of the clean inputs."""
    if len(clean_scores) == 0 or len(trigger_scores) == 0:
        return float("nan")
    c = torch.sort(clean_scores.double().flatten(), descending=True).values
    allowed = int(math.floor(max_fpr * len(c)))       # clean inputs we may flag
    thr = c[allowed] if allowed < len(c) else -math.inf   # flag strictly above the (allowed+1)-th largest
    return float((trigger_scores.double() > thr).float().mean())


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score 95 % interval for a binomial proportion k/n."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))
