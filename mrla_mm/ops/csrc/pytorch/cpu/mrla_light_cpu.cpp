// MRLA-light core on the CPU: one pass over the feature map per direction.
//
// Contiguous (NCHW) maps are processed one (b, c) plane at a time: the
// plane is copied into a scratch frame with a zero row above and below that
// stays in cache, so the 3x3 taps and every elementwise step of a plane run
// as one flat loop however short its rows (see conv_masked), compiled for
// AVX2 + FMA when the CPU has them. channels_last
// maps are processed in tiles of one sample and a cache line of channels,
// vectorised along C. The backward keeps the value gradient of one plane /
// tile in scratch too, so grad_x, the weight gradient and the gate and
// lambda sums are produced while it is hot. Accumulation is in float
// (double for double maps).
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "mrla_act.hpp"
#include "mrla_cpu_target.hpp"
#include "mrla_norm.hpp"
#include "pytorch_cpp_helper.hpp"
#include "pytorch_device_registry.hpp"

namespace {

struct Shape {
  int64_t b, c, h, w, heads;
};

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

template <typename T, typename A>
using PlaneForwardFn = void (*)(const LightPlane<T, A>&, A*, A*);
template <typename T, typename A>
using PlaneBackwardFn = void (*)(const LightPlane<T, A>&, A*, A*, A*, A*,
                                 bool);
template <typename T, typename A>
using PlaneStatsFn = void (*)(const LightPlane<T, A>&, A*, A*, A*);

template <typename T, typename A, bool P, bool I, bool G>
void plane_forward_default(const LightPlane<T, A>& a, A* frame, A* acc) {
  plane_forward<T, A, P, I, G>(a, frame, acc);
}
template <typename T, typename A, bool P, bool I, bool G>
MRLA_TARGET_AVX2 void plane_forward_avx2(const LightPlane<T, A>& a, A* frame,
                                         A* acc) {
  plane_forward<T, A, P, I, G>(a, frame, acc);
}
template <typename T, typename A, bool P, bool G, bool N>
void plane_backward_default(const LightPlane<T, A>& a, A* frame, A* acc,
                            A* gvframe, A* sums, bool filled) {
  plane_backward<T, A, P, G, N>(a, frame, acc, gvframe, sums, filled);
}
template <typename T, typename A, bool P, bool G, bool N>
MRLA_TARGET_AVX2 void plane_backward_avx2(const LightPlane<T, A>& a, A* frame,
                                          A* acc, A* gvframe, A* sums,
                                          bool filled) {
  plane_backward<T, A, P, G, N>(a, frame, acc, gvframe, sums, filled);
}
template <typename T, typename A, bool P, bool R, bool G>
void plane_stats_default(const LightPlane<T, A>& a, A* frame, A* acc,
                         A* out2) {
  plane_stats<T, A, P, R, G>(a, frame, acc, out2);
}
template <typename T, typename A, bool P, bool R, bool G>
MRLA_TARGET_AVX2 void plane_stats_avx2(const LightPlane<T, A>& a, A* frame,
                                       A* acc, A* out2) {
  plane_stats<T, A, P, R, G>(a, frame, acc, out2);
}

template <typename T, typename A>
void plane_norm_output_default(const LightPlane<T, A>& a, const A* frame,
                               const A* acc) {
  plane_norm_output<T, A>(a, frame, acc);
}
template <typename T, typename A>
MRLA_TARGET_AVX2 void plane_norm_output_avx2(const LightPlane<T, A>& a,
                                             const A* frame, const A* acc) {
  plane_norm_output<T, A>(a, frame, acc);
}

// Calls f with std::true_type or std::false_type: a runtime flag as a
// template argument.
template <typename F>
void with_flag(bool flag, F&& f) {
  if (flag) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

// with_flag for three flags at once.
template <typename F>
void with_flags(bool a, bool b, bool c, F&& f) {
  with_flag(a, [&](auto x) {
    with_flag(b, [&](auto y) { with_flag(c, [&](auto z) { f(x, y, z); }); });
  });
}

template <typename T, typename A>
PlaneForwardFn<T, A> pick_plane_forward(bool has_prev, bool add_input,
                                        bool gelu) {
  PlaneForwardFn<T, A> fn = nullptr;
  const bool avx2 = mrla_cpu_has_avx2();
  with_flags(has_prev, add_input, gelu, [&](auto p, auto i, auto g) {
    constexpr bool P = decltype(p)::value, I = decltype(i)::value,
                   G = decltype(g)::value;
    fn = avx2 ? &plane_forward_avx2<T, A, P, I, G>
              : &plane_forward_default<T, A, P, I, G>;
  });
  return fn;
}

template <typename T, typename A>
PlaneBackwardFn<T, A> pick_plane_backward(bool has_prev, bool gelu,
                                          bool norm) {
  PlaneBackwardFn<T, A> fn = nullptr;
  const bool avx2 = mrla_cpu_has_avx2();
  with_flags(has_prev, gelu, norm, [&](auto p, auto g, auto n) {
    constexpr bool P = decltype(p)::value, G = decltype(g)::value,
                   N = decltype(n)::value;
    fn = avx2 ? &plane_backward_avx2<T, A, P, G, N>
              : &plane_backward_default<T, A, P, G, N>;
  });
  return fn;
}

template <typename T, typename A>
PlaneStatsFn<T, A> pick_plane_stats(bool has_prev, bool has_grad,
                                    bool gelu) {
  PlaneStatsFn<T, A> fn = nullptr;
  const bool avx2 = mrla_cpu_has_avx2();
  with_flags(has_prev, has_grad, gelu, [&](auto p, auto r, auto g) {
    constexpr bool P = decltype(p)::value, R = decltype(r)::value,
                   G = decltype(g)::value;
    fn = avx2 ? &plane_stats_avx2<T, A, P, R, G>
              : &plane_stats_default<T, A, P, R, G>;
  });
  return fn;
}


// Channels of one channels_last tile: one 64-byte cache line.
template <typename T>
constexpr int64_t tile_channels() {
  return std::max<int64_t>(1, 64 / static_cast<int64_t>(sizeof(T)));
}

// Per-(b, c) copies of the gate, so the inner loops need no division.
template <typename A>
std::vector<A> gate_per_channel(const A* gate, const Shape& s) {
  const int64_t d = s.c / s.heads;
  std::vector<A> g(s.b * s.c);
  for (int64_t i = 0; i < s.b * s.c; ++i) {
    g[i] = gate[(i / s.c) * s.heads + (i % s.c) / d];
  }
  return g;
}

// [C, 9] -> [9, C], so channels_last taps read the weights contiguously.
template <typename A>
std::vector<A> taps_major(const A* w9, int64_t c) {
  std::vector<A> t(9 * c);
  for (int64_t ch = 0; ch < c; ++ch) {
    for (int64_t k = 0; k < 9; ++k) t[k * c + ch] = w9[ch * 9 + k];
  }
  return t;
}

template <typename T>
void light_forward(const Tensor& x, const Tensor& weight, const Tensor& gate,
                   const Tensor& lambda, const Tensor& o_prev,
                   const Tensor& scale, const Tensor& shift, Tensor& out,
                   int act, bool add_input, bool cl) {
  using A = at::opmath_type<T>;
  const Shape s{x.size(0), x.size(1), x.size(2), x.size(3), gate.size(1)};
  const T* xp = x.const_data_ptr<T>();
  // Without o_prev (an empty tensor) the op is the value map alone.
  const bool has_prev = o_prev.numel() > 0;
  const T* op = has_prev ? o_prev.const_data_ptr<T>() : nullptr;
  T* yp = out.mutable_data_ptr<T>();
  const A* w9 = weight.const_data_ptr<A>();
  const A* lam = has_prev ? lambda.const_data_ptr<A>() : nullptr;
  const bool affine = scale.numel() > 0;
  const A* sc = affine ? scale.const_data_ptr<A>() : nullptr;
  const A* sh = affine ? shift.const_data_ptr<A>() : nullptr;
  const std::vector<A> gc = gate_per_channel(gate.const_data_ptr<A>(), s);
  const int64_t hw = s.h * s.w;

  auto epilogue = [&](A v, int64_t bc, int64_t ch, int64_t off) {
    A r = has_prev ? mrla_light_core(v, gc[bc], lam[ch], A(op[off]), act)
                   : mrla_light_core(v, gc[bc], A(0), A(0), act);
    if (affine) r = r * sc[ch] + sh[ch];
    if (add_input) r += A(xp[off]);
    return static_cast<T>(r);
  };

  if (!cl) {
    const auto fn = pick_plane_forward<T, A>(has_prev, add_input,
                                             act == kMRLAGelu);
    const int64_t grain = std::max<int64_t>(1, 16384 / hw);
    const PlaneGeometry<A> geo(s.h, s.w);
    at::parallel_for(0, s.b * s.c, grain, [&](int64_t begin, int64_t end) {
      std::vector<A> frame(framed_size(s.h, s.w), A(0));
      std::vector<A> acc(hw);
      for (int64_t p = begin; p < end; ++p) {
        const int64_t ch = p % s.c;
        LightPlane<T, A> a{xp + p * hw,
                           has_prev ? op + p * hw : nullptr,
                           nullptr,
                           yp + p * hw,
                           nullptr,
                           nullptr,
                           w9 + ch * 9,
                           gc[p],
                           has_prev ? lam[ch] : A(0),
                           affine ? sc[ch] : A(1),
                           affine ? sh[ch] : A(0),
                           &geo};
        fn(a, frame.data(), acc.data());
      }
    });
    return;
  }
  constexpr int64_t kTile = tile_channels<T>();
  const int64_t tiles = (s.c + kTile - 1) / kTile;
  const std::vector<A> wt = taps_major(w9, s.c);
  // Full tiles get a compile-time width, so the channel loops vectorise.
  auto run_tile = [&](auto width, int64_t b, int64_t c0) {
    const int64_t cc = width;
    A acc[kTile];
    {
      const int64_t base = b * hw * s.c + c0;
      for (int64_t y = 0; y < s.h; ++y) {
        for (int64_t x0 = 0; x0 < s.w; ++x0) {
          std::fill(acc, acc + kTile, A(0));
          for (int64_t i = 0; i < 3; ++i) {
            const int64_t yy = y + i - 1;
            if (yy < 0 || yy >= s.h) continue;
            for (int64_t j = 0; j < 3; ++j) {
              const int64_t xx = x0 + j - 1;
              if (xx < 0 || xx >= s.w) continue;
              const T* src = xp + base + (yy * s.w + xx) * s.c;
              const A* wk = wt.data() + (3 * i + j) * s.c + c0;
              for (int64_t c = 0; c < cc; ++c) acc[c] += wk[c] * A(src[c]);
            }
          }
          const int64_t off = base + (y * s.w + x0) * s.c;
          for (int64_t c = 0; c < cc; ++c) {
            yp[off + c] = epilogue(acc[c], b * s.c + c0 + c, c0 + c, off + c);
          }
        }
      }
    }
  };
  at::parallel_for(0, s.b * tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / tiles, c0 = (t % tiles) * kTile;
      if (c0 + kTile <= s.c) {
        run_tile(std::integral_constant<int64_t, kTile>(), b, c0);
      } else {
        run_tile(s.c - c0, b, c0);
      }
    }
  });
}

