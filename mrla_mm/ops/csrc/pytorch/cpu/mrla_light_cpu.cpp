// MRLA-light core on the CPU: the drivers of the forward, backward and
// statistics ops. Each runs the per-plane kernels
// (csrc/common/cpu/mrla_light_plane.hpp) over the (b, c) planes of NCHW
// maps, a run of planes per thread.
//
// The kernels take NCHW maps only. A channels_last call runs on NCHW
// copies of its maps and its output maps are copied back: the
// channels_last CPU kernels were slower than PyTorch's channels_last ops
// and no default path reached them (docs/ops.md, "C++ layout").
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/mrla_light_operands.hpp"
#include "cpu/mrla_light_plane_variants.hpp"
#include "pytorch_cpp_helper.hpp"
#include "pytorch_device_registry.hpp"

namespace mrla_cpu {
namespace {

template <typename T>
void light_forward(const Tensor& x, const Tensor& weight, const Tensor& gate,
                   const Tensor& lambda, const Tensor& o_prev,
                   const Tensor& scale, const Tensor& shift, Tensor& out,
                   int act, bool add_input) {
  using A = at::opmath_type<T>;
  const Shape s{x.size(0), x.size(1), x.size(2), x.size(3), gate.size(1)};
  const T* xp = x.const_data_ptr<T>();
  // Without o_prev (an empty tensor) the op is the value map alone.
  const bool has_prev = o_prev.numel() > 0;
  const T* op = has_prev ? o_prev.const_data_ptr<T>() : nullptr;
  T* yp = out.mutable_data_ptr<T>();
  const A* w9 = weight.const_data_ptr<A>();
  const A* lam = has_prev ? lambda.const_data_ptr<A>() : nullptr;
  const bool affine = scale.numel() > 0;
  const A* sc = affine ? scale.const_data_ptr<A>() : nullptr;
  const A* sh = affine ? shift.const_data_ptr<A>() : nullptr;
  const std::vector<A> gc = gate_per_channel(gate.const_data_ptr<A>(), s);
  const int64_t hw = s.h * s.w;
  const auto fn =
      pick_plane_forward<T, A>(has_prev, add_input, act == kMRLAGelu);
  const int64_t grain = std::max<int64_t>(1, 16384 / hw);
  const PlaneGeometry<A> geo(s.h, s.w);
  at::parallel_for(0, s.b * s.c, grain, [&](int64_t begin, int64_t end) {
    std::vector<A> frame(framed_size(s.h, s.w), A(0));
    std::vector<A> acc(hw);
    for (int64_t p = begin; p < end; ++p) {
      const int64_t ch = p % s.c;
      LightPlane<T, A> a{xp + p * hw,
                         has_prev ? op + p * hw : nullptr,
                         nullptr,
                         yp + p * hw,
                         nullptr,
                         nullptr,
                         w9 + ch * 9,
                         gc[p],
                         has_prev ? lam[ch] : A(0),
                         affine ? sc[ch] : A(1),
                         affine ? sh[ch] : A(0),
                         &geo};
      fn(a, frame.data(), acc.data());
    }
  });
}

template <typename T>
void light_backward(const Tensor& grad_out, const Tensor& x,
                    const Tensor& weight, const Tensor& gate,
                    const Tensor& lambda, const Tensor& o_prev,
                    const Tensor& norm, Tensor& grad_x, Tensor& grad_o_prev,
                    Tensor& gw_part, Tensor& gg_part, Tensor& gl_part,
                    int act) {
  using A = at::opmath_type<T>;
  const BackwardOperands<T, A> ops(grad_out, x, weight, gate, lambda, o_prev,
                                   grad_x, grad_o_prev, gw_part, gg_part,
                                   gl_part);
  const Shape& s = ops.s;
  const bool has_prev = ops.o_prev != nullptr;
  const int64_t hw = s.h * s.w;
  // Rows a, b, c, center of the norm's gradient coefficients, see
  // LightPlane.
  const bool has_norm = norm.numel() > 0;
  const A* nrm = has_norm ? norm.const_data_ptr<A>() : nullptr;
  const auto fn =
      pick_plane_backward<T, A>(has_prev, act == kMRLAGelu, has_norm);
  const int64_t grain = std::max<int64_t>(1, 16384 / hw);
  at::parallel_for(0, s.b * s.c, grain, [&](int64_t begin, int64_t end) {
    std::vector<A> frame(framed_size(s.h, s.w), A(0));
    std::vector<A> gvframe(framed_size(s.h, s.w), A(0));
    std::vector<A> acc(hw);
    A sums[11];
    for (int64_t p = begin; p < end; ++p) {
      const int64_t ch = p % s.c;
      const LightPlane<T, A> a =
          has_norm ? ops.plane(p, nrm[ch], nrm[s.c + ch], nrm[2 * s.c + ch],
                               nrm[3 * s.c + ch])
                   : ops.plane(p, A(0), A(0), A(0), A(0));
      fn(a, frame.data(), acc.data(), gvframe.data(), sums, false);
      ops.store(p, sums);
    }
  });
}

template <typename T>
void light_stats(const Tensor& x, const Tensor& weight, const Tensor& gate,
                 const Tensor& lambda, const Tensor& o_prev,
                 const Tensor& grad, const Tensor& center, Tensor& stats,
                 int act) {
  using A = at::opmath_type<T>;
  const Shape s{x.size(0), x.size(1), x.size(2), x.size(3), gate.size(1)};
  const bool has_prev = o_prev.numel() > 0, has_grad = grad.numel() > 0;
  const T* xp = x.const_data_ptr<T>();
  const T* op = has_prev ? o_prev.const_data_ptr<T>() : nullptr;
  const T* gp = has_grad ? grad.const_data_ptr<T>() : nullptr;
  const A* w9 = weight.const_data_ptr<A>();
  const A* lam = has_prev ? lambda.const_data_ptr<A>() : nullptr;
  const A* cen = has_grad ? center.const_data_ptr<A>() : nullptr;
  A* out = stats.mutable_data_ptr<A>();
  const std::vector<A> gc = gate_per_channel(gate.const_data_ptr<A>(), s);
  const int64_t hw = s.h * s.w;
  const auto fn =
      pick_plane_stats<T, A>(has_prev, has_grad, act == kMRLAGelu);
  const int64_t grain = std::max<int64_t>(1, 16384 / hw);
  const PlaneGeometry<A> geo(s.h, s.w);
  at::parallel_for(0, s.b * s.c, grain, [&](int64_t begin, int64_t end) {
    std::vector<A> frame(framed_size(s.h, s.w), A(0));
    std::vector<A> acc(hw);
    for (int64_t p = begin; p < end; ++p) {
      const int64_t ch = p % s.c;
      LightPlane<T, A> a{xp + p * hw,
                         has_prev ? op + p * hw : nullptr,
                         has_grad ? gp + p * hw : nullptr,
                         nullptr,
                         nullptr,
                         nullptr,
                         w9 + ch * 9,
                         gc[p],
                         has_prev ? lam[ch] : A(0),
                         A(1),
                         A(0),
                         &geo,
                         A(0),
                         A(0),
                         A(0),
                         has_grad ? cen[ch] : A(0)};
      fn(a, frame.data(), acc.data(), out + 2 * p);
    }
  });
}

}  // namespace
}  // namespace mrla_cpu

