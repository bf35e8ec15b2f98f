// CUDA kernels of the MRLA-light core, each over tiles of the planes
// (MRLATiling). The forward is one pass. The backward takes two: first the
// value gradient (kept in a float buffer) with the gate and lambda sums,
// then grad_x and the weight gradient from that buffer; the tiles' partial
// sums are added in a fixed order, so the sums are deterministic. With a
// train-mode BatchNorm after the core (norm != nullptr: rows a, b, c,
// center of [4, C]) the incoming gradient is that of x + batch_norm(z);
// z is recomputed, never stored.
#ifndef MRLA_LIGHT_CUDA_KERNEL_CUH
#define MRLA_LIGHT_CUDA_KERNEL_CUH

#include "mrla_act.hpp"
#include "mrla_common_cuda.cuh"

// What a thread of a light kernel needs of its channel c of sample b: the
// plane, its value taps, gate and lambda (0 without history).
template <typename A, bool CL>
struct MRLALightChannel {
  MRLAPlane plane;
  const A* w9;
  A gate, lambda;

  __device__ __forceinline__ MRLALightChannel(int64_t b, int64_t c, int64_t C,
                                              const A* w9_all, const A* gates,
                                              const A* lambdas, int64_t G,
                                              int H, int W) {
    plane = mrla_plane<CL>(b, c, C, H, W);
    w9 = w9_all + c * 9;
    gate = gates[b * G + c / (C / G)];
    lambda = lambdas != nullptr ? lambdas[c] : A(0);
  }

  // The light core z at pixel (y, x), off its offset, v its value.
  template <typename T>
  __device__ __forceinline__ A core(A v, const T* o_prev, int64_t off,
                                    int act) const {
    return mrla_light_core(
        v, gate, lambda, o_prev != nullptr ? static_cast<A>(o_prev[off]) : A(0),
        act);
  }
};

template <typename T, typename A, bool CL>
__global__ void mrla_light_forward_cuda_kernel(const T* x, const A* w9,
                                               const A* gate, const A* lambda,
                                               const T* o_prev, const A* scale,
                                               const A* shift, T* out,
                                               MRLATiling tiling, int64_t G,
                                               int act, bool add_input) {
  const MRLATile t = mrla_tile<CL>(tiling);
  const int H = tiling.H, W = tiling.W;
  if (!t.active) return;
  const MRLALightChannel<A, CL> ch(t.b, t.c, tiling.C, w9, gate, lambda, G, H,
                                   W);
  const A sc = scale != nullptr ? scale[t.c] : A(1);
  const A sh = scale != nullptr ? shift[t.c] : A(0);
  for (int i = t.first; i < t.end; i += t.step) {
    const int y = i / W, x0 = i - y * W;
    const int64_t off = ch.plane.base + i * ch.plane.pix;
    A r = ch.core(mrla_dwconv3x3<T, A>(x, ch.w9, ch.plane, off, y, x0, H, W),
                  o_prev, off, act);
    if (scale != nullptr) r = r * sc + sh;
    if (add_input) r += static_cast<A>(x[off]);
    out[off] = static_cast<T>(r);
  }
}

