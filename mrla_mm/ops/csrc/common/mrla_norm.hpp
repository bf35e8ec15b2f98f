// The BatchNorm of y = x + batch_norm(z), z the MRLA-light core's output,
// in the forms the CPU kernels (per channel, on scalars) and the
// compositions of ATen ops (on [C] tensors, CUDA) share: the channel
// statistics from per-plane moments, the norm as an affine map, and the
// backward as a map of the core's gradient,
// dL/dz = a * g + b * (z - mean) + c with a = gamma * invstd
// (with running statistics b = c = 0).
#ifndef MRLA_NORM_HPP
#define MRLA_NORM_HPP

#include <ATen/core/Tensor.h>

#include <cmath>

inline double mrla_rsqrt(double v) { return 1.0 / std::sqrt(v); }
inline at::Tensor mrla_rsqrt(const at::Tensor& v) { return v.rsqrt(); }

// Mean and biased variance of a channel from its B planes of hw values,
// given each plane's mean and centred sum of squares m2: the parallel
// merge, without the E[z^2] - E[z]^2 cancellation. sum(f) is the sum over
// the planes of f(mean_b, m2_b): a loop over scalars, or a reduction over
// dim 0 of [B, C] tensors. In double: the count can be large.
template <typename V, typename SumPlanes>
inline void mrla_norm_moments(const SumPlanes& sum, double planes, double hw,
                              V& mean, V& var) {
  mean = sum([](const V& m, const V&) -> V { return m; }) / planes;
  const V& mu = mean;
  const V m2 = sum([](const V&, const V& q) -> V { return q; }) +
               hw * sum([&mu](const V& m, const V&) -> V {
                 return (m - mu) * (m - mu);
               });
  var = m2 / (planes * hw);
}

template <typename V>
inline V mrla_norm_invstd(const V& var, double eps) {
  return mrla_rsqrt(var + eps);
}

// The norm as scale * z + shift.
template <typename V>
inline void mrla_norm_affine(const V& gamma, const V& beta, const V& mean,
                             const V& invstd, V& scale, V& shift) {
  scale = invstd * gamma;
  shift = beta - mean * scale;
}

// b and c of a norm with batch statistics, whose mean and variance depend
// on z too. sum_g, sum_gz: sums over the channel's count values of g and
// of g * (z - mean). V is a scalar or a tensor; S the count's type for V
// (float for float, double for a tensor: both divide in V's precision).
template <typename V, typename S>
inline void mrla_norm_batch_terms(const V& a, const V& invstd,
                                  const V& sum_g, const V& sum_gz, S count,
                                  V& b, V& c) {
  b = -a * invstd * invstd * sum_gz / count;
  c = -a * sum_g / count;
}

#endif  // MRLA_NORM_HPP