void mrla_light_forward_cpu(const Tensor x, const Tensor weight,
                            const Tensor gate, const Tensor lambda,
                            const Tensor o_prev, const Tensor scale,
                            const Tensor shift, Tensor out, int64_t act,
                            bool add_input) {
  if (!x.is_contiguous()) {
    Tensor nchw_out = at::empty_like(out, at::MemoryFormat::Contiguous);
    mrla_light_forward_cpu(x.contiguous(), weight, gate, lambda,
                           o_prev.contiguous(), scale, shift, nchw_out, act,
                           add_input);
    out.copy_(nchw_out);
    return;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "mrla_light_forward_cpu",
      [&] {
        mrla_cpu::light_forward<scalar_t>(x, weight, gate, lambda, o_prev,
                                          scale, shift, out,
                                          static_cast<int>(act), add_input);
      });
}

void mrla_light_backward_cpu(const Tensor grad_out, const Tensor x,
                             const Tensor weight, const Tensor gate,
                             const Tensor lambda, const Tensor o_prev,
                             const Tensor norm, Tensor grad_x,
                             Tensor grad_o_prev, Tensor grad_weight_part,
                             Tensor grad_gate_part, Tensor grad_lambda_part,
                             int64_t act) {
  if (!x.is_contiguous()) {
    Tensor nchw_grad_x = at::empty_like(grad_x, at::MemoryFormat::Contiguous);
    Tensor nchw_grad_o_prev =
        at::empty_like(grad_o_prev, at::MemoryFormat::Contiguous);
    mrla_light_backward_cpu(grad_out.contiguous(), x.contiguous(), weight,
                            gate, lambda, o_prev.contiguous(), norm,
                            nchw_grad_x, nchw_grad_o_prev, grad_weight_part,
                            grad_gate_part, grad_lambda_part, act);
    grad_x.copy_(nchw_grad_x);
    grad_o_prev.copy_(nchw_grad_o_prev);
    return;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "mrla_light_backward_cpu",
      [&] {
        mrla_cpu::light_backward<scalar_t>(
            grad_out, x, weight, gate, lambda, o_prev, norm, grad_x,
            grad_o_prev, grad_weight_part, grad_gate_part, grad_lambda_part,
            static_cast<int>(act));
      });
}

void mrla_light_stats_cpu(const Tensor x, const Tensor weight,
                          const Tensor gate, const Tensor lambda,
                          const Tensor o_prev, const Tensor grad,
                          const Tensor center, Tensor stats, int64_t act) {
  if (!x.is_contiguous()) {
    mrla_light_stats_cpu(x.contiguous(), weight, gate, lambda,
                         o_prev.contiguous(), grad.contiguous(), center,
                         stats, act);
    return;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "mrla_light_stats_cpu",
      [&] {
        mrla_cpu::light_stats<scalar_t>(x, weight, gate, lambda, o_prev,
                                        grad, center, stats,
                                        static_cast<int>(act));
      });
}

void mrla_light_forward_impl(const Tensor x, const Tensor weight,
                             const Tensor gate, const Tensor lambda,
                             const Tensor o_prev, const Tensor scale,
                             const Tensor shift, Tensor out, int64_t act,
                             bool add_input);
void mrla_light_backward_impl(const Tensor grad_out, const Tensor x,
                              const Tensor weight, const Tensor gate,
                              const Tensor lambda, const Tensor o_prev,
                              const Tensor norm, Tensor grad_x,
                              Tensor grad_o_prev, Tensor grad_weight_part,
                              Tensor grad_gate_part, Tensor grad_lambda_part,
                              int64_t act);
void mrla_light_stats_impl(const Tensor x, const Tensor weight,
                           const Tensor gate, const Tensor lambda,
                           const Tensor o_prev, const Tensor grad,
                           const Tensor center, Tensor stats, int64_t act);
REGISTER_DEVICE_IMPL(mrla_light_forward_impl, CPU, mrla_light_forward_cpu);
REGISTER_DEVICE_IMPL(mrla_light_backward_impl, CPU, mrla_light_backward_cpu);
REGISTER_DEVICE_IMPL(mrla_light_stats_impl, CPU, mrla_light_stats_cpu);
