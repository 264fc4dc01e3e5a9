"""The tiny built-in model round-trip, loading by folder, GGUF file and hub id (from a fake
offline HF cache), clear errors for missing and empty paths, and the Yes/No single-token check."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import fake_hub_cache, offline_hub_env

from rlvfast.cli import UserError
from rlvfast.models import (TinyModelConfig, build_char_tokenizer, eos_ids, is_local_path, load_model,
                            yes_no_ids)

ROOT = Path(__file__).resolve().parents[1]


def test_tiny_model_round_trip(tmp_path):
    mask = os.umask(0o022)
    try:
        path = build_tiny_model_small(tmp_path)
    finally:
        os.umask(mask)
    assert oct((path / "model.safetensors").stat().st_mode & 0o777) == "0o644"  # not save_pretrained's 0600
    model, tok = load_model(path)
    text = "Compute 37+48-29.\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text  # char-level: lossless round trip
    assert len(ids) == len(text)
    out = model.generate(torch.tensor([ids]), max_new_tokens=4, do_sample=False)
    assert out.shape == (1, len(ids) + 4) or int(out[0, -1]) in eos_ids(model, tok)
    # reloading gives the same weights
    model2, _ = load_model(path)
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), model2.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)


def build_tiny_model_small(tmp_path):
    from rlvfast.models import build_tiny_model

    return build_tiny_model(tmp_path / "m", TinyModelConfig(num_layers=1, hidden_size=32, num_heads=2,
                                                            intermediate_size=64))


def test_yes_no_are_single_tokens_in_char_tokenizer():
    tok = build_char_tokenizer()
    yes, no = yes_no_ids(tok)
    assert yes != no
    assert tok.decode([yes]) == "Yes" and tok.decode([no]) == "No"


def test_yes_no_check_fails_clearly_without_yes():
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(["<unk>", "Y", "e", "s", "N", "o"])}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>")
    with pytest.raises(ValueError, match="'Yes' as a single token"):
        yes_no_ids(tok)


def test_bad_tiny_config_names_field():
    with pytest.raises(ValueError, match="hidden_size"):
        TinyModelConfig(hidden_size=30, num_heads=4)
    with pytest.raises(ValueError, match="num_layers"):
        TinyModelConfig(num_layers=0)


def test_missing_model_path_is_clear(tmp_path):
    with pytest.raises(UserError, match="GGUF file not found: .*nope/model.gguf"):
        load_model(tmp_path / "nope" / "model.gguf")
    with pytest.raises(UserError, match="model path not found: .*nope/model"):
        load_model(tmp_path / "nope" / "model")


def test_empty_model_folder_says_it_holds_no_model(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"model folder .*empty holds no model: expected config.json and "
                                        r"weights .* found nothing"):
        load_model(tmp_path / "empty")
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "x.Q4_1.gguf").write_bytes(b"")
    with pytest.raises(UserError, match=r"found \['x.Q4_1.gguf'\]; it holds x.Q4_1.gguf: pass the .gguf file"):
        load_model(tmp_path / "g")


def test_is_local_path_tells_paths_from_hub_ids(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "local").mkdir()
    hub = ["Qwen/Qwen2.5-0.5B-Instruct", "gpt2", "HuggingFaceTB/SmolLM2-135M-Instruct", "org/missing"]
    local = ["org/local", "org", "../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf", "x.gguf", "./m", "/abs/m",
             "runs/a/final", "~/m", "a--b/c", "a\\b"]
    assert [s for s in hub if is_local_path(s)] == []
    assert [s for s in local if not is_local_path(s)] == []


def test_hub_id_loads_from_the_offline_cache_and_a_missing_one_is_named(tmp_path):
    model_dir = build_tiny_model_small(tmp_path)
    fake_hub_cache(tmp_path / "hf", "org/name", model_dir)
    # HF_HUB_CACHE and HF_HUB_OFFLINE are read when huggingface_hub is imported: a fresh process
    script = """
import json, sys
from rlvfast.cli import UserError
from rlvfast.models import load_model
model, tok = load_model("org/name")
out = {"embed_sum": float(model.get_input_embeddings().weight.detach().sum()), "vocab": len(tok)}
try:
    load_model("org/missing")
except UserError as e:
    out["error"] = str(e)
