"""Sampler.continue_from: continuations from forked KV-cache rows equal generate() on the state
as a prompt (tokens, log-probs to 1e-5, scores), several boundaries at once, K different
continuations, greedy == HF generate from the prefix, one prefill per rollout. Tiny random
model (both trunks) for most paths, SmolLM2 (GQA, chat template) for one equality check."""
import pytest
import torch

from rlvfast import Sampler, SamplingParams
from rlvfast.sampler import format_prompt
from rlvfast.sampler.kv_cache import KVCache

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

TINY_PROMPTS = ["Compute 1+2.\n", "Compute 7-1+8-2+9.\n"]  # different lengths: ragged prefill rows


@pytest.fixture(scope="module", params=[True, False], ids=["fast_trunk", "hf_trunk"])
def tiny_sampler(tiny_model, request):
    return Sampler(*tiny_model, fast_path=request.param)


@pytest.fixture(scope="module")
def rollouts(tiny_model):
    """Two rollouts of 20 sampled ids (ignore_eos: a fixed length to put boundaries in)."""
    sampler = Sampler(*tiny_model)
    outs = sampler.generate(TINY_PROMPTS, SamplingParams(n=1, max_tokens=20, seed=3, ignore_eos=True), score=False)
    return [o.completions[0].token_ids for o in outs]


def assert_same_outputs(got, expected, atol=1e-5):
    assert [o.prompt_token_ids for o in got] == [o.prompt_token_ids for o in expected]
    for a, b in zip(got, expected):
        assert a.prompt is None
        assert [c.token_ids for c in a.completions] == [c.token_ids for c in b.completions]
        assert [c.finish_reason for c in a.completions] == [c.finish_reason for c in b.completions]
        assert [c.text for c in a.completions] == [c.text for c in b.completions]
        for x, y in zip(a.completions, b.completions):
            torch.testing.assert_close(x.logprobs, y.logprobs, atol=atol, rtol=0)
            if y.score is not None:
                assert abs(x.score - y.score) < atol


@pytest.mark.parametrize("score", [False, True])
def test_forked_continuations_equal_generate_on_the_state(tiny_sampler, rollouts, score):
    # Boundaries: the prompt alone (0), inside, and the very end (20) of a rollout; rollout 1
    # has a boundary list out of order. Stop strings end continuations at different steps,
    # so rows leave the decode batch in a different order than in the reference call.
    boundaries = [[0, 5, 12], [20, 3]]
    params = SamplingParams(n=3, max_tokens=12, seed=5, stop=["a", "7"])
    out = tiny_sampler.continue_from(TINY_PROMPTS, rollouts, boundaries, params, score=score)
    assert [len(r) for r in out] == [3, 2]
    prompt_ids = [tiny_sampler.encode(p) for p in TINY_PROMPTS]
    for i, row in enumerate(out):
        for b, state in zip(boundaries[i], row):
            assert state.prompt_token_ids == prompt_ids[i] + rollouts[i][:b]
    flat = [o for row in out for o in row]
    fresh = tiny_sampler.generate([o.prompt_token_ids for o in flat], params, score=score)
    assert_same_outputs(flat, fresh)
    assert len({len(c.token_ids) for o in flat for c in o.completions}) > 2  # ended at different steps


def test_k_continuations_differ_and_follow_the_seed(tiny_sampler, rollouts):
    params = SamplingParams(n=4, max_tokens=10, seed=1)
    a = tiny_sampler.continue_from(TINY_PROMPTS[:1], rollouts[:1], [[4]], params)[0][0].completions
    b = tiny_sampler.continue_from(TINY_PROMPTS[:1], rollouts[:1], [[4]], params)[0][0].completions
    c = tiny_sampler.continue_from(TINY_PROMPTS[:1], rollouts[:1], [[4]],
                                   SamplingParams(n=4, max_tokens=10, seed=2))[0][0].completions
    assert len({tuple(x.token_ids) for x in a}) == 4  # the K continuations differ
    assert [x.token_ids for x in a] == [x.token_ids for x in b]
    assert [x.token_ids for x in a] != [x.token_ids for x in c]


