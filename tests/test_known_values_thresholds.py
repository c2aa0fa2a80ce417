"""Hand-computed values for the threshold rules (attack/thresholds.py).

Every number below is worked out by hand in the comment next to it; these tests are what `mutmut` runs against
thresholds.py (docs/mutation.md), so each boundary of each rule is pinned from both sides."""

import math
from fractions import Fraction

import pytest
import torch

from dnnpiracy.attack.thresholds import (
    calibrated_thresholds,
    conformal_threshold,
    exceed_probability,
    paper_thresholds,
    threshold_rank,
)

INF = math.inf


# ---------------------------------------------------------------- the paper's rule: alpha_y + tau


def test_paper_threshold_is_the_largest_finite_in_sample_score_of_the_class_plus_tau():
    y = torch.tensor([0, 0, 0, 1, 1, 2])
    s = torch.tensor([1.0, INF, 2.0, -3.0, -1.0, math.nan])
    thr = paper_thresholds(s, y, tau=0.25, num_classes=4)
    # class 0: finite scores {1, 2} (the +inf is ignored) -> 2 + 0.25
    # class 1: {-3, -1} -> -1 + 0.25 (a negative alpha stays negative: alpha is not clipped at 0)
    # class 2: only a NaN -> no usable score -> never flags (+inf); class 3: no input at all -> +inf
    assert thr.tolist() == [2.25, -0.75, INF, INF]
    assert thr.shape == (4,)


def test_paper_threshold_moves_by_exactly_tau():
    y = torch.tensor([0, 1, 1])
    s = torch.tensor([0.5, 4.0, 3.0])
    assert paper_thresholds(s, y, tau=0.0, num_classes=2).tolist() == [0.5, 4.0]     # tau = 0: alpha itself
    assert paper_thresholds(s, y, tau=1.5, num_classes=2).tolist() == [2.0, 5.5]     # alpha + 1.5, not + 3 * 1.5
    assert paper_thresholds(s, y, tau=-0.5, num_classes=2).tolist() == [0.0, 3.5]    # tau may be negative


def test_paper_threshold_flags_nothing_in_sample_and_the_largest_in_sample_score_only_above_tau():
    """alpha_y is the *largest* in-sample score: with tau > 0 no surrogate input of its own class is flagged."""
    y = torch.tensor([0, 0, 0, 1, 1])
    s = torch.tensor([3.0, 7.0, 5.0, 0.1, 0.2])
    thr = paper_thresholds(s, y, tau=1e-3, num_classes=2)
    assert not (s > thr[y]).any()
    assert thr.tolist() == pytest.approx([7.001, 0.201])


# ---------------------------------------------------------------- P(FPR > a) for an order statistic


def test_exceed_probability_known_binomial_cdfs():
    # P(Bin(3, 1/2) <= r - 1): r=1: 1/8, r=2: 1/8 + 3/8, r=3: 1/8 + 3/8 + 3/8
    assert exceed_probability(3, 1, 0.5) == pytest.approx(0.125, rel=1e-12)
    assert exceed_probability(3, 2, 0.5) == pytest.approx(0.5, rel=1e-12)
    assert exceed_probability(3, 3, 0.5) == pytest.approx(0.875, rel=1e-12)
    # P(Bin(4, 1/4) <= 1) = (3/4)^4 + 4 (1/4)(3/4)^3 = 81/256 + 108/256 = 189/256
    assert exceed_probability(4, 2, 0.25) == pytest.approx(189 / 256, rel=1e-12)
    # P(Bin(5, 1/10) <= 2) = .9^5 + 5 (.1)(.9^4) + 10 (.01)(.9^3) = 0.59049 + 0.32805 + 0.0729 = 0.99144
    assert exceed_probability(5, 3, 0.1) == pytest.approx(0.99144, rel=1e-12)
    # n = 1: the single score; a fresh clean score exceeds it with probability ~ U(0, 1): P(U > 0.3) = 0.7
    assert exceed_probability(1, 1, 0.3) == pytest.approx(0.7, rel=1e-12)


def test_exceed_probability_is_capped_at_one():
    # sum_{i<10} P(Bin(10, .01) = i) = 1 - 1e-20 mathematically; in floating point the terms add up to 1 + 2e-16
    assert exceed_probability(10, 10, 0.01) == 1.0


def test_exceed_probability_rank_must_lie_in_1_to_n():
    assert exceed_probability(4, 1, 0.5) == pytest.approx(1 / 16)      # rank 1 and rank n are valid
    assert exceed_probability(4, 4, 0.5) == pytest.approx(15 / 16)
    with pytest.raises(ValueError, match=r"^rank must be in 1\.\.4, got 0$"):
        exceed_probability(4, 0, 0.5)
    with pytest.raises(ValueError, match=r"^rank must be in 1\.\.4, got 5$"):
        exceed_probability(4, 5, 0.5)


# ---------------------------------------------------------------- which order statistic