print(json.dumps(out))
"""
    env = {**offline_hub_env(tmp_path / "hf"), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    expected, tok = load_model(model_dir)
    assert out["vocab"] == len(tok)
    assert out["embed_sum"] == pytest.approx(float(expected.get_input_embeddings().weight.detach().sum()), abs=1e-5)
    assert "model 'org/missing' is not a local file or folder" in out["error"]
    assert "cached files" in out["error"]  # the library's own reason is kept


def _bytes_to_unicode() -> list[str]:
    """GPT-2's byte-level alphabet (the token strings of a "gpt2" GGUF tokenizer)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_tiny_gguf(path: Path, hidden: int = 32, ff: int = 64, heads: int = 2) -> Path:
    """A 1-layer Llama GGUF with Q8_0 weights and a byte-level BPE tokenizer with Yes/No tokens."""
    gguf = pytest.importorskip("gguf")
    from gguf.quants import quantize

    q8 = gguf.GGMLQuantizationType.Q8_0
    tokens = ["<|endoftext|>", *_bytes_to_unicode(), "Ye", "Yes", "No"]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1), w.add_context_length(128), w.add_embedding_length(hidden)
    w.add_feed_forward_length(ff), w.add_head_count(heads), w.add_head_count_kv(heads)
    w.add_layer_norm_rms_eps(1e-5), w.add_rope_freq_base(10000.0), w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2"), w.add_tokenizer_pre("default"), w.add_token_list(tokens)
    w.add_token_types([1] * len(tokens)), w.add_token_merges(["Y e", "Ye s", "N o"])
    w.add_bos_token_id(0), w.add_eos_token_id(0)
    rng = np.random.default_rng(0)

    def tensor(name, shape, quantized=True):
        a = (rng.standard_normal(shape) * 0.05).astype(np.float32)
        if quantized:
            w.add_tensor(name, quantize(a, q8), raw_dtype=q8)
        else:
            w.add_tensor(name, a)

    tensor("token_embd.weight", (len(tokens), hidden))
    for norm in ("blk.0.attn_norm.weight", "blk.0.ffn_norm.weight", "output_norm.weight"):
        tensor(norm, (hidden,), quantized=False)
    for proj in ("q", "k", "v", "output"):
        tensor(f"blk.0.attn_{proj}.weight", (hidden, hidden))
    tensor("blk.0.ffn_gate.weight", (ff, hidden)), tensor("blk.0.ffn_up.weight", (ff, hidden))
    tensor("blk.0.ffn_down.weight", (hidden, ff))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    return path


def _assert_plain_and_saveable(model, tok, tmp_path):
    """No quantizer left, float32 nn.Linear weights, and save_pretrained -> safetensors that reload
    with transformers and with load_model to the same weights."""
    from transformers import AutoModelForCausalLM

    assert getattr(model, "hf_quantizer", None) is None
    assert getattr(model.config, "quantization_config", None) is None
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    saved = tmp_path / "saved"
    model.save_pretrained(saved, safe_serialization=True)
    tok.save_pretrained(saved)
    assert (saved / "model.safetensors").is_file()
    assert "quantization_config" not in json.loads((saved / "config.json").read_text())
    for reloaded in (AutoModelForCausalLM.from_pretrained(saved), load_model(saved)[0]):
        for (name, p), q in zip(model.state_dict().items(), reloaded.state_dict().values()):
            assert torch.equal(p, q), name


def test_tiny_gguf_loads_as_a_plain_saveable_model(tmp_path):
    model, tok = load_model(write_tiny_gguf(tmp_path / "tiny.Q8_0.gguf"))
    assert model.config.num_hidden_layers == 1 and model.config.vocab_size == 260
    assert tok.encode("Yes No", add_special_tokens=False) == [258, 221, 259]  # "Yes", " " (byte-level), "No"
    _assert_plain_and_saveable(model, tok, tmp_path)


def test_gguf_smollm2_saves_as_plain_safetensors(smollm2, tmp_path):
    model, tok = smollm2
    _assert_plain_and_saveable(model, tok, tmp_path)


def test_gguf_smollm2_loads(smollm2):
    model, tok = smollm2
    assert model.config.vocab_size == 49152
    assert tok.chat_template is not None
    yes, no = yes_no_ids(tok)
    assert yes != no
    ids = tok("2 + 2 =", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], 49152) and torch.isfinite(logits).all()
