// MRLA-light core, device dispatch:
//   out = gate[b, c / d] * act(dwconv3x3(x))[b, c] + lambda[c] * o_prev[b, c]
// optionally followed by a per-channel affine (eval-mode BatchNorm folded
// into scale/shift) and the addition of x itself (the residual of the
// block). The gate comes from mrla_mm/ops/mrla_math.py.
//
// For a train-mode BatchNorm after the core (y = x + batch_norm(z)), the
// statistics op gives per-plane moments of z, or of the gradient against
// z, and the backward takes the norm's gradient coefficients, so that z
// is never stored: the kernels recompute it from x. The norm forward op
// runs the statistics and the folded forward for y, the norm backward op
// the statistics and the backward for y's gradients (on the CPU each as
// one kernel, cpu/mrla_light_norm_cpu.cpp; on CUDA composed of the two,
// cuda/mrla_light_norm_cuda.cpp).
#include "mrla_map_checks.hpp"
#include "mrla_norm.hpp"
#include "pytorch_cpp_helper.hpp"
#include "pytorch_device_registry.hpp"

void mrla_light_forward_impl(const Tensor x, const Tensor weight,
                             const Tensor gate, const Tensor lambda,
                             const Tensor o_prev, const Tensor scale,
                             const Tensor shift, Tensor out, int64_t act,
                             bool add_input) {
  DISPATCH_DEVICE_IMPL(mrla_light_forward_impl, x, weight, gate, lambda,
                       o_prev, scale, shift, out, act, add_input);
}

void mrla_light_backward_impl(const Tensor grad_out, const Tensor x,
                              const Tensor weight, const Tensor gate,
                              const Tensor lambda, const Tensor o_prev,
                              const Tensor norm, Tensor grad_x,
                              Tensor grad_o_prev, Tensor grad_weight_part,
                              Tensor grad_gate_part, Tensor grad_lambda_part,
                              int64_t act) {
  DISPATCH_DEVICE_IMPL(mrla_light_backward_impl, grad_out, x, weight, gate,
                       lambda, o_prev, norm, grad_x, grad_o_prev,
                       grad_weight_part, grad_gate_part, grad_lambda_part,
                       act);
}

void mrla_light_stats_impl(const Tensor x, const Tensor weight,
                           const Tensor gate, const Tensor lambda,
                           const Tensor o_prev, const Tensor grad,
                           const Tensor center, Tensor stats, int64_t act) {
  DISPATCH_DEVICE_IMPL(mrla_light_stats_impl, x, weight, gate, lambda,
                       o_prev, grad, center, stats, act);
}

void mrla_light_norm_backward_impl(
    const Tensor grad_out, const Tensor x, const Tensor weight,
    const Tensor gate, const Tensor lambda, const Tensor o_prev,
    const Tensor gamma, const Tensor mean, const Tensor invstd,
    bool batch_stats, Tensor grad_x, Tensor grad_o_prev,
    Tensor grad_weight_part, Tensor grad_gate_part, Tensor grad_lambda_part,
    Tensor sums, int64_t act) {
  DISPATCH_DEVICE_IMPL(mrla_light_norm_backward_impl, grad_out, x, weight,
                       gate, lambda, o_prev, gamma, mean, invstd, batch_stats,
                       grad_x, grad_o_prev, grad_weight_part, grad_gate_part,
                       grad_lambda_part, sums, act);
}

void mrla_light_norm_forward_impl(const Tensor x, const Tensor weight,
                                  const Tensor gate, const Tensor lambda,
                                  const Tensor o_prev, const Tensor gamma,
                                  const Tensor beta, double eps, Tensor out,
                                  Tensor mean, Tensor invstd, Tensor var,
                                  int64_t act) {
  DISPATCH_DEVICE_IMPL(mrla_light_norm_forward_impl, x, weight, gate, lambda,
                       o_prev, gamma, beta, eps, out, mean, invstd, var, act);
}

