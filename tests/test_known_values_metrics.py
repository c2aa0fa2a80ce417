"""Hand-computed values for the evaluation metrics (evaluation/metrics.py): FPR, FNR, AUROC (Mann-Whitney, ties
count 1/2), TPR at a fixed FPR and the Wilson interval.  `mutmut` runs these against metrics.py (docs/mutation.md)."""

import math

import pytest
import torch

from dnnpiracy.evaluation.metrics import auroc, fnr, fpr, rate, tpr_at_fpr, wilson_interval


def t(*v, dtype=torch.float32):
    return torch.tensor(v, dtype=dtype)


# ---------------------------------------------------------------- rates


def test_rates_known_values():
    assert rate(torch.tensor([True, False, False, True])) == 0.5
    assert fpr(torch.tensor([True, False, False, False])) == 0.25       # 1 of 4 clean inputs flagged
    assert fnr(torch.tensor([True, False, False, False])) == 0.75       # 3 of 4 triggers missed
    assert fnr(torch.tensor([1, 1, 0, 1, 1])) == pytest.approx(0.2)     # integer flags count as booleans
    assert fpr(torch.tensor([1, 1, 0, 1, 1])) == pytest.approx(0.8)
    assert fnr(torch.tensor([True, True])) == 0.0 and fpr(torch.tensor([True, True])) == 1.0


def test_rates_of_nothing_are_nan():
    empty = torch.zeros(0, dtype=torch.bool)
    assert math.isnan(rate(empty)) and math.isnan(fpr(empty)) and math.isnan(fnr(empty))


# ---------------------------------------------------------------- AUROC


def test_auroc_counts_pairs_and_half_ties():
    # triggers {2, 4} vs clean {1, 2, 3}: 2 beats 1, ties 2 (1/2), loses to 3 -> 1.5; 4 beats all three -> 3
    # (1.5 + 3) / (2 * 3) = 0.75
    assert auroc(t(1, 2, 3), t(2, 4)) == 0.75
    assert auroc(t(3, 1, 2), t(4, 2)) == 0.75                   # input order does not matter
    # clean {1, 1, 2, 2} vs triggers {1, 2, 2, 3}: 1 -> 2 * 1/2 = 1; 2 -> 2 + 2 * 1/2 = 3 (twice); 3 -> 4
    # (1 + 3 + 3 + 4) / 16 = 11/16
    assert auroc(t(1, 1, 2, 2), t(1, 2, 2, 3)) == 11 / 16
    # a tie group at the top: trigger 5 vs clean {0, 5, 5}: 1 + 1/2 + 1/2 = 2 of 3
    assert auroc(t(0, 5, 5), t(5)) == pytest.approx(2 / 3, abs=1e-15)
    # a tie group at the bottom: trigger 0 vs clean {0, 0, 7}: 1/2 + 1/2 + 0 = 1 of 3
    assert auroc(t(0, 0, 7), t(0)) == pytest.approx(1 / 3, abs=1e-15)


def test_auroc_extremes_and_symmetry():
    assert auroc(t(1, 2), t(3, 4, 5)) == 1.0
    assert auroc(t(3, 4, 5), t(1, 2)) == 0.0
    assert auroc(t(7, 7, 7), t(7, 7)) == 0.5                    # all tied
    assert auroc(t(1), t(2)) == 1.0 and auroc(t(2), t(1)) == 0.0   # one score on each side is enough
    # swapping the roles gives 1 - AUROC
    c, tr = t(0.3, 0.1, 0.9, 0.5), t(0.5, 0.2, 1.0)
    assert auroc(c, tr) + auroc(tr, c) == pytest.approx(1.0, abs=1e-15)
    # pairs: 0.5 -> beats .3 .1, ties .5 -> 2.5; 0.2 -> beats .1 -> 1; 1.0 -> 4. 7.5 / 12
    assert auroc(c, tr) == 7.5 / 12


def test_auroc_uses_double_precision_and_flattens():
    # 1 + 1e-9 and 1 differ in float64 but not in float32: the float64 inputs are compared as given
    c = torch.tensor([1.0, 1.0], dtype=torch.float64)
    tr = torch.tensor([1.0 + 1e-9], dtype=torch.float64)
    assert auroc(c, tr) == 1.0
    assert auroc(t(1, 2, 3, 4).view(2, 2), t(2.5, 5).view(2, 1)) == 6 / 8   # 2.5 beats 2 of 4, 5 beats all 4


def test_auroc_large_tie_group_is_exact():
    """20001 tied scores: their average rank (n + 1) / 2 must be exact (float32 would give 10001.00098)."""
    c = torch.zeros(20000)
    tr = torch.zeros(1)
    assert auroc(c, tr) == 0.5


