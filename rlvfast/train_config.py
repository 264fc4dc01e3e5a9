"""`TrainConfig`: every option of `python -m rlvfast.train`, typed, validated, and its CLI.

Precedence: the dataclass defaults (the embedded default: the tiny model on the synthetic
task), then an optional JSON or YAML file (`--config run.yaml`, keys = field names with
`_` or `-`), then the command-line flags. Each field's help text is its `--help` line.
Where the paper is silent the defaults follow TRL / verl, and the help says so.
Not here: what the options do (`rlvfast.train`, `rlvfast.rl_loss`).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from rlvfast.rl_loss import ALGOS, DEFAULT_LOSS_AGG, LOSS_AGGS
from rlvfast.warm_start import TINY_VERIFY_PROMPT, WarmStartConfig

# The short verification prompt of the embedded default: the tiny model is character-level,
# so the sampler's plain-model prompt (66 characters) would triple the tokens of every row.


def _opt(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass(slots=True)
class TrainConfig:
    # ---- what to train on
    model: str = _opt("tiny", "model: 'tiny' (the built-in char-level Llama, warm-started on imperfect "
                      "synthetic solutions and cached), or a Hugging Face directory / hub id / .gguf file")
    data: str = _opt("synthetic", "training problems: 'synthetic' (3-operand single-digit chains, "
                     "generated on the fly) or a .jsonl/.json/.parquet file for rlvfast.data.load_problems")
    out: str = _opt("runs/default", "run directory: metrics.jsonl, checkpoints/, latest, final/, summary.json")
    resume: bool = _opt(False, "continue from OUT/latest (an error when there is no complete checkpoint)")
    reward: str | None = _opt(None, "custom reward 'module:function' with TRL's signature f(prompts, "
                              "completions, completion_ids, **dataset_columns) -> list[float | None]; None = "
                              "no policy gradient and no verifier label for that sample. Default: the "
                              "time-limited grader (1 if the boxed answer equals the gold, else 0)")
    # ---- the algorithm
    algo: str = _opt("grpo", "grpo: (r - mean) / std; rloo: leave-one-out baseline (r - mean of the "
                     "others), i.e. leave-one-out PPO; drgrpo: r - mean, no std, constant normalizer",
                     choices=ALGOS)
    verifier_coef: float = _opt(1.0, "lambda in J = J_RL + lambda * J_verify (the paper's 1.0); 0 = the base "
                                "method alone")
    clip_low: float = _opt(0.2, "PPO clip: ratio >= 1 - clip_low (TRL/verl default 0.2)")
    clip_high: float = _opt(0.2, "PPO clip: ratio <= 1 + clip_high (TRL/verl default 0.2; DAPO uses 0.28)")
    kl_coef: float = _opt(0.0, "KL penalty to the frozen initial model with the k3 estimator, as TRL's beta "
                          "(default 0, as in TRL and Dr.GRPO)")
    loss_agg: str | None = _opt(None, "token-mean (TRL 'dapo' / verl 'token-mean'), seq-mean (TRL 'grpo'), "
                                "or constant (Dr.GRPO: 1 / max_new_tokens per sequence); default: "
                                "constant for drgrpo, token-mean otherwise", choices=LOSS_AGGS)
    group_size: int = _opt(8, "G: samples per problem")
    prompts_per_step: int = _opt(8, "problems per step (a step = prompts_per_step x group_size samples)")
    micro_batch: int = _opt(64, "samples per forward/backward (memory only: the gradient is the same)")
    ppo_epochs: int = _opt(1, "optimizer steps per batch of rollouts (1 = on-policy, ratio 1, as TRL's "
                           "num_iterations=1)")
    lr: float = _opt(3e-5, "AdamW learning rate (measured for the tiny model: 1e-4 and above degrade the "
                     "policy, see NOTES.md; ~1e-6 for real LLMs)")
    weight_decay: float = _opt(0.0, "AdamW weight decay (TRL default 0)")
    warmup: int = _opt(10, "linear learning-rate warmup steps, then constant (TRL default: constant)")
    max_grad_norm: float = _opt(1.0, "gradient clipping by global norm (TRL default 1.0)")
    max_new_tokens: int = _opt(48, "max tokens per solution")
    temperature: float = _opt(1.0, "sampling temperature (the policy loss uses the same one)")
    verify_prompt: str | None = _opt(None, "text between a solution and the Yes/No label; default: the "
                                     "sampler's (the chat template's own turn), or a short one for 'tiny'")
    steps: int = _opt(300, "optimizer steps of RL (the tiny default: 300 beat 150 on pass@1 and voting, NOTES.md)")
    seed: int = _opt(0, "seed of data order, sampling and initialization")
    checkpoint_every: int = _opt(20, "write a checkpoint every K steps (and at the end)")
    keep_last: int = _opt(2, "checkpoints to keep (older ones are deleted after the new one is complete)")
    max_bad_steps: int = _opt(3, "stop after this many consecutive steps with a NaN/inf loss or gradient")
    grader_timeout: float = _opt(5.0, "seconds per answer for the grader (a time-out counts as wrong)")
    device: str = _opt("auto", "auto (cuda if available, else cpu), cpu or cuda; bf16 autocast on cuda")
    # ---- the end-of-run evaluation (synthetic data only)
    eval_problems: int = _opt(200, "held-out problems per split for the final table (0 = no table)")
    eval_samples: int = _opt(16, "samples per problem for the final table (N for voting up to this)")
    eval_splits: list[str] = _opt(("test", "hard"), "synthetic splits of the final table")
    warm_start_steps: int = _opt(WarmStartConfig.__dataclass_fields__["steps"].default,
                                 "supervised warm-start steps of the tiny model (cached by its config)")
    warm_start_verifier_steps: int = _opt(0, "steps of the tiny model's optional verifier warm start after "
                                          "the supervised one: contrastive right/wrong pairs, label loss "
                                          "averaged on its own (0 = off; ~400 teach the verifier, at ~6 min on 2 "
                                          "CPU cores, which is why it is off in the 10-minute default; NOTES.md)")

    def __post_init__(self) -> None:
        self.eval_splits = list(self.eval_splits)
        if self.algo not in ALGOS:
            raise ValueError(f"TrainConfig.algo must be one of {ALGOS}, got {self.algo!r}")
        if self.loss_agg is None:
            self.loss_agg = DEFAULT_LOSS_AGG[self.algo]
        if self.loss_agg not in LOSS_AGGS:
            raise ValueError(f"TrainConfig.loss_agg must be one of {LOSS_AGGS}, got {self.loss_agg!r}")
        for name in ("group_size", "prompts_per_step", "micro_batch", "ppo_epochs", "max_new_tokens",
                     "steps", "checkpoint_every", "keep_last", "max_bad_steps", "eval_samples", "warm_start_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainConfig.{name} must be an int >= 1, got {value!r}")
        for name in ("warmup", "eval_problems", "seed", "warm_start_verifier_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"TrainConfig.{name} must be an int >= 0, got {value!r}")
        for name in ("verifier_coef", "kl_coef", "weight_decay", "clip_low", "clip_high"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"TrainConfig.{name} must be a number >= 0, got {value!r}")
        for name in ("lr", "max_grad_norm", "temperature", "grader_timeout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"TrainConfig.{name} must be a number > 0, got {value!r}")
        if self.clip_low >= 1:
            raise ValueError(f"TrainConfig.clip_low must be < 1, got {self.clip_low!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"TrainConfig.device must be auto, cpu or cuda, got {self.device!r}")
        if self.reward is not None and ":" not in self.reward:
            raise ValueError(f"TrainConfig.reward must be 'module:function', got {self.reward!r}")

    @property
    def is_tiny(self) -> bool:
        return self.model == "tiny"

    @property
    def is_synthetic(self) -> bool:
        return self.data == "synthetic"

    @property
    def samples_per_step(self) -> int:
        return self.group_size * self.prompts_per_step

    def resolved_verify_prompt(self) -> str | None:
        return TINY_VERIFY_PROMPT if self.verify_prompt is None and self.is_tiny else self.verify_prompt

    def warm_start_config(self) -> WarmStartConfig:
        return WarmStartConfig(steps=self.warm_start_steps, verifier_steps=self.warm_start_verifier_steps)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Options from a JSON or YAML file (by extension), keys normalized to field names."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml
        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of option: value, got {type(data).__name__}")
    names = {f.name for f in fields(TrainConfig)}
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in names:
            raise ValueError(f"config file {path}: unknown option {key!r} (known: {', '.join(sorted(names))})")
        out[name] = value
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rlvfast.train",
        description="RL^V: train one model as reasoner (GRPO / leave-one-out PPO / Dr.GRPO) and as "
                    "generative verifier of its own solutions (J = J_RL + lambda * J_verify). With no "
                    "arguments: the tiny built-in model on the synthetic arithmetic task, then a table "
                    "of pass@1, verifier balanced accuracy and voting at N = 1..16.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", default=None, help="JSON or YAML file of options (flags override it)")
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text + " (default: %(default)s)"}
        default = f.default if f.default is not MISSING else None
        kwargs["help"] = help_text + f" (default: {default!r})"
        if f.type in ("bool", bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif f.name == "eval_splits":
            kwargs["nargs"] = "+"
        else:
            kwargs["type"] = _arg_type(f.type)
            if "choices" in f.metadata:
                kwargs["choices"] = f.metadata["choices"]
        parser.add_argument(flag, **kwargs)
    return parser


def _arg_type(annotation) -> Any:
    text = str(annotation)
    if text.startswith("int"):
        return int
    if text.startswith("float"):
        return float
    return str


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """Defaults <- config file <- flags."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    config_path = args.pop("config", None)
    values = read_config_file(config_path) if config_path else {}
    values.update(args)
    return TrainConfig(**values)
