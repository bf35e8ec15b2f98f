"""Each compiled MRLA op against its PyTorch composition, side by side.

For every shape and memory format the two paths run interleaved on the
same inputs in one process; the table gives median times and the speed-up
of the compiled op (PyTorch time / compiled time), forward alone and
forward plus backward.

Example::

    python tools/analysis/benchmark_ops.py --threads 2
"""
import argparse
import os
import statistics
import time

import torch

from mrla_mm.ops import ext_loader
from mrla_mm.ops.mrla_base import MRLABaseReadoutFunction, mrla_base_readout
from mrla_mm.ops.mrla_light import (
    MRLALightCoreFunction,
    mrla_light_batch_norm,
    mrla_light_batch_norm_pytorch,
    mrla_light_core,
    mrla_light_core_pytorch,
)
from mrla_mm.ops.mrla_math import base_combine, base_weights, channel_affine
from mrla_mm.ops.residual_relu_pool import residual_relu_pool

# ResNet-50 stages at batch 8x224 and an FPN level of a detector input;
# then the planes on either side of auto's CPU threshold
# (ext_loader.CPU_MIN_PLANE).
SHAPES = dict(
    layer1=(8, 256, 56, 56), layer2=(8, 512, 28, 28),
    layer3=(8, 1024, 14, 14), layer4=(8, 2048, 7, 7),
    det_c2=(2, 256, 200, 304), plane3x3=(8, 2048, 3, 3),
    plane4x4=(8, 2048, 4, 4))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--shapes', nargs='+', default=list(SHAPES),
                   choices=list(SHAPES))
    p.add_argument('--formats', nargs='+', default=['nchw', 'cl'],
                   choices=('nchw', 'cl'))
    p.add_argument('--dtype', default='float32',
                   choices=('float32', 'bfloat16', 'float16'))
    p.add_argument('--cache', type=int, default=6,
                   help='MRLA-base cache length T')
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--device', default='cpu')
    return p.parse_args()


def bench(fns, repeats):
    """Median seconds of each function, run interleaved after a warm-up."""
    times = [[] for _ in fns]
    for i in range(repeats + 1):
        for k, fn in enumerate(fns):
            if i and fn is not None:
                sync = torch.cuda.synchronize if torch.cuda.is_available(
                ) else (lambda: None)
                sync()
                t0 = time.perf_counter()
                fn()
                sync()
                times[k].append(time.perf_counter() - t0)
            elif fn is not None:
                fn()
    return [statistics.median(t) for t in times]


def light_cases(shape, fmt, dtype, device):
    b, c, h, w = shape
    heads = c // 32
    x = torch.randn(shape, dtype=dtype, device=device).contiguous(
        memory_format=fmt).requires_grad_()
    o = torch.randn_like(x).requires_grad_()
    wv = torch.randn(c, 1, 3, 3, device=device).to(dtype).requires_grad_()
    gate = torch.rand(b, heads, device=device).requires_grad_()
    lam = torch.randn(c, device=device).requires_grad_()
    scale, shift = torch.randn(c, device=device), torch.randn(c,
                                                              device=device)
    g = torch.randn_like(x)

    def fused_eval():
        with torch.no_grad():
            mrla_light_core(x, wv, gate, lam, o, scale=scale, shift=shift,
                            add_input=True)

    def pytorch_eval():
        with torch.no_grad():
            mrla_light_core_pytorch(x, wv, gate, lam, o, 'identity', scale,
                                    shift, True)

    def fused_train():
        MRLALightCoreFunction.apply(x, wv, gate, lam, o,
                                    'identity').backward(g)

    def pytorch_train():
        mrla_light_core_pytorch(x, wv, gate, lam, o).backward(g)

    gamma = torch.rand(c, device=device).requires_grad_()
    beta = torch.randn(c, device=device).requires_grad_()

    def fused_branch():
        # Batch statistics; the running ones are not tracked here.
        mrla_light_batch_norm(x, wv, gate, lam, o, running_mean=None,
                              running_var=None, weight=gamma, bias=beta,
                              training=True).backward(g)

    def pytorch_branch():
        mrla_light_batch_norm_pytorch(x, wv, gate, lam, o, 'identity', None,
                                      None, gamma, beta, True, 0.1,
                                      1e-5).backward(g)

    return [('light eval (BN folded, +x)', fused_eval, pytorch_eval),
            ('light fwd+bwd', fused_train, pytorch_train),
            ('light train branch (BN batch stats, +x) fwd+bwd', fused_branch,
             pytorch_branch)]


