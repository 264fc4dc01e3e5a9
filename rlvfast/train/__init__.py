"""RL^V training: `python -m rlvfast.train`.

`config` (every option, validated, and the CLI), `loop` (the run, top to bottom: train ->
rl_step -> update), `setup` (device, data, reward function, models, optimizer, resume checks),
`rollouts` (the problem order per step, rewards, samples, step metrics), `loss` (the unified
loss J = J_RL + lambda * J_verify and its rows), `forward` (the packed training forward and its
read plan), `heads` (lm head weight, P("Yes"), reference log-probs), `metrics` (metrics.jsonl
and the step line), `report` (the end-of-run table), `compare` (the base method and RL^V in one
process, and their comparison), `warm_start` (the tiny model's supervised
start), `checkpoint` (atomic checkpoints and resume), `run_dir` (the --out lock and the fresh /
resume / overwrite rule). Uses the sampler, the tasks and the evaluation through their public
functions.
"""
from rlvfast.train.config import TrainConfig, parse_config
from rlvfast.train.loop import main, train

__all__ = ["TrainConfig", "main", "parse_config", "train"]
