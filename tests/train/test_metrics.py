"""metrics.jsonl and the log's step line (`rlvfast.train.metrics`): strict JSON, the lines an
interrupted run wrote past its checkpoint dropped on resume, a step line every log_every steps
when there is no terminal."""
import json
import math

import pytest

from rlvfast.train import metrics


def test_json_line_is_strict_json():
    line = metrics.json_line({"step": 3, "loss": math.nan, "grad_norm": math.inf, "nested": {"x": [-math.inf, 1.5]}})
    assert line == '{"step": 3, "loss": null, "grad_norm": null, "nested": {"x": [null, 1.5]}}'
    assert metrics.finite_or_none((1.0, "a", None)) == [1.0, "a", None]


def test_truncate_drops_the_steps_after_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3, 4)) + "\n")
    metrics.truncate(path, 2)
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'
    metrics.truncate(tmp_path / "none.jsonl", 2)  # a fresh run: nothing to truncate
    assert not (tmp_path / "none.jsonl").exists()


STEP = {"step": 4, "reward": 0.5, "loss/policy": 0.25, "loss/verifier": None, "verifier/accuracy": 0.75,
        "verifier/balanced_accuracy": None, "time/sampling": 1.0, "time/grading": 0.25, "time/update": 0.5,
        "skipped": False, "num_bad_steps": 0}


def test_step_line():
    assert metrics.step_line(STEP, 10) == ("step 4/10  reward 0.500  loss/policy 0.250  loss/verifier n/a  "
                                           "verifier accuracy 0.750 (balanced n/a)  1.75 s")
    skipped = metrics.step_line({**STEP, "skipped": True, "num_bad_steps": 2}, 10)
    assert "skipped (2 in a row)  1.75 s" in skipped


class Bar:
    def __init__(self, disable):
        self.disable, self.postfix = disable, None

    def set_postfix(self, refresh, **values):
        self.postfix = values


@pytest.mark.parametrize("disable, log_every, logged_steps", [(True, 2, [2, 4, 5]), (True, 0, []), (False, 2, [])])
def test_show_step_logs_every_k_steps_without_a_terminal(disable, log_every, logged_steps):
    bar, lines = Bar(disable), []
    for step in range(1, 6):
        metrics.show_step(bar, {**STEP, "step": step}, 5, log_every, lines.append)
    assert [int(line.split()[1].split("/")[0]) for line in lines] == logged_steps
    assert bar.postfix == {"reward": "0.500", "vacc": "n/a"}