// The operands of a backward call and their (b, c) planes.
template <typename T, typename A>
struct BackwardOperands {
  Shape s;
  const T* grad;
  const T* x;
  const T* o_prev;  // null without a history term
  T* grad_x;
  T* grad_o;
  A* gw_part;
  A* gg_part;
  A* gl_part;
  const A* w9;
  const A* lambda;
  std::vector<A> gate;  // per (b, c)
  PlaneGeometry<A> geo;

  BackwardOperands(const Tensor& grad_out, const Tensor& x_,
                   const Tensor& weight, const Tensor& gate_,
                   const Tensor& lambda_, const Tensor& o_prev_,
                   Tensor& grad_x_, Tensor& grad_o_prev, Tensor& gw,
                   Tensor& gg, Tensor& gl)
      : s{x_.size(0), x_.size(1), x_.size(2), x_.size(3), gate_.size(1)},
        grad(grad_out.const_data_ptr<T>()),
        x(x_.const_data_ptr<T>()),
        o_prev(o_prev_.numel() ? o_prev_.const_data_ptr<T>() : nullptr),
        grad_x(grad_x_.mutable_data_ptr<T>()),
        grad_o(o_prev ? grad_o_prev.mutable_data_ptr<T>() : nullptr),
        gw_part(gw.mutable_data_ptr<A>()),
        gg_part(gg.mutable_data_ptr<A>()),
        gl_part(gl.mutable_data_ptr<A>()),
        w9(weight.const_data_ptr<A>()),
        lambda(o_prev ? lambda_.const_data_ptr<A>() : nullptr),
        gate(gate_per_channel(gate_.const_data_ptr<A>(), s)),
        geo(s.h, s.w) {}

