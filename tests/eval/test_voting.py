"""Voting functions against hand-worked examples; pass@k against the closed form."""
import math

import pytest

from rlvfast.eval.voting import (best_index, best_of_n, majority_index, majority_vote, normalize_answer,
                            pass_at_k, weighted_index, weighted_vote)


@pytest.mark.parametrize("raw, expected", [
    ("56", "56"), (" 56 ", "56"), ("\\boxed{56}", "56"), ("$56$", "56"), ("56.", "56"), ("56.0", "56"),
    ("-7", "-7"), ("0.5", "1/2"), ("1/2", "1/2"), ("\\frac{1}{2}", "1/2"), ("\\dfrac{1}{2}", "1/2"),
    ("-\\frac{3}{6}", "-1/2"), ("1,000", "1000"), ("(1,2)", "(1,2)"), ("\\boxed{\\frac{\\pi}{2}}", "\\frac{\\pi}{2}"),
    ("x = 5", "x=5"), ("", None), ("   ", None), (None, None), ("\\boxed{}", None), ("1/0", "1/0"),
    ("9" * 5000, "9" * 5000), ("-009" + "9" * 5000, "-9" + "9" * 5000), ("0." + "9" * 5000, "0." + "9" * 5000),
    ("\\boxed{\\frac{1}{2}", None), ("\\boxed{5}+1", "\\boxed{5}+1"),   # an open box; not a whole-answer box
])
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_majority_vote_hand_worked():
    assert majority_vote(["7", "56", " 56 ", "\\boxed{56}", "7"]) == "56"  # 56 x3 against 7 x2
    assert majority_vote(["0.5", "1/2", "2", "2"]) == "1/2"  # tie 2-2: "0.5" is seen first
    assert majority_vote(["2", "2", "0.5", "1/2"]) == "2"  # same tie, other order
    assert majority_vote([None, None, None, "3"]) == "3"  # None never wins against an answer
    assert majority_vote([None, None]) is None
    assert majority_vote([]) is None
    assert majority_vote(["9" * 5000, "1", "09" + "9" * 4999]) == "9" * 5000  # over int()'s 4300 digits


def test_weighted_vote_hand_worked():
    answers = ["7", "56", "56", "9"]
    assert weighted_vote(answers, [0.9, 0.3, 0.4, 0.1]) == "7"  # 0.9 > 0.3 + 0.4 = 0.7
    assert weighted_vote(answers, [0.6, 0.3, 0.4, 0.1]) == "56"  # 0.7 > 0.6
    assert weighted_vote(["1", "2"], [0.5, 0.5]) == "1"  # exact tie: first seen wins
    assert weighted_vote(["2", "1"], [0.5, 0.5]) == "2"
    assert weighted_vote([None, "4"], [1.0, 0.0]) == "4"  # None never wins, even with all the score
    assert weighted_vote([None, None], [1.0, 1.0]) is None
    assert weighted_index(["a", "b", "b"], [0.25, 0.125, 0.125]) == 0  # tie 0.25 = 0.25: "a" first
    with pytest.raises(ValueError, match="same length"):
        weighted_vote(["1"], [0.5, 0.5])


def test_best_of_n_hand_worked():
    assert best_of_n(["1", "2", "3"], [0.2, 0.9, 0.5]) == "2"
    assert best_of_n(["1", "2", "3"], [0.9, 0.9, 0.5]) == "1"  # tie: earliest sample
    assert best_of_n([None, "2"], [0.99, 0.01]) == "2"  # no-answer samples are skipped
    assert best_of_n([None], [0.5]) is None
    assert best_index(["5", "6"], [0.1, 0.2]) == 1
    assert majority_index(["6", "5", "5"]) == 1  # index of the winner's first sample


def _closed_form(n, c, k):
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 16, 33, 64, 100])
def test_pass_at_k_closed_form(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(_closed_form(n, c, k), rel=1e-12, abs=1e-12)


def test_pass_at_k_edges_and_errors():
    assert pass_at_k(10, 0, 3) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 3 of the 6 pairs hold the correct one
    assert 0.0 < pass_at_k(1000, 1, 1) < 1.0  # large n: no overflow in the product form
    for bad in [(5, 6, 1), (5, 2, 0), (5, 2, 6), (-1, 0, 1)]:
        with pytest.raises(ValueError, match="pass_at_k"):
            pass_at_k(*bad)
