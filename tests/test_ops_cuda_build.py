"""The CUDA kernels compile and link against the CUDA build of torch.

Runs wherever an nvcc is installed, GPU or not: setup.py builds the
extension with FORCE_CUDA=1 for one architecture into build/cuda_check
(kept between runs, so ninja rebuilds only what changed) and a fresh
interpreter imports it. Without a GPU nothing is launched; the kernels'
numerics are checked by test_ops_mrla.py on a GPU machine and, through
the same CPU code paths, everywhere.
"""
import glob
import os
import os.path as osp
import shutil
import subprocess
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
BUILD = osp.join(ROOT, 'build', 'cuda_check')


def _cuda_home():
    """A CUDA toolkit with nvcc and libcudart, or None if nvcc is absent.

    The nvcc on PATH may be a wrapper script whose folder lacks the
    toolkit's libraries, so the usual install folders are tried first.
    """
    candidates = [os.environ.get('CUDA_HOME'), '/usr/local/cuda-13.0',
                  '/usr/local/cuda']
    for home in filter(None, candidates):
        if osp.exists(osp.join(home, 'bin', 'nvcc')) and glob.glob(
                osp.join(home, 'lib64', 'libcudart.so*')):
            return home
    nvcc = shutil.which('nvcc')
    if nvcc is None:
        return None
    pytest.fail(f'nvcc is installed ({nvcc}) but no CUDA toolkit with '
                'lib64/libcudart.so was found: set CUDA_HOME to it')


def test_cuda_extension_compiles_and_links():
    home = _cuda_home()
    if home is None:
        pytest.skip('no nvcc on this machine: the CUDA sources cannot be '
                    'compiled here')
    env = dict(os.environ, CUDA_HOME=home, FORCE_CUDA='1',
               TORCH_CUDA_ARCH_LIST='9.0', MAX_JOBS=str(os.cpu_count()),
               MRLA_WITH_OPS='1')
    lib = osp.join(BUILD, 'lib')
    proc = subprocess.run(
        [sys.executable, 'setup.py', 'build_ext', '--build-lib', lib,
         '--build-temp', osp.join(BUILD, 'tmp')],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, (
        'CUDA build of mrla_mm._ext failed:\n' + proc.stdout[-6000:] +
        proc.stderr[-6000:])
    so = glob.glob(osp.join(lib, 'mrla_mm', '_ext*.so'))
    assert len(so) == 1, so
    # A fresh interpreter: unresolved symbols would fail the import.
    check = (
        'import importlib.util, torch\n'
        f'spec = importlib.util.spec_from_file_location("mrla_mm._ext", '
        f'{so[0]!r})\n'
        'm = importlib.util.module_from_spec(spec)\n'
        'spec.loader.exec_module(m)\n'
        'assert m.with_cuda()\n'
        'x = torch.randn(1, 4, 3, 3)\n'
        'e = torch.empty(0)\n'
        'out = m.mrla_base_forward(torch.ones(1, 2, 1), [x], e, e, e)\n'
        'assert torch.equal(out, x)\n'
        'out, mean = m.residual_relu_pool(x, -x, e, e, False)\n'
        'assert not out.any() and not mean.any()\n'
        'g = m.residual_relu_pool_backward(x, x[:, :, 0, 0].contiguous(), '
        'out)\n'
        'assert g.shape == x.shape and not g.any()\n'
        # Identity value conv, unit gate, no history: z = x.
        'w = torch.zeros(4, 9); w[:, 4] = 1\n'
        'gate, lam = torch.ones(1, 1), torch.zeros(4)\n'
        'st = m.mrla_light_stats(x, w, gate, lam, x, e, e, 0)\n'
        'assert torch.allclose(st[0, :, 0], x.mean((2, 3))[0])\n'
        # A zero norm gradient leaves only the residual's.
        'gx = m.mrla_light_backward(x, x, w, gate, lam, x, '
        'torch.zeros(4, 4), 0)[0]\n'
        'assert torch.equal(gx, x)\n'
        # The same through the one-op backward: gamma = 0.
        'z = torch.zeros(4)\n'
        'gx = m.mrla_light_norm_backward(x, x, w, gate, lam, x, z, z, '
        'torch.ones(4), True, 0)[0]\n'
        'assert torch.equal(gx, x)\n'
        # The one-op forward: gamma = 0 leaves x + beta.
        'y, mean, invstd, var = m.mrla_light_norm_forward(x, w, gate, lam, '
        'x, z, torch.ones(4), e, e, True, 1e-5, 0)\n'
        'assert torch.equal(y, x + 1)\n'
        'assert torch.allclose(mean, x.mean((0, 2, 3)))\n')
    proc = subprocess.run([sys.executable, '-c', check], cwd=BUILD,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
