"""Sampler: in-cache scores == re-encoded scores, greedy == HF generate, log-probs == a fresh
forward, seeds, stops, errors. Tiny random model for most paths; SmolLM2 (chat template,
pad == eos, GQA) for the real-model paths with small n and max_tokens."""
import copy

import pytest
import torch

import rlvfast.sampler.sampler as sampler_module
from rlvfast import Completion, RequestOutput, Sampler, SamplingParams
from rlvfast.sampler import build_verify_prompt, format_prompt
from rlvfast.sampler.prompts import PLAIN_VERIFY_PROMPT

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

TINY_PROMPTS = ["Compute 1+2.\n", "Compute 33+4-5.\n", "Compute 7-1+8-2+9.\n"]  # different lengths


def force_eos(monkeypatch, eos_id: int, rate: float, first_row_eos: bool = True, seed: int = 0):
    """Wraps sample_tokens so that rows end on EOS at random steps (and row 0 at the first step)."""
    real = sampler_module.sample_tokens
    rng = torch.Generator().manual_seed(seed)
    step = {"k": 0}

    def forced(logits, params, uniforms):
        tokens, logprobs = real(logits, params, uniforms)
        hit = torch.rand(tokens.shape[0], generator=rng) < rate
        if first_row_eos and step["k"] == 0:
            hit[0] = True
        step["k"] += 1
        return torch.where(hit, torch.full_like(tokens, eos_id), tokens), logprobs

    monkeypatch.setattr(sampler_module, "sample_tokens", forced)


def all_completions(outputs):
    return [c for out in outputs for c in out.completions]


# ---------------------------------------------------------------------------- params
@pytest.mark.parametrize("field,value", [
    ("n", 0), ("n", 1.5), ("max_tokens", 0), ("temperature", -0.1), ("temperature", float("nan")),
    ("temperature", float("inf")), ("top_p", 0.0), ("top_p", 1.01), ("top_k", -1), ("seed", 1.5),
    ("stop", "abc"), ("stop", [""]), ("stop", ["ok", 3]),
])
def test_bad_sampling_params_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})


def test_sampling_params_defaults_follow_vllm():
    p = SamplingParams()
    assert (p.n, p.max_tokens, p.temperature, p.top_p, p.top_k, p.seed, p.stop) == (1, 256, 1.0, 1.0, 0, None, None)
    assert SamplingParams(temperature=0).is_greedy and SamplingParams(stop=("a",)).stop == ["a"]


@pytest.mark.parametrize("top_k,top_p,kept", [(0, 0.7, [0, 1]), (0, 0.79, [0, 1]), (0, 0.81, [0, 1, 2]),
                                               (3, 1.0, [0, 1, 2]), (1, 1.0, [0]), (3, 0.6, [0, 1])])