  // Plane p = b * C + c of a contiguous map, with the coefficients of a
  // train-mode norm after the core (see LightPlane; zeros without one).
  LightPlane<T, A> plane(int64_t p, A na, A nb, A nc, A center) const {
    const int64_t hw = s.h * s.w, ch = p % s.c;
    return {x + p * hw,
            o_prev ? o_prev + p * hw : nullptr,
            grad + p * hw,
            nullptr,
            grad_x + p * hw,
            o_prev ? grad_o + p * hw : nullptr,
            w9 + ch * 9,
            gate[p],
            o_prev ? lambda[ch] : A(0),
            A(1),
            A(0),
            &geo,
            na,
            nb,
            nc,
            center};
  }

  // Plane p's sums from plane_backward: gate, lambda, nine weight taps.
  void store(int64_t p, const A* sums) const {
    gg_part[p] = sums[0];
    gl_part[p] = sums[1];
    std::copy(sums + 2, sums + 11, gw_part + p * 9);
  }
};

template <typename T>
void light_backward(const Tensor& grad_out, const Tensor& x,
                    const Tensor& weight, const Tensor& gate,
                    const Tensor& lambda, const Tensor& o_prev,
                    const Tensor& norm, Tensor& grad_x, Tensor& grad_o_prev,
                    Tensor& gw_part, Tensor& gg_part, Tensor& gl_part,
                    int act, bool cl) {
  using A = at::opmath_type<T>;
  const BackwardOperands<T, A> ops(grad_out, x, weight, gate, lambda, o_prev,
                                   grad_x, grad_o_prev, gw_part, gg_part,
                                   gl_part);
  const Shape& s = ops.s;
  const T *gp = ops.grad, *xp = ops.x, *op = ops.o_prev;
  T *gxp = ops.grad_x, *gop = ops.grad_o;
  A *gwp = ops.gw_part, *ggp = ops.gg_part, *glp = ops.gl_part;
  const A *w9 = ops.w9, *lam = ops.lambda;
  const std::vector<A>& gc = ops.gate;
  const bool has_prev = op != nullptr;
  const int64_t hw = s.h * s.w;
  // Rows a, b, c, center of the norm's gradient coefficients, see
  // LightPlane.
  const bool has_norm = norm.numel() > 0;
  const A* nrm = has_norm ? norm.const_data_ptr<A>() : nullptr;
  TORCH_CHECK(!(has_norm && cl), "mrla_light_backward: a train-mode norm is "
              "not implemented for channels_last maps on the CPU; pass a "
              "contiguous map");

  if (!cl) {
    const auto fn =
        pick_plane_backward<T, A>(has_prev, act == kMRLAGelu, has_norm);
    const int64_t grain = std::max<int64_t>(1, 16384 / hw);
    at::parallel_for(0, s.b * s.c, grain, [&](int64_t begin, int64_t end) {
      std::vector<A> frame(framed_size(s.h, s.w), A(0));
      std::vector<A> gvframe(framed_size(s.h, s.w), A(0));
      std::vector<A> acc(hw);
      A sums[11];
      for (int64_t p = begin; p < end; ++p) {
        const int64_t ch = p % s.c;
        const LightPlane<T, A> a =
            has_norm ? ops.plane(p, nrm[ch], nrm[s.c + ch],
                                 nrm[2 * s.c + ch], nrm[3 * s.c + ch])
                     : ops.plane(p, A(0), A(0), A(0), A(0));
        fn(a, frame.data(), acc.data(), gvframe.data(), sums, false);
        ops.store(p, sums);
      }
    });
    return;
  }
  constexpr int64_t kTile = tile_channels<T>();
  const int64_t tiles = (s.c + kTile - 1) / kTile;
  const std::vector<A> wt = taps_major(w9, s.c);
  auto run_tile = [&](auto width, int64_t b, int64_t c0, A* gv_buf) {
    const int64_t cc = width;
    A acc[kTile], sum_gate[kTile], sum_lambda[kTile], gw[9 * kTile];
    {
      const int64_t base = b * hw * s.c + c0;
      std::fill(sum_gate, sum_gate + kTile, A(0));
      std::fill(sum_lambda, sum_lambda + kTile, A(0));
      std::fill(gw, gw + 9 * kTile, A(0));
      for (int64_t y = 0; y < s.h; ++y) {
        for (int64_t x0 = 0; x0 < s.w; ++x0) {
          std::fill(acc, acc + kTile, A(0));
          for (int64_t i = 0; i < 3; ++i) {
            const int64_t yy = y + i - 1;
            if (yy < 0 || yy >= s.h) continue;
            for (int64_t j = 0; j < 3; ++j) {
              const int64_t xx = x0 + j - 1;
              if (xx < 0 || xx >= s.w) continue;
              const T* src = xp + base + (yy * s.w + xx) * s.c;
              const A* wk = wt.data() + (3 * i + j) * s.c + c0;
              for (int64_t c = 0; c < cc; ++c) acc[c] += wk[c] * A(src[c]);
            }
          }
          const int64_t pix = y * s.w + x0;
          const int64_t off = base + pix * s.c;
          A* gvp = gv_buf + pix * kTile;
          for (int64_t c = 0; c < cc; ++c) {
            const A g = A(gp[off + c]), v = acc[c];
            sum_gate[c] += g * mrla_act(v, act);
            gvp[c] = g * gc[b * s.c + c0 + c] * mrla_act_grad(v, act);
            if (has_prev) {
              sum_lambda[c] += g * A(op[off + c]);
              gop[off + c] = static_cast<T>(lam[c0 + c] * g);
            }
          }
        }
      }
      for (int64_t y = 0; y < s.h; ++y) {
        for (int64_t x0 = 0; x0 < s.w; ++x0) {
          const int64_t pix = y * s.w + x0;
          const A* gvp = gv_buf + pix * kTile;
          std::fill(acc, acc + kTile, A(0));
          for (int64_t i = 0; i < 3; ++i) {
            for (int64_t j = 0; j < 3; ++j) {
              const A* wk = wt.data() + (3 * i + j) * s.c + c0;
              // grad_x gathers the value gradient of the mirrored tap ...
              const int64_t ry = y - i + 1, rx = x0 - j + 1;
              if (ry >= 0 && ry < s.h && rx >= 0 && rx < s.w) {
                const A* src = gv_buf + (ry * s.w + rx) * kTile;
                for (int64_t c = 0; c < cc; ++c) acc[c] += wk[c] * src[c];
              }
              // ... and the weight gradient pairs it with the input tap.
              const int64_t iy = y + i - 1, ix = x0 + j - 1;
              if (iy >= 0 && iy < s.h && ix >= 0 && ix < s.w) {
                const T* in = xp + base + (iy * s.w + ix) * s.c;
                A* g = gw + (3 * i + j) * kTile;
                for (int64_t c = 0; c < cc; ++c) g[c] += gvp[c] * A(in[c]);
              }
            }
          }
          T* dst = gxp + base + pix * s.c;
          for (int64_t c = 0; c < cc; ++c) dst[c] = static_cast<T>(acc[c]);
        }
      }
      for (int64_t c = 0; c < cc; ++c) {
        const int64_t p = b * s.c + c0 + c;
        ggp[p] = sum_gate[c];
        glp[p] = sum_lambda[c];
        for (int64_t k = 0; k < 9; ++k) gwp[p * 9 + k] = gw[k * kTile + c];
      }
    }
  };
  at::parallel_for(0, s.b * tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<A> gv(hw * kTile);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / tiles, c0 = (t % tiles) * kTile;
      if (c0 + kTile <= s.c) {
        run_tile(std::integral_constant<int64_t, kTile>(), b, c0, gv.data());
      } else {
        run_tile(s.c - c0, b, c0, gv.data());
      }
    }
  });
}

