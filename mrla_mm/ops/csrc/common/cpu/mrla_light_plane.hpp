// The per-plane kernels of the MRLA-light core on the CPU, for NCHW maps.
//
// A (b, c) plane is copied into a scratch frame with a zero row above and
// below that stays in cache, so the 3x3 taps and every elementwise step
// of a plane run as one flat loop however short its rows (see
// conv_masked). The backward keeps the value gradient of the plane in
// scratch too, so grad_x, the weight gradient and the gate and lambda sums
// are produced while it is hot. Accumulation is in A: float (double for
// double maps). The drivers (pytorch/cpu/mrla_light_cpu.cpp,
// mrla_light_norm_cpu.cpp) run them through mrla_light_plane_variants.hpp.
#ifndef MRLA_LIGHT_PLANE_HPP
#define MRLA_LIGHT_PLANE_HPP

#include <algorithm>
#include <bit>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "cpu/mrla_cpu_target.hpp"
#include "mrla_light_core.hpp"

namespace mrla_cpu {

// Scratch of an h x w plane between a zero row above and below it (row
// stride w, as the plane is stored) and one guard element at each end, so
// that every tap of conv_masked and every shifted read of the weight
// gradient stays inside it. The plane starts at frame_origin(w).
inline int64_t framed_size(int64_t h, int64_t w) { return (h + 2) * w + 2; }
inline int64_t frame_origin(int64_t w) { return w + 1; }

// A pixel's mask of a tap: all bits set where the tap is inside the plane,
// none where it would wrap to a neighbouring row. A value and-ed with it is
// itself or +0, a NaN included (a product with 0 would keep the NaN), and
// without a branch, which would stop the loops vectorising.
template <typename A>
using TapMask = std::conditional_t<sizeof(A) == 4, uint32_t, uint64_t>;

template <typename A>
MRLA_ALWAYS_INLINE A masked(A v, TapMask<A> m) {
  return std::bit_cast<A>(std::bit_cast<TapMask<A>>(v) & m);
}

// An h x w plane's shape and its pixels' masks of the left and the right
// taps. With them a plane is one flat loop of h * w pixels: loops over
// short rows (7 or 14 pixels) would hardly vectorise.
template <typename A>
struct PlaneGeometry {
  int64_t h, w;
  std::vector<TapMask<A>> left, right;

  PlaneGeometry(int64_t h_, int64_t w_)
      : h(h_), w(w_), left(h_ * w_, ~TapMask<A>(0)),
        right(h_ * w_, ~TapMask<A>(0)) {
    for (int64_t y = 0; y < h; ++y) {
      left[y * w] = 0;
      right[y * w + w - 1] = 0;
    }
  }
};

// The interior of a framed scratch plane <- plane.
template <typename T, typename A>
MRLA_ALWAYS_INLINE void fill_framed(A* frame, const T* plane, int64_t n,
                                    int64_t w) {
  A* dst = frame + frame_origin(w);
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) dst[k] = A(plane[k]);
}

// out[y * w + x] = sum_ij k9[3i + j] * in[y + i - 1, x + j - 1], zero
// outside the plane: the 3x3 correlation of a framed plane as one loop.
// The frame rows give the zeros above and below; the masks drop the left
// and right taps that would wrap to a neighbouring row.
template <typename A>
MRLA_ALWAYS_INLINE void conv_masked(A* __restrict__ out,
                                    const A* __restrict__ frame,
                                    const A* k9, const TapMask<A>* left,
                                    const TapMask<A>* right, int64_t n,
                                    int64_t w) {
  const A k0 = k9[0], k1 = k9[1], k2 = k9[2], k3 = k9[3], k4 = k9[4],
          k5 = k9[5], k6 = k9[6], k7 = k9[7], k8 = k9[8];
  const A* r0 = frame + 1;
  const A* r1 = r0 + w;
  const A* r2 = r1 + w;
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) {
    const A l = k0 * r0[k - 1] + k3 * r1[k - 1] + k6 * r2[k - 1];
    const A c = k1 * r0[k] + k4 * r1[k] + k7 * r2[k];
    const A r = k2 * r0[k + 1] + k5 * r1[k + 1] + k8 * r2[k + 1];
    out[k] = c + masked(l, left[k]) + masked(r, right[k]);
  }
}

