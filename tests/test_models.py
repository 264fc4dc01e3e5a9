"""The tiny built-in model round-trip, GGUF loading and the Yes/No single-token check."""
import pytest
import torch

from rlvfast.models import TinyModelConfig, build_char_tokenizer, eos_ids, load_model, yes_no_ids


def test_tiny_model_round_trip(tmp_path):
    path = build_tiny_model_small(tmp_path)
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
    with pytest.raises(FileNotFoundError, match="not found"):
        load_model(tmp_path / "nope" / "model.gguf")


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
