"""`python -m rlvfast.pretrain --out DIR`: trains the tiny base model and writes it with a model card.

The base model is the warm start the trainer has always used (`rlvfast.train.warm_start`: the
3 x 128 char-level Llama, supervised on synthetic 2-4-operand arithmetic solutions with wrong
steps injected at `error_rate`, plus verification rows; then phase 2, judging practice on
contrastive right/wrong pairs of synthetic solutions), trained from a fixed seed; no held-out
problem (`synthetic.is_held_out`) is ever drawn. DIR gets
the Hugging Face directory (config, safetensors weights, tokenizer), `warm_start.json`, and
the model card: `README.md` for people, `card.json` for programs (`rlvfast.models.read_card`).
The card records the recipe (WarmStartConfig, WARM_START_VERSION), the training time, pass@1
on the held-out `test` and `hard` splits and the model's own P("Yes") as a judge (balanced
accuracy, AUC: the LLM-as-a-judge baseline), measured as the trainer's table measures its
starting point (`rlvfast.train.report.evaluate`: EVAL_SAMPLES samples per problem, seed 1).

`rlvfast/models/base/` is this command's output with the defaults, shipped in the package;
the trainer loads it when its warm-start options equal the card's (`rlvfast.train.warm_start`).
DIR is written in a temporary folder beside it and swapped in at the end
(`rlvfast.train.checkpoint.replace_dir`, as OUT/final); an existing DIR is
replaced only if it holds a card.json (an earlier output), so no other folder is overwritten.
"""
from __future__ import annotations

import json
import math
import os
import platform
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from rlvfast.cli import CommandParser, UserError, run_command
from rlvfast.eval.report import ratio
from rlvfast.train.checkpoint import make_temp_dir, replace_dir

EVAL_SPLITS = ("test", "hard")
EVAL_SAMPLES = 4  # what the trainer's table uses for its starting point
EVAL_SEED = 1
CARD_VERSION = 1
TRAINING_DATA = ("synthetic arithmetic chains `Compute a+b-c.` of single-digit operands, 2, 3 or 4 operands "
                 "(operand_weights), generated from the seed, never a held-out text (`synthetic.is_held_out`); "
                 "solutions written step by step (`a+b=x`, ..., `\\boxed{y}`) with each step wrong (off by 1-3, "
                 "carried on) with probability error_rate; loss on solution + <eos>. Each batch also holds "
                 "verify_rows verification rows [prompt, solution with wrong steps at verify_error_rate, verify "
                 "prompt, Yes/No] with the loss on the label only (they teach the format and base rate). Then "
                 "verifier_steps steps of judging practice (phase 2): contrastive pairs, one problem solved "
                 "right and with wrong steps (synthetic errors, not the model's own), label loss averaged on "
                 "its own, plus solution rows that keep the reasoner: the judging ability a pretrained LLM "
                 "brings to RL^V.")


def build_parser() -> CommandParser:
    from rlvfast.train.warm_start import WarmStartConfig

    defaults = WarmStartConfig()
    parser = CommandParser("rlvfast.pretrain", description=(
        "Train the tiny base model (the trainer's warm start) from synthetic data with a fixed seed and "
        "write it as a Hugging Face directory with a model card (README.md, card.json): its training, "
        "time, pass@1 on held-out test/hard and its own P(\"Yes\") as a judge. The defaults rebuild the "
        "shipped rlvfast/models/base (~2 min on 2 CPU cores plus the evaluation)."))
    parser.add_argument("--out", required=True, help="output directory (replaced if it holds an earlier card.json; "
                        "any other non-empty directory is an error)")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="supervised steps (default: %(default)s)")
    parser.add_argument("--verifier-steps", type=int, default=defaults.verifier_steps,
                        help="steps of the optional contrastive verifier phase (default: %(default)s, off)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of the data and the updates "
                        "(default: %(default)s)")
    parser.add_argument("--eval-problems", type=int, default=400, help="held-out problems per split for the "
                        "card's numbers (default: %(default)s; 0 = none)")
    return parser