def test_a_states_continuations_do_not_depend_on_the_other_forks(tiny_sampler, rollouts):
    params = SamplingParams(n=3, max_tokens=10, seed=8)
    alone = tiny_sampler.continue_from(TINY_PROMPTS[1:], rollouts[1:], [[7]], params)[0][0]
    batch = tiny_sampler.continue_from(TINY_PROMPTS, rollouts, [[2, 19], [0, 7, 15]], params)
    assert_same_outputs([batch[1][1]], [alone])


def test_greedy_continuation_equals_hf_generate_from_the_prefix(tiny_sampler, rollouts):
    model = tiny_sampler.model
    out = tiny_sampler.continue_from(TINY_PROMPTS, rollouts, [[6], [0, 11]],
                                     SamplingParams(n=2, max_tokens=15, temperature=0))
    for state in (out[0][0], out[1][0], out[1][1]):
        ids = torch.tensor([state.prompt_token_ids])
        hf = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=15,
                            pad_token_id=tiny_sampler.tokenizer.pad_token_id)[0, ids.shape[1]:].tolist()
        for c in state.completions:
            assert len(c.token_ids) >= 1 and c.token_ids == hf[:len(c.token_ids)]


def test_each_rollout_is_prefilled_once_whatever_its_boundaries(tiny_sampler, rollouts, monkeypatch):
    prefills, decode_rows = [], []
    real_prefill, real_decode = tiny_sampler.runner.prefill, tiny_sampler.runner.decode_step
    monkeypatch.setattr(tiny_sampler.runner, "prefill",
                        lambda p, capacity: prefills.append(p) or real_prefill(p, capacity))
    monkeypatch.setattr(tiny_sampler.runner, "decode_step",
                        lambda cache, t: decode_rows.append(len(t)) or real_decode(cache, t))
    params = SamplingParams(n=9, max_tokens=6, seed=0, ignore_eos=True)
    tiny_sampler.continue_from(TINY_PROMPTS, rollouts, [[0, 4, 9, 13], [2, 17]], params)
    prompt_ids = [tiny_sampler.encode(p) for p in TINY_PROMPTS]
    # one prefill: each rollout up to its last boundary; then one step over the 6 forks' last
    # tokens, then 5 steps of 6 x 9 rows (the 6th token of each continuation is never fed)
    assert prefills == [[prompt_ids[0] + rollouts[0][:13], prompt_ids[1] + rollouts[1][:17]]]
    assert decode_rows == [6] + [54] * 5


def test_continue_from_accepts_completions_and_empty_boundaries(tiny_sampler):
    outs = tiny_sampler.generate(TINY_PROMPTS, SamplingParams(n=1, max_tokens=8, seed=0, ignore_eos=True), score=False)
    completions = [o.completions[0] for o in outs]
    got = tiny_sampler.continue_from(TINY_PROMPTS, completions, [[], [8]], SamplingParams(n=2, max_tokens=4, seed=0))
    assert got[0] == [] and got[1][0].prompt_token_ids == outs[1].prompt_token_ids + completions[1].token_ids
    assert tiny_sampler.continue_from(TINY_PROMPTS, completions, [[], []]) == [[], []]


@pytest.mark.parametrize("boundaries,match", [([[0], [9]], r"\[0, 8\]"), ([[0], [-1]], r"-1"),
                                              ([[0]], "boundary lists"), ([[0], 3], "boundaries\\[1\\]"),
                                              ([[0], [1.0]], "1.0")])
def test_bad_boundaries_name_the_value(tiny_sampler, boundaries, match):
    ids = [[5] * 8, [6] * 8]
    with pytest.raises(ValueError, match=match):
        tiny_sampler.continue_from(TINY_PROMPTS, ids, boundaries, SamplingParams(max_tokens=2))


