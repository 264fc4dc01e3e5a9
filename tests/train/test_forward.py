"""The trainer's forward (`rlvfast.train.forward`) against HF's padded forward: the same hidden
states at the read positions and the same gradients, with shared prefixes of several lengths
(empty included), GQA, and through the whole update with the RL^V loss."""
import contextlib

import pytest
import torch

from rlvfast.train import loop as train_mod
from rlvfast.train import forward as train_forward
from rlvfast.models import TinyModelConfig, build_tiny_model, load_model
from rlvfast.train.loss import LossConfig, Sample, build_rows, rlv_loss
from rlvfast.train.rollouts import step_seed


@pytest.fixture(scope="module")
def micro_path(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("fwd") / "m",
                            TinyModelConfig(num_layers=2, hidden_size=32, num_heads=2, intermediate_size=64, seed=3))


def _model(path, num_kv_heads=None):
    model, _ = load_model(path)
    if num_kv_heads is not None:  # the same architecture with grouped-query attention, random weights
        config = model.config
        config.num_key_value_heads = num_kv_heads
        torch.manual_seed(0)
        model = type(model)(config)
    return model.double()


def _rows(seed=0):
    """7 right-padded rows over 3 distinct prompts (one of a single token: an empty prefix)."""
    g = torch.Generator().manual_seed(seed)
    prompts = [[5, 6, 7, 8], [9, 10], [3]]
    rows, cut = [], []
    for i in range(7):
        tail = torch.randint(5, 90, (int(torch.randint(1, 9, (1,), generator=g)),), generator=g).tolist()
        rows.append(prompts[i % 3] + tail)
        cut.append(len(prompts[i % 3]) - 1)
    width = max(map(len, rows))
    ids, mask = torch.zeros(len(rows), width, dtype=torch.long), torch.zeros(len(rows), width, dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, :len(r)], mask[b, :len(r)] = torch.tensor(r), 1
    read = torch.tensor([b * width + t for b, r in enumerate(rows) for t in range(cut[b], len(r))])
    return ids, mask, [len(r) for r in rows], cut, read


def _grads(model, value):
    model.zero_grad(set_to_none=True)
    value.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("num_kv_heads", [None, 1], ids=["mha", "gqa"])
def test_read_hidden_matches_the_padded_forward(micro_path, num_kv_heads):
    model = _model(micro_path, num_kv_heads)
    assert train_forward.supports(model)
    ids, mask, lengths, cut, read = _rows()
    expected = model.model(input_ids=ids, attention_mask=mask).last_hidden_state.reshape(-1, 32)[read]  # (M, H)
    probe = torch.randn(expected.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected_grads = _grads(model, (expected * probe).sum())
    got = train_forward.read_hidden(model, ids, lengths, cut, read)
    got_grads = _grads(model, (got * probe).sum())
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, rtol=1e-6, atol=1e-7)
    for name, g in expected_grads.items():  # HF's RMSNorm rounds to float32 even in a float64 model
        assert torch.allclose(got_grads[name], g, rtol=1e-5, atol=1e-6 * g.abs().max().item()), name


