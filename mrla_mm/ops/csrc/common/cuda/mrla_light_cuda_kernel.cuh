// CUDA kernels of the MRLA-light core, each over tiles of the planes
// (MRLATiling) whose items are runs of kMRLALightRun pixels of a row. The
// forward is one pass. The backward takes two: first the value gradient
// (kept in a float buffer) with the gate and lambda sums, then grad_x and
// the weight gradient from that buffer; the tiles' partial sums are added
// in a fixed order, so the sums are deterministic. With a train-mode
// BatchNorm after the core (norm != nullptr: rows a, b, c, center of
// [4, C]) the incoming gradient is that of x + batch_norm(z); z is
// recomputed, never stored.
#ifndef MRLA_LIGHT_CUDA_KERNEL_CUH
#define MRLA_LIGHT_CUDA_KERNEL_CUH

#include "mrla_light_core.hpp"
#include "mrla_common_cuda.cuh"

// Pixels of a row per thread and step: three row windows of
// kMRLALightRun + 2 inputs hold all 27 taps of the run's outputs, so an
// input is loaded 30 times per 8 outputs instead of 72, with the index
// arithmetic and bounds checks paid per run, and the 8 outputs accumulate
// independently.
constexpr int kMRLALightRun = 8;
constexpr int kMRLALightWindow = kMRLALightRun + 2;

inline MRLATiling mrla_light_tiling(int64_t B, int64_t C, int64_t H, int64_t W,
                                    bool cl) {
  return mrla_tiling(B, C, H, W, cl, kMRLALightRun);
}

// Item k of a plane: the run of n pixels from column x0 of row y, whose
// first pixel lies at offset off of plane p.
struct MRLARun {
  int y, x0, n;
  int64_t off;

  __device__ __forceinline__ MRLARun(const MRLATiling& t, const MRLAPlane& p,
                                     int k) {
    y = k / t.R;
    x0 = (k - y * t.R) * kMRLALightRun;
    n = t.W - x0 < kMRLALightRun ? t.W - x0 : kMRLALightRun;
    off = p.base + static_cast<int64_t>(y * t.W + x0) * p.pix;
  }
};

// row[j] = src at row y + i - 1, column x0 + j - 1 of the run's plane p,
// zero outside the plane (the convolution's padding). The kernels take the
// three rows one at a time, so that a thread holds one row window and its
// run's sums, not all 30 inputs.
template <typename S, typename A>
__device__ __forceinline__ void mrla_row_window(const S* src,
                                                const MRLAPlane& p,
                                                const MRLARun& r,
                                                const MRLATiling& t, int i,
                                                A (&row)[kMRLALightWindow]) {
  const int yy = r.y + i - 1;
  const bool row_in = yy >= 0 && yy < t.H;
  const int64_t first = r.off + (i - 1) * p.row - p.pix;
#pragma unroll
  for (int j = 0; j < kMRLALightWindow; ++j) {
    const int xx = r.x0 + j - 1;
    row[j] = row_in && xx >= 0 && xx < t.W
                 ? static_cast<A>(src[first + j * p.pix])
                 : A(0);
  }
}

// out[q] = the 3x3 convolution of src with the taps w at pixel q of run r;
// center, if given, receives src at the run's own pixels (zero past the
// row's end).
template <typename S, typename A>
__device__ __forceinline__ void mrla_dwconv3x3_run(
    const S* src, const MRLAPlane& p, const MRLARun& r, const MRLATiling& t,
    const A (&w)[9], A (&out)[kMRLALightRun], A* center = nullptr) {
#pragma unroll
  for (int q = 0; q < kMRLALightRun; ++q) out[q] = 0;
#pragma unroll
  for (int i = 0; i < 3; ++i) {
    A row[kMRLALightWindow];
    mrla_row_window(src, p, r, t, i, row);
#pragma unroll
    for (int q = 0; q < kMRLALightRun; ++q) {
#pragma unroll
      for (int j = 0; j < 3; ++j) out[q] += w[3 * i + j] * row[q + j];
      if (i == 1 && center != nullptr) center[q] = row[q + 1];
    }
  }
}

// What a thread of a light kernel needs of its channel c of sample b: the
// plane, its value taps, gate and lambda (0 without history).
template <typename A, bool CL>
struct MRLALightChannel {
  MRLAPlane plane;
  A w[9];
  A gate, lambda;

  __device__ __forceinline__ MRLALightChannel(int64_t b, int64_t c, int64_t C,
                                              const A* w9_all, const A* gates,
                                              const A* lambdas, int64_t G,
                                              int H, int W) {
    plane = mrla_plane<CL>(b, c, C, H, W);
#pragma unroll
    for (int k = 0; k < 9; ++k) w[k] = w9_all[c * 9 + k];
    gate = gates[b * G + c / (C / G)];
    lambda = lambdas != nullptr ? lambdas[c] : A(0);
  }

