"""PNG plots of `rlvfast.eval.scaling` results (matplotlib, Agg backend: no display needed).

`plot_parallel`: accuracy against k (log2 axis), one line per method; `plot_panels`: several
such axes side by side (the comparison of two runs: one panel per split). `plot_sequential`:
accuracy against mean tokens per problem, fixed budgets as a line and threshold policies as
points. Reads the results dict only; computes nothing.
"""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: files only, never a window
import matplotlib.pyplot as plt  # noqa: E402

_STYLE = {"pass": ("pass@k", "k:", "o"), "majority": ("majority", "C0-", "s"),
          "best_of_n": ("best-of-n (verifier)", "C2--", "^"), "weighted": ("weighted (verifier)", "C3-", "D"),
          "judge_best_of_n": ("best-of-n (LLM judge)", "C4--", "v"),
          "judge_weighted": ("weighted (LLM judge)", "C1-", "P"),
          "baseline majority": ("baseline: majority", "C0:", "s"),
          "baseline best_of_n": ("baseline: best-of-n", "C2:", "^"),
          "baseline weighted": ("baseline: weighted", "C3:", "D")}


def plot_parallel(parallel: dict[str, dict[str, float]], path: str | os.PathLike, title: str = "") -> Path:
    """Accuracy at k for each method on a log2 k axis; returns the written path."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    _draw_parallel(ax, parallel)
    return _finish(fig, ax, path, "samples per problem k", title or "Accuracy against parallel samples")


def plot_panels(panels: dict[str, dict[str, dict[str, float]]], path: str | os.PathLike,
                labels: dict[str, str] | None = None) -> Path:
    """One `plot_parallel` axes per panel (title -> method -> {k: accuracy}), side by side;
    `labels` renames curves in the legends (method -> label). Returns the written path."""
    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.4), dpi=110, squeeze=False)
    for ax, (title, parallel) in zip(axes[0], panels.items()):
        _draw_parallel(ax, parallel, labels or {})
        _decorate(ax, "samples per problem N", title)
    return _save(fig, path)


def _draw_parallel(ax, parallel: dict[str, dict[str, float]], labels: dict[str, str] | None = None) -> None:
    """One line per method (style from `_STYLE`), k on a log2 axis with a tick at each k."""
    for method, values in parallel.items():
        label, style, marker = _STYLE.get(method, (method, "-", "o"))
        ks = [int(k) for k in values]
        ax.plot(ks, [values[str(k)] for k in ks], style, marker=marker, label=(labels or {}).get(method, label))
    ax.set_xscale("log", base=2)
    ticks = sorted({int(k) for values in parallel.values() for k in values})
    ax.set_xticks(ticks, [str(k) for k in ticks])


def plot_sequential(sequential: dict, path: str | os.PathLike, title: str = "") -> Path:
    """Weighted-vote accuracy against mean tokens per problem: fixed budgets and thresholds."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    fixed = sequential["fixed"]
    xs = [row["mean_tokens"] for row in fixed.values()]
    ax.plot(xs, [row["accuracy"] for row in fixed.values()], "C3-", marker="D", label="fixed length (weighted)")
    ax.plot(xs, [row["majority_accuracy"] for row in fixed.values()], "C0--", marker="s",
            label="fixed length (majority)")
    for x, (length, row) in zip(xs, fixed.items()):
        ax.annotate(length, (x, row["accuracy"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    for i, (threshold, row) in enumerate(sequential["threshold"].items()):
        ax.plot([row["mean_tokens"]], [row["accuracy"]], linestyle="none", marker="*", markersize=12,
                color=f"C{(i + 4) % 10}", label=f"stop at confidence >= {threshold}")
    return _finish(fig, ax, path, "tokens generated per problem (all samples)", title or "Sequential scaling")


def _finish(fig, ax, path: str | os.PathLike, xlabel: str, title: str) -> Path:
    """Labels (accuracy on y), grid and legend, then the PNG at `path`; returns the path."""
    _decorate(ax, xlabel, title)
    return _save(fig, path)


def _decorate(ax, xlabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path
