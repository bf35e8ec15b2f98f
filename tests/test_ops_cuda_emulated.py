"""The CUDA kernels and their launchers, run on the CPU.

The CUDA sources are compiled as C++ for a CPU emulation of the launch
(tests/cuda_emulation/mrla_cuda_emulation.h: each block's threads are
fibers switched at ``__syncthreads``, ``__shared__`` arrays are shared by
the running block) and registered in mmcv's device registry for the CPU
in place of the CPU kernels. The ops' Python code then runs through the CUDA
tiling, index arithmetic, reductions and launchers on CPU tensors and is
compared with the PyTorch composition, so that a machine without a GPU
checks the CUDA code's logic too (its speed and the GPU's memory model
need a GPU: tests/test_ops_mrla.py and friends, ``-k cuda``).

Every op runs in each dtype the kernels are instantiated for, against its
PyTorch composition in float64, through the cases of the ops' self-check
(mrla_mm/ops/self_check_cases.py: inference, training, both value
activations, batch and running statistics), on planes of more than 2^16
pixels, and on grids of more than 2^16 blocks. One run is built with
AddressSanitizer and UndefinedBehaviorSanitizer, so that an index past a
map's end fails even where the value it reads would not change a result.
"""
import glob
import importlib.util
import os
import os.path as osp
import re
import subprocess
import sys
import time

import pytest
import torch
from torch.utils import cpp_extension

from mrla_mm.ops import ext_loader, self_check
from mrla_mm.ops.mrla_base import (
    MRLABaseReadoutFunction,
    mrla_base_readout,
    readout_backward,
)
from mrla_mm.ops.mrla_light import (
    mrla_light_batch_norm,
    mrla_light_batch_norm_pytorch,
    mrla_light_core,
    mrla_light_core_pytorch,
    mrla_value_map,
)
from mrla_mm.ops.mrla_math import (
    base_combine,
    base_weights,
    channel_affine,
    mrla_value,
)
from mrla_mm.ops.residual_relu_pool import residual_relu_pool
from mrla_mm.ops.self_check_cases import CASES, compare

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CSRC = osp.join(ROOT, 'mrla_mm', 'ops', 'csrc')
SHIMS = osp.join(ROOT, 'tests', 'cuda_emulation')
FORMATS = (torch.contiguous_format, torch.channels_last)
# A plane is cut into several slices above 2048 pixels (NCHW) or 64
# (channels_last), in the light kernels above 256 or 8 runs of 8 pixels of
# a row; 40 channels leave channels_last lanes idle; 1x1 and odd sizes test
# the borders; rows of 7, 13 and 45 pixels end in a short run, rows of 16
# in a whole one.
SHAPES = ((1, 2, 50, 45), (2, 40, 12, 13), (2, 4, 1, 1), (1, 8, 3, 7),
          (1, 4, 17, 16))
# Batch statistics need more than one value per channel.
NORM_SHAPES = tuple(s for s in SHAPES if s[0] * s[2] * s[3] > 1)
DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
# The ops in every dtype: at 16 SMs two slices per NCHW plane, 38
# channels_last slices, rows ending in a short run, 26 of a channels_last
# tile's 32 lanes idle.
KIND_SHAPE = (1, 6, 50, 45)
# Set in the sanitized run's process (see test_sanitized_emulation).
SANITIZE = os.environ.get('MRLA_EMULATION_SANITIZE') == '1'
QUARTER = {k: v / 4 for k, v in self_check.TOLERANCES.items()}
SANITIZER_FLAGS = ['-fsanitize=address,undefined', '-fno-sanitize-recover=all',
                   '-fno-omit-frame-pointer']


def emulate_launches(src: str) -> str:
    """``kernel<<<config>>>(args);`` -> ``mrla_emulated_launch([&] {
    kernel(args); }, config);``."""
    out, i = [], 0
    while (j := src.find('<<<', i)) >= 0:
        name = re.search(r'(\w+)\s*$', src[:j])
        end = src.index('>>>', j)
        config = src[j + 3:end]
        k = src.index('(', end)
        depth, m = 0, k
        while True:
            depth += {'(': 1, ')': -1}.get(src[m], 0)
            if depth == 0:
                break
            m += 1
        assert src[m + 1] == ';', src[j:m + 2]
        out.append(src[i:name.start()])
        out.append(f'mrla_emulated_launch([&] {{ {name.group(1)}'
                   f'{src[k:m + 1]}; }}, {config});')
        i = m + 2
    out.append(src[i:])
    return ''.join(out)