// Per-tile moments of z: without grad {mean, sum (z - mean)^2} of the
// tile's pixels (z recomputed for the centred second pass;
// mrla_combine_moments_cuda_kernel merges the slices), with grad
// {sum grad, sum grad * (z - center)}.
template <typename T, typename A, bool CL>
__global__ void mrla_light_stats_cuda_kernel(const T* x, const A* w9,
                                             const A* gate, const A* lambda,
                                             const T* o_prev, const T* grad,
                                             const A* center, A* part,
                                             MRLATiling tiling, int64_t G,
                                             int act) {
  const MRLATile t = mrla_tile<CL>(tiling);
  const int H = tiling.H, W = tiling.W;
  // Inactive lanes of a channels_last tile take channel 0 and sum nothing.
  const MRLALightChannel<A, CL> ch(t.b, t.active ? t.c : 0, tiling.C, w9, gate,
                                   lambda, G, H, W);
  const A ctr = grad != nullptr && t.active ? center[t.c] : A(0);
  auto z_at = [&](int i, int64_t* off) {
    const int y = i / W, x0 = i - y * W;
    *off = ch.plane.base + i * ch.plane.pix;
    return ch.core(mrla_dwconv3x3<T, A>(x, ch.w9, ch.plane, *off, y, x0, H, W),
                   o_prev, *off, act);
  };
  A s1 = 0, s2 = 0;
  for (int i = t.first; t.active && i < t.end; i += t.step) {
    int64_t off;
    const A z = z_at(i, &off);
    if (grad != nullptr) {
      const A g = static_cast<A>(grad[off]);
      s1 += g;
      s2 += g * (z - ctr);
    } else {
      s1 += z;
    }
  }
  s1 = mrla_tile_sum<CL>(s1);
  if (grad == nullptr) {
    const A mean = s1 / static_cast<A>(t.end - t.begin);
    for (int i = t.first; t.active && i < t.end; i += t.step) {
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
    auto count = [&](int s) {
      const int begin = s * tiling.L;
      return static_cast<A>(
          (begin < tiling.HW - tiling.L ? begin + tiling.L : tiling.HW) -
          begin);
    };
    A mean = 0;
    for (int s = 0; s < tiling.S; ++s) mean += count(s) * p[2 * s];
    mean /= static_cast<A>(tiling.HW);
    A m2 = 0;
    for (int s = 0; s < tiling.S; ++s) {
      const A d = p[2 * s] - mean;
      m2 += p[2 * s + 1] + count(s) * d * d;
    }
    stats[2 * r] = mean;
    stats[2 * r + 1] = m2;
  }
}

// Per-tile partial sums of the gate and lambda gradients; the value
// gradient and grad_o_prev elementwise.
template <typename T, typename A, bool CL>
__global__ void mrla_light_backward_value_cuda_kernel(
    const T* grad_out, const T* x, const A* w9, const A* gate, const A* lambda,
    const T* o_prev, const A* norm, A* grad_v, T* grad_o_prev, A* gate_part,
    A* lambda_part, MRLATiling tiling, int64_t G, int act) {
  const MRLATile t = mrla_tile<CL>(tiling);
  const int H = tiling.H, W = tiling.W;
  const int64_t c = t.active ? t.c : 0, C = tiling.C;
  const MRLALightChannel<A, CL> ch(t.b, c, C, w9, gate, lambda, G, H, W);
  A sum_gate = 0, sum_lambda = 0;
  for (int i = t.first; t.active && i < t.end; i += t.step) {
    const int y = i / W, x0 = i - y * W;
    const int64_t off = ch.plane.base + i * ch.plane.pix;
    const A v = mrla_dwconv3x3<T, A>(x, ch.w9, ch.plane, off, y, x0, H, W);
    A g = static_cast<A>(grad_out[off]);
    if (norm != nullptr) {
      const A z = ch.core(v, o_prev, off, act);
      g = norm[c] * g + norm[C + c] * (z - norm[3 * C + c]) + norm[2 * C + c];
    }
    sum_gate += g * mrla_act(v, act);
    grad_v[off] = g * ch.gate * mrla_act_grad(v, act);
    if (o_prev != nullptr) {
      sum_lambda += g * static_cast<A>(o_prev[off]);
      grad_o_prev[off] = static_cast<T>(ch.lambda * g);
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
__global__ void mrla_light_backward_input_cuda_kernel(const A* grad_v,
                                                      const T* x, const A* w9,
                                                      const T* grad_res,
                                                      T* grad_x, A* weight_part,
                                                      MRLATiling tiling) {
  const MRLATile t = mrla_tile<CL>(tiling);
  const int H = tiling.H, W = tiling.W;
  const MRLAPlane p = mrla_plane<CL>(t.b, t.active ? t.c : 0, tiling.C, H, W);
  const A* wc = w9 + (t.active ? t.c : 0) * 9;
  A gw[9];
#pragma unroll
  for (int k = 0; k < 9; ++k) gw[k] = 0;
  for (int i = t.first; t.active && i < t.end; i += t.step) {
    const int y = i / W, x0 = i - y * W;
    const int64_t off = p.base + i * p.pix;
    const A gv = grad_v[off];
    A gx = 0;
#pragma unroll
    for (int ki = 0; ki < 3; ++ki) {
#pragma unroll
      for (int kj = 0; kj < 3; ++kj) {
        // grad_x gathers the value gradient of the mirrored tap ...
        const int ry = y - ki + 1, rx = x0 - kj + 1;
        if (ry >= 0 && ry < H && rx >= 0 && rx < W) {
          gx += wc[3 * ki + kj] *
                grad_v[off + (1 - ki) * p.row + (1 - kj) * p.pix];
        }
        // ... and the weight gradient pairs it with the input tap.
        const int iy = y + ki - 1, ix = x0 + kj - 1;
        if (iy >= 0 && iy < H && ix >= 0 && ix < W) {
          gw[3 * ki + kj] +=
              gv * static_cast<A>(x[off + (ki - 1) * p.row + (kj - 1) * p.pix]);
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
