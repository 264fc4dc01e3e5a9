"""`--algo vineppo` and `--dynamic-sampling` under `torchrun --nproc-per-node 2` (gloo, FSDP2) against
one process: one step at world size 2 gives the loss, grad norm and metrics of one process on the
same batch and seed (1e-5 relative, as tests/train/test_distributed.py). VinePPO: each rank
continues its own rollouts; dynamic sampling: a step that needs a second round, whose policy
groups are the first useful ones in the one-process order and one useful group verifier-only.
"""

import pytest

from rlvfast.train import loop as train_mod
from rlvfast.train.dynamic_sampling import by_rank
from test_distributed import assert_same_step, config, finish, metrics, module_on_path, quiet, torchrun

GROUP_SIZE = 4
REWARD_MODULE = f'''
def parity(prompts, completions, completion_ids, **columns):
    return [float(sum(ids) % 2 == 0) for ids in completion_ids]

def odd_uniform(prompts, completions, completion_ids, id, **columns):
    """1 on every sample of a problem whose id number is odd (a uniform group); else 1, 0, then
    the parity of the sampled ids (a varied group)."""
    return [1.0 if int(i.rsplit("-", 1)[1]) % 2 else float(k % {GROUP_SIZE} == 0) if k % {GROUP_SIZE} < 2
            else float(sum(ids) % 2 == 0) for k, (i, ids) in enumerate(zip(id, completion_ids))]
'''
# seed 0: a rollout has two steps, so a state past a prompt is continued
VINE = dict(algo="vineppo", vine_samples=2, group_size=GROUP_SIZE, seed=0, reward="rlvfast_dist_vine_rewards:parity")
# seed 0, step 0: round 0's id parities are odd, even, odd, even (2 useful groups), round 1's even,
# even, odd, even: its first two useful groups complete the 4 policy groups, its last is verifier-only
DYNAMIC = dict(dynamic_sampling=True, prompts_per_step=4, group_size=GROUP_SIZE, seed=0,
               reward="rlvfast_dist_vine_rewards:odd_uniform")
VINE_COMPARED = ("vine/states", "vine/steps_per_solution", "vine/zero_advantage_frac", "vine/value_step_0")
DYNAMIC_COMPARED = ("dynamic/rounds", "dynamic/useful_groups", "dynamic/filtered_frac")


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory):
    yield from module_on_path(tmp_path_factory, "rlvfast_dist_vine_rewards", REWARD_MODULE)


@pytest.mark.parametrize("options, compared", [(VINE, VINE_COMPARED), (DYNAMIC, DYNAMIC_COMPARED)],
                         ids=["vineppo", "dynamic-sampling"])
def test_a_step_at_world_size_2_equals_one_process(micro_dir, reward_dir, tmp_path, options, compared):
    proc = torchrun(config(micro_dir, tmp_path / "two", steps=1, **options), reward_dir)
    train_mod.train(config(micro_dir, tmp_path / "one", steps=1, **options), log=quiet)
    finish(proc)
    (got,), (want,) = metrics(tmp_path / "two"), metrics(tmp_path / "one")
    assert_same_step(got, want)
    for key in compared:
        assert got[key] == pytest.approx(want[key], rel=1e-5), key
    if options is VINE:  # the case it is about: a state past the prompt is continued
        assert want["vine/steps_per_solution"] > 1
    if options is DYNAMIC:  # a second round and a useful group left out of the policy (hand-worked above)
        assert (want["dynamic/rounds"], want["dynamic/useful_groups"], want["dynamic/filtered_frac"]) == (2, 4, 3 / 8)


def test_by_rank_orders_the_groups_as_the_ranks_gather_them():
    # 2 rounds of 4 groups over 2 ranks: round r's groups 2q, 2q + 1 are rank q's
    assert by_rank(list("abcdefgh"), num_ranks=2, num_rounds=2) == list("abefcdgh")
    assert by_rank(list("abcdef"), num_ranks=1, num_rounds=3) == list("abcdef")
    assert by_rank(list("abcdef"), num_ranks=2, num_rounds=1) == list("abcdef")