def check_out(out: Path) -> None:
    """A UserError unless `out` is absent, an empty directory or an earlier output (has card.json)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / "card.json").is_file():
        raise UserError(f"--out {out}: a non-empty directory without card.json (not an earlier "
                        f"rlvfast.pretrain output); pass an empty or new directory")


def evaluate_base(model_dir: Path, num_problems: int, log=print) -> dict:
    """split -> the trainer's starting-point evaluation of `model_dir` on `num_problems` held-out
    problems (make_problems(n, split, seed=0)), EVAL_SAMPLES samples each at the trainer's
    temperature and length, seed EVAL_SEED."""
    from rlvfast.models import load_model
    from rlvfast.sampler import Sampler
    from rlvfast.tasks.grading import Grader
    from rlvfast.train.config import TrainConfig
    from rlvfast.train.report import eval_problems, evaluate

    config = TrainConfig(eval_problems=num_problems, eval_splits=list(EVAL_SPLITS))
    model, tokenizer = load_model(model_dir)
    sampler = Sampler(model, tokenizer, verify_prompt=config.resolved_verify_prompt())
    results = {}
    with Grader(timeout=config.grader_timeout) as grader:
        for split, problems in eval_problems(config).items():
            results[split] = evaluate(sampler, problems, config, grader, seed=EVAL_SEED, num_samples=EVAL_SAMPLES)
            r = results[split]
            log(f"pretrain: {split} pass@1 {r['pass@1']:.3f}, judge balanced accuracy "
                f"{ratio(r['verifier_balanced_accuracy'])}, AUC {ratio(r['verifier_auc'])}")
    return {"num_problems": num_problems, "num_samples": EVAL_SAMPLES, "seed": EVAL_SEED,
            "temperature": config.temperature, "max_tokens": config.max_new_tokens,
            "problems": "make_problems(num_problems, split, seed=0), as the trainer's table",
            "results": results}


def held_out_overlap(config, num_problems: int) -> dict:
    """split -> how many of its `num_problems` evaluation problems appear, as text, among the
    problems the warm start trains on (`seen_problems`): 0 by construction (held-out texts are
    never drawn for training), counted so the card shows it rather than asserts it."""
    from rlvfast.tasks.synthetic import make_problems
    from rlvfast.train.warm_start import seen_problems

    seen = seen_problems(config)
    overlap = {}
    for split in EVAL_SPLITS:
        texts = [p.problem for p in make_problems(num_problems, split, seed=0)]
        overlap[split] = {"seen_in_training": sum(t in seen for t in texts), "of": len(texts)}
    return {"distinct_training_problems": len(seen), "splits": overlap}


def model_facts(model_dir: Path) -> dict:
    """The HF config's architecture numbers and the parameter count."""
    from safetensors import safe_open

    hf = json.loads((model_dir / "config.json").read_text())
    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        num_params = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    return {"architecture": hf.get("architectures", ["LlamaForCausalLM"])[0],
            "num_layers": hf["num_hidden_layers"], "hidden_size": hf["hidden_size"],
            "num_heads": hf["num_attention_heads"], "intermediate_size": hf["intermediate_size"],
            "vocab_size": hf["vocab_size"], "max_position_embeddings": hf["max_position_embeddings"],
            "tie_word_embeddings": hf.get("tie_word_embeddings", False), "num_parameters": num_params}


def make_card(config, seconds: float, model: dict, evaluation: dict | None, overlap: dict | None,
              command: str) -> dict:
    """card.json's content."""
    import torch

    from rlvfast.train.warm_start import WARM_START_VERSION

    return {"card_version": CARD_VERSION, "name": "rlvfast tiny base model",
            "format": "Hugging Face directory, safetensors weights, char-level tokenizer",
            "command": command, "model": model,
            "training": {"data": TRAINING_DATA, "steps": config.steps, "verifier_steps": config.verifier_steps,
                         "rows_per_step": config.batch_size + config.verify_rows, "seed": config.seed,
                         "seconds": round(seconds, 2), "warm_start_version": WARM_START_VERSION,
                         "warm_start_config": asdict(config), "cache_key": config.cache_key(),
                         "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch "
                                    f"{torch.__version__}, {torch.get_num_threads()} threads"},
            "held_out_overlap": overlap, "evaluation": evaluation}