def test_kv_cache_fork_takes_the_first_valid_tokens_of_each_row():
    # Row 0: 3 valid columns after a pad; row 1: valid, a gap (a column invalid for it), valid.
    cache = KVCache(2, 8, torch.device("cpu"), torch.float32)
    cache.append_slots(torch.tensor([[False, True, True, True], [True, True, False, True]]))
    keys = torch.arange(8.0).view(2, 1, 4, 1)  # row 0: 0..3, row 1: 4..7
    cache.update(keys, -keys, 0)
    forked = cache.fork(torch.tensor([1, 0, 1]), torch.tensor([3, 2, 1]), capacity=5)
    assert forked.length == 3 and forked.next_position.tolist() == [3, 2, 1]
    assert forked.is_valid[:, :3].tolist() == [[True] * 3, [False, True, True], [False, False, True]]
    valid_keys = forked.keys[0][:, 0, :3, 0].masked_fill(~forked.is_valid[:, :3], 0.0)  # pads: any value
    assert valid_keys.tolist() == [[4.0, 5.0, 7.0], [0.0, 1.0, 2.0], [0.0, 0.0, 4.0]]
    assert forked.values[0][0, 0, :3, 0].tolist() == [-4.0, -5.0, -7.0]
    with pytest.raises(ValueError, match="prefixes of"):
        cache.fork(torch.tensor([0]), torch.tensor([4]), capacity=5)  # row 0 holds 3 tokens


@pytest.mark.slow
def test_forked_continuations_equal_generate_smollm2(smollm2):
    sampler = Sampler(*smollm2)
    tok = sampler.tokenizer
    prompts = [format_prompt(tok, "What is 2+3?"), format_prompt(tok, "Name a color.")]
    outs = sampler.generate(prompts, SamplingParams(n=1, max_tokens=12, seed=0, ignore_eos=True), score=False)
    ids = [o.completions[0].token_ids for o in outs]
    params = SamplingParams(n=2, max_tokens=6, seed=4)
    out = sampler.continue_from(prompts, ids, [[0, 7], [12]], params, score=True)
    flat = [o for row in out for o in row]
    # 5e-5: SmolLM2's float32 floor; generate() of each state alone vs all three batched
    # already differs by 1.8e-5 in log-probs (the forks: 2.1e-5; tiny model: 5e-7 < 1e-5)
    assert_same_outputs(flat, sampler.generate([o.prompt_token_ids for o in flat], params, score=True), atol=5e-5)


def test_max_solution_tokens_caps_each_continuation_at_the_rollout_budget(tiny_sampler, rollouts):
    params = SamplingParams(n=2, max_tokens=10, seed=6, ignore_eos=True)
    out = tiny_sampler.continue_from(TINY_PROMPTS, rollouts, [[4, 15], [0]], params, max_solution_tokens=20)
    budgets = [min(10, 20 - b) for b in (4, 15, 0)]  # 10, 5, 10 new tokens
    flat = [out[0][0], out[0][1], out[1][0]]
    assert [[len(c.token_ids) for c in o.completions] for o in flat] == [[b, b] for b in budgets]
    for state, budget in zip(flat, budgets):  # each as generate() with its own max_tokens
        fresh = tiny_sampler.generate([state.prompt_token_ids],
                                      SamplingParams(n=2, max_tokens=budget, seed=6, ignore_eos=True), score=False)
        assert [c.token_ids for c in state.completions] == [c.token_ids for c in fresh[0].completions]
    with pytest.raises(ValueError, match="boundary 20 of rollout 0 leaves no token"):
        tiny_sampler.continue_from(TINY_PROMPTS, rollouts, [[20], []], params, max_solution_tokens=20)


def test_reprefill_is_the_same_samples(tiny_sampler, rollouts):
    params = SamplingParams(n=3, max_tokens=8, seed=2)
    boundaries = [[0, 9], [14]]
    forked = tiny_sampler.continue_from(TINY_PROMPTS, rollouts, boundaries, params, score=True)
    again = tiny_sampler.continue_from(TINY_PROMPTS, rollouts, boundaries, params, score=True, reprefill=True)
    assert_same_outputs([o for r in forked for o in r], [o for r in again for o in r])


def test_from_the_prompt_the_rollouts_seed_replays_the_rollouts(tiny_sampler):
    # Why the trainer must continue with another seed: a state is keyed like a prompt.
    params = SamplingParams(n=3, max_tokens=10, seed=13)
    rollouts = tiny_sampler.generate(TINY_PROMPTS[:1], params, score=False)[0].completions
    out = tiny_sampler.continue_from(TINY_PROMPTS[:1], [rollouts[0].token_ids], [[0]], params)[0][0]
    assert [c.token_ids for c in out.completions] == [c.token_ids for c in rollouts]
