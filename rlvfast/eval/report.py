"""The printed forms of an evaluation, sharing one number format.

- `format_report`: the table `python -m rlvfast.eval` prints from its results dict
  (`scaling.summarize`): accuracy at k per method, compute efficiency, the verifier (and
  judge) as a classifier, sequential scaling, then one block per difficulty.
- `format_table`: the trainer's end-of-run table, one block per split from `samples.evaluate`
  summaries: pass@1 and verifier balanced accuracy from the start to the end, then majority /
  best-of-N / weighted at N = 1..n, and `BEST_OF_N_NOTE`.

Numbers: ratios with 3 decimals (`ratio`); `UNDEFINED` ("n/a") for a value with no meaning
(None or NaN: balanced accuracy or AUC with one class only, an efficiency ratio with nothing
to match) and `NOT_MEASURED` ("-") for one that was never computed. Formats only: computes
no metric.
"""
from __future__ import annotations

import math

UNDEFINED = "n/a"
NOT_MEASURED = "-"
BEST_OF_N_NOTE = ('best-of-N keeps the one sample with the highest P("Yes"): a verifier that does not rank '
                  f'solutions can put it below pass@1. "{NOT_MEASURED}": not measured; "{UNDEFINED}": undefined '
                  '(one class only).')


def ratio(value: float | None, missing: str = UNDEFINED) -> str:
    """A ratio with 3 decimals; `missing` for None or NaN (a ratio over an empty set)."""
    return missing if value is None or not math.isfinite(value) else f"{value:.3f}"


# ---------------------------------------------------------------------------- the eval command
def format_report(results: dict) -> str:
    """The printed table: accuracy at k per method, efficiency, verifier, sequential, per difficulty."""
    lines = [_format_block(results, "all problems")]
    for name, block in results.get("by_difficulty", {}).items():
        if len(results["by_difficulty"]) > 1:
            lines.append(_format_block(block, f"difficulty {name}"))
    return "\n\n".join(lines)


def ratio_cell(row: dict) -> str:
    """An efficiency row's ratio as printed: "2x", ">4x", or "n/a" (no ratio has meaning)."""
    return row["ratio_text"] if row["ratio_text"] == UNDEFINED else f"{row['ratio_text']}x"


def _format_block(block: dict, title: str) -> str:
    parallel = block["parallel"]
    ks = list(parallel["pass"])
    lines = [f"== {title}: {block['num_problems']} problems x {block['n']} samples "
             f"({block['mean_tokens_per_sample']:.1f} tokens/sample) ==",
             f"{'k':>16}" + "".join(f"{k:>8}" for k in ks)]
    lines += [f"{method:>16}" + "".join(f"{ratio(values[k]):>8}" for k in ks) for method, values in parallel.items()]
    for key, label in (("efficiency", "weighted"), ("judge_efficiency", "judge_weighted")):
        if key in block:
            lines.append(f"{'efficiency':>16}: majority k'/k to match {label}@k: "
                         + "  ".join(f"k={r['k']}: {ratio_cell(r)}" for r in block[key]))
    if "vs_baseline" in block:
        lines.append(f"{'vs baseline':>16}: baseline majority k'/k to match this weighted@k: "
                     + "  ".join(f"k={r['k']}: {ratio_cell(r)}" for r in block["vs_baseline"]["efficiency"]))
    lines += _classifier_lines(block)
    if "sequential" in block:
        lines += _sequential_lines(block["sequential"])
    return "\n".join(lines)


def _classifier_lines(block: dict) -> list[str]:
    """The verifier (and the judge) as classifiers of the samples; n/a centred in a number's width."""
    lines = []
    for key in ("verifier", "judge"):
        if key in block:
            v = block[key]
            cell = {name: f"{ratio(v[name]):^5}" for name in ("accuracy", "balanced_accuracy", "auc")}
            lines.append(f"{key:>16}: accuracy@{v['threshold']:g} {cell['accuracy']}  balanced "
                         f"{cell['balanced_accuracy']}  AUC {cell['auc']}  "
                         f"({v['num_correct']}/{v['num_samples']} samples correct)")
    return lines


def _sequential_lines(seq: dict) -> list[str]:
    lines = [f"{'length ' + L:>16}: weighted {row['accuracy']:.3f}  majority "
             f"{row['majority_accuracy']:.3f}  tokens/problem {row['mean_tokens']:.1f}"
             for L, row in seq["fixed"].items()]
    lines += [f"{'threshold ' + t:>16}: weighted {row['accuracy']:.3f}  tokens/problem "
              f"{row['mean_tokens']:.1f}  stops {row['stops']}" for t, row in seq["threshold"].items()]
    return lines


# ---------------------------------------------------------------------------- the trainer's table
def format_table(summary: dict) -> str:
    """The trainer's end-of-run table: one block per split of summary["eval"] (final numbers),
    with summary["warm_start"] (the starting point's pass@1 and balanced accuracy) beside
    them, then a note on reading it. A split without starting numbers prints "-" there."""
    lines = []
    for split, result in summary["eval"].items():
        warm = summary.get("warm_start", {}).get(split, {})
        unmeasured = UNDEFINED if warm else NOT_MEASURED  # a resumed run from an older checkpoint may lack them
        lines.append(f"== {split}: {result['num_problems']} held-out problems, {result['num_samples']} samples each ==")
        lines.append(f"pass@1: warm start {ratio(warm.get('pass@1'), unmeasured)} -> final "
                     f"{ratio(result['pass@1'])}   verifier balanced accuracy: warm start "
                     f"{ratio(warm.get('verifier_balanced_accuracy'), unmeasured)} "
                     f"-> final {ratio(result['verifier_balanced_accuracy'])}")
        ks = sorted({int(k.split("@")[1]) for k in result if k.startswith("majority@")})
        lines.append("N          " + "".join(f"{k:>8}" for k in ks))
        for method in ("majority", "best_of_n", "weighted"):
            lines.append(f"{method:<11}" + "".join(f"{ratio(result[f'{method}@{k}']):>8}" for k in ks))
    lines.append(BEST_OF_N_NOTE)
    return "\n".join(lines)