def base_cases(shape, fmt, dtype, device, t):
    b, c = shape[:2]
    values = [
        torch.randn(shape, dtype=dtype, device=device).contiguous(
            memory_format=fmt).requires_grad_() for _ in range(t)
    ]
    weights = torch.softmax(torch.randn(b, c // 16, t, device=device),
                            -1).requires_grad_()
    g = torch.randn_like(values[0])

    heads = c // 16
    q = torch.randn(b, c, device=device)
    keys = torch.randn(b, t, c, device=device)
    scale, shift = torch.rand(c, device=device), torch.randn(c,
                                                             device=device)
    x = values[0].detach().clone()

    def fused_eval():
        with torch.no_grad():
            mrla_base_readout(q, keys, values, heads, scale=scale,
                              shift=shift, residual=x)

    def pytorch_eval():
        with torch.no_grad():
            out = base_combine(base_weights(q, keys, heads), values)
            x + torch.relu(channel_affine(out, scale, shift))

    def fused_fwd():
        with torch.no_grad():
            MRLABaseReadoutFunction.apply(weights, *values)

    def pytorch_fwd():
        with torch.no_grad():
            base_combine(weights, values)

    def fused_train():
        MRLABaseReadoutFunction.apply(weights, *values).backward(g)

    def pytorch_train():
        base_combine(weights, values).backward(g)

    return [(f'base eval (T={t}, BN+ReLU folded, +x)', fused_eval,
             pytorch_eval), (f'base fwd (T={t})', fused_fwd, pytorch_fwd),
            (f'base fwd+bwd (T={t})', fused_train, pytorch_train)]


def pool_cases(shape, fmt, dtype, device):
    r, i = [
        torch.randn(shape, dtype=dtype, device=device).contiguous(
            memory_format=fmt) for _ in range(2)
    ]

    def fused():
        with torch.no_grad():
            residual_relu_pool(r, i)

    def pytorch():
        with torch.no_grad():
            torch.relu(r + i).mean((2, 3))

    return [('residual + ReLU + channel means', fused, pytorch)]


def main():
    args = parse_args()
    # The kernels themselves, also where ``auto`` would prefer PyTorch.
    os.environ['MRLA_OPS_BACKEND'] = 'compiled'
    torch.set_num_threads(args.threads)
    assert ext_loader.load_ext() is not None, 'mrla_mm._ext is not built'
    dtype = getattr(torch, args.dtype)
    load = os.getloadavg()
    print(f'{args.device}, {args.threads} threads, {args.dtype}, median of '
          f'{args.repeats}, torch {torch.__version__}; load average '
          f'{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} '
          'CPUs')
    print('| op | shape | format | compiled ms | PyTorch ms | speed-up |')
    print('|---|---|---|---|---|---|')
    for name in args.shapes:
        shape = SHAPES[name]
        for f in args.formats:
            fmt = torch.channels_last if f == 'cl' else torch.contiguous_format
            cases = (
                light_cases(shape, fmt, dtype, args.device) +
                base_cases(shape, fmt, dtype, args.device, args.cache) +
                pool_cases(shape, fmt, dtype, args.device))
            for op, fused, ref in cases:
                tf, tr = bench([fused, ref], args.repeats)
                print(f'| {op} | {name} {"x".join(map(str, shape))} | {f} | '
                      f'{tf * 1e3:.2f} | {tr * 1e3:.2f} | {tr / tf:.2f}x |')


if __name__ == '__main__':
    main()
