// Residual add, ReLU and global average pool of a ResNet block's output,
// device dispatch:
//   out = relu(residual + identity),  mean[b, c] = mean_{h, w} out[b, c]
// The mean is the channel descriptor MRLA's query and key are computed
// from; producing it while `out` is written saves a pass over the map.
#include "pytorch_cpp_helper.hpp"
#include "pytorch_device_registry.hpp"

void residual_relu_pool_impl(const Tensor residual, const Tensor identity,
                             Tensor out, Tensor mean) {
  DISPATCH_DEVICE_IMPL(residual_relu_pool_impl, residual, identity, out,
                       mean);
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
