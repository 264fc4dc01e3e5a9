"""The command line of `python -m rlvfast.eval`: the flags, their checks and the defaults
that depend on other flags.

`parse_args` returns the resolved namespace or ends the command the way every other bad
input does: `rlvfast.eval: error: <what was wrong>` (after argparse's usage line), exit
status 2. A flag given where it does nothing is warned about (`rlvfast.eval: warning: ...`).
Not here: loading the data or the model (`rlvfast.eval.run`), files in OUT/.
"""
from __future__ import annotations

import argparse
import os
import sys

from rlvfast.cli import CommandParser

PROG = "rlvfast.eval"  # the name on every error, warning and interruption line
DESCRIPTION = "`python -m rlvfast.eval`: test-time scaling of one model on one data set."
# Defaults of flags that default to None, so that a flag given where it does nothing is warned about.
DEFAULT_MAX_TOKENS = 256
DEFAULT_NUM_PROBLEMS = 100
DEFAULT_JUDGE_MAX_TOKENS = 512
DEFAULT_THRESHOLD = [0.6]


def _lengths(text: str) -> list[int]:
    parts = [p for p in text.split(",") if p.strip()]
    try:
        values = sorted({int(p) for p in parts})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated token counts like 256,512, got {text!r}") from None
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError(f"expected positive token counts like 256,512, got {text!r}")
    return values


def _thresholds(text: str) -> list[float]:
    try:
        values = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected thresholds in [0, 1] like 0.6 or 0.5,0.8, got {text!r}") from None
    if not values or any(not 0.0 <= v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"expected thresholds in [0, 1] like 0.6 or 0.5,0.8, got {text!r}")
    return values


def _number(cast, is_ok, expected: str):
    """An argparse type: `cast(text)` that must satisfy `is_ok`, else an error naming the text."""
    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not is_ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    return parse


_positive_int = _number(int, lambda v: v >= 1, "a positive integer")
_unit_float = _number(float, lambda v: 0.0 < v <= 1.0, "a number in (0, 1]")
_non_negative_float = _number(float, lambda v: not v < 0, "a number >= 0")
_positive_float = _number(float, lambda v: v > 0, "a number > 0")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each default, except None: such a flag's help says what its absence means."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return action.help if action.default is None else super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(PROG, description=DESCRIPTION,
                formatter_class=_HelpFormatter)
    p.add_argument("--model", required=True,
                   help="Hugging Face model directory, .gguf file or hub id (org/name)")
    p.add_argument("--data", required=True,
                   help="a .jsonl, .json (one array of records) or .parquet (pip install 'rlvfast[parquet]') "
                        "file in MATH500, GSM8K, AIME24 or AMC23 format, a directory (a datasets save_to_disk "
                        "directory, pip install 'rlvfast[datasets]', or a hub-style folder of such files split "
                        "by file name: test.jsonl, data/test-00000-of-00001.parquet), or "
                        "synthetic[:test|hard|ops=N,digits=M]")
    p.add_argument("--data-split", default=None,
                   help="the split of a --data directory (default: test where there is one, else the only one)")
    p.add_argument("--problem-field", default=None,
                   help="the --data column holding the problem text (default: problem, or question)")
    p.add_argument("--answer-field", default=None,
                   help="the --data column holding the gold answer (default: answer, or a MATH solution's last "
                        "\\boxed{})")
    p.add_argument("--id-field", default=None,
                   help="the --data column holding a unique problem id (default: id, or unique_id, else FILE-ROW)")
    p.add_argument("--out", required=True, help="output directory (reused: finished problems are skipped)")
    p.add_argument("--n", type=_positive_int, default=64, help="samples per problem")
    p.add_argument("--max-tokens", "--max-new-tokens", dest="max_tokens", type=_positive_int, default=None,
                   help=f"new tokens per sample (default: {DEFAULT_MAX_TOKENS}; with --lengths, the largest length)")
    p.add_argument("--temperature", type=_non_negative_float, default=1.0, help="sampling temperature (0: greedy)")
    p.add_argument("--top-p", type=_unit_float, default=1.0, help="nucleus sampling mass")
    p.add_argument("--seed", type=int, default=0, help="sampling and subset seed")
    p.add_argument("--limit", type=_positive_int, default=None, help="evaluate the first K problems")
    p.add_argument("--num-problems", type=_positive_int, default=None,
                   help=f"problems drawn for synthetic data (default: {DEFAULT_NUM_PROBLEMS}; a --data file "
                        "is used whole: see --limit)")
    p.add_argument("--batch-problems", type=_positive_int, default=None,
                   help="problems per generate call (default: max(1, 64 // n), i.e. about 64 samples at once)")
    p.add_argument("--trials", type=_positive_int, default=100, help="random subsets per k (all when fewer exist)")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="torch intra-op threads (default: torch's choice; 1 is faster on a crowded CPU)")
    p.add_argument("--grade-timeout", "--grader-timeout", dest="grade_timeout", type=_positive_float, default=5.0,
                   help="seconds per grading")
    p.add_argument("--verify-prompt", default=None,
                   help="text between a solution and P(Yes) (\\n for a newline); default: the one in the "
                        "training run's summary.json beside the model directory, else the Sampler's default")
    p.add_argument("--baseline", default=None,
                   help="--out of another eval on the same problems and n (e.g. the base method): adds this "
                        "run's weighted@k against the baseline's majority@k (efficiency) and a joint plot")
    p.add_argument("--judge", action="store_true", help="also score every sample with the LLM-as-a-judge prompt")
    p.add_argument("--judge-max-tokens", type=_positive_int, default=None,
                   help=f"--judge: reasoning tokens before the judge's P(Yes) (default: {DEFAULT_JUDGE_MAX_TOKENS})")
    p.add_argument("--lengths", type=_lengths, default=None,
                   help="sequential scaling: token budgets, e.g. 256,512,1024 (the largest replaces --max-tokens)")
    p.add_argument("--threshold", type=_thresholds, default=None,
                   help="sequential scaling: weighted-vote confidence to stop at (comma-separated for several; "
                        f"default: {DEFAULT_THRESHOLD[0]:g})")
    return p