def write_if_changed(path: str, text: str) -> None:
    """Unchanged files keep their time stamps, so that a kept build
    (MRLA_EMULATION_BUILD) recompiles only what changed."""
    if osp.exists(path):
        with open(path) as f:
            if f.read() == text:
                return
    with open(path, 'w') as f:
        f.write(text)


def emulated_sources(build: str):
    """The CUDA sources, rewritten for the emulation, under ``build``."""
    os.makedirs(osp.join(build, 'cuda'), exist_ok=True)
    sources = []
    for path in sorted(
            glob.glob(osp.join(CSRC, 'common', 'cuda', '*.cuh')) +
            glob.glob(osp.join(CSRC, 'pytorch', 'cuda', '*'))):
        with open(path) as f:
            src = emulate_launches(f.read())
        name = osp.basename(path)
        if name == 'cudabind.cpp':
            # The launchers serve the CPU tensors of the tests.
            src = src.replace(', CUDA,', ', CPU,')
        # Pinned host memory needs a GPU; the CPU kernels read any memory.
        src = src.replace('.pinned_memory(true)', '.pinned_memory(false)')
        if not name.endswith('.cuh'):
            src = '#include "mrla_cuda_emulation.h"\n' + src
            name = osp.splitext(name)[0] + '.cpp'
            sources.append(osp.join(build, 'cuda', name))
        write_if_changed(osp.join(build, 'cuda', name), src)
    return sources


def build_emulated_ext(build: str, name: str, flags=()):
    """Compiles the emulation under ``build`` and loads it as ``name``."""
    spec = importlib.util.find_spec('mmcv')
    mmcv = osp.join(list(spec.submodule_search_locations)[0], 'ops', 'csrc',
                    'common')
    # The ops' checks, dispatch and bindings as setup.py builds them, in
    # one translation unit: ATen's headers are parsed once, not eight
    # times (a third of the compile time).
    sources = emulated_sources(build) + sorted(
        glob.glob(osp.join(CSRC, 'pytorch', '*.cpp')))
    unity = osp.join(build, 'emulated_ops.cpp')
    write_if_changed(unity, ''.join(f'#include "{s}"\n' for s in sources))
    return cpp_extension.load(
        name,
        [unity],
        extra_include_paths=[
            SHIMS,
            osp.join(build, 'cuda'),
            osp.join(CSRC, 'common'), mmcv
        ],
        # Hidden symbols: the emulated launchers must not take the place
        # of mrla_mm._ext's CPU kernels in the same process, nor the other
        # way round (both define the ops' dispatch functions).
        extra_cflags=['-O1', '-std=c++20', '-DMRLA_WITH_CUDA',
                      '-fvisibility=hidden', *flags],
        extra_ldflags=list(flags),
        build_directory=build,
        verbose=False)


@pytest.fixture(scope='module')
def emulated_ext(tmp_path_factory):
    name = 'mrla_cuda_emulated' + ('_sanitized' if SANITIZE else '')
    # MRLA_EMULATION_BUILD keeps the build between runs (ninja then
    # compiles only what changed).
    kept = os.environ.get('MRLA_EMULATION_BUILD')
    build = (osp.join(kept, name)
             if kept else str(tmp_path_factory.mktemp(name)))
    start = time.perf_counter()
    ext = build_emulated_ext(build, name,
                             SANITIZER_FLAGS if SANITIZE else ())
    print(f'{name} built in {time.perf_counter() - start:.0f} s')
    return ext


@pytest.fixture(params=[2, 16], ids=['2sms', '16sms'])
def cuda_kernels(request, emulated_ext, monkeypatch):
    """The ops run the CUDA kernels (emulated) on CPU tensors; the SM count
    changes how the planes are sliced."""
    monkeypatch.setattr(ext_loader, '_ext', emulated_ext)
    monkeypatch.setattr(ext_loader, '_ext_error', None)
    monkeypatch.setenv('MRLA_OPS_BACKEND', 'compiled')
    monkeypatch.setenv('MRLA_EMULATED_SMS', str(request.param))


