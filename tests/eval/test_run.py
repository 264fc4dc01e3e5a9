"""`python -m rlvfast.eval`: results recomputed independently from samples.jsonl, resume,
bad arguments, and a tiny-model run (judge and sequential included) that writes every output.

Most tests swap the Sampler for a scripted one that writes synthetic solutions with injected
errors and scores that favour correct ones, so votes disagree in interesting ways (a random
tiny model answers nothing); the last test runs the real Sampler on the tiny model.
"""
import itertools
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import rlvfast.models
import rlvfast.sampler
from rlvfast.eval import run as rlv_eval
from rlvfast.cli import UserError, run_command
from rlvfast.tasks.synthetic import evaluate_expression, solution_text

PNG = b"\x89PNG\r\n\x1a\n"


class ScriptedSampler:
    """Stands in for rlvfast.sampler.Sampler: prompts are bare problem texts (see format_prompt
    below); solutions have 40% wrong steps; a correct solution tends to score higher."""
    num_generate_calls = 0

    def __init__(self, model, tokenizer, verify_prompt=None):
        self.tokenizer = tokenizer

    def _score(self, rng, text, gold):
        right = text.endswith(f"\\boxed{{{gold}}}")
        return round(0.3 + 0.7 * rng.random() if right else 0.8 * rng.random(), 6)

    def generate(self, prompts, params, score=True, progress=False, score_at=()):
        """No in-cache budget scores (`budget_scores` empty): eval falls back to `score`."""
        type(self).num_generate_calls += 1
        outputs = []
        for prompt in prompts:
            rng = random.Random(f"{params.seed}:{prompt}")
            completions = []
            for _ in range(params.n):
                if prompt.startswith("Compute"):
                    text = solution_text(prompt, error_rate=0.4, rng=rng)
                    gold = str(evaluate_expression(prompt[len("Compute "):-1]))
                else:  # a judge prompt
                    text, gold = "looks fine", None
                ids = self.tokenizer.encode(text, add_special_tokens=False)[: params.max_tokens]
                completions.append(SimpleNamespace(
                    text=text, token_ids=ids, logprobs=[0.0] * len(ids), finish_reason="stop", answer=None,
                    budget_scores={},
                    score=self._score(rng, text, gold) if gold else round(rng.random(), 6)))
            outputs.append(SimpleNamespace(prompt=prompt, completions=completions))
        return outputs

    def score(self, prompts, completions):
        return [[round(random.Random(f"{p}:{c}").random(), 6) for c in cs] for p, cs in zip(prompts, completions)]


@pytest.fixture
def scripted(monkeypatch):
    monkeypatch.setattr(rlvfast.sampler, "Sampler", ScriptedSampler, raising=True)
    monkeypatch.setattr(rlvfast.sampler, "format_prompt", lambda tokenizer, text: text, raising=True)
    ScriptedSampler.num_generate_calls = 0
    return ScriptedSampler


def _run(tmp_path, model_dir, *extra, out="out"):
    argv = ["--model", str(model_dir), "--out", str(tmp_path / out), *extra]
    return rlv_eval.run(argv), tmp_path / out


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---- the independent recomputation: plain Python, its own vote and subset code -------------
def _vote(sub, weight):
    """Winner's correctness: largest total weight per answer, ties to the answer seen first."""
    total, order = {}, []
    for r in sub:
        if r["answer"] is None:
            continue
        key = r["answer"].strip()
        if key not in total:
            total[key] = 0.0
            order.append((key, r))
        total[key] += weight(r)
    if not order:
        return False
    best = max(total.values())
    return next(r for key, r in order if total[key] == best)["correct"]


def _best(sub):
    top = None
    for r in sub:
        if r["answer"] is not None and (top is None or r["score"] > top["score"]):
            top = r
    return top is not None and top["correct"]