@pytest.mark.parametrize("n,a,rank", [
    (1, 0.5, 1),       # k = ceil(2 * 0.5) = 1 (the smallest admissible k): rank 1 + 1 - 1 = 1
    (9, 0.1, 1),       # k = ceil(10 * 0.9) = 9 = n (the largest admissible k): rank 1
    (99, 0.01, 1),     # k = ceil(100 * 0.99) = 99 = n: rank 1
    (100, 0.01, 1),    # k = ceil(101 * 0.99) = ceil(99.99) = 100: rank 1
    (199, 0.1, 20),    # k = ceil(200 * 0.9) = 180: rank 200 - 180 = 20
    (100, 0.1, 10),    # k = ceil(101 * 0.9) = ceil(90.9) = 91: rank 101 - 91 = 10
    (3, 0.5, 2),       # k = ceil(4 * 0.5) = 2: rank 2
    (8, 0.01, None),   # k = ceil(9 * 0.99) = 9 > n: too few scores for the average rule
    (98, 0.01, None),  # k = ceil(99 * 0.99) = ceil(98.01) = 99 > 98
])
def test_average_rule_rank(n, a, rank):
    assert threshold_rank(n, a) == rank
    assert threshold_rank(n, a, None) == rank


def test_confident_rank_walks_up_while_the_exceed_probability_allows():
    # n = 199, a = 0.1: average rank 20.  P(Bin(199, .1) <= r - 1) <= 0.1 holds up to r = 15
    rank = threshold_rank(199, 0.1, 0.9)
    assert 1 < rank < 20
    assert exceed_probability(199, rank, 0.1) <= 0.1 < exceed_probability(199, rank + 1, 0.1)
    assert rank == 15
    # confidence 0.5: P(Bin(199, .1) <= 19) = 0.475 <= 0.5 < P(.. <= 20) = 0.569 -> rank 20
    assert threshold_rank(199, 0.1, 0.5) == 20
    # confidence so low that every rank passes: capped at the average rank (never less conservative than it)
    assert threshold_rank(199, 0.1, 1e-9) == 20
    # confidence so high that no rank but the largest passes: rank 1
    assert threshold_rank(199, 0.1, 1 - 1e-12) == 1


def test_confident_rank_boundary_is_inclusive():
    """rank r + 1 is taken when P(FPR > a) for it is exactly 1 - confidence (<=, not <)."""
    p2 = exceed_probability(5, 2, 0.5)          # 1/32 + 5/32 = 0.1875 (3/16)
    assert p2 == pytest.approx(float(Fraction(3, 16)))
    conf = 1 - p2
    assert 1 - conf == p2                        # chosen so that the comparison is an exact tie in floating point
    assert threshold_rank(5, 0.5) == 3           # the average rule allows rank 3 (k = ceil(6 * 0.5) = 3)
    assert threshold_rank(5, 0.5, conf) == 2     # the tie admits rank 2; rank 3 (P = 0.5) does not pass
    assert threshold_rank(5, 0.5, conf + 1e-9) == 1


def test_confident_rank_is_none_when_the_average_rule_is_impossible():
    assert threshold_rank(8, 0.01, 0.9) is None
    assert threshold_rank(8, 0.01, 0.0) is None


# ---------------------------------------------------------------- the conformal threshold itself


def test_conformal_threshold_picks_that_order_statistic_and_ignores_non_finite_scores():
    scores = torch.tensor([5.0, 1.0, INF, 4.0, 2.0, math.nan, 3.0, -INF, 6.0, 8.0, 7.0, 9.0])  # 9 finite: 1..9
    # n = 9, a = 0.1: rank 1 (k = 9 = n) -> the largest finite score
    assert conformal_threshold(scores, 0.1) == 9.0
    # a = 0.5: k = ceil(10 * 0.5) = 5, rank 5 -> 5th largest of 1..9 = 5
    assert conformal_threshold(scores, 0.5) == 5.0
    # a = 0.3: k = ceil(10 * 0.7) = 7, rank 3 -> 7
    assert conformal_threshold(scores, 0.3) == 7.0
    # a = 0.05: k = ceil(9.5) = 10 > 9 -> impossible -> never flags
    assert conformal_threshold(scores, 0.05) == INF


def test_conformal_threshold_confidence_is_passed_through():
    s = torch.arange(1, 200, dtype=torch.float64)          # 199 scores 1..199
    assert conformal_threshold(s, 0.1) == 180.0             # rank 20 -> 199 + 1 - 20
    assert conformal_threshold(s, 0.1, 0.9) == 185.0        # rank 15 (see above)
    assert conformal_threshold(s, 0.1, 1 - 1e-12) == 199.0  # rank 1


def test_conformal_threshold_keeps_double_precision():
    s = torch.tensor([1.0 + 1e-12, 1.0], dtype=torch.float64)
    # n = 2, a = 0.5: k = ceil(1.5) = 2 = n -> rank 1 -> the largest score, not rounded to float32 (1.0)
    assert conformal_threshold(s, 0.5) == 1.0 + 1e-12
    assert isinstance(conformal_threshold(s, 0.5), float)


def test_calibrated_thresholds_is_one_conformal_threshold_for_every_class():
    s = torch.arange(1, 200, dtype=torch.float32)
    thr = calibrated_thresholds(s, 0.1, num_classes=3)
    assert thr.shape == (3,) and thr.tolist() == [180.0, 180.0, 180.0]
    assert calibrated_thresholds(s, 0.1, 2, confidence=0.9).tolist() == [185.0, 185.0]
    assert calibrated_thresholds(s[:5], 0.1, 2).tolist() == [INF, INF]