def light_inputs(shape, fmt, heads=2):
    b, c = shape[:2]
    heads = min(heads, c)
    g = torch.Generator().manual_seed(sum(shape))

    def rnd(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64)

    x = rnd(*shape).contiguous(memory_format=fmt)
    o = rnd(*shape).contiguous(memory_format=fmt)
    return (x, rnd(c, 1, 3, 3), torch.rand(b, heads, generator=g,
                                           dtype=torch.float64), rnd(c), o)


@pytest.mark.parametrize('fmt', FORMATS, ids=['nchw', 'cl'])
@pytest.mark.parametrize('shape', SHAPES)
def test_light_core(cuda_kernels, shape, fmt):
    x, w, gate, lam, o = light_inputs(shape, fmt)
    c = shape[1]
    scale, shift = torch.rand(c, dtype=x.dtype), torch.randn(c, dtype=x.dtype)
    for act in ('identity', 'gelu'):
        with torch.no_grad():
            got = mrla_light_core(x, w, gate, lam, o, act, scale=scale,
                                  shift=shift, add_input=True)
        want = mrla_light_core_pytorch(x, w, gate, lam, o, act, scale, shift,
                                       True)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        assert got.is_contiguous(memory_format=fmt)
        leaves = [t.clone().requires_grad_() for t in (x, w, gate, lam, o)]
        out = mrla_light_core(*leaves, act)
        grad = torch.randn_like(out)
        got = torch.autograd.grad(out, leaves, grad)
        ref = [t.clone().requires_grad_() for t in (x, w, gate, lam, o)]
        want = torch.autograd.grad(mrla_light_core_pytorch(*ref, act), ref,
                                   grad)
        for name, a, b in zip(('x', 'weight', 'gate', 'lambda', 'o_prev'),
                              got, want):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10,
                                       msg=f'grad {name} ({act})')


@pytest.mark.parametrize('fmt', FORMATS, ids=['nchw', 'cl'])
@pytest.mark.parametrize('shape', SHAPES)
def test_value_map(cuda_kernels, shape, fmt):
    """MRLA-base's value map: the light kernels without history."""
    x, w = light_inputs(shape, fmt)[:2]
    for act in ('identity', 'gelu'):
        leaves = [t.clone().requires_grad_() for t in (x, w)]
        out = mrla_value_map(*leaves, act)
        ref = [t.clone().requires_grad_() for t in (x, w)]
        want = mrla_value(*ref, act)
        torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
        grad = torch.randn_like(out)
        for a, b in zip(torch.autograd.grad(out, leaves, grad),
                        torch.autograd.grad(want, ref, grad)):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('training,act', [(True, 'identity'),
                                          (False, 'gelu')],
                         ids=['batch_stats', 'running_stats_gelu'])
@pytest.mark.parametrize('fmt', FORMATS, ids=['nchw', 'cl'])
@pytest.mark.parametrize('shape', NORM_SHAPES)
def test_light_train_branch(cuda_kernels, shape, fmt, training, act):
    """Batch statistics from the statistics kernels (several slices merged),
    the norm folded into the backward kernels; or the running statistics
    (a detector's norm_eval), constants of the forward and backward."""
    x, w, gate, lam, o = light_inputs(shape, fmt)
    c = shape[1]
    gamma, beta = torch.rand(c, dtype=x.dtype), torch.randn(c, dtype=x.dtype)
    leaves = [t.clone().requires_grad_() for t in (x, w, gate, lam, o)]
    ref = [t.clone().requires_grad_() for t in (x, w, gate, lam, o)]
    stats = [torch.randn(c, dtype=x.dtype), torch.rand(c, dtype=x.dtype)]
    ref_stats = [t.clone() for t in stats]
    out = mrla_light_batch_norm(
        *leaves, act, running_mean=stats[0], running_var=stats[1],
        weight=gamma, bias=beta, training=training)
    want = mrla_light_batch_norm_pytorch(*ref, act, ref_stats[0],
                                         ref_stats[1], gamma, beta, training,
                                         0.1, 1e-5)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)
    for a, b in zip(stats, ref_stats):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, leaves, grad)
    want = torch.autograd.grad(want, ref, grad)
    for name, a, b in zip(('x', 'weight', 'gate', 'lambda', 'o_prev'), got,
                          want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9,
                                   msg=f'grad {name}')


