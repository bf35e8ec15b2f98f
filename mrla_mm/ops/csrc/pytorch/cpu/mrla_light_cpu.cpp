// MRLA-light core on the CPU: one pass over the feature map per direction.
//
// Contiguous (NCHW) maps are processed one (b, c) plane at a time, the
// rows vectorised along W. channels_last maps are processed in tiles of
// one sample and a cache line of channels, vectorised along C. The
// backward keeps the value gradient of one plane / tile in a scratch
// buffer that stays in cache, so grad_x, the weight gradient and the gate
// and lambda sums are produced while the tile is hot. Accumulation is in
// float (double for double maps).
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "mrla_act.hpp"
#include "pytorch_cpp_helper.hpp"
#include "pytorch_device_registry.hpp"

namespace {

// acc[x] += w0 * in[x - 1] + w1 * in[x] + w2 * in[x + 1], zero padded.
template <typename T, typename A>
inline void row_taps(A* acc, const T* in, int64_t w, A w0, A w1, A w2) {
  if (w == 1) {
    acc[0] += w1 * A(in[0]);
    return;
  }
  acc[0] += w1 * A(in[0]) + w2 * A(in[1]);
  for (int64_t i = 1; i < w - 1; ++i) {
    acc[i] += w0 * A(in[i - 1]) + w1 * A(in[i]) + w2 * A(in[i + 1]);
  }
  acc[w - 1] += w0 * A(in[w - 2]) + w1 * A(in[w - 1]);
}

// Depthwise 3x3 convolution of one row y of a plane, into acc[0, w).
template <typename T, typename A>
inline void plane_conv_row(A* acc, const T* plane, const A* w9, int64_t y,
                           int64_t h, int64_t w) {
  std::fill(acc, acc + w, A(0));
  for (int64_t i = 0; i < 3; ++i) {
    const int64_t yy = y + i - 1;
    if (yy < 0 || yy >= h) continue;
    row_taps(acc, plane + yy * w, w, w9[3 * i], w9[3 * i + 1], w9[3 * i + 2]);
  }
}

struct Shape {
  int64_t b, c, h, w, heads;
};

// Channels of one channels_last tile: one 64-byte cache line.
template <typename T>
constexpr int64_t tile_channels() {
  return std::max<int64_t>(1, 64 / static_cast<int64_t>(sizeof(T)));
}

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

// [C, 9] -> [9, C], so channels_last taps read the weights contiguously.
template <typename A>
std::vector<A> taps_major(const A* w9, int64_t c) {
  std::vector<A> t(9 * c);
  for (int64_t ch = 0; ch < c; ++ch) {
    for (int64_t k = 0; k < 9; ++k) t[k * c + ch] = w9[ch * 9 + k];
  }
  return t;
}

template <typename T>
void light_forward(const Tensor& x, const Tensor& weight, const Tensor& gate,
                   const Tensor& lambda, const Tensor& o_prev,
                   const Tensor& scale, const Tensor& shift, Tensor& out,
                   int act, bool add_input, bool cl) {
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

  auto epilogue = [&](A v, int64_t bc, int64_t ch, int64_t off) {
    A r = gc[bc] * mrla_act(v, act);
    if (has_prev) r += lam[ch] * A(op[off]);
    if (affine) r = r * sc[ch] + sh[ch];
    if (add_input) r += A(xp[off]);
    return static_cast<T>(r);
  };

  if (!cl) {
    const int64_t grain = std::max<int64_t>(1, 16384 / hw);
    at::parallel_for(0, s.b * s.c, grain, [&](int64_t begin, int64_t end) {
      std::vector<A> acc(s.w);
      for (int64_t p = begin; p < end; ++p) {
        const int64_t ch = p % s.c;
        const T* xpl = xp + p * hw;
        for (int64_t y = 0; y < s.h; ++y) {
          plane_conv_row(acc.data(), xpl, w9 + ch * 9, y, s.h, s.w);
          const int64_t row = p * hw + y * s.w;
          for (int64_t i = 0; i < s.w; ++i) {
            yp[row + i] = epilogue(acc[i], p, ch, row + i);
          }
        }
      }
    });
    return;
  }
  constexpr int64_t kTile = tile_channels<T>();
  const int64_t tiles = (s.c + kTile - 1) / kTile;
  const std::vector<A> wt = taps_major(w9, s.c);
  // Full tiles get a compile-time width, so the channel loops vectorise.
  auto run_tile = [&](auto width, int64_t b, int64_t c0) {
    const int64_t cc = width;
    A acc[kTile];
    {
      const int64_t base = b * hw * s.c + c0;
      for (int64_t y = 0; y < s.h; ++y) {
        for (int64_t x0 = 0; x0 < s.w; ++x0) {
          std::fill(acc, acc + kTile, A(0));
          for (int64_t i = 0; i < 3; ++i) {
            const int64_t yy = y + i - 1;
            if (yy < 0 || yy >= s.h) continue;
            for (int64_t j = 0; j < 3; ++j) {
              const int64_t xx = x0 + j - 1;
              if (xx < 0 || xx >= s.w) continue;
              const T* src = xp + base + (yy * s.w + xx) * s.c;
              const A* wk = wt.data() + (3 * i + j) * s.c + c0;
              for (int64_t c = 0; c < cc; ++c) acc[c] += wk[c] * A(src[c]);
            }
          }
          const int64_t off = base + (y * s.w + x0) * s.c;
          for (int64_t c = 0; c < cc; ++c) {
            yp[off + c] = epilogue(acc[c], b * s.c + c0 + c, c0 + c, off + c);
          }
        }
      }
    }
  };
  at::parallel_for(0, s.b * tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / tiles, c0 = (t % tiles) * kTile;
      if (c0 + kTile <= s.c) {
        run_tile(std::integral_constant<int64_t, kTile>(), b, c0);
      } else {
        run_tile(s.c - c0, b, c0);
      }
    }
  });
}

