"""The ops' self-check on first use (mrla_mm/ops/self_check.py), run on
the CPU kernels: the check is keyed by device type, and these tests add
the CPU to the checked types. tests/test_ops_cuda_emulated.py runs it on
the CUDA kernels themselves (emulated)."""
import logging

import pytest
import torch

from mrla_mm.ops import ext_loader, self_check
from mrla_mm.ops.mrla_light import mrla_light_core, mrla_light_core_pytorch
from mrla_mm.ops.self_check_cases import CASES, compare
from devices import NO_CUDA

DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
FORMATS = (torch.contiguous_format, torch.channels_last)
# Smaller than the check's own maps: the CPU kernels have no slices.
SHAPE = (2, 8, 16, 20)
QUARTER = {k: v / 4 for k, v in self_check.TOLERANCES.items()}


@pytest.fixture
def checked_cpu(monkeypatch):
    """The self-check runs for CPU maps, with no verdicts yet."""
    if ext_loader.load_ext() is None:
        pytest.skip('the extension mrla_mm._ext is not built')
    monkeypatch.setattr(self_check, 'CHECKED_DEVICE_TYPES', {'cpu'})
    monkeypatch.setattr(self_check, '_verdicts', {})
    monkeypatch.setattr(ext_loader, '_logged', set())
    monkeypatch.setenv('MRLA_OPS_SELF_CHECK', '1')
    monkeypatch.setenv('MRLA_OPS_BACKEND', 'auto')


class OffByOneTap:
    """mrla_mm._ext whose light forward reads its taps one pixel to the
    left: the kernel a wrong index would make."""

    def __init__(self, ext):
        self._ext = ext

    def __getattr__(self, name):
        return getattr(self._ext, name)

    def mrla_light_forward(self, *args):
        return self._ext.mrla_light_forward(*args).roll(1, dims=3)


def light_inputs(fmt=torch.contiguous_format, dtype=torch.float32):
    g = torch.Generator().manual_seed(3)
    x, o = (torch.randn(2, 4, 9, 11, generator=g, dtype=dtype).contiguous(
        memory_format=fmt) for _ in range(2))
    return (x, torch.randn(4, 1, 3, 3, generator=g, dtype=dtype),
            torch.rand(2, 2, generator=g, dtype=dtype),
            torch.randn(4, generator=g, dtype=dtype), o)


@pytest.mark.parametrize('dtype', DTYPES, ids=str)
@pytest.mark.parametrize('op', sorted(CASES))
def test_correct_kernels_pass(checked_cpu, op, dtype):
    """Every op's case passes the CPU kernels within a quarter of the
    tolerances (NCHW maps: auto leaves channels_last CPU maps to
    PyTorch)."""
    assert compare(op, torch.device('cpu'), dtype, torch.contiguous_format,
                   QUARTER, SHAPE) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
@pytest.mark.parametrize('fmt', FORMATS, ids=['nchw', 'cl'])
@pytest.mark.parametrize('dtype', DTYPES, ids=str)
@pytest.mark.parametrize('op', sorted(CASES))
def test_cuda_kernels_pass(op, dtype, fmt):
    """On a GPU, each kind as the check itself runs it, within a quarter
    of the tolerances."""
    assert compare(op, torch.device('cuda'), dtype, fmt, QUARTER) is None


def test_check_changes_no_output(checked_cpu, monkeypatch):
    """A passing check leaves the call's result bit for bit as without
    the check, and the caller's random state alone; it runs once per
    kind."""
    inputs = light_inputs()
    monkeypatch.setenv('MRLA_OPS_SELF_CHECK', '0')
    with torch.no_grad():
        unchecked = mrla_light_core(*inputs)
    assert self_check._verdicts == {}
    monkeypatch.setenv('MRLA_OPS_SELF_CHECK', '1')
    state = torch.get_rng_state()
    with torch.no_grad():
        checked = mrla_light_core(*inputs)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(checked, unchecked)
    key = ('mrla_light_core', torch.device('cpu'), torch.float32,
           torch.contiguous_format)
    assert self_check._verdicts == {key: None}
    mrla_light_core(*light_inputs(dtype=torch.float64))
    # auto leaves CPU channels_last maps to PyTorch: nothing to check.
    mrla_light_core(*light_inputs(torch.channels_last))
    assert len(self_check._verdicts) == 2


def test_wrong_kernel_is_caught_and_routed_around(checked_cpu, monkeypatch,
                                                   caplog):
    monkeypatch.setattr(ext_loader, '_ext', OffByOneTap(ext_loader._ext))
    inputs = light_inputs()
    want = mrla_light_core_pytorch(*inputs)
    with caplog.at_level(logging.INFO, logger='mrla_mm.ops'):
        for _ in range(3):
            with torch.no_grad():
                got = mrla_light_core(*inputs)
            # auto runs the composition itself for the failed kind.
            assert torch.equal(got, want)
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    msg = warnings[0]
    for part in ('mrla_light_core: the compiled kernels failed their '
                 'self-check on CPU (cpu), torch.float32, '
                 'torch.contiguous_format: identity, inference: max error',
                 'auto runs the PyTorch composition'):
        assert part in msg, msg
    assert 'compiled path' not in caplog.text
    # Another kind has its own verdict; here it fails too.
    with torch.no_grad():
        mrla_light_core(*light_inputs(dtype=torch.float64))
    assert len([r for r in caplog.records
                if r.levelno == logging.WARNING]) == 2
    monkeypatch.setenv('MRLA_OPS_BACKEND', 'compiled')
    with pytest.raises(RuntimeError,
                       match='mrla_light_core: MRLA_OPS_BACKEND=compiled but '
                       'the compiled kernels failed their self-check on CPU'):
        mrla_light_core(*inputs)


def test_compiled_backend_raises_on_first_failed_check(checked_cpu,
                                                       monkeypatch):
    monkeypatch.setattr(ext_loader, '_ext', OffByOneTap(ext_loader._ext))
    monkeypatch.setenv('MRLA_OPS_BACKEND', 'compiled')
    with pytest.raises(RuntimeError, match='failed their self-check'):
        mrla_light_core(*light_inputs())


def test_check_off(checked_cpu, monkeypatch):
    """MRLA_OPS_SELF_CHECK=0: no check, the (here wrong) kernel runs."""
    monkeypatch.setattr(ext_loader, '_ext', OffByOneTap(ext_loader._ext))
    monkeypatch.setenv('MRLA_OPS_SELF_CHECK', '0')
    inputs = light_inputs()
    with torch.no_grad():
        got = mrla_light_core(*inputs)
    assert not torch.equal(got, mrla_light_core_pytorch(*inputs))
    assert self_check._verdicts == {}
    monkeypatch.setenv('MRLA_OPS_SELF_CHECK', 'no')
    with pytest.raises(ValueError,
                       match="MRLA_OPS_SELF_CHECK must be 0 or 1, got 'no'"):
        mrla_light_core(*inputs)


def test_bad_input_raises_the_ops_error_first(checked_cpu, monkeypatch):
    """A call the kernels reject raises the op's own error; no check runs,
    so that even a failing one could not hide the caller's mistake."""
    monkeypatch.setattr(ext_loader, '_ext', OffByOneTap(ext_loader._ext))
    x, w, gate, lam, o = light_inputs()
    for bad in (o[:, :, :5], o[0]):
        with pytest.raises(RuntimeError,
                           match=r'o_prev must have the shape of x'):
            mrla_light_core(x, w, gate, lam, bad)
    with pytest.raises(ValueError, match='value_act must be one of'):
        mrla_light_core(x, w, gate, lam, o, 'relu')
    assert self_check._verdicts == {}
