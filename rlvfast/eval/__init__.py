"""Test-time scaling: `python -m rlvfast.eval`, and the evaluation the trainer's table runs.

`voting` (majority, verifier-weighted, Best-of-N, pass@k), `scaling` (accuracy at k over random
subsets, compute efficiency, verifier metrics, sequential scaling: the math only), `samples`
(the one evaluation path: sample with a Sampler, grade, records, Pools; `python -m rlvfast.eval`
and the trainer's end-of-run table both run it), `report` (the printed forms: the eval table
and the trainer's per-split table), `compare` (two runs side by side: votes, efficiency, a paired
bootstrap, its table and plot; the trainer's comparison and `--baseline`), `storage` (files in
OUT/), `plots`, `options` (the flags)
and `run` (the command: sample, judge, budgets, resume, report). Uses the sampler and the
tasks through their public functions; imports nothing from training.
"""
