"""Black-box ownership verification: query the suspect with the trigger inputs and test the answers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from fractions import Fraction
from math import comb

import torch

Predict = Callable[[torch.Tensor], torch.Tensor]


def binomial_sf(k: int, n: int, p: float | Fraction) -> float:
    """P[X >= k] for X ~ Binomial(n, p), computed exactly in rational arithmetic (one-sided p-value)."""
    if not 0 <= k <= n + 1:
        raise ValueError(f"k={k} out of range for n={n}")
    p = Fraction(p).limit_denominator(10**9) if not isinstance(p, Fraction) else p
    q = 1 - p
    total = sum(comb(n, i) * p**i * q ** (n - i) for i in range(k, n + 1))
    return float(total)


@dataclass(frozen=True)
class Verification:
    n_queries: int
    n_trigger_label: int          # answers equal to the trigger label
    trigger_accuracy: float
    p_value: float                # one-sided binomial test against chance (1/num_classes unless the scheme says)
    significance: float
    pirated: bool                 # p_value < significance
    pirated_majority_rule: bool   # the paper's plain rule: most trigger inputs get the trigger label
    chance: float | None = None   # the null probability the test used

    @property
    def verdict(self) -> str:
        return "pirated" if self.pirated else "not pirated"

    def to_dict(self) -> dict:
        return {**asdict(self), "verdict": self.verdict}


def verify(predict: Predict, trigger_images: torch.Tensor, trigger_labels: torch.Tensor,
           num_classes: int = 10, significance: float = 0.01, chance: float | None = None) -> Verification:
    """Ask ``predict`` (any black box: images -> labels) about the triggers; 'pirated' if it answers the trigger
    label significantly more often than ``chance`` (default 1/num_classes; ``Scheme.chance`` gives each scheme's,
    e.g. 1/2 for frontier stitching)."""
    if not 0 < significance < 1:
        raise ValueError(f"significance must be in (0, 1), got {significance}")
    chance = 1 / num_classes if chance is None else chance
    if not 0 < chance < 1:
        raise ValueError(f"chance must be in (0, 1), got {chance}")
    answers = torch.as_tensor(predict(trigger_images)).long().flatten()
    if answers.shape != trigger_labels.shape:
        raise ValueError(f"predict returned {tuple(answers.shape)} labels for {len(trigger_labels)} queries")
    n = len(trigger_labels)
    k = int((answers == trigger_labels).sum())
    p = binomial_sf(k, n, Fraction(1, num_classes) if chance == 1 / num_classes else chance)
    return Verification(n, k, k / n, p, significance, p < significance, k > n / 2, float(chance))
