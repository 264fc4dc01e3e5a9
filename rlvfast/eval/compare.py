"""Two runs compared the paper's way (arXiv 2505.04842): RL^V (`rlv`) against the base method
(`base_method`, lambda = 0), and optionally the base model both started from (`base_model`: its
own P("Yes") is the LLM-as-a-judge baseline).

Per split (`compare`): pass@1, the verifier's balanced accuracy and AUC of each; majority,
best-of-N and weighted voting at N = 1, 2, 4, ..., n of the two runs; the compute-efficiency
factor (for each k, the smallest k' at which the base method's majority@k' reaches RL^V's
weighted@k: `scaling.efficiency` on a joint dict); and a paired bootstrap 95% interval of RL^V's
weighted@n minus the base method's majority@n. The bootstrap resamples problems with
replacement; a problem's vote is over all its n samples, by `voting.weighted_index` /
`voting.majority_index` (so ties break as in every other vote, and the mean of a vector is
the table's @n value, the only subset of size n being all of them).

`format_comparison` prints it, `plot_comparison` draws accuracy against N (one panel per split).
Used by `python -m rlvfast.train` (both runs in one process) and `python -m rlvfast.eval
--baseline` (two finished evaluations, problems matched by id). No sampling, grading or files
other than the PNG here.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rlvfast.eval.report import BEST_OF_N_NOTE, NOT_MEASURED, ratio, ratio_cell
from rlvfast.eval.samples import VOTE_METHODS, short_summary
from rlvfast.eval.scaling import Pool, efficiency
from rlvfast.eval.voting import majority_index, weighted_index

NUM_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
LEVEL = 0.95
ROLES = ("base_model", "base_method", "rlv")
NAMES = {"base_model": "base model", "base_method": "base method", "rlv": "RL^V"}
_CLASSIFIER_ROWS = (("pass@1", "pass@1"), ("verifier_balanced_accuracy", "verifier balanced acc."),
                    ("verifier_auc", "verifier AUC"))


@dataclass(slots=True)
class Evaluated:
    """One model's evaluation on one split: the short summary (`samples.short_summary`:
    pass@1, verifier_*, `<method>@<k>`, num_problems, num_samples) and its problems' Pools."""
    summary: dict
    pools: list[Pool]


# ----------------------------------------------------------------------------- the math
def vote_correct(pools: Sequence[Pool], method: str) -> np.ndarray:
    """Per problem, 1.0 when the vote ("majority" or "weighted") over all its samples is right."""
    index_fns = {"majority": lambda p: majority_index(p.keys), "weighted": lambda p: weighted_index(p.keys, p.scores)}
    if method not in index_fns:
        raise ValueError(f"vote_correct: method must be one of {sorted(index_fns)}, got {method!r}")
    winners = [index_fns[method](p) for p in pools]
    return np.array([float(i is not None and p.correct[i]) for p, i in zip(pools, winners)])


