"""Forks of rollouts at token boundaries: the caches `Sampler.continue_from` continues from.

A fork is (rollout i, boundary b): the state prompt_i + token_ids_i[:b], to be continued n
times. All forks of a call start from ONE prefill per rollout, of its prompt and its sampled
ids up to its last boundary (left-padded, batched); `KVCache.fork` then gathers each fork's
prefix minus its last token out of its rollout's row, and one decode step over the forks feeds
those last tokens, giving each fork's next-token logits. From there the sampler copies each
fork row n times and decodes, as generate() does after a prefill. So the prefix costs one
prefill per rollout (not one per boundary, nor one per continuation) plus one token per
boundary, and each continuation costs its new tokens only.

Why a re-prefill and not the rollout's own cache kept from generate(): generate() frees a
sample's rows as it ends (memory follows the live batch), and keeping every sample's cache
until its continuations would hold the whole rollout batch's KV at once; the one prefill per
rollout is a few percent of the whole MC phase at K = 9 on 100-token solutions (1.3% on the
tiny model, 3.4% on SmolLM2-135M: bench/test_bench_vine.py, "prefill share"), all that keeping
the caches could save. Not here: the decode loop (sampler.py), the random
streams (rng.py: a fork is keyed by its prefix like a prompt), the step segmentation
(rlvfast.train.vine).
"""
from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import dataclass

import torch

from rlvfast.sampler.kv_cache import KVCache


@dataclass(frozen=True, slots=True)
class Fork:
    rollout: int    # index of the rollout among those given
    boundary: int   # sampled ids of the rollout kept: 0 = the prompt alone


def plan_forks(prompt_ids: list[list[int]], token_ids: Seq[Seq[int]], boundaries: Seq[Seq[int]]) -> list[Fork]:
    """The forks in (rollout, boundary) order, each boundary checked to lie in [0, len(token_ids[i])]."""
    if len(token_ids) != len(prompt_ids) or len(boundaries) != len(prompt_ids):
        raise ValueError(f"continue_from: {len(prompt_ids)} prompts, {len(token_ids)} token id lists and "
                         f"{len(boundaries)} boundary lists; expected one of each per rollout")
    forks = []
    for i, (ids, bounds) in enumerate(zip(token_ids, boundaries)):
        if isinstance(bounds, (str, bytes)) or not isinstance(bounds, Seq):
            raise ValueError(f"boundaries[{i}] must be a list of token positions, got {bounds!r}")
        for b in bounds:
            if isinstance(b, bool) or not isinstance(b, int) or not 0 <= b <= len(ids):
                raise ValueError(f"boundaries[{i}] holds {b!r}; expected ints in [0, {len(ids)}] "
                                 f"(rollout {i} has {len(ids)} sampled ids)")
            forks.append(Fork(i, b))
    return forks


def fork_prefixes(prompt_ids: list[list[int]], token_ids: Seq[Seq[int]], forks: list[Fork]) -> list[list[int]]:
    """The ids each fork continues: its rollout's prompt and first `boundary` sampled ids."""
    return [prompt_ids[f.rollout] + list(token_ids[f.rollout][:f.boundary]) for f in forks]


def fork_budgets(forks: list[Fork], max_tokens: int, max_solution_tokens: int | None) -> list[int] | None:
    """Each fork's budget of new tokens: max_tokens, or at most max_solution_tokens - boundary."""
    if max_solution_tokens is None:
        return None
    if isinstance(max_solution_tokens, bool) or not isinstance(max_solution_tokens, int):
        raise ValueError(f"max_solution_tokens must be an int or None, got {max_solution_tokens!r}")
    late = [f for f in forks if f.boundary >= max_solution_tokens]
    if late:
        raise ValueError(f"boundary {late[0].boundary} of rollout {late[0].rollout} leaves no token to sample "
                         f"under max_solution_tokens={max_solution_tokens}; expected boundaries < it")
    return [min(max_tokens, max_solution_tokens - f.boundary) for f in forks]


def prefill_forks(runner, prompt_ids: list[list[int]], token_ids: Seq[Seq[int]],
                  forks: list[Fork]) -> tuple[KVCache, torch.Tensor]:
    """A cache of one row per fork holding its prefix, and its next-token logits (F, V), from
    one prefill per rollout up to its last boundary and one decode step (see the module doc)."""
    longest: dict[int, int] = {}
    for f in forks:
        longest[f.rollout] = max(longest.get(f.rollout, 0), f.boundary)
    row_of = {rollout: row for row, rollout in enumerate(longest)}
    contexts = [prompt_ids[r] + list(token_ids[r][:b]) for r, b in longest.items()]
    cache, _ = runner.prefill(contexts, capacity=0)  # (R rows): each rollout once, whatever its forks
    prefixes = fork_prefixes(prompt_ids, token_ids, forks)
    device = runner.device
    rows = torch.tensor([row_of[f.rollout] for f in forks], dtype=torch.long, device=device)  # (F,)
    num_cached = torch.tensor([len(p) - 1 for p in prefixes], dtype=torch.long, device=device)  # (F,)
    forked = cache.fork(rows, num_cached, capacity=int(num_cached.max()) + 1)
    last = torch.tensor([p[-1] for p in prefixes], dtype=torch.long, device=device)  # (F,)
    return forked, runner.decode_step(forked, last)  # (F, V): after each full prefix
