"""The verification row, the rule sampler and trainer share: `[prompt, solution (a final EOS
left out), verify ids]`. The sampler's in-cache verification must see exactly the row the
trainer builds (`rlvfast.train.loss.build_rows`) and `Sampler.score` re-encodes, token for
token, and read the same P("Yes") from it, for samples that end on EOS, run out of tokens, or end on
EOS at their first token (an empty solution)."""
import pytest
import torch

import rlvfast.sampler.sampler as sampler_module
from rlvfast import Sampler, SamplingParams
from rlvfast.train.loss import Sample, build_rows
from rlvfast.sampler import solution_ids, verification_row, verification_tail
from rlvfast.sampler.reencode import reencoded_scores

EOS, OTHER_EOS, VERIFY = 2, 9, [40, 41, 42]
PROMPT = "Compute 7-1+8.\n"


@pytest.mark.parametrize("completion,solution", [
    ([5, 6, EOS], [5, 6]),            # ended on EOS: the EOS is left out
    ([5, 6, 7], [5, 6, 7]),           # cut at max_tokens
    ([EOS], []),                      # EOS first: an empty solution
    ([5, EOS, 6, OTHER_EOS], [5, EOS, 6]),  # any EOS id ends it; one inside (ignore_eos) stays
    ([], []),
])
def test_the_tail_through_the_cache_completes_the_row(completion, solution):
    eos = [EOS, OTHER_EOS]
    assert solution_ids(completion, eos) == solution
    row = verification_row([1, 3], completion, eos, VERIFY)
    assert row == [1, 3] + solution + VERIFY
    # the cache holds the prompt and every sampled id but the newest one
    assert [1, 3] + completion[:-1] + verification_tail(completion, eos, VERIFY) == row


def _recording_runner(sampler, monkeypatch) -> list[list[int]]:
    """Records the token ids each forward feeds through the cache of a one-row generate():
    the prompt, every decode step's token, then each verification tail (one list per verify)."""
    runner, fed, tails = sampler.runner, [], []
    real_prefill, real_decode, real_verify = runner.prefill, runner.decode_step, runner.verify

    def prefill(prompts, capacity):
        assert len(prompts) == 1
        fed[:] = list(prompts[0])
        return real_prefill(prompts, capacity)

    def decode_step(cache, token_ids):
        fed.extend(token_ids.tolist())
        return real_decode(cache, token_ids)

    def verify(cache, row_tails):
        tails.append(fed + row_tails[0])  # the cache's ids + what the verification feeds
        return real_verify(cache, row_tails)

    monkeypatch.setattr(runner, "prefill", prefill)
    monkeypatch.setattr(runner, "decode_step", decode_step)
    monkeypatch.setattr(runner, "verify", verify)
    return tails


def _force_eos_at(monkeypatch, eos_id: int, step: int | None) -> None:
    real, count = sampler_module.sample_tokens, {"k": 0}

    def forced(logits, params, uniforms):
        tokens, logprobs = real(logits, params, uniforms)
        if count["k"] == step:
            tokens = torch.full_like(tokens, eos_id)
        count["k"] += 1
        return tokens, logprobs

    monkeypatch.setattr(sampler_module, "sample_tokens", forced)


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast_trunk", "hf_trunk"])
@pytest.mark.parametrize("ending,eos_step,ignore_eos", [
    ("eos", 3, False),         # [a, b, c, EOS]: the EOS is not in the cache and not verified
    ("length", None, False),   # 6 tokens, the 6th not in the cache yet: verified after it is fed
    ("empty", 0, False),       # [EOS]: the prompt alone, then the verify ids
    ("eos_last_under_ignore_eos", 5, True),  # cut at max_tokens on an EOS: left out too
])
def test_in_cache_verification_sees_the_trainers_row(tiny_model, monkeypatch, fast_path, ending, eos_step,
                                                     ignore_eos):
    sampler = Sampler(*tiny_model, fast_path=fast_path)
    eos = sampler.tokenizer.eos_token_id
    _force_eos_at(monkeypatch, eos, eos_step)
    seen = _recording_runner(sampler, monkeypatch)
    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=ignore_eos)
    [out] = sampler.generate([PROMPT], params, score=True, score_at=[2])
    [c] = out.completions
    assert (c.finish_reason, c.token_ids[-1] == eos) == ("length" if ending.startswith(("length", "eos_last")) else
                                                         "stop", ending != "length")
    assert len(c.token_ids) == {"eos": 4, "length": 6, "empty": 1, "eos_last_under_ignore_eos": 6}[ending]
    sample = Sample(out.prompt_token_ids, c.token_ids, c.logprobs, 0.0, 1.0, sampler.yes_id, 1.0)
    rows = build_rows([sample], sampler.verify_ids, sampler.eos_ids, pad_id=0)
    row = rows.input_ids[0].tolist()
    assert seen[-1] == row  # the last verify forward is the sample's final verification
    solution = c.token_ids[:-1] if c.token_ids[-1] == eos else c.token_ids
    assert row == out.prompt_token_ids + solution + sampler.verify_ids
    reencoded = reencoded_scores(sampler.runner, [row]).item()
    assert abs(c.score - reencoded) < 1e-5
    assert abs(c.score - sampler.score([PROMPT], [[c]])[0][0]) < 1e-5
    if len(c.token_ids) > 2:  # the score_at=[2] look-ahead: the row of the first 2 tokens
        prefix = Sample(out.prompt_token_ids, c.token_ids[:2], c.logprobs[:2], 0.0, 1.0, sampler.yes_id, 1.0)
        assert seen[0] == build_rows([prefix], sampler.verify_ids, sampler.eos_ids, pad_id=0).input_ids[0].tolist()
        assert abs(c.budget_scores[2] - reencoded_scores(sampler.runner, [seen[0]]).item()) < 1e-5
