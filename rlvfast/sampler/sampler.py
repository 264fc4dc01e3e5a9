"""`Sampler`: batched KV-cache generation that scores each sample with P("Yes") as it ends.

One loop for all prompts x n samples: the P prompts are prefilled once (left-padded) and
each prompt's cache rows are copied n times for decoding (prefix sharing, no n-fold
prefill). Every step samples one token per live row, each row with its own counter-based
random stream (rng.py), so a prompt's samples do not depend on the rest of the batch. A row
that ends (an EOS id, a stop string, or max_tokens) leaves the decode batch and, when
scoring, is parked in the cache (its KV stays in place, see kv_cache.py) and verified inside
the loop while the other rows keep decoding: once half of the batch is parked (or no
row is left), [last token, verification prompt] is fed through the parked rows' own caches
in one forward; P("Yes") is read at the last position. The last sampled token is not in the
cache yet, so the verification starts with it, except an EOS, which is left out of the
verified solution (the rule, shared with the trainer: verification.py). A row's KV memory
is released when it is verified. `score` is the reference: the same token sequence encoded
from scratch. `continue_from` runs the same loop from rows forked at a rollout's token
boundaries instead of prefilled prompts (continuation.py).

Not here: the forwards (runner.py, fast_trunk.py), the cache layout (kv_cache.py),
sampling math (sampling.py), prompt texts (prompts.py), the re-encoding (reference.py), the
verification row (verification.py), the forks continue_from starts from (continuation.py).
"""
from __future__ import annotations

from collections.abc import Sequence as Seq

import torch

from rlvfast.answers import extract_answer
from rlvfast.models import eos_ids, yes_no_ids
from rlvfast.sampler.continuation import fork_budgets, fork_prefixes, plan_forks, prefill_forks
from rlvfast.sampler.kv_cache import KVCache
from rlvfast.sampler.outputs import Completion, RequestOutput
from rlvfast.sampler.params import SamplingParams
from rlvfast.sampler.prompts import build_verify_prompt, encode_prompt
from rlvfast.sampler.reencode import reencoded_scores
from rlvfast.sampler.rng import resolve_seed, sample_keys, uniforms
from rlvfast.sampler.runner import ModelRunner
from rlvfast.sampler.sampling import sample_tokens
from rlvfast.sampler.sequence import Sequence
from rlvfast.sampler.verification import solution_ids, verification_row, verification_tail

Prompt = str | list[int]
# Ended rows stay parked until half of the batch has ended (or no row is left) and are
# verified in one forward: on the tiny model 24 one-by-one verify forwards of 4x8 samples took
# 0.70 s (session 1), a flush at a quarter 3 forwards and ~27 ms, at half 2 forwards and ~23
# ms. Parked rows cost no extra memory, and the storage is compacted once half of it is free
# either way (docs/design/sampler.md, "Score-while-generate (parking)").
VERIFY_FLUSH_FRACTION = 0.5
INITIAL_DECODE_COLUMNS = 256  # KV columns reserved per sample at first; more when needed