template <typename T>
void light_stats(const Tensor& x, const Tensor& weight, const Tensor& gate,
                 const Tensor& lambda, const Tensor& o_prev,
                 const Tensor& grad, const Tensor& center, Tensor& stats,
                 int act) {
  using A = at::opmath_type<T>;
  TORCH_CHECK(x.is_contiguous(), "mrla_light_stats: channels_last maps are "
              "not implemented on the CPU; pass a contiguous map");
  const Shape s{x.size(0), x.size(1), x.size(2), x.size(3), gate.size(1)};
  const bool has_prev = o_prev.numel() > 0, has_grad = grad.numel() > 0;
  const T* xp = x.const_data_ptr<T>();
  const T* op = has_prev ? o_prev.const_data_ptr<T>() : nullptr;
  const T* gp = has_grad ? grad.const_data_ptr<T>() : nullptr;
  const A* w9 = weight.const_data_ptr<A>();
  const A* lam = has_prev ? lambda.const_data_ptr<A>() : nullptr;
  const A* cen = has_grad ? center.const_data_ptr<A>() : nullptr;
  A* out = stats.mutable_data_ptr<A>();
  const std::vector<A> gc = gate_per_channel(gate.const_data_ptr<A>(), s);
  const int64_t hw = s.h * s.w;
  const auto fn =
      pick_plane_stats<T, A>(has_prev, has_grad, act == kMRLAGelu);
  const int64_t grain = std::max<int64_t>(1, 16384 / hw);
  const PlaneGeometry<A> geo(s.h, s.w);
  at::parallel_for(0, s.b * s.c, grain, [&](int64_t begin, int64_t end) {
    std::vector<A> frame(framed_size(s.h, s.w), A(0));
    std::vector<A> acc(hw);
    for (int64_t p = begin; p < end; ++p) {
      const int64_t ch = p % s.c;
      LightPlane<T, A> a{xp + p * hw,
                         has_prev ? op + p * hw : nullptr,
                         has_grad ? gp + p * hw : nullptr,
                         nullptr,
                         nullptr,
                         nullptr,
                         w9 + ch * 9,
                         gc[p],
                         has_prev ? lam[ch] : A(0),
                         A(1),
                         A(0),
                         &geo,
                         A(0),
                         A(0),
                         A(0),
                         has_grad ? cen[ch] : A(0)};
      fn(a, frame.data(), acc.data(), out + 2 * p);
    }
  });
}

