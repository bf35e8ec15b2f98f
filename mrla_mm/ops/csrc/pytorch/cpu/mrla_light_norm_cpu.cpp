// x + batch_norm(MRLA-light core) on the CPU, each direction as one
// kernel over blocks of neighbouring channels: the statistics of a
// block's planes, then its outputs from the scratch those left, so each
// plane is convolved once and each map read once (the per-plane kernels:
// csrc/common/cpu/mrla_light_plane.hpp). NCHW maps only; a channels_last
// call runs on NCHW copies, as in mrla_light_cpu.cpp.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/mrla_light_operands.hpp"
#include "cpu/mrla_light_plane_variants.hpp"
#include "mrla_norm.hpp"
#include "pytorch_cpp_helper.hpp"
#include "pytorch_device_registry.hpp"

namespace mrla_cpu {
namespace {

// Channels per block of the norm kernels: about 4096 pixels of a sample,
// and blocks for every thread.
inline int64_t channel_block(const Shape& s) {
  return std::max<int64_t>(
      1, std::min<int64_t>(4096 / (s.h * s.w),
                           s.c / (4 * int64_t(at::get_num_threads()))));
}

// y = x + batch_norm(z) with the batch's statistics on contiguous maps, a
// block of neighbouring channels at a time: the moments of the block's
// planes, each plane's framed x and z kept in scratch, then the channels'
// statistics and affine map, then y from the scratch. Each map is read
// once and z computed once (a statistics pass then an output pass read
// both maps twice and convolve twice).
template <typename T>
void light_norm_forward(const Tensor& x, const Tensor& weight,
                        const Tensor& gate, const Tensor& lambda,
                        const Tensor& o_prev, const Tensor& gamma,
                        const Tensor& beta, double eps, Tensor& out,
                        Tensor& mean, Tensor& invstd, Tensor& var, int act) {
  using A = at::opmath_type<T>;
  const Shape s{x.size(0), x.size(1), x.size(2), x.size(3), gate.size(1)};
  const bool has_prev = o_prev.numel() > 0;
  const T* xp = x.const_data_ptr<T>();
  const T* op = has_prev ? o_prev.const_data_ptr<T>() : nullptr;
  T* yp = out.mutable_data_ptr<T>();
  const A* w9 = weight.const_data_ptr<A>();
  const A* lam = has_prev ? lambda.const_data_ptr<A>() : nullptr;
  const A* gam = gamma.const_data_ptr<A>();
  const A* bet = beta.const_data_ptr<A>();
  A* mean_out = mean.mutable_data_ptr<A>();
  A* invstd_out = invstd.mutable_data_ptr<A>();
  double* var_out = var.mutable_data_ptr<double>();
  const std::vector<A> gc = gate_per_channel(gate.const_data_ptr<A>(), s);
  const auto stats_fn =
      pick_plane_stats<T, A>(has_prev, false, act == kMRLAGelu);
  const auto output_fn = mrla_cpu_has_avx2()
                             ? &plane_norm_output_avx2<T, A>
                             : &plane_norm_output_default<T, A>;
  const int64_t hw = s.h * s.w, frame_n = framed_size(s.h, s.w);
  const PlaneGeometry<A> geo(s.h, s.w);
  const int64_t block = channel_block(s);
  const int64_t blocks = (s.c + block - 1) / block;
  auto plane = [&](int64_t p, A scale, A shift) -> LightPlane<T, A> {
    const int64_t ch = p % s.c;
    return {xp + p * hw, has_prev ? op + p * hw : nullptr, nullptr,
            yp + p * hw, nullptr, nullptr, w9 + ch * 9, gc[p],
            has_prev ? lam[ch] : A(0), scale, shift, &geo};
  };
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<A> frames(s.b * block * frame_n, A(0));
    std::vector<A> values(s.b * block * hw), moments(s.b * block * 2);
    std::vector<A> scale(block), shift(block);
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t c0 = blk * block, cn = std::min(block, s.c - c0);
      for (int64_t b = 0; b < s.b; ++b) {
        for (int64_t k = 0; k < cn; ++k) {
          const int64_t slot = b * block + k;
          stats_fn(plane(b * s.c + c0 + k, A(1), A(0)),
                   frames.data() + slot * frame_n, values.data() + slot * hw,
                   moments.data() + 2 * slot);
        }
      }
      for (int64_t k = 0; k < cn; ++k) {
        const int64_t ch = c0 + k;
        auto sum = [&](auto f) {
          double t = 0;
          for (int64_t b = 0; b < s.b; ++b) {
            const A* m = moments.data() + 2 * (b * block + k);
            t += f(double(m[0]), double(m[1]));
          }
          return t;
        };
        double mu = 0, sigma2 = 0;
        mrla_norm_moments(sum, double(s.b), double(hw), mu, sigma2);
        const A m = A(mu), inv = A(mrla_norm_invstd(sigma2, eps));
        mrla_norm_affine(gam[ch], bet[ch], m, inv, scale[k], shift[k]);
        mean_out[ch] = m;
        invstd_out[ch] = inv;
        var_out[ch] = sigma2;
      }
      for (int64_t b = 0; b < s.b; ++b) {
        for (int64_t k = 0; k < cn; ++k) {
          const int64_t slot = b * block + k;
          output_fn(plane(b * s.c + c0 + k, scale[k], shift[k]),
                    frames.data() + slot * frame_n,
                    values.data() + slot * hw);
        }
      }
    }
  });
}