namespace {

void check_light_args(const Tensor& x, const Tensor& weight,
                      const Tensor& gate, const Tensor& lambda,
                      const Tensor& o_prev, int64_t act,
                      at::MemoryFormat fmt) {
  const int64_t b = x.size(0), c = x.size(1);
  // An empty o_prev (and lambda) drops the history term: the value alone.
  if (o_prev.numel() || lambda.numel()) {
    mrla_check_map_like(o_prev, x, "x", fmt, "o_prev");
    mrla_check_small(lambda, x, c, "lambda");
  }
  mrla_check_small(weight, x, c * 9, "weight");
  TORCH_CHECK(gate.dim() == 2 && gate.size(0) == b && gate.size(1) >= 1 &&
                  c % gate.size(1) == 0,
              "gate must be [B, G] with G dividing C=", c, ", got ",
              gate.sizes());
  mrla_check_small(gate, x, gate.numel(), "gate");
  TORCH_CHECK(act == 0 || act == 1, "act must be 0 (identity) or 1 (gelu), "
              "got ", act);
}

}  // namespace

Tensor mrla_light_forward(Tensor x, Tensor weight, Tensor gate,
                          Tensor lambda, Tensor o_prev, Tensor scale,
                          Tensor shift, int64_t act, bool add_input) {
  const auto fmt = mrla_map_format(x, "x");
  check_light_args(x, weight, gate, lambda, o_prev, act, fmt);
  if (scale.numel() || shift.numel()) {
    mrla_check_small(scale, x, x.size(1), "scale");
    mrla_check_small(shift, x, x.size(1), "shift");
  }
  Tensor out = at::empty_like(x, fmt);
  mrla_light_forward_impl(x, weight, gate, lambda, o_prev, scale, shift, out,
                          act, add_input);
  return out;
}

// y = x + batch_norm(z), z the core's output, for a norm of weight gamma
// and bias beta [C] (ones and zeros without them): with batch_stats on the
// batch's statistics of z (mean_in and var_in empty), else on mean_in and
// var_in (running statistics, any float dtype). Returns y, the mean and
// invstd [C] it used (in the accumulation dtype: the backward's operands)
// and the variance [C] (float64; biased with batch_stats).
std::vector<Tensor> mrla_light_norm_forward(Tensor x, Tensor weight,
                                            Tensor gate, Tensor lambda,
                                            Tensor o_prev, Tensor gamma,
                                            Tensor beta, Tensor mean_in,
                                            Tensor var_in, bool batch_stats,
                                            double eps, int64_t act) {
  const auto fmt = mrla_map_format(x, "x");
  check_light_args(x, weight, gate, lambda, o_prev, act, fmt);
  const int64_t c = x.size(1);
  mrla_check_small(gamma, x, c, "gamma");
  mrla_check_small(beta, x, c, "beta");
  TORCH_CHECK(eps > 0, "eps must be positive, got ", eps);
  Tensor out = at::empty_like(x, fmt);
  if (batch_stats) {
    TORCH_CHECK(x.numel() / c > 1, "batch statistics need more than one "
                "value per channel, got x of shape ", x.sizes());
    Tensor mean = at::empty({c}, weight.options());
    Tensor invstd = at::empty({c}, weight.options());
    Tensor var = at::empty({c}, weight.options().dtype(at::kDouble));
    mrla_light_norm_forward_impl(x, weight, gate, lambda, o_prev, gamma, beta,
                                 eps, out, mean, invstd, var, act);
    return {out, mean, invstd, var};
  }
  for (const auto& [t, name] : {std::pair{&mean_in, "mean_in"},
                                std::pair{&var_in, "var_in"}}) {
    TORCH_CHECK(t->dim() == 1 && t->size(0) == c &&
                    at::isFloatingType(t->scalar_type()),
                name, " must be a float tensor of shape [", c,
                "] without batch_stats, got ", t->scalar_type(), " of shape ",
                t->sizes());
  }
  const Tensor var = var_in.to(at::kDouble);
  const Tensor mean = mean_in.to(weight.scalar_type()).contiguous();
  const Tensor invstd =
      mrla_norm_invstd(var, eps).to(weight.scalar_type()).contiguous();
  Tensor scale, shift;
  mrla_norm_affine(gamma, beta, mean, invstd, scale, shift);
  mrla_light_forward_impl(x, weight, gate, lambda, o_prev, scale, shift, out,
                          act, true);
  return {out, mean, invstd, var};
}

