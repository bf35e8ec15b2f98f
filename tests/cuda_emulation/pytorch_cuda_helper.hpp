// Stands in for mmcv's pytorch_cuda_helper.hpp when the CUDA launchers are
// compiled for the CPU emulation (see mrla_cuda_emulation.h).
#ifndef PYTORCH_CUDA_HELPER
#define PYTORCH_CUDA_HELPER

#include "pytorch_cpp_helper.hpp"

namespace at {
namespace cuda {
struct CUDAGuard {
  template <typename D>
  explicit CUDAGuard(D&&) {}
};
inline cudaStream_t getCurrentCUDAStream() { return nullptr; }
}  // namespace cuda
}  // namespace at

#define AT_CUDA_CHECK(expr) (void)(expr)

#endif  // PYTORCH_CUDA_HELPER
