"""`python -m rlvfast.eval`: test-time scaling of one model on one data set.

Samples n solutions per problem with in-cache verifier scores and grades them
(`rlvfast.eval.samples`, the evaluation path the trainer's table uses too), appends every
sample to OUT/samples.jsonl (one problem at a time, flushed: a rerun with the same --out
skips finished problems), then writes OUT/results.json, PNG plots and a table: accuracy at k
for pass / majority / best-of-n / weighted, compute efficiency, verifier metrics, per
difficulty. Options: `--judge` (LLM-as-a-judge baseline scores), `--lengths` (sequential
scaling with a confidence threshold) and `--baseline` (another eval's OUT on the same problems:
the trainer's comparison table of the two, `rlvfast.eval.compare`, and OUT/comparison.png).

This file is the judge, the length budgets and the order of the run. Elsewhere: the flags
(`rlvfast.eval.options`), the metric math (`rlvfast.eval.scaling`), the printed table
(`rlvfast.eval.report`), files in OUT/ (`rlvfast.eval.storage`), plots (`rlvfast.eval.plots`).
Bad input (a flag, a --data file, a --model that is not there, an --out or --baseline that
does not match) ends the command with one line, `rlvfast.eval: error: ...`, and exit status 2.

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
import sys
import time
from pathlib import Path

from tqdm import tqdm

from rlvfast.cli import EXIT_INTERRUPT, UserError, run_command
from rlvfast.eval import compare
from rlvfast.eval.options import PROG, parse_args
from rlvfast.eval.report import format_report
from rlvfast.eval.samples import GradedBatch, pool_from_records, sample_and_grade
from rlvfast.eval.scaling import Pool, summarize
from rlvfast.eval.storage import (RUN_KEYS, check_run_config, load_baseline, read_samples, training_verify_prompt,
                                  write_outputs)
from rlvfast.tasks.problems import Problem

JUDGE_PROMPT = ("Below is a math problem and a proposed solution. Grade the solution step by step: "
                "check every step and the final answer.\n\nProblem: {problem}\n\nProposed solution:\n"
                "{solution}\n\nStep-by-step grading:")
JUDGE_QUESTION = "Is the answer correct (Yes/No)?"
COMPARISON_NAMES = {"base_model": "base model", "base_method": "baseline", "rlv": "this run"}
COMPARISON_PLOT = "comparison.png"


# ---------------------------------------------------------------------------- problems
def load_eval_problems(args: argparse.Namespace) -> list[Problem]:
    """The problems of --data: --num-problems synthetic ones, or those of the file (or of the
    directory's --data-split, by default its test split); the first --limit."""
    if args.data.startswith("synthetic"):
        from rlvfast.tasks.synthetic import make_problems

        split = args.data.partition(":")[2] or "test"
        problems = make_problems(args.num_problems, split, seed=0)
    else:
        from rlvfast.tasks.problems import DataError, column_fields, load_problems

        fields = column_fields(args.problem_field, args.answer_field, args.id_field)
        try:
            problems = load_problems(args.data, fields=fields, split=args.data_split, default_split="test")
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
        return compare.efficiency_rows(theirs["parallel"], ours["parallel"], ours["n"])

    return {"baseline": str(baseline_dir), "baseline_parallel": base["parallel"],
            "efficiency": versus(results, base),
            "by_difficulty": {d: versus(block, base["by_difficulty"][d])
                              for d, block in results["by_difficulty"].items() if d in base.get("by_difficulty", {})}}


def load_baseline_pools(baseline_dir: str, n: int, problems: list[Problem]) -> list[Pool]:
    """The baseline's samples of `problems` (matched by id, in their order) from its
    samples.jsonl, for the paired bootstrap; a UserError when it lacks any of them."""
    done = read_samples(Path(baseline_dir) / "samples.jsonl", n, repair=False)
    missing = [p.id for p in problems if p.id not in done]
    if missing:
        raise UserError(f"--baseline {baseline_dir!r}: its samples.jsonl lacks {len(missing)} of this run's "
                        f"{len(problems)} problems (e.g. {missing[0]!r}): not comparable")
    return [pool_from_records(done[p.id]) for p in problems]


def comparison(args: argparse.Namespace, results: dict, pools: list[Pool], baseline: tuple[dict, list[Pool]]) -> dict:
    """The trainer's comparison (`rlvfast.eval.compare`) of the baseline (as the base method)
    and this run (as RL^V) on --data, the problems matched by id; drawn into OUT/comparison.png."""
    base_results, base_pools = baseline
    name = Path(args.data).name  # the table's "split": synthetic:test, or the data file's name
    out = compare.compare({name: compare.from_results(base_results, base_pools)},
                          {name: compare.from_results(results, pools)})
    compare.plot_comparison(out, Path(args.out) / COMPARISON_PLOT, COMPARISON_NAMES)
    return out


def run(argv: list[str] | None = None) -> dict:
    """Runs the evaluation; returns the results dict (also in OUT/results.json)."""
    args = parse_args(argv)
    problems = load_eval_problems(args)  # before OUT/ is written: a bad file leaves nothing behind
    baseline = None
    if args.baseline is not None:  # checked before any sampling
        baseline = (load_baseline(args.baseline, args.n, len(problems)),
                    load_baseline_pools(args.baseline, args.n, problems))
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
    pools = [pool_from_records(done[p.id]) for p in problems]
    results = summarize(pools, num_trials=args.trials, seed=args.seed, thresholds=args.threshold)
    results["config"] = {key: getattr(args, key) for key in RUN_KEYS} | {"limit": args.limit}
    results["num_resumed"] = num_resumed
    results["sampling_seconds"] = time.perf_counter() - start
    if baseline is not None:
        results["vs_baseline"] = compare_with_baseline(results, baseline[0], args.baseline)
        results["comparison"] = comparison(args, results, pools, baseline)
    write_outputs(out, results)
    print(format_report(results))
    if baseline is not None:
        print("\n" + compare.format_comparison(results["comparison"], COMPARISON_NAMES))
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
