// MRLA-base readout, device dispatch:
//   out[b, c] = sum_s weights[b, c / d, s] * values[s][b, c]
// over the per-stage value list read in place (never concatenated),
// optionally followed by an eval-mode BatchNorm folded into scale/shift, a
// ReLU and the addition of the block output (the MRLA branch of a ResNet
// block). The softmax weights come from mrla_mm/ops/mrla_math.py.
#include "mrla_map_checks.hpp"
#include "pytorch_cpp_helper.hpp"
#include "pytorch_device_registry.hpp"

void mrla_base_forward_impl(const Tensor weights,
                            const std::vector<Tensor> values,
                            const Tensor scale, const Tensor shift,
                            const Tensor residual, Tensor out) {
  DISPATCH_DEVICE_IMPL(mrla_base_forward_impl, weights, values, scale, shift,
                       residual, out);
}

void mrla_base_backward_impl(const Tensor grad_out, const Tensor weights,
                             const std::vector<Tensor> values,
                             std::vector<Tensor> grad_values,
                             Tensor grad_weights_part) {
  DISPATCH_DEVICE_IMPL(mrla_base_backward_impl, grad_out, weights, values,
                       grad_values, grad_weights_part);
}

namespace {

at::MemoryFormat check_base_args(const Tensor& weights,
                                 const std::vector<Tensor>& values) {
  TORCH_CHECK(!values.empty(), "values must hold at least one map");
  const Tensor& v0 = values[0];
  const auto fmt = mrla_map_format(v0, "values[0]");
  const int64_t t = static_cast<int64_t>(values.size());
  for (int64_t s = 1; s < t; ++s) {
    mrla_check_map_like(values[s], v0, "values[0]", fmt, "values[", s, "]");
  }
  const auto acc = v0.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(weights.dim() == 3 && weights.size(0) == v0.size(0) &&
                  weights.size(1) >= 1 && v0.size(1) % weights.size(1) == 0 &&
                  weights.size(2) == t,
              "weights must be [B, G, T] = [", v0.size(0), ", G, ", t,
              "] with G dividing C=", v0.size(1), ", got ", weights.sizes());
  TORCH_CHECK(weights.scalar_type() == acc && weights.is_contiguous(),
              "weights must be a contiguous ", acc, " tensor, got ",
              weights.scalar_type());
  TORCH_CHECK(weights.device() == v0.device(), "weights and values must be "
              "on one device");
  return fmt;
}

}  // namespace

// An empty scale/shift gives the readout alone; given, the result is
// relu(readout * scale + shift), plus `residual` when that is not empty.
Tensor mrla_base_forward(Tensor weights, std::vector<Tensor> values,
                         Tensor scale, Tensor shift, Tensor residual) {
  const auto fmt = check_base_args(weights, values);
  const Tensor& v0 = values[0];
  if (scale.numel() || shift.numel()) {
    mrla_check_small(scale, v0, v0.size(1), "scale");
    mrla_check_small(shift, v0, v0.size(1), "shift");
  }
  if (residual.numel()) {
    mrla_check_map_like(residual, v0, "values[0]", fmt, "residual");
  }
  Tensor out = at::empty_like(v0, fmt);
  mrla_base_forward_impl(weights, values, scale, shift, residual, out);
  return out;
}

// Returns a gradient for each value whose entry of `want_values` is true
// (an undefined tensor, None in Python, for the others, which the kernels
// then do not write) followed by per-(b, c) partial sums of the weight
// gradient, [B, C, T]; the caller sums them over each head.
std::vector<Tensor> mrla_base_backward(Tensor grad_out, Tensor weights,
                                       std::vector<Tensor> values,
                                       std::vector<bool> want_values) {
  const auto fmt = check_base_args(weights, values);
  const Tensor& v0 = values[0];
  mrla_check_map_like(grad_out, v0, "values[0]", fmt, "grad_out");
  TORCH_CHECK(want_values.size() == values.size(),
              "want_values must have one entry per value (", values.size(),
              "), got ", want_values.size());
  std::vector<Tensor> grads;
  for (size_t s = 0; s < values.size(); ++s) {
    grads.push_back(want_values[s] ? at::empty_like(v0, fmt) : Tensor());
  }
  Tensor part = at::empty(
      {v0.size(0), v0.size(1), static_cast<int64_t>(values.size())},
      weights.options());
  mrla_base_backward_impl(grad_out, weights, values, grads, part);
  grads.push_back(part);
  return grads;
}
