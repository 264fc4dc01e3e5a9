"""The warm start's batches (solution rows, verification rows with correct Yes/No labels,
contrastive pairs), its phase-2 loss, its cache key, and a two-phase run on a tiny model."""
import json
import random

import pytest
import torch
import torch.nn.functional as F

from rlvfast.models import TinyModelConfig, build_char_tokenizer, load_model, yes_no_ids
from rlvfast.tasks.synthetic import evaluate_expression
from rlvfast.train.warm_start import (TINY_VERIFY_PROMPT, WarmStartConfig, backward_in_buckets, cached_warm_start,
                                loss_weights, make_batch, make_verifier_batch)


def test_batch_rows_and_labels():
    tok = build_char_tokenizer()
    yes, no = yes_no_ids(tok)
    config = WarmStartConfig(batch_size=8, verify_rows=40, verify_error_rate=0.3)
    input_ids, labels = make_batch(tok, random.Random(0), config, problem_seed=3)
    assert input_ids.shape[0] == 48 and labels.shape == input_ids.shape
    num_yes = 0
    for r in range(48):
        ids = [i for i in input_ids[r].tolist() if i != tok.pad_token_id]
        text = tok.decode(ids)
        targets = [t for t in labels[r].tolist() if t != -100]
        problem, _, rest = text.partition("\n")
        if r < 8:  # solution rows: loss on the whole solution and its EOS
            assert ids[-1] == tok.eos_token_id and TINY_VERIFY_PROMPT not in text
            assert tok.decode(targets) == rest  # rest ends with the decoded <eos>
            continue
        assert text.endswith(TINY_VERIFY_PROMPT + ("Yes" if ids[-1] == yes else "No"))
        assert targets == [ids[-1]]  # loss on the label only
        boxed = text.split("\\boxed{")[1].split("}")[0]
        gold = evaluate_expression(problem.removeprefix("Compute ").rstrip("."))
        assert (ids[-1] == yes) == (int(boxed) == gold)
        num_yes += ids[-1] == yes
    assert 5 <= num_yes <= 35  # both labels present at a 0.3 per-step error rate


def test_bad_verify_error_rate_names_field():
    with pytest.raises(ValueError, match="verify_error_rate"):
        WarmStartConfig(verify_error_rate=1.5)



def test_verifier_batch_holds_contrastive_pairs():
    tok = build_char_tokenizer()
    yes, no = yes_no_ids(tok)
    config = WarmStartConfig(verifier_solution_rows=3, verifier_pairs=6)
    input_ids, labels = make_verifier_batch(tok, random.Random(0), config, problem_seed=5)
    assert input_ids.shape[0] == 3 + 12
    rows = [tok.decode([i for i in r.tolist() if i != tok.pad_token_id]) for r in input_ids]
    for r in range(3):
        assert TINY_VERIFY_PROMPT not in rows[r] and input_ids[r].tolist().count(tok.eos_token_id) == 1
    for r in range(3, 15, 2):
        right, wrong = rows[r], rows[r + 1]
        problem = right.partition("\n")[0]
        assert wrong.partition("\n")[0] == problem  # one problem per pair
        gold = evaluate_expression(problem.removeprefix("Compute ").rstrip("."))
        for text, label_id, correct in ((right, yes, True), (wrong, no, False)):
            boxed = int(text.split("\\boxed{")[1].split("}")[0])
            assert (boxed == gold) == correct
            assert [t for t in labels[r + (not correct)].tolist() if t != -100] == [label_id]


def test_label_row_weights_average_solution_tokens_and_labels_separately():
    torch.manual_seed(0)
    logits = torch.randn(3, 6, 11)  # (B, T, V)
    labels = torch.full((3, 6), -100)
    labels[0, 2:6] = torch.tensor([1, 2, 3, 4])  # a solution row: 4 target tokens
    labels[1, 5], labels[2, 4] = 7, 9  # two verification rows: one label each
    is_label_row = torch.tensor([False, True, True])
    per_token = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:].clamp(min=0), reduction="none")
    loss = (per_token * loss_weights(labels, is_label_row)).sum()
    log_probs = logits.log_softmax(-1)
    solution = -torch.stack([log_probs[0, t - 1, labels[0, t]] for t in range(2, 6)]).mean()
    label = -(log_probs[1, 4, 7] + log_probs[2, 3, 9]) / 2
    torch.testing.assert_close(loss, solution + label)
    pooled = F.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1))
    assert not torch.isclose(loss, pooled)


def test_pooled_weights_are_the_plain_mean_over_targets():
    labels = torch.full((2, 5), -100)
    labels[0, 1:4], labels[1, 4] = torch.tensor([3, 4, 5]), 6
    weights = loss_weights(labels)
    torch.testing.assert_close(weights, (labels[:, 1:] != -100).float() / 4)


