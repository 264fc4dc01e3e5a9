// Fused clipped policy-gradient loss on the CPU, gradients precomputed in the forward.
//
//   lp_i = log_softmax(hidden @ weight^T / T)[i, target_i],  r_i = exp(lp_i - old_i)
//   loss = sum_i w_i * -min(min(r_i, delta) A_i, clip(r_i, 1 - clip_low, 1 + clip_high) A_i)
//   or, for CISPO (is_cispo), sum_i w_i * -sg(min(r_i, 1 + clip_high)) A_i lp_i
// (delta = +inf: no cap; the token-level members of rlvfast.ops.reference.clipped_token_loss;
// GSPO's sequence ratio needs every token's log-prob first: rlvfast.ops runs it in two passes).
//
// The loss is a scalar, so d loss / d logits is known in the forward (Liger-style): per
// chunk of rows, GEMM 1 gives the logits into a reused [chunk, V] buffer; one fused row
// loop computes the lse, the log-prob, the clipped-loss epilogue (ratio, clip, weight,
// d loss / d lp) and overwrites the logits with d loss / d logits; then GEMM 2 writes
// grad_hidden's chunk = G @ W and GEMM 3 accumulates grad_weight += G^T @ H_chunk.
// Three GEMMs in all, like the plain way, and never an [N, V] tensor. The backward
// (policy_loss_bwd) only scales the saved gradients by the upstream scalar and casts to
// the input dtypes. Rows with zero gradient (weight 0, or clipped) skip the softmax pass
// and are compacted out of GEMMs 2 and 3.
// Float32 accumulation (grad_weight included) for bf16/fp16 inputs.
#include <torch/library.h>

#include <vector>

#include "fused_lm_head.h"

namespace rlvfast {
using namespace fused;

namespace {

struct ClipBand {
  double low, high;  // ratio band [1 - clip_low, 1 + clip_high]
  double delta;      // cap of the unclipped ratio (TRL's two-sided clip); +inf = none
  bool is_cispo;     // CISPO: -sg(min(r, high)) A lp instead of the PPO clip
};

// Per-token loss and its derivative with respect to the log-prob, with PyTorch's autograd
// conventions at ties (clamp passes the gradient on the band edges and at r = delta).
inline std::pair<double, double> clipped_loss_and_grad(double lp, double old_lp, double adv,
                                                       ClipBand band) {
  const double ratio = std::exp(lp - old_lp);
  if (band.is_cispo) {
    const double is_weight = std::min(ratio, band.high);  // detached: no d/d lp through it
    return {-is_weight * adv * lp, -is_weight * adv};
  }
  const double clipped = std::min(std::max(ratio, band.low), band.high);
  const double unclipped_term = std::min(ratio, band.delta) * adv, clipped_term = clipped * adv;
  const double loss = -std::min(unclipped_term, clipped_term);
  const bool in_band = ratio >= band.low && ratio <= band.high;
  const bool is_unclipped = ratio <= band.delta && (unclipped_term < clipped_term || in_band);
  const double grad = is_unclipped ? -ratio * adv : 0.0;
  return {loss, grad};
}

// GEMMs 2 and 3 of a chunk, over the rows with a gradient only: masked-out (weight 0) and
// clipped tokens have G = 0, so they are compacted out of the [rows, V] buffer first
// (moving live rows to the front; a pure-padding chunk skips both GEMMs).
void grad_gemms(at::Tensor& grads, const at::Tensor& hidden_chunk, const at::Tensor& weight,
                const std::vector<char>& has_grad, at::Tensor grad_hidden_chunk, at::Tensor grad_weight) {
  const int64_t rows = grads.size(0), vocab = grads.size(1);
  std::vector<int64_t> live;
  for (int64_t r = 0; r < rows; ++r) if (has_grad[r]) live.push_back(r);
  const int64_t num_live = static_cast<int64_t>(live.size());
  if (num_live == rows) {  // the common case: no copies
    if (grad_hidden_chunk.defined()) at::mm_out(grad_hidden_chunk, grads, weight);  // (rows, H)
    if (grad_weight.defined()) grad_weight.addmm_(grads.t(), hidden_chunk);          // (V, H)
    return;
  }
  if (grad_hidden_chunk.defined()) grad_hidden_chunk.zero_();
  if (num_live == 0) return;
  const int64_t row_bytes = vocab * static_cast<int64_t>(grads.element_size());
  char* base = static_cast<char*>(grads.data_ptr());
  for (int64_t k = 0; k < num_live; ++k) {  // live[k] >= k: each move goes to a free row
    if (live[k] != k) std::memcpy(base + k * row_bytes, base + live[k] * row_bytes, row_bytes);
  }
  const auto index = at::tensor(live, at::kLong);
  const auto live_grads = grads.narrow(0, 0, num_live);  // (live, V)
  if (grad_hidden_chunk.defined()) grad_hidden_chunk.index_copy_(0, index, at::mm(live_grads, weight));
  if (grad_weight.defined()) grad_weight.addmm_(live_grads.t(), hidden_chunk.index_select(0, index));
}

}  // namespace

// Returns (loss [], logprobs [N], grad_hidden [N, H] or [0], grad_weight [V, H] or [0]),
// all in the compute dtype (float32, float64 for float64 inputs); the gradients are
// d loss / d input for an upstream gradient of 1.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> policy_loss_fwd_cpu(
    const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets,
    const at::Tensor& old_logprobs, const at::Tensor& advantages, const at::Tensor& weights,
    double clip_low, double clip_high, double delta, bool is_cispo, double temperature,
    int64_t chunk_rows, bool need_grad_hidden, bool need_grad_weight) {
  check_lm_head(hidden, weight);
  const int64_t num_rows = hidden.size(0);
  for (const auto* v : {&targets, &old_logprobs, &advantages, &weights}) {
    TORCH_CHECK(v->dim() == 1 && v->size(0) == num_rows, "per-token inputs must be [N=", num_rows,
                "], got ", v->sizes());
  }
  TORCH_CHECK(temperature > 0.0, "temperature must be > 0, got ", temperature);
  TORCH_CHECK(clip_low >= 0.0 && clip_high >= 0.0, "clip_low and clip_high must be >= 0");
  TORCH_CHECK(delta > 1.0 + clip_high, "delta must be > 1 + clip_high (+inf: no cap), got ", delta);
  const auto ct = compute_dtype(hidden, weight);
  const auto h = hidden.to(ct).contiguous();  // (N, H)
  const auto w = weight.to(ct).contiguous();  // (V, H)
  const auto t = targets.to(at::kLong).contiguous();
  const auto old_d = old_logprobs.to(at::kDouble).contiguous();
  const auto adv_d = advantages.to(at::kDouble).contiguous();
  const auto wt_d = weights.to(at::kDouble).contiguous();
  const int64_t vocab = w.size(0), dim = h.size(1);
  const bool need_grad = need_grad_hidden || need_grad_weight;
  auto logprobs = at::empty({num_rows}, h.options());
  auto token_loss = at::zeros({num_rows}, old_d.options());  // (N,) w_i * l_i, summed at the end
  auto grad_h = need_grad_hidden ? at::empty({num_rows, dim}, h.options()) : at::empty({0}, h.options());
  auto grad_w = need_grad_weight ? at::zeros({vocab, dim}, h.options()) : at::empty({0}, h.options());
  const int64_t chunk = resolve_chunk_rows(chunk_rows, num_rows, vocab, h.element_size());
  const double inv_t = 1.0 / temperature;
  const ClipBand band{1.0 - clip_low, 1.0 + clip_high, delta, is_cispo};
  std::vector<char> has_grad(chunk);  // per row of the chunk: nonzero d loss / d lp
  const int64_t* tp = t.data_ptr<int64_t>();
  const double* oldp = old_d.data_ptr<double>();
  const double* advp = adv_d.data_ptr<double>();
  const double* wtp = wt_d.data_ptr<double>();
  double* lossp = token_loss.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(ct, "policy_loss_fwd_cpu", [&] {
    scalar_t* lp_out = logprobs.data_ptr<scalar_t>();
    auto row_fn = [&](int64_t start, int64_t r, scalar_t* z, int64_t n) {  // z becomes G
      const int64_t i = start + r;
      const double lse = row_lse(z, n, inv_t);
      const double lp = static_cast<double>(z[tp[i]]) * inv_t - lse;
      lp_out[i] = static_cast<scalar_t>(lp);
      const auto [loss, grad] = clipped_loss_and_grad(lp, oldp[i], advp[i], band);
      lossp[i] = wtp[i] * loss;
      const double g_lp = wtp[i] * grad;
      has_grad[r] = g_lp != 0.0;
      if (need_grad && has_grad[r]) row_logit_grad(z, n, tp[i], inv_t, lse, g_lp, 0.0);
    };
    auto chunk_fn = [&](int64_t start, at::Tensor& grads) {  // (rows, V)
      if (need_grad) grad_gemms(grads, h.narrow(0, start, grads.size(0)), w, has_grad,
                                need_grad_hidden ? grad_h.narrow(0, start, grads.size(0)) : at::Tensor(),
                                need_grad_weight ? grad_w : at::Tensor());
    };
    for_each_logit_chunk<scalar_t>(h, w, ChunkAxis::kRows, chunk, row_fn, chunk_fn);
  });
  auto loss = token_loss.sum().to(ct);  // () summed in double, in token order
  return {loss, logprobs, grad_h, grad_w};
}