def test_sample_tokens_top_k_top_p_and_their_logprobs(top_k, top_p, kept):
    from rlvfast.sampler.sampling import sample_tokens

    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().repeat(4000, 1)  # (4000, 4)
    params = SamplingParams(top_k=top_k, top_p=top_p, temperature=1.0)
    uniforms = torch.rand(4000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    tokens, logprobs = sample_tokens(logits, params, uniforms)
    assert sorted(set(tokens.tolist())) == kept  # every kept token drawn, no other
    expected = (probs / probs[kept].sum()).log()[tokens]
    torch.testing.assert_close(logprobs, expected, atol=1e-6, rtol=0)
    freq = torch.bincount(tokens, minlength=4).float() / len(tokens)
    torch.testing.assert_close(freq[kept], probs[kept] / probs[kept].sum(), atol=0.03, rtol=0)


# ---------------------------------------------------------------------------- tiny model
@pytest.fixture(scope="module", params=[True, False], ids=["fast_trunk", "hf_trunk"])
def tiny_sampler(tiny_model, request):
    sampler = Sampler(*tiny_model, fast_path=request.param)
    assert (sampler.runner.fast is not None) == request.param
    return sampler


def test_plain_model_prompts(tiny_sampler):
    tok = tiny_sampler.tokenizer
    assert tiny_sampler.verify_prompt == PLAIN_VERIFY_PROMPT
    assert format_prompt(tok, "Compute 1+2.") == "Compute 1+2.\n"
    assert tiny_sampler.verify_ids == tok.encode(PLAIN_VERIFY_PROMPT, add_special_tokens=False)
    eos = tok.eos_token_id
    # A final EOS is not part of the verified solution; an EOS elsewhere is not special.
    assert tiny_sampler.verification_ids([5, 6], [7, eos]) == [5, 6, 7] + tiny_sampler.verify_ids
    assert tiny_sampler.verification_ids([5, 6], [7, 8]) == [5, 6, 7, 8] + tiny_sampler.verify_ids


@pytest.mark.parametrize("n", [1, 16])
def test_in_cache_scores_equal_reencoded_scores_tiny(tiny_sampler, monkeypatch, n):
    # Ragged prompts, EOS at random steps (row 0: at the first token), the rest cut at max_tokens.
    force_eos(monkeypatch, tiny_sampler.tokenizer.eos_token_id, rate=0.1)
    outputs = tiny_sampler.generate(TINY_PROMPTS, SamplingParams(n=n, max_tokens=24, seed=1), score=True)
    completions = all_completions(outputs)
    reasons = {c.finish_reason for c in completions}
    assert len(completions) == 3 * n and completions[0].token_ids == [tiny_sampler.tokenizer.eos_token_id]
    assert reasons == ({"stop", "length"} if n > 1 else reasons)
    assert len({len(c.token_ids) for c in completions}) > (5 if n > 1 else 1)  # finished at different steps
    reference = tiny_sampler.score(TINY_PROMPTS, [out.completions for out in outputs])
    got = torch.tensor([[c.score for c in out.completions] for out in outputs])
    torch.testing.assert_close(got, torch.tensor(reference), atol=1e-4, rtol=0)
    assert all(0.0 < c.score < 1.0 for c in completions)


def test_stop_strings_cut_text_and_are_scored(tiny_sampler):
    stop = ["a", "b", "c", "d", "e", "f"]
    outputs = tiny_sampler.generate(TINY_PROMPTS, SamplingParams(n=6, max_tokens=40, seed=3, stop=stop))
    stopped = [c for c in all_completions(outputs) if c.stop_reason in stop]
    assert len(stopped) >= 3
    for c in all_completions(outputs):
        assert not any(s in c.text for s in stop), c.text
        full = tiny_sampler.tokenizer.decode(c.token_ids, skip_special_tokens=True)
        if c in stopped:
            assert c.finish_reason == "stop" and full.startswith(c.text) and full[len(c.text):].startswith(c.stop_reason)
    reference = tiny_sampler.score(TINY_PROMPTS, [out.completions for out in outputs])
    got = [[c.score for c in out.completions] for out in outputs]
    torch.testing.assert_close(torch.tensor(got), torch.tensor(reference), atol=1e-4, rtol=0)


def test_ignore_eos_runs_to_max_tokens_and_a_final_eos_is_still_left_out(tiny_sampler, monkeypatch):
    eos = tiny_sampler.tokenizer.eos_token_id
    force_eos(monkeypatch, eos, rate=0.4)
    outputs = tiny_sampler.generate(TINY_PROMPTS, SamplingParams(n=4, max_tokens=6, seed=0, ignore_eos=True),
                                    progress=True)
    completions = all_completions(outputs)
    assert all(len(c.token_ids) == 6 and c.finish_reason == "length" for c in completions)
    assert any(c.token_ids[-1] == eos for c in completions) and any(eos in c.token_ids[:-1] for c in completions)
    reference = tiny_sampler.score(TINY_PROMPTS, [out.completions for out in outputs])
    torch.testing.assert_close(torch.tensor([[c.score for c in o.completions] for o in outputs]),
                               torch.tensor(reference), atol=1e-4, rtol=0)


def test_cache_that_grows_gives_the_same_samples_and_scores(tiny_sampler, monkeypatch):
    params = SamplingParams(n=4, max_tokens=20, seed=9)
    preallocated = all_completions(tiny_sampler.generate(TINY_PROMPTS, params))
    from rlvfast.sampler.kv_cache import KVCache

    monkeypatch.setattr(sampler_module, "INITIAL_DECODE_COLUMNS", 2)  # room for 2 tokens: must grow
    growths, real_grow = [], KVCache._grow
    monkeypatch.setattr(KVCache, "_grow", lambda self, capacity: growths.append(capacity) or real_grow(self, capacity))
    grown = all_completions(tiny_sampler.generate(TINY_PROMPTS, params))
    assert growths
    assert [c.token_ids for c in grown] == [c.token_ids for c in preallocated]
    torch.testing.assert_close(torch.tensor([c.score for c in grown]), torch.tensor([c.score for c in preallocated]),
                               atol=1e-5, rtol=0)
    assert max(len(c.token_ids) for c in grown) > 10


def test_greedy_equals_hf_generate_per_prompt(tiny_sampler):
    model, tok = tiny_sampler.model, tiny_sampler.tokenizer
    outputs = tiny_sampler.generate(TINY_PROMPTS, SamplingParams(n=2, max_tokens=30, temperature=0), score=False)
    for prompt, out in zip(TINY_PROMPTS, outputs):
        ids = torch.tensor([tok.encode(prompt)])
        hf = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=30,
                            pad_token_id=tok.pad_token_id)[0, ids.shape[1]:].tolist()
        for c in out.completions:
            assert c.token_ids == hf[:len(c.token_ids)] and c.score is None
            assert len(c.token_ids) == 30 or c.token_ids[-1] == tok.eos_token_id


