// Group-relative advantages on the GPU: one thread block per group of consecutive rewards.
// method: 0 = grpo ((r - mean) / (std + eps), unbiased std), 1 = rloo (r_i - mean of the
// others), 2 = drgrpo (r - mean). Groups of size 1 and all-equal groups give 0. Same math
// as csrc/cpu/group_advantages.cpp and kernels/group_advantages.py, in double precision.
// Built only with RLVFAST_WITH_CUDA=ON (nvcc and a CUDA build of torch); input validation
// (finite rewards, divisibility) is done in Python where the error can name the bad index.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cmath>

namespace rlvfast {
namespace {

constexpr int kThreads = 256;

// Sum of v over the block; every thread gets the result. shared holds kThreads doubles.
__device__ double block_sum(double v, double* shared) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) shared[threadIdx.x] += shared[threadIdx.x + stride];
    __syncthreads();
  }
  const double total = shared[0];
  __syncthreads();  // shared is reused by the next call
  return total;
}

template <typename scalar_t>
__global__ void group_advantages_kernel(const scalar_t* __restrict__ rewards,  // [G * n]
                                        scalar_t* __restrict__ out,            // [G * n]
                                        int64_t group_size, int64_t method, double eps) {
  __shared__ double shared[kThreads];
  const int64_t base = static_cast<int64_t>(blockIdx.x) * group_size;
  const scalar_t* r = rewards + base;
  scalar_t* y = out + base;
  const double first = static_cast<double>(r[0]);

  double sum = 0.0, num_different = 0.0;
  for (int64_t i = threadIdx.x; i < group_size; i += blockDim.x) {
    const double x = static_cast<double>(r[i]);
    sum += x;
    num_different += (x != first) ? 1.0 : 0.0;
  }
  sum = block_sum(sum, shared);
  num_different = block_sum(num_different, shared);
  const double n = static_cast<double>(group_size);
  const double mean = sum / n;

  double sq = 0.0;
  for (int64_t i = threadIdx.x; i < group_size; i += blockDim.x) {
    const double d = static_cast<double>(r[i]) - mean;
    sq += d * d;
  }
  sq = block_sum(sq, shared);
  const double denom = group_size > 1 ? static_cast<double>(group_size - 1) : 1.0;
  const double std_plus_eps = sqrt(sq / denom) + eps;

  for (int64_t i = threadIdx.x; i < group_size; i += blockDim.x) {
    const double x = static_cast<double>(r[i]);
    double adv;
    if (num_different == 0.0) {
      adv = 0.0;  // all-equal groups, and groups of one
    } else if (method == 0) {
      adv = (x - mean) / std_plus_eps;
    } else if (method == 1) {
      adv = x - (sum - x) / denom;
    } else {
      adv = x - mean;
    }
    y[i] = static_cast<scalar_t>(adv);
  }
}

}  // namespace

at::Tensor group_advantages_cuda(const at::Tensor& rewards, int64_t group_size, int64_t method,
                                 double eps) {
  TORCH_CHECK(rewards.is_cuda(), "rewards must be a CUDA tensor, got ", rewards.device());
  TORCH_CHECK(rewards.dim() == 1, "rewards must be 1-D, got ", rewards.dim(), " dims");
  TORCH_CHECK(group_size >= 1, "group_size must be >= 1, got ", group_size);
  TORCH_CHECK(rewards.numel() % group_size == 0, "rewards length ", rewards.numel(),
              " is not a multiple of group_size ", group_size);
  TORCH_CHECK(method >= 0 && method <= 2, "method must be 0 (grpo), 1 (rloo) or 2 (drgrpo), got ",
              method);
  const c10::cuda::CUDAGuard guard(rewards.device());
  auto r = rewards.contiguous();
  auto out = at::empty_like(r);
  const int64_t num_groups = r.numel() / group_size;
  TORCH_CHECK(num_groups <= 0x7fffffff, "too many groups for one launch: ", num_groups);
  if (num_groups == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, r.scalar_type(), "group_advantages_cuda", [&] {
    group_advantages_kernel<scalar_t><<<static_cast<unsigned>(num_groups), kThreads, 0, stream>>>(
        r.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), group_size, method, eps);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace rlvfast

TORCH_LIBRARY_FRAGMENT(rlvfast, m) {
  m.def("group_advantages_cuda(Tensor rewards, int group_size, int method, float eps) -> Tensor");
}

TORCH_LIBRARY_IMPL(rlvfast, CUDA, m) {
  m.impl("group_advantages_cuda", &rlvfast::group_advantages_cuda);
}
