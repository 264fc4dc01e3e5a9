"""`python -m rlvfast.eval`: test-time scaling of one model on one data set.

Samples n solutions per problem with in-cache verifier scores and grades them
(`rlvfast.eval.samples`, the evaluation path the trainer's table uses too), appends every
sample to OUT/samples.jsonl (one problem at a time, flushed: a rerun with the same --out
skips finished problems), then writes OUT/results.json, PNG plots and a table: accuracy at k
for pass / majority / best-of-n / weighted, compute efficiency, verifier metrics, per
difficulty. Options: `--judge` (LLM-as-a-judge baseline scores) and `--lengths` (sequential
scaling with a confidence threshold).

This file is the command line, the judge and the length budgets, and the order of the run.
Elsewhere: the metric math (`rlvfast.eval.scaling`), the printed table (`rlvfast.eval.report`),
files in OUT/ (`rlvfast.eval.storage`), plots (`rlvfast.eval.plots`). Bad input (a flag, a
--data file, a --model that is not there, an --out or --baseline that does not match) ends
the command with one line, `rlvfast.eval: error: ...`, and exit status 2.

Judge: the same model gets a grading prompt (problem + solution, "grade it step by step"),
greedily writes up to --judge-max-tokens tokens of reasoning, and its score is P("Yes")
after the question "Is the answer correct (Yes/No)?" is appended to its own KV cache: a
second `Sampler` whose verification prompt is that question does it in one pass.

Sequential: samples are generated once at the largest length; the prefix of each sample at
a smaller budget L is its first L tokens (what a KV-cache continuation would have produced),
scored in the samples' own KV cache while they are generated (`generate(score_at=...)`;
`Sampler.score` re-encodes a prefix that has no such score) and graded only if it already
holds a `\\boxed{}` answer (an unfinished prefix has no answer). Tokens "spent" are counted as
a continuation would spend them (sum of min(len, L)), not what this evaluation spent to
measure them.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

from rlvfast.cli import EXIT_INTERRUPT, EXIT_USAGE, UserError, run_command
from rlvfast.eval.report import format_report
from rlvfast.eval.samples import GradedBatch, pool_from_records, sample_and_grade
from rlvfast.eval.scaling import efficiency, summarize
from rlvfast.eval.storage import (RUN_KEYS, check_run_config, load_baseline, read_samples, training_verify_prompt,
                                  write_outputs)
from rlvfast.tasks.problems import Problem

PROG = "rlvfast.eval"  # the name on every error, warning and interruption line

JUDGE_PROMPT = ("Below is a math problem and a proposed solution. Grade the solution step by step: "
                "check every step and the final answer.\n\nProblem: {problem}\n\nProposed solution:\n"
                "{solution}\n\nStep-by-step grading:")
JUDGE_QUESTION = "Is the answer correct (Yes/No)?"
# Defaults of flags that default to None, so that a flag given where it does nothing is warned about.
DEFAULT_MAX_TOKENS = 256
DEFAULT_NUM_PROBLEMS = 100
DEFAULT_JUDGE_MAX_TOKENS = 512
DEFAULT_THRESHOLD = [0.6]


# ---------------------------------------------------------------------------- arguments
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


class _Parser(argparse.ArgumentParser):
    """argparse whose error line names the command as its other errors do: `rlvfast.eval:
    error: ...` after the usage (which keeps `python -m rlvfast.eval`), exit status 2."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{PROG}: error: {message}\n")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each default, except None: such a flag's help says what its absence means."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return action.help if action.default is None else super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m rlvfast.eval", description=__doc__.split("\n\n")[0],
                formatter_class=_HelpFormatter)
    p.add_argument("--model", required=True,
                   help="Hugging Face model directory, .gguf file or hub id (org/name)")
    p.add_argument("--data", required=True,
                   help="a .jsonl, .json (one array of records) or .parquet (pip install 'rlvfast[parquet]') "
                        "file in MATH500, GSM8K, AIME24 or AMC23 format, or synthetic[:test|hard|ops=N,digits=M]")
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


def _check_data(parser: argparse.ArgumentParser, data: str) -> None:
    if data.startswith("synthetic"):
        from rlvfast.tasks.synthetic import parse_difficulty

        try:
            parse_difficulty(data.partition(":")[2] or "test")
        except ValueError as err:
            parser.error(f"--data {data!r}: {err}")
    elif not os.path.isfile(data):
        parser.error(f"--data {data!r}: no such file (or use synthetic[:split])")


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
    _check_data(parser, args.data)
    if args.baseline is not None and not os.path.isfile(os.path.join(args.baseline, "results.json")):
        parser.error(f"--baseline {args.baseline!r}: no results.json there (run the baseline's eval first)")
    from rlvfast.models import is_local_path

    if is_local_path(args.model) and not os.path.exists(args.model):
        parser.error(f"--model {args.model!r}: no such file or directory (a hub id is org/name)")
    return args


