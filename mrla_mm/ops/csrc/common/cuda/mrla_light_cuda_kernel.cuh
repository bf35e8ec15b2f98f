// CUDA kernels of the MRLA-light core. The forward is one elementwise pass
// in memory order. The backward takes two: one (b, c) plane per block,
// first the value gradient (kept in a float buffer) with the gate and
// lambda sums, then grad_x and the weight gradient from that buffer;
// plane-per-block reductions keep the sums deterministic. With a
// train-mode BatchNorm after the core (norm != nullptr: rows a, b, c,
// center of [4, C]) the incoming gradient is that of x + batch_norm(z);
// z is recomputed, never stored.
#ifndef MRLA_LIGHT_CUDA_KERNEL_CUH
#define MRLA_LIGHT_CUDA_KERNEL_CUH

#include "mrla_act.hpp"
#include "mrla_common_cuda.cuh"

template <typename T, typename A, bool CL>
__device__ __forceinline__ A mrla_dwconv_at(const T* x, const A* w9,
                                            int64_t b, int64_t c, int64_t y,
                                            int64_t x0, int64_t C, int64_t H,
                                            int64_t W) {
  A acc = 0;
#pragma unroll
  for (int i = 0; i < 3; ++i) {
    const int64_t yy = y + i - 1;
    if (yy < 0 || yy >= H) continue;
#pragma unroll
    for (int j = 0; j < 3; ++j) {
      const int64_t xx = x0 + j - 1;
      if (xx < 0 || xx >= W) continue;
      acc += w9[c * 9 + 3 * i + j] *
             static_cast<A>(x[mrla_offset<CL>(b, c, yy, xx, C, H, W)]);
    }
  }
  return acc;
}

// The light core z at memory offset off (no history without o_prev).
template <typename T, typename A>
__device__ __forceinline__ A mrla_light_core_at(A v, A g_bc, const A* lambda,
                                                const T* o_prev, int64_t c,
                                                int64_t off, int act) {
  return o_prev != nullptr
             ? mrla_light_core(v, g_bc, lambda[c],
                               static_cast<A>(o_prev[off]), act)
             : mrla_light_core(v, g_bc, A(0), A(0), act);
}

// Per-(b, c) moments of z, one plane per block: without grad {mean,
// sum (z - mean)^2} (z recomputed for the centred second pass), with grad
// {sum grad, sum grad * (z - center)}.
template <typename T, typename A, bool CL>
__global__ void mrla_light_stats_cuda_kernel(
    const T* x, const A* w9, const A* gate, const A* lambda, const T* o_prev,
    const T* grad, const A* center, A* stats, int64_t C, int64_t H,
    int64_t W, int64_t G, int act) {
  const int64_t p = blockIdx.x, b = p / C, c = p % C;
  const A g_bc = gate[b * G + c / (C / G)];
  // z at pixel i of the plane, and its memory offset.
  auto z_at = [&](int64_t i, int64_t* off) {
    const int64_t y = i / W, x0 = i % W;
    *off = mrla_offset<CL>(b, c, y, x0, C, H, W);
    return mrla_light_core_at<T, A>(
        mrla_dwconv_at<T, A, CL>(x, w9, b, c, y, x0, C, H, W), g_bc, lambda,
        o_prev, c, *off, act);
  };
  A s1 = 0, s2 = 0;
  for (int64_t i = threadIdx.x; i < H * W; i += blockDim.x) {
    int64_t off;
    const A z = z_at(i, &off);
    if (grad != nullptr) {
      const A g = static_cast<A>(grad[off]);
      s1 += g;
      s2 += g * (z - center[c]);
    } else {
      s1 += z;
    }
  }
  s1 = mrla_block_sum(s1);
  if (grad == nullptr) {
    const A mean = s1 / static_cast<A>(H * W);
    for (int64_t i = threadIdx.x; i < H * W; i += blockDim.x) {
      int64_t off;
      const A d = z_at(i, &off) - mean;
      s2 += d * d;
    }
    s1 = mean;
  }
  s2 = mrla_block_sum(s2);
  if (threadIdx.x == 0) {
    stats[2 * p] = s1;
    stats[2 * p + 1] = s2;
  }
}

