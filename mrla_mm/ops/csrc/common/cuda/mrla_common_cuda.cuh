// Indexing and reduction helpers of the MRLA CUDA kernels.
#ifndef MRLA_COMMON_CUDA_CUH
#define MRLA_COMMON_CUDA_CUH

#include <c10/util/Exception.h>

#include <cstdint>

// Threads per block of the MRLA kernels (a power of two, see block_sum).
constexpr int kMRLAThreads = 256;

// 64-bit grid-stride loop: detection-size maps exceed 2^31 elements.
#define MRLA_KERNEL_LOOP(i, n)                                          \
  for (int64_t i =                                                      \
           static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; \
       i < (n); i += static_cast<int64_t>(blockDim.x) * gridDim.x)

inline int mrla_blocks(int64_t n) {
  const int64_t blocks = (n + kMRLAThreads - 1) / kMRLAThreads;
  return static_cast<int>(blocks < 65535 ? blocks : 65535);
}

// Plane (b, c) of a contiguous (NCHW) or channels_last (NHWC) [B, C, H, W]
// map: pixel i = y * W + x lies at memory offset base + i * pix, and a row
// is row elements apart. Element offsets are 64-bit (detection-size maps
// exceed 2^31 elements); pixel indices within a plane are 32-bit, so that
// no element pays a 64-bit division.
struct MRLAPlane {
  int64_t base, pix, row;
};