# ---------------------------------------------------------------------------- problems
def load_eval_problems(args: argparse.Namespace) -> list[Problem]:
    """The problems of --data: --num-problems synthetic ones, or the file's; the first --limit."""
    if args.data.startswith("synthetic"):
        from rlvfast.tasks.synthetic import make_problems

        split = args.data.partition(":")[2] or "test"
        problems = make_problems(args.num_problems, split, seed=0)
    else:
        from rlvfast.tasks.problems import DataError, load_problems

        try:
            problems = load_problems(args.data)
        except DataError as error:
            raise UserError(f"--data: {error}") from error
    problems = problems[: args.limit] if args.limit else problems
    if not problems:
        raise UserError(f"--data {args.data!r}: no problems to evaluate")
    return problems


# ---------------------------------------------------------------------------- sampling
class Evaluator:
    """Samples, scores and grades a batch of problems into sample records
    (`samples.sample_and_grade`), then adds judge scores and length budgets when asked."""

    def __init__(self, args: argparse.Namespace) -> None:
        from rlvfast.tasks.grading import Grader
        from rlvfast.models import load_model
        from rlvfast.sampler import Sampler, SamplingParams

        self.args = args
        try:
            self.model, self.tokenizer = load_model(args.model)
        except OSError as error:  # no such file, or a hub id that does not resolve (transformers)
            raise UserError(f"--model {args.model!r}: {error}") from error
        self.sampler = Sampler(self.model, self.tokenizer, verify_prompt=args.verify_prompt)
        self.grader = Grader(timeout=args.grade_timeout)
        self.judge = Sampler(self.model, self.tokenizer, verify_prompt=self._judge_question()) if args.judge else None
        self.params = SamplingParams(n=args.n, max_tokens=args.max_tokens, temperature=args.temperature,
                                     top_p=args.top_p, seed=args.seed)
        self.judge_params = SamplingParams(n=1, max_tokens=args.judge_max_tokens, temperature=0.0)
        self.num_model_calls = 0
        self.show_progress = sys.stderr.isatty()  # per-sample bars only on a terminal

    def _judge_question(self):
        from rlvfast.sampler import build_verify_prompt

        return build_verify_prompt(self.tokenizer, JUDGE_QUESTION)

    def run_batch(self, problems: list[Problem]) -> list[list[dict]]:
        """Records of each problem's n samples. A problem draws the same samples however the
        problems are batched (--batch-problems) and in a resumed run (see sample_and_grade)."""
        # each budget L < max_tokens: P("Yes") of the first L tokens, read in the samples' own KV cache
        budgets = [L for L in (self.args.lengths or ()) if L < self.args.max_tokens]
        batch = sample_and_grade(self.sampler, self.grader, problems, self.params, score_at=budgets,
                                 progress=self.show_progress)
        self.num_model_calls += 1
        if self.judge is not None:
            self._add_judge_scores(problems, batch.records)
        if self.args.lengths is not None:
            self._add_budgets(batch)
        return batch.by_problem()

    def _add_judge_scores(self, problems: list[Problem], records: list[dict]) -> None:
        from rlvfast.sampler import format_prompt

        by_id = {p.id: p for p in problems}
        prompts = [format_prompt(self.tokenizer, JUDGE_PROMPT.format(problem=by_id[r["problem_id"]].problem,
                                                                     solution=r["text"])) for r in records]
        outputs = self.judge.generate(prompts, self.judge_params, score=True, progress=self.show_progress)
        self.num_model_calls += 1
        for record, out in zip(records, outputs):
            record["judge_score"] = float(out.completions[0].score)
            record["judge_text"] = out.completions[0].text

    def _add_budgets(self, batch: GradedBatch) -> None:
        """For each budget L: the first L tokens of each sample, graded and scored
        (record["budgets"][str(L)]); a sample that finished within L is itself."""
        for L in self.args.lengths:
            cut = [j for j, c in enumerate(batch.completions) if len(c.token_ids) > L]
            entries = self._cut_entries(batch, L, cut)
            for j, record in enumerate(batch.records):
                entry = entries.get(j) or {key: record[key] for key in ("answer", "correct", "score", "num_tokens")}
                record.setdefault("budgets", {})[str(L)] = entry

    def _cut_entries(self, batch: GradedBatch, L: int, cut: list[int]) -> dict[int, dict]:
        """Budget entries of the samples longer than L. The scores come from
        generate(score_at=...) (in-cache, as a continuation would read them); a cut prefix
        without one is re-encoded with `Sampler.score`."""
        from rlvfast.tasks.grading import last_boxed

        completions, n = batch.completions, batch.n
        prefixes = {j: list(completions[j].token_ids[:L]) for j in cut}
        texts = {j: self.tokenizer.decode(prefixes[j], skip_special_tokens=True) for j in cut}
        scores = {j: float(completions[j].budget_scores[L]) for j in cut if L in completions[j].budget_scores}
        missing = [j for j in cut if j not in scores]
        if missing:  # token in, token out: the prefix ids are scored as sampled, not re-tokenized
            rescored = self.sampler.score([batch.prompts[j // n] for j in missing], [[prefixes[j]] for j in missing])
            self.num_model_calls += 1
            scores |= {j: float(s[0]) for j, s in zip(missing, rescored)}
        # A prefix counts as answered only once it has written a \boxed{} answer: the
        # grader's last-number fallback would read "15" out of an unfinished "7+8=15\n15-".
        golds = [batch.problems[j // n].answer for j in range(len(completions))]
        boxed = [j for j in cut if last_boxed(texts[j]) is not None]
        grades = dict(zip(boxed, self.grader.grade_batch([texts[j] for j in boxed], [golds[j] for j in boxed])))
        entries = {}
        for j in cut:
            grade = grades.get(j)
            entries[j] = {"answer": grade.answer if grade else None, "correct": bool(grade and grade.correct),
                          "score": scores[j], "num_tokens": L}
        return entries

    def close(self) -> None:
        self.grader.close()


def sample_pending(args: argparse.Namespace, problems: list[Problem], done: dict[str, list[dict]],
                   samples_path: Path) -> None:
    """Samples the problems not in `done`, --batch-problems at a time, appending each
    problem's records to samples.jsonl (one problem, one flush) and to `done`."""
    pending = [p for p in problems if p.id not in done]
    if not pending:
        return
    evaluator = Evaluator(args)
    try:
        with open(samples_path, "a", encoding="utf-8") as f, \
                tqdm(total=len(problems), initial=len(problems) - len(pending), desc="eval", unit="problem") as bar:
            for b in range(0, len(pending), args.batch_problems):
                batch = pending[b:b + args.batch_problems]
                for problem, records in zip(batch, evaluator.run_batch(batch)):
                    f.write("".join(json.dumps(r) + "\n" for r in records))
                    f.flush()
                    done[problem.id] = records
                    bar.update(1)
    finally:
        evaluator.close()


# ---------------------------------------------------------------------------- results
def compare_with_baseline(results: dict, base: dict, baseline_dir: str) -> dict:
    """This run's weighted voting against the baseline run's majority voting (and both curves)."""

    def versus(ours: dict, theirs: dict) -> list[dict]:
        joint = {"majority": theirs["parallel"]["majority"], "weighted": ours["parallel"]["weighted"]}
        return efficiency(joint, ours["n"])

    return {"baseline": str(baseline_dir), "baseline_parallel": base["parallel"],
            "efficiency": versus(results, base),
            "by_difficulty": {d: versus(block, base["by_difficulty"][d])
                              for d, block in results["by_difficulty"].items() if d in base.get("by_difficulty", {})}}


def run(argv: list[str] | None = None) -> dict:
    """Runs the evaluation; returns the results dict (also in OUT/results.json)."""
    args = parse_args(argv)
    problems = load_eval_problems(args)  # before OUT/ is written: a bad file leaves nothing behind
    baseline = None if args.baseline is None else load_baseline(args.baseline, args.n, len(problems))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.verify_prompt is None:
        args.verify_prompt = training_verify_prompt(args.model)
    check_run_config(out, {key: getattr(args, key) for key in RUN_KEYS})
    samples_path = out / "samples.jsonl"
    done = read_samples(samples_path, args.n)
    num_resumed = sum(p.id in done for p in problems)
    start = time.perf_counter()
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    sample_pending(args, problems, done, samples_path)
    results = summarize([pool_from_records(done[p.id]) for p in problems], num_trials=args.trials,
                        seed=args.seed, thresholds=args.threshold)
    results["config"] = {key: getattr(args, key) for key in RUN_KEYS} | {"limit": args.limit}
    results["num_resumed"] = num_resumed
    results["sampling_seconds"] = time.perf_counter() - start
    if baseline is not None:
        results["vs_baseline"] = compare_with_baseline(results, baseline, args.baseline)
    write_outputs(out, results)
    print(format_report(results))
    return results


def main(argv: list[str] | None = None) -> int:
    """The command: `run`, with Ctrl-C saying what is kept (exit 130)."""
    try:
        run(argv)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted: finished problems are kept in samples.jsonl; rerun to resume", file=sys.stderr)
        return EXIT_INTERRUPT
    return 0


def command(argv: list[str] | None = None) -> int:
    """`python -m rlvfast.eval`: the exit status (0; 2 for bad input; 130 on Ctrl-C)."""
    return run_command(main, PROG, argv)