// The backward of x + batch_norm(z) on contiguous maps, a block of
// neighbouring channels at a time: the gradient statistics of the block's
// planes, then their gradients while the planes of x and their value maps
// are still in scratch (one 3x3 convolution per plane instead of two, and
// the maps' second reads from the cache). Blocks of several small planes
// keep the reads of each sample one run of memory.
template <typename T>
void light_norm_backward(const Tensor& grad_out, const Tensor& x,
                         const Tensor& weight, const Tensor& gate,
                         const Tensor& lambda, const Tensor& o_prev,
                         const Tensor& gamma, const Tensor& mean,
                         const Tensor& invstd, bool batch_stats,
                         Tensor& grad_x, Tensor& grad_o_prev,
                         Tensor& gw_part, Tensor& gg_part, Tensor& gl_part,
                         Tensor& sums, int act) {
  using A = at::opmath_type<T>;
  const BackwardOperands<T, A> ops(grad_out, x, weight, gate, lambda, o_prev,
                                   grad_x, grad_o_prev, gw_part, gg_part,
                                   gl_part);
  const Shape& s = ops.s;
  const bool has_prev = ops.o_prev != nullptr;
  A* sp = sums.mutable_data_ptr<A>();
  const A* gam = gamma.const_data_ptr<A>();
  const A* cen = mean.const_data_ptr<A>();
  const A* inv = invstd.const_data_ptr<A>();
  const bool gelu = act == kMRLAGelu;
  const auto stats_fn = pick_plane_stats<T, A>(has_prev, true, gelu);
  const auto backward_fn = pick_plane_backward<T, A>(has_prev, gelu, true);
  const int64_t hw = s.h * s.w, frame_n = framed_size(s.h, s.w);
  const A count = A(s.b * hw);
  const int64_t block = channel_block(s);
  const int64_t blocks = (s.c + block - 1) / block;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    // Each plane of the block keeps its framed input and value map.
    std::vector<A> frames(s.b * block * frame_n, A(0));
    std::vector<A> values(s.b * block * hw), gvframe(frame_n, A(0));
    std::vector<A> sum_g(block), sum_gz(block);
    A moments[2], part[11];
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t c0 = blk * block, cn = std::min(block, s.c - c0);
      std::fill(sum_g.begin(), sum_g.end(), A(0));
      std::fill(sum_gz.begin(), sum_gz.end(), A(0));
      for (int64_t b = 0; b < s.b; ++b) {
        for (int64_t k = 0; k < cn; ++k) {
          const int64_t ch = c0 + k, slot = b * block + k;
          stats_fn(ops.plane(b * s.c + ch, A(0), A(0), A(0), cen[ch]),
                   frames.data() + slot * frame_n, values.data() + slot * hw,
                   moments);
          sum_g[k] += moments[0];
          sum_gz[k] += moments[1];
        }
      }
      for (int64_t b = 0; b < s.b; ++b) {
        for (int64_t k = 0; k < cn; ++k) {
          const int64_t ch = c0 + k, slot = b * block + k;
          const A na = gam[ch] * inv[ch];
          A nb = 0, nc = 0;
          if (batch_stats) {
            mrla_norm_batch_terms(na, inv[ch], sum_g[k], sum_gz[k], count,
                                  nb, nc);
          }
          backward_fn(ops.plane(b * s.c + ch, na, nb, nc, cen[ch]),
                      frames.data() + slot * frame_n,
                      values.data() + slot * hw, gvframe.data(), part,
                      true);
          ops.store(b * s.c + ch, part);
        }
      }
      for (int64_t k = 0; k < cn; ++k) {
        sp[2 * (c0 + k)] = sum_g[k];
        sp[2 * (c0 + k) + 1] = sum_gz[k];
      }
    }
  });
}

}  // namespace
}  // namespace mrla_cpu

