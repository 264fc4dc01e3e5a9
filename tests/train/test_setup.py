"""The optimizer's learning-rate schedule (`setup.make_optimizer`, `setup.lr_factor`)."""

import pytest
import torch

from rlvfast.train.config import TrainConfig
from rlvfast.train.setup import make_optimizer


def lrs(config: TrainConfig) -> list[float]:
    """The lr of every optimizer step of a run, as the trainer steps the schedule."""
    model = torch.nn.Linear(2, 2)
    optimizer, scheduler = make_optimizer(model.parameters(), config)
    out = []
    for _ in range(config.steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def test_constant_after_a_linear_warmup():
    values = lrs(TrainConfig(steps=8, warmup=4, lr=1e-3, lr_schedule="constant"))
    assert values == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3])


def test_cosine_decays_from_the_peak_to_a_tenth_at_the_last_step():
    values = lrs(TrainConfig(steps=12, warmup=2, lr=1e-3, lr_schedule="cosine"))
    assert values[:3] == pytest.approx([5e-4, 1e-3, 1e-3])
    assert values[-1] == pytest.approx(1e-4)
    assert values[6] > 0.55e-3 > values[7]  # half way (0.55 of the peak) between steps 6 and 7
    assert all(a >= b for a, b in zip(values[2:], values[3:]))  # never rises after the warmup


def test_the_schedule_resumes_from_its_state_dict():
    config = TrainConfig(steps=10, warmup=2, lr=1e-3, lr_schedule="cosine")
    model = torch.nn.Linear(2, 2)
    optimizer, scheduler = make_optimizer(model.parameters(), config)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    state = scheduler.state_dict()
    optimizer2, scheduler2 = make_optimizer(torch.nn.Linear(2, 2).parameters(), config)
    scheduler2.load_state_dict(state)
    optimizer2.param_groups[0]["lr"] = scheduler2.get_last_lr()[0]
    assert scheduler2.get_last_lr() == pytest.approx(scheduler.get_last_lr())
    scheduler.step()
    scheduler2.step()
    assert scheduler2.get_last_lr() == pytest.approx(scheduler.get_last_lr())


def test_a_bad_schedule_is_named():
    with pytest.raises(ValueError, match="--lr-schedule must be one of .* got 'linear'"):
        TrainConfig(lr_schedule="linear")