template <bool CL>
__device__ __forceinline__ MRLAPlane mrla_plane(int64_t b, int64_t c, int64_t C,
                                                int H, int W) {
  const int64_t HW = static_cast<int64_t>(H) * W;
  MRLAPlane p;
  p.base = CL ? b * HW * C + c : (b * C + c) * HW;
  p.pix = CL ? C : 1;
  p.row = p.pix * W;
  return p;
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

// The kernels run over tiles of the planes, so that a few large planes
// still fill the GPU and a channels_last map is read in coalesced rows. A
// tile is a slice of L items of one sample and, NCHW, one channel (threads
// along the items) or, channels_last, kMRLATileChannels neighbouring
// channels (a warp along the channels, the block's warps along the
// items). An item is a run of `run` pixels of one row (the last of a row
// may be shorter); with run 1 it is a pixel. Tiles of a plane reduction
// write partial sums part[(b * C + c) * S + slice][K]; the slices are then
// added in a fixed order, so the results do not depend on scheduling.
constexpr int kMRLATileChannels = 32;

struct MRLATiling {
  int64_t C;
  int H, W, HW;
  int run, R, items;  // R runs of `run` pixels per row, H * R items a plane
  int64_t groups;  // channel groups per sample: C (NCHW) or C / 32 rounded up
  int S, L;        // S slices of L items (the last may be shorter)
};

// Tiles for [B, C, H, W] maps on the current GPU: enough slices for about
// four waves of blocks, each thread taking >= 8 pixels.
inline MRLATiling mrla_tiling(int64_t B, int64_t C, int64_t H, int64_t W,
                              bool cl, int run = 1) {
  const int64_t HW = H * W;
  // Pixel loops run in 32-bit and step past the plane by < a block.
  TORCH_CHECK(HW <= INT32_MAX - kMRLAThreads,
              "the MRLA CUDA kernels take planes of fewer than 2^31 - 256 "
              "pixels, got H=",
              H, ", W=", W);
  int device = 0, sms = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  const int64_t R = (W + run - 1) / run, items = H * R;
  const int64_t groups =
      cl ? (C + kMRLATileChannels - 1) / kMRLATileChannels : C;
  const int64_t rows = cl ? kMRLAThreads / kMRLATileChannels : kMRLAThreads;
  const int64_t wanted = 4 * static_cast<int64_t>(sms) * 2048 / kMRLAThreads;
  const int64_t by_gpu = (wanted + B * groups - 1) / (B * groups);
  const int64_t per_slice = rows * ((8 + run - 1) / run);
  const int64_t by_work = (items + per_slice - 1) / per_slice;
  int64_t S = by_gpu < by_work ? by_gpu : by_work;
  S = S < 1 ? 1 : S;
  const int64_t L = (items + S - 1) / S;
  return {C,
          static_cast<int>(H),
          static_cast<int>(W),
          static_cast<int>(HW),
          run,
          static_cast<int>(R),
          static_cast<int>(items),
          groups,
          static_cast<int>((items + L - 1) / L),
          static_cast<int>(L)};
}

// Pixels of the plane's items before item k.
__host__ __device__ __forceinline__ int mrla_pixels_before(
    const MRLATiling& t, int k) {
  const int y = k / t.R, x = (k - y * t.R) * t.run;
  return y * t.W + (x < t.W ? x : t.W);
}

// Pixels of slice s of a plane.
__host__ __device__ __forceinline__ int mrla_slice_pixels(const MRLATiling& t,
                                                          int s) {
  const int begin = s * t.L;
  const int end = begin < t.items - t.L ? begin + t.L : t.items;
  return mrla_pixels_before(t, end) - mrla_pixels_before(t, begin);
}

inline int mrla_tile_blocks(const MRLATiling& t, int64_t B) {
  return static_cast<int>(B * t.groups * t.S);
}

// This thread's part of the block's tile: items first, first + step, ...
// below end of sample b, channel c (active: c exists).
struct MRLATile {
  int64_t b, c;
  int slice, begin, end, first, step;
  bool active;
};

template <bool CL>
__device__ __forceinline__ MRLATile mrla_tile(const MRLATiling& t) {
  MRLATile r;
  const int64_t group = blockIdx.x / t.S;
  r.slice = blockIdx.x % t.S;
  r.b = group / t.groups;
  r.begin = r.slice * t.L;
  r.end = r.begin < t.items - t.L ? r.begin + t.L : t.items;
  if (CL) {
    r.c = (group % t.groups) * kMRLATileChannels +
          threadIdx.x % kMRLATileChannels;
    r.first = r.begin + threadIdx.x / kMRLATileChannels;
    r.step = blockDim.x / kMRLATileChannels;
    r.active = r.c < t.C;
  } else {
    r.c = group % t.groups;
    r.first = r.begin + threadIdx.x;
    r.step = blockDim.x;
    r.active = true;
  }
  return r;
}

// Sum of v over the threads of the tile's channel (the whole block for
// NCHW, one column of warps for channels_last), in a fixed order; every
// thread gets its channel's result.
template <bool CL, typename A>
__device__ A mrla_tile_sum(A v) {
  if (!CL) return mrla_block_sum(v);
  __shared__ A buf[kMRLAThreads];
  buf[threadIdx.x] = v;
  __syncthreads();
  A r = 0;
  for (int k = threadIdx.x % kMRLATileChannels; k < kMRLAThreads;
       k += kMRLATileChannels) {
    r += buf[k];
  }
  __syncthreads();
  return r;
}

// Whether this thread writes its channel's partial sums.
template <bool CL>
__device__ __forceinline__ bool mrla_tile_writes(const MRLATile& t) {
  return t.active && threadIdx.x < (CL ? kMRLATileChannels : 1);
}

// Index of the tile's K partial sums in part [B * C, S, K].
__device__ __forceinline__ int64_t mrla_tile_part(const MRLATile& t,
                                                  const MRLATiling& tiling,
                                                  int64_t K) {
  return ((t.b * tiling.C + t.c) * tiling.S + t.slice) * K;
}

// out[r, k] = sum over s of part[r, s, k] / divisor, slices in order.
template <typename A, typename O>
__global__ void mrla_sum_slices_cuda_kernel(const A* part, O* out, int64_t rows,
                                            int64_t S, int64_t K, A divisor) {
  MRLA_KERNEL_LOOP(n, rows * K) {
    const int64_t r = n / K, k = n % K;
    A acc = 0;
    for (int64_t s = 0; s < S; ++s) acc += part[(r * S + s) * K + k];
    out[n] = static_cast<O>(acc / divisor);
  }
}

template <typename A, typename O>
void mrla_sum_slices(const A* part, O* out, int64_t rows, int64_t S, int64_t K,
                     A divisor, cudaStream_t stream) {
  mrla_sum_slices_cuda_kernel<<<mrla_blocks(rows * K), kMRLAThreads, 0,
                                stream>>>(part, out, rows, S, K, divisor);
}

#endif  // MRLA_COMMON_CUDA_CUH