@pytest.mark.parametrize("temperature,top_k", [(1.0, 0), (0.7, 0), (1.3, 5), (0.0, 0)])
def test_logprobs_equal_a_fresh_forward(tiny_sampler, temperature, top_k):
    model = tiny_sampler.model
    params = SamplingParams(n=3, max_tokens=16, temperature=temperature, top_k=top_k, seed=4)
    outputs = tiny_sampler.generate(TINY_PROMPTS[:2], params, score=False)
    for out in outputs:
        for c in out.completions:
            ids = torch.tensor([out.prompt_token_ids + c.token_ids])
            with torch.no_grad():
                logits = model(ids).logits[0, len(out.prompt_token_ids) - 1:-1].float()  # (T, V)
            if temperature > 0:
                logits = logits / temperature
            if top_k:
                kth = logits.topk(top_k, dim=-1).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            expected = torch.log_softmax(logits, -1).gather(1, torch.tensor(c.token_ids)[:, None])[:, 0]
            assert c.logprobs.dtype == torch.float32 and c.logprobs.shape == (len(c.token_ids),)
            torch.testing.assert_close(c.logprobs, expected, atol=1e-4, rtol=0)


def test_top_p_keeps_only_the_nucleus(tiny_sampler):
    outputs = tiny_sampler.generate(TINY_PROMPTS[:1], SamplingParams(n=8, max_tokens=8, top_p=0.05, seed=0),
                                    score=False)
    # The random tiny model is nearly flat: a 5% nucleus holds a few tokens, each with p >= 1/#kept.
    for c in outputs[0].completions:
        assert (c.logprobs > -3.0).all()


def test_same_seed_same_samples(tiny_sampler):
    params = SamplingParams(n=4, max_tokens=12, seed=7)
    a = all_completions(tiny_sampler.generate(TINY_PROMPTS, params, score=False))
    b = all_completions(tiny_sampler.generate(TINY_PROMPTS, params, score=False))
    c = all_completions(tiny_sampler.generate(TINY_PROMPTS, SamplingParams(n=4, max_tokens=12, seed=8), score=False))
    assert [x.token_ids for x in a] == [x.token_ids for x in b]
    assert [x.token_ids for x in a] != [x.token_ids for x in c]
    assert len({tuple(x.token_ids) for x in a}) > 1  # the n samples of a prompt differ


