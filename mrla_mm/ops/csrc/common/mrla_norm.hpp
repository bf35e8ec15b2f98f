// The backward of y = x + batch_norm(z) as a map of the core's gradient,
// dL/dz = a * g + b * (z - mean) + c with a = gamma * invstd, shared by
// the CPU kernel (per channel, on scalars) and the CUDA composition (on
// [C] tensors). With running statistics b = c = 0.
#ifndef MRLA_NORM_HPP
#define MRLA_NORM_HPP

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
