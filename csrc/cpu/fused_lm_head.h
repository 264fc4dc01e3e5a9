// Shared pieces of the fused lm-head CPU kernels (token_logprobs, policy_loss,
// verifier_scores): chunk sizing, the compute dtype, the per-row softmax loops, and the
// chunk loop they all run (for_each_logit_chunk).
//
// The kernels never hold the [N, V] logits: they take a chunk of rows, compute its
// logits with one at::mm (MKL/oneDNN), run the row loops below over it in place
// (max, sum of exp, then the gradient d loss / d logits written over the logits), and
// feed the chunk to the gradient GEMMs before the next chunk reuses the buffer.
// Row loops accumulate in float32 SIMD lanes over short blocks and in double across
// blocks; exp is a Cephes-style polynomial that GCC vectorizes (AVX2 clone where the
// CPU has it, chosen at load time, plain SSE2 otherwise).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define RLV_MULTIVERSION __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define RLV_MULTIVERSION
#endif

namespace rlvfast::fused {

// Per-chunk logits buffer bound when the caller passes chunk_rows <= 0: 128 MiB is
// ~220 rows at V = 151936 in float32, enough rows that the GEMMs stay efficient.
constexpr int64_t kDefaultChunkBytes = int64_t(128) << 20;

inline int64_t resolve_chunk_rows(int64_t chunk_rows, int64_t num_rows, int64_t vocab,
                                  int64_t elem_size) {
  if (chunk_rows <= 0) chunk_rows = kDefaultChunkBytes / std::max<int64_t>(1, vocab * elem_size);
  return std::max<int64_t>(1, std::min<int64_t>(chunk_rows, std::max<int64_t>(num_rows, 1)));
}

// float64 only when both inputs are float64; bf16/fp16/fp32 compute in float32.
inline at::ScalarType compute_dtype(const at::Tensor& a, const at::Tensor& b) {
  return (a.scalar_type() == at::kDouble && b.scalar_type() == at::kDouble) ? at::kDouble
                                                                            : at::kFloat;
}

inline void check_lm_head(const at::Tensor& hidden, const at::Tensor& weight) {
  TORCH_CHECK(hidden.dim() == 2, "hidden must be [N, H], got ", hidden.sizes());
  TORCH_CHECK(weight.dim() == 2, "weight must be [V, H], got ", weight.sizes());
  TORCH_CHECK(hidden.size(1) == weight.size(1), "hidden H=", hidden.size(1),
              " does not match weight H=", weight.size(1));
  TORCH_CHECK(at::isFloatingType(hidden.scalar_type()) && at::isFloatingType(weight.scalar_type()),
              "hidden and weight must be floating point");
}

// exp(x) for float, about 2 ulp; x is clamped to >= -87 (exp ~ 1.6e-38, i.e. zero for a
// softmax over fewer than 1e30 entries). Branch-free so the loops below vectorize.
inline float exp_approx(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round(x / ln 2)
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;  // r = x - n ln 2 in two steps (Cody-Waite)
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;  // 2^n
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}
inline double exp_approx(double x) { return std::exp(x); }

constexpr int64_t kSumBlock = 512;  // float partial sums over 512 entries, double across

RLV_MULTIVERSION static float row_max(const float* z, int64_t n) {
  float m = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < n; ++j) m = z[j] > m ? z[j] : m;
  return m;
}
inline double row_max(const double* z, int64_t n) {
  double m = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < n; ++j) m = std::max(m, z[j]);
  return m;
}

// sum_j exp(z[j] * scale - shift)
RLV_MULTIVERSION static double row_sum_exp(const float* z, int64_t n, float scale, float shift) {
  double total = 0.0;
  for (int64_t b = 0; b < n; b += kSumBlock) {
    const int64_t e = std::min(n, b + kSumBlock);
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t j = b; j < e; ++j) s += exp_approx(z[j] * scale - shift);
    total += s;
  }
  return total;
}
inline double row_sum_exp(const double* z, int64_t n, double scale, double shift) {
  double s = 0.0;
  for (int64_t j = 0; j < n; ++j) s += std::exp(z[j] * scale - shift);
  return s;
}

// z[j] = coef * exp(z[j] * scale - shift), in place (a softmax row times coef).
RLV_MULTIVERSION static void row_exp_fill(float* z, int64_t n, float scale, float shift, float coef) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) z[j] = coef * exp_approx(z[j] * scale - shift);
}
inline void row_exp_fill(double* z, int64_t n, double scale, double shift, double coef) {
  for (int64_t j = 0; j < n; ++j) z[j] = coef * std::exp(z[j] * scale - shift);
}

