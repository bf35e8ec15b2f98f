// MRLA-base readout on the CPU, reading every cached value in place.
//
// Contiguous maps: one (b, c) plane at a time with its T coefficients.
// channels_last maps: one pixel at a time against a [T, C] table of
// per-channel coefficients of the sample. The backward writes the T value
// gradients and the per-(b, c) dot products in the same sweep.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "cpu/mrla_cpu_target.hpp"
#include "pytorch_cpp_helper.hpp"
#include "pytorch_device_registry.hpp"

namespace {

// coef[(b * T + s) * C + c] = weights[b, c / d, s]
template <typename A>
std::vector<A> channel_coefs(const Tensor& weights, int64_t c) {
  const int64_t b = weights.size(0), g = weights.size(1), t = weights.size(2);
  const int64_t d = c / g;
  const A* w = weights.const_data_ptr<A>();
  std::vector<A> coef(b * t * c);
  for (int64_t n = 0; n < b; ++n) {
    for (int64_t s = 0; s < t; ++s) {
      for (int64_t ch = 0; ch < c; ++ch) {
        coef[(n * t + s) * c + ch] = w[(n * g + ch / d) * t + s];
      }
    }
  }
  return coef;
}

template <typename T>
std::vector<const T*> data_ptrs(const std::vector<Tensor>& ts) {
  std::vector<const T*> p;
  for (const auto& t : ts) p.push_back(t.const_data_ptr<T>());
  return p;
}

// One (b, c) plane of the forward readout: the T coefficients of its
// channel, its value planes, the folded norm and the residual plane.
template <typename T, typename A>
struct ReadoutPlane {
  const A* coef;  // coef[s * stride]
  int64_t stride;
  const T* const* values;
  int64_t offset, hw, t;
  A scale, shift;
  const T* residual;
  T* out;
};

template <typename T, typename A, bool Fold, bool Residual>
MRLA_ALWAYS_INLINE void readout_plane(const ReadoutPlane<T, A>& a, A* acc) {
  const int64_t hw = a.hw;
  const A k0 = a.coef[0];
  const T* v = a.values[0] + a.offset;
#pragma omp simd
  for (int64_t i = 0; i < hw; ++i) acc[i] = k0 * A(v[i]);
  for (int64_t s = 1; s < a.t; ++s) {
    const A k = a.coef[s * a.stride];
    v = a.values[s] + a.offset;
#pragma omp simd
    for (int64_t i = 0; i < hw; ++i) acc[i] += k * A(v[i]);
  }
  T* dst = a.out + a.offset;
  const T* res = Residual ? a.residual + a.offset : nullptr;
#pragma omp simd
  for (int64_t i = 0; i < hw; ++i) {
    A r = acc[i];
    if (Fold) {
      r = r * a.scale + a.shift;
      r = r < A(0) ? A(0) : r;
    }
    if (Residual) r += A(res[i]);
    dst[i] = static_cast<T>(r);
  }
}

template <typename T, typename A>
using ReadoutPlaneFn = void (*)(const ReadoutPlane<T, A>&, A*);

template <typename T, typename A, bool F, bool R>
void readout_plane_default(const ReadoutPlane<T, A>& a, A* acc) {
  readout_plane<T, A, F, R>(a, acc);
}
template <typename T, typename A, bool F, bool R>
MRLA_TARGET_AVX2 void readout_plane_avx2(const ReadoutPlane<T, A>& a,
                                         A* acc) {
  readout_plane<T, A, F, R>(a, acc);
}

template <typename T, typename A>
ReadoutPlaneFn<T, A> pick_readout_plane(bool fold, bool residual) {
  const bool avx2 = mrla_cpu_has_avx2();
  if (fold && residual) {
    return avx2 ? &readout_plane_avx2<T, A, true, true>
                : &readout_plane_default<T, A, true, true>;
  }
  if (fold) {
    return avx2 ? &readout_plane_avx2<T, A, true, false>
                : &readout_plane_default<T, A, true, false>;
  }
  if (residual) {
    return avx2 ? &readout_plane_avx2<T, A, false, true>
                : &readout_plane_default<T, A, false, true>;
  }
  return avx2 ? &readout_plane_avx2<T, A, false, false>
              : &readout_plane_default<T, A, false, false>;
}

template <typename T>
void base_forward(const Tensor& weights, const std::vector<Tensor>& values,
                  const Tensor& scale, const Tensor& shift,
                  const Tensor& residual, Tensor& out) {
  using A = at::opmath_type<T>;
  const Tensor& v0 = values[0];
  const int64_t b = v0.size(0), c = v0.size(1), hw = v0.size(2) * v0.size(3);
  const int64_t t = static_cast<int64_t>(values.size());
  const std::vector<A> coef = channel_coefs<A>(weights, c);
  const std::vector<const T*> vp = data_ptrs<T>(values);
  T* op = out.mutable_data_ptr<T>();
  const A* sc = scale.numel() ? scale.const_data_ptr<A>() : nullptr;
  const A* sh = scale.numel() ? shift.const_data_ptr<A>() : nullptr;
  const T* rp = residual.numel() ? residual.const_data_ptr<T>() : nullptr;
  // The folded norm and ReLU, then the residual, on a finished sum.
  auto epilogue = [&](A v, int64_t ch, int64_t off) {
    if (sc != nullptr) {
      v = v * sc[ch] + sh[ch];
      v = v < A(0) ? A(0) : v;
    }
    if (rp != nullptr) v += A(rp[off]);
    return static_cast<T>(v);
  };
  if (v0.is_contiguous()) {
    const auto fn = pick_readout_plane<T, A>(sc != nullptr, rp != nullptr);
    const int64_t grain = std::max<int64_t>(1, 16384 / hw);
    at::parallel_for(0, b * c, grain, [&](int64_t begin, int64_t end) {
      std::vector<A> acc(hw);
      for (int64_t p = begin; p < end; ++p) {
        const int64_t n = p / c, ch = p % c;
        ReadoutPlane<T, A> a{coef.data() + n * t * c + ch,
                             c,
                             vp.data(),
                             p * hw,
                             hw,
                             t,
                             sc != nullptr ? sc[ch] : A(1),
                             sc != nullptr ? sh[ch] : A(0),
                             rp,
                             op};
        fn(a, acc.data());
      }
    });
    return;
  }
  const int64_t grain = std::max<int64_t>(1, 16384 / c);
  at::parallel_for(0, b * hw, grain, [&](int64_t begin, int64_t end) {
    std::vector<A> acc(c);
    for (int64_t p = begin; p < end; ++p) {
      const A* k = coef.data() + (p / hw) * t * c;
      const T* v = vp[0] + p * c;
      for (int64_t ch = 0; ch < c; ++ch) acc[ch] = k[ch] * A(v[ch]);
      for (int64_t s = 1; s < t; ++s) {
        v = vp[s] + p * c;
        const A* ks = k + s * c;
        for (int64_t ch = 0; ch < c; ++ch) acc[ch] += ks[ch] * A(v[ch]);
      }
      T* dst = op + p * c;
      for (int64_t ch = 0; ch < c; ++ch) {
        dst[ch] = epilogue(acc[ch], ch, p * c + ch);
      }
    }
  });
}

template <typename T>
void base_backward(const Tensor& grad_out, const Tensor& weights,
                   const std::vector<Tensor>& values,
                   std::vector<Tensor>& grad_values, Tensor& part) {
  using A = at::opmath_type<T>;
  const Tensor& v0 = values[0];
  const int64_t b = v0.size(0), c = v0.size(1), hw = v0.size(2) * v0.size(3);
  const int64_t t = static_cast<int64_t>(values.size());
  const std::vector<A> coef = channel_coefs<A>(weights, c);
  const std::vector<const T*> vp = data_ptrs<T>(values);
  // A value whose gradient is not asked for gets its dot products only.
  std::vector<T*> gvp;
  for (auto& g : grad_values) {
    gvp.push_back(g.defined() ? g.mutable_data_ptr<T>() : nullptr);
  }
  const T* gp = grad_out.const_data_ptr<T>();
  A* pp = part.mutable_data_ptr<A>();
  if (v0.is_contiguous()) {
    const int64_t grain = std::max<int64_t>(1, 16384 / hw);
    at::parallel_for(0, b * c, grain, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const int64_t n = p / c, ch = p % c;
        const T* g = gp + p * hw;
        for (int64_t s = 0; s < t; ++s) {
          const A k = coef[(n * t + s) * c + ch];
          const T* v = vp[s] + p * hw;
          A dot = 0;
          if (gvp[s] == nullptr) {
#pragma omp simd reduction(+ : dot)
            for (int64_t i = 0; i < hw; ++i) dot += A(g[i]) * A(v[i]);
          } else {
            T* gv = gvp[s] + p * hw;
#pragma omp simd reduction(+ : dot)
            for (int64_t i = 0; i < hw; ++i) {
              const A gi = A(g[i]);
              dot += gi * A(v[i]);
              gv[i] = static_cast<T>(k * gi);
            }
          }
          pp[p * t + s] = dot;
        }
      }
    });
    return;
  }
  // channels_last: tiles of one sample and a cache line of channels, so
  // the dot products of a channel stay in one thread (deterministic).
  constexpr int64_t kTile = std::max<int64_t>(1, 64 / sizeof(T));
  const int64_t tiles = (c + kTile - 1) / kTile;
  at::parallel_for(0, b * tiles, 1, [&](int64_t begin, int64_t end) {
    A dot[kTile];
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t n = tile / tiles, c0 = (tile % tiles) * kTile;
      const int64_t cc = std::min(kTile, c - c0);
      const int64_t base = n * hw * c + c0;
      for (int64_t s = 0; s < t; ++s) {
        const A* k = coef.data() + (n * t + s) * c + c0;
        std::fill(dot, dot + kTile, A(0));
        for (int64_t i = 0; i < hw; ++i) {
          const int64_t off = base + i * c;
          const T* g = gp + off;
          const T* v = vp[s] + off;
          if (gvp[s] == nullptr) {
            for (int64_t ch = 0; ch < cc; ++ch) dot[ch] += A(g[ch]) * A(v[ch]);
            continue;
          }
          T* gv = gvp[s] + off;
          for (int64_t ch = 0; ch < cc; ++ch) {
            const A gi = A(g[ch]);
            dot[ch] += gi * A(v[ch]);
            gv[ch] = static_cast<T>(k[ch] * gi);
          }
        }
        for (int64_t ch = 0; ch < cc; ++ch) {
          pp[(n * c + c0 + ch) * t + s] = dot[ch];
        }
      }
    }
  });
}

}  // namespace