def _ignored_flags(args: argparse.Namespace) -> list[str]:
    """Warnings for flags given where they do nothing (their defaults are None until resolved)."""
    is_synthetic = args.data.startswith("synthetic")
    messages = []
    if args.num_problems is not None and not is_synthetic:
        messages.append(f"--num-problems {args.num_problems} applies to synthetic data only; --data {args.data!r} "
                        "is used whole (--limit K takes its first K problems)")
    if args.max_tokens is not None and args.lengths is not None and args.max_tokens != args.lengths[-1]:
        messages.append(f"--max-tokens {args.max_tokens} is replaced by the largest --lengths value, "
                        f"{args.lengths[-1]}")
    if args.threshold is not None and args.lengths is None:
        messages.append("--threshold applies to sequential scaling only; ignored without --lengths")
    if args.judge_max_tokens is not None and not args.judge:
        messages.append("--judge-max-tokens applies to the LLM judge only; ignored without --judge")
    return messages


DATA_OPTIONS = ("data_split", "problem_field", "answer_field", "id_field")


def _check_data(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--data exists (or is a synthetic split); the split and column options name something."""
    given = [name for name in DATA_OPTIONS if getattr(args, name) is not None]
    for name in given:
        if not getattr(args, name).strip():
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)!r}: empty")
    if args.data.startswith("synthetic"):
        from rlvfast.tasks.synthetic import parse_difficulty

        if given:
            parser.error(f"{', '.join('--' + n.replace('_', '-') for n in given)}: for a --data file or directory; "
                         f"synthetic data has no columns, and its split is --data synthetic:SPLIT")
        try:
            parse_difficulty(args.data.partition(":")[2] or "test")
        except ValueError as err:
            parser.error(f"--data {args.data!r}: {err}")
    elif not os.path.exists(args.data):
        parser.error(f"--data {args.data!r}: no such file or directory (or use synthetic[:split])")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags, checked (argparse's one-line error, exit 2) and resolved: defaults that
    depend on other flags filled in; a flag that would do nothing is warned about on stderr."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for warning in _ignored_flags(args):
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    args.max_tokens = args.lengths[-1] if args.lengths is not None else (args.max_tokens or DEFAULT_MAX_TOKENS)
    args.num_problems = args.num_problems or DEFAULT_NUM_PROBLEMS
    args.judge_max_tokens = args.judge_max_tokens or DEFAULT_JUDGE_MAX_TOKENS
    args.threshold = args.threshold or DEFAULT_THRESHOLD
    if args.batch_problems is None:
        args.batch_problems = max(1, 64 // args.n)
    if args.verify_prompt is not None:
        args.verify_prompt = args.verify_prompt.replace("\\n", "\n")
        if not args.verify_prompt.strip():
            parser.error(f"--verify-prompt {args.verify_prompt!r}: empty")
    _check_data(parser, args)
    if args.baseline is not None and not os.path.isfile(os.path.join(args.baseline, "results.json")):
        parser.error(f"--baseline {args.baseline!r}: no results.json there (run the baseline's eval first)")
    from rlvfast.models import is_local_path

    if is_local_path(args.model) and not os.path.exists(args.model):
        parser.error(f"--model {args.model!r}: no such file or directory (a hub id is org/name)")
    return args
