// CUDA kernels of the MRLA-light core. The forward is one elementwise pass
// in memory order. The backward takes two, each over tiles of the planes
// (MRLATiling): first the value gradient (kept in a float buffer) with the
// gate and lambda sums, then grad_x and the weight gradient from that
// buffer; the tiles' partial sums are added in a fixed order, so the sums
// are deterministic. With a
// train-mode BatchNorm after the core (norm != nullptr: rows a, b, c,
// center of [4, C]) the incoming gradient is that of x + batch_norm(z);
// z is recomputed, never stored.
#ifndef MRLA_LIGHT_CUDA_KERNEL_CUH
#define MRLA_LIGHT_CUDA_KERNEL_CUH

#include "mrla_act.hpp"
#include "mrla_common_cuda.cuh"

template <typename T, typename A, bool CL>
__device__ __forceinline__ A mrla_dwconv_at(const T* x, const A* w9,
                                            int64_t b, int64_t c, int64_t y,
                                            int64_t x0, int64_t C, int64_t H,
                                            int64_t W) {
  A acc = 0;
#pragma unroll
  for (int i = 0; i < 3; ++i) {
    const int64_t yy = y + i - 1;
    if (yy < 0 || yy >= H) continue;
#pragma unroll
    for (int j = 0; j < 3; ++j) {
      const int64_t xx = x0 + j - 1;
      if (xx < 0 || xx >= W) continue;
      acc += w9[c * 9 + 3 * i + j] *
             static_cast<A>(x[mrla_offset<CL>(b, c, yy, xx, C, H, W)]);
    }
  }
  return acc;
}

// The light core z at memory offset off (no history without o_prev).
template <typename T, typename A>
__device__ __forceinline__ A mrla_light_core_at(A v, A g_bc, const A* lambda,
                                                const T* o_prev, int64_t c,
                                                int64_t off, int act) {
  return o_prev != nullptr
             ? mrla_light_core(v, g_bc, lambda[c],
                               static_cast<A>(o_prev[off]), act)
             : mrla_light_core(v, g_bc, A(0), A(0), act);
}

// Per-tile moments of z (see MRLATiling): without grad {mean,
// sum (z - mean)^2} of the tile's pixels (z recomputed for the centred
// second pass; mrla_combine_moments_cuda_kernel merges the slices), with
// grad {sum grad, sum grad * (z - center)}.
template <typename T, typename A, bool CL>
__global__ void mrla_light_stats_cuda_kernel(
    const T* x, const A* w9, const A* gate, const A* lambda, const T* o_prev,
    const T* grad, const A* center, A* part, MRLATiling tiling, int64_t H,
    int64_t W, int64_t G, int act) {
  const MRLATile t = mrla_tile<CL>(tiling);
  const int64_t b = t.b, c = t.c, C = tiling.C;
  const A g_bc = t.active ? gate[b * G + c / (C / G)] : A(0);
  // z at pixel i of the plane, and its memory offset.
  auto z_at = [&](int64_t i, int64_t* off) {
    const int64_t y = i / W, x0 = i % W;
    *off = mrla_offset<CL>(b, c, y, x0, C, H, W);
    return mrla_light_core_at<T, A>(
        mrla_dwconv_at<T, A, CL>(x, w9, b, c, y, x0, C, H, W), g_bc, lambda,
        o_prev, c, *off, act);
  };
  A s1 = 0, s2 = 0;
  for (int64_t i = t.first; t.active && i < t.end; i += t.step) {
    int64_t off;
    const A z = z_at(i, &off);
    if (grad != nullptr) {
      const A g = static_cast<A>(grad[off]);
      s1 += g;
      s2 += g * (z - center[c]);
    } else {
      s1 += z;
    }
  }
  s1 = mrla_tile_sum<CL>(s1);
  if (grad == nullptr) {
    const A mean = s1 / static_cast<A>(t.end - t.begin);
    for (int64_t i = t.first; t.active && i < t.end; i += t.step) {
      int64_t off;
      const A d = z_at(i, &off) - mean;
      s2 += d * d;
    }
    s1 = mean;
  }
  s2 = mrla_tile_sum<CL>(s2);
  if (mrla_tile_writes<CL>(t)) {
    const int64_t q = mrla_tile_part(t, tiling, 2);
    part[q] = s1;
    part[q + 1] = s2;
  }
}

// Merges the slices' {mean, centred sum of squares} of each plane (part
// [rows, S, 2]) into the plane's, slices in order (Chan et al.).
template <typename A>
__global__ void mrla_combine_moments_cuda_kernel(const A* part, A* stats,
                                                 int64_t rows,
                                                 MRLATiling tiling) {
  MRLA_KERNEL_LOOP(r, rows) {
    const A* p = part + r * tiling.S * 2;
    auto count = [&](int64_t s) {
      const int64_t end = (s + 1) * tiling.L;
      return static_cast<A>((end < tiling.HW ? end : tiling.HW) -
                            s * tiling.L);
    };
    A mean = 0;
    for (int64_t s = 0; s < tiling.S; ++s) mean += count(s) * p[2 * s];
    mean /= static_cast<A>(tiling.HW);
    A m2 = 0;
    for (int64_t s = 0; s < tiling.S; ++s) {
      const A d = p[2 * s] - mean;
      m2 += p[2 * s + 1] + count(s) * d * d;
    }
    stats[2 * r] = mean;
    stats[2 * r + 1] = m2;
  }
}