def card_markdown(card: dict) -> str:
    """README.md: the card for people."""
    t, m = card["training"], card["model"]
    lines = [f"# {card['name']}", "",
             f"A {m['num_layers']}-layer, {m['hidden_size']}-wide Llama ({m['num_heads']} heads, vocabulary "
             f"{m['vocab_size']} characters, {m['num_parameters']:,} parameters), the starting point of "
             "`python -m rlvfast.train`. Built by", "", f"    {card['command']}", "",
             f"in {t['seconds']:.0f} s ({t['machine']}); WarmStartConfig version {t['warm_start_version']}, "
             f"seed {t['seed']}, {t['steps']} steps of {t['rows_per_step']} rows"
             + (f" + {t['verifier_steps']} verifier steps" if t["verifier_steps"] else "") + ".", "",
             "## Training data", "", t["data"], "",
             "The full recipe is `training.warm_start_config` in card.json.", ""]
    evaluation = card["evaluation"]
    if evaluation:
        lines += ["## Held-out evaluation", "",
                  f"{evaluation['num_problems']} problems per split x {evaluation['num_samples']} samples "
                  f"(temperature {evaluation['temperature']}, at most {evaluation['max_tokens']} tokens, seed "
                  f"{evaluation['seed']}): the trainer's measure of its starting point. Judge = the model's own "
                  "P(\"Yes\") after the verify prompt on its own samples, >= 0.5 read as \"correct\" "
                  "(the LLM-as-a-judge baseline).", "",
                  "| split | pass@1 | judge balanced accuracy | judge AUC |", "| --- | --- | --- | --- |"]
        for split, r in evaluation["results"].items():
            lines.append(f"| {split} | {r['pass@1']:.3f} | {ratio(r['verifier_balanced_accuracy'])} | "
                         f"{ratio(r['verifier_auc'])} |")
        lines.append("")
    overlap = card["held_out_overlap"]
    if overlap:
        seen = ", ".join(f"{s} {o['seen_in_training']} of {o['of']}" for s, o in overlap["splits"].items())
        lines += ["## Held-out problems and training", "",
                  "`test` (3 operands) and `hard` (4 operands) come from `make_problems(n, split, seed=0)`: "
                  "distinct problems of the held-out pool (`synthetic.is_held_out`, one text in "
                  "HELD_OUT_EVERY), which no training draw takes. Evaluation problems whose text the training "
                  f"drew, counted by replaying its draws: {seen} ({overlap['distinct_training_problems']} "
                  "distinct training problems).", ""]
    return "\n".join(lines)


def pretrain(out: str | os.PathLike, config, eval_problems: int = 400, command: str = "", log=print) -> dict:
    """Trains the base model for `config` (a WarmStartConfig) into `out` with its card; returns the card."""
    from rlvfast.train.warm_start import train_warm_start

    out = Path(out)
    check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(".tmp-pretrain-", out.parent)
    try:
        start = time.perf_counter()
        train_warm_start(tmp, config, log=log)
        seconds = time.perf_counter() - start
        evaluation = evaluate_base(tmp, eval_problems, log) if eval_problems else None
        overlap = held_out_overlap(config, eval_problems) if eval_problems else None
        card = make_card(config, seconds, model_facts(tmp), evaluation, overlap, command)
        card = json.loads(json.dumps(card, allow_nan=False))  # as read back: string keys
        (tmp / "card.json").write_text(json.dumps(card, indent=1) + "\n")
        (tmp / "README.md").write_text(card_markdown(card))
        tmp = replace_dir(tmp, out)  # now the earlier output (deleted below), or None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    log(f"pretrain: wrote {out} (trained in {seconds:.0f} s)")
    return card


def main(argv: list[str] | None = None) -> None:
    from rlvfast.train.warm_start import WarmStartConfig

    args = build_parser().parse_args(argv)
    if args.eval_problems < 0:
        raise UserError(f"--eval-problems must be >= 0, got {args.eval_problems}")
    try:
        config = WarmStartConfig(steps=args.steps, verifier_steps=args.verifier_steps, seed=args.seed)
    except ValueError as e:  # names the field; say the flag
        raise UserError(str(e).replace("WarmStartConfig.verifier_steps", "--verifier-steps")
                        .replace("WarmStartConfig.steps", "--steps")) from e
    if args.seed < 0:
        raise UserError(f"--seed must be >= 0, got {args.seed}")
    command = "python -m rlvfast.pretrain --out DIR" + "".join(
        f" --{name.replace('_', '-')} {getattr(args, name)}" for name in ("steps", "verifier_steps", "seed")
        if getattr(args, name) != getattr(WarmStartConfig(), name))
    pretrain(args.out, config, args.eval_problems, command)


def command(argv: list[str] | None = None) -> int:
    """`python -m rlvfast.pretrain` and `rlvfast-pretrain`: the exit status (2 with one line for a bad option)."""
    return run_command(main, "rlvfast.pretrain", argv)


if __name__ == "__main__":
    raise SystemExit(command())