// Backward: the saved d loss / d input times the upstream scalar, in the input dtypes.
std::tuple<at::Tensor, at::Tensor> policy_loss_bwd_cpu(const at::Tensor& grad_loss,
                                                       const at::Tensor& grad_hidden,
                                                       const at::Tensor& grad_weight,
                                                       at::ScalarType hidden_dtype,
                                                       at::ScalarType weight_dtype) {
  TORCH_CHECK(grad_loss.numel() == 1, "grad_loss must be a scalar, got ", grad_loss.sizes());
  // An upstream gradient of exactly 1 (loss.backward()) returns the saved gradient
  // itself: no second [V, H] buffer for the weight gradient.
  const double scale = grad_loss.item<double>();
  auto scaled = [&](const at::Tensor& g, at::ScalarType dtype) {
    if (!g.numel()) return g;
    return scale == 1.0 ? g.to(dtype) : g.mul(scale).to(dtype);
  };
  return {scaled(grad_hidden, hidden_dtype), scaled(grad_weight, weight_dtype)};
}

}  // namespace rlvfast

TORCH_LIBRARY_FRAGMENT(rlvfast, m) {
  m.def("policy_loss_fwd(Tensor hidden, Tensor weight, Tensor targets, Tensor old_logprobs, "
        "Tensor advantages, Tensor weights, float clip_low, float clip_high, float delta, "
        "bool is_cispo, float temperature, "
        "int chunk_rows, bool need_grad_hidden, bool need_grad_weight) "
        "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def("policy_loss_bwd(Tensor grad_loss, Tensor grad_hidden, Tensor grad_weight, "
        "ScalarType hidden_dtype, ScalarType weight_dtype) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(rlvfast, CPU, m) {
  m.impl("policy_loss_fwd", &rlvfast::policy_loss_fwd_cpu);
  m.impl("policy_loss_bwd", &rlvfast::policy_loss_bwd_cpu);
}