@pytest.mark.parametrize("score", [False, True])
def test_a_prompts_samples_do_not_depend_on_the_rest_of_the_batch(tiny_sampler, score):
    # Stop strings end samples at steps set by their own tokens, so rows leave (and the
    # survivors move) differently in the two batches; the first 3 of n samples must agree.
    stop = ["a", "e", "7"]
    alone = tiny_sampler.generate([TINY_PROMPTS[1]], SamplingParams(n=3, max_tokens=20, seed=11, stop=stop),
                                  score=score)[0].completions
    batch = tiny_sampler.generate([TINY_PROMPTS[2], TINY_PROMPTS[0], TINY_PROMPTS[1]],
                                  SamplingParams(n=7, max_tokens=20, seed=11, stop=stop), score=score)
    together = batch[2].completions[:3]
    assert len({len(c.token_ids) for o in batch for c in o.completions}) > 3  # rows left at different steps
    assert [c.token_ids for c in together] == [c.token_ids for c in alone]
    assert [c.text for c in together] == [c.text for c in alone]
    for a, b in zip(alone, together):
        torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-5, rtol=0)
        if score:
            assert abs(a.score - b.score) < 1e-5
    assert len({tuple(c.token_ids) for c in batch[2].completions}) > 1
    other = tiny_sampler.generate([TINY_PROMPTS[1]], SamplingParams(n=3, max_tokens=20, seed=12, stop=stop),
                                  score=False)[0].completions
    assert [c.token_ids for c in other] != [c.token_ids for c in alone]


def test_a_repeated_prompt_gets_fresh_samples_and_its_first_occurrence_is_unchanged(tiny_sampler):
    params = SamplingParams(n=2, max_tokens=12, seed=3)
    alone = tiny_sampler.generate([TINY_PROMPTS[0]], params, score=False)[0].completions
    first, second = tiny_sampler.generate([TINY_PROMPTS[0], TINY_PROMPTS[0]], params, score=False)
    assert [c.token_ids for c in first.completions] == [c.token_ids for c in alone]
    assert [c.token_ids for c in second.completions] != [c.token_ids for c in first.completions]


def test_no_seed_follows_torchs_global_generator(tiny_sampler):
    params = SamplingParams(n=2, max_tokens=12)
    torch.manual_seed(5)
    a = all_completions(tiny_sampler.generate(TINY_PROMPTS, params, score=False))
    b = all_completions(tiny_sampler.generate(TINY_PROMPTS, params, score=False))
    torch.manual_seed(5)
    c = all_completions(tiny_sampler.generate(TINY_PROMPTS, params, score=False))
    assert [x.token_ids for x in a] == [x.token_ids for x in c] != [x.token_ids for x in b]


@pytest.mark.parametrize("score", [True, False])
def test_score_at_reads_prefix_scores_in_cache_and_leaves_the_samples_alone(tiny_sampler, score):
    params = SamplingParams(n=4, max_tokens=14, seed=21, stop=["a", "e"])
    plain = all_completions(tiny_sampler.generate(TINY_PROMPTS, params, score=score))
    outputs = tiny_sampler.generate(TINY_PROMPTS, params, score=score, score_at=[3, 9, 14])
    budgeted = all_completions(outputs)
    assert [c.token_ids for c in budgeted] == [c.token_ids for c in plain]
    if score:
        torch.testing.assert_close(torch.tensor([c.score for c in budgeted]), torch.tensor([c.score for c in plain]),
                                   atol=1e-5, rtol=0)
    rows, expected = [], []
    for i, out in enumerate(outputs):
        for c in out.completions:
            assert set(c.budget_scores) == {L for L in (3, 9) if len(c.token_ids) > L}  # ran past L
            for L, p_yes in sorted(c.budget_scores.items()):
                rows.append((i, c.token_ids[:L]))
                expected.append(p_yes)
    assert 12 < len(rows) < 24  # some samples stopped before a budget, some ran past both
    reference = tiny_sampler.score([TINY_PROMPTS[i] for i, _ in rows], [[ids] for _, ids in rows])
    torch.testing.assert_close(torch.tensor(expected), torch.tensor([r[0] for r in reference]), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="score_at"):
        tiny_sampler.generate(TINY_PROMPTS, params, score_at=[0])