def _recompute(samples, n, trials, seed):
    problems = {}
    for r in samples:
        problems.setdefault(r["problem_id"], [None] * n)[r["sample"]] = r
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64) if k <= n]
    acc = {"majority": {}, "weighted": {}, "best_of_n": {}}
    for k in ks:
        hits = {m: 0 for m in acc}
        count = 0
        for pid, pool in problems.items():
            if len(list(itertools.combinations(range(n), k))) <= trials:
                chosen = list(itertools.combinations(range(n), k))
            else:
                rng = random.Random(f"{seed}:{pid}:{k}")
                chosen = [sorted(rng.sample(range(n), k)) for _ in range(trials)]
            for idx in chosen:
                sub = [pool[i] for i in idx]
                hits["majority"] += _vote(sub, lambda r: 1.0)
                hits["weighted"] += _vote(sub, lambda r: r["score"])
                hits["best_of_n"] += _best(sub)
                count += 1
        for m in acc:
            acc[m][str(k)] = hits[m] / count
    efficiency = []
    for k in ks:
        reach = [kk for kk in ks if acc["majority"][str(kk)] >= acc["weighted"][str(k)] - 1e-12]
        efficiency.append((k, reach[0] if reach else None))
    return acc, efficiency


def test_results_agree_with_independent_recomputation(tmp_path, tiny_model_dir, scripted):
    results, out = _run(tmp_path, tiny_model_dir, "--data", "synthetic:test", "--num-problems", "6",
                        "--n", "8", "--trials", "5", "--seed", "3", "--batch-problems", "4")
    samples = _read(out / "samples.jsonl")
    assert len(samples) == 6 * 8 and scripted.num_generate_calls == 2
    acc, eff = _recompute(samples, n=8, trials=5, seed=3)
    for method, values in acc.items():
        assert results["parallel"][method] == values, method  # exact, float for float
    assert [(r["k"], r["baseline_k"]) for r in results["efficiency"]] == eff
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["parallel"] == results["parallel"] and on_disk["efficiency"] == results["efficiency"]
    # the scripted verifier prefers right answers, so weighted voting must beat majority somewhere
    weighted, majority = results["parallel"]["weighted"], results["parallel"]["majority"]
    assert any(weighted[k] > majority[k] for k in weighted), (weighted, majority)
    # every record carries what the issue lists
    for key in ("problem_id", "difficulty", "text", "answer", "correct", "score", "num_tokens"):
        assert key in samples[0]
    assert samples[0]["difficulty"] == "test"
    assert sum(r["correct"] for r in samples) == sum(
        r["text"].endswith("\\boxed{" + r["gold"] + "}") for r in samples)
    pass_at_8 = sum(any(r["correct"] for r in samples if r["problem_id"] == p)
                    for p in {r["problem_id"] for r in samples}) / 6
    assert results["parallel"]["pass"]["8"] == pytest.approx(pass_at_8)


def test_resume_skips_finished_problems(tmp_path, tiny_model_dir, scripted):
    args = ("--data", "synthetic:hard", "--num-problems", "4", "--n", "4", "--batch-problems", "1")
    first, out = _run(tmp_path, tiny_model_dir, *args)
    assert scripted.num_generate_calls == 4
    path = out / "samples.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    # an interruption in the middle of the last problem: 2 full lines and a torn one remain
    path.write_text("".join(lines[:-2]) + lines[-2][:15])
    scripted.num_generate_calls = 0
    second, _ = _run(tmp_path, tiny_model_dir, *args)
    assert scripted.num_generate_calls == 1  # only the torn problem is sampled again
    assert second["num_resumed"] == 3
    assert second["parallel"] == first["parallel"]
    assert len(_read(path)) == 16
    scripted.num_generate_calls = 0
    third, _ = _run(tmp_path, tiny_model_dir, *args, "--num-problems", "5")
    assert scripted.num_generate_calls == 1 and third["num_problems"] == 5  # only the new problem
    with pytest.raises(UserError, match="n=4"):
        _run(tmp_path, tiny_model_dir, "--data", "synthetic:hard", "--num-problems", "4", "--n", "8")


