"""VinePPO's pure functions: line-break steps, the capped boundaries, MC values, advantages,
repeated states, metrics. A hand-worked three-step example with exact values (every number
below is a sum of powers of two, so float equality is exact)."""
import pytest
import torch

from rlvfast.train.vine import (state_values, step_advantages, step_boundaries, step_ends, step_metrics,
                                token_advantages, token_texts, unique_states)

# Three steps: "x=1\n" (4 tokens), a blank line joined to "y=2\n" (5), "z\n" and the EOS
# ("" once decoded) as the blank tail of the last step (3).
TEXTS = ["x", "=", "1", "\n", "\n", "y", "=", "2", "\n", "z", "\n", ""]
MC_REWARDS = [[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]]  # K = 4 from s_0, s_1, s_2


def test_steps_end_at_line_breaks_blank_lines_join_the_next_step():
    assert step_ends(TEXTS) == [4, 9, 12]
    assert step_ends(["a", "b"]) == [2]  # one line: one step
    assert step_ends(["\n", "\n", "a", "\n"]) == [4]  # leading blank lines join; a trailing break is a tail
    assert step_ends(["a\n", "b\n", "c"]) == [1, 2, 3]  # a token that ends a line ("...\n") ends its step
    assert step_ends([]) == [0]


def test_hand_worked_three_steps():
    ends = step_ends(TEXTS)
    assert step_boundaries(TEXTS, max_steps=8) == [0, 4, 9]  # s_0, s_1, s_2: never the end
    values = state_values(MC_REWARDS, final_reward=1.0, num_steps=len(ends))
    assert values == [0.5, 0.75, 0.0, 1.0]  # V(s_3) = the final reward
    advantages = step_advantages(values)
    assert advantages == [0.25, -0.75, 1.0]
    expected = torch.tensor([0.25] * 4 + [-0.75] * 5 + [1.0] * 3)
    assert torch.equal(token_advantages(ends, advantages), expected)


@pytest.mark.parametrize("max_steps,boundaries,values,advantages", [
    (3, [0, 4, 9], [0.5, 0.75, 0.0, 1.0], [0.25, -0.75, 1.0]),
    (2, [0, 4], [0.5, 0.75, 1.0, 1.0], [0.25, 0.25, 0.0]),    # s_2 not estimated: the final reward
    (1, [0], [0.5, 1.0, 1.0, 1.0], [0.5, 0.0, 0.0]),           # only V(s_0): step 0 takes R - V(s_0)
])
def test_the_cap_gives_later_states_the_final_reward(max_steps, boundaries, values, advantages):
    assert step_boundaries(TEXTS, max_steps) == boundaries
    got = state_values(MC_REWARDS[:len(boundaries)], final_reward=1.0, num_steps=3)
    assert got == values and step_advantages(got) == advantages
    assert sum(advantages) == 1.0 - 0.5  # the step advantages always sum to R - V(s_0)


def test_token_texts_and_steps_of_a_real_tokenizer(tiny_model):
    _, tok = tiny_model
    ids = tok.encode("12+3=15\n15-4=11\n\\boxed{11}", add_special_tokens=False) + [tok.eos_token_id]
    texts = token_texts(tok, ids)
    assert texts[-1] == "" and "".join(texts) == "12+3=15\n15-4=11\n\\boxed{11}"
    ends = step_ends(texts)
    assert [tok.decode(ids[a:b], skip_special_tokens=True) for a, b in zip([0] + ends[:-1], ends)] == \
        ["12+3=15\n", "15-4=11\n", "\\boxed{11}"]


def test_bad_inputs_name_the_value():
    with pytest.raises(ValueError, match="max_steps must be an int >= 1.*got 0"):
        step_boundaries(TEXTS, 0)
    with pytest.raises(ValueError, match="4 states of a 3-step"):
        state_values(MC_REWARDS + [[1.0]], 1.0, 3)
    with pytest.raises(ValueError, match="s_1"):
        state_values([[1.0], []], 1.0, 3)
    with pytest.raises(ValueError, match="3 steps but 2 advantages"):
        token_advantages([4, 9, 12], [0.5, 0.5])


def test_repeated_states_are_continued_once():
    prompts = [[1, 2], [1, 2], [3]]
    ids = [[5, 6, 7], [5, 6, 9], [5, 6]]
    kept, source = unique_states(prompts, ids, [[0, 2, 3], [0, 2, 3], [0, 2]])
    # s_0 and [5, 6] of the same prompt are shared; the third rollout has another prompt
    assert kept == [[0, 2, 3], [3], [0, 2]]
    assert source == [[(0, 0), (0, 1), (0, 2)], [(0, 0), (0, 1), (1, 0)], [(2, 0), (2, 1)]]


def test_step_metrics():
    values = [[0.5, 0.75, 0.0, 1.0], [0.25, 0.0]]
    advantages = [step_advantages(v) for v in values]  # [0.25, -0.75, 1.0], [-0.25]
    m = step_metrics(values, advantages)
    assert m == {"vine/value_step_0": 0.375, "vine/value_step_1": 0.375, "vine/value_step_2": 0.0,
                 "vine/value_step_3": 1.0, "vine/zero_advantage_frac": 0.0, "vine/steps_per_solution": 2.0}
    assert step_metrics([[1.0, 1.0]], [[0.0]])["vine/zero_advantage_frac"] == 1.0


def test_the_pieces_fit_on_the_tiny_model(tiny_model):
    """The recipe the loop follows: steps -> boundaries -> repeated states dropped ->
    continue_from -> the full solutions graded -> values -> per-token advantages."""
    from rlvfast import Sampler, SamplingParams

    model, tok = tiny_model
    sampler = Sampler(model, tok)
    prompt = "Compute 1+2+4.\n"
    solutions = ["1+2=3\n3+4=7\n\\boxed{7}", "1+2=3\n3+4=8\n\\boxed{8}"]  # two rollouts of one prompt
    rollouts = [tok.encode(s, add_special_tokens=False) + [tok.eos_token_id] for s in solutions]
    rewards = [1.0, 0.0]
    prompt_ids = [sampler.encode(prompt)] * 2
    boundaries = [step_boundaries(token_texts(tok, r), max_steps=3) for r in rollouts]
    assert boundaries == [[0, 6, 12]] * 2
    kept, source = unique_states(prompt_ids, rollouts, boundaries)
    assert kept == [[0, 6, 12], [12]]  # s_0 and "1+2=3\n" are shared
    budget = len(rollouts[0]) + 8
    out = sampler.continue_from([prompt] * 2, rollouts, kept, SamplingParams(n=4, max_tokens=budget, seed=0),
                                max_solution_tokens=budget)

    def reward(i: int, j: int, completion) -> float:  # a stand-in grader on the whole solution text
        text = tok.decode(rollouts[i][:kept[i][j]], skip_special_tokens=True) + completion.text
        return float("7" in text)

    mc = [[[reward(i, j, c) for c in out[i][j].completions] for i, j in src] for src in source]
    for ids, per_state, reward_r in zip(rollouts, mc, rewards):
        ends = step_ends(token_texts(tok, ids))
        values = state_values(per_state, reward_r, len(ends))
        adv = token_advantages(ends, step_advantages(values))
        assert adv.shape == (len(ids),) and values[-1] == reward_r
        assert values[1] == sum(per_state[1]) / 4 and per_state[1] == mc[0][1]  # the shared state's value
        assert abs(adv[ends[-1] - 1].item() - (reward_r - values[2])) < 1e-6  # the last step, EOS included
    assert mc[0][2] == [1.0] * 4  # "...3+4=7\n" continues to a solution that contains the 7