void mrla_light_norm_forward_cpu(const Tensor x, const Tensor weight,
                                 const Tensor gate, const Tensor lambda,
                                 const Tensor o_prev, const Tensor gamma,
                                 const Tensor beta, double eps, Tensor out,
                                 Tensor mean, Tensor invstd, Tensor var,
                                 int64_t act) {
  if (!x.is_contiguous()) {
    Tensor nchw_out = at::empty_like(out, at::MemoryFormat::Contiguous);
    mrla_light_norm_forward_cpu(x.contiguous(), weight, gate, lambda,
                                o_prev.contiguous(), gamma, beta, eps,
                                nchw_out, mean, invstd, var, act);
    out.copy_(nchw_out);
    return;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(),
      "mrla_light_norm_forward_cpu", [&] {
        mrla_cpu::light_norm_forward<scalar_t>(
            x, weight, gate, lambda, o_prev, gamma, beta, eps, out, mean,
            invstd, var, static_cast<int>(act));
      });
}

void mrla_light_norm_backward_cpu(
    const Tensor grad_out, const Tensor x, const Tensor weight,
    const Tensor gate, const Tensor lambda, const Tensor o_prev,
    const Tensor gamma, const Tensor mean, const Tensor invstd,
    bool batch_stats, Tensor grad_x, Tensor grad_o_prev,
    Tensor grad_weight_part, Tensor grad_gate_part, Tensor grad_lambda_part,
    Tensor sums, int64_t act) {
  if (!x.is_contiguous()) {
    Tensor nchw_grad_x = at::empty_like(grad_x, at::MemoryFormat::Contiguous);
    Tensor nchw_grad_o_prev =
        at::empty_like(grad_o_prev, at::MemoryFormat::Contiguous);
    mrla_light_norm_backward_cpu(
        grad_out.contiguous(), x.contiguous(), weight, gate, lambda,
        o_prev.contiguous(), gamma, mean, invstd, batch_stats, nchw_grad_x,
        nchw_grad_o_prev, grad_weight_part, grad_gate_part, grad_lambda_part,
        sums, act);
    grad_x.copy_(nchw_grad_x);
    grad_o_prev.copy_(nchw_grad_o_prev);
    return;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(),
      "mrla_light_norm_backward_cpu", [&] {
        mrla_cpu::light_norm_backward<scalar_t>(
            grad_out, x, weight, gate, lambda, o_prev, gamma, mean, invstd,
            batch_stats, grad_x, grad_o_prev, grad_weight_part,
            grad_gate_part, grad_lambda_part, sums, static_cast<int>(act));
      });
}

void mrla_light_norm_forward_impl(const Tensor x, const Tensor weight,
                                  const Tensor gate, const Tensor lambda,
                                  const Tensor o_prev, const Tensor gamma,
                                  const Tensor beta, double eps, Tensor out,
                                  Tensor mean, Tensor invstd, Tensor var,
                                  int64_t act);
void mrla_light_norm_backward_impl(
    const Tensor grad_out, const Tensor x, const Tensor weight,
    const Tensor gate, const Tensor lambda, const Tensor o_prev,
    const Tensor gamma, const Tensor mean, const Tensor invstd,
    bool batch_stats, Tensor grad_x, Tensor grad_o_prev,
    Tensor grad_weight_part, Tensor grad_gate_part, Tensor grad_lambda_part,
    Tensor sums, int64_t act);
REGISTER_DEVICE_IMPL(mrla_light_norm_backward_impl, CPU,
                     mrla_light_norm_backward_cpu);
REGISTER_DEVICE_IMPL(mrla_light_norm_forward_impl, CPU,
                     mrla_light_norm_forward_cpu);
