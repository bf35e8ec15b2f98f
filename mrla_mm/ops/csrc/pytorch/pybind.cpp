// Python bindings of the MRLA ops (mrla_mm._ext).
#include <torch/extension.h>

#include "pytorch_cpp_helper.hpp"

Tensor mrla_light_forward(Tensor x, Tensor weight, Tensor gate,
                          Tensor lambda, Tensor o_prev, Tensor scale,
                          Tensor shift, int64_t act, bool add_input);
std::vector<Tensor> mrla_light_backward(Tensor grad_out, Tensor x,
                                        Tensor weight, Tensor gate,
                                        Tensor lambda, Tensor o_prev,
                                        Tensor norm, int64_t act);
std::vector<Tensor> mrla_light_norm_backward(Tensor grad_out, Tensor x,
                                             Tensor weight, Tensor gate,
                                             Tensor lambda, Tensor o_prev,
                                             Tensor gamma, Tensor mean,
                                             Tensor invstd, bool batch_stats,
                                             int64_t act);
std::vector<Tensor> mrla_light_norm_forward(Tensor x, Tensor weight,
                                            Tensor gate, Tensor lambda,
                                            Tensor o_prev, Tensor gamma,
                                            Tensor beta, Tensor mean_in,
                                            Tensor var_in, bool batch_stats,
                                            double eps, int64_t act);
Tensor mrla_light_stats(Tensor x, Tensor weight, Tensor gate, Tensor lambda,
                        Tensor o_prev, Tensor grad, Tensor center,
                        int64_t act);
Tensor mrla_base_forward(Tensor weights, std::vector<Tensor> values,
                         Tensor scale, Tensor shift, Tensor residual);
std::vector<Tensor> mrla_base_backward(Tensor grad_out, Tensor weights,
                                       std::vector<Tensor> values,
                                       std::vector<bool> want_values);
std::vector<Tensor> residual_relu_pool(Tensor residual, Tensor identity,
                                       Tensor scale, Tensor shift,
                                       bool inplace);
Tensor residual_relu_pool_backward(Tensor grad_out, Tensor grad_mean,
                                   Tensor out);

bool mrla_with_cuda() {
#ifdef MRLA_WITH_CUDA
  return true;
#else
  return false;
#endif
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("mrla_light_forward", &mrla_light_forward, "MRLA-light core forward",
        py::arg("x"), py::arg("weight"), py::arg("gate"), py::arg("lambda_t"),
        py::arg("o_prev"), py::arg("scale"), py::arg("shift"), py::arg("act"),
        py::arg("add_input"));
  m.def("mrla_light_backward", &mrla_light_backward,
        "MRLA-light core backward", py::arg("grad_out"), py::arg("x"),
        py::arg("weight"), py::arg("gate"), py::arg("lambda_t"),
        py::arg("o_prev"), py::arg("norm"), py::arg("act"));
  m.def("mrla_light_stats", &mrla_light_stats,
        "Per-plane moments of the MRLA-light core output", py::arg("x"),
        py::arg("weight"), py::arg("gate"), py::arg("lambda_t"),
        py::arg("o_prev"), py::arg("grad"), py::arg("center"),
        py::arg("act"));
  m.def("mrla_light_norm_backward", &mrla_light_norm_backward,
        "Backward of x + batch_norm(MRLA-light core)", py::arg("grad_out"),
        py::arg("x"), py::arg("weight"), py::arg("gate"),
        py::arg("lambda_t"), py::arg("o_prev"), py::arg("gamma"),
        py::arg("mean"), py::arg("invstd"), py::arg("batch_stats"),
        py::arg("act"));
  m.def("mrla_light_norm_forward", &mrla_light_norm_forward,
        "x + batch_norm(MRLA-light core)", py::arg("x"), py::arg("weight"),
        py::arg("gate"), py::arg("lambda_t"), py::arg("o_prev"),
        py::arg("gamma"), py::arg("beta"), py::arg("mean_in"),
        py::arg("var_in"), py::arg("batch_stats"), py::arg("eps"),
        py::arg("act"));
  m.def("mrla_base_forward", &mrla_base_forward, "MRLA-base readout forward",
        py::arg("weights"), py::arg("values"), py::arg("scale"),
        py::arg("shift"), py::arg("residual"));
  m.def("mrla_base_backward", &mrla_base_backward,
        "MRLA-base readout backward", py::arg("grad_out"), py::arg("weights"),
        py::arg("values"), py::arg("want_values"));
  m.def("residual_relu_pool", &residual_relu_pool,
        "relu(residual (* scale + shift) + identity) and its channel means",
        py::arg("residual"), py::arg("identity"), py::arg("scale"),
        py::arg("shift"), py::arg("inplace"));
  m.def("residual_relu_pool_backward", &residual_relu_pool_backward,
        "Gradient of residual_relu_pool's input from its out and means",
        py::arg("grad_out"), py::arg("grad_mean"), py::arg("out"));
  m.def("with_cuda", &mrla_with_cuda,
        "Whether the extension was compiled with its CUDA kernels");
}
