"""The RL^V loss math: advantages per algorithm, per-token weights per aggregation, rows,
and the unified one-forward loss against a slow reference with two plain forward passes."""
import math

import pytest
import torch

from rlvfast.models import TinyModelConfig, build_tiny_model, load_model
from rlvfast.train.loss import (LossConfig, Sample, build_rows, compute_advantages, k3_kl, rlv_loss,
                             rollout_weights, sequence_token_weights, verifier_label_weights, verifier_labels)


# ----------------------------------------------------------------------------- advantages
def test_grpo_advantages_normalize_by_group_std():
    adv, valid = compute_advantages([1, 0, 0, 0, 1, 1, 1, 1], group_size=4, algo="grpo")
    std = torch.tensor([1.0, 0, 0, 0]).std().item()  # unbiased, as TRL
    expected = [(1 - 0.25) / (std + 1e-6)] + [(0 - 0.25) / (std + 1e-6)] * 3 + [0.0] * 4  # all-equal group -> 0
    assert torch.allclose(adv, torch.tensor(expected), atol=1e-5)
    assert valid.all()


def test_rloo_advantages_are_leave_one_out():
    adv, _ = compute_advantages([1, 0, 1, 1], group_size=4, algo="rloo")
    assert torch.allclose(adv, torch.tensor([1 - 2 / 3, 0 - 1.0, 1 - 2 / 3, 1 - 2 / 3]), atol=1e-6)


def test_drgrpo_advantages_have_no_std_scaling():
    adv, _ = compute_advantages([1, 0, 0, 0], group_size=4, algo="drgrpo")
    assert torch.allclose(adv, torch.tensor([0.75, -0.25, -0.25, -0.25]), atol=1e-6)


def test_none_rewards_get_zero_advantage_and_leave_the_group_mean_alone():
    adv, valid = compute_advantages([1, None, 0, 0], group_size=4, algo="drgrpo")
    assert valid.tolist() == [True, False, True, True]
    mean = 1 / 3  # of the valid rewards; the None one is filled with it before the group statistics
    assert torch.allclose(adv, torch.tensor([1 - mean, 0.0, -mean, -mean]), atol=1e-6)


def test_unknown_algo_is_an_error_naming_it():
    with pytest.raises(ValueError, match="ppo"):
        compute_advantages([1, 0], 2, "ppo")


# ----------------------------------------------------------------------------- weights
def test_token_mean_weighs_every_valid_token_equally():
    w = sequence_token_weights(torch.tensor([2, 4, 6]), torch.tensor([True, True, False]), "token-mean", 10)
    assert torch.allclose(w, torch.tensor([1 / 6, 1 / 6, 0.0]))


def test_seq_mean_weighs_every_sequence_equally():
    w = sequence_token_weights(torch.tensor([2, 4, 6]), torch.tensor([True, True, True]), "seq-mean", 10)
    assert torch.allclose(w, torch.tensor([1 / 6, 1 / 12, 1 / 18]))
    assert torch.allclose((w * torch.tensor([2, 4, 6])).sum(), torch.tensor(1.0))


def test_drgrpo_constant_normalizer_is_max_new_tokens_per_sequence():
    w = sequence_token_weights(torch.tensor([2, 4, 6, 1]), torch.tensor([True, True, True, False]), "constant", 10)
    assert torch.allclose(w, torch.tensor([1 / 30, 1 / 30, 1 / 30, 0.0]))


def test_verifier_labels_and_weights():
    assert verifier_labels([1.0, 0.0, None, 0.7], yes_id=5, no_id=6) == [5, 6, 6, 5]
    assert torch.allclose(verifier_label_weights(torch.tensor([True, False, True, True])),
                          torch.tensor([1 / 3, 0, 1 / 3, 1 / 3]))