def test_auroc_of_nothing_is_nan():
    assert math.isnan(auroc(t(), t(1, 2)))
    assert math.isnan(auroc(t(1, 2), t()))


# ---------------------------------------------------------------- TPR at a fixed FPR


CLEAN = torch.arange(100, dtype=torch.float32)          # 0, 1, ..., 99


def test_tpr_at_fpr_default_is_one_percent():
    # 1 % of 100 clean = 1 may be flagged: threshold = 2nd largest clean score (98), flag strictly above it
    trig = t(98.0, 98.5, 99.5, 50.0)
    assert tpr_at_fpr(CLEAN, trig) == 0.5                 # 98.5 and 99.5; 98 itself is not above 98
    assert tpr_at_fpr(CLEAN, trig, 0.01) == 0.5


def test_tpr_at_fpr_known_values():
    trig = t(98.0, 98.5, 99.5, 50.0)
    assert tpr_at_fpr(CLEAN, trig, 0.0) == 0.25           # nothing clean flagged: above 99 -> 99.5 only
    assert tpr_at_fpr(CLEAN, trig, 0.019) == 0.5          # floor(1.9) = 1 clean flagged -> above 98
    assert tpr_at_fpr(CLEAN, trig, 0.02) == 0.75          # 2 flagged -> above 97
    assert tpr_at_fpr(CLEAN, trig, 0.5) == 1.0            # 50 flagged -> above 49: all four
    assert tpr_at_fpr(CLEAN, trig, 0.49) == 0.75          # 49 flagged -> above 50: the trigger at 50 is missed
    assert tpr_at_fpr(CLEAN, trig, 1.0) == 1.0            # every clean input may be flagged: flag everything
    assert tpr_at_fpr(CLEAN, t(-1e30), 1.0) == 1.0
    # four clean scores, half may be flagged: sorted descending 4, 3, 2, 1 -> threshold 2 (the 3rd largest)
    assert tpr_at_fpr(t(1, 2, 3, 4), t(2, 2.5, 1, 9), 0.5) == 0.5


def test_tpr_at_fpr_of_nothing_is_nan():
    assert math.isnan(tpr_at_fpr(t(), t(1)))
    assert math.isnan(tpr_at_fpr(t(1), t()))


# ---------------------------------------------------------------- Wilson interval


@pytest.mark.parametrize("k,n,lo,hi", [
    # the textbook Wilson 95 % intervals (z = 1.96)
    (0, 10, 0.0, 0.2775),
    (1, 10, 0.0179, 0.4042),
    (5, 10, 0.2366, 0.7634),
    (10, 10, 0.7225, 1.0),
    (1, 1, 0.2065, 1.0),
    (0, 1, 0.0, 0.7935),
    (50, 100, 0.4038, 0.5962),
    (1, 100, 0.0018, 0.0545),
])
def test_wilson_textbook_values(k, n, lo, hi):
    a, b = wilson_interval(k, n)
    assert a == pytest.approx(lo, abs=5e-5) and b == pytest.approx(hi, abs=5e-5)


def test_wilson_closed_form_at_k_equal_zero():
    # k = 0: centre = half, so the interval is [0, z^2 / (n + z^2)]
    z = 1.959964
    for n in (3, 10, 40):
        assert wilson_interval(0, n)[1] == pytest.approx(z * z / (n + z * z), rel=1e-12)
    # another z: 2.575829 (99 %)
    z = 2.575829
    assert wilson_interval(0, 10, z)[1] == pytest.approx(z * z / (10 + z * z), rel=1e-12)
    # 5/10 at z = 2.575829: centre 1/2, half = z sqrt(.025 + z^2/400) / (1 + z^2/10) = 0.31577
    assert wilson_interval(5, 10, z) == pytest.approx((0.18423, 0.81577), abs=5e-6)


def test_wilson_is_clipped_to_the_unit_interval():
    # without the clip, rounding gives a lower bound of -2.8e-17 at 0/7 and an upper bound of 1 + 2.2e-16 at 20/20
    assert wilson_interval(0, 7)[0] == 0.0
    assert wilson_interval(20, 20)[1] == 1.0
    for n in range(1, 61):
        for k in range(n + 1):
            a, b = wilson_interval(k, n)
            assert 0.0 <= a <= k / n + 1e-15 and k / n - 1e-15 <= b <= 1.0


def test_wilson_of_nothing_is_nan():
    a, b = wilson_interval(0, 0)
    assert math.isnan(a) and math.isnan(b)
