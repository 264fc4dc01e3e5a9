// Group-relative advantages on the CPU: one pass per group of consecutive rewards.
// method: 0 = grpo ((r - mean) / (std + eps), unbiased std), 1 = rloo (r_i - mean of the
// others), 2 = drgrpo (r - mean). Groups of size 1 and all-equal groups give 0.
// Input validation (NaN/inf, divisibility) is done in Python where the error can name
// the bad index; this kernel assumes finite rewards.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <cmath>

namespace rlvfast {

at::Tensor group_advantages_cpu(const at::Tensor& rewards, int64_t group_size, int64_t method,
                                double eps) {
  TORCH_CHECK(rewards.dim() == 1, "rewards must be 1-D, got ", rewards.dim(), " dims");
  TORCH_CHECK(group_size >= 1, "group_size must be >= 1, got ", group_size);
  TORCH_CHECK(rewards.numel() % group_size == 0, "rewards length ", rewards.numel(),
              " is not a multiple of group_size ", group_size);
  TORCH_CHECK(method >= 0 && method <= 2, "method must be 0 (grpo), 1 (rloo) or 2 (drgrpo)");
  auto r = rewards.to(at::kDouble).contiguous();
  auto out = at::empty_like(r);
  const double* rp = r.data_ptr<double>();
  double* op = out.data_ptr<double>();
  const int64_t num_groups = r.numel() / group_size;
  at::parallel_for(0, num_groups, 64, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g) {
      const double* x = rp + g * group_size;
      double* y = op + g * group_size;
      if (group_size == 1) { y[0] = 0.0; continue; }
      double sum = 0.0;
      for (int64_t i = 0; i < group_size; ++i) sum += x[i];
      const double mean = sum / group_size;
      double sq = 0.0;
      bool all_equal = true;
      for (int64_t i = 0; i < group_size; ++i) {
        const double d = x[i] - mean;
        sq += d * d;
        all_equal = all_equal && (x[i] == x[0]);
      }
      if (all_equal) { for (int64_t i = 0; i < group_size; ++i) y[i] = 0.0; continue; }
      if (method == 0) {
        const double denom = std::sqrt(sq / (group_size - 1)) + eps;
        for (int64_t i = 0; i < group_size; ++i) y[i] = (x[i] - mean) / denom;
      } else if (method == 1) {
        for (int64_t i = 0; i < group_size; ++i) y[i] = x[i] - (sum - x[i]) / (group_size - 1);
      } else {
        for (int64_t i = 0; i < group_size; ++i) y[i] = x[i] - mean;
      }
    }
  });
  return out.to(rewards.scalar_type());
}

}  // namespace rlvfast

TORCH_LIBRARY_FRAGMENT(rlvfast, m) {
  m.def("group_advantages(Tensor rewards, int group_size, int method, float eps) -> Tensor");
}

TORCH_LIBRARY_IMPL(rlvfast, CPU, m) {
  m.impl("group_advantages", &rlvfast::group_advantages_cpu);
}