def test_balanced_verifier_weights_give_each_class_half():
    valid = torch.tensor([True, True, True, True, False])
    is_yes = torch.tensor([True, True, True, False, True])  # 3 Yes, 1 No among the labeled
    w = verifier_label_weights(valid, is_yes)
    assert torch.allclose(w, torch.tensor([1 / 6, 1 / 6, 1 / 6, 1 / 2, 0.0]))
    # one class only: the plain mean
    assert torch.allclose(verifier_label_weights(valid, torch.ones(5, dtype=torch.bool)),
                          verifier_label_weights(valid))
    assert float(verifier_label_weights(torch.zeros(3, dtype=torch.bool), torch.ones(3, dtype=torch.bool)).sum()) == 0


# ----------------------------------------------------------------------------- the unified loss
@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    path = build_tiny_model(tmp_path_factory.mktemp("micro") / "m",
                            TinyModelConfig(num_layers=2, hidden_size=32, num_heads=2, intermediate_size=64, seed=3))
    model, tok = load_model(path)
    return model.double(), tok


EOS, VERIFY = 1, [60, 61, 62]  # the char tokenizer's <eos>, three verify-prompt tokens
YES, NO = 99, 100


def make_samples(seed: int = 0) -> list[Sample]:
    g = torch.Generator().manual_seed(seed)
    # completion lengths hit: an EOS-ended sample, a length-truncated one (no EOS), a 1-token one (just EOS)
    shapes = [(5, [10, 11, 12, EOS]), (3, [20, 21, 22, 23, 24, 25]), (7, [EOS]), (4, [30, 31, EOS])]
    samples = []
    for i, (num_prompt, completion) in enumerate(shapes):
        prompt = torch.randint(5, 90, (num_prompt,), generator=g).tolist()
        old = -torch.rand(len(completion), generator=g, dtype=torch.float64) * 3
        samples.append(Sample(prompt, completion, old, advantage=[0.8, -1.2, 0.5, -0.3][i],
                              token_weight=[0.1, 0.05, 0.3, 0.07][i], label_id=YES if i % 2 == 0 else NO,
                              label_weight=0.25))
    return samples


def reference_loss(model, samples, cfg: LossConfig, ref_model=None) -> torch.Tensor:
    """Two plain forward passes per sample, full logits: policy on [prompt, completion],
    verifier on [prompt, solution without final EOS, verify]."""
    total = torch.zeros((), dtype=torch.float64)
    for s in samples:
        ids = torch.tensor([s.prompt_ids + s.completion_ids])
        logits = model(input_ids=ids).logits[0, len(s.prompt_ids) - 1:-1] / cfg.temperature  # (L, V)
        lp = torch.log_softmax(logits, -1).gather(1, torch.tensor(s.completion_ids)[:, None])[:, 0]  # (L,)
        total = total + s.token_weight * policy_terms(lp, s.old_logprobs, s.advantage, cfg).sum()
        if cfg.kl_coef:
            with torch.no_grad():
                ref_logits = ref_model(input_ids=ids).logits[0, len(s.prompt_ids) - 1:-1] / cfg.temperature
                ref_lp = torch.log_softmax(ref_logits, -1).gather(1, torch.tensor(s.completion_ids)[:, None])[:, 0]
            total = total + cfg.kl_coef * s.token_weight * (torch.exp(ref_lp - lp) - (ref_lp - lp) - 1).sum()
        if cfg.verifier_coef:
            solution = s.completion_ids[:-1] if s.completion_ids[-1] == EOS else s.completion_ids
            vids = torch.tensor([s.prompt_ids + solution + VERIFY])
            vlogits = model(input_ids=vids).logits[0, -1]  # (V,)
            total = total - cfg.verifier_coef * s.label_weight * torch.log_softmax(vlogits, -1)[s.label_id]
    return total


