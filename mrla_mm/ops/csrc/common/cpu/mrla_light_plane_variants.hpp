// The per-plane kernels of mrla_light_plane.hpp as functions the drivers
// call: each option set (history term, residual, GELU, norm, ...) is a
// compile-time specialisation, compiled for baseline x86-64 and a second
// time for AVX2 + FMA, and pick_plane_* returns the one for a call's
// options and this CPU (mrla_cpu_target.hpp).
#ifndef MRLA_LIGHT_PLANE_VARIANTS_HPP
#define MRLA_LIGHT_PLANE_VARIANTS_HPP

#include <type_traits>

#include "cpu/mrla_light_plane.hpp"
#include "cpu/mrla_cpu_target.hpp"

namespace mrla_cpu {

template <typename T, typename A>
using PlaneForwardFn = void (*)(const LightPlane<T, A>&, A*, A*);
template <typename T, typename A>
using PlaneBackwardFn = void (*)(const LightPlane<T, A>&, A*, A*, A*, A*,
                                 bool);
template <typename T, typename A>
using PlaneStatsFn = void (*)(const LightPlane<T, A>&, A*, A*, A*);

template <typename T, typename A, bool P, bool I, bool G>
void plane_forward_default(const LightPlane<T, A>& a, A* frame, A* acc) {
  plane_forward<T, A, P, I, G>(a, frame, acc);
}
template <typename T, typename A, bool P, bool I, bool G>
MRLA_TARGET_AVX2 void plane_forward_avx2(const LightPlane<T, A>& a, A* frame,
                                         A* acc) {
  plane_forward<T, A, P, I, G>(a, frame, acc);
}
template <typename T, typename A, bool P, bool G, bool N>
void plane_backward_default(const LightPlane<T, A>& a, A* frame, A* acc,
                            A* gvframe, A* sums, bool filled) {
  plane_backward<T, A, P, G, N>(a, frame, acc, gvframe, sums, filled);
}
template <typename T, typename A, bool P, bool G, bool N>
MRLA_TARGET_AVX2 void plane_backward_avx2(const LightPlane<T, A>& a, A* frame,
                                          A* acc, A* gvframe, A* sums,
                                          bool filled) {
  plane_backward<T, A, P, G, N>(a, frame, acc, gvframe, sums, filled);
}
template <typename T, typename A, bool P, bool R, bool G>
void plane_stats_default(const LightPlane<T, A>& a, A* frame, A* acc,
                         A* out2) {
  plane_stats<T, A, P, R, G>(a, frame, acc, out2);
}
template <typename T, typename A, bool P, bool R, bool G>
MRLA_TARGET_AVX2 void plane_stats_avx2(const LightPlane<T, A>& a, A* frame,
                                       A* acc, A* out2) {
  plane_stats<T, A, P, R, G>(a, frame, acc, out2);
}

template <typename T, typename A>
void plane_norm_output_default(const LightPlane<T, A>& a, const A* frame,
                               const A* acc) {
  plane_norm_output<T, A>(a, frame, acc);
}
template <typename T, typename A>
MRLA_TARGET_AVX2 void plane_norm_output_avx2(const LightPlane<T, A>& a,
                                             const A* frame, const A* acc) {
  plane_norm_output<T, A>(a, frame, acc);
}

// Calls f with std::true_type or std::false_type: a runtime flag as a
// template argument.
template <typename F>
void with_flag(bool flag, F&& f) {
  if (flag) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

// with_flag for three flags at once.
template <typename F>
void with_flags(bool a, bool b, bool c, F&& f) {
  with_flag(a, [&](auto x) {
    with_flag(b, [&](auto y) { with_flag(c, [&](auto z) { f(x, y, z); }); });
  });
}

template <typename T, typename A>
PlaneForwardFn<T, A> pick_plane_forward(bool has_prev, bool add_input,
                                        bool gelu) {
  PlaneForwardFn<T, A> fn = nullptr;
  const bool avx2 = mrla_cpu_has_avx2();
  with_flags(has_prev, add_input, gelu, [&](auto p, auto i, auto g) {
    constexpr bool P = decltype(p)::value, I = decltype(i)::value,
                   G = decltype(g)::value;
    fn = avx2 ? &plane_forward_avx2<T, A, P, I, G>
              : &plane_forward_default<T, A, P, I, G>;
  });
  return fn;
}

template <typename T, typename A>
PlaneBackwardFn<T, A> pick_plane_backward(bool has_prev, bool gelu,
                                          bool norm) {
  PlaneBackwardFn<T, A> fn = nullptr;
  const bool avx2 = mrla_cpu_has_avx2();
  with_flags(has_prev, gelu, norm, [&](auto p, auto g, auto n) {
    constexpr bool P = decltype(p)::value, G = decltype(g)::value,
                   N = decltype(n)::value;
    fn = avx2 ? &plane_backward_avx2<T, A, P, G, N>
              : &plane_backward_default<T, A, P, G, N>;
  });
  return fn;
}

template <typename T, typename A>
PlaneStatsFn<T, A> pick_plane_stats(bool has_prev, bool has_grad,
                                    bool gelu) {
  PlaneStatsFn<T, A> fn = nullptr;
  const bool avx2 = mrla_cpu_has_avx2();
  with_flags(has_prev, has_grad, gelu, [&](auto p, auto r, auto g) {
    constexpr bool P = decltype(p)::value, R = decltype(r)::value,
                   G = decltype(g)::value;
    fn = avx2 ? &plane_stats_avx2<T, A, P, R, G>
              : &plane_stats_default<T, A, P, R, G>;
  });
  return fn;
}

}  // namespace mrla_cpu

#endif  // MRLA_LIGHT_PLANE_VARIANTS_HPP
