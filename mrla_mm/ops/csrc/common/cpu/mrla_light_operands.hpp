// The operands of the MRLA-light CPU drivers: the maps' shape, the gate
// per (b, c), and a backward call's pointers and its (b, c) planes (shared
// by the core's backward and the fused norm's).
#ifndef MRLA_LIGHT_OPERANDS_HPP
#define MRLA_LIGHT_OPERANDS_HPP

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/mrla_light_plane.hpp"

namespace mrla_cpu {

struct Shape {
  int64_t b, c, h, w, heads;
};

// Per-(b, c) copies of the gate, so the inner loops need no division.
template <typename A>
std::vector<A> gate_per_channel(const A* gate, const Shape& s) {
  const int64_t d = s.c / s.heads;
  std::vector<A> g(s.b * s.c);
  for (int64_t i = 0; i < s.b * s.c; ++i) {
    g[i] = gate[(i / s.c) * s.heads + (i % s.c) / d];
  }
  return g;
}

// The operands of a backward call and their (b, c) planes.
template <typename T, typename A>
struct BackwardOperands {
  Shape s;
  const T* grad;
  const T* x;
  const T* o_prev;  // null without a history term
  T* grad_x;
  T* grad_o;
  A* gw_part;
  A* gg_part;
  A* gl_part;
  const A* w9;
  const A* lambda;
  std::vector<A> gate;  // per (b, c)
  PlaneGeometry<A> geo;

  BackwardOperands(const at::Tensor& grad_out, const at::Tensor& x_,
                   const at::Tensor& weight, const at::Tensor& gate_,
                   const at::Tensor& lambda_, const at::Tensor& o_prev_,
                   at::Tensor& grad_x_, at::Tensor& grad_o_prev,
                   at::Tensor& gw, at::Tensor& gg, at::Tensor& gl)
      : s{x_.size(0), x_.size(1), x_.size(2), x_.size(3), gate_.size(1)},
        grad(grad_out.const_data_ptr<T>()),
        x(x_.const_data_ptr<T>()),
        o_prev(o_prev_.numel() ? o_prev_.const_data_ptr<T>() : nullptr),
        grad_x(grad_x_.mutable_data_ptr<T>()),
        grad_o(o_prev ? grad_o_prev.mutable_data_ptr<T>() : nullptr),
        gw_part(gw.mutable_data_ptr<A>()),
        gg_part(gg.mutable_data_ptr<A>()),
        gl_part(gl.mutable_data_ptr<A>()),
        w9(weight.const_data_ptr<A>()),
        lambda(o_prev ? lambda_.const_data_ptr<A>() : nullptr),
        gate(gate_per_channel(gate_.const_data_ptr<A>(), s)),
        geo(s.h, s.w) {}

  // Plane p = b * C + c of a contiguous map, with the coefficients of a
  // train-mode norm after the core (see LightPlane; zeros without one).
  LightPlane<T, A> plane(int64_t p, A na, A nb, A nc, A center) const {
    const int64_t hw = s.h * s.w, ch = p % s.c;
    return {x + p * hw,
            o_prev ? o_prev + p * hw : nullptr,
            grad + p * hw,
            nullptr,
            grad_x + p * hw,
            o_prev ? grad_o + p * hw : nullptr,
            w9 + ch * 9,
            gate[p],
            o_prev ? lambda[ch] : A(0),
            A(1),
            A(0),
            &geo,
            na,
            nb,
            nc,
            center};
  }

  // Plane p's sums from plane_backward: gate, lambda, nine weight taps.
  void store(int64_t p, const A* sums) const {
    gg_part[p] = sums[0];
    gl_part[p] = sums[1];
    std::copy(sums + 2, sums + 11, gw_part + p * 9);
  }
};

}  // namespace mrla_cpu

#endif  // MRLA_LIGHT_OPERANDS_HPP
