"""Hand-computed values for the owner's black-box verification (watermark/verify.py): the exact binomial tail
and the verdicts at their boundaries.  `mutmut` runs these against verify.py (docs/mutation.md)."""

from fractions import Fraction

import pytest
import torch

from dnnpiracy.watermark.verify import Verification, binomial_sf, verify

# ---------------------------------------------------------------- P[X >= k], X ~ Binomial(n, p)


def test_binomial_sf_small_cases_by_hand():
    # Bin(3, 1/2): P = 1/8, 3/8, 3/8, 1/8 for 0..3
    assert binomial_sf(0, 3, Fraction(1, 2)) == 1.0
    assert binomial_sf(1, 3, Fraction(1, 2)) == 7 / 8
    assert binomial_sf(2, 3, Fraction(1, 2)) == 4 / 8
    assert binomial_sf(3, 3, Fraction(1, 2)) == 1 / 8
    assert binomial_sf(4, 3, Fraction(1, 2)) == 0.0          # k = n + 1: the empty tail
    # Bin(4, 1/3): P[X >= 1] = 1 - (2/3)^4 = 65/81; P[X >= 3] = 4 (1/3)^3 (2/3) + (1/3)^4 = 9/81
    assert binomial_sf(1, 4, Fraction(1, 3)) == 65 / 81
    assert binomial_sf(3, 4, Fraction(1, 3)) == 9 / 81
    # Bin(15, 1/10): P[X >= 15] = 1e-15 exactly; P[X >= 14] = 15 * 1e-14 * 0.9 + 1e-15 = 1.36e-13
    assert binomial_sf(15, 15, Fraction(1, 10)) == 1e-15
    assert binomial_sf(14, 15, Fraction(1, 10)) == pytest.approx(1.36e-13, rel=1e-12)


def test_binomial_sf_float_p_is_read_as_the_fraction_it_denotes():
    # 0.1 as a double is 0.1000000000000000055...; read as 1/10 the tail 0.1^15 is 1e-15 to the last digit
    assert binomial_sf(15, 15, 0.1) == 1e-15
    assert binomial_sf(2, 3, 0.5) == 0.5
    # a p with nine significant digits survives unchanged: P[X >= 1] for n = 1 is p itself
    assert binomial_sf(1, 1, 0.123456789) == 0.123456789
    assert binomial_sf(1, 1, 0.5) == 0.5


def test_binomial_sf_fraction_p_is_used_exactly():
    # a Fraction is not rounded: p = 1 / (3e9) (denominator above 1e9) gives P[X >= 1] = p for n = 1
    assert binomial_sf(1, 1, Fraction(1, 3 * 10**9)) == 1 / (3 * 10**9)
    assert binomial_sf(2, 2, Fraction(1, 3 * 10**9)) == 1 / (9 * 10**18)


def test_binomial_sf_degenerate_p():
    assert binomial_sf(3, 3, 1.0) == 1.0 and binomial_sf(2, 3, 1) == 1.0 and binomial_sf(0, 3, 1.0) == 1.0
    assert binomial_sf(1, 3, 0.0) == 0.0 and binomial_sf(0, 3, 0.0) == 1.0
    assert binomial_sf(0, 0, Fraction(1, 10)) == 1.0          # n = 0: P[X >= 0] = 1


def test_binomial_sf_k_range():
    assert binomial_sf(0, 5, 0.5) == 1.0
    assert binomial_sf(6, 5, 0.5) == 0.0
    with pytest.raises(ValueError, match=r"^k=-1 out of range for n=5$"):
        binomial_sf(-1, 5, 0.5)
    with pytest.raises(ValueError, match=r"^k=7 out of range for n=5$"):
        binomial_sf(7, 5, 0.5)


# ---------------------------------------------------------------- verify


def _answers(correct: int, n: int, trigger_label: int = 3):
    """A black box that answers the trigger label on the first ``correct`` of ``n`` queries and 9 elsewhere."""
    out = torch.full((n,), 9)
    out[:correct] = trigger_label
    return lambda _x: out


