// Checks of the feature maps the MRLA ops take, shared by their C++ entry
// points: non-empty 4-D [B, C, H, W] maps, contiguous or channels_last,
// every other map of a call like the first, and the small operands.
#ifndef MRLA_MAP_CHECKS_HPP
#define MRLA_MAP_CHECKS_HPP

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

// The memory format of map t (name: the argument's name in messages).
inline at::MemoryFormat mrla_map_format(const at::Tensor& t,
                                        const char* name) {
  TORCH_CHECK(t.dim() == 4 && t.numel() > 0, name,
              " must be a non-empty 4-D [B, C, H, W] tensor, got shape ",
              t.sizes());
  if (t.is_contiguous()) return at::MemoryFormat::Contiguous;
  TORCH_CHECK(t.is_contiguous(at::MemoryFormat::ChannelsLast), name,
              " must be contiguous or channels_last, got strides ",
              t.strides());
  return at::MemoryFormat::ChannelsLast;
}

// Map t must have the shape, dtype and device of map ref and the memory
// format fmt (ref's). The name parts make t's name in messages, built only
// when a check fails (the base readout checks each of its values per call).
template <typename... Name>
inline void mrla_check_map_like(const at::Tensor& t, const at::Tensor& ref,
                                const char* ref_name, at::MemoryFormat fmt,
                                const Name&... name) {
  TORCH_CHECK(t.sizes() == ref.sizes(), name..., " must have the shape of ",
              ref_name, " ", ref.sizes(), ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), name...,
              " must have the dtype of ", ref_name, " (", ref.scalar_type(),
              "), got ", t.scalar_type());
  TORCH_CHECK(t.device() == ref.device(), name...,
              " must be on the device of ", ref_name, " (", ref.device(),
              "), got ", t.device());
  TORCH_CHECK(t.is_contiguous(fmt), name...,
              " must have the memory format of ", ref_name, ", got strides ",
              t.strides());
}

// A small operand of map x (per-channel factors, weights, gates): numel
// contiguous elements in x's accumulation dtype (double for double maps,
// else float), on x's device.
inline void mrla_check_small(const at::Tensor& t, const at::Tensor& x,
                             int64_t numel, const char* name) {
  const auto acc =
      x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(t.scalar_type() == acc, name, " must be ", acc, " for ",
              x.scalar_type(), " maps, got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous() && t.numel() == numel, name, " must be a "
              "contiguous tensor of ", numel, " elements, got shape ",
              t.sizes());
  TORCH_CHECK(t.device() == x.device(), name, " must be on the device of "
              "the maps (", x.device(), "), got ", t.device());
}

#endif  // MRLA_MAP_CHECKS_HPP