def policy_terms(lp: torch.Tensor, old: torch.Tensor, adv: float, cfg: LossConfig) -> torch.Tensor:
    """One sample's per-token policy loss, written out per loss type (not through ops.reference)."""
    if cfg.loss_type == "cispo":
        return -torch.clamp(torch.exp(lp - old), max=1 + cfg.clip_high).detach() * adv * lp
    ratio = torch.exp(lp - old)
    if cfg.loss_type == "gspo":  # one ratio for the whole sequence, the geometric mean of the token ratios
        ratio = torch.exp((lp - old).mean()).expand_as(lp)
    unclipped = ratio if cfg.delta is None else torch.clamp(ratio, max=cfg.delta)
    return -torch.minimum(unclipped * adv, torch.clamp(ratio, 1 - cfg.clip_low, 1 + cfg.clip_high) * adv)


def unified_loss(model, samples, cfg: LossConfig, ref_model=None):
    rows = build_rows(samples, VERIFY, [EOS], pad_id=0, with_verifier=cfg.verifier_coef > 0, dtype=torch.float64)
    if ref_model is not None:
        with torch.no_grad():
            ref_logits = ref_model(input_ids=rows.input_ids, attention_mask=rows.attention_mask).logits
            flat = ref_logits.reshape(-1, ref_logits.shape[-1]).index_select(0, rows.policy_index) / cfg.temperature
            rows.ref_logprobs = torch.log_softmax(flat, -1).gather(1, rows.policy_targets[:, None])[:, 0]
    hidden = model.model(input_ids=rows.input_ids, attention_mask=rows.attention_mask).last_hidden_state
    return rlv_loss(hidden, model.get_output_embeddings().weight, rows, cfg)


def assert_grads_close(got: dict, expected: dict) -> None:
    """HF's LlamaRMSNorm computes in float32 even in a float64 model, and the batched and
    per-sample forwards round differently there, so gradients agree to ~1e-5, not 1e-12."""
    for name, g in expected.items():
        assert torch.allclose(got[name], g, rtol=1e-4, atol=1e-6 * g.abs().max().item()), name


