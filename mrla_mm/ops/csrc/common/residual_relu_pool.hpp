// Per-element math of residual_relu_pool, shared by the CPU and CUDA
// kernels. Each result is rounded to T where PyTorch's composition
// (add, relu, mean; their backward) rounds it, so the op matches it
// bitwise in float32.
#ifndef RESIDUAL_RELU_POOL_HPP
#define RESIDUAL_RELU_POOL_HPP

#include <cstdint>

#include "mrla_host_device.hpp"

// relu(a + b); NaN stays NaN, as in torch.relu.
template <typename T, typename A>
MRLA_HOST_DEVICE T mrla_add_relu(T a, T b) {
  const T s = static_cast<T>(A(a) + A(b));
  return A(s) < A(0) ? T(0) : s;
}

// relu(a * scale + shift + b): an eval-mode BatchNorm folded into the
// residual branch's end, its output rounded to T as the norm's would be.
template <typename T, typename A>
MRLA_HOST_DEVICE T mrla_affine_add_relu(T a, A scale, A shift, T b) {
  return mrla_add_relu<T, A>(static_cast<T>(A(a) * scale + shift), b);
}

// What a plane's mean passes to each of its hw pixels: grad_mean / hw.
template <typename T, typename A>
MRLA_HOST_DEVICE A mrla_mean_share(T grad_mean, int64_t hw) {
  return A(static_cast<T>(A(grad_mean) / A(hw)));
}

// The output's gradient plus the pixel's share of the mean's.
template <typename T, typename A>
MRLA_HOST_DEVICE T mrla_add_share(T grad_out, A share) {
  return static_cast<T>(A(grad_out) + share);
}

// ReLU's backward at a pixel whose output is out: zero where out <= 0.
template <typename T, typename A>
MRLA_HOST_DEVICE T mrla_relu_grad(T g, T out) {
  return A(out) <= A(0) ? T(0) : g;
}

// Gradient of relu(a + b) at a pixel, from the output's gradient and the
// pixel's share of the mean's.
template <typename T, typename A>
MRLA_HOST_DEVICE T mrla_add_relu_grad(T grad_out, A share, T out) {
  return mrla_relu_grad<T, A>(mrla_add_share<T, A>(grad_out, share), out);
}

#endif  // RESIDUAL_RELU_POOL_HPP
