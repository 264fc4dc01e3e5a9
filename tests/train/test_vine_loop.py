"""`--algo vineppo` in the trainer: the per-token advantages that reach the loss rows on a
hand-worked step (scripted rollouts and continuations, a reward on the whole solution), the
verifier rows equal GRPO's, one real step logs sane vine/* metrics, resume keeps the vine
options. Micro model (1 layer, hidden 32); the pure functions are in test_vine.py."""
import json
import math

import pytest
import torch

from rlvfast import Sampler
from rlvfast.cli import UserError
from rlvfast.models import load_model
from rlvfast.sampler import Completion, RequestOutput
from rlvfast.tasks.problems import Problem
from rlvfast.train import checkpoint as ckpt
from rlvfast.train import loop as train_mod
from rlvfast.train.config import TrainConfig
from rlvfast.train.rollouts import step_seed

K = 4
# One problem, two rollouts (char-level tokenizer: one token per character, then the EOS).
# Rollout 0: steps "a=1\n" (4 tokens), "b=2\n" (4), "X" + EOS (2); rollout 1: "a=1\n", "Y" + EOS.
ROLLOUTS = ["a=1\nb=2\nX", "a=1\nY"]
# The continuations from each state (rollout, boundary); rollout 1's states are rollout 0's
# (s_0, and "a=1\n" at 4), so they are continued once. A solution is right when it starts with
# "a=1\n" and ends with "X": "X" alone from s_0 is wrong, from "a=1\n" right (graded whole).
CONTINUATIONS = {(0, 0): ["a=1\nb=2\nX", "X", "a=1\nX", "Z"],   # V(s_0) = 2/4
                 (0, 4): ["b=2\nX", "X", "X", "Y"],              # V("a=1\n") = 3/4
                 (0, 8): ["Y", "Y", "Y", "X"]}                   # V("a=1\nb=2\n") = 1/4
# rollout 0 (reward 1): values 0.5, 0.75, 0.25, 1 -> step advantages 0.25, -0.5, 0.75
# rollout 1 (reward 0): values 0.5, 0.75, 0 -> step advantages 0.25, -0.75
EXPECTED = [0.25] * 4 + [-0.5] * 4 + [0.75] * 2 + [0.25] * 4 + [-0.75] * 2


def whole_solution_reward(prompts, completions, completion_ids, **columns):
    return [float(text.startswith("a=1\n") and text.endswith("X")) for text in completions]


def config(micro_dir, out, **overrides) -> TrainConfig:
    values = dict(model=str(micro_dir), out=str(out), steps=2, prompts_per_step=2, group_size=4, max_new_tokens=8,
                  micro_batch=5, eval_problems=0, verify_prompt="\nOK?\n", checkpoint_every=1, lr=1e-2, warmup=0,
                  lr_schedule="constant", algo="vineppo", vine_samples=2)
    values.update(overrides)
    return TrainConfig(**values)


def completion(tok, text: str, eos: bool = True) -> Completion:
    ids = tok.encode(text, add_special_tokens=False) + ([tok.eos_token_id] if eos else [])
    return Completion(text, ids, torch.full((len(ids),), -1.0), "stop" if eos else "length")


class Script:
    """The micro model's Sampler with generate() and continue_from() scripted; records their calls."""

    def __init__(self, model, tok):
        self.sampler = Sampler(model, tok, verify_prompt="\nOK?\n")
        self.tok, self.calls = tok, []
        self.sampler.generate = self.generate
        self.sampler.continue_from = self.continue_from

    def generate(self, prompts, params, score=True):
        ids = self.tok.encode(prompts[0], add_special_tokens=False)
        self.rollout_seed, self.prompt_ids = params.seed, ids
        return [RequestOutput(prompts[0], ids, [completion(self.tok, t) for t in ROLLOUTS])]

    def continue_from(self, prompts, rollouts, boundaries, params, max_solution_tokens=None):
        self.calls.append((boundaries, params, max_solution_tokens))
        return [[RequestOutput(None, prompts[i] + rollouts[i].token_ids[:b],
                               [completion(self.tok, t) for t in CONTINUATIONS[i, b]]) for b in bounds]
                for i, bounds in enumerate(boundaries)]


