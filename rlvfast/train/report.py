"""The end-of-run table of `python -m rlvfast.train`: held-out synthetic problems sampled with
the trained model, graded, voted on, and printed per split (pass@1 of the start and the end,
the verifier's balanced accuracy, majority / best-of-N / weighted voting at N = 1..eval_samples).
"""
from __future__ import annotations

import math

from rlvfast.tasks.problems import Problem
from rlvfast.train.config import TrainConfig


def evaluate(sampler, problems: list[Problem], config: TrainConfig, grader, seed: int,
             num_samples: int | None = None) -> dict:
    """pass@1, verifier metrics and voting at N = 1, 2, 4, ... eval_samples on held-out problems."""
    from rlvfast import SamplingParams
    from rlvfast.sampler import format_prompt
    from rlvfast.eval.scaling import Pool, parallel_accuracy, verifier_metrics
    from rlvfast.eval.voting import normalize_answer

    prompts = [format_prompt(sampler.tokenizer, p.problem) for p in problems]
    num_samples = num_samples or config.eval_samples
    params = SamplingParams(n=num_samples, max_tokens=config.max_new_tokens,
                            temperature=config.temperature, seed=seed)
    outputs = sampler.generate(prompts, params, score=True)
    pools, scores, labels = [], [], []
    for problem, output in zip(problems, outputs):
        results = grader.grade_batch([c.text for c in output.completions], [problem.answer] * len(output.completions))
        correct = [r.correct for r in results]
        pool_scores = [float(c.score) for c in output.completions]
        pools.append(Pool(problem.id, [normalize_answer(r.answer) for r in results], correct, pool_scores,
                          [len(c.token_ids) for c in output.completions]))
        scores += pool_scores
        labels += correct
    parallel = parallel_accuracy(pools, num_trials=100, seed=seed)
    verifier = verifier_metrics(scores, labels)
    summary = {"pass@1": parallel["pass"]["1"], "verifier_balanced_accuracy": verifier["balanced_accuracy"],
               "verifier_accuracy": verifier["accuracy"], "verifier_auc": verifier["auc"],
               "num_problems": len(problems), "num_samples": num_samples}
    for method, name in (("majority", "majority"), ("best_of_n", "best_of_n"), ("weighted", "weighted")):
        for k, value in parallel[method].items():
            summary[f"{name}@{k}"] = value
    return summary


def eval_problems(config: TrainConfig) -> dict[str, list[Problem]]:
    from rlvfast.tasks.synthetic import make_problems
    return {split: make_problems(config.eval_problems, split, seed=0) for split in config.eval_splits}


BEST_OF_N_NOTE = ('best-of-N keeps the one sample with the highest P("Yes"): a verifier that does not rank '
                  'solutions can put it below pass@1. "-": not measured; "n/a": undefined (one class only).')


def format_table(summary: dict) -> str:
    """The end-of-run table: one block per split, then a note on reading it."""
    lines = []
    for split, result in summary["eval"].items():
        warm = summary.get("warm_start", {}).get(split, {})
        unmeasured = "n/a" if warm else "-"  # a resumed run from an older checkpoint may lack them
        lines.append(f"== {split}: {result['num_problems']} held-out problems, {result['num_samples']} samples each ==")
        lines.append(f"pass@1: warm start {_fmt(warm.get('pass@1'), unmeasured)} -> final "
                     f"{_fmt(result['pass@1'])}   verifier balanced accuracy: warm start "
                     f"{_fmt(warm.get('verifier_balanced_accuracy'), unmeasured)} "
                     f"-> final {_fmt(result['verifier_balanced_accuracy'])}")
        ks = sorted({int(k.split("@")[1]) for k in result if k.startswith("majority@")})
        lines.append("N          " + "".join(f"{k:>8}" for k in ks))
        for method in ("majority", "best_of_n", "weighted"):
            lines.append(f"{method:<11}" + "".join(f"{_fmt(result[f'{method}@{k}']):>8}" for k in ks))
    lines.append(BEST_OF_N_NOTE)
    return "\n".join(lines)


def _fmt(value, missing: str = "n/a") -> str:
    """A ratio with 3 decimals; `missing` for None or NaN (a ratio over an empty set)."""
    return missing if value is None or not math.isfinite(value) else f"{value:.3f}"