// One (b, c) plane of the forward or backward pass.
template <typename T, typename A>
struct LightPlane {
  const T* x;
  const T* o_prev;
  const T* grad;
  T* out;
  T* grad_x;
  T* grad_o;
  const A* w9;
  A gate, lambda, scale, shift;
  const PlaneGeometry<A>* geo;
  // A train-mode BatchNorm after the core (backward and statistics):
  // the core's gradient is na * grad + nb * (z - center) + nc.
  A na, nb, nc, center;
};

// The plane of x in the framed scratch and its 3x3 value map in acc.
template <typename T, typename A>
MRLA_ALWAYS_INLINE void plane_value(const LightPlane<T, A>& a, A* frame,
                                    A* acc) {
  const PlaneGeometry<A>& g = *a.geo;
  const int64_t n = g.h * g.w;
  fill_framed(frame, a.x, n, g.w);
  conv_masked(acc, frame, a.w9, g.left.data(), g.right.data(), n, g.w);
}

// Statistics of the core's output z over one plane: without a gradient
// {mean, sum (z - mean)^2}, with one {sum grad, sum grad * (z - center)}.
// Fills frame and acc (see plane_value) first; with a gradient acc keeps
// the value map (for the backward), without one it ends holding z.
template <typename T, typename A, bool HasPrev, bool HasGrad, bool Gelu>
MRLA_ALWAYS_INLINE void plane_stats(const LightPlane<T, A>& a, A* frame,
                                    A* acc, A* out2) {
  constexpr int act = Gelu ? kMRLAGelu : kMRLAIdentity;
  const int64_t n = a.geo->h * a.geo->w;
  const A gate = a.gate, lambda = a.lambda, center = a.center;
  const T* o = a.o_prev;
  plane_value(a, frame, acc);
  A s1 = 0, s2 = 0;
  if (HasGrad) {
    const T* g = a.grad;
#pragma omp simd reduction(+ : s1, s2)
    for (int64_t k = 0; k < n; ++k) {
      const A z = mrla_light_core(acc[k], gate, lambda,
                                  HasPrev ? A(o[k]) : A(0), act);
      s1 += A(g[k]);
      s2 += A(g[k]) * (z - center);
    }
  } else {
#pragma omp simd reduction(+ : s1)
    for (int64_t k = 0; k < n; ++k) {
      acc[k] = mrla_light_core(acc[k], gate, lambda,
                               HasPrev ? A(o[k]) : A(0), act);
      s1 += acc[k];
    }
    // Centred on the plane's own mean: no cancellation in the variance.
    const A mean = s1 / A(n);
#pragma omp simd reduction(+ : s2)
    for (int64_t k = 0; k < n; ++k) s2 += (acc[k] - mean) * (acc[k] - mean);
    s1 = mean;
  }
  out2[0] = s1;
  out2[1] = s2;
}

template <typename T, typename A, bool HasPrev, bool AddInput, bool Gelu>
MRLA_ALWAYS_INLINE void plane_forward(const LightPlane<T, A>& a, A* frame,
                                      A* acc) {
  constexpr int act = Gelu ? kMRLAGelu : kMRLAIdentity;
  const int64_t n = a.geo->h * a.geo->w;
  // Scalars in locals: the stores below could alias the struct.
  const A gate = a.gate, lambda = a.lambda, scale = a.scale,
          shift = a.shift;
  const T* o = a.o_prev;
  T* dst = a.out;
  plane_value(a, frame, acc);
  const A* xin = frame + frame_origin(a.geo->w);
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) {
    A r = mrla_light_core(acc[k], gate, lambda, HasPrev ? A(o[k]) : A(0),
                          act);
    r = r * scale + shift;
    if (AddInput) r += xin[k];
    dst[k] = static_cast<T>(r);
  }
}

// y = x + scale * z + shift of a plane whose x and z are in scratch: frame
// and acc as plane_stats without a gradient leaves them (the arithmetic of
// plane_forward with AddInput).
template <typename T, typename A>
MRLA_ALWAYS_INLINE void plane_norm_output(const LightPlane<T, A>& a,
                                          const A* frame, const A* acc) {
  const int64_t n = a.geo->h * a.geo->w;
  const A scale = a.scale, shift = a.shift;
  const A* xin = frame + frame_origin(a.geo->w);
  T* dst = a.out;
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) {
    A r = acc[k] * scale + shift;
    r += xin[k];
    dst[k] = static_cast<T>(r);
  }
}