def grads_of(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("cfg", [
    LossConfig(verifier_coef=1.0),                                   # RL^V, on-policy clip band
    LossConfig(verifier_coef=0.5, clip_low=0.1, clip_high=0.05, temperature=0.7),  # ratios outside the band
    LossConfig(verifier_coef=0.0),                                   # the base method
], ids=["rlv", "rlv-clipped-temp", "base"])
def test_unified_loss_matches_two_forward_reference(micro, cfg):
    model, _ = micro
    samples = make_samples()
    expected = reference_loss(model, samples, cfg)
    expected_grads = grads_of(model, expected)
    out = unified_loss(model, samples, cfg)
    got_grads = grads_of(model, out.loss)
    assert out.loss.dtype == torch.float64
    assert torch.allclose(out.loss, expected, rtol=1e-10, atol=1e-12), (out.loss.item(), expected.item())
    assert_grads_close(got_grads, expected_grads)
    if cfg.verifier_coef == 0:
        assert out.verifier_loss.item() == 0.0
    else:
        assert out.verifier_loss.item() > 0


def test_unified_loss_with_kl_matches_reference(micro, tmp_path):
    model, _ = micro
    ref_model = type(model)(model.config).double()
    ref_model.load_state_dict({k: v + 0.01 * torch.randn_like(v) for k, v in model.state_dict().items()})
    cfg = LossConfig(verifier_coef=1.0, kl_coef=0.3)
    samples = make_samples(seed=1)
    expected = reference_loss(model, samples, cfg, ref_model)
    expected_grads = grads_of(model, expected)
    out = unified_loss(model, samples, cfg, ref_model)
    got_grads = grads_of(model, out.loss)
    assert out.kl.item() > 0
    assert torch.allclose(out.loss, expected, rtol=1e-10, atol=1e-12)
    assert_grads_close(got_grads, expected_grads)


def test_lambda_zero_is_the_base_method_exactly(micro):
    """verifier_coef=0: rows are [prompt, completion] (no verify tokens) and the loss is
    bit-for-bit the plain policy loss of that forward."""
    from rlvfast import ops
    model, _ = micro
    samples = make_samples()
    rows = build_rows(samples, VERIFY, [EOS], pad_id=0, with_verifier=False, dtype=torch.float64)
    assert rows.input_ids.shape[1] == max(len(s.prompt_ids) + len(s.completion_ids) for s in samples)
    out = unified_loss(model, samples, LossConfig(verifier_coef=0.0))
    hidden = model.model(input_ids=rows.input_ids, attention_mask=rows.attention_mask).last_hidden_state
    flat = hidden.reshape(-1, hidden.shape[-1])[rows.policy_index]
    base, _ = ops.policy_loss(flat, model.get_output_embeddings().weight, rows.policy_targets, rows.old_logprobs,
                              rows.advantages, rows.policy_weights, 0.2, 0.2, 1.0)
    assert torch.equal(out.loss.detach(), base.detach())


def test_micro_batches_sum_to_the_whole_batch(micro):
    """Weights are normalized over the step's batch, so splitting it changes nothing."""
    model, _ = micro
    samples = make_samples()
    cfg = LossConfig()
    whole = unified_loss(model, samples, cfg).loss
    parts = unified_loss(model, samples[:1], cfg).loss + unified_loss(model, samples[1:], cfg).loss
    assert torch.allclose(whole, parts, rtol=1e-12)


def test_rows_put_the_eos_target_at_the_last_solution_position():
    samples = make_samples()
    rows = build_rows(samples, VERIFY, [EOS], pad_id=0)
    width = rows.input_ids.shape[1]
    s0 = samples[0]  # prompt 5, completion [10, 11, 12, EOS]
    assert rows.input_ids[0, :5 + 3 + 3].tolist() == s0.prompt_ids + [10, 11, 12] + VERIFY
    assert rows.policy_index[:4].tolist() == [4, 5, 6, 7]
    assert rows.policy_targets[:4].tolist() == [10, 11, 12, EOS]
    assert rows.verifier_index[0].item() == 5 + 3 + 3 - 1
    s1 = samples[1]  # truncated: every sampled token is in the solution
    assert rows.verifier_index[1].item() == width + 3 + 6 + 3 - 1
    assert rows.input_ids[1, 3:9].tolist() == s1.completion_ids
    assert rows.verifier_targets.tolist() == [YES, NO, YES, NO]


def test_k3_kl_is_zero_at_equality_and_positive_otherwise():
    lp = torch.tensor([-1.0, -2.0, -0.5])
    assert torch.equal(k3_kl(lp, lp), torch.zeros(3))
    ref = torch.tensor([-1.5, -1.0, -0.5])
    assert torch.allclose(k3_kl(lp, ref), torch.tensor([math.exp(-0.5) + 0.5 - 1, math.exp(1) - 1 - 1, 0.0]))


# ----------------------------------------------------------------------------- loss variants
def true_logprobs(model, s: Sample, temperature: float = 1.0) -> torch.Tensor:
    with torch.no_grad():
        ids = torch.tensor([s.prompt_ids + s.completion_ids])
        logits = model(input_ids=ids).logits[0, len(s.prompt_ids) - 1:-1] / temperature  # (L, V)
        return torch.log_softmax(logits, -1).gather(1, torch.tensor(s.completion_ids)[:, None])[:, 0]  # (L,)


def shifted_samples(model, log_ratios: list[float], seed: int = 0) -> list[Sample]:
    """make_samples with old log-probs = the model's own minus log_ratios (cycled over all tokens),
    so each token's ratio exp(lp - old) is exp(log_ratio) exactly where the test wants it."""
    samples, k = make_samples(seed), 0
    for s in samples:
        shift = torch.tensor([log_ratios[(k + t) % len(log_ratios)] for t in range(len(s.completion_ids))],
                             dtype=torch.float64)
        k += len(s.completion_ids)
        s.old_logprobs = true_logprobs(model, s) - shift
    return samples


@pytest.mark.parametrize("cfg", [
    LossConfig(verifier_coef=0.5, loss_type="gspo"),
    LossConfig(verifier_coef=0.0, loss_type="gspo", delta=1.5, clip_high=0.28),
    LossConfig(verifier_coef=0.5, loss_type="cispo", clip_high=0.28),
    LossConfig(verifier_coef=0.0, loss_type="ppo", delta=1.5),
], ids=["gspo", "gspo-delta", "cispo", "ppo-delta"])
def test_loss_variants_match_two_forward_reference(micro, cfg):
    # token ratios 0.7 .. 2.0 with advantages of both signs: every clip region and the delta cap
    model, _ = micro
    samples = shifted_samples(model, [math.log(r) for r in (0.7, 1.1, 2.0, 0.95, 1.6, 1.3)])
    expected = reference_loss(model, samples, cfg)
    expected_grads = grads_of(model, expected)
    out = unified_loss(model, samples, cfg)
    got_grads = grads_of(model, out.loss)
    assert torch.allclose(out.loss, expected, rtol=1e-10, atol=1e-12), (out.loss.item(), expected.item())
    assert_grads_close(got_grads, expected_grads)
    assert any(g.abs().sum() > 0 for g in got_grads.values())


def test_gspo_counts_clipped_tokens_per_sequence(micro):
    # every token of sample 0 has ratio 1.5 (> 1.28, A = +0.8): its sequence ratio is clipped, so all
    # 4 tokens count; the others' sequence ratios are 1 (in the band)
    model, _ = micro
    samples = shifted_samples(model, [0.0])
    samples[0].old_logprobs = samples[0].old_logprobs - math.log(1.5)
    out = unified_loss(model, samples, LossConfig(verifier_coef=0.0, loss_type="gspo", clip_high=0.28))
    assert int(out.num_clipped) == 4


def test_rollout_correction_is_a_no_op_at_cpu_sized_gaps(micro):
    # the CPU sampler's log-probs differ from the trainer's by ~1e-7: the corrected loss (ratio 1 against
    # the trainer's own log-probs, weight exp(gap) ~ 1 + 1e-7) is the uncorrected one
    model, _ = micro
    g = torch.Generator().manual_seed(0)
    samples = make_samples()
    for s in samples:
        s.old_logprobs = true_logprobs(model, s) + 1e-7 * torch.randn(len(s.completion_ids), generator=g,
                                                                      dtype=torch.float64)
    for cfg in (LossConfig(), LossConfig(loss_type="gspo"), LossConfig(loss_type="cispo")):
        plain = unified_loss(model, samples, cfg)
        plain_grads = grads_of(model, plain.loss)
        corrected = unified_loss(model, samples, LossConfig(loss_type=cfg.loss_type, rollout_correction=3.0))
        corrected_grads = grads_of(model, corrected.loss)
        torch.testing.assert_close(corrected.loss, plain.loss, rtol=1e-9, atol=0)
        for name, grad in plain_grads.items():
            torch.testing.assert_close(corrected_grads[name], grad, rtol=1e-9, atol=1e-15 * grad.abs().max().item())
        assert int(corrected.num_capped) == 0
        assert 1e-9 < corrected.rollout_gap_max.item() < 1e-6


def test_rollout_correction_weights_tokens_and_reports_the_gap(micro):
    # trainer minus sampler log-probs cycle over 0.1, 1.0, -0.5: weights exp(0.1), min(e, 2) = 2 (capped),
    # exp(-0.5). First epoch: the ratio against the trainer's own log-probs is 1 (in the band), so each
    # token's loss is -weight * A and the gap metrics are exactly these log-ratios.
    model, _ = micro
    gaps = [0.1, 1.0, -0.5]
    samples = shifted_samples(model, gaps)
    out = unified_loss(model, samples, LossConfig(verifier_coef=0.0, rollout_correction=2.0))
    expected, k = 0.0, 0
    for s in samples:
        for _ in s.completion_ids:
            expected += s.token_weight * -min(math.exp(gaps[k % 3]), 2.0) * s.advantage
            k += 1
    assert out.loss.item() == pytest.approx(expected, rel=1e-9)
    assert int(out.num_capped) == sum(1 for i in range(k) if i % 3 == 1)
    assert out.rollout_gap_max.item() == pytest.approx(1.0, rel=1e-9)
    assert out.rollout_gap_sum.item() == pytest.approx(sum(abs(gaps[i % 3]) for i in range(k)), rel=1e-9)


def test_rollout_correction_takes_the_ratio_against_the_given_train_old_logprobs(micro):
    # a later PPO epoch: the loop passes the trainer's log-probs from before the update; the policy moved by
    # log 1.1 since (ratio 1.1, in the band) and the sampler sits 0.2 below the trainer's old log-probs
    model, _ = micro
    samples = make_samples()
    rows = build_rows(samples, VERIFY, [EOS], pad_id=0, with_verifier=False, dtype=torch.float64)
    lp = torch.cat([true_logprobs(model, s) for s in samples])
    rows.train_old_logprobs = lp - math.log(1.1)
    rows.old_logprobs = rows.train_old_logprobs - 0.2
    hidden = model.model(input_ids=rows.input_ids, attention_mask=rows.attention_mask).last_hidden_state
    out = rlv_loss(hidden, model.get_output_embeddings().weight, rows, LossConfig(verifier_coef=0.0,
                                                                                  rollout_correction=3.0))
    expected = -(rows.policy_weights * math.exp(0.2) * 1.1 * rows.advantages).sum()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-9)
    assert out.rollout_gap_max.item() == pytest.approx(0.2, rel=1e-9)


