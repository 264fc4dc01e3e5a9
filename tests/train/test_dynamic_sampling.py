"""--dynamic-sampling (DAPO) on the micro model with a scripted reward: a problem whose id number
is odd gets reward 1 on all its samples (a uniform group, no policy gradient), any other gets 1
on the first sample of its group only (varied). Which groups reach the policy rows, which
problems the extra rounds draw (a function of seed, step and round), the dynamic/* metrics, the
rounds bound, the verifier-only rows, and that without uniform groups the option changes nothing."""
import json

import pytest
import torch

from rlvfast.cli import UserError
from rlvfast.models import load_model
from rlvfast.tasks.problems import Problem
from rlvfast.train import dynamic_sampling
from rlvfast.train import loop as train_mod
from rlvfast.train import setup
from rlvfast.train.config import TrainConfig
from rlvfast.train.rollouts import problems_for_step

GROUP_SIZE = 4
REWARD_MODULE = f'''
def odd_uniform(prompts, completions, completion_ids, id, **columns):
    """1 on every sample of a problem whose id number is odd; else 1 on the group's first sample only."""
    return [1.0 if int(i.rsplit("-", 1)[1]) % 2 else float(k % {GROUP_SIZE} == 0) for k, i in enumerate(id)]

def varied(prompts, completions, completion_ids, **columns):
    return [float(k % {GROUP_SIZE} == 0) for k in range(len(completions))]

def constant(prompts, completions, **columns):
    return [1.0] * len(completions)
'''