// sums: [gate, lambda, weight taps 0..8] of the plane.
// With Norm, grad is the gradient of x + batch_norm(z) (see LightPlane):
// the core's own gradient is formed first, kept in the value-gradient
// plane, and grad itself is added to grad_x (the residual). With filled,
// frame and acc hold the plane's plane_value already; acc is overwritten.
template <typename T, typename A, bool HasPrev, bool Gelu, bool Norm>
MRLA_ALWAYS_INLINE void plane_backward(const LightPlane<T, A>& a, A* frame,
                                       A* acc, A* gvframe, A* sums,
                                       bool filled) {
  const PlaneGeometry<A>& geo = *a.geo;
  const int64_t w = geo.w, n = geo.h * w;
  const TapMask<A>* left = geo.left.data();
  const TapMask<A>* right = geo.right.data();
  const A gate = a.gate, lambda = a.lambda;
  const A na = a.na, nb = a.nb, nc = a.nc, center = a.center;
  const T* g = a.grad;
  const T* o = a.o_prev;
  if (!filled) plane_value(a, frame, acc);
  A* gv = gvframe + frame_origin(w);
  if (Norm) {
#pragma omp simd
    for (int64_t k = 0; k < n; ++k) {
      const A z = mrla_light_core(acc[k], gate, lambda,
                                  HasPrev ? A(o[k]) : A(0),
                                  Gelu ? kMRLAGelu : kMRLAIdentity);
      gv[k] = na * A(g[k]) + nb * (z - center) + nc;
    }
  }
  A sum_gate = 0, sum_lambda = 0;
  if (HasPrev) {
    T* go = a.grad_o;
#pragma omp simd reduction(+ : sum_lambda)
    for (int64_t k = 0; k < n; ++k) {
      const A gi = Norm ? gv[k] : A(g[k]);
      sum_lambda += gi * A(o[k]);
      go[k] = static_cast<T>(lambda * gi);
    }
  }
#pragma omp simd reduction(+ : sum_gate)
  for (int64_t k = 0; k < n; ++k) {
    const A gi = Norm ? gv[k] : A(g[k]);
    if (Gelu) {
      sum_gate += gi * mrla_act(acc[k], kMRLAGelu);
      gv[k] = gi * gate * mrla_act_grad(acc[k], kMRLAGelu);
    } else {
      sum_gate += gi * acc[k];
      gv[k] = gi * gate;
    }
  }
  // grad_x: the value gradient correlated with the flipped kernel.
  const A flipped[9] = {a.w9[8], a.w9[7], a.w9[6], a.w9[5], a.w9[4],
                        a.w9[3], a.w9[2], a.w9[1], a.w9[0]};
  conv_masked(acc, gvframe, flipped, left, right, n, w);
  T* dst = a.grad_x;
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) {
    dst[k] = static_cast<T>(Norm ? acc[k] + A(g[k]) : acc[k]);
  }
  // Weight gradient: the value gradient against the input shifted by each
  // tap (zero rows above and below, masked at the row ends). The nine sums
  // share one sweep: independent accumulators, gv read once.
  const A* up = frame + 1;        // row above: taps 0..2
  const A* mid = up + w;          // same row: taps 3..5
  const A* down = mid + w;        // row below: taps 6..8
  A t0 = 0, t1 = 0, t2 = 0, t3 = 0, t4 = 0, t5 = 0, t6 = 0, t7 = 0, t8 = 0;
#pragma omp simd reduction(+ : t0, t1, t2, t3, t4, t5, t6, t7, t8)
  for (int64_t k = 0; k < n; ++k) {
    const A gk = gv[k];
    const TapMask<A> l = left[k], r = right[k];
    t0 += masked(gk * up[k - 1], l);
    t1 += gk * up[k];
    t2 += masked(gk * up[k + 1], r);
    t3 += masked(gk * mid[k - 1], l);
    t4 += gk * mid[k];
    t5 += masked(gk * mid[k + 1], r);
    t6 += masked(gk * down[k - 1], l);
    t7 += gk * down[k];
    t8 += masked(gk * down[k + 1], r);
  }
  const A taps[9] = {t0, t1, t2, t3, t4, t5, t6, t7, t8};
  std::copy(taps, taps + 9, sums + 2);
  sums[0] = sum_gate;
  sums[1] = sum_lambda;
}

}  // namespace mrla_cpu

#endif  // MRLA_LIGHT_PLANE_HPP
