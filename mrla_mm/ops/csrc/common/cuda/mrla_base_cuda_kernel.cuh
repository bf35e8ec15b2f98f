// CUDA kernels of the MRLA-base readout. The T cached values are passed as
// a device array of pointers, so they are read in place.
#ifndef MRLA_BASE_CUDA_KERNEL_CUH
#define MRLA_BASE_CUDA_KERNEL_CUH

#include "mrla_common_cuda.cuh"

// Over tiles of the planes (MRLATiling), elementwise.
template <typename T, typename A, bool CL>
__global__ void mrla_base_forward_cuda_kernel(
    const A* weights, const T* const* values, const A* scale, const A* shift,
    const T* residual, T* out, MRLATiling tiling, int64_t G, int64_t T_len) {
  const MRLATile t = mrla_tile<CL>(tiling);
  const int H = tiling.H, W = tiling.W;
  if (!t.active) return;
  const int64_t C = tiling.C;
  const MRLAPlane p = mrla_plane<CL>(t.b, t.c, C, H, W);
  const A* w = weights + (t.b * G + t.c / (C / G)) * T_len;
  const A sc = scale != nullptr ? scale[t.c] : A(1);
  const A sh = scale != nullptr ? shift[t.c] : A(0);
  for (int i = t.first; i < t.end; i += t.step) {
    const int64_t off = p.base + i * p.pix;
    A acc = 0;
    for (int64_t s = 0; s < T_len; ++s) {
      acc += w[s] * static_cast<A>(values[s][off]);
    }
    if (scale != nullptr) {
      acc = acc * sc + sh;
      acc = acc < A(0) ? A(0) : acc;
    }
    if (residual != nullptr) acc += static_cast<A>(residual[off]);
    out[off] = static_cast<T>(acc);
  }
}

// Over tiles of the planes (MRLATiling): value gradients elementwise
// (where grad_values[s] is not null), the tile's partial weight dot
// products into part [B * C, S, T_len].
template <typename T, typename A, bool CL>
__global__ void mrla_base_backward_cuda_kernel(const T* grad_out,
                                               const A* weights,
                                               const T* const* values,
                                               T* const* grad_values, A* part,
                                               MRLATiling tiling, int64_t G,
                                               int64_t T_len) {
  const MRLATile t = mrla_tile<CL>(tiling);
  const int H = tiling.H, W = tiling.W;
  const int64_t C = tiling.C, c = t.active ? t.c : 0;
  const MRLAPlane p = mrla_plane<CL>(t.b, c, C, H, W);
  const A* w = weights + (t.b * G + c / (C / G)) * T_len;
  for (int64_t s = 0; s < T_len; ++s) {
    T* grad_value = grad_values[s];
    A dot = 0;
    for (int i = t.first; t.active && i < t.end; i += t.step) {
      const int64_t off = p.base + i * p.pix;
      const A g = static_cast<A>(grad_out[off]);
      dot += g * static_cast<A>(values[s][off]);
      if (grad_value != nullptr) grad_value[off] = static_cast<T>(w[s] * g);
    }
    dot = mrla_tile_sum<CL>(dot);
    if (mrla_tile_writes<CL>(t)) {
      part[mrla_tile_part(t, tiling, T_len) + s] = dot;
    }
  }
}

#endif  // MRLA_BASE_CUDA_KERNEL_CUH
