"""Triton kernels of rlvfast, installed as rlvfast.kernels (see setup.py package_dir).

One op per module, each laid out math -> @triton.jit kernel(s) -> launcher ->
autograd.Function -> public function:
- group_advantages: grpo / rloo / drgrpo advantages, one launch, one program per group.
- token_logprobs:   fused lm head -> (logprobs, lse), chunked over rows, never [N, V] at once.
- policy_loss:      fused lm head -> clipped policy loss, gradients computed in the forward.
- verifier_scores:  P("Yes"), P("No") with a streaming log-sum-exp over vocabulary chunks.
- aot:              no kernel; compiles every launcher's kernel variants for sm_80/sm_90
                    without a GPU and reports registers, spills, shared memory.
The modules import triton; rlvfast.ops imports them lazily, only for backend="triton".
They run on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1 (the tests).
"""
