"""A stand-in for rlvfast.sampler.Sampler shared by the tests of the evaluation path: prompts
are bare problem texts (`Compute 3+4-2.`), solutions come from `synthetic.solution_text` with
40% wrong steps, and scores favour right answers, so votes and the verifier's metrics are not
all 0. Samples depend on the seed and the prompt only."""
import random
from types import SimpleNamespace

from rlvfast.tasks.synthetic import evaluate_expression, solution_text


class ScriptedSampler:
    def __init__(self, model=None, tokenizer=None, verify_prompt=None):
        self.tokenizer = tokenizer

    def generate(self, prompts, params, score=True, progress=False, score_at=()):
        outputs = []
        for prompt in prompts:
            rng = random.Random(f"{params.seed}:{prompt}")
            gold = str(evaluate_expression(prompt[len("Compute "):-1]))
            completions = []
            for _ in range(params.n):
                text = solution_text(prompt, error_rate=0.4, rng=rng)
                right = text.endswith(f"\\boxed{{{gold}}}")
                score = round(0.3 + 0.7 * rng.random() if right else 0.8 * rng.random(), 6)
                completions.append(SimpleNamespace(text=text, token_ids=text.split(), finish_reason="stop",
                                                   budget_scores={}, score=score))
            outputs.append(SimpleNamespace(prompt=prompt, completions=completions))
        return outputs