template <typename T>
void light_backward(const Tensor& grad_out, const Tensor& x,
                    const Tensor& weight, const Tensor& gate,
                    const Tensor& lambda, const Tensor& o_prev,
                    Tensor& grad_x, Tensor& grad_o_prev, Tensor& gw_part,
                    Tensor& gg_part, Tensor& gl_part, int act, bool cl) {
  using A = at::opmath_type<T>;
  const Shape s{x.size(0), x.size(1), x.size(2), x.size(3), gate.size(1)};
  const T* gp = grad_out.const_data_ptr<T>();
  const T* xp = x.const_data_ptr<T>();
  const bool has_prev = o_prev.numel() > 0;
  const T* op = has_prev ? o_prev.const_data_ptr<T>() : nullptr;
  T* gxp = grad_x.mutable_data_ptr<T>();
  T* gop = has_prev ? grad_o_prev.mutable_data_ptr<T>() : nullptr;
  A* gwp = gw_part.mutable_data_ptr<A>();
  A* ggp = gg_part.mutable_data_ptr<A>();
  A* glp = gl_part.mutable_data_ptr<A>();
  const A* w9 = weight.const_data_ptr<A>();
  const A* lam = has_prev ? lambda.const_data_ptr<A>() : nullptr;
  const std::vector<A> gc = gate_per_channel(gate.const_data_ptr<A>(), s);
  const int64_t hw = s.h * s.w;

  if (!cl) {
    const int64_t grain = std::max<int64_t>(1, 16384 / hw);
    at::parallel_for(0, s.b * s.c, grain, [&](int64_t begin, int64_t end) {
      std::vector<A> acc(s.w), gv(hw);
      for (int64_t p = begin; p < end; ++p) {
        const int64_t ch = p % s.c;
        const A* wk = w9 + ch * 9;
        const T* xpl = xp + p * hw;
        A sum_gate = 0, sum_lambda = 0;
        // Value gradient of the plane, gate and lambda sums, grad_o_prev.
        for (int64_t y = 0; y < s.h; ++y) {
          plane_conv_row(acc.data(), xpl, wk, y, s.h, s.w);
          const int64_t row = p * hw + y * s.w;
          const T* g = gp + row;
          A* gvr = gv.data() + y * s.w;
          if (act == kMRLAIdentity) {
#pragma omp simd reduction(+ : sum_gate)
            for (int64_t i = 0; i < s.w; ++i) {
              sum_gate += A(g[i]) * acc[i];
              gvr[i] = A(g[i]) * gc[p];
            }
          } else {
            for (int64_t i = 0; i < s.w; ++i) {
              sum_gate += A(g[i]) * mrla_act(acc[i], act);
              gvr[i] = A(g[i]) * gc[p] * mrla_act_grad(acc[i], act);
            }
          }
          if (has_prev) {
#pragma omp simd reduction(+ : sum_lambda)
            for (int64_t i = 0; i < s.w; ++i) {
              sum_lambda += A(g[i]) * A(op[row + i]);
              gop[row + i] = static_cast<T>(lam[ch] * A(g[i]));
            }
          }
        }
        // grad_x: the value gradient through the flipped kernel.
        for (int64_t y = 0; y < s.h; ++y) {
          std::fill(acc.begin(), acc.end(), A(0));
          for (int64_t i = 0; i < 3; ++i) {
            const int64_t yy = y - i + 1;
            if (yy < 0 || yy >= s.h) continue;
            row_taps(acc.data(), gv.data() + yy * s.w, s.w, wk[3 * i + 2],
                     wk[3 * i + 1], wk[3 * i]);
          }
          T* dst = gxp + p * hw + y * s.w;
          for (int64_t i = 0; i < s.w; ++i) dst[i] = static_cast<T>(acc[i]);
        }
        // Weight gradient: the value gradient against shifted inputs.
        for (int64_t i = 0; i < 3; ++i) {
          for (int64_t j = 0; j < 3; ++j) {
            const int64_t di = i - 1, dj = j - 1;
            A sum = 0;
            const int64_t y0 = std::max<int64_t>(0, -di);
            const int64_t y1 = std::min(s.h, s.h - di);
            const int64_t x0 = std::max<int64_t>(0, -dj);
            const int64_t x1 = std::min(s.w, s.w - dj);
            for (int64_t y = y0; y < y1; ++y) {
              const A* g = gv.data() + y * s.w;
              const T* in = xpl + (y + di) * s.w + dj;
#pragma omp simd reduction(+ : sum)
              for (int64_t xx = x0; xx < x1; ++xx) sum += g[xx] * A(in[xx]);
            }
            gwp[p * 9 + 3 * i + j] = sum;
          }
        }
        ggp[p] = sum_gate;
        glp[p] = sum_lambda;
      }
    });
    return;
  }
  constexpr int64_t kTile = tile_channels<T>();
  const int64_t tiles = (s.c + kTile - 1) / kTile;
  const std::vector<A> wt = taps_major(w9, s.c);
  auto run_tile = [&](auto width, int64_t b, int64_t c0, A* gv_buf) {
    const int64_t cc = width;
    A acc[kTile], sum_gate[kTile], sum_lambda[kTile], gw[9 * kTile];
    {
      const int64_t base = b * hw * s.c + c0;
      std::fill(sum_gate, sum_gate + kTile, A(0));
      std::fill(sum_lambda, sum_lambda + kTile, A(0));
      std::fill(gw, gw + 9 * kTile, A(0));
      for (int64_t y = 0; y < s.h; ++y) {
        for (int64_t x0 = 0; x0 < s.w; ++x0) {
          std::fill(acc, acc + kTile, A(0));
          for (int64_t i = 0; i < 3; ++i) {
            const int64_t yy = y + i - 1;
            if (yy < 0 || yy >= s.h) continue;
            for (int64_t j = 0; j < 3; ++j) {
              const int64_t xx = x0 + j - 1;
              if (xx < 0 || xx >= s.w) continue;
              const T* src = xp + base + (yy * s.w + xx) * s.c;
              const A* wk = wt.data() + (3 * i + j) * s.c + c0;
              for (int64_t c = 0; c < cc; ++c) acc[c] += wk[c] * A(src[c]);
            }
          }
          const int64_t pix = y * s.w + x0;
          const int64_t off = base + pix * s.c;
          A* gvp = gv_buf + pix * kTile;
          for (int64_t c = 0; c < cc; ++c) {
            const A g = A(gp[off + c]), v = acc[c];
            sum_gate[c] += g * mrla_act(v, act);
            gvp[c] = g * gc[b * s.c + c0 + c] * mrla_act_grad(v, act);
            if (has_prev) {
              sum_lambda[c] += g * A(op[off + c]);
              gop[off + c] = static_cast<T>(lam[c0 + c] * g);
            }
          }
        }
      }
      for (int64_t y = 0; y < s.h; ++y) {
        for (int64_t x0 = 0; x0 < s.w; ++x0) {
          const int64_t pix = y * s.w + x0;
          const A* gvp = gv_buf + pix * kTile;
          std::fill(acc, acc + kTile, A(0));
          for (int64_t i = 0; i < 3; ++i) {
            for (int64_t j = 0; j < 3; ++j) {
              const A* wk = wt.data() + (3 * i + j) * s.c + c0;
              // grad_x gathers the value gradient of the mirrored tap ...
              const int64_t ry = y - i + 1, rx = x0 - j + 1;
              if (ry >= 0 && ry < s.h && rx >= 0 && rx < s.w) {
                const A* src = gv_buf + (ry * s.w + rx) * kTile;
                for (int64_t c = 0; c < cc; ++c) acc[c] += wk[c] * src[c];
              }
              // ... and the weight gradient pairs it with the input tap.
              const int64_t iy = y + i - 1, ix = x0 + j - 1;
              if (iy >= 0 && iy < s.h && ix >= 0 && ix < s.w) {
                const T* in = xp + base + (iy * s.w + ix) * s.c;
                A* g = gw + (3 * i + j) * kTile;
                for (int64_t c = 0; c < cc; ++c) g[c] += gvp[c] * A(in[c]);
              }
            }
          }
          T* dst = gxp + base + pix * s.c;
          for (int64_t c = 0; c < cc; ++c) dst[c] = static_cast<T>(acc[c]);
        }
      }
      for (int64_t c = 0; c < cc; ++c) {
        const int64_t p = b * s.c + c0 + c;
        ggp[p] = sum_gate[c];
        glp[p] = sum_lambda[c];
        for (int64_t k = 0; k < 9; ++k) gwp[p * 9 + k] = gw[k * kTile + c];
      }
    }
  };
  at::parallel_for(0, s.b * tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<A> gv(hw * kTile);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / tiles, c0 = (t % tiles) * kTile;
      if (c0 + kTile <= s.c) {
        run_tile(std::integral_constant<int64_t, kTile>(), b, c0, gv.data());
      } else {
        run_tile(s.c - c0, b, c0, gv.data());
      }
    }
  });
}

