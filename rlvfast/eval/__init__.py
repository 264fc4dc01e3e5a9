"""Test-time scaling: `python -m rlvfast.eval`.

`voting` (majority, verifier-weighted, Best-of-N, pass@k), `scaling` (accuracy at k over random
subsets, compute efficiency, verifier metrics, sequential scaling), `plots`, and `run` (the
command: sample, score, grade, resume, report). Uses the sampler and the tasks through their
public functions; knows nothing of training.
"""
