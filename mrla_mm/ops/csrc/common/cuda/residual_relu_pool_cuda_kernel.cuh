// CUDA kernel of the fused residual add, ReLU and channel mean.
#ifndef RESIDUAL_RELU_POOL_CUDA_KERNEL_CUH
#define RESIDUAL_RELU_POOL_CUDA_KERNEL_CUH

#include "mrla_common_cuda.cuh"

// Over tiles of the planes (MRLATiling): out elementwise, and the tile's
// sum of out; mrla_sum_slices makes the means.
template <typename T, typename A, bool CL>
__global__ void residual_relu_pool_cuda_kernel(const T* residual,
                                               const T* identity, T* out,
                                               A* part, MRLATiling tiling) {
  const MRLATile t = mrla_tile<CL>(tiling);
  const int H = tiling.H, W = tiling.W;
  const MRLAPlane p = mrla_plane<CL>(t.b, t.active ? t.c : 0, tiling.C, H, W);
  A sum = 0;
  for (int i = t.first; t.active && i < t.end; i += t.step) {
    const int64_t off = p.base + i * p.pix;
    const T s = static_cast<T>(static_cast<A>(residual[off]) +
                               static_cast<A>(identity[off]));
    const T v = static_cast<A>(s) < A(0) ? T(0) : s;
    out[off] = v;
    sum += static_cast<A>(v);
  }
  sum = mrla_tile_sum<CL>(sum);
  if (mrla_tile_writes<CL>(t)) part[mrla_tile_part(t, tiling, 1)] = sum;
}

#endif  // RESIDUAL_RELU_POOL_CUDA_KERNEL_CUH