bool is_channels_last(const Tensor& x) { return !x.is_contiguous(); }

}  // namespace

void mrla_light_forward_cpu(const Tensor x, const Tensor weight,
                            const Tensor gate, const Tensor lambda,
                            const Tensor o_prev, const Tensor scale,
                            const Tensor shift, Tensor out, int64_t act,
                            bool add_input) {
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "mrla_light_forward_cpu",
      [&] {
        light_forward<scalar_t>(x, weight, gate, lambda, o_prev, scale,
                                shift, out, static_cast<int>(act), add_input,
                                is_channels_last(x));
      });
}

void mrla_light_backward_cpu(const Tensor grad_out, const Tensor x,
                             const Tensor weight, const Tensor gate,
                             const Tensor lambda, const Tensor o_prev,
                             Tensor grad_x, Tensor grad_o_prev,
                             Tensor grad_weight_part, Tensor grad_gate_part,
                             Tensor grad_lambda_part, int64_t act) {
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "mrla_light_backward_cpu",
      [&] {
        light_backward<scalar_t>(grad_out, x, weight, gate, lambda, o_prev,
                                 grad_x, grad_o_prev, grad_weight_part,
                                 grad_gate_part, grad_lambda_part,
                                 static_cast<int>(act), is_channels_last(x));
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
                              Tensor grad_x, Tensor grad_o_prev,
                              Tensor grad_weight_part, Tensor grad_gate_part,
                              Tensor grad_lambda_part, int64_t act);
REGISTER_DEVICE_IMPL(mrla_light_forward_impl, CPU, mrla_light_forward_cpu);
REGISTER_DEVICE_IMPL(mrla_light_backward_impl, CPU, mrla_light_backward_cpu);
