// Launchers of the fused residual add (after an optional folded norm), ReLU
// and channel mean on CUDA, and of its backward.
#include <ATen/OpMathType.h>

#include "pytorch_cuda_helper.hpp"
#include "residual_relu_pool_cuda_kernel.cuh"

void ResidualReluPoolCUDAKernelLauncher(const Tensor residual,
                                        const Tensor identity,
                                        const Tensor scale,
                                        const Tensor shift, Tensor out,
                                        Tensor mean) {
  at::cuda::CUDAGuard device_guard(residual.device());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t B = residual.size(0), C = residual.size(1),
                H = residual.size(2), W = residual.size(3);
  const bool cl = !residual.is_contiguous();
  const MRLATiling tiling = mrla_tiling(B, C, H, W, cl);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, residual.scalar_type(),
      "residual_relu_pool_cuda", [&] {
        using A = at::opmath_type<scalar_t>;
        Tensor part =
            at::empty({B * C * tiling.S},
                      mean.options().dtype(c10::CppTypeToScalarType<A>()));
        auto kernel = cl ? residual_relu_pool_cuda_kernel<scalar_t, A, true>
                         : residual_relu_pool_cuda_kernel<scalar_t, A, false>;
        kernel<<<mrla_tile_blocks(tiling, B), kMRLAThreads, 0, stream>>>(
            residual.const_data_ptr<scalar_t>(),
            identity.const_data_ptr<scalar_t>(),
            scale.numel() ? scale.const_data_ptr<A>() : nullptr,
            shift.numel() ? shift.const_data_ptr<A>() : nullptr,
            out.mutable_data_ptr<scalar_t>(), part.mutable_data_ptr<A>(),
            tiling);
        AT_CUDA_CHECK(cudaGetLastError());
        mrla_sum_slices(part.const_data_ptr<A>(),
                        mean.mutable_data_ptr<scalar_t>(), B * C, tiling.S, 1,
                        static_cast<A>(H * W), stream);
      });
  AT_CUDA_CHECK(cudaGetLastError());
}

void ResidualReluPoolBackwardCUDAKernelLauncher(const Tensor grad_out,
                                                const Tensor grad_mean,
                                                const Tensor out,
                                                Tensor grad) {
  at::cuda::CUDAGuard device_guard(out.device());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t n = out.numel(), C = out.size(1),
                HW = out.size(2) * out.size(3);
  const bool cl = !out.is_contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, out.scalar_type(),
      "residual_relu_pool_backward_cuda", [&] {
        using A = at::opmath_type<scalar_t>;
        auto kernel =
            cl ? residual_relu_pool_backward_cuda_kernel<scalar_t, A, true>
               : residual_relu_pool_backward_cuda_kernel<scalar_t, A, false>;
        kernel<<<mrla_blocks(n), kMRLAThreads, 0, stream>>>(
            grad_out.const_data_ptr<scalar_t>(),
            grad_mean.const_data_ptr<scalar_t>(),
            out.const_data_ptr<scalar_t>(), grad.mutable_data_ptr<scalar_t>(),
            n, C, HW);
      });
  AT_CUDA_CHECK(cudaGetLastError());
}
