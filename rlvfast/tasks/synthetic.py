"""The synthetic arithmetic task of the embedded default: chains like `Compute 37+48-29.`

Deterministic by seed. Difficulty is the number of operands and of digits per operand;
named splits share the training difficulty (`train`, `test`) or raise it (`hard`) for
easy-to-hard tests. Held-out problems are never trained on: `is_held_out(text)` (a fixed hash
of the problem text) puts one text in HELD_OUT_EVERY in the held-out pool, whatever its
difficulty. Evaluation splits (`test`, `hard`, `ops=N,digits=M`) draw distinct problems from
that pool only; training draws (`train`, an explicit `Difficulty`, the base model's data) never
do, so a held-out text is unseen by every model trained here. `solution_text` writes the step-by-step solution
(`37+48=85`, `85-29=56`, `\\boxed{56}`), optionally with wrong steps at a chosen rate: a
wrong step is off by a small nonzero amount and later steps carry the error on, so the
final answer is wrong exactly when some step was. Grading is not done here.
"""
from __future__ import annotations

import random
import re
import zlib
from dataclasses import dataclass

from rlvfast.tasks.problems import Problem


@dataclass(frozen=True, slots=True)
class Difficulty:
    num_operands: int = 3
    num_digits: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.num_operands, int) or self.num_operands < 2:
            raise ValueError(f"Difficulty.num_operands must be an int >= 2, got {self.num_operands!r}")
        if not isinstance(self.num_digits, int) or not 1 <= self.num_digits <= 6:
            raise ValueError(f"Difficulty.num_digits must be an int in [1, 6], got {self.num_digits!r}")


# Seeds are offset per split so that `test` draws fresh problems from the training difficulty.
SPLITS: dict[str, tuple[Difficulty, int]] = {
    "train": (Difficulty(3, 1), 0),
    "test": (Difficulty(3, 1), 1_000_003),
    "hard": (Difficulty(4, 1), 2_000_003),
}

# One problem text in HELD_OUT_EVERY is held out: 3-operand single-digit chains have 2916
# distinct texts, so `test` has ~580 to draw from and training keeps ~2330.
HELD_OUT_EVERY = 5
TRAIN_SPLIT = "train"

_PROBLEM_RE = re.compile(r"^Compute ([0-9+\-]+)\.$")


def parse_difficulty(spec: str) -> tuple[Difficulty, int]:
    """`test`, `hard`, or `ops=4,digits=2` -> (difficulty, seed offset)."""
    if spec in SPLITS:
        return SPLITS[spec]
    fields = {"ops": 3, "digits": 1}
    for part in filter(None, spec.split(",")):
        key, _, value = part.partition("=")
        if key not in fields or not value.isdigit():
            raise ValueError(f"bad synthetic difficulty {spec!r}: expected one of {sorted(SPLITS)} "
                             f"or 'ops=N,digits=M'")
        fields[key] = int(value)
    return Difficulty(fields["ops"], fields["digits"]), 3_000_017 + 1000 * fields["ops"] + fields["digits"]


def is_held_out(text: str) -> bool:
    """Whether a problem text belongs to the held-out pool (evaluation only, never trained on)."""
    return zlib.crc32(text.encode()) % HELD_OUT_EVERY == 0


def make_problems(num_problems: int, split: str | Difficulty = TRAIN_SPLIT, seed: int = 0) -> list[Problem]:
    """`num_problems` problems of one split (or an explicit Difficulty), the same for the same seed.
    `train` and a Difficulty draw training problems (repeats allowed); any other split draws
    distinct held-out ones, and asking for more than the pool holds is a ValueError."""
    if isinstance(num_problems, bool) or not isinstance(num_problems, int) or num_problems < 0:
        raise ValueError(f"num_problems must be an int >= 0, got {num_problems!r}")
    difficulty, offset = (split, 0) if isinstance(split, Difficulty) else parse_difficulty(split)
    held_out = isinstance(split, str) and split != TRAIN_SPLIT
    rng = random.Random(seed + offset)
    name = split if isinstance(split, str) else f"ops={difficulty.num_operands},digits={difficulty.num_digits}"
    problems, seen = [], set()
    max_draws = 1000 + 100 * num_problems
    for _ in range(max_draws):
        if len(problems) == num_problems:
            break
        expr = _draw_expression(rng, difficulty)
        text = f"Compute {expr}."
        if is_held_out(text) != held_out or (held_out and text in seen):
            continue
        seen.add(text)
        problems.append(Problem(id=f"synthetic-{name}-{seed}-{len(problems)}", problem=text,
                                answer=str(evaluate_expression(expr)),
                                meta={"difficulty": name, "num_operands": difficulty.num_operands,
                                      "num_digits": difficulty.num_digits}))
    if len(problems) < num_problems:
        raise ValueError(f"split {name!r} has only about {len(problems)} distinct held-out problems "
                         f"(found in {max_draws} draws), {num_problems} asked for: ask for fewer or a "
                         f"harder difficulty")
    return problems


def _draw_expression(rng: random.Random, difficulty: Difficulty) -> str:
    low, high = 10 ** (difficulty.num_digits - 1), 10 ** difficulty.num_digits - 1
    operands = [rng.randint(max(low, 1), high) for _ in range(difficulty.num_operands)]
    signs = [rng.choice("+-") for _ in range(difficulty.num_operands - 1)]
    return str(operands[0]) + "".join(s + str(x) for s, x in zip(signs, operands[1:]))


def evaluate_expression(expr: str) -> int:
    """Left-to-right value of a chain of + and - on non-negative integers."""
    tokens = re.findall(r"[+-]|\d+", expr)
    value = int(tokens[0])
    for sign, number in zip(tokens[1::2], tokens[2::2]):
        value = value + int(number) if sign == "+" else value - int(number)
    return value


def solution_text(problem: Problem | str, error_rate: float = 0.0, rng: random.Random | None = None) -> str:
    """Step-by-step solution; each step is wrong with probability `error_rate`."""
    if isinstance(error_rate, bool) or not isinstance(error_rate, (int, float)) or not 0.0 <= error_rate <= 1.0:
        raise ValueError(f"error_rate must be a number in [0, 1], got {error_rate!r}")
    text = problem.problem if isinstance(problem, Problem) else problem
    match = _PROBLEM_RE.match(text)
    if match is None:
        raise ValueError(f"not a synthetic arithmetic problem: {text!r}")
    rng = rng or random.Random(0)
    tokens = re.findall(r"[+-]|\d+", match.group(1))
    value = int(tokens[0])
    lines = []
    offset = 0  # accumulated error; a new error never cancels it, so wrong steps => wrong answer
    for sign, number in zip(tokens[1::2], tokens[2::2]):
        result = value + int(number) if sign == "+" else value - int(number)
        if error_rate and rng.random() < error_rate:
            delta = rng.choice([d for d in (-3, -2, -1, 1, 2, 3) if d != -offset])
            result += delta
            offset += delta
        lines.append(f"{value}{sign}{number}={result}")
        value = result
    lines.append(f"\\boxed{{{value}}}")
    return "\n".join(lines)
