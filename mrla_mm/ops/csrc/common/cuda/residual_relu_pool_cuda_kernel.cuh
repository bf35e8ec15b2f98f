// CUDA kernel of the fused residual add, ReLU and channel mean.
#ifndef RESIDUAL_RELU_POOL_CUDA_KERNEL_CUH
#define RESIDUAL_RELU_POOL_CUDA_KERNEL_CUH

#include "mrla_common_cuda.cuh"

// One (b, c) plane per block; the block reduces its channel's sum, so the
// result is deterministic.
template <typename T, typename A, bool CL>
__global__ void residual_relu_pool_cuda_kernel(const T* residual,
                                               const T* identity, T* out,
                                               T* mean, int64_t C, int64_t H,
                                               int64_t W) {
  const int64_t p = blockIdx.x, b = p / C, c = p % C;
  A sum = 0;
  for (int64_t i = threadIdx.x; i < H * W; i += blockDim.x) {
    const int64_t off = mrla_offset<CL>(b, c, i / W, i % W, C, H, W);
    const T s = static_cast<T>(static_cast<A>(residual[off]) +
                               static_cast<A>(identity[off]));
    const T v = static_cast<A>(s) < A(0) ? T(0) : s;
    out[off] = v;
    sum += static_cast<A>(v);
  }
  sum = mrla_block_sum(sum);
  if (threadIdx.x == 0) mean[p] = static_cast<T>(sum / A(H * W));
}

#endif  // RESIDUAL_RELU_POOL_CUDA_KERNEL_CUH