def test_each_prompt_prefilled_once_and_finished_rows_leave(tiny_sampler, monkeypatch):
    runner = tiny_sampler.runner
    prefill_rows, decode_rows = [], []
    real_prefill, real_decode = runner.prefill, runner.decode_step
    monkeypatch.setattr(runner, "prefill", lambda p, capacity: prefill_rows.append(len(p)) or real_prefill(p, capacity))
    monkeypatch.setattr(runner, "decode_step", lambda cache, t: decode_rows.append(len(t)) or real_decode(cache, t))
    force_eos(monkeypatch, tiny_sampler.tokenizer.eos_token_id, rate=0.2)
    outputs = tiny_sampler.generate(TINY_PROMPTS, SamplingParams(n=8, max_tokens=10, seed=0))
    lengths = sorted(len(c.token_ids) for c in all_completions(outputs))
    assert prefill_rows == [3]
    # decode step k runs exactly the samples with more than k tokens to go
    assert decode_rows == [sum(1 for n in lengths if n > k) for k in range(1, max(lengths))]
    assert decode_rows[0] < 24 or lengths[0] == 10


def test_prompt_token_ids_are_accepted(tiny_sampler):
    ids = tiny_sampler.encode(TINY_PROMPTS[1])
    params = SamplingParams(n=2, max_tokens=6, seed=2)
    by_text = tiny_sampler.generate([TINY_PROMPTS[1]], params)[0]
    by_ids = tiny_sampler.generate([ids], params)[0]
    assert isinstance(by_ids, RequestOutput) and by_ids.prompt is None and by_ids.prompt_token_ids == ids
    assert [c.token_ids for c in by_ids.completions] == [c.token_ids for c in by_text.completions]
    assert [c.score for c in by_ids.completions] == [c.score for c in by_text.completions]
    assert all(isinstance(c, Completion) for c in by_ids.completions)


def test_errors(tiny_sampler):
    with pytest.raises(ValueError, match="empty"):
        tiny_sampler.generate([], SamplingParams())
    with pytest.raises(ValueError, match="too long"):
        tiny_sampler.generate(["x" * 1100], SamplingParams(max_tokens=4))
    with pytest.raises(ValueError, match="too long"):  # fits alone, not with max_tokens
        tiny_sampler.generate(["x" * 1000], SamplingParams(max_tokens=100), score=False)
    with pytest.raises(ValueError, match="no tokens"):
        tiny_sampler.generate([""], SamplingParams())
    with pytest.raises(ValueError, match="list of prompts"):
        tiny_sampler.generate("Compute 1+2.\n", SamplingParams())
    with pytest.raises(ValueError, match="2 prompts but 1"):
        tiny_sampler.score(TINY_PROMPTS[:2], [["1"]])


def test_every_eos_id_stops_and_pad_equal_to_eos_is_kept(tiny_model):
    model, tok = tiny_model
    tok = copy.deepcopy(tok)
    tok.pad_token = tok.eos_token  # pad == eos must not hide the real EOS
    bang = tok.convert_tokens_to_ids("!")
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [tok.eos_token_id, bang]
    try:
        sampler = Sampler(model, tok)
    finally:
        model.generation_config.eos_token_id = saved
    assert set(sampler.eos_ids) == {tok.eos_token_id, bang}
    outputs = sampler.generate(TINY_PROMPTS, SamplingParams(n=8, max_tokens=120, seed=0))
    completions = all_completions(outputs)
    assert any(c.token_ids[-1] == bang for c in completions)
    for c in completions:
        assert bang not in c.token_ids[:-1] and tok.eos_token_id not in c.token_ids[:-1]
        if c.finish_reason == "stop":
            assert c.token_ids[-1] in (bang, tok.eos_token_id) and c.stop_reason == c.token_ids[-1]
            assert "!" not in c.text
    reference = sampler.score(TINY_PROMPTS, [out.completions for out in outputs])
    torch.testing.assert_close(torch.tensor([[c.score for c in o.completions] for o in outputs]),
                               torch.tensor(reference), atol=1e-4, rtol=0)