def test_verify_reports_counts_p_value_and_verdicts():
    x = torch.zeros(15, 1, 4, 4)
    labels = torch.full((15,), 3)
    v = verify(_answers(2, 15), x, labels)
    # 2 of 15: P[Bin(15, 1/10) >= 2] = 1 - 0.9^15 - 15 (0.1)(0.9^14) = 0.450957...
    assert v.n_queries == 15 and v.n_trigger_label == 2
    assert v.trigger_accuracy == 2 / 15
    assert v.p_value == pytest.approx(1 - 0.9 ** 15 - 1.5 * 0.9 ** 14, rel=1e-12)
    assert v.significance == 0.01                        # the default
    assert not v.pirated and not v.pirated_majority_rule and v.verdict == "not pirated"

    v = verify(_answers(8, 15), x, labels)
    # 8 of 15: p = P[Bin(15, .1) >= 8] = 3.4e-5 < 0.01; 8 > 7.5 is a majority
    assert v.n_trigger_label == 8 and v.p_value == pytest.approx(binomial_sf(8, 15, Fraction(1, 10)))
    assert v.p_value == pytest.approx(3.4e-5, rel=0.05)
    assert v.pirated and v.pirated_majority_rule and v.verdict == "pirated"


def test_verify_counts_agreement_with_each_query_own_label():
    x = torch.zeros(4, 1, 2, 2)
    labels = torch.tensor([0, 1, 2, 3])
    v = verify(lambda _x: torch.tensor([0, 1, 5, 5]), x, labels, num_classes=4)
    assert v.n_trigger_label == 2 and v.trigger_accuracy == 0.5
    # P[Bin(4, 1/4) >= 2] = 1 - (3/4)^4 - 4 (1/4)(3/4)^3 = 1 - 81/256 - 108/256 = 67/256
    assert v.p_value == pytest.approx(67 / 256, rel=1e-12)
    assert not v.pirated_majority_rule                   # 2 of 4 is not *most* of them (k > n/2, not >=)


def test_verify_chance_level_is_one_over_num_classes():
    x = torch.zeros(2, 1, 2, 2)
    labels = torch.tensor([1, 1])
    # both right, 2 classes: P[Bin(2, 1/2) >= 2] = 1/4; 10 classes (default): 1/100; 5 classes: 1/25
    assert verify(lambda _x: labels, x, labels, num_classes=2).p_value == 0.25
    assert verify(lambda _x: labels, x, labels).p_value == pytest.approx(0.01, rel=1e-12)
    assert verify(lambda _x: labels, x, labels, num_classes=5).p_value == pytest.approx(0.04, rel=1e-12)


def test_verify_significance_is_a_strict_threshold():
    x = torch.zeros(1, 1, 2, 2)
    labels = torch.tensor([1])
    # one right answer of one query with 2 classes: p = 1/2 exactly
    v = verify(lambda _x: labels, x, labels, num_classes=2, significance=0.5)
    assert v.p_value == 0.5 and not v.pirated            # p < significance, not <=
    assert v.pirated_majority_rule                       # 1 > 1/2
    assert verify(lambda _x: labels, x, labels, num_classes=2, significance=0.5000001).pirated


def test_verify_asks_the_black_box_about_the_trigger_images():
    # the black box reads its answer off each image (pixel [0, 0]): 3, 3, 1, 3 -> 3 of 4 answer the label 3
    x = torch.zeros(4, 1, 2, 2)
    x[:, 0, 0, 0] = torch.tensor([3.0, 3.0, 1.0, 3.0])
    v = verify(lambda q: q[:, 0, 0, 0].long(), x, torch.full((4,), 3))
    assert v.n_trigger_label == 3 and v.trigger_accuracy == 0.75


def test_verify_accepts_any_label_container_and_shape():
    x = torch.zeros(3, 1, 2, 2)
    labels = torch.tensor([7, 7, 7])
    v = verify(lambda _x: [[7.0], [7.0], [2.0]], x, labels)        # a nested list of floats, shape (3, 1)
    assert v.n_trigger_label == 2 and v.n_queries == 3


def test_verify_rejects_bad_inputs():
    x = torch.zeros(3, 1, 2, 2)
    labels = torch.tensor([7, 7, 7])
    for bad in (0.0, 1.0, -0.5, 1.5):
        with pytest.raises(ValueError, match=rf"^significance must be in \(0, 1\), got {bad}$"):
            verify(lambda _x: labels, x, labels, significance=bad)
    with pytest.raises(ValueError, match=r"^predict returned \(2,\) labels for 3 queries$"):
        verify(lambda _x: torch.tensor([7, 7]), x, labels)


def test_verification_verdict_and_dict():
    v = Verification(15, 15, 1.0, 1e-15, 0.01, True, True)
    assert v.verdict == "pirated"
    assert v.to_dict() == {"n_queries": 15, "n_trigger_label": 15, "trigger_accuracy": 1.0, "p_value": 1e-15,
                           "significance": 0.01, "pirated": True, "pirated_majority_rule": True,
                           "chance": None, "verdict": "pirated"}
    w = Verification(15, 0, 0.0, 1.0, 0.01, False, False)
    assert w.verdict == "not pirated" and w.to_dict()["verdict"] == "not pirated"