// Channels per block of the norm kernels: about 4096 pixels of a sample,
// and blocks for every thread.
inline int64_t channel_block(const Shape& s) {
  return std::max<int64_t>(
      1, std::min<int64_t>(4096 / (s.h * s.w),
                           s.c / (4 * int64_t(at::get_num_threads()))));
}

// y = x + batch_norm(z) with the batch's statistics on contiguous maps, a
// block of neighbouring channels at a time: the moments of the block's
// planes, each plane's framed x and z kept in scratch, then the channels'
// statistics and affine map, then y from the scratch. Each map is read
// once and z computed once (a statistics pass then an output pass read
// both maps twice and convolve twice).
template <typename T>
void light_norm_forward(const Tensor& x, const Tensor& weight,
                        const Tensor& gate, const Tensor& lambda,
                        const Tensor& o_prev, const Tensor& gamma,
                        const Tensor& beta, double eps, Tensor& out,
                        Tensor& mean, Tensor& invstd, Tensor& var, int act) {
  using A = at::opmath_type<T>;
  TORCH_CHECK(x.is_contiguous(), "mrla_light_norm_forward: channels_last "
              "maps are not implemented on the CPU; pass a contiguous map");
  const Shape s{x.size(0), x.size(1), x.size(2), x.size(3), gate.size(1)};
  const bool has_prev = o_prev.numel() > 0;
  const T* xp = x.const_data_ptr<T>();
  const T* op = has_prev ? o_prev.const_data_ptr<T>() : nullptr;
  T* yp = out.mutable_data_ptr<T>();
  const A* w9 = weight.const_data_ptr<A>();
  const A* lam = has_prev ? lambda.const_data_ptr<A>() : nullptr;
  const A* gam = gamma.const_data_ptr<A>();
  const A* bet = beta.const_data_ptr<A>();
  A* mean_out = mean.mutable_data_ptr<A>();
  A* invstd_out = invstd.mutable_data_ptr<A>();
  double* var_out = var.mutable_data_ptr<double>();
  const std::vector<A> gc = gate_per_channel(gate.const_data_ptr<A>(), s);
  const auto stats_fn =
      pick_plane_stats<T, A>(has_prev, false, act == kMRLAGelu);
  const auto output_fn = mrla_cpu_has_avx2()
                             ? &plane_norm_output_avx2<T, A>
                             : &plane_norm_output_default<T, A>;
  const int64_t hw = s.h * s.w, frame_n = framed_size(s.h, s.w);
  const PlaneGeometry<A> geo(s.h, s.w);
  const int64_t block = channel_block(s);
  const int64_t blocks = (s.c + block - 1) / block;
  auto plane = [&](int64_t p, A scale, A shift) -> LightPlane<T, A> {
    const int64_t ch = p % s.c;
    return {xp + p * hw, has_prev ? op + p * hw : nullptr, nullptr,
            yp + p * hw, nullptr, nullptr, w9 + ch * 9, gc[p],
            has_prev ? lam[ch] : A(0), scale, shift, &geo};
  };
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<A> frames(s.b * block * frame_n, A(0));
    std::vector<A> values(s.b * block * hw), moments(s.b * block * 2);
    std::vector<A> scale(block), shift(block);
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t c0 = blk * block, cn = std::min(block, s.c - c0);
      for (int64_t b = 0; b < s.b; ++b) {
        for (int64_t k = 0; k < cn; ++k) {
          const int64_t slot = b * block + k;
          stats_fn(plane(b * s.c + c0 + k, A(1), A(0)),
                   frames.data() + slot * frame_n, values.data() + slot * hw,
                   moments.data() + 2 * slot);
        }
      }
      for (int64_t k = 0; k < cn; ++k) {
        const int64_t ch = c0 + k;
        auto sum = [&](auto f) {
          double t = 0;
          for (int64_t b = 0; b < s.b; ++b) {
            const A* m = moments.data() + 2 * (b * block + k);
            t += f(double(m[0]), double(m[1]));
          }
          return t;
        };
        double mu = 0, sigma2 = 0;
        mrla_norm_moments(sum, double(s.b), double(hw), mu, sigma2);
        const A m = A(mu), inv = A(mrla_norm_invstd(sigma2, eps));
        mrla_norm_affine(gam[ch], bet[ch], m, inv, scale[k], shift[k]);
        mean_out[ch] = m;
        invstd_out[ch] = inv;
        var_out[ch] = sigma2;
      }
      for (int64_t b = 0; b < s.b; ++b) {
        for (int64_t k = 0; k < cn; ++k) {
          const int64_t slot = b * block + k;
          output_fn(plane(b * s.c + c0 + k, scale[k], shift[k]),
                    frames.data() + slot * frame_n,
                    values.data() + slot * hw);
        }
      }
    }
  });
}

