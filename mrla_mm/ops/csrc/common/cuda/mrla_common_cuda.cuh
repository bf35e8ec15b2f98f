// Indexing and reduction helpers of the MRLA CUDA kernels.
#ifndef MRLA_COMMON_CUDA_CUH
#define MRLA_COMMON_CUDA_CUH

#include <cstdint>

// Threads per block of the MRLA kernels (a power of two, see block_sum).
constexpr int kMRLAThreads = 256;

// 64-bit grid-stride loop: detection-size maps exceed 2^31 elements.
#define MRLA_KERNEL_LOOP(i, n)                                             \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x +         \
                   threadIdx.x;                                            \
       i < (n); i += static_cast<int64_t>(blockDim.x) * gridDim.x)

inline int mrla_blocks(int64_t n) {
  const int64_t blocks = (n + kMRLAThreads - 1) / kMRLAThreads;
  return static_cast<int>(blocks < 65535 ? blocks : 65535);
}

// Memory offset of element (b, c, y, x) of a contiguous (NCHW) or
// channels_last (NHWC) map.
template <bool CL>
__device__ __forceinline__ int64_t mrla_offset(int64_t b, int64_t c,
                                               int64_t y, int64_t x,
                                               int64_t C, int64_t H,
                                               int64_t W) {
  return CL ? ((b * H + y) * W + x) * C + c : ((b * C + c) * H + y) * W + x;
}

// Channel and sample of memory offset n.
template <bool CL>
__device__ __forceinline__ void mrla_unravel(int64_t n, int64_t C, int64_t H,
                                             int64_t W, int64_t* b,
                                             int64_t* c, int64_t* y,
                                             int64_t* x) {
  if (CL) {
    *c = n % C;
    n /= C;
    *x = n % W;
    n /= W;
    *y = n % H;
    *b = n / H;
  } else {
    *x = n % W;
    n /= W;
    *y = n % H;
    n /= H;
    *c = n % C;
    *b = n / C;
  }
}

// Sum of v over the block (blockDim.x == kMRLAThreads); every thread
// gets the result.
template <typename A>
__device__ A mrla_block_sum(A v) {
  __shared__ A buf[kMRLAThreads];
  buf[threadIdx.x] = v;
  __syncthreads();
  for (int s = kMRLAThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) buf[threadIdx.x] += buf[threadIdx.x + s];
    __syncthreads();
  }
  const A r = buf[0];
  __syncthreads();
  return r;
}

#endif  // MRLA_COMMON_CUDA_CUH