@pytest.mark.parametrize("split", [False, True], ids=["pooled", "label-rows"])
def test_bucketed_backward_equals_one_padded_forward(tmp_path, split):
    from rlvfast.models import build_tiny_model
    model, tok = load_model(build_tiny_model(tmp_path, TinyModelConfig(num_layers=2, hidden_size=32, num_heads=2,
                                                                       intermediate_size=64)))
    config = WarmStartConfig(verifier_solution_rows=5, verifier_pairs=6)
    input_ids, labels = make_verifier_batch(tok, random.Random(1), config, problem_seed=7)  # 17 rows, mixed lengths
    is_label_row = torch.arange(len(labels)) >= 5
    weights = loss_weights(labels, is_label_row if split else None)
    logits = model(input_ids=input_ids, attention_mask=(input_ids != tok.pad_token_id).long()).logits
    per_token = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:].clamp(min=0), reduction="none")
    expected = (per_token * weights).sum()
    if split:  # mean over the solution rows' tokens + mean over the labels
        has_loss = labels[:, 1:] != -100
        torch.testing.assert_close(expected, per_token[has_loss & ~is_label_row[:, None]].mean()
                                   + per_token[has_loss & is_label_row[:, None]].mean())
    else:
        torch.testing.assert_close(expected, F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:]))
    expected.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    loss = backward_in_buckets(model, input_ids, labels, weights, tok.pad_token_id, bucket_rows=4)
    assert loss == pytest.approx(expected.item(), rel=1e-5)
    for p, g in zip(model.parameters(), grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)


def test_cache_key_ignores_phase_two_only_when_it_is_off():
    off = WarmStartConfig(verifier_steps=0)
    assert WarmStartConfig(verifier_steps=0, verifier_lr=5e-4, verifier_pairs=8).cache_key() == off.cache_key()
    on = WarmStartConfig(verifier_steps=10)
    assert on.cache_key() != off.cache_key()
    assert on.cache_key() != WarmStartConfig(verifier_steps=10, verifier_lr=5e-4).cache_key()
    with pytest.raises(ValueError, match="verifier_steps"):
        WarmStartConfig(verifier_steps=-1)


def test_two_phase_warm_start_runs_and_is_cached(tmp_path):
    config = WarmStartConfig(steps=2, batch_size=4, verify_rows=2, warmup=1, verifier_steps=2,
                             verifier_solution_rows=2, verifier_pairs=2,
                             model=TinyModelConfig(num_layers=1, hidden_size=32, num_heads=2, intermediate_size=64))
    lines = []
    path = cached_warm_start(config, cache_dir=tmp_path, log=lines.append)
    assert any(line.startswith("verifier warm start step 2/2 loss") for line in lines)
    assert json.loads((path / "warm_start.json").read_text())["config"]["verifier_steps"] == 2
    model, tok = load_model(path)
    assert model.config.num_hidden_layers == 1
    again = []
    assert cached_warm_start(config, cache_dir=tmp_path, log=again.append) == path
    assert again == [f"warm start: reusing cached model {path}"]


def test_seen_problems_replays_the_batches(monkeypatch):
    """seen_problems(config) is exactly the set of problems make_batch / make_verifier_batch draw
    from the same seed, in train_warm_start's order (it must follow their random draws)."""
    from rlvfast.train import warm_start

    config = WarmStartConfig(steps=3, batch_size=5, verify_rows=3, verifier_steps=2, verifier_solution_rows=2,
                             verifier_pairs=3, seed=7)
    drawn = []
    real_problem = warm_start._problem
    monkeypatch.setattr(warm_start, "_problem", lambda *a: drawn.append(p := real_problem(*a)) or p)
    tok = build_char_tokenizer()
    rng = random.Random(config.seed)
    for step in range(config.steps):
        make_batch(tok, rng, config, problem_seed=10_000_000 + step)
    for step in range(config.verifier_steps):
        make_verifier_batch(tok, rng, config, problem_seed=20_000_000 + step)
    monkeypatch.setattr(warm_start, "_problem", real_problem)
    assert len(drawn) == 3 * 8 + 2 * 5
    assert warm_start.seen_problems(config) == {p.problem for p in drawn}
    assert warm_start.seen_problems(WarmStartConfig(steps=3, batch_size=5, verify_rows=3, seed=8)) != \
        {p.problem for p in drawn[:24]}


def test_warm_start_path_uses_the_shipped_base_only_for_its_recipe(tmp_path, monkeypatch):
    """The default options load the shipped base (nothing trained); other options, or a card of
    another WARM_START_VERSION, train and cache as before; one log line says which."""
    from rlvfast.models import BASE_MODEL_DIR, read_card
    from rlvfast.train import warm_start

    trained = []
    monkeypatch.setattr(warm_start, "cached_warm_start", lambda config, log=None: trained.append(config) or tmp_path)
    lines = []
    assert warm_start.warm_start_path(WarmStartConfig(), log=lines.append) == BASE_MODEL_DIR
    assert trained == [] and len(lines) == 1 and "shipped base model" in lines[0]
    lines.clear()
    assert warm_start.warm_start_path(WarmStartConfig(steps=5), log=lines.append) == tmp_path
    assert trained == [WarmStartConfig(steps=5)] and "differ from the shipped base" in lines[0]
    # a copy of the card with another version is not used
    other = tmp_path / "base"
    other.mkdir()
    card = read_card(BASE_MODEL_DIR)
    card["training"]["warm_start_version"] += 1
    (other / "card.json").write_text(json.dumps(card))
    (other / "model.safetensors").write_bytes(b"")
    assert warm_start.shipped_base(WarmStartConfig(), other) is None
    card["training"]["warm_start_version"] -= 1
    (other / "card.json").write_text(json.dumps(card))
    assert warm_start.shipped_base(WarmStartConfig(), other) == other
    assert warm_start.shipped_base(WarmStartConfig(verifier_steps=400), other) is None