// The backward of x + batch_norm(z) on contiguous maps, a block of
// neighbouring channels at a time: the gradient statistics of the block's
// planes, then their gradients while the planes of x and their value maps
// are still in scratch (one 3x3 convolution per plane instead of two, and
// the maps' second reads from the cache). Blocks of several small planes
// keep the reads of each sample one run of memory.
template <typename T>
void light_norm_backward(const Tensor& grad_out, const Tensor& x,
                         const Tensor& weight, const Tensor& gate,
                         const Tensor& lambda, const Tensor& o_prev,
                         const Tensor& gamma, const Tensor& mean,
                         const Tensor& invstd, bool batch_stats,
                         Tensor& grad_x, Tensor& grad_o_prev,
                         Tensor& gw_part, Tensor& gg_part, Tensor& gl_part,
                         Tensor& sums, int act) {
  using A = at::opmath_type<T>;
  TORCH_CHECK(x.is_contiguous(), "mrla_light_norm_backward: channels_last "
              "maps are not implemented on the CPU; pass a contiguous map");
  const BackwardOperands<T, A> ops(grad_out, x, weight, gate, lambda, o_prev,
                                   grad_x, grad_o_prev, gw_part, gg_part,
                                   gl_part);
  const Shape& s = ops.s;
  const bool has_prev = ops.o_prev != nullptr;
  A* sp = sums.mutable_data_ptr<A>();
  const A* gam = gamma.const_data_ptr<A>();
  const A* cen = mean.const_data_ptr<A>();
  const A* inv = invstd.const_data_ptr<A>();
  const bool gelu = act == kMRLAGelu;
  const auto stats_fn = pick_plane_stats<T, A>(has_prev, true, gelu);
  const auto backward_fn = pick_plane_backward<T, A>(has_prev, gelu, true);
  const int64_t hw = s.h * s.w, frame_n = framed_size(s.h, s.w);
  const A count = A(s.b * hw);
  const int64_t block = channel_block(s);
  const int64_t blocks = (s.c + block - 1) / block;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    // Each plane of the block keeps its framed input and value map.
    std::vector<A> frames(s.b * block * frame_n, A(0));
    std::vector<A> values(s.b * block * hw), gvframe(frame_n, A(0));
    std::vector<A> sum_g(block), sum_gz(block);
    A moments[2], part[11];
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t c0 = blk * block, cn = std::min(block, s.c - c0);
      std::fill(sum_g.begin(), sum_g.end(), A(0));
      std::fill(sum_gz.begin(), sum_gz.end(), A(0));
      for (int64_t b = 0; b < s.b; ++b) {
        for (int64_t k = 0; k < cn; ++k) {
          const int64_t ch = c0 + k, slot = b * block + k;
          stats_fn(ops.plane(b * s.c + ch, A(0), A(0), A(0), cen[ch]),
                   frames.data() + slot * frame_n, values.data() + slot * hw,
                   moments);
          sum_g[k] += moments[0];
          sum_gz[k] += moments[1];
        }
      }
      for (int64_t b = 0; b < s.b; ++b) {
        for (int64_t k = 0; k < cn; ++k) {
          const int64_t ch = c0 + k, slot = b * block + k;
          const A na = gam[ch] * inv[ch];
          A nb = 0, nc = 0;
          if (batch_stats) {
            mrla_norm_batch_terms(na, inv[ch], sum_g[k], sum_gz[k], count,
                                  nb, nc);
          }
          backward_fn(ops.plane(b * s.c + ch, na, nb, nc, cen[ch]),
                      frames.data() + slot * frame_n,
                      values.data() + slot * hw, gvframe.data(), part,
                      true);
          ops.store(b * s.c + ch, part);
        }
      }
      for (int64_t k = 0; k < cn; ++k) {
        sp[2 * (c0 + k)] = sum_g[k];
        sp[2 * (c0 + k) + 1] = sum_gz[k];
      }
    }
  });
}

