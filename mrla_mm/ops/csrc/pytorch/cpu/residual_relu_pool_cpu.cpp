// Residual add, ReLU and channel means on the CPU, one pass over the map.
//
// Contiguous maps: one (b, c) plane at a time. channels_last maps: tiles
// of one sample and a block of channels, so each channel's sum stays in
// one thread and the result does not depend on the thread count.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>

#include "pytorch_cpp_helper.hpp"
#include "pytorch_device_registry.hpp"

namespace {

// relu(a + b) rounded to T as PyTorch's add then relu round it; NaN stays.
template <typename T, typename A>
inline T add_relu(T a, T b) {
  const T s = static_cast<T>(A(a) + A(b));
  return A(s) < A(0) ? T(0) : s;
}

template <typename T>
void residual_relu_pool(const Tensor& residual, const Tensor& identity,
                        Tensor& out, Tensor& mean) {
  using A = at::opmath_type<T>;
  const int64_t b = residual.size(0), c = residual.size(1);
  const int64_t hw = residual.size(2) * residual.size(3);
  const T* rp = residual.const_data_ptr<T>();
  const T* ip = identity.const_data_ptr<T>();
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
        A sum = 0;
#pragma omp simd reduction(+ : sum)
        for (int64_t i = 0; i < hw; ++i) {
          const T v = add_relu<T, A>(r[i], id[i]);
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
          const T v = add_relu<T, A>(rp[off + ch], ip[off + ch]);
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

}  // namespace

void residual_relu_pool_cpu(const Tensor residual, const Tensor identity,
                            Tensor out, Tensor mean) {
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, residual.scalar_type(),
      "residual_relu_pool_cpu",
      [&] { residual_relu_pool<scalar_t>(residual, identity, out, mean); });
}

void residual_relu_pool_impl(const Tensor residual, const Tensor identity,
                             Tensor out, Tensor mean);
REGISTER_DEVICE_IMPL(residual_relu_pool_impl, CPU, residual_relu_pool_cpu);
