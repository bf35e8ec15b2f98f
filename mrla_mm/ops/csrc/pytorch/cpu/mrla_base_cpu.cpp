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

template <typename T>
void base_forward(const Tensor& weights, const std::vector<Tensor>& values,
                  Tensor& out) {
  using A = at::opmath_type<T>;
  const Tensor& v0 = values[0];
  const int64_t b = v0.size(0), c = v0.size(1), hw = v0.size(2) * v0.size(3);
  const int64_t t = static_cast<int64_t>(values.size());
  const std::vector<A> coef = channel_coefs<A>(weights, c);
  const std::vector<const T*> vp = data_ptrs<T>(values);
  T* op = out.mutable_data_ptr<T>();
  if (v0.is_contiguous()) {
    const int64_t grain = std::max<int64_t>(1, 16384 / hw);
    at::parallel_for(0, b * c, grain, [&](int64_t begin, int64_t end) {
      std::vector<A> acc(hw);
      for (int64_t p = begin; p < end; ++p) {
        const int64_t n = p / c, ch = p % c;
        const A k0 = coef[n * t * c + ch];
        const T* v = vp[0] + p * hw;
        for (int64_t i = 0; i < hw; ++i) acc[i] = k0 * A(v[i]);
        for (int64_t s = 1; s < t; ++s) {
          const A k = coef[(n * t + s) * c + ch];
          v = vp[s] + p * hw;
          for (int64_t i = 0; i < hw; ++i) acc[i] += k * A(v[i]);
        }
        T* dst = op + p * hw;
        for (int64_t i = 0; i < hw; ++i) dst[i] = static_cast<T>(acc[i]);
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
      for (int64_t ch = 0; ch < c; ++ch) dst[ch] = static_cast<T>(acc[ch]);
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
  std::vector<T*> gvp;
  for (auto& g : grad_values) gvp.push_back(g.mutable_data_ptr<T>());
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
          T* gv = gvp[s] + p * hw;
          A dot = 0;
#pragma omp simd reduction(+ : dot)
          for (int64_t i = 0; i < hw; ++i) {
            const A gi = A(g[i]);
            dot += gi * A(v[i]);
            gv[i] = static_cast<T>(k * gi);
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
                           const std::vector<Tensor> values, Tensor out) {
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, values[0].scalar_type(),
      "mrla_base_forward_cpu",
      [&] { base_forward<scalar_t>(weights, values, out); });
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
                            const std::vector<Tensor> values, Tensor out);
void mrla_base_backward_impl(const Tensor grad_out, const Tensor weights,
                             const std::vector<Tensor> values,
                             std::vector<Tensor> grad_values,
                             Tensor grad_weights_part);
REGISTER_DEVICE_IMPL(mrla_base_forward_impl, CPU, mrla_base_forward_cpu);
REGISTER_DEVICE_IMPL(mrla_base_backward_impl, CPU, mrla_base_backward_cpu);
