"""The one answer module: extraction, the canonical key, and grading and voting agreeing on it."""
import pytest

from rlvfast.eval import voting
from rlvfast.tasks import grading
from rlvfast.answers import MAX_TEXT_CHARS, MAX_UNWRAPS, extract_answer, is_int_key, last_boxed, normalize_answer
from rlvfast.tasks.grading import Grader

HUGE = "7" * 5000  # over Python's 4300-digit int()/str() limit

# --- extraction: a box that was opened but cannot be read is no answer (issue 11, bug 8) ---


@pytest.mark.parametrize("text", [
    "so \\boxed{\\frac{1}{2}",                       # unclosed: the last number would be "2"
    "7+8=15 so \\boxed{15",                          # unclosed around a plain number
    "\\boxed{\\boxed{5}",                            # a closed inner box in an open outer one
    "1+2=3 \\boxed{}",                               # an empty box
    "1+2=3 so the answer is \\boxed",                # cut right after the command
    "\\boxed{" + "1+" * (MAX_TEXT_CHARS // 2) + "7} done",  # the opener is before the kept tail
    "\\boxed{5} " + "x " * MAX_TEXT_CHARS + "so 3",  # a box before the tail, none inside it
])
def test_unreadable_box_is_no_answer(text):
    assert extract_answer(text) is None


def test_unclosed_box_grades_wrong_against_the_digit_inside_it():
    with Grader() as fresh:
        result = fresh.grade("so \\boxed{\\frac{1}{2}", "2")
    assert (result.correct, result.answer) == (False, None)


@pytest.mark.parametrize("text, expected", [
    ("\\boxed{3} then a truncated \\boxed{\\frac{1", "3"),   # an earlier complete box still counts
    ("x" * (2 * MAX_TEXT_CHARS) + " 1+2=3", "3"),            # cut, but no box anywhere
    ("\\boxed{\\boxed{5}+1}", "\\boxed{5}+1"),               # the outermost box
    ("\\fbox{-\\frac{3}{4}}", "-\\frac{3}{4}"),
    ("She pays 3 * 4 = 12 dollars.\n#### 1,234", "1,234"),
])
def test_extract_answer_readable(text, expected):
    assert extract_answer(text) == expected


def test_last_boxed_of_an_open_box_is_none():
    assert last_boxed("\\boxed{\\frac{1}{2}") is None
    assert last_boxed("\\boxed 7 and \\boxed{8") is None  # the bare form does not rescue an open box
    assert last_boxed("\\boxed 7") == "7"


# --- the key: value-keeping rewrites, and a length guard (issue 11, bug 7) ---

@pytest.mark.parametrize("raw, expected", [
    ("17", "17"), ("-3", "-3"), (17, "17"),                  # synthetic answers: unchanged
    ("025", "25"), ("-0", "0"), ("+5", "5"), ("-007", "-7"),
    ("1,000", "1000"), ("-1,234.5", "-2469/2"), ("10,\\!080", "10080"), ("+1,000", "1000"),
    ("0.5", "1/2"), (".5", "1/2"), ("56.0", "56"), ("56.", "56"), ("\\frac{2}{4}", "1/2"), ("4/2", "2"),
    ("-\\frac{3}{6}", "-1/2"), ("\\frac{-3}{6}", "-1/2"), ("-\\dfrac{-3}{6}", "1/2"),
    ("$\\boxed{56}$", "56"), ("\\boxed{\\boxed{5}}", "5"), ("\\fbox{7}", "7"), ("\\text{ 9 }", "9"),
    ("\\boxed{5}+1", "\\boxed{5}+1"),                        # not a whole-answer box: kept
    ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"), ("\\left( 3, \\pi \\right)", "(3,\\pi)"),
    ("1/0", "1/0"), ("\\frac{1}{0}", "\\frac{1}{0}"),
    ("\\boxed{\\frac{1}{2}", None), ("\\boxed{}", None), ("$ $", None), ("", None), (None, None),
])
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


@pytest.mark.parametrize("raw, expected", [
    (HUGE, HUGE), ("-000" + HUGE, "-" + HUGE), ("+" + HUGE, HUGE),   # ints: exact at any length
    ("1," + ",".join(["000"] * 2000), "1" + "000" * 2000),
    ("0." + HUGE, "0." + HUGE),                                       # a long decimal keeps its spelling
    (f"\\frac{{{HUGE}}}{{7}}", f"\\frac{{{HUGE}}}{{7}}"),
    (f"{HUGE}/{HUGE}", f"{HUGE}/{HUGE}"),
])
def test_normalize_huge_numbers_without_raising(raw, expected):
    assert normalize_answer(raw) == expected


def test_deep_boxes_peel_up_to_max_unwraps():
    deep = "\\boxed{" * 20_000 + "5" + "}" * 20_000  # would take minutes peeled one scan at a time
    rest = 20_000 - MAX_UNWRAPS
    assert normalize_answer(deep) == "\\boxed{" * rest + "5" + "}" * rest
    assert normalize_answer("\\boxed{" * MAX_UNWRAPS + "5" + "}" * MAX_UNWRAPS) == "5"


def test_voting_on_huge_answers():
    assert voting.majority_vote([HUGE, "1", "00" + HUGE, "0." + HUGE]) == HUGE


def test_eval_summary_of_saved_huge_answers():
    # A saved sample with a 5000-digit answer made every rerun of rlvfast.eval crash here.
    from rlvfast.eval.run import pool_from_records

    records = [{"sample": i, "problem_id": "p", "answer": answer, "correct": False, "score": 0.5,
                "num_tokens": 9, "difficulty": None} for i, answer in enumerate([HUGE, HUGE, "3"])]
    assert pool_from_records(records).keys == [HUGE, HUGE, "3"]


# --- grading and voting agree on "the same answer" (issue 12) ---

TRICKY = ["17", "-3", "017", "-0", "0", HUGE, "0" + HUGE, "-" + HUGE, "1,000", "1000", "1,000.5", "2001/2",
          "0.5", "1/2", "\\frac{1}{2}", "\\dfrac{2}{4}", "-\\frac{1}{2}", "-0.5", "\\frac{-1}{2}", "0.50",
          "56.0", "56", "\\boxed{56}", "\\fbox{56}", "\\boxed{\\boxed{56}}", "\\boxed{56", "\\boxed{}", "",
          "\\boxed{5}+1", "6", "\\text{Evelyn}", "Evelyn", "x = 5", "x=5", "\\frac{\\pi}{2}", "0." + HUGE,
          "1/0", "\\sqrt{2}", "(1,2)"]


def test_voting_keys_equal_exactly_when_the_fast_path_calls_equal():
    for a in TRICKY:
        for b in TRICKY:
            same_key = normalize_answer(a) is not None and normalize_answer(a) == normalize_answer(b)
            assert same_key == (grading._fast_decide(a, b) is True), (a[:20], b[:20])


def test_the_fast_path_calls_different_only_integers():
    for a in TRICKY:
        for b in TRICKY:
            if grading._fast_decide(a, b) is False and normalize_answer(a) and normalize_answer(b):
                assert is_int_key(normalize_answer(a)) and is_int_key(normalize_answer(b)), (a[:20], b[:20])


def test_grading_and_voting_share_one_rule():
    assert grading.normalize_answer is normalize_answer is voting.normalize_answer
    assert grading.extract_answer is extract_answer and grading.last_boxed is last_boxed


# Pairs with equal keys that math-verify, on its own, also calls equal: the key's rewrites
# keep the value.
EQUAL_KEYS = [("0.5", "\\frac{1}{2}"), ("\\dfrac{2}{4}", "1/2"), ("-\\frac{3}{6}", "-0.5"), ("56.0", "56"),
              ("025", "25"), ("\\text{5}", "5"), ("\\boxed{5}", "5"), ("-0", "0"), ("1,000", "1000"),
              ("\\frac{-3}{6}", "-\\frac{1}{2}"), ("\\left(3,\\pi\\right)", "(3, \\pi)")]


def test_equal_keys_are_equal_for_math_verify():
    assert all(normalize_answer(a) == normalize_answer(b) for a, b in EQUAL_KEYS)
    with Grader(timeout=10.0, num_workers=2, use_fast_path=False) as slow:
        results = slow.grade_batch([f"\\boxed{{{a}}}" for a, _ in EQUAL_KEYS], [b for _, b in EQUAL_KEYS])
    assert [(r.correct, r.status) for r in results] == [(True, "ok")] * len(EQUAL_KEYS)
