"""The sampler's randomness: per-sample counter-based uniforms (rng.py) and the two-level
inverse-CDF draw (sampling.inverse_cdf) against float64 references."""
import pytest
import torch

from rlvfast.sampler.rng import resolve_seed, sample_keys, uniforms
from rlvfast.sampler.sampling import inverse_cdf


def test_keys_depend_on_the_prompt_its_occurrence_and_the_sample_index_only():
    a, b = [1, 2, 3], [4, 5]
    alone = sample_keys(7, [a], 4)
    mixed = sample_keys(7, [b, a, a], 6)
    assert mixed[6:10] == alone  # a's first occurrence: the same keys at another position, with another n
    assert len(set(mixed)) == 18  # every sample (the second `a` included) has its own key
    assert sample_keys(8, [a], 4) != alone and sample_keys(7, [[1, 2, 4]], 4) != alone
    assert sample_keys(-3, [a], 1) != sample_keys(3, [a], 1) and sample_keys(2**70, [a], 1)  # any int seed


def test_uniforms_are_uniform_and_a_function_of_key_and_step():
    keys = sample_keys(0, [[9]], 4096)
    u0, u1 = uniforms(keys, 0), uniforms(keys, 1)
    assert u0.dtype == torch.float64 and ((u0 >= 0) & (u0 < 1)).all()
    assert torch.equal(u0, uniforms(keys, 0)) and torch.equal(uniforms(keys[5:9], 0), u0[5:9])
    assert not torch.equal(u0, u1)
    counts = torch.histc(torch.cat([u0, u1]).float(), bins=8, min=0, max=1)  # 1024 expected per bin
    assert (counts - 1024).abs().max() < 150
    assert abs(torch.corrcoef(torch.stack([u0, u1]))[0, 1]) < 0.06


def test_no_seed_draws_one_from_torch():
    torch.manual_seed(1)
    a = resolve_seed(None)
    torch.manual_seed(1)
    assert resolve_seed(None) == a and resolve_seed(5) == 5


@pytest.mark.parametrize("vocab,block", [(1000, 256), (7, 4), (256, 256)])
def test_inverse_cdf_equals_the_float64_inverse_cdf(vocab, block):
    gen = torch.Generator().manual_seed(vocab)
    logits = torch.randn(64, vocab, generator=gen) * 3
    logits[:, ::3] = float("-inf")  # filtered tokens: never drawn
    probs = torch.softmax(logits, -1)  # (64, V) float32
    u = torch.rand(64, 50, dtype=torch.float64, generator=gen)
    cdf = probs.double().cumsum(-1)
    expected = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)  # (64, 50)
    got = torch.stack([inverse_cdf(probs, u[:, k], block) for k in range(50)], dim=1)
    assert (got == expected).float().mean() > 0.999  # rounding may move a boundary by ~1e-7
    assert (probs.gather(1, got) > 0).all()


def test_inverse_cdf_ends_never_draw_a_zero_probability_token():
    probs = torch.tensor([[0.0, 0.25, 0.0, 0.75, 0.0, 0.0]] * 3)
    u = torch.tensor([0.0, 1 - 2**-53, 0.25])
    assert inverse_cdf(probs, u, block=4).tolist() == [1, 3, 3]
    rare = torch.full((1, 300), 1e-9)
    rare[0, 0] = 1.0
    assert inverse_cdf(rare, torch.tensor([1 - 1e-9]), block=256).item() > 0  # the tail stays reachable


def test_inverse_cdf_frequencies():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0]).repeat(100_000, 1)
    u = torch.rand(100_000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(inverse_cdf(probs, u, block=2), minlength=5).double() / 100_000
    torch.testing.assert_close(freq, torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0], dtype=torch.float64),
                               atol=0.005, rtol=0)


def test_inverse_cdf_stays_in_range_on_nan():
    probs = torch.full((2, 300), float("nan"))
    tokens = inverse_cdf(probs, torch.tensor([0.3, 0.9]), block=256)
    assert ((tokens >= 0) & (tokens < 300)).all()
