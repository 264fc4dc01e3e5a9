"""RL^V training: `python -m rlvfast.train`.

`config` (every option, validated, and the CLI), `loop` (the run, top to bottom), `loss` (the
unified loss J = J_RL + lambda * J_verify and its rows), `forward` (the packed training forward),
`warm_start` (the tiny model's supervised start), `checkpoint` (atomic checkpoints and resume),
`run_dir` (the --out lock and the fresh / resume / overwrite rule). Uses the sampler, the tasks
and the evaluation through their public functions.
"""
from rlvfast.train.config import TrainConfig, parse_config
from rlvfast.train.loop import main, train

__all__ = ["TrainConfig", "main", "parse_config", "train"]
