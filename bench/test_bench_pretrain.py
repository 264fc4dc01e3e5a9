"""Rebuild the shipped base model from scratch (`python -m rlvfast.pretrain` with the defaults),
time it, and check its quality against the shipped card.

Run: `python -m pytest bench/test_bench_pretrain.py --benchmark-only` (~9 minutes on 2 quiet
CPU cores: 508 s training + ~15 s evaluation in session 5). Not in the tests command: CI time.

The check: the rebuilt card's pass@1 on `test` and `hard` (400 problems x 4 samples, the card's
evaluation) within 4 sigma of the shipped card's, sigma = sqrt(2 p (1 - p) / 400): the standard
error of a difference of two 400-problem means, counting problems, not their correlated samples
(~0.14 on `test`, ~0.13 on `hard`), and the judge's AUC (its own P("Yes") on its own samples)
within AUC_TOLERANCE of the card's. This catches a broken recipe, not a small drift. On the
machine that built the shipped weights the rebuild is byte-identical (same code, seed and
thread count); whether it is goes to extra_info (`identical_weights`), as do the seconds, the
threads and the load average; the bytes are not asserted, since another CPU or thread count
rounds differently.
"""
from __future__ import annotations

import math
import os

import torch

from rlvfast.models import BASE_MODEL_DIR, read_card
from rlvfast.pretrain import pretrain
from rlvfast.train.warm_start import WarmStartConfig

AUC_TOLERANCE = 0.1  # the judge's AUC over 1600 correlated samples: ~0.02-0.03 standard error


def test_bench_rebuild_the_base(benchmark, tmp_path):
    shipped = read_card(BASE_MODEL_DIR)
    out = tmp_path / "base"
    num_problems = shipped["evaluation"]["num_problems"]
    card = benchmark.pedantic(lambda: pretrain(out, WarmStartConfig(), num_problems, "bench"), rounds=1,
                              iterations=1)
    benchmark.extra_info.update({
        "seconds_training": card["training"]["seconds"], "threads": torch.get_num_threads(),
        "load_average": os.getloadavg()[0],
        "identical_weights": (out / "model.safetensors").read_bytes() ==
        (BASE_MODEL_DIR / "model.safetensors").read_bytes()})
    for split in ("test", "hard"):
        p = shipped["evaluation"]["results"][split]["pass@1"]
        got = card["evaluation"]["results"][split]["pass@1"]
        benchmark.extra_info[f"pass@1 {split}"] = got
        sigma = math.sqrt(2 * p * (1 - p) / num_problems)
        assert abs(got - p) <= 4 * sigma, (split, got, p, sigma)
        auc, shipped_auc = (c["evaluation"]["results"][split]["verifier_auc"] for c in (card, shipped))
        benchmark.extra_info[f"judge AUC {split}"] = auc
        assert abs(auc - shipped_auc) <= AUC_TOLERANCE, (split, auc, shipped_auc)
