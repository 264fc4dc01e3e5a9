// Fused lm-head + log-softmax + gather on the CPU: per-token log-probs of the targets and
// the log-sum-exp, logits = hidden @ weight^T / T, without holding the [N, V] logits.
//
// Forward: per chunk of rows, one GEMM into a reused [chunk, V] buffer, then a fused
// row loop (max, sum of exp, target logit). Saves only lse [N].
// Backward: the upstream gradients of logprobs and lse are arbitrary, so d loss / d logits
// cannot be precomputed in the forward; each chunk recomputes its logits (GEMM 1), turns
// them into d loss / d logits in place using the saved lse (one pass, no max), then
// grad_hidden chunk = G @ W (GEMM 2) and grad_weight += G^T @ H_chunk (GEMM 3), skipping
// the GEMM of an input that needs no gradient. Float32 accumulation for bf16/fp16 inputs
// (grad_weight included); gradients are returned in the input dtypes.
// Input validation that names bad values lives in rlvfast/ops/__init__.py.
#include <torch/library.h>

#include "fused_lm_head.h"

namespace rlvfast {
using namespace fused;

std::tuple<at::Tensor, at::Tensor> token_logprobs_fwd_cpu(const at::Tensor& hidden,
                                                          const at::Tensor& weight,
                                                          const at::Tensor& targets,
                                                          double temperature, int64_t chunk_rows) {
  check_lm_head(hidden, weight);
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == hidden.size(0), "targets must be [N]");
  TORCH_CHECK(temperature > 0.0, "temperature must be > 0, got ", temperature);
  const auto ct = compute_dtype(hidden, weight);
  const auto h = hidden.to(ct).contiguous();  // (N, H)
  const auto w = weight.to(ct).contiguous();  // (V, H)
  const auto t = targets.to(at::kLong).contiguous();
  const int64_t num_rows = h.size(0), vocab = w.size(0);
  auto logprobs = at::empty({num_rows}, h.options());
  auto lse = at::empty({num_rows}, h.options());
  const int64_t chunk = resolve_chunk_rows(chunk_rows, num_rows, vocab, h.element_size());
  const double inv_t = 1.0 / temperature;
  const int64_t* tp = t.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(ct, "token_logprobs_fwd_cpu", [&] {
    scalar_t* lp_out = logprobs.data_ptr<scalar_t>();
    scalar_t* lse_out = lse.data_ptr<scalar_t>();
    auto row_fn = [&](int64_t start, int64_t r, const scalar_t* z, int64_t n) {
      const double row_lse_value = row_lse(z, n, inv_t);
      lse_out[start + r] = static_cast<scalar_t>(row_lse_value);
      lp_out[start + r] =
          static_cast<scalar_t>(static_cast<double>(z[tp[start + r]]) * inv_t - row_lse_value);
    };
    for_each_logit_chunk<scalar_t>(h, w, ChunkAxis::kRows, chunk, row_fn, no_chunk_step);
  });
  return {logprobs, lse};
}

std::tuple<at::Tensor, at::Tensor> token_logprobs_bwd_cpu(
    const at::Tensor& grad_logprobs, const at::Tensor& grad_lse, const at::Tensor& hidden,
    const at::Tensor& weight, const at::Tensor& targets, const at::Tensor& lse, double temperature,
    int64_t chunk_rows, bool need_grad_hidden, bool need_grad_weight) {
  check_lm_head(hidden, weight);
  const auto ct = compute_dtype(hidden, weight);
  const auto h = hidden.to(ct).contiguous();  // (N, H)
  const auto w = weight.to(ct).contiguous();  // (V, H)
  const auto t = targets.to(at::kLong).contiguous();
  const auto g_lp = grad_logprobs.to(at::kDouble).contiguous();  // (N,)
  const auto g_lse = grad_lse.to(at::kDouble).contiguous();      // (N,)
  const auto lse_d = lse.to(at::kDouble).contiguous();           // (N,)
  const int64_t num_rows = h.size(0), vocab = w.size(0), dim = h.size(1);
  auto grad_h = need_grad_hidden ? at::empty({num_rows, dim}, h.options()) : at::empty({0}, h.options());
  auto grad_w = need_grad_weight ? at::zeros({vocab, dim}, h.options()) : at::empty({0}, h.options());
  if (need_grad_hidden || need_grad_weight) {
    const int64_t chunk = resolve_chunk_rows(chunk_rows, num_rows, vocab, h.element_size());
    const double inv_t = 1.0 / temperature;
    const int64_t* tp = t.data_ptr<int64_t>();
    const double* glp = g_lp.data_ptr<double>();
    const double* glse = g_lse.data_ptr<double>();
    const double* lsep = lse_d.data_ptr<double>();
    AT_DISPATCH_FLOATING_TYPES(ct, "token_logprobs_bwd_cpu", [&] {
      auto row_fn = [&](int64_t start, int64_t r, scalar_t* z, int64_t n) {  // z becomes G
        const int64_t i = start + r;
        row_logit_grad(z, n, tp[i], inv_t, lsep[i], glp[i], glse[i]);
      };
      auto chunk_fn = [&](int64_t start, const at::Tensor& grads) {  // (rows, V)
        const int64_t rows = grads.size(0);
        if (need_grad_hidden) { auto out = grad_h.narrow(0, start, rows); at::mm_out(out, grads, w); }  // (rows, H)
        if (need_grad_weight) grad_w.addmm_(grads.t(), h.narrow(0, start, rows));  // (V, H)
      };
      for_each_logit_chunk<scalar_t>(h, w, ChunkAxis::kRows, chunk, row_fn, chunk_fn);
    });
  }
  return {grad_h.to(hidden.scalar_type()), grad_w.to(weight.scalar_type())};
}

}  // namespace rlvfast

TORCH_LIBRARY_FRAGMENT(rlvfast, m) {
  m.def("token_logprobs_fwd(Tensor hidden, Tensor weight, Tensor targets, float temperature, "
        "int chunk_rows) -> (Tensor, Tensor)");
  m.def("token_logprobs_bwd(Tensor grad_logprobs, Tensor grad_lse, Tensor hidden, Tensor weight, "
        "Tensor targets, Tensor lse, float temperature, int chunk_rows, bool need_grad_hidden, "
        "bool need_grad_weight) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(rlvfast, CPU, m) {
  m.impl("token_logprobs_fwd", &rlvfast::token_logprobs_fwd_cpu);
  m.impl("token_logprobs_bwd", &rlvfast::token_logprobs_bwd_cpu);
}