class Sampler:
    """Generation with in-cache self-verification for any HF causal LM + tokenizer.

    `verify_prompt`: the text after a solution (default `build_verify_prompt(tokenizer)`:
    the chat template's own verification turn, or the plain-model question).
    `verify_ids`: its token ids, as fed after a solution. `fast_path`: Llama-family models
    run through `FastTrunk` (fused q/k/v and gate/up matmuls); False: the HF trunk forward.
    """

    def __init__(self, model: torch.nn.Module, tokenizer, verify_prompt: str | None = None,
                 fast_path: bool = True) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.yes_id, self.no_id = yes_no_ids(tokenizer)
        self.eos_ids = eos_ids(model, tokenizer)
        self._eos_set = frozenset(self.eos_ids)
        self.verify_prompt = build_verify_prompt(tokenizer) if verify_prompt is None else verify_prompt
        self.verify_ids: list[int] = tokenizer.encode(self.verify_prompt, add_special_tokens=False)
        if not self.verify_ids:
            raise ValueError(f"verify_prompt {self.verify_prompt!r} encodes to no tokens")
        self.runner = ModelRunner(model, self.yes_id, self.no_id, fast_path=fast_path)

    # ------------------------------------------------------------------ token sequences
    def encode(self, prompt: Prompt) -> list[int]:
        """Prompt ids as generate() uses them (a list of ids is taken as is)."""
        if isinstance(prompt, str):
            return encode_prompt(self.tokenizer, prompt)
        if isinstance(prompt, (list, tuple)) and all(isinstance(t, int) for t in prompt):
            return list(prompt)
        raise ValueError(f"a prompt must be a str or a list of token ids, got {type(prompt).__name__}")

    def solution_ids(self, completion_token_ids: Seq[int]) -> list[int]:
        """The sampled ids the verifier sees: all of them but a final EOS id."""
        return solution_ids(completion_token_ids, self._eos_set)

    def verification_ids(self, prompt_token_ids: Seq[int], completion_token_ids: Seq[int]) -> list[int]:
        """[prompt ids, solution ids (a final EOS left out), verify ids]: the exact sequence
        whose last position gives P("Yes") in generate(), score() and the trainer's rows."""
        return verification_row(prompt_token_ids, completion_token_ids, self._eos_set, self.verify_ids)

    # ------------------------------------------------------------------ generation
    @torch.inference_mode()
    def generate(self, prompts: Seq[Prompt], params: SamplingParams | None = None, score: bool = True,
                 progress: bool = False, score_at: Seq[int] = ()) -> list[RequestOutput]:
        """n samples per prompt, each with P("Yes") when `score` (see the module docstring).

        A sample stops at any EOS id of the model (kept as the last of its token_ids, left
        out of its text), at a stop string (token_ids end with the token that completed it;
        the text is cut before it), or after max_tokens ("length"; still scored).
        `score_at`: token budgets L; every sample still running after L tokens also gets
        P("Yes") of its first L tokens in `Completion.budget_scores[L]`, read through its own
        KV cache in the loop (one forward over the live rows, then taken back), as
        `score(prompt, token_ids[:L])` would re-encode it (sequential scaling).
        """
        params = params or SamplingParams()
        budgets = _budgets(score_at)
        prompt_ids = self._encode_all(prompts)
        verifies = score or bool(budgets)
        self._check_lengths(prompt_ids, params.max_tokens + (len(self.verify_ids) + 1 if verifies else 0))
        keys = None if params.is_greedy else sample_keys(resolve_seed(params.seed), prompt_ids, params.n)
        self.runner.sync_weights()
        seqs = self._run(prompt_ids, params, score, keys, progress, budgets)
        return self._outputs(prompts, prompt_ids, seqs, params)

    @torch.inference_mode()
    def continue_from(self, prompts: Seq[Prompt], token_ids: Seq[Seq[int] | Completion], boundaries: Seq[Seq[int]],
                      params: SamplingParams | None = None, score: bool = False, progress: bool = False,
                      max_solution_tokens: int | None = None, reprefill: bool = False) -> list[list[RequestOutput]]:
        """params.n continuations of rollouts from token boundaries, through forked KV caches.

        Rollout i is prompts[i] followed by token_ids[i] (its sampled ids, or a Completion);
        each b in boundaries[i] (0 <= b <= len(token_ids[i]); 0: from the prompt alone) names
        the state prompt + token_ids[i][:b]. Returns out[i][j], the RequestOutput of state
        boundaries[i][j]: prompt_token_ids = that state's ids, prompt None, and n Completions
        of at most max_tokens NEW tokens (text, answer and score of the continuation after the
        state; score as in generate: P("Yes") of state + continuation). They are what
        `generate([ids of every state, in this order], params, score)` returns, token for token,
        with the same seed: a continuation's random stream is keyed by the state's ids, its
        occurrence among this call's states and its index k (rng.py), so it does not depend
        on the rest of the batch (so from boundary 0, the rollouts' own seed replays the
        rollouts themselves: continue with another seed). Cost: one prefill per rollout up to
        its last boundary, one token per boundary, then the continuations' new tokens
        (continuation.py). Usable for tree search: a continuation is itself a rollout of
        prompt + prefix.
        `max_solution_tokens` M: a continuation from boundary b also stops after M - b new
        tokens ("length"), so prefix + continuation fits the rollouts' budget (each boundary
        must be < M). `reprefill`: each state is prefilled on its own instead of forked (the
        reference path and the benchmark's baseline; the same samples).
        """
        params = params or SamplingParams()
        prompt_ids = self._encode_all(prompts)
        token_ids = [self._completion_ids(t) for t in token_ids]
        forks = plan_forks(prompt_ids, token_ids, boundaries)
        if not forks:
            return [[] for _ in prompt_ids]
        states = fork_prefixes(prompt_ids, token_ids, forks)
        self._check_lengths(states, params.max_tokens + (len(self.verify_ids) + 1 if score else 0))
        budgets = fork_budgets(forks, params.max_tokens, max_solution_tokens)
        keys = None if params.is_greedy else sample_keys(resolve_seed(params.seed), states, params.n)
        self.runner.sync_weights()
        if reprefill:
            cache, logits = self.runner.prefill(states, capacity=0)  # (F rows), (F, V)
        else:
            cache, logits = prefill_forks(self.runner, prompt_ids, token_ids, forks)  # (F rows), (F, V)
        seqs = self._sequences([len(s) for s in states], params.n, keys, budgets)
        cache, logits = self._share(cache, logits, params, score)
        seqs = self._decode(cache, logits, seqs, params, score, progress, frozenset())
        flat = iter(self._outputs(states, states, seqs, params))
        return [[next(flat) for _ in bounds] for bounds in boundaries]

    def _run(self, prompt_ids: list[list[int]], params: SamplingParams, score: bool,
             keys: list[int] | None, progress: bool, budgets: frozenset[int] = frozenset()) -> list[Sequence]:
        cache, logits = self.runner.prefill(prompt_ids, capacity=0)  # (P, V): one prefill per prompt
        seqs = self._sequences([len(p) for p in prompt_ids], params.n, keys)
        cache, logits = self._share(cache, logits, params, score or bool(budgets))
        return self._decode(cache, logits, seqs, params, score, progress, budgets)

    @staticmethod
    def _sequences(prompt_lengths: list[int], n: int, keys: list[int] | None,
                   max_tokens: list[int] | None = None) -> list[Sequence]:
        """n sequences per prompt (prompt-major), each with its random stream (and budget)."""
        return [Sequence(i, i // n, prompt_lengths[i // n], key=None if keys is None else keys[i],
                         max_tokens=None if max_tokens is None else max_tokens[i // n])
                for i in range(len(prompt_lengths) * n)]

    def _share(self, cache: KVCache, logits: torch.Tensor, params: SamplingParams,
               verifies: bool) -> tuple[KVCache, torch.Tensor]:
        """Each row of `cache` (a prefilled prompt or a forked prefix) copied n times, with
        its next-token logits (P, V) -> (P*n, V): prefix sharing, no n-fold prefill."""
        share = torch.arange(cache.num_rows, device=self.runner.device).repeat_interleave(params.n)  # (P*n,)
        # Room for INITIAL_DECODE_COLUMNS new tokens (+ the verification); the cache doubles its
        # columns if samples run longer (the last token of a sample is never written: max_tokens - 1).
        columns = max(1, min(params.max_tokens - 1, INITIAL_DECODE_COLUMNS))
        columns += 1 + len(self.verify_ids) if verifies else 0
        return cache.copy_rows(share, capacity=cache.length + columns), logits[share]

    def _decode(self, cache: KVCache, logits: torch.Tensor, seqs: list[Sequence], params: SamplingParams,
                score: bool, progress: bool, budgets: frozenset[int]) -> list[Sequence]:
        """The decode loop: samples a token per live row, parks or drops ended rows, verifies."""
        runner = self.runner
        row_seq = list(range(len(seqs)))  # the sequence in each live row
        parked: list[Sequence] = []  # ended, waiting for their verify forward, in parked-row order
        bar = _progress_bar(len(seqs)) if progress else None
        flush_rows = max(1, int(len(seqs) * VERIFY_FLUSH_FRACTION))
        while True:
            step_uniforms = None if params.is_greedy else uniforms(  # (B,): each row's own draw at this step
                [seqs[i].key for i in row_seq], seqs[row_seq[0]].num_completion_tokens, runner.device)
            tokens, logprobs = sample_tokens(logits, params, step_uniforms)  # (B,), (B,)
            ended = self._append(seqs, row_seq, tokens.tolist(), logprobs.tolist(), params)
            if ended:
                # Scored rows are parked (their KV stays in place for the verify forward), others dropped.
                order = cache.park_rows(ended) if score else cache.remove_rows(ended)
                parked = [seqs[row_seq[r]] for r in order[cache.num_rows:]] + parked
                row_seq = [row_seq[r] for r in order[:cache.num_rows]]
                tokens = tokens[torch.tensor(order[:cache.num_rows], dtype=torch.long, device=tokens.device)]
                if bar is not None:
                    bar.update(len(ended))
            if parked and (not row_seq or len(parked) >= flush_rows):
                self._verify(cache, parked)
                parked = []
            if row_seq and seqs[row_seq[0]].num_completion_tokens in budgets:
                self._verify_live(cache, [seqs[i] for i in row_seq])
            if not row_seq:
                break
            logits = runner.decode_step(cache, tokens)
        if bar is not None:
            bar.close()
        return seqs

    def _append(self, seqs: list[Sequence], row_seq: list[int], tokens: list[int], logprobs: list[float],
                params: SamplingParams) -> list[int]:
        """Appends one token per live row; returns the rows whose sample just ended."""
        ended = []
        for row, (token, logprob) in enumerate(zip(tokens, logprobs)):
            seq = seqs[row_seq[row]]
            seq.append(token, logprob)
            if token in self._eos_set and not params.ignore_eos:
                reason, stop_reason = "stop", token
            elif params.stop and (hit := self._stop_string_hit(seq.token_ids, params.stop)) is not None:
                reason, stop_reason = "stop", hit
            elif seq.num_completion_tokens >= (seq.max_tokens or params.max_tokens):
                reason, stop_reason = "length", None
            else:
                continue
            seq.finish(reason, stop_reason)
            ended.append(row)
        return ended

    def _stop_string_hit(self, token_ids: list[int], stop: list[str]) -> str | None:
        # A stop string completed by the newest token lies in the last len(stop) + 1 tokens
        # (every token decodes to >= 1 character but special ones, which cannot be inside it).
        window = max(len(s) for s in stop) + 1
        tail = self.tokenizer.decode(token_ids[-window:], skip_special_tokens=True)
        for s in stop:
            if s in tail:
                return s
        return None

    def _verify(self, cache: KVCache, parked: list[Sequence]) -> None:
        """P("Yes") for the parked rows of `cache` (`parked` in row order), in one forward
        through their own keys/values, which are then freed."""
        tails = [verification_tail(s.token_ids, self._eos_set, self.verify_ids) for s in parked]
        view = cache.parked(extra_columns=1 + len(self.verify_ids))
        for seq, p_yes in zip(parked, self.runner.verify(view, tails).tolist()):
            seq.score = p_yes
        cache.drop_parked()

    def _verify_live(self, cache: KVCache, live: list[Sequence]) -> None:
        """P("Yes") of the live rows' solutions so far (`live` in row order), through a
        look-ahead forward that is then rewound, so decoding goes on as if it never ran."""
        positions = cache.next_position[:cache.num_rows].clone()
        view = cache.live(extra_columns=1 + len(self.verify_ids))
        tails = [verification_tail(s.token_ids, self._eos_set, self.verify_ids) for s in live]
        p_yes = self.runner.verify(view, tails).tolist()
        cache.rewind(view, positions)
        for seq, p in zip(live, p_yes):
            seq.budget_scores[seq.num_completion_tokens] = p

    # ------------------------------------------------------------------ the reference path
    @torch.inference_mode()
    def score(self, prompts: Seq[Prompt], completions: Seq[Seq[Completion | str | list[int]]],
              batch_size: int = 8) -> list[list[float]]:
        """P("Yes") of each completion re-encoded from scratch: `verification_ids(prompt,
        solution)` through a plain forward of the model (right-padded batches of
        `batch_size`, no KV cache). A Completion contributes its token_ids (token in, token
        out, so this matches generate(score=True)); a str is tokenized without special
        tokens; a list of ints is taken as token ids."""
        if len(prompts) != len(completions):
            raise ValueError(f"score: {len(prompts)} prompts but {len(completions)} lists of completions")
        prompt_ids = self._encode_all(prompts)
        rows = [self.verification_ids(p, self._completion_ids(c)) for p, group in zip(prompt_ids, completions)
                for c in group]
        self._check_lengths(rows, 0)
        flat: list[float] = []
        for start in range(0, len(rows), batch_size):
            flat.extend(reencoded_scores(self.runner, rows[start:start + batch_size]).tolist())
        out, k = [], 0
        for group in completions:
            out.append(flat[k:k + len(group)])
            k += len(group)
        return out

    def _completion_ids(self, completion: Completion | str | list[int]) -> list[int]:
        if isinstance(completion, Completion):
            return completion.token_ids
        if isinstance(completion, str):
            return self.tokenizer.encode(completion, add_special_tokens=False)
        if isinstance(completion, (list, tuple)) and all(isinstance(t, int) for t in completion):
            return list(completion)
        raise ValueError(f"a completion must be a Completion, str or list of token ids, got {type(completion).__name__}")

    # ------------------------------------------------------------------ checks and outputs
    def _encode_all(self, prompts: Seq[Prompt]) -> list[list[int]]:
        if isinstance(prompts, str) or not isinstance(prompts, Seq):
            raise ValueError(f"prompts must be a list of prompts, got {type(prompts).__name__}")
        if len(prompts) == 0:
            raise ValueError("prompts is empty: nothing to generate")
        ids = [self.encode(p) for p in prompts]
        for i, p in enumerate(ids):
            if not p:
                raise ValueError(f"prompt {i} encodes to no tokens")
        return ids

    def _check_lengths(self, rows: list[list[int]], extra: int) -> None:
        limit = self.runner.max_positions
        if limit is None:
            return
        for i, r in enumerate(rows):
            if len(r) + extra > limit:
                raise ValueError(f"sequence {i} is too long: {len(r)} prompt tokens + {extra} (max_tokens and the "
                                 f"verification prompt) > the model's context of {limit} positions")

    def _outputs(self, prompts: Seq[Prompt], prompt_ids: list[list[int]], seqs: list[Sequence],
                 params: SamplingParams) -> list[RequestOutput]:
        outputs = [RequestOutput(p if isinstance(p, str) else None, ids) for p, ids in zip(prompts, prompt_ids)]
        for seq in seqs:
            text = self.tokenizer.decode(solution_ids(seq.token_ids, self._eos_set), skip_special_tokens=True)
            if isinstance(seq.stop_reason, str):
                text = text[:text.find(seq.stop_reason)] if seq.stop_reason in text else text
            outputs[seq.prompt_index].completions.append(Completion(
                text=text, token_ids=seq.token_ids, logprobs=torch.tensor(seq.logprobs, dtype=torch.float32),
                finish_reason=seq.finish_reason, answer=extract_answer(text), score=seq.score,
                stop_reason=seq.stop_reason, budget_scores=dict(seq.budget_scores)))
        return outputs


def _budgets(score_at: Seq[int]) -> frozenset[int]:
    if isinstance(score_at, (str, bytes)) or not all(isinstance(L, int) and not isinstance(L, bool) and L >= 1
                                                     for L in score_at):
        raise ValueError(f"score_at must be a list of token budgets >= 1, got {score_at!r}")
    return frozenset(score_at)


def _progress_bar(total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="samples", unit="sample")
