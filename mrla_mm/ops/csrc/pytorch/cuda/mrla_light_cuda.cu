// Launchers of the MRLA-light CUDA kernels.
#include <ATen/OpMathType.h>

#include "mrla_light_cuda_kernel.cuh"
#include "pytorch_cuda_helper.hpp"

void MRLALightForwardCUDAKernelLauncher(const Tensor x, const Tensor weight,
                                        const Tensor gate, const Tensor lambda,
                                        const Tensor o_prev, const Tensor scale,
                                        const Tensor shift, Tensor out,
                                        int64_t act, bool add_input) {
  at::cuda::CUDAGuard device_guard(x.device());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t G = gate.size(1);
  const bool cl = !x.is_contiguous();
  const MRLATiling tiling = mrla_light_tiling(B, C, H, W, cl);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "mrla_light_forward_cuda",
      [&] {
        using A = at::opmath_type<scalar_t>;
        const A* sc = scale.numel() ? scale.const_data_ptr<A>() : nullptr;
        const A* sh = shift.numel() ? shift.const_data_ptr<A>() : nullptr;
        // Without o_prev the kernel computes the value map alone.
        const bool prev = o_prev.numel() > 0;
        auto kernel = cl ? mrla_light_forward_cuda_kernel<scalar_t, A, true>
                         : mrla_light_forward_cuda_kernel<scalar_t, A, false>;
        kernel<<<mrla_tile_blocks(tiling, B), kMRLAThreads, 0, stream>>>(
            x.const_data_ptr<scalar_t>(), weight.const_data_ptr<A>(),
            gate.const_data_ptr<A>(),
            prev ? lambda.const_data_ptr<A>() : nullptr,
            prev ? o_prev.const_data_ptr<scalar_t>() : nullptr, sc, sh,
            out.mutable_data_ptr<scalar_t>(), tiling, G, static_cast<int>(act),
            add_input);
      });
  AT_CUDA_CHECK(cudaGetLastError());
}

void MRLALightBackwardCUDAKernelLauncher(const Tensor grad_out, const Tensor x,
                                         const Tensor weight, const Tensor gate,
                                         const Tensor lambda,
                                         const Tensor o_prev, const Tensor norm,
                                         Tensor grad_x, Tensor grad_o_prev,
                                         Tensor grad_weight_part,
                                         Tensor grad_gate_part,
                                         Tensor grad_lambda_part, int64_t act) {
  at::cuda::CUDAGuard device_guard(x.device());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t G = gate.size(1);
  const bool cl = !x.is_contiguous();
  const MRLATiling tiling = mrla_light_tiling(B, C, H, W, cl);
  const int64_t S = tiling.S;
  // The value gradient, in the layout of x, at accumulation precision.
  Tensor grad_v = at::empty_like(
      x, weight.options(),
      cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  // The tiles' partial sums (the outputs themselves for one slice).
  auto parts = [&](const Tensor& out) {
    return S == 1 ? out : at::empty({out.numel() * S}, weight.options());
  };
  Tensor gate_part = parts(grad_gate_part),
         lambda_part = parts(grad_lambda_part),
         weight_part = parts(grad_weight_part);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "mrla_light_backward_cuda",
      [&] {
        using A = at::opmath_type<scalar_t>;
        const bool prev = o_prev.numel() > 0;
        const A* nrm = norm.numel() ? norm.const_data_ptr<A>() : nullptr;
        const int blocks = mrla_tile_blocks(tiling, B);
        auto value_kernel =
            cl ? mrla_light_backward_value_cuda_kernel<scalar_t, A, true>
               : mrla_light_backward_value_cuda_kernel<scalar_t, A, false>;
        value_kernel<<<blocks, kMRLAThreads, 0, stream>>>(
            grad_out.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
            weight.const_data_ptr<A>(), gate.const_data_ptr<A>(),
            prev ? lambda.const_data_ptr<A>() : nullptr,
            prev ? o_prev.const_data_ptr<scalar_t>() : nullptr, nrm,
            grad_v.mutable_data_ptr<A>(),
            prev ? grad_o_prev.mutable_data_ptr<scalar_t>() : nullptr,
            gate_part.mutable_data_ptr<A>(), lambda_part.mutable_data_ptr<A>(),
            tiling, G, static_cast<int>(act));
        AT_CUDA_CHECK(cudaGetLastError());
        auto input_kernel =
            cl ? mrla_light_backward_input_cuda_kernel<scalar_t, A, true>
               : mrla_light_backward_input_cuda_kernel<scalar_t, A, false>;
        input_kernel<<<blocks, kMRLAThreads, 0, stream>>>(
            grad_v.const_data_ptr<A>(), x.const_data_ptr<scalar_t>(),
            weight.const_data_ptr<A>(),
            nrm != nullptr ? grad_out.const_data_ptr<scalar_t>() : nullptr,
            grad_x.mutable_data_ptr<scalar_t>(),
            weight_part.mutable_data_ptr<A>(), tiling);
        if (S > 1) {
          mrla_sum_slices(gate_part.const_data_ptr<A>(),
                          grad_gate_part.mutable_data_ptr<A>(), B * C, S, 1,
                          A(1), stream);
          mrla_sum_slices(lambda_part.const_data_ptr<A>(),
                          grad_lambda_part.mutable_data_ptr<A>(), B * C, S, 1,
                          A(1), stream);
          mrla_sum_slices(weight_part.const_data_ptr<A>(),
                          grad_weight_part.mutable_data_ptr<A>(), B * C, S, 9,
                          A(1), stream);
        }
      });
  AT_CUDA_CHECK(cudaGetLastError());
}