@pytest.mark.parametrize('fmt', FORMATS, ids=['nchw', 'cl'])
@pytest.mark.parametrize('shape', SHAPES)
def test_base_readout(cuda_kernels, shape, fmt):
    b, c = shape[:2]
    heads = min(2, c)
    g = torch.Generator().manual_seed(sum(shape))
    values = [
        torch.randn(*shape, generator=g, dtype=torch.float64).contiguous(
            memory_format=fmt) for _ in range(3)
    ]
    q = torch.randn(b, c, generator=g, dtype=torch.float64)
    keys = torch.randn(b, 3, c, generator=g, dtype=torch.float64)
    scale, shift = torch.rand(c, dtype=q.dtype), torch.randn(c, dtype=q.dtype)
    with torch.no_grad():
        got = mrla_base_readout(q, keys, values, heads, scale=scale,
                                shift=shift, residual=values[0])
    weights = base_weights(q, keys, heads)
    want = values[0] + torch.relu(
        channel_affine(base_combine(weights, values), scale, shift))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    leaves = [weights.clone().requires_grad_()] + [
        v.clone().requires_grad_() for v in values
    ]
    out = MRLABaseReadoutFunction.apply(*leaves)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, leaves, grad)
    ref = [t.clone().requires_grad_() for t in leaves]
    want = torch.autograd.grad(base_combine(ref[0], ref[1:]), ref, grad)
    for g_got, g_want in zip(got, want):
        torch.testing.assert_close(g_got, g_want, rtol=1e-10, atol=1e-10)
    # A value whose gradient is not wanted: no map, the same dot products.
    part, grads = readout_backward(grad, weights, values,
                                   [True, False, True])
    assert grads[1] is None
    torch.testing.assert_close(part, want[0], rtol=1e-10, atol=1e-10)
    for s in (0, 2):
        torch.testing.assert_close(grads[s], want[1 + s], rtol=1e-10,
                                   atol=1e-10)


@pytest.mark.parametrize('fmt', FORMATS, ids=['nchw', 'cl'])
@pytest.mark.parametrize('shape', SHAPES)
def test_residual_relu_pool(cuda_kernels, shape, fmt):
    g = torch.Generator().manual_seed(sum(shape))
    r, i = (torch.randn(*shape, generator=g, dtype=torch.float64).contiguous(
        memory_format=fmt) for _ in range(2))
    with torch.no_grad():
        out, mean = residual_relu_pool(r, i)
    want = torch.relu(r + i)
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    torch.testing.assert_close(mean, want.mean((2, 3)), rtol=1e-12,
                               atol=1e-12)
    # The backward: one pass for the gradients of out and of the means.
    leaves = (r.requires_grad_(), i.requires_grad_())
    grad = torch.randn(shape, generator=g, dtype=r.dtype).contiguous(
        memory_format=fmt)
    grad_mean = torch.randn(shape[:2], generator=g, dtype=r.dtype)
    got = torch.autograd.grad(
        residual_relu_pool(*leaves), leaves, (grad, grad_mean))
    out = torch.relu(r + i)
    want = torch.autograd.grad((out, out.mean((2, 3))), leaves,
                               (grad, grad_mean))
    for a, b in zip(got, want):
        assert a.is_contiguous(memory_format=fmt)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # A folded norm of the residual, applied per channel in the same pass.
    scale = torch.rand(shape[1], generator=g, dtype=r.dtype) + 0.5
    shift = torch.randn(shape[1], generator=g, dtype=r.dtype)
    with torch.no_grad():
        out, mean = residual_relu_pool(r, i, scale=scale, shift=shift)
    want = torch.relu(channel_affine(r, scale, shift) + i)
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mean, want.mean((2, 3)), rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize('cuda_kernels', [16], indirect=True,
                         ids=['16sms'])
@pytest.mark.parametrize('dtype', DTYPES, ids=str)
@pytest.mark.parametrize('fmt', FORMATS, ids=['nchw', 'cl'])
@pytest.mark.parametrize('op', sorted(CASES))
def test_kinds(cuda_kernels, op, fmt, dtype):
    """Each op's kernels in each dtype (float32 accumulation for the half
    precisions), outputs and gradients against the float64 composition
    within a quarter of the self-check's tolerance of the dtype."""
    assert compare(op, torch.device('cpu'), dtype, fmt, QUARTER,
                   KIND_SHAPE) is None


@pytest.mark.parametrize('cuda_kernels', [2], indirect=True, ids=['2sms'])
@pytest.mark.parametrize('fmt', FORMATS, ids=['nchw', 'cl'])
@pytest.mark.parametrize('op', sorted(CASES))
def test_large_plane(cuda_kernels, op, fmt):
    """A plane of 257 x 256 > 2^16 pixels, in 32 slices."""
    assert compare(op, torch.device('cpu'), torch.float32, fmt,
                   self_check.TOLERANCES, (1, 2, 257, 256)) is None