def test_rollout_weights_truncate_at_the_cap():
    weights, capped = rollout_weights(torch.tensor([0.0, 1.0, 2.0]), torch.tensor([0.0, 0.0, 0.0]), 3.0)
    assert torch.allclose(weights, torch.tensor([1.0, math.e, 3.0]))
    assert capped.tolist() == [False, False, True]


@pytest.mark.parametrize("kwargs,match", [
    (dict(loss_type="grpo"), "loss_type must be one of"),
    (dict(delta=1.1), r"delta=1.1: needs .* delta > 1 \+ clip_high = 1.2"),
    (dict(delta=3.0, loss_type="cispo"), "needs loss_type ppo or gspo"),
    (dict(rollout_correction=0.5), "must be >= 1 or None, got 0.5"),
])
def test_loss_config_names_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LossConfig(**kwargs)


def test_loss_options_reach_the_loss_config():
    from rlvfast.train.config import RESUME_MAY_CHANGE, parse_config
    config = parse_config(["--loss", "gspo", "--delta", "1.5", "--rollout-correction", "3"])
    assert (config.loss_config().loss_type, config.loss_config().delta,
            config.loss_config().rollout_correction) == ("gspo", 1.5, 3.0)
    assert parse_config(["--rollout-correction", "0"]).loss_config().rollout_correction is None
    assert parse_config([]).loss_config() == LossConfig(verifier_coef=0.05)
    assert not {"loss", "delta", "rollout_correction"} & RESUME_MAY_CHANGE  # they change the run


@pytest.mark.parametrize("argv,match", [
    (["--loss", "cispo", "--delta", "3"], "--delta 3.0 caps the PPO ratio: it needs --loss ppo or gspo"),
    (["--delta", "1.1"], r"--delta must be > 1 \+ --clip-high = 1.2, got 1.1"),
    (["--rollout-correction", "0.5"], "a number >= 1 .* or 0 for off; got 0.5"),
    (["--rollout-correction", "3", "--ppo-epochs", "2"], "needs --ppo-epochs 1 for now .got 2."),
])
def test_bad_loss_options_name_the_value(argv, match):
    from rlvfast.cli import UserError
    from rlvfast.train.config import parse_config
    with pytest.raises(UserError, match=match):
        parse_config(argv)