def scripted_step(micro_dir, tmp_path, monkeypatch, reward_fn=whole_solution_reward, **overrides):
    """One rl_step on the scripted rollouts: (its metrics, the loss rows of its update, the Script)."""
    model, tok = load_model(micro_dir)
    script = Script(model, tok)
    cfg = config(micro_dir, tmp_path, group_size=2, prompts_per_step=1, vine_samples=K, max_new_tokens=12,
                 micro_batch=8, **overrides)
    rows = []
    real_build_rows = train_mod.build_rows
    monkeypatch.setattr(train_mod, "build_rows", lambda *a, **kw: rows.append(real_build_rows(*a, **kw)) or rows[-1])
    run = train_mod.Run(cfg, model, tok, script.sampler, torch.optim.AdamW(model.parameters(), lr=1e-3), None,
                        reward_fn, cfg.loss_config(), None, torch.device("cpu"))
    metrics, result = train_mod.rl_step(run, [Problem("Compute 1+2.", "3", "p0")], 0)
    assert not result["skipped"]
    return metrics, rows, script


def test_lambda_zero_vineppo_is_plain_vineppo_with_hand_worked_advantages(micro_dir, tmp_path, monkeypatch):
    metrics, (rows,), script = scripted_step(micro_dir, tmp_path, monkeypatch, verifier_coef=0.0)
    assert torch.equal(rows.advantages, torch.tensor(EXPECTED))
    assert not rows.verifier_weights.any()  # lambda = 0: no verifier rows
    assert rows.input_ids.shape[1] == len(script.prompt_ids) + len(ROLLOUTS[0]) + 1  # [prompt, completion] only
    ((boundaries, params, max_solution_tokens),) = script.calls
    assert boundaries == [[0, 4, 8], []]  # rollout 1's states are rollout 0's: continued once
    assert (params.n, params.seed, max_solution_tokens) == (K, script.rollout_seed + 1, 12)
    assert script.rollout_seed == step_seed(0, 0)
    assert metrics["vine/value_step_0"] == 0.5 and metrics["vine/value_step_1"] == 0.75
    assert metrics["vine/value_step_2"] == (0.25 + 0.0) / 2 and metrics["vine/value_step_3"] == 1.0
    assert metrics["vine/steps_per_solution"] == 2.5 and metrics["vine/zero_advantage_frac"] == 0.0
    assert metrics["vine/states"] == 3 and metrics["reward"] == 0.5
    assert 0.0 < metrics["vine/mc_time_share"] < 1.0


def test_a_cap_on_steps_gives_later_states_the_final_reward(micro_dir, tmp_path, monkeypatch):
    _, (rows,), script = scripted_step(micro_dir, tmp_path, monkeypatch, verifier_coef=0.0, vine_max_steps=2)
    assert script.calls[0][0] == [[0, 4], []]
    # rollout 0: values 0.5, 0.75, 1 (not estimated: its reward), 1 -> 0.25, 0.25, 0
    assert torch.equal(rows.advantages, torch.tensor([0.25] * 8 + [0.0] * 2 + EXPECTED[10:]))


def test_none_rewards_count_in_no_value_and_train_nothing(micro_dir, tmp_path, monkeypatch):
    def none_for_y(prompts, completions, completion_ids, **columns):
        return [None if text == "a=1\nY" else r for text, r in
                zip(completions, whole_solution_reward(prompts, completions, completion_ids))]

    _, (rows,), script = scripted_step(micro_dir, tmp_path, monkeypatch, reward_fn=none_for_y, verifier_coef=0.0)
    assert script.calls[0][0] == [[0, 4, 8], []]
    # rollout 0: V("a=1\n") = 3/3 (its continuation "Y" gets None); rollout 1 (None): zeros, weight 0
    assert torch.equal(rows.advantages, torch.tensor([0.5] * 4 + [-0.75] * 4 + [0.75] * 2 + [0.0] * 6))
    assert rows.policy_weights[:10].gt(0).all() and not rows.policy_weights[10:].any()