// Row statistics of raw logits z (not yet divided by T): max and log-sum-exp of z * inv_t.
template <typename scalar_t>
inline double row_lse(const scalar_t* z, int64_t n, double inv_t) {
  const double m = static_cast<double>(row_max(z, n)) * inv_t;
  return m + std::log(row_sum_exp(z, n, static_cast<scalar_t>(inv_t), static_cast<scalar_t>(m)));
}

// Writes d loss / d raw-logits over the raw logits row z, given the upstream gradients of
// the row's target log-prob (g_lp) and log-sum-exp (g_lse):
//   dz = (g_lp * onehot(target) + (g_lse - g_lp) * softmax(z / T)) / T.
template <typename scalar_t>
inline void row_logit_grad(scalar_t* z, int64_t n, int64_t target, double inv_t, double lse,
                           double g_lp, double g_lse) {
  const double coef = (g_lse - g_lp) * inv_t;
  if (coef == 0.0) {
    std::fill(z, z + n, scalar_t(0));
  } else {
    row_exp_fill(z, n, static_cast<scalar_t>(inv_t), static_cast<scalar_t>(lse),
                 static_cast<scalar_t>(coef));
  }
  z[target] += static_cast<scalar_t>(g_lp * inv_t);
}

// One chunk's raw logits [rows, V] = hidden_chunk @ weight^T, in the front of buf.
inline at::Tensor chunk_logits(at::Tensor& buf, const at::Tensor& hidden, const at::Tensor& weight,
                               int64_t start, int64_t rows) {
  const int64_t vocab = weight.size(0);
  auto logits = buf.narrow(0, 0, rows * vocab).view({rows, vocab});  // (rows, V)
  at::mm_out(logits, hidden.narrow(0, start, rows), weight.t());
  return logits;
}

// One vocabulary chunk's raw logits [N, cols] = hidden @ weight[start:start + cols]^T, in
// the front of buf.
inline at::Tensor column_chunk_logits(at::Tensor& buf, const at::Tensor& hidden,
                                      const at::Tensor& weight, int64_t start, int64_t cols) {
  const int64_t num_rows = hidden.size(0);
  auto logits = buf.narrow(0, 0, num_rows * cols).view({num_rows, cols});  // (N, cols)
  at::mm_out(logits, hidden, weight.narrow(0, start, cols).t());
  return logits;
}

// How the logits are cut: kRows, chunks of whole rows [start, start + size) of hidden
// (token_logprobs, policy_loss); kCols, every row's slice of the vocabulary columns
// [start, start + size) (verifier_scores' streaming log-sum-exp).
enum class ChunkAxis { kRows, kCols };

// The chunk loop of the CPU ops: for each chunk of `chunk` rows (or columns), its raw
// logits go into one reused buffer (one GEMM), then row_fn(start, r, z, n) runs for every
// row r of the chunk's logits in parallel (z: that row's n entries, writable in place;
// the hidden row is start + r for kRows, r for kCols), then chunk_fn(start, logits) runs
// once, serially (the gradient GEMMs). hidden and weight: contiguous, scalar_t.
template <typename scalar_t, typename RowFn, typename ChunkFn>
void for_each_logit_chunk(const at::Tensor& hidden, const at::Tensor& weight, ChunkAxis axis,
                          int64_t chunk, const RowFn& row_fn, const ChunkFn& chunk_fn) {
  const bool by_rows = axis == ChunkAxis::kRows;
  const int64_t total = by_rows ? hidden.size(0) : weight.size(0);
  auto buf = at::empty({chunk * (by_rows ? weight.size(0) : hidden.size(0))}, hidden.options());
  for (int64_t start = 0; start < total; start += chunk) {
    const int64_t size = std::min(chunk, total - start);
    auto logits = by_rows ? chunk_logits(buf, hidden, weight, start, size)
                          : column_chunk_logits(buf, hidden, weight, start, size);  // (rows, cols)
    scalar_t* lg = logits.data_ptr<scalar_t>();
    const int64_t cols = logits.size(1);
    at::parallel_for(0, logits.size(0), 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) row_fn(start, r, lg + r * cols, cols);
    });
    chunk_fn(start, logits);
  }
}

// for_each_logit_chunk with nothing to do after each chunk's rows.
constexpr auto no_chunk_step = [](int64_t, const at::Tensor&) {};

}  // namespace rlvfast::fused
