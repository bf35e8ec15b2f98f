// Launchers of the MRLA-base CUDA kernels.
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>

#include <vector>

#include "mrla_base_cuda_kernel.cuh"
#include "pytorch_cuda_helper.hpp"

namespace {

// Array on `device` of the maps' data pointers (T entries; null for an
// undefined map). Staged in pinned memory and copied without blocking: a
// copy from pageable memory would make the host wait for the stream at
// every call. The caching host allocator keeps the staging buffer until
// the copy has run.
Tensor device_pointers(const std::vector<Tensor>& maps,
                       const at::Device device) {
  // A CUDA graph would replay the copy from a staging buffer that the
  // allocator has since handed out again.
  TORCH_CHECK(c10::cuda::currentStreamCaptureStatusMayInitCtx() ==
                  c10::cuda::CaptureStatus::None,
              "the compiled MRLA-base ops cannot be captured in a CUDA "
              "graph: use torch.compile (MRLA_OPS_BACKEND=auto then traces "
              "the PyTorch path) or MRLA_OPS_BACKEND=pytorch");
  Tensor ptrs = at::empty({static_cast<int64_t>(maps.size())},
                          at::TensorOptions(at::kLong).pinned_memory(true));
  int64_t* p = ptrs.mutable_data_ptr<int64_t>();
  for (size_t s = 0; s < maps.size(); ++s) {
    p[s] = maps[s].defined() ? reinterpret_cast<int64_t>(maps[s].data_ptr())
                             : 0;
  }
  return ptrs.to(device, /*non_blocking=*/true);
}

}  // namespace

void MRLABaseForwardCUDAKernelLauncher(const Tensor weights,
                                       const std::vector<Tensor> values,
                                       const Tensor scale, const Tensor shift,
                                       const Tensor residual, Tensor out) {
  const Tensor& v0 = values[0];
  at::cuda::CUDAGuard device_guard(v0.device());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t B = v0.size(0), C = v0.size(1), H = v0.size(2), W = v0.size(3);
  const int64_t G = weights.size(1), T_len = weights.size(2);
  const bool cl = !v0.is_contiguous();
  const MRLATiling tiling = mrla_tiling(B, C, H, W, cl);
  Tensor ptrs = device_pointers(values, v0.device());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, v0.scalar_type(), "mrla_base_forward_cuda",
      [&] {
        using A = at::opmath_type<scalar_t>;
        auto kernel = cl ? mrla_base_forward_cuda_kernel<scalar_t, A, true>
                         : mrla_base_forward_cuda_kernel<scalar_t, A, false>;
        kernel<<<mrla_tile_blocks(tiling, B), kMRLAThreads, 0, stream>>>(
            weights.const_data_ptr<A>(),
            reinterpret_cast<const scalar_t* const*>(
                ptrs.const_data_ptr<int64_t>()),
            scale.numel() ? scale.const_data_ptr<A>() : nullptr,
            scale.numel() ? shift.const_data_ptr<A>() : nullptr,
            residual.numel() ? residual.const_data_ptr<scalar_t>() : nullptr,
            out.mutable_data_ptr<scalar_t>(), tiling, G, T_len);
      });
  AT_CUDA_CHECK(cudaGetLastError());
}

void MRLABaseBackwardCUDAKernelLauncher(const Tensor grad_out,
                                        const Tensor weights,
                                        const std::vector<Tensor> values,
                                        std::vector<Tensor> grad_values,
                                        Tensor grad_weights_part) {
  const Tensor& v0 = values[0];
  at::cuda::CUDAGuard device_guard(v0.device());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t B = v0.size(0), C = v0.size(1), H = v0.size(2), W = v0.size(3);
  const int64_t G = weights.size(1), T_len = weights.size(2);
  const bool cl = !v0.is_contiguous();
  Tensor ptrs = device_pointers(values, v0.device());
  Tensor grad_ptrs = device_pointers(grad_values, v0.device());
  const MRLATiling tiling = mrla_tiling(B, C, H, W, cl);
  // The tiles' dot products (the output itself for one slice).
  Tensor part = tiling.S == 1
                    ? grad_weights_part
                    : at::empty({grad_weights_part.numel() * tiling.S},
                                grad_weights_part.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, v0.scalar_type(), "mrla_base_backward_cuda",
      [&] {
        using A = at::opmath_type<scalar_t>;
        auto kernel = cl ? mrla_base_backward_cuda_kernel<scalar_t, A, true>
                         : mrla_base_backward_cuda_kernel<scalar_t, A, false>;
        kernel<<<mrla_tile_blocks(tiling, B), kMRLAThreads, 0, stream>>>(
            grad_out.const_data_ptr<scalar_t>(), weights.const_data_ptr<A>(),
            reinterpret_cast<const scalar_t* const*>(
                ptrs.const_data_ptr<int64_t>()),
            reinterpret_cast<scalar_t* const*>(
                grad_ptrs.mutable_data_ptr<int64_t>()),
            part.mutable_data_ptr<A>(), tiling, G, T_len);
        if (tiling.S == 1) return;
        AT_CUDA_CHECK(cudaGetLastError());
        mrla_sum_slices(part.const_data_ptr<A>(),
                        grad_weights_part.mutable_data_ptr<A>(), B * C,
                        tiling.S, T_len, A(1), stream);
      });
  AT_CUDA_CHECK(cudaGetLastError());
}
