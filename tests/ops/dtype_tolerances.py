"""How close bf16/fp16-input results must be to the float64 reference, argued from the dtypes.

The ops test files compare every backend on bf16 and fp16 inputs with the float64 reference
run on the same (already rounded) input values, so input rounding is not an error here.
Every backend computes in fp32 from such inputs: a product of two bf16 (8-bit significand) or
fp16 (11-bit) values is exact in fp32 (24 bits), and sums carry fp32 rounding, ~6e-8 relative
per term. Hence:
- fp32 outputs (log-probs, lse, loss, probabilities) are fp32-accurate: FP32_RTOL. Had a backend
  accumulated in the input dtype, one rounding of a logit alone would cost 2^-9 relative
  (bf16), 20x more.
- outputs in the input dtype (gradients, advantages) are an fp32-accurate value rounded to the
  dtype once: within half an ulp, UNIT_ROUNDOFF, plus the fp32 noise of the value, which on
  sums with cancellation is relative to the largest entry (FP32_NOISE). An accumulation in
  bf16/fp16 adds an ulp-sized error per term and fails this at once.
"""
import torch

LOW_PRECISION = (torch.bfloat16, torch.float16)
UNIT_ROUNDOFF = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}  # half an ulp, relative (7 / 10 stored bits)
SMALLEST_STEP = {torch.bfloat16: 2.0**-133, torch.float16: 2.0**-24}  # the subnormal spacing: rounding near 0
FP32_RTOL = 1e-5  # V <= 1031 exp-sums, H <= 97 products: measured <= 2e-7 of the largest entry
FP32_NOISE = 1e-5  # of the largest |entry|: fp32 cancellation in G @ W and G^T @ h sums


def assert_fp32_accurate(got: torch.Tensor, want: torch.Tensor, name: str) -> None:
    """An fp32 result of low-precision inputs: fp32 accuracy against the float64 reference."""
    assert got.dtype == torch.float32, (name, got.dtype)
    torch.testing.assert_close(got.double(), want, rtol=FP32_RTOL, atol=FP32_RTOL * want.abs().max().item(),
                               msg=lambda m: f"{name}: {m}")


def assert_rounded_once(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype, name: str) -> None:
    """got (dtype) is the float64 value `want` rounded to dtype once, up to fp32 noise."""
    assert got.dtype == dtype, (name, got.dtype, dtype)
    error = (got.double() - want).abs()
    bound = UNIT_ROUNDOFF[dtype] * want.abs() + FP32_NOISE * want.abs().max() + SMALLEST_STEP[dtype]
    worst = int((error / bound).argmax())
    assert (error <= bound).all(), (f"{name}: |error| {error.flatten()[worst]:.3g} at flat index {worst} exceeds "
                                    f"half a {dtype} ulp of {want.flatten()[worst]:.6g} plus fp32 noise "
                                    f"({bound.flatten()[worst]:.3g})")
