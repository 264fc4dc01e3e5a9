"""LoRA through peft in the fast paths (`rlvfast.models.lora`): the adapted weight of one layer
equals peft's forward; on Llama, Qwen2 and Qwen3 with random adapters, greedy sampling equals HF
generate of the peft model and the packed forward equals HF's in the RL^V loss and every adapter
gradient; a LoRA the math does not reproduce (dropout) falls back with one notice; an adapter
folder loads as the merged model."""
import warnings

import pytest
import torch
from models.test_architectures import PROMPTS, SUPPORTED, build, hf_greedy  # tests/ is on sys.path
from train.test_forward import check_fast_forward_matches_hf

from rlvfast import Sampler, SamplingParams
from rlvfast.models import load_model, lora
from rlvfast.train import forward as train_forward

pytest.importorskip("peft")


def randomize_adapters(model: torch.nn.Module, seed: int = 1) -> None:
    """peft starts B at 0 (the adapter changes nothing); random A and B make it matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)


def test_linear_weight_equals_peft_forward_and_its_gradients():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 5))
    peft_net = get_peft_model(net, LoraConfig(r=2, lora_alpha=3, target_modules=["0"]))
    randomize_adapters(peft_net)
    layer = net[0]
    assert lora.is_lora(layer) and lora.lora_reason(layer) is None
    x = torch.randn(4, 6)
    expected = layer(x)
    expected_grads = torch.autograd.grad(expected.square().sum(), [layer.lora_A["default"].weight,
                                                                    layer.lora_B["default"].weight])
    weight, bias = lora.linear_weight(layer)
    got = torch.nn.functional.linear(x, weight, bias)
    got_grads = torch.autograd.grad(got.square().sum(), [layer.lora_A["default"].weight,
                                                          layer.lora_B["default"].weight])
    assert not torch.allclose(expected, torch.nn.functional.linear(x, layer.base_layer.weight, bias))
    assert torch.allclose(got, expected, atol=1e-6)
    for g, e in zip(got_grads, expected_grads):
        assert torch.allclose(g, e, atol=1e-5)
    with peft_net.disable_adapter():  # disabled: the base weight alone
        assert torch.equal(lora.linear_weight(layer)[0], layer.base_layer.weight)


@pytest.fixture(scope="module", params=SUPPORTED)
def lora_model(request, tmp_path_factory):
    folder = build(request.param, tmp_path_factory.mktemp(request.param) / "model")
    return request.param, folder


def test_greedy_sampling_with_adapters_equals_hf_generate(lora_model):
    _, folder = lora_model
    model, tok = load_model(folder)
    peft_model = lora.add_lora(model, r=4, alpha=8, target_modules=["q_proj", "v_proj", "o_proj", "down_proj"])
    randomize_adapters(model)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        sampler = Sampler(model, tok, verify_prompt="\nOK?\n")
    assert sampler.runner.fast is not None and not [w for w in seen if "rlvfast:" in str(w.message)]
    outputs = sampler.generate(PROMPTS, SamplingParams(max_tokens=12, temperature=0.0), score=False)
    plain, _ = load_model(folder)
    differs = False
    for prompt, out in zip(PROMPTS, outputs):
        assert out.completions[0].token_ids == hf_greedy(peft_model, prompt, 12), prompt
        differs |= out.completions[0].token_ids != hf_greedy(plain, prompt, 12)
    assert differs  # the adapters change what is sampled: they were not ignored


def test_packed_forward_with_adapters_equals_hf_in_loss_and_adapter_gradients(lora_model):
    _, folder = lora_model
    model = load_model(folder)[0].double()
    lora.add_lora(model, r=4, alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                       "up_proj", "down_proj"])
    randomize_adapters(model)
    assert train_forward.supports(model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    check_fast_forward_matches_hf(model)


def test_lora_dropout_falls_back_to_hf_with_one_notice(tmp_path):
    from peft import LoraConfig, get_peft_model

    model, tok = load_model(build("llama", tmp_path / "model"))
    get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], lora_dropout=0.1))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        sampler = Sampler(model, tok, verify_prompt="\nOK?\n")
        assert not train_forward.supports(model)
    notices = [str(w.message) for w in seen if "rlvfast:" in str(w.message)]
    assert sampler.runner.fast is None
    assert len(notices) == 2 and all("lora_dropout=0.1" in n for n in notices), notices


def test_an_adapter_folder_loads_as_the_merged_model(tmp_path):
    folder = build("qwen2", tmp_path / "model")
    model, tok = load_model(folder)
    peft_model = lora.add_lora(model, r=2, alpha=4, target_modules=["q_proj", "up_proj"])
    randomize_adapters(model)
    peft_model.peft_config["default"].base_model_name_or_path = str(folder)
    peft_model.save_pretrained(tmp_path / "adapter")
    tok.save_pretrained(tmp_path / "adapter")
    assert lora.is_adapter_dir(tmp_path / "adapter") and not lora.is_adapter_dir(folder)
    loaded, _ = load_model(tmp_path / "adapter")
    assert not any(lora.is_lora(m) for m in loaded.modules())
    ids = torch.tensor([PROMPTS[2]])
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, peft_model(ids).logits, atol=1e-5)
        assert not torch.allclose(loaded(ids).logits, load_model(folder)[0](ids).logits, atol=1e-3)