void MRLALightStatsCUDAKernelLauncher(const Tensor x, const Tensor weight,
                                      const Tensor gate, const Tensor lambda,
                                      const Tensor o_prev, const Tensor grad,
                                      const Tensor center, Tensor stats,
                                      int64_t act) {
  at::cuda::CUDAGuard device_guard(x.device());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t G = gate.size(1);
  const bool cl = !x.is_contiguous();
  const int64_t B = x.size(0);
  const MRLATiling tiling = mrla_light_tiling(B, C, H, W, cl);
  // The tiles' moments (the statistics themselves for one slice).
  Tensor part = tiling.S == 1
                    ? stats
                    : at::empty({stats.numel() * tiling.S}, stats.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "mrla_light_stats_cuda", [&] {
        using A = at::opmath_type<scalar_t>;
        const bool prev = o_prev.numel() > 0, with_grad = grad.numel() > 0;
        auto kernel = cl ? mrla_light_stats_cuda_kernel<scalar_t, A, true>
                         : mrla_light_stats_cuda_kernel<scalar_t, A, false>;
        kernel<<<mrla_tile_blocks(tiling, B), kMRLAThreads, 0, stream>>>(
            x.const_data_ptr<scalar_t>(), weight.const_data_ptr<A>(),
            gate.const_data_ptr<A>(),
            prev ? lambda.const_data_ptr<A>() : nullptr,
            prev ? o_prev.const_data_ptr<scalar_t>() : nullptr,
            with_grad ? grad.const_data_ptr<scalar_t>() : nullptr,
            with_grad ? center.const_data_ptr<A>() : nullptr,
            part.mutable_data_ptr<A>(), tiling, G, static_cast<int>(act));
        if (tiling.S == 1) return;
        AT_CUDA_CHECK(cudaGetLastError());
        if (with_grad) {
          mrla_sum_slices(part.const_data_ptr<A>(), stats.mutable_data_ptr<A>(),
                          B * C, tiling.S, 2, A(1), stream);
        } else {
          mrla_combine_moments_cuda_kernel<<<mrla_blocks(B * C), kMRLAThreads,
                                             0, stream>>>(
              part.const_data_ptr<A>(), stats.mutable_data_ptr<A>(), B * C,
              tiling);
        }
      });
  AT_CUDA_CHECK(cudaGetLastError());
}
