// x + batch_norm(MRLA-light core) on CUDA, which has no fused kernel for
// it: each op runs the statistics kernel, the channel statistics or the
// norm's gradient coefficients in ATen (csrc/common/mrla_norm.hpp, on [C]
// tensors) and the light kernel in turn, two passes over the maps. The
// CPU runs each op as one kernel (cpu/mrla_light_norm_cpu.cpp).
#include "mrla_norm.hpp"
#include "pytorch_cpp_helper.hpp"

void mrla_light_forward_impl(const Tensor x, const Tensor weight,
                             const Tensor gate, const Tensor lambda,
                             const Tensor o_prev, const Tensor scale,
                             const Tensor shift, Tensor out, int64_t act,
                             bool add_input);
void mrla_light_backward_impl(const Tensor grad_out, const Tensor x,
                              const Tensor weight, const Tensor gate,
                              const Tensor lambda, const Tensor o_prev,
                              const Tensor norm, Tensor grad_x,
                              Tensor grad_o_prev, Tensor grad_weight_part,
                              Tensor grad_gate_part, Tensor grad_lambda_part,
                              int64_t act);
void mrla_light_stats_impl(const Tensor x, const Tensor weight,
                           const Tensor gate, const Tensor lambda,
                           const Tensor o_prev, const Tensor grad,
                           const Tensor center, Tensor stats, int64_t act);

void mrla_light_norm_forward_composed(const Tensor x, const Tensor weight,
                                      const Tensor gate, const Tensor lambda,
                                      const Tensor o_prev,
                                      const Tensor gamma, const Tensor beta,
                                      double eps, Tensor out, Tensor mean,
                                      Tensor invstd, Tensor var,
                                      int64_t act) {
  Tensor stats = at::empty({x.size(0), x.size(1), 2}, weight.options());
  const Tensor none = at::empty({0}, weight.options());
  mrla_light_stats_impl(x, weight, gate, lambda, o_prev, none, none, stats,
                        act);
  const Tensor plane_mean = stats.select(2, 0).to(at::kDouble);
  const Tensor plane_m2 = stats.select(2, 1).to(at::kDouble);
  auto sum = [&](auto f) { return f(plane_mean, plane_m2).sum(0); };
  Tensor mu, sigma2;
  mrla_norm_moments(sum, static_cast<double>(x.size(0)),
                    static_cast<double>(x.size(2) * x.size(3)), mu, sigma2);
  mean.copy_(mu);
  invstd.copy_(mrla_norm_invstd(sigma2, eps));
  var.copy_(sigma2);
  Tensor scale, shift;
  mrla_norm_affine(gamma, beta, mean, invstd, scale, shift);
  mrla_light_forward_impl(x, weight, gate, lambda, o_prev, scale, shift, out,
                          act, true);
}

void mrla_light_norm_backward_composed(
    const Tensor grad_out, const Tensor x, const Tensor weight,
    const Tensor gate, const Tensor lambda, const Tensor o_prev,
    const Tensor gamma, const Tensor mean, const Tensor invstd,
    bool batch_stats, Tensor grad_x, Tensor grad_o_prev,
    Tensor grad_weight_part, Tensor grad_gate_part, Tensor grad_lambda_part,
    Tensor sums, int64_t act) {
  Tensor stats = at::empty({x.size(0), x.size(1), 2}, weight.options());
  mrla_light_stats_impl(x, weight, gate, lambda, o_prev, grad_out, mean,
                        stats, act);
  at::sum_out(sums, stats, {0});
  Tensor a = gamma * invstd, b, c;
  if (batch_stats) {
    mrla_norm_batch_terms(a, invstd, sums.select(1, 0), sums.select(1, 1),
                          static_cast<double>(x.numel() / x.size(1)), b, c);
  } else {
    b = c = at::zeros_like(a);
  }
  mrla_light_backward_impl(grad_out, x, weight, gate, lambda, o_prev,
                           at::stack({a, b, c, mean}), grad_x, grad_o_prev,
                           grad_weight_part, grad_gate_part, grad_lambda_part,
                           act);
}
