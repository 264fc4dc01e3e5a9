"""A step's rollouts (`rlvfast.train.rollouts`): the problem stream, and the verifier's step metrics,
which are `rlvfast.eval.scaling.verifier_metrics` on the samples that have a reward and a score."""
import pytest

from rlvfast.tasks.problems import Problem
from rlvfast.train.rollouts import problems_for_step, verifier_step_metrics


def metrics(scores, rewards):
    m = verifier_step_metrics(scores, rewards)
    return m["verifier/accuracy"], m["verifier/balanced_accuracy"]


def test_verifier_step_metrics_values():
    # labels Yes, No, No (reward 0.3 < 0.5); predictions Yes, No, Yes; the last sample has no reward
    assert metrics([0.9, 0.2, 0.6, 0.1], [1.0, 0.0, 0.3, None]) == pytest.approx((2 / 3, (1 / 1 + 1 / 2) / 2))
    # a custom reward of 0.7 is a Yes label; P("Yes") of exactly 0.5 predicts Yes
    assert metrics([0.5, 0.4], [0.7, 0.0]) == (1.0, 1.0)


def test_verifier_step_metrics_none_cases():
    assert metrics([0.9, 0.2], [None, None]) == (None, None)  # no labels
    assert metrics([], []) == (None, None)
    assert metrics([0.9, 0.2, 0.7], [1.0, 1.0, 1.0]) == (2 / 3, None)  # one class only
    assert metrics([0.9, 0.2], [0.0, 0.0]) == (0.5, None)
    assert metrics([None, 0.9, 0.2], [0.0, 1.0, 0.0]) == (1.0, 1.0)  # a sample without a score does not count


def test_problems_for_step_is_a_shuffled_stream_of_the_seed():
    problems = [Problem(id=str(i), problem=f"p{i}", answer=str(i)) for i in range(5)]
    epoch0 = [p.id for step in range(2) for p in problems_for_step(problems, step, 2, seed=3)]
    step2 = [p.id for p in problems_for_step(problems, 2, 2, seed=3)]
    assert sorted(epoch0 + step2[:1]) == ["0", "1", "2", "3", "4"]  # positions 0-4: one epoch, each once
    assert step2 == [p.id for p in problems_for_step(problems, 2, 2, seed=3)]  # a function of seed and step
    other = [p.id for step in range(3) for p in problems_for_step(problems, step, 2, seed=4)]
    assert other != epoch0 + step2
