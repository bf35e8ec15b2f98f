// Runs the MRLA CUDA kernels and launchers on the CPU, for the tests
// (tests/test_ops_cuda_emulated.py), which include it before the CUDA
// sources and compile them as C++. The threads of a block are fibers
// (ucontext) on one host thread: each runs until its next __syncthreads or
// its end, in thread order, round after round, so a barrier holds as on a
// GPU, and the running block's __shared__ arrays are plain statics. A
// kernel whose first launch reached no barrier runs its threads as plain
// calls from then on (fibers cost two context switches a thread, too many
// for grids of 2^16 blocks); should it reach one after all, the launch
// throws.
#ifndef MRLA_CUDA_EMULATION_H
#define MRLA_CUDA_EMULATION_H

#include <ucontext.h>

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <type_traits>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static

struct MRLAEmulatedDim3 {
  unsigned x = 1, y = 1, z = 1;
};
inline MRLAEmulatedDim3 threadIdx, blockIdx, blockDim, gridDim;

struct MRLAEmulatedFiber {
  static constexpr size_t kStack = 1 << 17;
  ucontext_t context;
  std::unique_ptr<char[]> stack{new char[kStack]};
  bool done = false;
};
inline ucontext_t mrla_emulated_scheduler;
inline MRLAEmulatedFiber* mrla_emulated_running = nullptr;
inline void* mrla_emulated_body = nullptr;
inline std::vector<MRLAEmulatedFiber> mrla_emulated_fibers;
// Whether a thread of the launch reached a barrier; whether the threads
// run as plain calls.
inline bool mrla_emulated_synced = false, mrla_emulated_direct = false;

inline void __syncthreads() {
  if (mrla_emulated_direct) {
    throw std::logic_error(
        "emulated launch: a kernel reached __syncthreads that reached none "
        "in its first launch");
  }
  mrla_emulated_synced = true;
  swapcontext(&mrla_emulated_running->context, &mrla_emulated_scheduler);
}

template <typename F>
void mrla_emulated_fiber_main() {
  (*static_cast<F*>(mrla_emulated_body))();
  mrla_emulated_running->done = true;
}

using cudaStream_t = void*;
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount };
inline int cudaGetDevice(int* device) {
  *device = 0;
  return 0;
}
// The SM count (MRLA_EMULATED_SMS, default 2) sets how many slices a plane
// is cut into (mrla_tiling).
inline int cudaDeviceGetAttribute(int* value, cudaDeviceAttr, int) {
  const char* sms = std::getenv("MRLA_EMULATED_SMS");
  *value = sms != nullptr ? std::atoi(sms) : 2;
  return 0;
}
inline int cudaGetLastError() { return 0; }

// kernel<<<grid, block, ...>>>(args) becomes
// mrla_emulated_launch([&] { kernel(args); }, grid, block, ...).
template <typename F, typename... Rest>
void mrla_emulated_launch(F&& body, int64_t grid, int64_t block, Rest&&...) {
  using Body = std::remove_reference_t<F>;
  gridDim.x = static_cast<unsigned>(grid);
  blockDim.x = static_cast<unsigned>(block);
  // Per launch site and instantiation (each has its own lambda type).
  static bool barrier_free = false;
  if (barrier_free) {
    mrla_emulated_direct = true;
    for (int64_t b = 0; b < grid; ++b) {
      blockIdx.x = static_cast<unsigned>(b);
      for (int64_t t = 0; t < block; ++t) {
        threadIdx.x = static_cast<unsigned>(t);
        try {
          body();
        } catch (...) {
          mrla_emulated_direct = false;
          throw;
        }
      }
    }
    mrla_emulated_direct = false;
    return;
  }
  mrla_emulated_synced = false;
  mrla_emulated_body = const_cast<void*>(static_cast<const void*>(&body));
  // Kept from launch to launch: their stacks are allocated once.
  std::vector<MRLAEmulatedFiber>& fibers = mrla_emulated_fibers;
  if (static_cast<int64_t>(fibers.size()) < block) fibers.resize(block);
  for (int64_t b = 0; b < grid; ++b) {
    blockIdx.x = static_cast<unsigned>(b);
    for (int64_t t = 0; t < block; ++t) {
      MRLAEmulatedFiber& f = fibers[t];
      getcontext(&f.context);
      f.context.uc_stack.ss_sp = f.stack.get();
      f.context.uc_stack.ss_size = MRLAEmulatedFiber::kStack;
      f.context.uc_link = &mrla_emulated_scheduler;
      f.done = false;
      makecontext(&f.context, mrla_emulated_fiber_main<Body>, 0);
    }
    for (bool live = true; live;) {
      live = false;
      for (int64_t t = 0; t < block; ++t) {
        if (fibers[t].done) continue;
        threadIdx.x = static_cast<unsigned>(t);
        mrla_emulated_running = &fibers[t];
        swapcontext(&mrla_emulated_scheduler, &fibers[t].context);
        live = live || !fibers[t].done;
      }
    }
  }
  barrier_free = !mrla_emulated_synced;
}

#endif  // MRLA_CUDA_EMULATION_H