@pytest.mark.parametrize("argv, message", [
    (["--n", "0"], "'0'"), (["--lengths", "64,abc"], "'64,abc'"), (["--threshold", "1.5"], "'1.5'"),
    (["--top-p", "0"], "'0'"), (["--data", "synthetic:impossible"], "synthetic:impossible"),
    (["--data", "/no/such/file.jsonl"], "/no/such/file.jsonl"), (["--temperature", "-1"], "'-1'"),
    (["--grade-timeout", "0"], "'0'"),
])
def test_bad_arguments_name_the_value(tmp_path, capsys, argv, message):
    base = {"--model": str(tmp_path), "--out": str(tmp_path / "o"), "--data": "synthetic"}
    for flag, value in zip(argv[::2], argv[1::2]):
        base[flag] = value
    with pytest.raises(SystemExit):
        rlv_eval.parse_args([x for kv in base.items() for x in kv])
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--n", "0"], "argument --n: expected a positive integer, got '0'"),
    (["--data", "synthetic:impossible"], "--data 'synthetic:impossible': "),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_argparse_errors_name_the_command_as_other_errors_do(tmp_path, capsys, argv, message):
    """`rlvfast.eval: error: ...` (as UserError lines), exit 2; the usage keeps `python -m rlvfast.eval`."""
    base = ["--model", str(tmp_path), "--out", str(tmp_path / "o"), "--data", "synthetic"]
    with pytest.raises(SystemExit) as exit_info:
        rlv_eval.parse_args(base + argv)
    assert exit_info.value.code == 2
    usage, *_, error = capsys.readouterr().err.splitlines()
    assert usage.startswith("usage: python -m rlvfast.eval ")
    assert error.startswith(f"rlvfast.eval: error: {message}"), error


def test_tiny_model_run_writes_every_output(tmp_path, tiny_model_dir):
    """The real Sampler on a random tiny model, judge and sequential budgets included."""
    results, out = _run(tmp_path, tiny_model_dir, "--data", "synthetic:ops=2,digits=1", "--num-problems", "2",
                        "--n", "4", "--lengths", "4,8", "--threshold", "0.3,0.9", "--judge",
                        "--judge-max-tokens", "6", "--trials", "3")
    samples = _read(out / "samples.jsonl")
    assert len(samples) == 8
    assert all(0.0 <= r["score"] <= 1.0 and 0.0 <= r["judge_score"] <= 1.0 for r in samples)
    assert all(set(r["budgets"]) == {"4", "8"} and r["budgets"]["4"]["num_tokens"] <= 4 for r in samples)
    assert all(r["num_tokens"] <= 8 for r in samples)  # the largest budget replaces --max-tokens
    assert set(results["parallel"]) == {"pass", "majority", "best_of_n", "weighted", "judge_best_of_n",
                                        "judge_weighted"}
    assert list(results["parallel"]["pass"]) == ["1", "2", "4"]
    seq = results["sequential"]
    assert seq["lengths"] == [4, 8] and set(seq["threshold"]) == {"0.3", "0.9"}
    assert seq["fixed"]["4"]["mean_tokens"] <= seq["fixed"]["8"]["mean_tokens"] <= 4 * 8
    assert json.loads((out / "results.json").read_text())["verifier"]["num_samples"] == 8
    for name in ("accuracy_vs_k.png", "sequential.png"):
        data = (out / name).read_bytes()
        assert data[:8] == PNG and len(data) > 5000, name