@pytest.fixture()
def rewards_module(tmp_path, monkeypatch):
    (tmp_path / "rlvfast_dyn_rewards.py").write_text(REWARD_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "rlvfast_dyn_rewards"


def config(micro_dir, out, **overrides) -> TrainConfig:
    values = dict(model=str(micro_dir), out=str(out), steps=2, prompts_per_step=2, group_size=GROUP_SIZE,
                  max_new_tokens=8, micro_batch=5, eval_problems=0, verify_prompt="\nOK?\n", checkpoint_every=1,
                  lr=1e-2, warmup=0, lr_schedule="constant", dynamic_sampling=True, seed=0)
    values.update(overrides)
    return TrainConfig(**values)


def quiet(*args):
    pass


def is_odd(problem: Problem) -> bool:
    return int(problem.id.rsplit("-", 1)[1]) % 2 == 1


@pytest.fixture()
def recorded(monkeypatch):
    """Each step's `fill` result and the samples `update` gets."""
    steps = []
    real_fill, real_update = dynamic_sampling.fill, train_mod.update

    def fill(run, first, step):
        steps.append({"rolled": real_fill(run, first, step)})
        return steps[-1]["rolled"]

    def update(run, samples):
        steps[-1]["samples"] = samples
        return real_update(run, samples)

    monkeypatch.setattr(dynamic_sampling, "fill", fill)
    monkeypatch.setattr(train_mod, "update", update)
    return steps


def metrics_of(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_the_policy_rows_are_the_first_useful_groups_and_more_problems_are_drawn(micro_dir, tmp_path,
                                                                                rewards_module, recorded):
    """Seed 0: step 1's batch holds a uniform group then a varied one; round 2 draws two varied
    groups, of which the first completes the 2 policy groups and the second is verifier-only.
    Step 2: uniform + varied in both rounds."""
    out = tmp_path / "run"
    cfg = config(micro_dir, out, reward=f"{rewards_module}:odd_uniform")
    problems = setup.load_training_problems(cfg)
    train_mod.train(cfg, log=quiet)
    expected_odd = [[True, False, False, False], [True, False, True, False]]  # per step: round 1's, round 2's
    expected_policy = [[False, True, True, False], [False, True, False, True]]
    expected_num_yes = [4 + 3, 8 + 2]  # a uniform group: 4 Yes; a varied one: 1 Yes, 3 No
    assert len(recorded) == 2
    for step, record in enumerate(recorded):
        drawn = [p for r in range(2) for p in dynamic_sampling.problems_for_round(problems, step, r, 2, 0)]
        assert record["rolled"].problems == drawn
        assert drawn[:2] == problems_for_step(problems, step, 2, 0)  # round 1 is the step's batch
        assert [is_odd(p) for p in drawn] == expected_odd[step]
        samples = record["samples"]
        assert len(samples) == 4 * GROUP_SIZE  # two rounds of two groups: every row stays for the verifier
        assert [s.token_weight > 0 for s in samples] == [g for g in expected_policy[step] for _ in range(GROUP_SIZE)]
        # token-mean over the policy rows alone: each of their tokens weighs 1 / their token count
        num_tokens = sum(len(s.completion_ids) for s in samples if s.token_weight > 0)
        assert all(s.token_weight == pytest.approx(1 / num_tokens) for s in samples if s.token_weight > 0)
        # the verifier: every row, balanced (Yes labels share 1/2, No labels 1/2)
        yes_id = samples[0].label_id if expected_odd[step][0] else None
        num_yes = sum(s.label_id == yes_id for s in samples)
        assert num_yes == expected_num_yes[step]
        for s in samples:
            share = num_yes if s.label_id == yes_id else len(samples) - num_yes
            assert s.label_weight == pytest.approx(0.5 / share)
    for m in metrics_of(out):
        assert (m["dynamic/rounds"], m["dynamic/useful_groups"]) == (2, 2)
        assert m["dynamic/filtered_frac"] == (0.25 if m["step"] == 1 else 0.5)
        assert m["time/dynamic_sampling"] >= 0


def test_two_runs_draw_and_train_the_same(micro_dir, tmp_path, rewards_module):
    """The extra rounds' problems and sampling seeds are functions of (seed, step, round)."""
    for name in ("a", "b"):
        train_mod.train(config(micro_dir, tmp_path / name, reward=f"{rewards_module}:odd_uniform"), log=quiet)
    a, b = metrics_of(tmp_path / "a"), metrics_of(tmp_path / "b")
    keys = ("loss", "loss/policy", "loss/verifier", "grad_norm", "reward", "entropy", "dynamic/rounds",
            "dynamic/filtered_frac", "dynamic/useful_groups")
    assert [{k: m[k] for k in keys} for m in a] == [{k: m[k] for k in keys} for m in b]
    wa, _ = load_model(tmp_path / "a" / "final")
    wb, _ = load_model(tmp_path / "b" / "final")
    for (name, p), q in zip(wa.state_dict().items(), wb.state_dict().values()):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("max_rounds", [1, 3])
def test_the_rounds_stop_at_the_bound_and_the_step_trains_what_there_is(micro_dir, tmp_path, rewards_module,
                                                                       recorded, max_rounds):
    """A constant reward: no group is ever useful, so every round is drawn, the policy term is
    empty (loss 0) and the verifier still trains on every row."""
    out = tmp_path / "run"
    train_mod.train(config(micro_dir, out, steps=1, max_sampling_rounds=max_rounds,
                           reward=f"{rewards_module}:constant"), log=quiet)
    (m,) = metrics_of(out)
    assert (m["dynamic/rounds"], m["dynamic/useful_groups"], m["dynamic/filtered_frac"]) == (max_rounds, 0, 1.0)
    assert m["loss/policy"] == 0.0 and m["loss/verifier"] > 0
    samples = recorded[0]["samples"]
    assert len(samples) == max_rounds * 2 * GROUP_SIZE
    assert all(s.token_weight == 0.0 for s in samples)
    assert all(s.label_weight == pytest.approx(1 / len(samples)) for s in samples)  # one class: the mean


def test_without_uniform_groups_it_changes_nothing(micro_dir, tmp_path, rewards_module):
    """Every group varied: one round, every row a policy row, the run equal to one without the
    option, metric for metric and weight for weight (and without it: no dynamic/* columns)."""
    reward = f"{rewards_module}:varied"
    train_mod.train(config(micro_dir, tmp_path / "off", dynamic_sampling=False, reward=reward), log=quiet)
    train_mod.train(config(micro_dir, tmp_path / "on", reward=reward), log=quiet)
    off, on = metrics_of(tmp_path / "off"), metrics_of(tmp_path / "on")
    keys = ("loss", "loss/policy", "loss/verifier", "grad_norm", "reward", "num_train_tokens")
    assert [{k: m[k] for k in keys} for m in off] == [{k: m[k] for k in keys} for m in on]
    assert all(not any(k.startswith("dynamic/") for k in m) for m in off)
    columns = [(m["dynamic/rounds"], m["dynamic/useful_groups"], m["dynamic/filtered_frac"]) for m in on]
    assert columns == [(1, 2, 0.0)] * 2
    wa, _ = load_model(tmp_path / "off" / "final")
    wb, _ = load_model(tmp_path / "on" / "final")
    for (name, p), q in zip(wa.state_dict().items(), wb.state_dict().values()):
        assert torch.equal(p, q), name


def test_useful_groups_need_two_different_valid_rewards():
    rewards = [1.0, 1.0, 1.0, 1.0,  0.0, None, 1.0, 0.0,  None, 1.0, None, None,  None, None, None, None,
               0.0, 0.0, 0.0, 0.5]
    assert dynamic_sampling.useful_groups(rewards, 4) == [False, True, False, False, True]


def test_a_rounds_problems_are_a_function_of_seed_step_and_round(micro_dir, tmp_path):
    problems = setup.load_training_problems(config(micro_dir, tmp_path))
    draw = dynamic_sampling.problems_for_round
    assert draw(problems, 5, 0, 3, 7) == problems_for_step(problems, 5, 3, 7)
    assert draw(problems, 5, 1, 3, 7) == draw(problems, 5, 1, 3, 7)
    ids = {tuple(p.id for p in draw(problems, 5, r, 3, 7)) for r in range(3)}
    ids |= {tuple(p.id for p in draw(problems, 6, 1, 3, 7)), tuple(p.id for p in draw(problems, 5, 1, 3, 8))}
    assert len(ids) == 5  # each (step, round, seed) its own draw
    seeds = {dynamic_sampling.round_seed(7, 5, r) for r in range(3)}
    assert len(seeds) == 3 and dynamic_sampling.round_seed(7, 5, 0) == train_mod.step_seed(7, 5)


@pytest.mark.parametrize("overrides, message", [
    (dict(group_size=1), "--dynamic-sampling keeps groups whose rewards vary: it needs --group-size 2 or more"),
    (dict(max_sampling_rounds=0), "--max-sampling-rounds must be an int >= 1, got 0"),
    (dict(algo="vineppo"), "--dynamic-sampling with --algo vineppo"),
])
def test_bad_options_are_named(micro_dir, tmp_path, overrides, message):
    with pytest.raises(UserError, match=message):
        config(micro_dir, tmp_path, **overrides)


@pytest.mark.parametrize("loss_agg, policy_weights", [
    ("token-mean", [1 / 20] * 4),  # 1 / (3 + 5 + 4 + 8) tokens of the policy rows
    ("seq-mean", [1 / (3 * 4), 1 / (5 * 4), 1 / (4 * 4), 1 / (8 * 4)]),  # 1 / (length * 4 policy rows)
    ("constant", [1 / (16 * 4)] * 4),  # 1 / (max_new_tokens 16 * 4 policy rows)
])
def test_to_samples_normalizes_the_token_weights_over_the_policy_rows(loss_agg, policy_weights):
    """Hand-worked: groups 1 and 3 (of 3, size 2) are policy rows; group 2's rows weigh 0 as
    tokens but keep their labels, balanced over all six rows (4 Yes, 2 No)."""
    from types import SimpleNamespace

    from rlvfast.train.rollouts import to_samples

    cfg = TrainConfig(group_size=2, loss_agg=loss_agg, verifier_agg="balanced", max_new_tokens=16)
    lengths, rewards = [3, 5, 2, 7, 4, 8], [1.0, 0.0, 1.0, 1.0, 0.0, 1.0]
    completions = [SimpleNamespace(token_ids=list(range(n)), logprobs=torch.zeros(n)) for n in lengths]
    outputs = [SimpleNamespace(prompt_token_ids=[9, g], completions=completions[2 * g:2 * g + 2]) for g in range(3)]
    samples = to_samples(outputs, rewards, cfg, 1, 2, is_policy=[True, True, False, False, True, True])
    weights = [s.token_weight for s in samples]
    assert weights[2:4] == [0.0, 0.0]
    assert weights[:2] + weights[4:] == pytest.approx(policy_weights)
    # the Yes labels share 1/2 (1/8 each), the No labels the other 1/2 (1/4 each)
    assert [s.label_weight for s in samples] == pytest.approx([1 / 8, 1 / 4, 1 / 8, 1 / 8, 1 / 4, 1 / 8])


def test_a_resumed_run_draws_what_the_uninterrupted_one_draws(micro_dir, tmp_path, rewards_module):
    """No sampling state outside (seed, step, round): 2 steps then --resume to 4 equal 4 steps."""
    reward = f"{rewards_module}:odd_uniform"
    full, part = tmp_path / "full", tmp_path / "part"
    train_mod.train(config(micro_dir, full, steps=4, checkpoint_every=2, reward=reward), log=quiet)
    train_mod.train(config(micro_dir, part, steps=2, checkpoint_every=2, reward=reward), log=quiet)
    train_mod.train(config(micro_dir, part, steps=4, checkpoint_every=2, reward=reward, resume=True), log=quiet)
    keys = ("loss", "grad_norm", "reward", "dynamic/rounds", "dynamic/filtered_frac", "dynamic/useful_groups")
    a, b = metrics_of(full), metrics_of(part)
    assert [{k: m[k] for k in keys} for m in a] == [{k: m[k] for k in keys} for m in b]
    assert [m["step"] for m in b] == [1, 2, 3, 4]
    assert [m["dynamic/rounds"] for m in b[2:]] == [3, 2]  # the resumed steps draw extra rounds
    wa, _ = load_model(full / "final")
    wb, _ = load_model(part / "final")
    for (name, p), q in zip(wa.state_dict().items(), wb.state_dict().values()):
        assert torch.equal(p, q), name