def test_gradient_checkpointing_gives_the_same_values_and_gradients(micro_path, monkeypatch):
    model = _model(micro_path, 1)
    ids, _, lengths, cut, read = _rows()
    plain = train_forward.read_hidden(model, ids, lengths, cut, read)
    probe = torch.randn(plain.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    plain_grads = _grads(model, (plain * probe).sum())
    saved = []  # what autograd keeps for the backward: less with checkpointing
    with monkeypatch.context() as m:  # the layer step's own saved-tensor hooks would hide its tensors from ours
        m.setattr(train_forward, "_fused_weights_rebuilt", lambda *args: contextlib.nullcontext())
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            checkpointed = train_forward.read_hidden(model, ids, lengths, cut, read, checkpoint=True)
        kept = sum(saved)
        saved.clear()
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            train_forward.read_hidden(model, ids, lengths, cut, read)
    assert kept < sum(saved)
    assert torch.equal(checkpointed, plain)
    for name, g in _grads(model, (checkpointed * probe).sum()).items():
        assert torch.equal(g, plain_grads[name]), name


def test_read_hidden_with_one_token_suffixes_gqa(micro_path):
    # Every row's suffix is one token past its shared prefix: the attention's one-query path
    # (the 2 query heads of the kv head attend as 2 "tokens") under the prefix mask, with grad.
    model = _model(micro_path, 1)
    ids = torch.tensor([[5, 6, 7, 8], [5, 6, 7, 11], [9, 10, 12, 0]])
    mask = (torch.arange(4)[None, :] < torch.tensor([[4], [4], [3]])).long()
    read = torch.tensor([3, 7, 10])  # the last real position of each row
    expected = model.model(input_ids=ids, attention_mask=mask).last_hidden_state.reshape(-1, 32)[read]
    expected_grads = _grads(model, expected.sum())
    got = train_forward.read_hidden(model, ids, [4, 4, 3], [3, 3, 2], read)
    got_grads = _grads(model, got.sum())
    assert torch.allclose(got, expected, rtol=1e-6, atol=1e-7)
    for name, g in expected_grads.items():
        assert torch.allclose(got_grads[name], g, rtol=1e-5, atol=1e-6 * g.abs().max().item()), name


def test_a_read_inside_the_shared_prefix_is_an_error(micro_path):
    model = _model(micro_path)
    ids, _, lengths, cut, _ = _rows()
    with pytest.raises(ValueError, match="prefix"):
        train_forward.read_hidden(model, ids, lengths, cut, torch.tensor([0]))  # row 0, position 0 < cut 3


def rlv_samples() -> list[Sample]:
    """6 samples in 2 groups of 3 sharing a prompt; EOS-ended, truncated and EOS-only completions."""
    g = torch.Generator().manual_seed(2)
    samples = []
    for i in range(6):
        completion = [[40, 41, 1], [42, 43, 44, 45], [1]][i % 3]
        samples.append(Sample([[11, 12, 13, 14, 15], [21, 22, 23]][i // 3], completion,
                              -torch.rand(len(completion), generator=g, dtype=torch.float64),
                              advantage=[0.5, -1.0, 0.3, 1.1, -0.4, 0.2][i], token_weight=0.1,
                              label_id=99 if i % 2 else 100, label_weight=1 / 6))
    return samples


def check_fast_forward_matches_hf(model) -> None:
    """The RL^V loss through the packed forward (`read_plan` + `read_hidden`) equals it through
    HF's padded forward in the loss, its verifier part, the log-probs and every gradient (a
    float64 model; ids below 62 so any tiny vocabulary holds them)."""
    samples, cfg = rlv_samples(), LossConfig(verifier_coef=1.0)
    rows = build_rows(samples, [60, 61], [1], pad_id=0, dtype=torch.float64)
    hidden = model.model(input_ids=rows.input_ids, attention_mask=rows.attention_mask).last_hidden_state
    expected = rlv_loss(hidden, model.lm_head.weight, rows, cfg)
    expected_grads = _grads(model, expected.loss)
    read, compact = train_forward.read_plan(rows, [len(s.prompt_ids) - 1 for s in samples])
    got = rlv_loss(train_forward.read_hidden(model, rows.input_ids, *read), model.lm_head.weight, compact, cfg)
    got_grads = _grads(model, got.loss)
    assert torch.allclose(got.loss, expected.loss, rtol=1e-6)
    assert torch.allclose(got.verifier_loss, expected.verifier_loss, rtol=1e-6)
    assert torch.allclose(got.logprobs, expected.logprobs, rtol=1e-6, atol=1e-7)
    assert set(got_grads) == set(expected_grads)
    for name, grad in expected_grads.items():  # HF's RMSNorm rounds to float32 even in float64
        assert torch.allclose(got_grads[name], grad, rtol=1e-5, atol=1e-6 * grad.abs().max().item()), name


def test_rlv_loss_through_the_fast_forward_matches_the_hf_forward(micro_path):
    check_fast_forward_matches_hf(_model(micro_path))


def test_rl_step_logs_the_samplers_p_yes_from_the_update(micro_path, tmp_path, monkeypatch):
    """With lambda > 0 the sampler does not score; P("Yes") comes from the update's first
    forward and equals the sampler's in-cache score of the same samples."""
    from rlvfast import Sampler, SamplingParams
    from rlvfast.train.loss import LossConfig
    from rlvfast.sampler import format_prompt
    from rlvfast.tasks.synthetic import make_problems
    from rlvfast.train.config import TrainConfig

    model, tok = load_model(micro_path)
    config = TrainConfig(model=str(micro_path), out=str(tmp_path), group_size=4, prompts_per_step=2,
                         micro_batch=3, max_new_tokens=6, verify_prompt="\nOK?\n", eval_problems=0, lr=1e-3)
    sampler = Sampler(model, tok, verify_prompt="\nOK?\n")
    problems = make_problems(2, "train", seed=0)
    params = SamplingParams(n=4, max_tokens=6, temperature=1.0, seed=step_seed(config.seed, 0))
    expected = [c.score for o in sampler.generate([format_prompt(tok, p.problem) for p in problems], params,
                                                     score=True) for c in o.completions]
    seen = {}
    real_metrics = train_mod.verifier_step_metrics

    def spy(scores, rewards):
        seen["scores"] = list(scores)
        return real_metrics(scores, rewards)

    def parity(prompts, completions, completion_ids, **columns):  # varied labels without a grader
        return [float(sum(ids) % 2 == 0) for ids in completion_ids]

    monkeypatch.setattr(train_mod, "verifier_step_metrics", spy)
    run = train_mod.Run(config, model, tok, sampler, torch.optim.AdamW(model.parameters(), lr=1e-3),
                        None, parity, LossConfig(), None, torch.device("cpu"))
    metrics, result = train_mod.rl_step(run, problems, 0)
    assert "p_yes" not in metrics and not result["skipped"]
    assert torch.allclose(torch.tensor(seen["scores"]), torch.tensor(expected), rtol=1e-4, atol=1e-6)


def test_update_through_the_hf_forward_matches_the_fast_forward(micro_path, monkeypatch):
    """`update(run, samples)` with Run.fast_forward=False (HF's padded forward, the reference) gives
    the same losses, grad norm and P("Yes") as the packed forward, up to float32 rounding; two
    micro-batches, the second starting inside a group."""
    from types import SimpleNamespace

    from rlvfast.train.config import TrainConfig

    g = torch.Generator().manual_seed(4)
    samples = [Sample([[11, 12, 13, 14, 15], [21, 22, 23]][i // 3], [[40, 41, 1], [42, 43, 44, 45], [1]][i % 3],
                      -torch.rand(len([[40, 41, 1], [42, 43, 44, 45], [1]][i % 3]), generator=g),
                      advantage=[0.5, -1.0, 0.3, 1.1, -0.4, 0.2][i], token_weight=0.1,
                      label_id=99 if i % 2 else 100, label_weight=1 / 6) for i in range(6)]
    config = TrainConfig(model=str(micro_path), out="unused", group_size=3, prompts_per_step=2, micro_batch=4,
                         max_new_tokens=4, lr=1e-2, eval_problems=0)
    sampler = SimpleNamespace(verify_ids=[60, 61], eos_ids=[1], yes_id=99, no_id=100)
    calls = []
    real_read_hidden = train_forward.read_hidden
    monkeypatch.setattr(train_forward, "read_hidden", lambda *a, **k: calls.append(1) or real_read_hidden(*a, **k))
    results = {}
    for fast in (True, False):
        model, _ = load_model(micro_path)
        run = train_mod.Run(config, model, SimpleNamespace(pad_token_id=0), sampler,
                            torch.optim.AdamW(model.parameters(), lr=1e-2), None, None, config.loss_config(), None,
                            torch.device("cpu"), fast_forward=fast)
        results[fast] = train_mod.update(run, samples)
        assert len(calls) == 2  # the packed forward ran for both micro-batches, then never again
    fast, hf = results[True], results[False]
    assert not fast["skipped"] and not hf["skipped"] and fast["num_train_tokens"] == hf["num_train_tokens"] == 16
    for key in ("loss", "loss/policy", "loss/verifier", "grad_norm", "old_logprob_abs_diff"):
        assert fast[key] == pytest.approx(hf[key], rel=1e-5), key
    assert len(fast["p_yes"]) == 6 and fast["p_yes"] == pytest.approx(hf["p_yes"], rel=1e-5)