def test_samples_do_not_depend_on_batching(tmp_path, tiny_model_dir):
    """A problem's samples depend on --seed and its prompt, not on --batch-problems."""
    common = ("--data", "synthetic:ops=2,digits=1", "--num-problems", "3", "--n", "2", "--max-tokens", "6",
              "--trials", "2")
    runs = {}
    for batch in ("1", "3"):
        _, out = _run(tmp_path, tiny_model_dir, *common, "--batch-problems", batch, out=f"b{batch}")
        runs[batch] = {(r["problem_id"], r["sample"]): (r["text"], r["score"]) for r in _read(out / "samples.jsonl")}
    assert len(runs["1"]) == 6 and runs["1"].keys() == runs["3"].keys()
    for key, (text, score) in runs["1"].items():
        assert runs["3"][key][0] == text
        assert runs["3"][key][1] == pytest.approx(score, abs=1e-5)
    _, other = _run(tmp_path, tiny_model_dir, *common, "--seed", "1", out="seed1")
    texts = {(r["problem_id"], r["sample"]): r["text"] for r in _read(other / "samples.jsonl")}
    assert texts != {key: text for key, (text, _) in runs["1"].items()}  # the seed does change them


def test_verify_prompt_comes_from_the_training_run(tmp_path):
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    assert rlv_eval.training_verify_prompt(str(run / "final")) is None  # no summary.json: Sampler default
    (run / "summary.json").write_text(json.dumps({"config": {"model": "tiny", "verify_prompt": None}}))
    from rlvfast.train.config import TINY_VERIFY_PROMPT

    assert rlv_eval.training_verify_prompt(str(run / "final")) == TINY_VERIFY_PROMPT
    (run / "summary.json").write_text(json.dumps({"config": {"model": "x", "verify_prompt": "\nOK?\n"}}))
    assert rlv_eval.training_verify_prompt(str(run / "final")) == "\nOK?\n"
    args = rlv_eval.parse_args(["--model", str(run), "--out", str(tmp_path), "--data", "synthetic",
                                "--verify-prompt", "\\nRight?\\n"])
    assert args.verify_prompt == "\nRight?\n"  # an escaped newline from the shell becomes a newline


def test_baseline_comparison(tmp_path, tiny_model_dir, scripted):
    common = ("--data", "synthetic:test", "--num-problems", "3", "--n", "4")
    base, base_out = _run(tmp_path, tiny_model_dir, *common, "--seed", "1", out="base")
    ours, out = _run(tmp_path, tiny_model_dir, *common, "--seed", "2", "--baseline", str(base_out))
    rows = ours["vs_baseline"]["efficiency"]
    for row in rows:  # smallest k' on the grid with baseline majority@k' >= our weighted@k
        reach = [k for k in (1, 2, 4) if base["parallel"]["majority"][str(k)] >= ours["parallel"]["weighted"][str(row["k"])]]
        assert row["baseline_k"] == (reach[0] if reach else None)
    assert ours["vs_baseline"]["baseline_parallel"] == base["parallel"]
    data = (out / "accuracy_vs_k_vs_baseline.png").read_bytes()
    assert data[:8] == PNG and len(data) > 5000
    with pytest.raises(UserError, match="not comparable"):
        _run(tmp_path, tiny_model_dir, "--data", "synthetic:test", "--num-problems", "2", "--n", "4",
             "--baseline", str(base_out), out="other")


def test_sequential_prefixes_without_a_box_have_no_answer(tmp_path, tiny_model_dir, scripted):
    results, out = _run(tmp_path, tiny_model_dir, "--data", "synthetic:test", "--num-problems", "2", "--n", "4",
                        "--lengths", "8,200", "--threshold", "0.5")
    samples = _read(out / "samples.jsonl")
    for r in samples:  # scripted solutions are ~25 char tokens: cut at 8, whole at 200
        assert r["num_tokens"] > 8
        assert r["budgets"]["8"]["answer"] is None and r["budgets"]["8"]["correct"] is False
        assert r["budgets"]["8"]["num_tokens"] == 8
        assert r["budgets"]["200"] == {k: r[k] for k in ("answer", "correct", "score", "num_tokens")}
    fixed = results["sequential"]["fixed"]
    assert fixed["8"] == {"accuracy": 0.0, "majority_accuracy": 0.0, "mean_tokens": 32.0}
    assert fixed["200"]["mean_tokens"] == sum(r["num_tokens"] for r in samples) / 2
    # nothing is answered at 8 tokens (confidence 0), so the policy always goes on to 200
    assert results["sequential"]["threshold"]["0.5"]["stops"] == {"8": 0, "200": 2}


