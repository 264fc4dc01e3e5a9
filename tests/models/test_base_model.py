"""The tiny base model shipped in the package (rlvfast/models/base, built by
`python -m rlvfast.pretrain`): it loads with rlvfast and with transformers, its config is the one
its card records, and it still reaches the card's pass@1 on held-out problems."""
import json
import math

import pytest
import torch

from rlvfast.models import BASE_MODEL_DIR, TINY_VERIFY_PROMPT, TinyModelConfig, load_model, read_card

CARD = read_card(BASE_MODEL_DIR)


def test_the_base_ships_with_its_card():
    assert CARD is not None, f"no card.json in {BASE_MODEL_DIR}"
    names = {p.name for p in BASE_MODEL_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md", "card.json"} <= names
    assert "pass@1" in (BASE_MODEL_DIR / "README.md").read_text()


def test_the_base_loads_with_rlvfast_and_transformers_alike():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = load_model(BASE_MODEL_DIR)
    hf_model = AutoModelForCausalLM.from_pretrained(BASE_MODEL_DIR).eval()
    hf_tok = AutoTokenizer.from_pretrained(BASE_MODEL_DIR)
    text = "Compute 3+4-2." + TINY_VERIFY_PROMPT
    assert tok.encode(text) == hf_tok.encode(text)
    ids = torch.tensor([tok.encode(text, add_special_tokens=False)])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, hf_model(input_ids=ids).logits)


def test_the_base_config_is_the_one_its_card_records():
    hf = json.loads((BASE_MODEL_DIR / "config.json").read_text())
    m = CARD["model"]
    assert (m["num_layers"], m["hidden_size"], m["num_heads"], m["intermediate_size"], m["vocab_size"]) == \
        (hf["num_hidden_layers"], hf["hidden_size"], hf["num_attention_heads"], hf["intermediate_size"],
         hf["vocab_size"])
    recipe = TinyModelConfig(**CARD["training"]["warm_start_config"]["model"])
    assert (recipe.num_layers, recipe.hidden_size, recipe.num_heads) == (m["num_layers"], m["hidden_size"],
                                                                         m["num_heads"])
    model, _ = load_model(BASE_MODEL_DIR)
    assert sum(p.numel() for p in model.parameters()) == m["num_parameters"]


@pytest.mark.slow
def test_the_base_reaches_its_recorded_pass_at_1_and_judges():
    """40 test problems x 4 samples against the card's 400 x 4. The samples within a problem are
    correlated, so the standard error counts problems, not samples: a problem's pass rate has
    variance <= p(1-p), so the 40-problem mean is within sqrt(p(1-p)/40) (~0.08 at p 0.44) one
    sigma; 4 sigma (~0.31) fails a broken or wrong model (pass@1 ~0) and never a sound one.
    The judge (its own P("Yes") on these 160 samples): AUC at least the card's minus 0.2 (the
    AUC of 160 samples has a standard error of ~0.03-0.05), which fails a judge at chance (0.5)."""
    from rlvfast.eval.samples import evaluate
    from rlvfast.sampler import Sampler, SamplingParams
    from rlvfast.tasks.grading import Grader
    from rlvfast.tasks.synthetic import make_problems

    evaluation = CARD["evaluation"]
    recorded = evaluation["results"]["test"]["pass@1"]
    model, tok = load_model(BASE_MODEL_DIR)
    sampler = Sampler(model, tok, verify_prompt=TINY_VERIFY_PROMPT)
    params = SamplingParams(n=evaluation["num_samples"], max_tokens=evaluation["max_tokens"],
                            temperature=evaluation["temperature"], seed=evaluation["seed"])
    with Grader() as grader:
        result = evaluate(sampler, grader, make_problems(40, "test", seed=0), params, num_trials=1)
    sigma = math.sqrt(recorded * (1 - recorded) / 40)
    assert abs(result["pass@1"] - recorded) <= 4 * sigma, (result["pass@1"], recorded, sigma)
    assert result["pass@1"] > 0.2  # the base model solves problems: the card's 0.4 is not luck
    recorded_auc = evaluation["results"]["test"]["verifier_auc"]
    assert recorded_auc > 0.7  # the shipped base is a judge, not a coin (the LLM-as-a-judge baseline)
    assert result["verifier_auc"] >= recorded_auc - 0.2, (result["verifier_auc"], recorded_auc)