def paired_bootstrap(ours: Sequence[float], theirs: Sequence[float], num_resamples: int = NUM_RESAMPLES,
                     seed: int = BOOTSTRAP_SEED, level: float = LEVEL) -> dict:
    """mean(ours - theirs) over problems and its percentile interval at `level`, from
    `num_resamples` resamples of the problems with replacement (the same ones for both sides)."""
    if len(ours) != len(theirs) or len(ours) == 0:
        raise ValueError(f"paired_bootstrap needs two equal-length non-empty vectors, got {len(ours)} and "
                         f"{len(theirs)}")
    diff = np.asarray(ours, dtype=np.float64) - np.asarray(theirs, dtype=np.float64)  # (P,)
    rng = np.random.default_rng(seed)
    means = np.empty(num_resamples)
    chunk = max(1, 2_000_000 // diff.size)  # resamples per draw: ~16 MB of indices at most
    for start in range(0, num_resamples, chunk):
        rows = min(chunk, num_resamples - start)
        means[start:start + rows] = diff[rng.integers(0, diff.size, size=(rows, diff.size))].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return {"estimate": float(diff.mean()), "low": float(low), "high": float(high), "level": level,
            "num_resamples": num_resamples, "num_problems": int(diff.size), "seed": seed}


def curves(summary: dict) -> dict[str, dict[str, float]]:
    """A short summary's votes as `scaling` curves: method -> {str(k): accuracy}."""
    return {m: {key.split("@")[1]: value for key, value in summary.items() if key.startswith(f"{m}@")}
            for m in VOTE_METHODS}


def efficiency_rows(base_curves: dict, rlv_curves: dict, n: int) -> list[dict]:
    """For each k: the smallest k' with the base method's majority@k' >= RL^V's weighted@k."""
    return efficiency({"majority": base_curves["majority"], "weighted": rlv_curves["weighted"]}, n)


def compare(base_method: dict[str, Evaluated], rlv: dict[str, Evaluated],
            base_model: dict[str, dict] | None = None) -> dict:
    """split -> both runs' summaries, the efficiency rows and the bootstrap, keyed by role:
    {"base_model"?, "base_method", "rlv", "efficiency", "bootstrap"} -> split -> ..."""
    out: dict = {"base_model": base_model} if base_model is not None else {}
    out |= {"base_method": {}, "rlv": {}, "efficiency": {}, "bootstrap": {}}
    for split, ours in rlv.items():
        theirs = base_method[split]
        n = ours.summary["num_samples"]
        if theirs.summary["num_samples"] != n:
            raise ValueError(f"split {split!r}: {n} samples per problem against {theirs.summary['num_samples']}")
        out["base_method"][split], out["rlv"][split] = theirs.summary, ours.summary
        out["efficiency"][split] = efficiency_rows(curves(theirs.summary), curves(ours.summary), n)
        ours_pools, theirs_pools = paired_pools(ours.pools, theirs.pools)
        out["bootstrap"][split] = {"rlv": f"weighted@{n}", "base_method": f"majority@{n}",
                                   **paired_bootstrap(vote_correct(ours_pools, "weighted"),
                                                      vote_correct(theirs_pools, "majority"))}
    return out


def paired_pools(ours: Sequence[Pool], theirs: Sequence[Pool]) -> tuple[list[Pool], list[Pool]]:
    """Both runs' Pools of the same problems in the same order (matched by problem id)."""
    by_id = {p.problem_id: p for p in theirs}
    missing = [p.problem_id for p in ours if p.problem_id not in by_id]
    if missing or len(by_id) != len(ours):
        raise ValueError(f"the two runs hold different problems ({len(ours)} and {len(by_id)}; "
                         f"{len(missing)} of the first not in the second, e.g. {missing[:3]})")
    return list(ours), [by_id[p.problem_id] for p in ours]


def from_results(results: dict, pools: list[Pool]) -> Evaluated:
    """An evaluation of `python -m rlvfast.eval` (its results dict and Pools) as `Evaluated`."""
    return Evaluated(short_summary(results["parallel"], results["verifier"], results["num_problems"],
                                   results["n"]), pools)


# ----------------------------------------------------------------------------- the table and the PNG
def format_comparison(comparison: dict, names: dict[str, str] = NAMES) -> str:
    """The comparison table: one block per split, then `BEST_OF_N_NOTE`."""
    blocks = [_format_split(comparison, split, names) for split in comparison["rlv"]]
    return "\n\n".join(blocks + [BEST_OF_N_NOTE])


def _format_split(comparison: dict, split: str, names: dict[str, str]) -> str:
    rlv, base = comparison["rlv"][split], comparison["base_method"][split]
    start = (comparison.get("base_model") or {}).get(split, {})
    lines = [f"== {split}: {rlv['num_problems']} held-out problems, {rlv['num_samples']} samples each ==",
             f"{'':<24}" + "".join(f"{names[role]:>13}" for role in ROLES)]
    for key, label in _CLASSIFIER_ROWS:
        cells = [ratio(start[key]) if key in start else NOT_MEASURED, ratio(base[key]), ratio(rlv[key])]
        lines.append(f"{label:<24}" + "".join(f"{c:>13}" for c in cells))
    ks = list(curves(rlv)["majority"])
    lines.append(f"{'N':<24}" + "".join(f"{k:>8}" for k in ks))
    for role, summary in (("base_method", base), ("rlv", rlv)):
        for method, values in curves(summary).items():
            lines.append(f"{names[role] + ' ' + method:<24}" + "".join(f"{ratio(values[k]):>8}" for k in ks))
    lines.append(f"efficiency: {names['base_method']} majority k'/k to reach {names['rlv']} weighted@k: "
                 + "  ".join(f"k={r['k']}: {ratio_cell(r)}" for r in comparison["efficiency"][split]))
    b = comparison["bootstrap"][split]
    lines.append(f"{names['rlv']} {b['rlv']} - {names['base_method']} {b['base_method']}: {b['estimate']:+.3f}, "
                 f"{b['level']:.0%} interval [{b['low']:+.3f}, {b['high']:+.3f}] (paired bootstrap: "
                 f"{b['num_resamples']} resamples of the {b['num_problems']} problems)")
    return "\n".join(lines)


def plot_comparison(comparison: dict, path: str | os.PathLike, names: dict[str, str] = NAMES) -> Path:
    """Accuracy against N: majority, best-of-N and weighted of both runs, one panel per split."""
    from rlvfast.eval.plots import plot_panels

    panels = {}
    for split, rlv in comparison["rlv"].items():
        base = curves(comparison["base_method"][split])
        panels[f"{split}: {rlv['num_problems']} problems"] = (
            {f"baseline {m}": values for m, values in base.items()} | curves(rlv))
    labels = {f"baseline {m}": f"{names['base_method']}: {m}" for m in VOTE_METHODS}
    labels |= {m: f"{names['rlv']}: {m}" for m in VOTE_METHODS}
    return plot_panels(panels, path, labels)
