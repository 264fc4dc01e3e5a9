"""The architectures users train, end to end on tiny random configs saved to disk: Llama
(SmolLM2: tied embeddings, GQA), Qwen2 (biases on q/k/v, tied embeddings) and Qwen3 (per-head
q/k RMSNorm, head_dim != hidden / heads, GQA). For each: greedy sampling through the fast trunk
equals HF `generate`, the trainer's packed forward equals HF's padded forward in the RL^V loss
and every gradient, one RL^V step runs and `final/` loads with transformers and with `Sampler`.
A model the shared math does not reproduce (a Llama with mlp_bias) falls back to HF's forward
with one warning naming it, and still samples what HF generates."""
import warnings

import pytest
import torch
from train.test_forward import check_fast_forward_matches_hf  # tests/ is on sys.path (conftest.py)

from rlvfast import Sampler, SamplingParams
from rlvfast.models import build_char_tokenizer, load_model, save_model
from rlvfast.train import forward as train_forward
from rlvfast.train import loop as train_mod
from rlvfast.train.config import TrainConfig

# 2 layers, hidden 32; each config hits one code path of the shared math (see the docstring)
ARCHS = {
    "llama": ("LlamaConfig", dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)),
    "qwen2": ("Qwen2Config", dict(num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True)),
    "qwen3": ("Qwen3Config", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                  tie_word_embeddings=False)),
    "llama_mlp_bias": ("LlamaConfig", dict(num_attention_heads=2, num_key_value_heads=2, mlp_bias=True)),
}
SUPPORTED = ["llama", "qwen2", "qwen3"]
PROMPTS = [[5, 40, 41, 42], [60, 7], [3, 90, 11, 12, 13, 14, 15]]


def build(name: str, folder):
    """A tiny random model of architecture `name`, saved as a HF directory with the char tokenizer.
    Every parameter (biases and norm weights too) is drawn at scale 0.3, so biases and norms
    matter and greedy argmaxes are not near-ties of an almost uniform distribution."""
    import transformers

    class_name, extra = ARCHS[name]
    tok = build_char_tokenizer()
    config = getattr(transformers, class_name)(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        max_position_embeddings=128, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        bos_token_id=None, **extra)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for param_name, param in model.named_parameters():  # norm weights around 1, the rest around 0
            param.copy_(torch.randn_like(param) * 0.3 + (1.0 if "norm" in param_name else 0.0))
    model.generation_config = transformers.GenerationConfig(eos_token_id=tok.eos_token_id,
                                                            pad_token_id=tok.pad_token_id)
    save_model(model, tok, folder)
    return folder


@pytest.fixture(scope="module", params=list(ARCHS))
def arch_dir(request, tmp_path_factory):
    return request.param, build(request.param, tmp_path_factory.mktemp(request.param) / "model")


def hf_greedy(model, prompt: list[int], max_new_tokens: int) -> list[int]:
    """HF generate(do_sample=False) of one prompt: the new token ids (ending at EOS if reached)."""
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_new_tokens)
    return out[0, len(prompt):].tolist()


def test_the_saved_model_is_the_architecture_asked_for(arch_dir):
    name, folder = arch_dir
    model, _ = load_model(folder)
    assert model.config.model_type == name.split("_")[0]
    attn = model.model.layers[0].self_attn
    assert (attn.q_proj.bias is not None) == (name == "qwen2")  # Qwen2's q/k/v biases
    assert hasattr(attn, "q_norm") == (name == "qwen3")
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == (name in ("llama", "qwen2"))


def test_greedy_sampling_equals_hf_generate(arch_dir):
    name, folder = arch_dir
    model, tok = load_model(folder)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        sampler = Sampler(model, tok, verify_prompt="\nOK?\n")
    # the three architectures run the fast trunk; the unsupported one HF's, with one notice
    assert (sampler.runner.fast is not None) == (name in SUPPORTED)
    notices = [str(w.message) for w in seen if "rlvfast:" in str(w.message)]
    if name in SUPPORTED:
        assert notices == []
    else:
        assert len(notices) == 1 and "'llama'" in notices[0] and "mlp_bias" in notices[0], notices
        assert "\n" not in notices[0]
    outputs = sampler.generate(PROMPTS, SamplingParams(max_tokens=12, temperature=0.0), score=False)
    for prompt, out in zip(PROMPTS, outputs):
        assert out.completions[0].token_ids == hf_greedy(model, prompt, 12), prompt


def test_packed_forward_equals_hf_in_rlv_loss_and_every_gradient(arch_dir):
    name, folder = arch_dir
    model = load_model(folder)[0].double()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the notice is test_greedy_sampling_equals_hf_generate's
        assert train_forward.supports(model) == (name in SUPPORTED)
    if name not in SUPPORTED:  # loop._backward runs HF's padded forward, the reference itself
        return
    check_fast_forward_matches_hf(model)


def test_one_rlv_step_and_final_loads_with_transformers_and_sampler(arch_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    name, folder = arch_dir
    out = tmp_path / "run"
    config = TrainConfig(model=str(folder), out=str(out), steps=1, prompts_per_step=2, group_size=4,
                         max_new_tokens=8, micro_batch=5, eval_problems=0, verify_prompt="\nOK?\n",
                         checkpoint_every=1, lr=1e-2, warmup=0, lr_schedule="constant")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")  # as in a plain run: a warning once per place and text
        train_mod.train(config, log=lambda *a: None)
    notices = [str(w.message) for w in seen if "rlvfast:" in str(w.message)]
    if name in SUPPORTED:
        assert notices == []
    else:  # one line from each path that falls back, once in the run
        assert len(notices) == 2 and all("'llama'" in n and "\n" not in n for n in notices), notices
        assert any("sampler" in n for n in notices) and any("trainer" in n for n in notices), notices
    start = AutoModelForCausalLM.from_pretrained(folder)
    final = AutoModelForCausalLM.from_pretrained(out / "final")
    assert final.config.model_type == start.config.model_type
    assert type(final) is type(start)
    changed = [n for n, p in final.named_parameters() if not torch.equal(p, start.get_parameter(n))]
    assert changed  # the RL^V step (its verifier term at least) moved the weights
    model, tok = load_model(out / "final")
    for n, p in model.named_parameters():
        assert torch.equal(p, final.get_parameter(n)), n
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # llama_mlp_bias's notice, checked above
        sampler = Sampler(model, tok, verify_prompt="\nOK?\n")
    outputs = sampler.generate(PROMPTS[:1], SamplingParams(max_tokens=6, temperature=0.0), score=True)
    assert outputs[0].completions[0].token_ids == hf_greedy(final, PROMPTS[0], 6)
    assert 0.0 <= outputs[0].completions[0].score <= 1.0
