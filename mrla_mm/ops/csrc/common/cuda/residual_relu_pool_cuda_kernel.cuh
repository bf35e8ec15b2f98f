// CUDA kernels of the fused residual add, ReLU and channel mean, and of
// its backward.
#ifndef RESIDUAL_RELU_POOL_CUDA_KERNEL_CUH
#define RESIDUAL_RELU_POOL_CUDA_KERNEL_CUH

#include "mrla_common_cuda.cuh"
#include "residual_relu_pool.hpp"

// Over tiles of the planes (MRLATiling): out elementwise, and the tile's
// sum of out; mrla_sum_slices makes the means. scale and shift (null
// without a folded norm) act on the residual first.
template <typename T, typename A, bool CL>
__global__ void residual_relu_pool_cuda_kernel(const T* residual,
                                               const T* identity,
                                               const A* scale,
                                               const A* shift, T* out,
                                               A* part, MRLATiling tiling) {
  const MRLATile t = mrla_tile<CL>(tiling);
  const int H = tiling.H, W = tiling.W;
  const MRLAPlane p = mrla_plane<CL>(t.b, t.active ? t.c : 0, tiling.C, H, W);
  const A s = scale ? scale[t.active ? t.c : 0] : A(1);
  const A h = scale ? shift[t.active ? t.c : 0] : A(0);
  A sum = 0;
  for (int i = t.first; t.active && i < t.end; i += t.step) {
    const int64_t off = p.base + i * p.pix;
    const T v = scale ? mrla_affine_add_relu<T, A>(residual[off], s, h,
                                                   identity[off])
                      : mrla_add_relu<T, A>(residual[off], identity[off]);
    out[off] = v;
    sum += static_cast<A>(v);
  }
  sum = mrla_tile_sum<CL>(sum);
  if (mrla_tile_writes<CL>(t)) part[mrla_tile_part(t, tiling, 1)] = sum;
}

// Elementwise over the n elements of the maps; (b, c) of element i picks
// its plane's share of grad_mean.
template <typename T, typename A, bool CL>
__global__ void residual_relu_pool_backward_cuda_kernel(
    const T* grad_out, const T* grad_mean, const T* out, T* grad, int64_t n,
    int64_t C, int64_t HW) {
  MRLA_KERNEL_LOOP(i, n) {
    const int64_t plane = CL ? i / (HW * C) * C + i % C : i / HW;
    grad[i] = mrla_add_relu_grad<T, A>(
        grad_out[i], mrla_mean_share<T, A>(grad_mean[plane], HW), out[i]);
  }
}

#endif  // RESIDUAL_RELU_POOL_CUDA_KERNEL_CUH
