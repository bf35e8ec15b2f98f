// Stands in for c10's CUDA graph header in the CPU emulation of the CUDA
// launchers (see ../../mrla_cuda_emulation.h): nothing is ever captured.
#pragma once

namespace c10 {
namespace cuda {
enum class CaptureStatus { None };
inline CaptureStatus currentStreamCaptureStatusMayInitCtx() {
  return CaptureStatus::None;
}
}  // namespace cuda
}  // namespace c10
