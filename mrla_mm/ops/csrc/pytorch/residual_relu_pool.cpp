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

// With inplace, out is residual itself (each element is read before it is
// written): no new map in inference, as mmdet's in-place residual add.
std::vector<Tensor> residual_relu_pool(Tensor residual, Tensor identity,
                                       bool inplace) {
  TORCH_CHECK(residual.dim() == 4 && residual.numel() > 0,
              "residual must be a non-empty 4-D [B, C, H, W] tensor, got "
              "shape ", residual.sizes());
  const bool cl = !residual.is_contiguous() &&
                  residual.is_contiguous(at::MemoryFormat::ChannelsLast);
  TORCH_CHECK(cl || residual.is_contiguous(), "residual must be contiguous "
              "or channels_last, got strides ", residual.strides());
  const auto fmt =
      cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  TORCH_CHECK(identity.sizes() == residual.sizes() &&
                  identity.scalar_type() == residual.scalar_type() &&
                  identity.device() == residual.device() &&
                  identity.is_contiguous(fmt),
              "identity must match residual in shape ", residual.sizes(),
              ", dtype, device and memory format; got shape ",
              identity.sizes(), " ", identity.scalar_type());
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
  TORCH_CHECK(out.dim() == 4 && out.numel() > 0,
              "out must be a non-empty 4-D [B, C, H, W] tensor, got shape ",
              out.sizes());
  const auto fmt = out.is_contiguous() ? at::MemoryFormat::Contiguous
                                       : at::MemoryFormat::ChannelsLast;
  TORCH_CHECK(out.is_contiguous(fmt), "out must be contiguous or "
              "channels_last, got strides ", out.strides());
  TORCH_CHECK(grad_out.sizes() == out.sizes() &&
                  grad_out.scalar_type() == out.scalar_type() &&
                  grad_out.device() == out.device() &&
                  grad_out.is_contiguous(fmt),
              "grad_out must match out in shape ", out.sizes(),
              ", dtype, device and memory format; got shape ",
              grad_out.sizes(), " ", grad_out.scalar_type());
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