def test_a_state_whose_continuations_all_get_none_takes_its_rollouts_reward():
    from rlvfast.train.rollouts import _per_state

    # rollout 0: s_0 has one reward, s_4 none (-> its reward 0.0); rollout 1 (reward None) continues nothing
    assert _per_state([1.0, None, None, None], [[0, 4], []], [0.0, None], 2) == [[[1.0], [0.0]], []]


def test_verifier_rows_are_grpos(micro_dir, tmp_path, monkeypatch):
    _, (vine_rows,), _ = scripted_step(micro_dir, tmp_path / "vine", monkeypatch, verifier_coef=0.5)
    _, (grpo_rows,), _ = scripted_step(micro_dir, tmp_path / "grpo", monkeypatch, verifier_coef=0.5, algo="grpo")
    for name in ("input_ids", "attention_mask", "policy_index", "policy_targets", "policy_weights",
                 "verifier_index", "verifier_targets", "verifier_weights"):
        assert torch.equal(getattr(vine_rows, name), getattr(grpo_rows, name)), name
    assert vine_rows.verifier_weights.tolist() == [0.5, 0.5]  # balanced: one Yes, one No
    assert grpo_rows.advantages.unique().numel() == 2 and vine_rows.advantages.unique().numel() == 4


@pytest.fixture()
def parity(tmp_path, monkeypatch):
    """--reward: 1 when the sampled ids sum to an even number (varied rewards from a random model)."""
    (tmp_path / "rlvfast_vine_rewards.py").write_text(
        "def parity(prompts, completions, completion_ids, **columns):\n"
        "    return [float(sum(ids) % 2 == 0) for ids in completion_ids]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "rlvfast_vine_rewards:parity"


def quiet(*args):
    pass


def test_one_real_step_logs_sane_vine_metrics(micro_dir, tmp_path, parity):
    out = tmp_path / "run"
    train_mod.train(config(micro_dir, out, steps=1, reward=parity, seed=1), log=quiet)
    (m,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert not m["skipped"] and math.isfinite(m["loss/policy"])
    assert 0.0 < m["vine/mc_time_share"] < 1.0 and m["time/mc_sampling"] > 0
    assert 1.0 <= m["vine/steps_per_solution"] <= 8.0  # at most one step per token
    assert 0.0 <= m["vine/zero_advantage_frac"] <= 1.0
    values = [v for k, v in m.items() if k.startswith("vine/value_step_")]
    assert values and all(0.0 <= v <= 1.0 for v in values)
    assert 2 <= m["vine/states"] <= 8 * 8  # s_0 of each problem at least; at most one per token and rollout
    assert m["vine/grader_timeouts"] == 0 and m["vine/grader_errors"] == 0


def test_resume_keeps_the_vine_options(micro_dir, tmp_path, parity):
    reward = parity
    full, part = tmp_path / "full", tmp_path / "part"
    train_mod.train(config(micro_dir, full, steps=2, reward=reward, vine_max_steps=3), log=quiet)
    train_mod.train(config(micro_dir, part, steps=1, reward=reward, vine_max_steps=3), log=quiet)
    saved = ckpt.load_trainer_state(ckpt.latest_checkpoint(part))["config"]
    assert (saved["algo"], saved["vine_samples"], saved["vine_max_steps"]) == ("vineppo", 2, 3)
    with pytest.raises(UserError, match=r"--vine-samples 3 \(checkpoint: 2\).*--vine-max-steps 0 \(checkpoint: 3\)"):
        train_mod.train(config(micro_dir, part, steps=2, reward=reward, resume=True, vine_samples=3), log=quiet)
    train_mod.train(config(micro_dir, part, steps=2, reward=reward, resume=True, vine_max_steps=3), log=quiet)
    wa, _ = load_model(full / "final")
    wb, _ = load_model(part / "final")
    for (name, p), q in zip(wa.state_dict().items(), wb.state_dict().values()):
        assert torch.equal(p, q), name


def test_bad_vine_options_name_the_value(micro_dir, tmp_path):
    with pytest.raises(UserError, match="--vine-samples must be an int >= 1, got 0"):
        config(micro_dir, tmp_path, vine_samples=0)
    with pytest.raises(UserError, match="--vine-max-steps must be an int >= 0, got -1"):
        config(micro_dir, tmp_path, vine_max_steps=-1)