bool is_channels_last(const Tensor& x) { return !x.is_contiguous(); }

}  // namespace

void mrla_light_forward_cpu(const Tensor x, const Tensor weight,
                            const Tensor gate, const Tensor lambda,
                            const Tensor o_prev, const Tensor scale,
                            const Tensor shift, Tensor out, int64_t act,
                            bool add_input) {
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "mrla_light_forward_cpu",
      [&] {
        light_forward<scalar_t>(x, weight, gate, lambda, o_prev, scale,
                                shift, out, static_cast<int>(act), add_input,
                                is_channels_last(x));
      });
}

void mrla_light_backward_cpu(const Tensor grad_out, const Tensor x,
                             const Tensor weight, const Tensor gate,
                             const Tensor lambda, const Tensor o_prev,
                             const Tensor norm, Tensor grad_x,
                             Tensor grad_o_prev, Tensor grad_weight_part,
                             Tensor grad_gate_part, Tensor grad_lambda_part,
                             int64_t act) {
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "mrla_light_backward_cpu",
      [&] {
        light_backward<scalar_t>(grad_out, x, weight, gate, lambda, o_prev,
                                 norm, grad_x, grad_o_prev, grad_weight_part,
                                 grad_gate_part, grad_lambda_part,
                                 static_cast<int>(act), is_channels_last(x));
      });
}