def check_fast_trunk_matches_hf(model, tok, prompts):
    """Prefill, a decode step and a verification through FastTrunk equal the HF trunk's."""
    fast, hf = Sampler(model, tok).runner, Sampler(model, tok, fast_path=False).runner
    assert fast.fast is not None and hf.fast is None
    ids = [Sampler(model, tok).encode(p) for p in prompts]
    results = []
    with torch.inference_mode():
        for runner in (fast, hf):
            cache, logits = runner.prefill(ids, capacity=len(max(ids, key=len)) + 5)  # + decode + verify
            step = runner.decode_step(cache, logits.argmax(-1))
            p_yes = runner.verify(cache, [[8, 9, 10]] + [[7, 8, 9, 10]] * (len(ids) - 1))  # row 0 as after an EOS
            results.append((logits, step, p_yes))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def _update_in_place(model, how: str) -> None:
    """Weight updates as training makes them; the last two do not bump `Parameter._version`."""
    if how == "add_":
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.5)
    elif how == "data":
        for p in model.parameters():
            p.data.add_(torch.randn_like(p) * 0.5)
    else:  # a fused AdamW step
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        torch.optim.AdamW(model.parameters(), lr=0.3, fused=True).step()


@pytest.mark.parametrize("how", ["add_", "data", "fused_adamw"])
def test_fast_trunk_matches_hf_trunk_and_follows_weight_updates(tiny_model, how):
    model, tok = copy.deepcopy(tiny_model[0]), tiny_model[1]
    check_fast_trunk_matches_hf(model, tok, TINY_PROMPTS)
    sampler = Sampler(model, tok)
    params = SamplingParams(n=2, max_tokens=8, seed=5)
    before = sampler.generate(TINY_PROMPTS, params)
    _update_in_place(model, how)
    after = sampler.generate(TINY_PROMPTS, params)
    reference = Sampler(model, tok, fast_path=False).generate(TINY_PROMPTS, params)
    assert [c.token_ids for c in all_completions(after)] == [c.token_ids for c in all_completions(reference)]
    assert [c.token_ids for c in all_completions(after)] != [c.token_ids for c in all_completions(before)]
    torch.testing.assert_close(torch.tensor([c.score for c in all_completions(after)]),
                               torch.tensor([c.score for c in all_completions(reference)]), atol=1e-4, rtol=0)


def test_head_with_a_logit_transform_falls_back_to_the_model_forward(tiny_model):
    # A config field such as logit_scale makes the runner use the model's own forward
    # (logits_to_keep=1) instead of hidden @ W; Llama ignores the field, so the samples and
    # scores must equal the plain path's.
    model, tok = copy.deepcopy(tiny_model[0]), tiny_model[1]
    plain = Sampler(model, tok)
    model.config.logit_scale = 0.5
    fallback = Sampler(model, tok)
    assert plain.runner.is_plain_head and not fallback.runner.is_plain_head and fallback.runner.fast is None
    params = SamplingParams(n=3, max_tokens=12, seed=2)
    a, b = plain.generate(TINY_PROMPTS, params), fallback.generate(TINY_PROMPTS, params)
    assert [c.token_ids for c in all_completions(a)] == [c.token_ids for c in all_completions(b)]
    scores = torch.tensor([c.score for c in all_completions(b)])
    torch.testing.assert_close(scores, torch.tensor([c.score for c in all_completions(a)]), atol=1e-4, rtol=0)
    reference = fallback.score(TINY_PROMPTS, [o.completions for o in b])
    torch.testing.assert_close(scores, torch.tensor([s for group in reference for s in group]), atol=1e-4, rtol=0)


