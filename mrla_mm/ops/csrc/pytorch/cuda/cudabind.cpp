// Registers the CUDA implementations of the MRLA ops in mmcv's device
// registry (compiled only when the extension is built with CUDA).
#include "pytorch_cpp_helper.hpp"
#include "pytorch_device_registry.hpp"

void MRLALightForwardCUDAKernelLauncher(const Tensor x, const Tensor weight,
                                        const Tensor gate,
                                        const Tensor lambda,
                                        const Tensor o_prev,
                                        const Tensor scale,
                                        const Tensor shift, Tensor out,
                                        int64_t act, bool add_input);
void MRLALightBackwardCUDAKernelLauncher(
    const Tensor grad_out, const Tensor x, const Tensor weight,
    const Tensor gate, const Tensor lambda, const Tensor o_prev,
    const Tensor norm, Tensor grad_x, Tensor grad_o_prev,
    Tensor grad_weight_part, Tensor grad_gate_part, Tensor grad_lambda_part,
    int64_t act);
void MRLALightStatsCUDAKernelLauncher(const Tensor x, const Tensor weight,
                                      const Tensor gate, const Tensor lambda,
                                      const Tensor o_prev, const Tensor grad,
                                      const Tensor center, Tensor stats,
                                      int64_t act);
void MRLABaseForwardCUDAKernelLauncher(const Tensor weights,
                                       const std::vector<Tensor> values,
                                       const Tensor scale, const Tensor shift,
                                       const Tensor residual, Tensor out);
void MRLABaseBackwardCUDAKernelLauncher(const Tensor grad_out,
                                        const Tensor weights,
                                        const std::vector<Tensor> values,
                                        std::vector<Tensor> grad_values,
                                        Tensor grad_weights_part);
void ResidualReluPoolCUDAKernelLauncher(const Tensor residual,
                                        const Tensor identity,
                                        const Tensor scale,
                                        const Tensor shift, Tensor out,
                                        Tensor mean);
void ResidualReluPoolBackwardCUDAKernelLauncher(const Tensor grad_out,
                                                const Tensor grad_mean,
                                                const Tensor out,
                                                Tensor grad);

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
void mrla_light_norm_backward_impl(
    const Tensor grad_out, const Tensor x, const Tensor weight,
    const Tensor gate, const Tensor lambda, const Tensor o_prev,
    const Tensor gamma, const Tensor mean, const Tensor invstd,
    bool batch_stats, Tensor grad_x, Tensor grad_o_prev,
    Tensor grad_weight_part, Tensor grad_gate_part, Tensor grad_lambda_part,
    Tensor sums, int64_t act);
void mrla_light_norm_backward_composed(
    const Tensor grad_out, const Tensor x, const Tensor weight,
    const Tensor gate, const Tensor lambda, const Tensor o_prev,
    const Tensor gamma, const Tensor mean, const Tensor invstd,
    bool batch_stats, Tensor grad_x, Tensor grad_o_prev,
    Tensor grad_weight_part, Tensor grad_gate_part, Tensor grad_lambda_part,
    Tensor sums, int64_t act);
void mrla_light_norm_forward_impl(const Tensor x, const Tensor weight,
                                  const Tensor gate, const Tensor lambda,
                                  const Tensor o_prev, const Tensor gamma,
                                  const Tensor beta, double eps, Tensor out,
                                  Tensor mean, Tensor invstd, Tensor var,
                                  int64_t act);
void mrla_light_norm_forward_composed(const Tensor x, const Tensor weight,
                                      const Tensor gate, const Tensor lambda,
                                      const Tensor o_prev,
                                      const Tensor gamma, const Tensor beta,
                                      double eps, Tensor out, Tensor mean,
                                      Tensor invstd, Tensor var, int64_t act);
void mrla_base_forward_impl(const Tensor weights,
                            const std::vector<Tensor> values,
                            const Tensor scale, const Tensor shift,
                            const Tensor residual, Tensor out);
void mrla_base_backward_impl(const Tensor grad_out, const Tensor weights,
                             const std::vector<Tensor> values,
                             std::vector<Tensor> grad_values,
                             Tensor grad_weights_part);
void residual_relu_pool_impl(const Tensor residual, const Tensor identity,
                             const Tensor scale, const Tensor shift,
                             Tensor out, Tensor mean);
void residual_relu_pool_backward_impl(const Tensor grad_out,
                                      const Tensor grad_mean, const Tensor out,
                                      Tensor grad);

REGISTER_DEVICE_IMPL(mrla_light_forward_impl, CUDA,
                     MRLALightForwardCUDAKernelLauncher);
REGISTER_DEVICE_IMPL(mrla_light_backward_impl, CUDA,
                     MRLALightBackwardCUDAKernelLauncher);
REGISTER_DEVICE_IMPL(mrla_light_stats_impl, CUDA,
                     MRLALightStatsCUDAKernelLauncher);
REGISTER_DEVICE_IMPL(mrla_light_norm_backward_impl, CUDA,
                     mrla_light_norm_backward_composed);
REGISTER_DEVICE_IMPL(mrla_light_norm_forward_impl, CUDA,
                     mrla_light_norm_forward_composed);
REGISTER_DEVICE_IMPL(mrla_base_forward_impl, CUDA,
                     MRLABaseForwardCUDAKernelLauncher);
REGISTER_DEVICE_IMPL(mrla_base_backward_impl, CUDA,
                     MRLABaseBackwardCUDAKernelLauncher);
REGISTER_DEVICE_IMPL(residual_relu_pool_impl, CUDA,
                     ResidualReluPoolCUDAKernelLauncher);
REGISTER_DEVICE_IMPL(residual_relu_pool_backward_impl, CUDA,
                     ResidualReluPoolBackwardCUDAKernelLauncher);