  // Calls f(v, off) for each pixel of item k's run: its value v (before
  // the activation) and its offset.
  template <typename T, typename F>
  __device__ __forceinline__ void each_value(const T* x, const MRLATiling& t,
                                             int k, F&& f) const {
    const MRLARun r(t, plane, k);
    A v[kMRLALightRun];
    mrla_dwconv3x3_run(x, plane, r, t, w, v);
#pragma unroll
    for (int q = 0; q < kMRLALightRun; ++q) {
      if (q >= r.n) break;
      f(v[q], r.off + q * plane.pix);
    }
  }

  // The light core z at the pixel at offset off, v its value.
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
  if (!t.active) return;
  const MRLALightChannel<A, CL> ch(t.b, t.c, tiling.C, w9, gate, lambda, G,
                                   tiling.H, tiling.W);
  const A sc = scale != nullptr ? scale[t.c] : A(1);
  const A sh = scale != nullptr ? shift[t.c] : A(0);
  for (int k = t.first; k < t.end; k += t.step) {
    ch.each_value(x, tiling, k, [&](A v, int64_t off) {
      A z = ch.core(v, o_prev, off, act);
      if (scale != nullptr) z = z * sc + sh;
      if (add_input) z += static_cast<A>(x[off]);
      out[off] = static_cast<T>(z);
    });
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
  // Inactive lanes of a channels_last tile take channel 0 and sum nothing.
  const MRLALightChannel<A, CL> ch(t.b, t.active ? t.c : 0, tiling.C, w9, gate,
                                   lambda, G, tiling.H, tiling.W);
  const A ctr = grad != nullptr && t.active ? center[t.c] : A(0);
  // Calls f(z, off) for each pixel of item k.
  auto each_z = [&](int k, auto&& f) {
    ch.each_value(x, tiling, k, [&](A v, int64_t off) {
      f(ch.core(v, o_prev, off, act), off);
    });
  };
  A s1 = 0, s2 = 0;
  for (int k = t.first; t.active && k < t.end; k += t.step) {
    each_z(k, [&](A z, int64_t off) {
      if (grad != nullptr) {
        const A g = static_cast<A>(grad[off]);
        s1 += g;
        s2 += g * (z - ctr);
      } else {
        s1 += z;
      }
    });
  }
  s1 = mrla_tile_sum<CL>(s1);
  if (grad == nullptr) {
    const A mean = s1 / static_cast<A>(mrla_slice_pixels(tiling, t.slice));
    for (int k = t.first; t.active && k < t.end; k += t.step) {
      each_z(k, [&](A z, int64_t) { s2 += (z - mean) * (z - mean); });
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
      return static_cast<A>(mrla_slice_pixels(tiling, s));
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
  const int64_t c = t.active ? t.c : 0, C = tiling.C;
  const MRLALightChannel<A, CL> ch(t.b, c, C, w9, gate, lambda, G, tiling.H,
                                   tiling.W);
  A sum_gate = 0, sum_lambda = 0;
  for (int k = t.first; t.active && k < t.end; k += t.step) {
    ch.each_value(x, tiling, k, [&](A v, int64_t off) {
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
    });
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
  const int64_t c = t.active ? t.c : 0;
  const MRLAPlane p = mrla_plane<CL>(t.b, c, tiling.C, tiling.H, tiling.W);
  // grad_x is the convolution of the value gradient with the flipped taps.
  A flipped[9], gw[9];
#pragma unroll
  for (int k = 0; k < 9; ++k) {
    flipped[k] = w9[c * 9 + 8 - k];
    gw[k] = 0;
  }
  for (int k = t.first; t.active && k < t.end; k += t.step) {
    const MRLARun r(tiling, p, k);
    // gv: the value gradient at the run's own pixels, which the weight
    // gradient pairs with each input tap.
    A gx[kMRLALightRun], gv[kMRLALightRun];
    mrla_dwconv3x3_run(grad_v, p, r, tiling, flipped, gx, gv);
#pragma unroll
    for (int i = 0; i < 3; ++i) {
      A row[kMRLALightWindow];
      mrla_row_window(x, p, r, tiling, i, row);
#pragma unroll
      for (int j = 0; j < 3; ++j) {
#pragma unroll
        for (int q = 0; q < kMRLALightRun; ++q) {
          gw[3 * i + j] += gv[q] * row[q + j];
        }
      }
    }
#pragma unroll
    for (int q = 0; q < kMRLALightRun; ++q) {
      if (q >= r.n) break;
      const int64_t off = r.off + q * p.pix;
      A g = gx[q];
      if (grad_res != nullptr) g += static_cast<A>(grad_res[off]);
      grad_x[off] = static_cast<T>(g);
    }
  }
  for (int k = 0; k < 9; ++k) {
    const A s = mrla_tile_sum<CL>(gw[k]);
    if (mrla_tile_writes<CL>(t)) {
      weight_part[mrla_tile_part(t, tiling, 9) + k] = s;
    }
  }
}

#endif  // MRLA_LIGHT_CUDA_KERNEL_CUH