def test_runner_works_outside_inference_mode_after_generate(tiny_model):
    # Regression: fused weights built inside generate()'s inference mode were inference
    # tensors, and a later prefill with grad enabled raised.
    sampler = Sampler(*tiny_model)
    sampler.generate(TINY_PROMPTS[:1], SamplingParams(max_tokens=2))
    ids = sampler.encode(TINY_PROMPTS[0])
    cache, logits = sampler.runner.prefill([ids], capacity=0)
    copied = cache.copy_rows(torch.zeros(2, dtype=torch.long), capacity=cache.length + 1)
    step = sampler.runner.decode_step(copied, logits.argmax(-1).repeat(2))
    with torch.no_grad():
        expected = sampler.model(torch.tensor([ids])).logits[0, -1]
    torch.testing.assert_close(logits[0], expected, atol=1e-4, rtol=0)
    assert step.shape == (2, logits.shape[-1]) and torch.isfinite(step).all()


def test_parked_rows_keep_their_kv_in_place_while_live_rows_decode():
    from rlvfast.sampler.kv_cache import KVCache

    cache = KVCache(6, 8, torch.device("cpu"), torch.float32)
    cache.append_slots(torch.ones(6, 2, dtype=torch.bool))
    cache.update(torch.arange(6.0).view(6, 1, 1, 1).expand(6, 1, 2, 1), torch.zeros(6, 1, 2, 1), 0)
    order = cache.park_rows([0, 4])
    assert (cache.num_rows, cache.num_parked) == (4, 2) and sorted(order[:4]) == [1, 2, 3, 5]
    assert sorted(order[4:]) == [0, 4]
    assert cache.keys[0][:6, 0, 0, 0].tolist() == [float(r) for r in order]  # rows moved with their data
    positions, _ = cache.append_slots(torch.ones(4, 1, dtype=torch.bool))  # a decode step of the live rows
    cache.update(torch.full((4, 1, 1, 1), -1.0), torch.zeros(4, 1, 1, 1), 0)
    assert positions[:, 0].tolist() == [2] * 4
    order2 = cache.park_rows([1])  # parked again: before the rows parked earlier
    parked_ids = [order[r] for r in order2[3:]] + order[4:]
    view = cache.parked(extra_columns=3)
    assert view.num_rows == 3 and view.keys[0][:, 0, 0, 0].tolist() == [float(r) for r in parked_ids]
    assert view.is_valid[:, :3].tolist() == [[True] * 3, [True, True, False], [True, True, False]]
    assert view.keys[0][1:, 0, 2, 0].tolist() == [0.0, 0.0]  # the decode step never wrote the parked rows
    view.append_slots(torch.ones(3, 3, dtype=torch.bool))
    view.update(torch.full((3, 1, 3, 1), 7.0), torch.zeros(3, 1, 3, 1), 0)
    assert (cache.keys[0][3:6, 0, 3:6] == 7).all() and (cache.keys[0][:3, 0, 3:6] == 0).all()  # in place
    assert cache.length == 3 and view.next_position.tolist() == [6, 5, 5]
    cache.drop_parked()
    assert (cache.num_rows, cache.num_parked, cache.keys[0].shape[0]) == (3, 0, 3)  # the dead half freed


# ---------------------------------------------------------------------------- SmolLM2
@pytest.fixture(scope="module")
def smol_sampler(smollm2):
    return Sampler(*smollm2)