void mrla_base_forward_cpu(const Tensor weights,
                           const std::vector<Tensor> values,
                           const Tensor scale, const Tensor shift,
                           const Tensor residual, Tensor out) {
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, values[0].scalar_type(),
      "mrla_base_forward_cpu", [&] {
        base_forward<scalar_t>(weights, values, scale, shift, residual, out);
      });
}

void mrla_base_backward_cpu(const Tensor grad_out, const Tensor weights,
                            const std::vector<Tensor> values,
                            std::vector<Tensor> grad_values,
                            Tensor grad_weights_part) {
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, values[0].scalar_type(),
      "mrla_base_backward_cpu", [&] {
        base_backward<scalar_t>(grad_out, weights, values, grad_values,
                                grad_weights_part);
      });
}

void mrla_base_forward_impl(const Tensor weights,
                            const std::vector<Tensor> values,
                            const Tensor scale, const Tensor shift,
                            const Tensor residual, Tensor out);
void mrla_base_backward_impl(const Tensor grad_out, const Tensor weights,
                             const std::vector<Tensor> values,
                             std::vector<Tensor> grad_values,
                             Tensor grad_weights_part);
REGISTER_DEVICE_IMPL(mrla_base_forward_impl, CPU, mrla_base_forward_cpu);
REGISTER_DEVICE_IMPL(mrla_base_backward_impl, CPU, mrla_base_backward_cpu);
