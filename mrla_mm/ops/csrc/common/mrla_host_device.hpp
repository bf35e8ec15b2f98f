// MRLA_HOST_DEVICE: inline functions that the CPU kernels and the CUDA
// kernels both call (the per-pixel math headers).
#ifndef MRLA_HOST_DEVICE_HPP
#define MRLA_HOST_DEVICE_HPP

#ifdef __CUDACC__
#define MRLA_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define MRLA_HOST_DEVICE inline
#endif

#endif  // MRLA_HOST_DEVICE_HPP
