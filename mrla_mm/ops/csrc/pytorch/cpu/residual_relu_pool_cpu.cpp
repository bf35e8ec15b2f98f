// Residual add (after an optional folded norm), ReLU and channel means on
// the CPU, one pass over the map; its backward, one pass too.
//
// Contiguous maps: one (b, c) plane at a time. channels_last maps: tiles
// of one sample and a block of channels, so each channel's sum stays in
// one thread and the result does not depend on the thread count.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "pytorch_cpp_helper.hpp"
#include "pytorch_device_registry.hpp"
#include "residual_relu_pool.hpp"

namespace {

// With Affine, the residual is first scaled and shifted per channel: an
// eval-mode BatchNorm folded in.
template <typename T, bool Affine>
void residual_relu_pool(const Tensor& residual, const Tensor& identity,
                        const Tensor& scale, const Tensor& shift, Tensor& out,
                        Tensor& mean) {
  using A = at::opmath_type<T>;
  const int64_t b = residual.size(0), c = residual.size(1);
  const int64_t hw = residual.size(2) * residual.size(3);
  const T* rp = residual.const_data_ptr<T>();
  const T* ip = identity.const_data_ptr<T>();
  const A* sc = Affine ? scale.const_data_ptr<A>() : nullptr;
  const A* sh = Affine ? shift.const_data_ptr<A>() : nullptr;
  T* op = out.mutable_data_ptr<T>();
  T* mp = mean.mutable_data_ptr<T>();
  const A inv = A(1) / A(hw);
  if (residual.is_contiguous()) {
    const int64_t grain = std::max<int64_t>(1, 16384 / hw);
    at::parallel_for(0, b * c, grain, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const T* r = rp + p * hw;
        const T* id = ip + p * hw;
        T* o = op + p * hw;
        const A s = Affine ? sc[p % c] : A(1), t = Affine ? sh[p % c] : A(0);
        A sum = 0;
#pragma omp simd reduction(+ : sum)
        for (int64_t i = 0; i < hw; ++i) {
          const T v =
              Affine ? mrla_affine_add_relu<T, A>(r[i], s, t, id[i])
                     : mrla_add_relu<T, A>(r[i], id[i]);
          o[i] = v;
          sum += A(v);
        }
        mp[p] = static_cast<T>(sum * inv);
      }
    });
    return;
  }
  constexpr int64_t kTile = 64;
  const int64_t tiles = (c + kTile - 1) / kTile;
  at::parallel_for(0, b * tiles, 1, [&](int64_t begin, int64_t end) {
    A sum[kTile];
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / tiles, c0 = (t % tiles) * kTile;
      const int64_t cc = std::min(kTile, c - c0);
      std::fill(sum, sum + kTile, A(0));
      for (int64_t i = 0; i < hw; ++i) {
        const int64_t off = (n * hw + i) * c + c0;
        for (int64_t ch = 0; ch < cc; ++ch) {
          const T v = Affine ? mrla_affine_add_relu<T, A>(
                                   rp[off + ch], sc[c0 + ch], sh[c0 + ch],
                                   ip[off + ch])
                             : mrla_add_relu<T, A>(rp[off + ch], ip[off + ch]);
          op[off + ch] = v;
          sum[ch] += A(v);
        }
      }
      for (int64_t ch = 0; ch < cc; ++ch) {
        mp[n * c + c0 + ch] = static_cast<T>(sum[ch] * inv);
      }
    }
  });
}

template <typename T>
void residual_relu_pool_backward(const Tensor& grad_out,
                                 const Tensor& grad_mean, const Tensor& out,
                                 Tensor& grad) {
  using A = at::opmath_type<T>;
  const int64_t b = out.size(0), c = out.size(1);
  const int64_t hw = out.size(2) * out.size(3);
  const T* gp = grad_out.const_data_ptr<T>();
  const T* mp = grad_mean.const_data_ptr<T>();
  const T* op = out.const_data_ptr<T>();
  T* rp = grad.mutable_data_ptr<T>();
  if (out.is_contiguous()) {
    const int64_t grain = std::max<int64_t>(1, 16384 / hw);
    at::parallel_for(0, b * c, grain, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const A share = mrla_mean_share<T, A>(mp[p], hw);
        const T* __restrict g = gp + p * hw;
        const T* __restrict o = op + p * hw;
        T* __restrict r = rp + p * hw;
#pragma omp simd
        for (int64_t i = 0; i < hw; ++i) {
          r[i] = mrla_add_share<T, A>(g[i], share);
        }
        // A loop of its own: fused, the compiler keeps the add behind the
        // select's branch (the add may raise a float exception) and does
        // not vectorize; the plane is still in cache.
#pragma omp simd
        for (int64_t i = 0; i < hw; ++i) {
          r[i] = mrla_relu_grad<T, A>(r[i], o[i]);
        }
      }
    });
    return;
  }
  std::vector<A> shares(b * c);
  for (int64_t p = 0; p < b * c; ++p) {
    shares[p] = mrla_mean_share<T, A>(mp[p], hw);
  }
  const int64_t grain = std::max<int64_t>(1, 16384 / c);
  at::parallel_for(0, b * hw, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const A* share = shares.data() + (r / hw) * c;
      const int64_t off = r * c;
#pragma omp simd
      for (int64_t ch = 0; ch < c; ++ch) {
        rp[off + ch] = mrla_add_share<T, A>(gp[off + ch], share[ch]);
      }
#pragma omp simd
      for (int64_t ch = 0; ch < c; ++ch) {
        rp[off + ch] = mrla_relu_grad<T, A>(rp[off + ch], op[off + ch]);
      }
    }
  });
}

}  // namespace

void residual_relu_pool_cpu(const Tensor residual, const Tensor identity,
                            const Tensor scale, const Tensor shift,
                            Tensor out, Tensor mean) {
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, residual.scalar_type(),
      "residual_relu_pool_cpu", [&] {
        if (scale.numel()) {
          residual_relu_pool<scalar_t, true>(residual, identity, scale, shift,
                                             out, mean);
        } else {
          residual_relu_pool<scalar_t, false>(residual, identity, scale,
                                              shift, out, mean);
        }
      });
}

void residual_relu_pool_backward_cpu(const Tensor grad_out,
                                     const Tensor grad_mean, const Tensor out,
                                     Tensor grad) {
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, out.scalar_type(),
      "residual_relu_pool_backward_cpu", [&] {
        residual_relu_pool_backward<scalar_t>(grad_out, grad_mean, out, grad);
      });
}

void residual_relu_pool_impl(const Tensor residual, const Tensor identity,
                             const Tensor scale, const Tensor shift,
                             Tensor out, Tensor mean);
void residual_relu_pool_backward_impl(const Tensor grad_out,
                                      const Tensor grad_mean, const Tensor out,
                                      Tensor grad);
REGISTER_DEVICE_IMPL(residual_relu_pool_impl, CPU, residual_relu_pool_cpu);
REGISTER_DEVICE_IMPL(residual_relu_pool_backward_impl, CPU,
                     residual_relu_pool_backward_cpu);