@pytest.mark.parametrize('cuda_kernels', [2], indirect=True, ids=['2sms'])
def test_many_blocks(cuda_kernels):
    """Batch x channels = 65540 > 2^16 blocks of the light and base
    inference kernels (one block per 1x1 plane)."""
    b, c = 2, 32770
    for shape in ((1, 2, 3, 3), (b, c, 1, 1)):
        # The small call first: the emulation learns that these kernels
        # reach no barrier, and then runs their 2^24 threads as calls.
        x, w, gate, lam, o = (t.float() for t in light_inputs(
            shape, torch.contiguous_format, heads=1))
        scale, shift = torch.rand(shape[1]), torch.randn(shape[1])
        with torch.no_grad():
            got = mrla_light_core(x, w, gate, lam, o, scale=scale,
                                  shift=shift, add_input=True)
        x64, w64, gate64, lam64, o64, scale64, shift64 = (t.double() for t in (
            x, w, gate, lam, o, scale, shift))
        want = mrla_light_core_pytorch(x64, w64, gate64, lam64, o64,
                                       'identity', scale64, shift64, True)
        torch.testing.assert_close(got, want.float(), rtol=1e-6, atol=1e-6)
        q, keys = torch.randn(shape[:2]), torch.randn(shape[0], 2, shape[1])
        values = [torch.randn(shape) for _ in range(2)]
        with torch.no_grad():
            got = mrla_base_readout(q, keys, values, 1, residual=x)
        weights = base_weights(q.double(), keys.double(), 1)
        want = x.double() + base_combine(weights,
                                         [v.double() for v in values])
        torch.testing.assert_close(got, want.float(), rtol=1e-6, atol=1e-6)


def _sanitizer_runtime():
    """The libraries to preload for a Python process that loads the
    sanitized build (AddressSanitizer's runtime, and libstdc++, whose
    exceptions it intercepts), or why the compiler cannot build it."""
    cxx = os.environ.get('CXX', 'c++')
    probe = subprocess.run(
        [cxx, '-x', 'c++', '-', '-o', os.devnull, *SANITIZER_FLAGS],
        input='int main() { return 0; }', capture_output=True, text=True)
    if probe.returncode:
        return None, (f'{cxx} cannot build with {SANITIZER_FLAGS}: '
                      f'{probe.stderr.strip()[-300:]}')
    libs = [
        subprocess.run([cxx, f'-print-file-name={name}'],
                       capture_output=True, text=True).stdout.strip()
        for name in ('libasan.so', 'libstdc++.so')
    ]
    if not all(osp.isabs(lib) for lib in libs):
        return None, f'{cxx} has no libasan.so and libstdc++.so to preload'
    return ' '.join(libs), None


@pytest.mark.skipif(SANITIZE, reason='the sanitized run itself')
def test_sanitized_emulation():
    """The emulated kernels built with -fsanitize=address,undefined run the
    float64 tests of one multi-slice shape at 16 SMs and the bfloat16
    kinds in a Python process of their own (the runtime must be preloaded
    before Python's libraries): any read or write past a tensor or
    undefined arithmetic aborts it."""
    lib, reason = _sanitizer_runtime()
    if lib is None:
        print(f'skipped: {reason}')
        pytest.skip(reason)
    env = dict(os.environ, MRLA_EMULATION_SANITIZE='1', LD_PRELOAD=lib,
               ASAN_OPTIONS='detect_leaks=0:abort_on_error=1',
               UBSAN_OPTIONS='print_stacktrace=1:halt_on_error=1')
    run = subprocess.run(
        [sys.executable, '-m', 'pytest', '-q', '-x', '-s',
         '-p', 'no:cacheprovider', __file__, '-k',
         '16sms and shape0 or kinds and bfloat16 and nchw'],
        env=env, cwd=ROOT, capture_output=True, text=True)
    print(run.stdout[-3000:])
    # The sanitizers' report, not the Python stack that follows it.
    report = re.search(r'==\d+==ERROR: \w+Sanitizer|runtime error:',
                       run.stderr)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[
        report.start() if report else -6000:][:6000]
    assert ' passed' in run.stdout and 'failed' not in run.stdout
