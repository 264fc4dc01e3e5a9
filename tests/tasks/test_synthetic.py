"""The synthetic arithmetic task: determinism, difficulty, and error injection at a known rate."""
import math
import random
import re

import pytest

from rlvfast.tasks.grading import Grader, extract_answer
from rlvfast.tasks.synthetic import (HELD_OUT_EVERY, SPLITS, Difficulty, evaluate_expression, is_held_out, make_problems,
                                     parse_difficulty, solution_text)

_STEP_RE = re.compile(r"^(-?\d+)([+-])(\d+)=(-?\d+)$")


def _steps(solution: str) -> list[tuple[int, str, int, int]]:
    lines = solution.split("\n")
    return [(int(a), sign, int(b), int(c)) for a, sign, b, c in (_STEP_RE.match(line).groups() for line in lines[:-1])]


def _is_step_wrong(step: tuple[int, str, int, int]) -> bool:
    a, sign, b, c = step
    return c != (a + b if sign == "+" else a - b)


def test_same_seed_same_problems_and_different_seeds_differ():
    assert make_problems(50, "train", seed=3) == make_problems(50, "train", seed=3)
    assert [p.problem for p in make_problems(50, "train", 3)] != [p.problem for p in make_problems(50, "train", 4)]
    assert len({p.id for p in make_problems(100, "hard", 0)}) == 100


def test_held_out_splits_are_disjoint_from_every_training_draw():
    train = {p.problem for p in make_problems(20_000, "train", 0)}  # covers ~all 2330 training texts
    assert len(train) > 2000
    for split in ("test", "hard", "ops=3,digits=1"):
        held_out = [p.problem for p in make_problems(400, split, seed=0)]
        assert len(set(held_out)) == 400  # distinct
        assert not set(held_out) & train and all(is_held_out(t) for t in held_out)
    # the base model's draws (an explicit Difficulty, 2-4 operands) are training draws too
    for num_operands in (2, 3, 4):
        texts = [p.problem for p in make_problems(300, Difficulty(num_operands, 1), seed=7)]
        assert not any(is_held_out(t) for t in texts)
    # one text in HELD_OUT_EVERY of the whole 3-operand space is held out
    space = [f"Compute {a}{s}{b}{t}{c}." for a in range(1, 10) for b in range(1, 10) for c in range(1, 10)
             for s in "+-" for t in "+-"]
    assert abs(sum(map(is_held_out, space)) / len(space) - 1 / HELD_OUT_EVERY) < 0.02


def test_asking_for_more_held_out_problems_than_exist_names_the_split():
    with pytest.raises(ValueError, match="split 'test' has only about 5[0-9][0-9] distinct held-out problems"):
        make_problems(700, "test", seed=0)


@pytest.mark.parametrize("split, num_operands, num_digits", [
    ("train", 3, 1), ("test", 3, 1), ("hard", 4, 1), ("ops=5,digits=2", 5, 2),
    (Difficulty(2, 3), 2, 3),
])
def test_difficulty_is_visible_in_the_problems(split, num_operands, num_digits):
    for problem in make_problems(40, split, seed=1):
        operands = re.findall(r"\d+", problem.problem)
        assert len(operands) == num_operands
        assert all(len(x) == num_digits for x in operands)
        assert problem.answer == str(evaluate_expression(problem.problem[len("Compute "):-1]))
        assert problem.meta["num_operands"] == num_operands and problem.meta["num_digits"] == num_digits


def test_parse_difficulty_and_splits():
    assert parse_difficulty("hard") == SPLITS["hard"]
    assert parse_difficulty("ops=4,digits=3")[0] == Difficulty(4, 3)
    assert evaluate_expression("37+48-29") == 56 and evaluate_expression("1-9-9") == -17


def test_error_free_solutions_grade_correct():
    problems = make_problems(300, "ops=4,digits=2", seed=5)
    rng = random.Random(0)
    texts = [solution_text(p, 0.0, rng) for p in problems]
    assert all(extract_answer(text) == p.answer for text, p in zip(texts, problems))
    assert all(not _is_step_wrong(step) for text in texts for step in _steps(text))
    with Grader() as grader:
        assert all(r.correct for r in grader.grade_batch(texts, [p.answer for p in problems]))
        assert grader.num_fast == len(problems)


def test_error_rate_matches_fraction_of_wrong_steps():
    # 1000 problems x 3 steps at rate 0.3: the wrong-step count is Binomial(3000, 0.3), std 25;
    # 5 std (about 0.04 in rate) of slack never trips with this fixed seed and catches a wrong rate.
    rate, problems, rng = 0.3, make_problems(1000, "ops=4,digits=2", seed=2), random.Random(11)
    steps = [step for p in problems for step in _steps(solution_text(p, rate, rng))]
    num_wrong = sum(map(_is_step_wrong, steps))
    assert len(steps) == 3000
    assert abs(num_wrong - rate * len(steps)) < 5 * math.sqrt(len(steps) * rate * (1 - rate))


def test_final_answer_is_wrong_exactly_when_a_step_was():
    problems, rng = make_problems(2000, "ops=5,digits=1", seed=9), random.Random(4)
    for problem in problems:
        text = solution_text(problem, 0.4, rng)
        has_wrong_step = any(map(_is_step_wrong, _steps(text)))
        assert (extract_answer(text) != problem.answer) == has_wrong_step, text


def test_error_rate_one_makes_every_step_wrong():
    rng = random.Random(0)
    for problem in make_problems(100, "hard", seed=0):
        text = solution_text(problem, 1.0, rng)
        assert all(map(_is_step_wrong, _steps(text)))
        assert extract_answer(text) != problem.answer


def test_solution_text_accepts_a_string_and_defaults_rng():
    assert solution_text("Compute 37+48-29.") == "37+48=85\n85-29=56\n\\boxed{56}"
    assert solution_text("Compute 5-9.", 0.5) == solution_text("Compute 5-9.", 0.5)


@pytest.mark.parametrize("call, pattern", [
    (lambda: solution_text("Compute 1+2.", 1.5), "error_rate .* got 1.5"),
    (lambda: solution_text("Compute 1+2.", -0.1), "error_rate .* got -0.1"),
    (lambda: solution_text("Compute 1+2.", float("nan")), "error_rate .* got nan"),
    (lambda: solution_text("Compute 1+2.", "0.5"), "error_rate .* got '0.5'"),
    (lambda: solution_text("What is 1+2?"), "not a synthetic arithmetic problem: 'What is 1\\+2\\?'"),
    (lambda: make_problems(-1), "num_problems .* got -1"),
    (lambda: make_problems(2.5), "num_problems .* got 2.5"),
    (lambda: make_problems(3, "impossible"), "bad synthetic difficulty 'impossible'"),
    (lambda: make_problems(3, "ops=x"), "bad synthetic difficulty 'ops=x'"),
    (lambda: Difficulty(1, 1), "num_operands .* got 1"),
    (lambda: Difficulty(3, 7), "num_digits .* got 7"),
])
def test_bad_inputs_raise_naming_the_value(call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call()
