"""`TrainConfig`: every option of `python -m rlvfast.train`, typed, validated, and its CLI.

Precedence: the dataclass defaults (the embedded default: the tiny model on the synthetic
task), then an optional JSON or YAML file (`--config run.yaml`, keys = field names with
`_` or `-`, values coerced to the field's type: YAML reads `1e-6` as a string), then the
command-line flags; on `--resume` the checkpoint's options take the defaults' place (the
command passes `saved_config`). Each field's help text is its `--help` line. Where the paper is silent
the defaults follow TRL / verl, and the help says so. A bad value is a `UserError` naming the
option (and the file and key). `resume_differences` says which options a `--resume` may not
change. Not here: what the options do (`rlvfast.train`, `rlvfast.train.loss`).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import warnings
from dataclasses import MISSING, asdict, dataclass, field, fields
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rlvfast.cli import CommandParser, UserError
from rlvfast.train.trackers import TRACKERS, check_report_to
from rlvfast.train.loss import ALGOS, DEFAULT_LOSS_AGG, LOSS_AGGS, LOSS_TYPES, VERIFIER_AGGS, LossConfig
from rlvfast.models import TINY_VERIFY_PROMPT
from rlvfast.train.vine import VINE_SAMPLES
from rlvfast.train.warm_start import WarmStartConfig

LR_SCHEDULES = ("constant", "cosine")
DTYPES = ("auto", "fp32", "bf16")
# the linear layers of a Llama/Qwen decoder layer (peft's "all-linear" but the lm head, which the
# trainer's fused log-prob ops read as a plain weight)
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_REFUSED = ("lm_head", "embed_tokens")
# options a --resume may change: they do not change what the run computes
RESUME_MAY_CHANGE = frozenset({"out", "resume", "overwrite", "steps", "checkpoint_every", "keep_last",
                               "max_bad_steps", "log_every", "micro_batch", "gradient_checkpointing", "device",
                               "eval_problems", "eval_samples", "eval_splits", "compare", "report_to",
                               "dist_timeout"})
EVAL_OPTIONS = ("eval_problems", "eval_samples", "eval_splits")
DATA_OPTIONS = ("data_split", "problem_field", "answer_field", "id_field")


def _opt(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


def flag(name: str) -> str:
    """The command-line flag of a field: `max_new_tokens` -> `--max-new-tokens`."""
    return "--" + name.replace("_", "-")


@dataclass(slots=True)
class TrainConfig:
    # ---- what to train on
    model: str = _opt("tiny", "model: 'tiny' (the built-in char-level Llama, warm-started on imperfect "
                      "synthetic solutions and cached), or a Hugging Face directory / hub id / .gguf file")
    data: str = _opt("synthetic", "training problems: 'synthetic' (3-operand single-digit chains, "
                     "generated on the fly) or a .jsonl, .json (an array of records) or .parquet file "
                     "(.parquet needs pip install 'rlvfast[parquet]'), or a directory: a datasets save_to_disk "
                     "directory (pip install 'rlvfast[datasets]') or a hub-style folder of such files split by "
                     "file name (train-00000-of-00001.parquet, test.jsonl); read by "
                     "rlvfast.tasks.problems.load_problems")
    data_split: str | None = _opt(None, "the split of a --data directory; default: train where there is one, "
                                  "else the only one")
    problem_field: str | None = _opt(None, "the --data column holding the problem text; default: problem "
                                     "(or question)")
    answer_field: str | None = _opt(None, "the --data column holding the gold answer (a GSM8K '#### N' text, "
                                    "a number or a MATH answer); default: answer (or a MATH solution's last "
                                    "\\boxed{})")
    id_field: str | None = _opt(None, "the --data column holding a unique problem id; default: id (or "
                                "unique_id, else FILE-ROW)")
    out: str = _opt("runs/default", "run directory: metrics.jsonl, checkpoints/, latest, final/, summary.json; "
                    "one run at a time (OUT/.lock holds the running one's pid)")
    resume: bool = _opt(False, "continue the run in OUT from OUT/latest, with the checkpoint's options for "
                        "those not given. An error when there is no complete checkpoint, or when an option "
                        "given differs from the checkpoint's and changes the run; these may change: "
                        + ", ".join(sorted(map(flag, RESUME_MAY_CHANGE - {"out", "resume", "overwrite"}))))
    overwrite: bool = _opt(False, "start afresh in a non-empty OUT: first delete the run files there "
                           "(metrics.jsonl, checkpoints/, latest, final/, summary.json); other files stay (a "
                           "comparison's base_method/, base_model.json and comparison.png go too). "
                           "Without --resume or --overwrite, a non-empty OUT is an error")
    reward: str | None = _opt(None, "custom reward 'module:function' with TRL's signature f(prompts, "
                              "completions, completion_ids, **dataset_columns) -> list[float | None]; None = "
                              "no policy gradient and no verifier label for that sample. Default: the "
                              "time-limited grader (1 if the boxed answer equals the gold, else 0)")
    # ---- the algorithm
    algo: str = _opt("grpo", "grpo: (r - mean) / std; rloo: leave-one-out baseline (r - mean of the "
                     "others), i.e. leave-one-out PPO; drgrpo: r - mean, no std, constant normalizer; "
                     "vineppo: VinePPO, each line of a solution (a step) credited with V(after) - V(before), "
                     "values estimated by --vine-samples continuations from each step's start",
                     choices=ALGOS)
    vine_samples: int = _opt(VINE_SAMPLES, "--algo vineppo: K, the continuations sampled from each state to "
                             "estimate its value (VinePPO's default)")
    vine_max_steps: int = _opt(0, "--algo vineppo: states estimated per solution (its start and the ends of its "
                               "first steps); later steps share the rollout's own reward as value; 0 = no cap")
    verifier_coef: float = _opt(0.05, "lambda in J = J_RL + lambda * J_verify; 0 = the base method alone. The "
                                "paper uses 1.0; the tiny default's verifier gradient is ~7x its policy "
                                "gradient, and under Adam a larger lambda slows the policy (1.0: pass@1 0.61 "
                                "vs 0.77 without the verifier), hence 0.05 (docs/design/trainer.md)")
    verifier_agg: str = _opt("balanced", "how the verifier loss averages its labels: mean (each sample alike) or "
                             "balanced (the Yes and the No labels of a step each half the weight)",
                             choices=VERIFIER_AGGS)
    clip_low: float = _opt(0.2, "PPO clip: ratio >= 1 - clip_low (TRL/verl default 0.2)")
    clip_high: float = _opt(0.2, "PPO clip: ratio <= 1 + clip_high (TRL/verl default 0.2; DAPO uses 0.28)")
    loss: str = _opt("ppo", "policy loss: ppo (the clipped token ratio; TRL loss_type grpo/dapo/dr_grpo/bnpo, "
                     "verl loss_mode vanilla), gspo (GSPO: the clipped sequence ratio exp(mean_t(lp - old)); "
                     "TRL importance_sampling_level='sequence', verl loss_mode gspo), cispo (MiniMax-M1: the "
                     "detached weight min(ratio, 1 + clip_high) times the log-prob; TRL loss_type cispo caps "
                     "at epsilon_high itself, so its epsilon_high=5 is --clip-high 4). The aggregation is "
                     "--loss-agg",
                     choices=LOSS_TYPES)
    delta: float | None = _opt(None, "two-sided clip (TRL's delta): the unclipped ratio capped at delta, which "
                               "bounds the loss of negative-advantage tokens; must be > 1 + clip_high; ppo and "
                               "gspo only")
    rollout_correction: float | None = _opt(None, "truncated importance sampling for the sampler/trainer "
                                            "mismatch (TRL vllm_importance_sampling_correction with "
                                            "vllm_importance_sampling_cap, default 3): each token weighs "
                                            "min(exp(lp_trainer_old - lp_sampler), CAP) and the ratio is taken "
                                            "against the trainer's log-probs; 0 = off. A no-op on CPU, where "
                                            "the gap is ~1e-7. With --ppo-epochs 1 only, for now")
    dynamic_sampling: bool = _opt(False, "DAPO's dynamic sampling (verl algorithm.filter_groups): a group whose "
                                  "rewards are all equal carries no policy gradient, so the policy term takes "
                                  "only groups whose rewards vary, and more problems are sampled (a round of "
                                  "--prompts-per-step each) until --prompts-per-step such groups or "
                                  "--max-sampling-rounds; the other groups still train the verifier. Metrics "
                                  "dynamic/rounds, dynamic/useful_groups, dynamic/filtered_frac. One process only")
    max_sampling_rounds: int = _opt(3, "with --dynamic-sampling: at most this many sampling rounds per step, the "
                                    "first included (verl max_num_gen_batches); 1 = filter without drawing more")
    kl_coef: float = _opt(0.0, "KL penalty to the frozen initial model with the k3 estimator, as TRL's beta "
                          "(default 0, as in TRL and Dr.GRPO)")
    loss_agg: str | None = _opt(None, "token-mean (TRL 'dapo' / verl 'token-mean'), seq-mean (TRL 'grpo'), "
                                "or constant (Dr.GRPO: 1 / max_new_tokens per sequence); default: "
                                "constant for drgrpo, token-mean otherwise", choices=LOSS_AGGS)
    group_size: int = _opt(8, "G: samples per problem")
    prompts_per_step: int = _opt(8, "problems per step (a step = prompts_per_step x group_size samples)")
    micro_batch: int = _opt(64, "samples per forward/backward (memory only: the gradient is the same)")
    gradient_checkpointing: bool = _opt(False, "recompute each layer's activations in the backward instead of "
                                        "keeping them (memory only: the same gradient, more update time)")
    dtype: str = _opt("auto", "weights and compute: fp32 (float32 everywhere); bf16 (bf16 weights for sampling "
                      "and the forward, float32 master weights in the optimizer, or float32 LoRA adapters; "
                      "bf16 autocast on cuda); auto: float32 weights, bf16 autocast on cuda; the same under torchrun "
                      "(bf16: FSDP2 mixed precision, float32 shards as the master weights)", choices=DTYPES)
    lora_r: int = _opt(0, "LoRA rank through peft (0: train every weight); checkpoints then hold the adapter "
                       "(adapter_model.safetensors), final/ the merged model")
    lora_alpha: float = _opt(16.0, "LoRA alpha: the adapter's update is scaled by alpha / r")
    lora_target_modules: list[str] = _opt(LORA_TARGETS, "modules that get LoRA adapters (peft's suffix match); "
                                          "the lm head and the embeddings cannot")
    ppo_epochs: int = _opt(1, "optimizer steps per batch of rollouts (1 = on-policy, ratio 1, as TRL's "
                           "num_iterations=1)")
    lr: float = _opt(1e-4, "AdamW peak learning rate (the tiny model's; 3e-4 collapses its policy; "
                     "~1e-6 for real LLMs)")
    weight_decay: float = _opt(0.0, "AdamW weight decay (TRL default 0)")
    warmup: int = _opt(10, "linear learning-rate warmup steps, then --lr-schedule")
    lr_schedule: str = _opt("cosine", "after the warmup: constant (TRL's GRPO default) or cosine (decay to 10%% "
                            "of --lr at the last step)", choices=LR_SCHEDULES)
    max_grad_norm: float = _opt(1.0, "gradient clipping by global norm (TRL default 1.0)")
    max_new_tokens: int = _opt(48, "max tokens per solution", aliases=("--max-tokens",))
    temperature: float = _opt(1.0, "sampling temperature (the policy loss uses the same one)")
    verify_prompt: str | None = _opt(None, "text between a solution and the Yes/No label; default: the "
                                     "sampler's (the chat template's own turn), or a short one for 'tiny'")
    steps: int = _opt(500, "optimizer steps of RL (on --resume: the new total, to extend a run)")
    seed: int = _opt(0, "seed of data order, sampling and initialization")
    checkpoint_every: int = _opt(20, "write a checkpoint every K steps (and at the end)")
    keep_last: int = _opt(2, "checkpoints to keep (older ones are deleted after the new one is complete)")
    max_bad_steps: int = _opt(3, "stop after this many consecutive steps with a NaN/inf loss or gradient")
    grader_timeout: float = _opt(5.0, "seconds per answer for the grader (a time-out counts as wrong)",
                                 aliases=("--grade-timeout",))
    log_every: int = _opt(10, "print a step line (reward, losses, verifier accuracy, time) every K steps "
                          "when stderr is not a terminal (a log file, CI, Slurm; a terminal shows a "
                          "progress bar instead); 0 = never")
    device: str = _opt("auto", "auto (cuda if available, else cpu), cpu or cuda; bf16 autocast on cuda")
    dist_timeout: int = _opt(600, "under torchrun: seconds a collective waits for the other ranks before the "
                             "job ends with an error naming the rank (a peer that died or hangs); the last "
                             "checkpoint stays intact")
    report_to: list[str] = _opt(("none",), f"where the step metrics also go, one or more of {', '.join(TRACKERS)} "
                                "(TRL's names): tensorboard writes OUT/runs, wandb and trackio a run in project "
                                "$WANDB_PROJECT / $TRACKIO_PROJECT or 'rlvfast'; each needs its package "
                                "(pip install 'rlvfast[tensorboard]', ...)")
    # ---- the end-of-run evaluation (synthetic data only)
    eval_problems: int = _opt(400, "held-out problems per split for the final table (0 = no table; "
                              "synthetic --data only: evaluate other data with python -m rlvfast.eval)")
    eval_samples: int = _opt(16, "samples per problem for the final table (N for voting up to this)")
    eval_splits: list[str] = _opt(("test", "hard"), "synthetic splits of the final table")
    compare: bool | None = _opt(None, "also train the base method (--verifier-coef 0, same start, seed and "
                                "problems) into OUT/base_method and print the paper's comparison: the base "
                                "model, the base method and RL^V (pass@1, verifier, voting at N = 1..eval_samples, "
                                "compute efficiency, a bootstrap interval) with OUT/comparison.png; default: on "
                                "when the run prints a table (synthetic data, --eval-problems > 0) and "
                                "--verifier-coef > 0")
    warm_start_steps: int = _opt(WarmStartConfig.__dataclass_fields__["steps"].default,
                                 "supervised warm-start steps of the tiny model (cached by its config)")
    warm_start_verifier_steps: int = _opt(WarmStartConfig.__dataclass_fields__["verifier_steps"].default,
                                          "judging-practice steps of the tiny base model after its supervised "
                                          "ones (contrastive right/wrong pairs of synthetic solutions); the "
                                          "default is the shipped base's; other values train and cache "
                                          "their own base (~0.4 s per step on 2 CPU cores)")

    def __post_init__(self) -> None:
        self.eval_splits = list(self.eval_splits)
        self.report_to = check_report_to(list(self.report_to)) or ["none"]
        if self.algo not in ALGOS:
            raise UserError(f"--algo must be one of {ALGOS}, got {self.algo!r}")
        if self.loss_agg is None:
            self.loss_agg = DEFAULT_LOSS_AGG[self.algo]
        if self.loss_agg not in LOSS_AGGS:
            raise UserError(f"--loss-agg must be one of {LOSS_AGGS}, got {self.loss_agg!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise UserError(f"--lr-schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.verifier_agg not in VERIFIER_AGGS:
            raise UserError(f"--verifier-agg must be one of {VERIFIER_AGGS}, got {self.verifier_agg!r}")
        _check_ints(self, ("group_size", "prompts_per_step", "micro_batch", "ppo_epochs", "max_new_tokens",
                           "steps", "checkpoint_every", "keep_last", "max_bad_steps", "eval_samples",
                           "warm_start_steps", "dist_timeout", "vine_samples", "max_sampling_rounds"), minimum=1)
        _check_ints(self, ("warmup", "eval_problems", "seed", "warm_start_verifier_steps", "log_every",
                           "vine_max_steps"), minimum=0)
        _check_floats(self, ("verifier_coef", "kl_coef", "weight_decay", "clip_low", "clip_high"), positive=False)
        _check_floats(self, ("lr", "max_grad_norm", "temperature", "grader_timeout"), positive=True)
        if self.clip_low >= 1:
            raise UserError(f"--clip-low must be < 1, got {self.clip_low!r}")
        self._check_loss_options()
        self._check_precision()
        if self.device not in ("auto", "cpu", "cuda"):
            raise UserError(f"--device must be auto, cpu or cuda, got {self.device!r}")
        if self.reward is not None and ":" not in self.reward:
            raise UserError(f"--reward must be 'module:function', got {self.reward!r}")
        self._check_data_options()
        if self.resume and self.overwrite:
            raise UserError("--resume and --overwrite contradict each other: pass one")
        if self.compare and not (self.has_table and self.verifier_coef > 0):
            raise UserError(f"--compare needs the end-of-run table (--data synthetic and --eval-problems > 0; got "
                            f"--data {self.data} --eval-problems {self.eval_problems}) and --verifier-coef > 0 "
                            f"(got {self.verifier_coef}); to compare two runs on other data, evaluate each with "
                            f"python -m rlvfast.eval and pass the first's --out as the second's --baseline")
        if self.dynamic_sampling and self.group_size == 1:
            raise UserError("--dynamic-sampling keeps groups whose rewards vary: it needs --group-size 2 or more")
        if self.dynamic_sampling and self.algo == "vineppo":
            raise UserError("--dynamic-sampling with --algo vineppo: a group with equal rewards still has per-step "
                            "advantages under VinePPO, so filtering it would drop real gradient; use one of them")
        if self.group_size == 1 and self.algo != "vineppo":
            warnings.warn("--group-size 1: a lone sample's group-relative advantage is 0, so the policy gets "
                          "no gradient (only the verifier trains); use --group-size 2 or more", stacklevel=3)

    def _check_loss_options(self) -> None:
        """--loss, --delta, --rollout-correction (0 means off)."""
        if self.loss not in LOSS_TYPES:
            raise UserError(f"--loss must be one of {', '.join(LOSS_TYPES)}, got {self.loss!r}")
        if self.delta is not None:
            if self.loss == "cispo":
                raise UserError(f"--delta {self.delta} caps the PPO ratio: it needs --loss ppo or gspo, not cispo")
            if not (math.isfinite(self.delta) and self.delta > 1 + self.clip_high):
                raise UserError(f"--delta must be > 1 + --clip-high = {1 + self.clip_high}, got {self.delta!r}")
        if self.rollout_correction == 0:
            self.rollout_correction = None
        if self.rollout_correction is not None and not (math.isfinite(self.rollout_correction)
                                                        and self.rollout_correction >= 1):
            raise UserError(f"--rollout-correction is the cap of the importance weight: a number >= 1 (TRL's "
                            f"default 3), or 0 for off; got {self.rollout_correction!r}")
        if self.rollout_correction is not None and self.ppo_epochs > 1:
            # later epochs need the first epoch's log-probs as RowBatch.train_old_logprobs (not kept yet)
            raise UserError(f"--rollout-correction needs --ppo-epochs 1 for now (got {self.ppo_epochs}): later "
                            f"epochs would take the ratio against the current log-probs, not the pre-update ones")

    def _check_precision(self) -> None:
        """--dtype and the LoRA options; unsupported combinations name the option."""
        self.lora_target_modules = list(self.lora_target_modules)
        if self.dtype not in DTYPES:
            raise UserError(f"--dtype must be one of {DTYPES}, got {self.dtype!r}")
        _check_ints(self, ("lora_r",), minimum=0)
        _check_floats(self, ("lora_alpha",), positive=True)
        if self.lora_r == 0:
            return
        if not self.lora_target_modules:
            raise UserError("--lora-target-modules is empty: name at least one module, e.g. q_proj v_proj")
        if refused := [m for m in self.lora_target_modules if m in LORA_REFUSED]:
            raise UserError(f"--lora-target-modules {' '.join(refused)}: unsupported (the trainer reads the lm "
                            f"head and the embeddings as plain weights); choose among {' '.join(LORA_TARGETS)}")
        if importlib.util.find_spec("peft") is None:
            raise UserError(f"--lora-r {self.lora_r} needs the peft package: pip install 'rlvfast[lora]'")

    def _check_data_options(self) -> None:
        """--data-split and the column options: non-empty names, for a --data file or directory."""
        given = [name for name in DATA_OPTIONS if getattr(self, name) is not None]
        for name in given:
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise UserError(f"{flag(name)} must be a non-empty name, got {value!r}")
        if given and self.is_synthetic:
            raise UserError(f"{', '.join(map(flag, given))}: for a --data file or directory; --data synthetic "
                            f"has no splits or columns")

    @property
    def is_tiny(self) -> bool:
        return self.model == "tiny"

    @property
    def is_synthetic(self) -> bool:
        return self.data == "synthetic"

    @property
    def has_table(self) -> bool:
        """The run ends with a table on held-out synthetic problems."""
        return self.is_synthetic and self.eval_problems > 0

    @property
    def is_comparison(self) -> bool:
        """--compare, or by default: a table and lambda > 0."""
        return self.compare if self.compare is not None else self.has_table and self.verifier_coef > 0

    @property
    def vine_boundaries(self) -> int:
        """--vine-max-steps for `vine.step_boundaries`: 0 (no cap) as one state per token at most."""
        return self.vine_max_steps or self.max_new_tokens + 1

    def resolved_verify_prompt(self) -> str | None:
        return TINY_VERIFY_PROMPT if self.verify_prompt is None and self.is_tiny else self.verify_prompt

    def warm_start_config(self) -> WarmStartConfig:
        return WarmStartConfig(steps=self.warm_start_steps, verifier_steps=self.warm_start_verifier_steps)

    def loss_config(self) -> LossConfig:
        return LossConfig(clip_low=self.clip_low, clip_high=self.clip_high, temperature=self.temperature,
                          verifier_coef=self.verifier_coef, kl_coef=self.kl_coef, loss_type=self.loss,
                          delta=self.delta, rollout_correction=self.rollout_correction)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_ints(config: TrainConfig, names: tuple[str, ...], minimum: int) -> None:
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise UserError(f"{flag(name)} must be an int >= {minimum}, got {value!r}")


def _check_floats(config: TrainConfig, names: tuple[str, ...], positive: bool) -> None:
    """Finite numbers >= 0 (or > 0): an inf learning rate would pass `> 0` and fail deep in the loss."""
    for name in names:
        value = getattr(config, name)
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not is_number or value < 0 or (positive and value == 0):
            raise UserError(f"{flag(name)} must be a finite number {'>' if positive else '>='} 0, got {value!r}")


def resume_differences(saved: dict[str, Any], config: TrainConfig) -> list[str]:
    """The options of `config` that differ from a checkpoint's `saved` config and change the run,
    as `--lr 0.001 (checkpoint: 3e-05)`; options one side lacks (an older checkpoint) are skipped."""
    now = config.to_dict()
    return [f"{flag(name)} {_show(now[name])} (checkpoint: {_show(saved[name])})"
            for name in now if name in saved and name not in RESUME_MAY_CHANGE and now[name] != saved[name]]


def _show(value: Any) -> str:
    if isinstance(value, list):
        return " ".join(map(_show, value))
    if isinstance(value, str) and (not value.isprintable() or value != value.strip() or not value):
        return repr(value)  # a verify prompt with newlines stays on the error's one line
    return str(value)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Options from a JSON or YAML file (by extension), keys normalized to field names and values
    coerced to the fields' types; a UserError names the file (and the key) of a bad one."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    data = _parse_file(path)
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of option: value, got {type(data).__name__}")
    by_name = {f.name: f for f in fields(TrainConfig)}
    aliases = {alias[2:].replace("-", "_"): f.name
               for f in fields(TrainConfig) for alias in f.metadata.get("aliases", ())}
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        name = aliases.get(name, name)
        if name not in by_name:
            raise UserError(f"config file {path}: unknown option {key!r} (known: {', '.join(sorted(by_name))})")
        try:
            out[name] = coerce(by_name[name].type, value)
        except (TypeError, ValueError) as e:
            raise UserError(f"config file {path}: option {key!r}: {e}") from None
    return out


def _parse_file(path: Path) -> Any:
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise UserError(f"config file {path}: bad YAML{where}: {getattr(e, 'problem', None) or e}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"config file {path}: bad JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None


def coerce(annotation: str, value: Any) -> Any:
    """A config file's value as the field's type, as the flag's would be: '1e-6' -> 1e-06 for a
    float (YAML reads 1e-6 without a dot as a string), '8' or 8.0 -> 8 for an int."""
    kind = str(annotation)
    if value is None and kind.endswith("| None"):
        return None
    if kind in ("bool", "bool | None"):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ValueError(f"expected true or false, got {value!r}")
    if kind.startswith("list"):
        if isinstance(value, str):
            return value.split()
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        raise ValueError(f"expected a list of strings, got {value!r}")
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"expected a {kind.split()[0]}, got {value!r}")
    if kind == "int":
        number = _number(value, "an int")
        if not (isinstance(number, int) or number.is_integer()):
            raise ValueError(f"expected an int, got {value!r}")
        return int(number)
    if kind == "float":
        return float(_number(value, "a float"))
    return str(value)


def _number(value: str | int | float, expected: str) -> int | float:
    if not isinstance(value, str):
        return value
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"expected {expected}, got {value!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        "rlvfast.train",
        description="RL^V: train one model as reasoner (GRPO / leave-one-out PPO / Dr.GRPO) and as "
                    "generative verifier of its own solutions (J = J_RL + lambda * J_verify). With no "
                    "arguments: the tiny built-in model on the synthetic arithmetic task, trained as RL^V "
                    "and as the base method (lambda = 0) from the same start, then one table comparing "
                    "the base model, the base method and RL^V: pass@1, verifier balanced accuracy and "
                    "AUC, voting at N = 1..16, compute efficiency and a bootstrap interval (--compare).")
    parser.add_argument("--config", default=None, help="JSON or YAML file of options, keys = option names "
                        "(flags override it)")
    for f in fields(TrainConfig):
        default = f.default if f.default is not MISSING else None
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS,
                                  "help": f.metadata.get("help", "") + f" (default: {default!r})"}
        if f.type in ("bool", bool, "bool | None"):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif str(f.type).startswith("list"):
            kwargs["nargs"] = "+"
        else:
            kwargs["type"] = _arg_type(f.type)
            if "choices" in f.metadata:
                kwargs["choices"] = f.metadata["choices"]
        parser.add_argument(flag(f.name), *f.metadata.get("aliases", ()), **kwargs)
    return parser


def _arg_type(annotation) -> Any:
    text = str(annotation)
    if text.startswith("int"):
        return int
    if text.startswith("float"):
        return float
    return str


def parse_config(argv: list[str] | None = None,
                 saved_config: Callable[[str], dict[str, Any]] | None = None) -> TrainConfig:
    """Defaults <- config file <- flags. With --resume and `saved_config` (OUT -> the options of
    its checkpoint, {} when none): the checkpoint's options replace the defaults, so a resume
    need not repeat them. Warns about options given that will do nothing."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    config_path = args.pop("config", None)
    values = read_config_file(config_path) if config_path else {}
    values.update(args)
    given_by_user = set(values)  # not those read back from a checkpoint below
    if values.get("resume") and saved_config is not None:
        names = {f.name for f in fields(TrainConfig)} - {"out", "resume", "overwrite"}
        saved = saved_config(values.get("out", TrainConfig.__dataclass_fields__["out"].default))
        values = {**{k: v for k, v in saved.items() if k in names}, **values}
    config = TrainConfig(**values)
    if not config.is_synthetic and (given := [flag(n) for n in EVAL_OPTIONS if n in given_by_user]):
        warnings.warn(f"{', '.join(given)}: the end-of-run table is for --data synthetic only, so with "
                      f"--data {config.data} these do nothing (evaluate with python -m rlvfast.eval)", stacklevel=2)
    return config