template <typename T, typename A, bool CL>
__global__ void mrla_light_forward_cuda_kernel(
    const T* x, const A* w9, const A* gate, const A* lambda, const T* o_prev,
    const A* scale, const A* shift, T* out, int64_t B, int64_t C, int64_t H,
    int64_t W, int64_t G, int act, bool add_input) {
  const int64_t d = C / G;
  MRLA_KERNEL_LOOP(n, B * C * H * W) {
    int64_t b, c, y, x0;
    mrla_unravel<CL>(n, C, H, W, &b, &c, &y, &x0);
    const A v = mrla_dwconv_at<T, A, CL>(x, w9, b, c, y, x0, C, H, W);
    A r = mrla_light_core_at<T, A>(v, gate[b * G + c / d], lambda, o_prev, c,
                                   n, act);
    if (scale != nullptr) r = r * scale[c] + shift[c];
    if (add_input) r += static_cast<A>(x[n]);
    out[n] = static_cast<T>(r);
  }
}

template <typename T, typename A, bool CL>
__global__ void mrla_light_backward_value_cuda_kernel(
    const T* grad_out, const T* x, const A* w9, const A* gate,
    const A* lambda, const T* o_prev, const A* norm, A* grad_v,
    T* grad_o_prev, A* grad_gate_part, A* grad_lambda_part, int64_t C,
    int64_t H, int64_t W, int64_t G, int act) {
  const int64_t p = blockIdx.x, b = p / C, c = p % C;
  const A g_bc = gate[b * G + c / (C / G)];
  A sum_gate = 0, sum_lambda = 0;
  for (int64_t i = threadIdx.x; i < H * W; i += blockDim.x) {
    const int64_t y = i / W, x0 = i % W;
    const int64_t off = mrla_offset<CL>(b, c, y, x0, C, H, W);
    const A v = mrla_dwconv_at<T, A, CL>(x, w9, b, c, y, x0, C, H, W);
    A g = static_cast<A>(grad_out[off]);
    if (norm != nullptr) {
      const A z =
          mrla_light_core_at<T, A>(v, g_bc, lambda, o_prev, c, off, act);
      g = norm[c] * g + norm[C + c] * (z - norm[3 * C + c]) + norm[2 * C + c];
    }
    sum_gate += g * mrla_act(v, act);
    grad_v[off] = g * g_bc * mrla_act_grad(v, act);
    if (o_prev != nullptr) {
      sum_lambda += g * static_cast<A>(o_prev[off]);
      grad_o_prev[off] = static_cast<T>(lambda[c] * g);
    }
  }
  sum_gate = mrla_block_sum(sum_gate);
  sum_lambda = mrla_block_sum(sum_lambda);
  if (threadIdx.x == 0) {
    grad_gate_part[p] = sum_gate;
    grad_lambda_part[p] = sum_lambda;
  }
}

// grad_res (the incoming gradient, with a norm) is added to grad_x: the
// residual x of x + batch_norm(z).
template <typename T, typename A, bool CL>
__global__ void mrla_light_backward_input_cuda_kernel(
    const A* grad_v, const T* x, const A* w9, const T* grad_res, T* grad_x,
    A* grad_weight_part, int64_t C, int64_t H, int64_t W) {
  const int64_t p = blockIdx.x, b = p / C, c = p % C;
  A gw[9];
#pragma unroll
  for (int k = 0; k < 9; ++k) gw[k] = 0;
  for (int64_t i = threadIdx.x; i < H * W; i += blockDim.x) {
    const int64_t y = i / W, x0 = i % W;
    const int64_t off = mrla_offset<CL>(b, c, y, x0, C, H, W);
    const A gv = grad_v[off];
    A gx = 0;
#pragma unroll
    for (int ki = 0; ki < 3; ++ki) {
#pragma unroll
      for (int kj = 0; kj < 3; ++kj) {
        // grad_x gathers the value gradient of the mirrored tap ...
        const int64_t ry = y - ki + 1, rx = x0 - kj + 1;
        if (ry >= 0 && ry < H && rx >= 0 && rx < W) {
          gx += w9[c * 9 + 3 * ki + kj] *
                grad_v[mrla_offset<CL>(b, c, ry, rx, C, H, W)];
        }
        // ... and the weight gradient pairs it with the input tap.
        const int64_t iy = y + ki - 1, ix = x0 + kj - 1;
        if (iy >= 0 && iy < H && ix >= 0 && ix < W) {
          gw[3 * ki + kj] +=
              gv * static_cast<A>(x[mrla_offset<CL>(b, c, iy, ix, C, H, W)]);
        }
      }
    }
    if (grad_res != nullptr) gx += static_cast<A>(grad_res[off]);
    grad_x[off] = static_cast<T>(gx);
  }
  for (int k = 0; k < 9; ++k) {
    const A s = mrla_block_sum(gw[k]);
    if (threadIdx.x == 0) grad_weight_part[p * 9 + k] = s;
  }
}

#endif  // MRLA_LIGHT_CUDA_KERNEL_CUH
