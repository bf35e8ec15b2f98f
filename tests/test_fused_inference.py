"""Eval-mode MRLA blocks on the fused kernels against the unfused model.

In inference a block with the compiled ops takes MRLA's channel means while
it writes its output (its last norm + residual add + ReLU + pool), and
folds the eval-mode norm of the MRLA branch, its ReLU (base) and the
residual add into the light core / base readout. The result must be the
PyTorch path's.
"""
import copy

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils._python_dispatch import TorchDispatchMode

from mrla_mm.models import MRLAResNet
from conftest import rel_err
from devices import DEVICES


class _MapOps(TorchDispatchMode):
    """Names of the ATen ops run on 4-D tensors."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        first = args[0] if args else None
        if isinstance(first, torch.Tensor) and first.dim() == 4:
            self.names.append(str(func))
        return out


def _randomize_norms(model):
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            # Non-trivial statistics, so that a wrong fold shows.
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)


def _model(kind):
    torch.manual_seed(0)
    model = MRLAResNet(50, mrla_cfg=dict(type=kind), out_indices=(0, 1, 2, 3))
    _randomize_norms(model)
    model.eval()
    return model


def _run(model, x, backend, monkeypatch):
    monkeypatch.setenv('MRLA_OPS_BACKEND', backend)
    with torch.no_grad(), _MapOps() as ops:
        outs = model(x)
    return outs, ops.names


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('kind', ['MRLALight', 'MRLABase'])
@pytest.mark.parametrize(
    'fmt', [torch.contiguous_format, torch.channels_last])
def test_fused_eval_matches_pytorch_path(kind, fmt, device, monkeypatch):
    model = _model(kind).to(device)
    x = torch.randn(2, 3, 64, 64, device=device).contiguous(
        memory_format=fmt)
    ref, ref_ops = _run(model, x, 'pytorch', monkeypatch)
    # compiled: auto would leave the small late stages of this small input
    # to PyTorch.
    outs, ops = _run(model, x, 'compiled', monkeypatch)
    for out, r in zip(outs, ref):
        assert rel_err(out, r) < 1e-5
    # ResNet-50 has 16 blocks: each lost the passes of its MRLA norm and of
    # its last norm, and the separate pooling of its output.
    def count(names, key):
        return sum(key in n for n in names)

    assert count(ref_ops, 'batch_norm') - count(ops, 'batch_norm') == 32
    pooled = count(ref_ops, 'mean') + count(ref_ops, 'avg_pool')
    assert pooled >= 16 and count(ops, 'mean') + count(ops, 'avg_pool') == 0


def _train_step(model, x, backend, monkeypatch):
    """Outputs, parameter gradients and op names of one training step."""
    monkeypatch.setenv('MRLA_OPS_BACKEND', backend)
    model.zero_grad()
    with _MapOps() as ops:
        outs = model(x)
    g = torch.Generator().manual_seed(1)
    sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum()
        for o in outs).backward()
    return list(outs), [p.grad for p in model.parameters()], ops.names


def _compare_training_steps(fused, monkeypatch):
    """Two training steps of ``fused`` on the compiled path and of a copy
    on the PyTorch path: outputs, parameter gradients and buffers agree
    within 1e-10 after each; yields each step's op names (compiled,
    PyTorch)."""
    ref = copy.deepcopy(fused)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    for step in range(2):
        fused.train()
        ref.train()
        outs, grads, ops = _train_step(fused, x, 'compiled', monkeypatch)
        ref_outs, ref_grads, ref_ops = _train_step(ref, x, 'pytorch',
                                                   monkeypatch)
        for a, r in zip(outs + grads, ref_outs + ref_grads):
            assert rel_err(a, r) < 1e-10, step
        for a, r in zip(fused.buffers(), ref.buffers()):
            assert rel_err(a, r) < 1e-10, step
        yield ops, ref_ops


@pytest.mark.parametrize('norm_eval', [False, True])
def test_fused_training_matches_pytorch_path(norm_eval, monkeypatch):
    """With autograd on, the light branch, its BatchNorm (batch statistics,
    or running ones under norm_eval) and the residual add run as one op:
    same outputs, gradients and running statistics as the modules."""
    fused = _model('MRLALight').double()
    fused.norm_eval = norm_eval
    for ops, ref_ops in _compare_training_steps(fused, monkeypatch):
        # ResNet-50's 53 own norms run as modules; the 16 MRLA norms
        # only in the PyTorch path.
        assert sum('batch_norm' in n for n in ref_ops) == 53 + 16
        assert sum('batch_norm' in n for n in ops) == 53


def _saved_maps(model, x, backend, monkeypatch):
    """Distinct storages of the feature maps a training step's forward
    keeps for its backward."""
    monkeypatch.setenv('MRLA_OPS_BACKEND', backend)
    storages = set()

    def pack(t):
        if t.dim() == 4 and t.shape[2] * t.shape[3] > 1:
            storages.add(t.untyped_storage().data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        outs = model(x)
    return storages, outs


@pytest.mark.parametrize('norm_eval', [False, True])
@pytest.mark.parametrize('recompute', [True, False])
def test_fused_base_training_matches_pytorch_path(norm_eval, recompute,
                                                  monkeypatch):
    """With autograd on, the base branch, its BatchNorm, ReLU and the
    residual add run as one op that recomputes the readout (and the value
    maps with ``recompute_values``) in the backward: same outputs,
    gradients and running statistics as the modules, and two (three) maps
    fewer kept per block."""
    torch.manual_seed(0)
    fused = MRLAResNet(
        50, mrla_cfg=dict(type='MRLABase', recompute_values=recompute),
        out_indices=(0, 1, 2, 3), mrla_recompute_input=False)
    _randomize_norms(fused)
    fused = fused.double()
    fused.norm_eval = norm_eval
    ref = copy.deepcopy(fused)
    list(_compare_training_steps(fused, monkeypatch))
    # Per block the readout, the norm's output (and the value map).
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    kept, _ = _saved_maps(fused, x, 'compiled', monkeypatch)
    ref_kept, _ = _saved_maps(ref, x, 'pytorch', monkeypatch)
    assert len(ref_kept) - len(kept) == (3 if recompute else 2) * 16


def test_active_drop_path_keeps_the_norm_module(monkeypatch):
    """A drop path between the norm and the residual add needs the norm's
    output: the branch then runs unfused."""
    torch.manual_seed(0)
    model = MRLAResNet(50, mrla_cfg=dict(type='MRLALight'),
                       mrla_drop_path=0.2)
    model.train()
    _, _, ops = _train_step(model, torch.randn(2, 3, 64, 64), 'compiled',
                            monkeypatch)
    assert sum('batch_norm' in n for n in ops) == 53 + 16