// Returns grad_x, grad_o_prev and per-(b, c) partial sums for the weight
// [B, C, 9], gate [B, C] and lambda [B, C]; the caller reduces them over
// the batch or the channels of a head (small tensors). A non-empty norm
// [4, C] (rows a, b, c, center) makes grad_out the gradient of
// x + batch_norm(z): the core's gradient is then
// a * grad_out + b * (z - center) + c, and grad_out is added to grad_x.
std::vector<Tensor> mrla_light_backward(Tensor grad_out, Tensor x,
                                        Tensor weight, Tensor gate,
                                        Tensor lambda, Tensor o_prev,
                                        Tensor norm, int64_t act) {
  const auto fmt = mrla_map_format(x, "x");
  check_light_args(x, weight, gate, lambda, o_prev, act, fmt);
  mrla_check_map_like(grad_out, x, "x", fmt, "grad_out");
  if (norm.numel()) mrla_check_small(norm, x, 4 * x.size(1), "norm");
  const int64_t b = x.size(0), c = x.size(1);
  Tensor grad_x = at::empty_like(x, fmt);
  Tensor grad_o_prev =
      o_prev.numel() ? at::empty_like(x, fmt) : at::empty({0}, x.options());
  Tensor grad_weight_part = at::empty({b, c, 9}, weight.options());
  Tensor grad_gate_part = at::empty({b, c}, weight.options());
  Tensor grad_lambda_part = at::empty({b, c}, weight.options());
  mrla_light_backward_impl(grad_out, x, weight, gate, lambda, o_prev, norm,
                           grad_x, grad_o_prev, grad_weight_part,
                           grad_gate_part, grad_lambda_part, act);
  return {grad_x, grad_o_prev, grad_weight_part, grad_gate_part,
          grad_lambda_part};
}

// Per-(b, c) moments [B, C, 2] of the core's output z: with an empty grad
// {mean, sum (z - mean)^2} of each plane; with grad (a map like x) and
// center [C], {sum grad, sum grad * (z - center)}.
Tensor mrla_light_stats(Tensor x, Tensor weight, Tensor gate, Tensor lambda,
                        Tensor o_prev, Tensor grad, Tensor center,
                        int64_t act) {
  const auto fmt = mrla_map_format(x, "x");
  check_light_args(x, weight, gate, lambda, o_prev, act, fmt);
  if (grad.numel()) {
    mrla_check_map_like(grad, x, "x", fmt, "grad");
    mrla_check_small(center, x, x.size(1), "center");
  }
  Tensor stats = at::empty({x.size(0), x.size(1), 2}, weight.options());
  mrla_light_stats_impl(x, weight, gate, lambda, o_prev, grad, center, stats,
                        act);
  return stats;
}

// The backward of y = x + batch_norm(z), z the core's output, from the
// norm's gamma (ones without one), mean and invstd [C] (batch_stats: they
// are the batch's, which depend on z): the outputs of mrla_light_backward
// and sums [C, 2], {sum grad_out, sum grad_out * (z - mean)} per channel
// (the gradients of the norm's bias and, times invstd, of its weight).
std::vector<Tensor> mrla_light_norm_backward(Tensor grad_out, Tensor x,
                                             Tensor weight, Tensor gate,
                                             Tensor lambda, Tensor o_prev,
                                             Tensor gamma, Tensor mean,
                                             Tensor invstd, bool batch_stats,
                                             int64_t act) {
  const auto fmt = mrla_map_format(x, "x");
  check_light_args(x, weight, gate, lambda, o_prev, act, fmt);
  mrla_check_map_like(grad_out, x, "x", fmt, "grad_out");
  const int64_t b = x.size(0), c = x.size(1);
  mrla_check_small(gamma, x, c, "gamma");
  mrla_check_small(mean, x, c, "mean");
  mrla_check_small(invstd, x, c, "invstd");
  Tensor grad_x = at::empty_like(x, fmt);
  Tensor grad_o_prev =
      o_prev.numel() ? at::empty_like(x, fmt) : at::empty({0}, x.options());
  Tensor grad_weight_part = at::empty({b, c, 9}, weight.options());
  Tensor grad_gate_part = at::empty({b, c}, weight.options());
  Tensor grad_lambda_part = at::empty({b, c}, weight.options());
  Tensor sums = at::empty({c, 2}, weight.options());
  mrla_light_norm_backward_impl(grad_out, x, weight, gate, lambda, o_prev,
                                gamma, mean, invstd, batch_stats, grad_x,
                                grad_o_prev, grad_weight_part, grad_gate_part,
                                grad_lambda_part, sums, act);
  return {grad_x,         grad_o_prev,      grad_weight_part,
          grad_gate_part, grad_lambda_part, sums};
}