template <typename T, typename A, bool CL>
__global__ void mrla_light_forward_cuda_kernel(
    const T* x, const A* w9, const A* gate, const A* lambda, const T* o_prev,
    const A* scale, const A* shift, T* out, int64_t B, int64_t C, int64_t H,
    int64_t W, int64_t G, int act, bool add_input) {
  const int64_t d = C / G;
  MRLA_KERNEL_LOOP(n, B * C * H * W) {
    int64_t b, c, y, x0;
    mrla_unravel<CL>(n, C, H, W, &b, &c, &y, &x0);
    const A v = mrla_dwconv_at<T, A, CL>(x, w9, b, c, y, x0, C, H, W);
    A r = mrla_light_core_at<T, A>(v, gate[b * G + c / d], lambda, o_prev, c,
                                   n, act);
    if (scale != nullptr) r = r * scale[c] + shift[c];
    if (add_input) r += static_cast<A>(x[n]);
    out[n] = static_cast<T>(r);
  }
}

// Per-tile partial sums (see MRLATiling) of the gate and lambda
// gradients; the value gradient and grad_o_prev elementwise.
template <typename T, typename A, bool CL>
__global__ void mrla_light_backward_value_cuda_kernel(
    const T* grad_out, const T* x, const A* w9, const A* gate,
    const A* lambda, const T* o_prev, const A* norm, A* grad_v,
    T* grad_o_prev, A* gate_part, A* lambda_part, MRLATiling tiling,
    int64_t H, int64_t W, int64_t G, int act) {
  const MRLATile t = mrla_tile<CL>(tiling);
  const int64_t b = t.b, c = t.c, C = tiling.C;
  const A g_bc = t.active ? gate[b * G + c / (C / G)] : A(0);
  A sum_gate = 0, sum_lambda = 0;
  for (int64_t i = t.first; t.active && i < t.end; i += t.step) {
    const int64_t y = i / W, x0 = i % W;
    const int64_t off = mrla_offset<CL>(b, c, y, x0, C, H, W);
    const A v = mrla_dwconv_at<T, A, CL>(x, w9, b, c, y, x0, C, H, W);
    A g = static_cast<A>(grad_out[off]);
    if (norm != nullptr) {
      const A z =
          mrla_light_core_at<T, A>(v, g_bc, lambda, o_prev, c, off, act);
      g = norm[c] * g + norm[C + c] * (z - norm[3 * C + c]) + norm[2 * C + c];
    }
    sum_gate += g * mrla_act(v, act);
    grad_v[off] = g * g_bc * mrla_act_grad(v, act);
    if (o_prev != nullptr) {
      sum_lambda += g * static_cast<A>(o_prev[off]);
      grad_o_prev[off] = static_cast<T>(lambda[c] * g);
    }
  }
  sum_gate = mrla_tile_sum<CL>(sum_gate);
  sum_lambda = mrla_tile_sum<CL>(sum_lambda);
  if (mrla_tile_writes<CL>(t)) {
    const int64_t q = mrla_tile_part(t, tiling, 1);
    gate_part[q] = sum_gate;
    lambda_part[q] = sum_lambda;
  }
}

// grad_res (the incoming gradient, with a norm) is added to grad_x: the
// residual x of x + batch_norm(z).
template <typename T, typename A, bool CL>
__global__ void mrla_light_backward_input_cuda_kernel(
    const A* grad_v, const T* x, const A* w9, const T* grad_res, T* grad_x,
    A* weight_part, MRLATiling tiling, int64_t H, int64_t W) {
  const MRLATile t = mrla_tile<CL>(tiling);
  const int64_t b = t.b, c = t.c, C = tiling.C;
  A gw[9];
#pragma unroll
  for (int k = 0; k < 9; ++k) gw[k] = 0;
  for (int64_t i = t.first; t.active && i < t.end; i += t.step) {
    const int64_t y = i / W, x0 = i % W;
    const int64_t off = mrla_offset<CL>(b, c, y, x0, C, H, W);
    const A gv = grad_v[off];
    A gx = 0;
#pragma unroll
    for (int ki = 0; ki < 3; ++ki) {
#pragma unroll
      for (int kj = 0; kj < 3; ++kj) {
        // grad_x gathers the value gradient of the mirrored tap ...
        const int64_t ry = y - ki + 1, rx = x0 - kj + 1;
        if (ry >= 0 && ry < H && rx >= 0 && rx < W) {
          gx += w9[c * 9 + 3 * ki + kj] *
                grad_v[mrla_offset<CL>(b, c, ry, rx, C, H, W)];
        }
        // ... and the weight gradient pairs it with the input tap.
        const int64_t iy = y + ki - 1, ix = x0 + kj - 1;
        if (iy >= 0 && iy < H && ix >= 0 && ix < W) {
          gw[3 * ki + kj] +=
              gv * static_cast<A>(x[mrla_offset<CL>(b, c, iy, ix, C, H, W)]);
        }
      }
    }
    if (grad_res != nullptr) gx += static_cast<A>(grad_res[off]);
    grad_x[off] = static_cast<T>(gx);
  }
  for (int k = 0; k < 9; ++k) {
    const A s = mrla_tile_sum<CL>(gw[k]);
    if (mrla_tile_writes<CL>(t)) {
      weight_part[mrla_tile_part(t, tiling, 9) + k] = s;
    }
  }
}

#endif  // MRLA_LIGHT_CUDA_KERNEL_CUH