def test_chat_verify_prompt_comes_from_the_template(smol_sampler):
    tok = smol_sampler.tokenizer
    assert smol_sampler.verify_prompt == ("<|im_end|>\n<|im_start|>user\nIs this solution correct (Yes/No)?"
                                          "<|im_end|>\n<|im_start|>assistant\n")
    assert build_verify_prompt(tok, "Is the answer correct (Yes/No)?").startswith("<|im_end|>\n<|im_start|>user\nIs the answer")
    prompt = format_prompt(tok, "What is 2+3?")
    assert prompt.endswith("<|im_start|>assistant\n") and "What is 2+3?" in prompt and "\\boxed{}" in prompt
    # the verified sequence renders as the template's own conversation with the extra turn
    sol = tok.encode("It is 5.", add_special_tokens=False)
    rendered = tok.decode(smol_sampler.verification_ids(tok.encode(prompt), sol + [tok.eos_token_id]))
    conversation = [{"role": "user", "content": f"What is 2+3?\n{'Please reason step by step, and put your final answer within '}\\boxed{{}}."},
                    {"role": "assistant", "content": "It is 5."},
                    {"role": "user", "content": "Is this solution correct (Yes/No)?"}]
    assert rendered == tok.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)


def test_in_cache_scores_equal_reencoded_scores_smollm2(smol_sampler, monkeypatch):
    tok = smol_sampler.tokenizer
    assert tok.pad_token_id == tok.eos_token_id  # SmolLM2: pad == eos
    prompts = [format_prompt(tok, "What is 2+3?"), format_prompt(tok, "Name a color. Answer in one word, please.")]
    force_eos(monkeypatch, tok.eos_token_id, rate=0.15)
    outputs = smol_sampler.generate(prompts, SamplingParams(n=3, max_tokens=10, seed=0), score=True)
    completions = all_completions(outputs)
    assert completions[0].token_ids == [tok.eos_token_id] and completions[0].text == ""
    assert {c.finish_reason for c in completions} == {"stop", "length"}
    for c in completions:
        if c.finish_reason == "stop":
            assert c.token_ids[-1] == tok.eos_token_id and "<|im_end|>" not in c.text
    reference = smol_sampler.score(prompts, [out.completions for out in outputs])
    got = torch.tensor([[c.score for c in out.completions] for out in outputs])
    torch.testing.assert_close(got, torch.tensor(reference), atol=1e-4, rtol=0)


def test_fast_trunk_matches_hf_trunk_smollm2(smol_sampler):
    tok = smol_sampler.tokenizer
    check_fast_trunk_matches_hf(smol_sampler.model, tok, [format_prompt(tok, "What is 2+3?"), format_prompt(tok, "Hi")])


def test_greedy_equals_hf_generate_smollm2(smol_sampler):
    model, tok = smol_sampler.model, smol_sampler.tokenizer
    prompts = [format_prompt(tok, "What is 2+3?"), format_prompt(tok, "Say hello.")]
    outputs = smol_sampler.generate(prompts, SamplingParams(n=1, max_tokens=12, temperature=0), score=False)
    for prompt, out in zip(prompts, outputs):
        ids = torch.tensor([smol_sampler.encode(prompt)])
        hf = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12)
        hf = hf[0, ids.shape[1]:].tolist()
        assert out.completions[0].token_ids == hf[:len(out.completions[0].token_ids)]


# ---------------------------------------------------------------------------- another architecture
@pytest.mark.parametrize("fast_path", [True, False])
def test_qwen2_with_qkv_bias_and_gqa(fast_path):
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    from rlvfast.models import build_char_tokenizer

    tok = build_char_tokenizer()
    config = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).eval()
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    sampler = Sampler(model, tok, fast_path=fast_path)
    assert (sampler.runner.fast is not None) == fast_path
    outputs = sampler.generate(TINY_PROMPTS[:2], SamplingParams(n=4, max_tokens=16, seed=0))
    torch.testing.assert_close(torch.tensor([[c.score for c in o.completions] for o in outputs]),
                               torch.tensor(sampler.score(TINY_PROMPTS[:2], [o.completions for o in outputs])),
                               atol=1e-4, rtol=0)
    greedy = sampler.generate(TINY_PROMPTS[:2], SamplingParams(max_tokens=16, temperature=0), score=False)
    for prompt, out in zip(TINY_PROMPTS[:2], greedy):
        ids = torch.tensor([sampler.encode(prompt)])
        hf = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=16)
        assert out.completions[0].token_ids == hf[0, ids.shape[1]:].tolist()[:len(out.completions[0].token_ids)]
