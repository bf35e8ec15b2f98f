// Per-pixel math of the MRLA-light core, shared by the CPU and CUDA
// kernels: the core z = gate * act(v) + lambda * o and its value
// activation. `act` 0 is the identity (ResNet), 1 the exact erf GELU
// (ViT), matching torch.nn.functional.gelu(approximate='none').
#ifndef MRLA_LIGHT_CORE_HPP
#define MRLA_LIGHT_CORE_HPP

#include <cmath>

#include "mrla_host_device.hpp"

enum MRLAValueAct { kMRLAIdentity = 0, kMRLAGelu = 1 };

template <typename A>
MRLA_HOST_DEVICE A mrla_erf(A v) {
#ifdef __CUDA_ARCH__
  return erf(v);
#else
  return std::erf(v);
#endif
}

template <typename A>
MRLA_HOST_DEVICE A mrla_exp(A v) {
#ifdef __CUDA_ARCH__
  return exp(v);
#else
  return std::exp(v);
#endif
}

// act(v)
template <typename A>
MRLA_HOST_DEVICE A mrla_act(A v, int act) {
  if (act == kMRLAGelu) {
    return A(0.5) * v * (A(1) + mrla_erf(v * A(M_SQRT1_2)));
  }
  return v;
}

// d act / d v
template <typename A>
MRLA_HOST_DEVICE A mrla_act_grad(A v, int act) {
  if (act == kMRLAGelu) {
    const A cdf = A(0.5) * (A(1) + mrla_erf(v * A(M_SQRT1_2)));
    const A pdf = mrla_exp(A(-0.5) * v * v) * A(M_2_SQRTPI * M_SQRT1_2 * 0.5);
    return cdf + v * pdf;
  }
  return A(1);
}

// z = gate * act(v) + lambda * o: the light core at one pixel, v the
// depthwise 3x3 value before its activation (lambda = o = 0 without a
// history term).
template <typename A>
MRLA_HOST_DEVICE A mrla_light_core(A v, A gate, A lambda, A o, int act) {
  return gate * mrla_act(v, act) + lambda * o;
}

#endif  // MRLA_LIGHT_CORE_HPP
