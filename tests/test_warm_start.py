"""The warm start's batches: solution rows and verification rows with correct Yes/No labels."""
import random

import pytest

from rlvfast.models import build_char_tokenizer, yes_no_ids
from rlvfast.synthetic import evaluate
from rlvfast.warm_start import TINY_VERIFY_PROMPT, WarmStartConfig, make_batch


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
        gold = evaluate(problem.removeprefix("Compute ").rstrip("."))
        assert (ids[-1] == yes) == (int(boxed) == gold)
        num_yes += ids[-1] == yes
    assert 5 <= num_yes <= 35  # both labels present at a 0.3 per-step error rate


def test_bad_verify_error_rate_names_field():
    with pytest.raises(ValueError, match="verify_error_rate"):
        WarmStartConfig(verify_error_rate=1.5)