void mrla_light_stats_cpu(const Tensor x, const Tensor weight,
                          const Tensor gate, const Tensor lambda,
                          const Tensor o_prev, const Tensor grad,
                          const Tensor center, Tensor stats, int64_t act) {
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "mrla_light_stats_cpu",
      [&] {
        light_stats<scalar_t>(x, weight, gate, lambda, o_prev, grad, center,
                              stats, static_cast<int>(act));
      });
}

void mrla_light_norm_backward_cpu(
    const Tensor grad_out, const Tensor x, const Tensor weight,
    const Tensor gate, const Tensor lambda, const Tensor o_prev,
    const Tensor gamma, const Tensor mean, const Tensor invstd,
    bool batch_stats, Tensor grad_x, Tensor grad_o_prev,
    Tensor grad_weight_part, Tensor grad_gate_part, Tensor grad_lambda_part,
    Tensor sums, int64_t act) {
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(),
      "mrla_light_norm_backward_cpu", [&] {
        light_norm_backward<scalar_t>(
            grad_out, x, weight, gate, lambda, o_prev, gamma, mean, invstd,
            batch_stats, grad_x, grad_o_prev, grad_weight_part,
            grad_gate_part, grad_lambda_part, sums, static_cast<int>(act));
      });
}

void mrla_light_norm_forward_cpu(const Tensor x, const Tensor weight,
                                 const Tensor gate, const Tensor lambda,
                                 const Tensor o_prev, const Tensor gamma,
                                 const Tensor beta, double eps, Tensor out,
                                 Tensor mean, Tensor invstd, Tensor var,
                                 int64_t act) {
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(),
      "mrla_light_norm_forward_cpu", [&] {
        light_norm_forward<scalar_t>(x, weight, gate, lambda, o_prev, gamma,
                                     beta, eps, out, mean, invstd, var,
                                     static_cast<int>(act));
      });
}

void mrla_light_forward_impl(const Tensor x, const Tensor weight,
                             const Tensor gate, const Tensor lambda,
                             const Tensor o_prev, const Tensor scale,
                             const Tensor shift, Tensor out, int64_t act,
                             bool add_input);
void mrla_light_norm_forward_impl(const Tensor x, const Tensor weight,
                                  const Tensor gate, const Tensor lambda,
                                  const Tensor o_prev, const Tensor gamma,
                                  const Tensor beta, double eps, Tensor out,
                                  Tensor mean, Tensor invstd, Tensor var,
                                  int64_t act);
void mrla_light_backward_impl(const Tensor grad_out, const Tensor x,
                              const Tensor weight, const Tensor gate,
                              const Tensor lambda, const Tensor o_prev,
                              const Tensor norm, Tensor grad_x,
                              Tensor grad_o_prev, Tensor grad_weight_part,
                              Tensor grad_gate_part, Tensor grad_lambda_part,
                              int64_t act);
void mrla_light_stats_impl(const Tensor x, const Tensor weight,
                           const Tensor gate, const Tensor lambda,
                           const Tensor o_prev, const Tensor grad,
                           const Tensor center, Tensor stats, int64_t act);
void mrla_light_norm_backward_impl(
    const Tensor grad_out, const Tensor x, const Tensor weight,
    const Tensor gate, const Tensor lambda, const Tensor o_prev,
    const Tensor gamma, const Tensor mean, const Tensor invstd,
    bool batch_stats, Tensor grad_x, Tensor grad_o_prev,
    Tensor grad_weight_part, Tensor grad_gate_part, Tensor grad_lambda_part,
    Tensor sums, int64_t act);
REGISTER_DEVICE_IMPL(mrla_light_forward_impl, CPU, mrla_light_forward_cpu);
REGISTER_DEVICE_IMPL(mrla_light_backward_impl, CPU, mrla_light_backward_cpu);
REGISTER_DEVICE_IMPL(mrla_light_stats_impl, CPU, mrla_light_stats_cpu);
REGISTER_DEVICE_IMPL(mrla_light_norm_backward_impl, CPU,
                     mrla_light_norm_backward_cpu);
REGISTER_DEVICE_IMPL(mrla_light_norm_forward_impl, CPU,
                     mrla_light_norm_forward_cpu);
