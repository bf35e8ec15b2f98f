// Residual add, ReLU and global average pool of a ResNet block's output,
// device dispatch:
//   out = relu(residual + identity),  mean[b, c] = mean_{h, w} out[b, c]
// The mean is the channel descriptor MRLA's query and key are computed
// from; producing it while `out` is written saves a pass over the map.
// The backward takes both gradients in one pass:
//   grad[b, c, h, w] = out > 0 ? grad_out + grad_mean[b, c] / (H * W) : 0
#include "pytorch_cpp_helper.hpp"
#include "pytorch_device_registry.hpp"

void residual_relu_pool_impl(const Tensor residual, const Tensor identity,
                             Tensor out, Tensor mean) {
  DISPATCH_DEVICE_IMPL(residual_relu_pool_impl, residual, identity, out,
                       mean);
}

void residual_relu_pool_backward_impl(const Tensor grad_out,
                                      const Tensor grad_mean, const Tensor out,
                                      Tensor grad) {
  DISPATCH_DEVICE_IMPL(residual_relu_pool_backward_impl, grad_out, grad_mean,
                       out, grad);
}

namespace {

// The memory format of a non-empty 4-D map, which must be contiguous or
// channels_last.
at::MemoryFormat map_format(const Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 4 && t.numel() > 0, name,
              " must be a non-empty 4-D [B, C, H, W] tensor, got shape ",
              t.sizes());
  const bool cl =
      !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
  TORCH_CHECK(cl || t.is_contiguous(), name, " must be contiguous or "
              "channels_last, got strides ", t.strides());
  return cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// t must be a map like ref: shape, dtype, device and memory format.
void check_map_like(const Tensor& t, const char* name, const Tensor& ref,
                    const char* ref_name, at::MemoryFormat fmt) {
  TORCH_CHECK(t.sizes() == ref.sizes() &&
                  t.scalar_type() == ref.scalar_type() &&
                  t.device() == ref.device() && t.is_contiguous(fmt),
              name, " must match ", ref_name, " in shape ", ref.sizes(),
              ", dtype, device and memory format; got shape ", t.sizes(), " ",
              t.scalar_type());
}

}  // namespace

// With inplace, out is residual itself (each element is read before it is
// written): no new map in inference, as mmdet's in-place residual add.
std::vector<Tensor> residual_relu_pool(Tensor residual, Tensor identity,
                                       bool inplace) {
  const auto fmt = map_format(residual, "residual");
  check_map_like(identity, "identity", residual, "residual", fmt);
  Tensor out = inplace ? residual : at::empty_like(residual, fmt);
  Tensor mean = at::empty({residual.size(0), residual.size(1)},
                          residual.options().memory_format(
                              at::MemoryFormat::Contiguous));
  residual_relu_pool_impl(residual, identity, out, mean);
  return {out, mean};
}

// The gradient of residual (and of identity: the same map) from those of
// out and of the means; grad_out in the memory format of out.
Tensor residual_relu_pool_backward(Tensor grad_out, Tensor grad_mean,
                                   Tensor out) {
  const auto fmt = map_format(out, "out");
  check_map_like(grad_out, "grad_out", out, "out", fmt);
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
