// Runtime choice of the CPU kernels' instruction set.
//
// The extension is compiled for the baseline x86-64 target, so that it runs
// on every CPU. Its hot per-plane functions are compiled a second time for
// AVX2 + FMA (GCC/Clang function targets) and chosen at run time when the
// CPU has them, as PyTorch chooses its own CPU kernels.
#ifndef MRLA_CPU_TARGET_HPP
#define MRLA_CPU_TARGET_HPP

#if (defined(__GNUC__) || defined(__clang__)) && \
    (defined(__x86_64__) || defined(__i386__))
#define MRLA_HAS_AVX2_TARGET 1
#define MRLA_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define MRLA_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define MRLA_HAS_AVX2_TARGET 0
#define MRLA_TARGET_AVX2
#define MRLA_ALWAYS_INLINE inline
#endif

// Whether the AVX2 + FMA variants may run on this CPU.
inline bool mrla_cpu_has_avx2() {
#if MRLA_HAS_AVX2_TARGET
  static const bool has =
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
#else
  return false;
#endif
}

#endif  // MRLA_CPU_TARGET_HPP
