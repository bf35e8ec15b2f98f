// CUDA kernels of the MRLA-base readout. The T cached values are passed as
// a device array of pointers, so they are read in place.
#ifndef MRLA_BASE_CUDA_KERNEL_CUH
#define MRLA_BASE_CUDA_KERNEL_CUH

#include "mrla_common_cuda.cuh"

template <typename T, typename A, bool CL>
__global__ void mrla_base_forward_cuda_kernel(
    const A* weights, const T* const* values, const A* scale,
    const A* shift, const T* residual, T* out, int64_t B, int64_t C,
    int64_t H, int64_t W, int64_t G, int64_t T_len) {
  const int64_t d = C / G;
  MRLA_KERNEL_LOOP(n, B * C * H * W) {
    int64_t b, c, y, x0;
    mrla_unravel<CL>(n, C, H, W, &b, &c, &y, &x0);
    const A* w = weights + (b * G + c / d) * T_len;
    A acc = 0;
    for (int64_t s = 0; s < T_len; ++s) {
      acc += w[s] * static_cast<A>(values[s][n]);
    }
    if (scale != nullptr) {
      acc = acc * scale[c] + shift[c];
      acc = acc < A(0) ? A(0) : acc;
    }
    if (residual != nullptr) acc += static_cast<A>(residual[n]);
    out[n] = static_cast<T>(acc);
  }
}

// Over tiles of the planes (MRLATiling): value gradients elementwise,
// the tile's partial weight dot products into part [B * C, S, T_len].
template <typename T, typename A, bool CL>
__global__ void mrla_base_backward_cuda_kernel(
    const T* grad_out, const A* weights, const T* const* values,
    T* const* grad_values, A* part, MRLATiling tiling, int64_t H, int64_t W,
    int64_t G, int64_t T_len) {
  const MRLATile t = mrla_tile<CL>(tiling);
  const int64_t C = tiling.C;
  const A* w = weights + (t.b * G + (t.active ? t.c : 0) / (C / G)) * T_len;
  for (int64_t s = 0; s < T_len; ++s) {
    A dot = 0;
    for (int64_t i = t.first; t.active && i < t.end; i += t.step) {
      const int64_t off = mrla_offset<CL>(t.b, t.c, i / W, i % W, C, H, W);
      const A g = static_cast<A>(grad_out[off]);
      dot += g * static_cast<A>(values[s][off]);
      grad_values[s][off] = static_cast<T>(w[s] * g);
    }
    dot = mrla_tile_sum<CL>(dot);
    if (mrla_tile_writes<CL>(t)) {
      part[mrla_tile_part(t, tiling, T_len) + s] = dot;
    }
  }
}

#endif  // MRLA_BASE_CUDA_KERNEL_CUH