def test_verify_prompt_of_a_checkpoint(tmp_path):
    step = tmp_path / "run" / "checkpoints" / "step-000040"
    step.mkdir(parents=True)
    (tmp_path / "run" / "summary.json").write_text(json.dumps({"config": {"verify_prompt": "\nOK?\n"}}))
    assert rlv_eval.training_verify_prompt(str(step)) == "\nOK?\n"


# ---- the command's edge: one line and exit 2 for bad input, Ctrl-C, hub ids, aliases, warnings ----
def _command(tmp_path, model, *extra, out="out"):
    return run_command(rlv_eval.main, "rlvfast.eval", ["--model", str(model), "--out", str(tmp_path / out), *extra])


def test_bad_data_file_is_one_line_and_exit_2(tmp_path):
    """The real `python -m rlvfast.eval`: no traceback, and nothing written to --out."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "p", "answer": "1"}\n{"problem": "q", "answer": \n')
    root = Path(rlv_eval.__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "rlvfast.eval", "--model", str(tmp_path), "--data", str(bad),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, cwd=root,
                          env=os.environ | {"PYTHONPATH": str(root)}, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"rlvfast.eval: error: --data: {bad}:line 2: bad JSON"), proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_user_errors_of_a_run_are_one_line(tmp_path, tiny_model_dir, scripted, capsys):
    common = ("--data", "synthetic:test", "--num-problems", "2", "--n", "4")
    assert _command(tmp_path, tiny_model_dir, *common) == 0
    capsys.readouterr()
    assert _command(tmp_path, tiny_model_dir, *common[:-1], "2") == 2  # other --n, same --out
    err = capsys.readouterr().err
    assert err.startswith(f"rlvfast.eval: error: --out {str(tmp_path / 'out')!r} holds samples made with other "
                          "settings (n=4 there, 2 now)") and err.count("\n") == 1, err
    scripted.num_generate_calls = 0
    assert _command(tmp_path, tiny_model_dir, *common[:-1], "2", "--baseline", str(tmp_path / "out"),
                    out="other") == 2
    err = capsys.readouterr().err  # refused before any sampling
    assert err == (f"rlvfast.eval: error: --baseline {str(tmp_path / 'out')!r} has 2 problems x n=4, "
                   "this run 2 x n=2: not comparable\n")
    assert scripted.num_generate_calls == 0


def test_missing_model_is_one_line_and_a_fixed_rerun_is_not_refused(tmp_path, tiny_model_dir, scripted, monkeypatch,
                                                                      capsys):
    def no_model(path, **kwargs):
        raise OSError(f"{path} is not a local folder and is not a valid model identifier")

    common = ("--data", "synthetic:test", "--num-problems", "2")
    with monkeypatch.context() as patch:
        patch.setattr(rlvfast.models, "load_model", no_model)
        assert _command(tmp_path, "org/no-such-model", *common, "--n", "4") == 2
    err = capsys.readouterr().err
    assert err == ("rlvfast.eval: error: --model 'org/no-such-model': org/no-such-model is not a local folder "
                   "and is not a valid model identifier\n")
    # that run wrote config.json but no samples: other settings are not "samples made with other settings"
    assert _command(tmp_path, tiny_model_dir, *common, "--n", "2") == 0
    assert len(_read(tmp_path / "out" / "samples.jsonl")) == 4


def test_ctrl_c_keeps_finished_problems(tmp_path, tiny_model_dir, scripted, monkeypatch, capsys):
    run_batch = rlv_eval.Evaluator.run_batch
    calls = []

    def interrupted_second_batch(self, problems):
        calls.append(problems)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return run_batch(self, problems)

    monkeypatch.setattr(rlv_eval.Evaluator, "run_batch", interrupted_second_batch)
    status = _command(tmp_path, tiny_model_dir, "--data", "synthetic:test", "--num-problems", "3", "--n", "2",
                      "--batch-problems", "1")
    assert status == 130
    assert capsys.readouterr().err.endswith(
        "rlvfast.eval: interrupted: finished problems are kept in samples.jsonl; rerun to resume\n")
    assert len(_read(tmp_path / "out" / "samples.jsonl")) == 2  # the first problem's n samples


@pytest.mark.parametrize("model", ["./nope", "/no/such/dir", "~/no-such-model", "runs/a/final", "model.gguf"])
def test_local_looking_model_that_is_missing_is_refused(tmp_path, capsys, model):
    with pytest.raises(SystemExit):
        rlv_eval.parse_args(["--model", model, "--out", str(tmp_path), "--data", "synthetic"])
    assert f"--model {model!r}: no such file or directory" in capsys.readouterr().err


@pytest.mark.parametrize("model", ["Qwen/Qwen2.5-0.5B-Instruct", "gpt2"])
def test_hub_ids_pass_to_the_loader(tmp_path, model, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = rlv_eval.parse_args(["--model", model, "--out", str(tmp_path / "o"), "--data", "synthetic"])
    assert args.model == model
    # a summary.json in the working directory is not the hub model's training run
    (tmp_path / "summary.json").write_text(json.dumps({"config": {"verify_prompt": "\nOK?\n"}}))
    assert rlv_eval.training_verify_prompt(model) is None


def test_train_flag_names_are_aliases(tmp_path):
    args = rlv_eval.parse_args(["--model", str(tmp_path), "--out", str(tmp_path), "--data", "synthetic",
                                "--max-new-tokens", "7", "--grader-timeout", "2.5"])
    assert (args.max_tokens, args.grade_timeout) == (7, 2.5)
    args = rlv_eval.parse_args(["--model", str(tmp_path), "--out", str(tmp_path), "--data", "synthetic"])
    assert (args.max_tokens, args.grade_timeout, args.num_problems, args.judge_max_tokens, args.threshold) == (
        256, 5.0, 100, 512, [0.6])


def test_flags_that_do_nothing_are_warned_about(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text('{"problem": "p", "answer": "1"}\n')
    base = ["--model", str(tmp_path), "--out", str(tmp_path / "o")]
    args = rlv_eval.parse_args([*base, "--data", str(data), "--num-problems", "5", "--max-tokens", "64",
                                "--lengths", "8,16", "--threshold", "0.5", "--judge-max-tokens", "9"])
    assert args.max_tokens == 16 and args.judge_max_tokens == 9
    err = capsys.readouterr().err.splitlines()
    assert [line.split(" ")[2] for line in err] == ["--num-problems", "--max-tokens", "--judge-max-tokens"], err
    assert all(line.startswith("rlvfast.eval: warning: ") for line in err)
    rlv_eval.parse_args([*base, "--data", str(data), "--threshold", "0.5"])
    assert "--threshold applies to sequential scaling only" in capsys.readouterr().err
    rlv_eval.parse_args([*base, "--data", "synthetic", "--num-problems", "5", "--lengths", "8,16", "--max-tokens",
                         "16", "--judge", "--judge-max-tokens", "9", "--threshold", "0.5"])
    assert capsys.readouterr().err == ""  # each flag here does something


def test_a_baseline_that_is_not_an_eval_is_a_user_error(tmp_path):
    (tmp_path / "results.json").write_text("[]")
    with pytest.raises(UserError, match=r"results\.json is not an eval's results\.json"):
        rlv_eval.load_baseline(str(tmp_path), n=4, num_problems=2)
