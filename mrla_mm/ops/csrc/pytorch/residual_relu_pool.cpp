// Residual add, ReLU and global average pool of a ResNet block's output,
// device dispatch:
//   out = relu(residual + identity),  mean[b, c] = mean_{h, w} out[b, c]
// (residual * scale[c] + shift[c] in place of residual with a folded norm)
// The mean is the channel descriptor MRLA's query and key are computed
// from; producing it while `out` is written saves a pass over the map.
// The backward takes both gradients in one pass:
//   grad[b, c, h, w] = out > 0 ? grad_out + grad_mean[b, c] / (H * W) : 0
#include "mrla_map_checks.hpp"
#include "pytorch_cpp_helper.hpp"
#include "pytorch_device_registry.hpp"

void residual_relu_pool_impl(const Tensor residual, const Tensor identity,
                             const Tensor scale, const Tensor shift,
                             Tensor out, Tensor mean) {
  DISPATCH_DEVICE_IMPL(residual_relu_pool_impl, residual, identity, scale,
                       shift, out, mean);
}

void residual_relu_pool_backward_impl(const Tensor grad_out,
                                      const Tensor grad_mean, const Tensor out,
                                      Tensor grad) {
  DISPATCH_DEVICE_IMPL(residual_relu_pool_backward_impl, grad_out, grad_mean,
                       out, grad);
}

// With inplace, out is residual itself (each element is read before it is
// written): no new map in inference, as mmdet's in-place residual add.
// scale and shift [C] (empty: none) fold an eval-mode BatchNorm of the
// residual in: out = relu(residual * scale + shift + identity).
std::vector<Tensor> residual_relu_pool(Tensor residual, Tensor identity,
                                       Tensor scale, Tensor shift,
                                       bool inplace) {
  const auto fmt = mrla_map_format(residual, "residual");
  mrla_check_map_like(identity, residual, "residual", fmt, "identity");
  if (scale.numel() || shift.numel()) {
    mrla_check_small(scale, residual, residual.size(1), "scale");
    mrla_check_small(shift, residual, residual.size(1), "shift");
  }
  Tensor out = inplace ? residual : at::empty_like(residual, fmt);
  Tensor mean = at::empty({residual.size(0), residual.size(1)},
                          residual.options().memory_format(
                              at::MemoryFormat::Contiguous));
  residual_relu_pool_impl(residual, identity, scale, shift, out, mean);
  return {out, mean};
}

// The gradient of residual (and of identity: the same map) from those of
// out and of the means; grad_out in the memory format of out.
Tensor residual_relu_pool_backward(Tensor grad_out, Tensor grad_mean,
                                   Tensor out) {
  const auto fmt = mrla_map_format(out, "out");
  mrla_check_map_like(grad_out, out, "out", fmt, "grad_out");
  TORCH_CHECK(grad_mean.sizes() == out.sizes().slice(0, 2) &&
                  grad_mean.scalar_type() == out.scalar_type() &&
                  grad_mean.device() == out.device() &&
                  grad_mean.is_contiguous(),
              "grad_mean must be a contiguous [B, C] = ",
              out.sizes().slice(0, 2), " tensor of out's dtype and device, "
              "got shape ", grad_mean.sizes(), " ", grad_mean.scalar_type());
  Tensor grad = at::empty_like(out, fmt);
  residual_relu_pool_backward_impl(grad_out, grad_mean, out, grad);
  return grad;
}
