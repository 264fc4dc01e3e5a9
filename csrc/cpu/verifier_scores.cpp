// Verifier scores on the CPU: P("Yes") and P("No") under the full-vocabulary softmax of
// hidden @ weight^T / T at the verification position, for hidden [B, H].
//
// Only the two lm-head rows give the numerators (one [B, 2] GEMM); the denominator is a
// streaming (online) log-sum-exp over V in column blocks of a reused [B, block] buffer,
// so [B, V] is never held for large V. Also returns the lse [B] for the backward, which
// reuses token_logprobs_bwd (see rlvfast/ops/cpp.py). Float32 results for bf16/fp16/fp32
// inputs, float64 for float64 inputs.
#include <torch/library.h>

#include "fused_lm_head.h"

namespace rlvfast {
using namespace fused;

std::tuple<at::Tensor, at::Tensor, at::Tensor> verifier_scores_fwd_cpu(const at::Tensor& hidden,
                                                       const at::Tensor& weight, int64_t yes_id,
                                                       int64_t no_id, double temperature,
                                                       int64_t block_cols) {
  check_lm_head(hidden, weight);
  const int64_t batch = hidden.size(0), vocab = weight.size(0);
  TORCH_CHECK(yes_id >= 0 && yes_id < vocab && no_id >= 0 && no_id < vocab,
              "yes_id=", yes_id, " and no_id=", no_id, " must be in [0, V=", vocab, ")");
  TORCH_CHECK(temperature > 0.0, "temperature must be > 0, got ", temperature);
  const auto ct = compute_dtype(hidden, weight);
  const auto h = hidden.to(ct).contiguous();  // (B, H)
  const auto w = weight.to(ct).contiguous();  // (V, H)
  if (block_cols <= 0) {  // auto: the [B, block] buffer within the chunk budget, >= 256 columns
    block_cols = std::max<int64_t>(256, kDefaultChunkBytes / std::max<int64_t>(1, batch * h.element_size()));
  }
  block_cols = std::max<int64_t>(1, std::min(block_cols, vocab));
  const double inv_t = 1.0 / temperature;
  auto run_max = at::full({batch}, -std::numeric_limits<double>::infinity(), h.options().dtype(at::kDouble));
  auto run_sum = at::zeros({batch}, h.options().dtype(at::kDouble));
  double* mp = run_max.data_ptr<double>();
  double* sp = run_sum.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(ct, "verifier_scores_cpu", [&] {
    auto row_fn = [&](int64_t, int64_t b, const scalar_t* z, int64_t cols) {  // one block of row b
      const double new_max = std::max(mp[b], static_cast<double>(row_max(z, cols)) * inv_t);
      const double block_sum = row_sum_exp(z, cols, static_cast<scalar_t>(inv_t),
                                           static_cast<scalar_t>(new_max));
      sp[b] = sp[b] * std::exp(mp[b] - new_max) + block_sum;
      mp[b] = new_max;
    };
    for_each_logit_chunk<scalar_t>(h, w, ChunkAxis::kCols, block_cols, row_fn, no_chunk_step);
  });
  const auto lse = run_max + run_sum.log();  // (B,) double
  const auto ids = at::tensor({yes_id, no_id}, at::kLong);
  const auto yes_no = at::mm(h, w.index_select(0, ids).t()).to(at::kDouble) * inv_t;  // (B, 2)
  const auto probs = (yes_no - lse.unsqueeze(1)).exp().to(ct);                         // (B, 2)
  return {probs.select(1, 0).contiguous(), probs.select(1, 1).contiguous(), lse.to(ct)};
}

}  // namespace rlvfast

TORCH_LIBRARY_FRAGMENT(rlvfast, m) {
  m.def("verifier_scores_fwd(Tensor hidden, Tensor weight, int yes_id, int no_id, "
        "float temperature, int block_cols) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(rlvfast, CPU, m) {
  m.impl("verifier_scores_fwd", &rlvfast::verifier_scores_fwd_cpu);
}
