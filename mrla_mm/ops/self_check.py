"""A check of each compiled op against its PyTorch composition on first use.

A GPU user runs CUDA kernels that may never have run on that GPU, nor
since their last change on any (docs/ops.md records where they ran). So
the first time an op runs compiled on a checked device for a dtype and
memory format (a kind), :func:`failure` runs the op's case of
:mod:`mrla_mm.ops.self_check_cases` once: a small random input of that
kind through the kernels and, in float64, through the PyTorch
composition; outputs and gradients must agree within the dtype's
:data:`TOLERANCES`. A kind that fails is warned about once, naming the op,
device, dtype, format and the error, and keeps its verdict for the rest of
the process: ``auto`` runs the op through PyTorch for it, ``compiled``
raises (see :func:`mrla_mm.ops.ext_loader.use_compiled`).
``MRLA_OPS_SELF_CHECK=0`` turns the check off.

Only calls the kernels accept are checked: maps of disagreeing rank, shape
or device go on to the op's own error first.
"""
import logging
import os
import threading
from typing import Dict, Optional, Sequence

import torch
from torch import Tensor

from . import ext_loader

logger = logging.getLogger('mrla_mm.ops')

# Device types whose kernels are checked. The CPU kernels are the ones
# the test suite runs on the machine that builds them; the tests add
# 'cpu' here to run the check itself.
CHECKED_DEVICE_TYPES = {'cuda'}

# Largest error allowed of an output or gradient of a dtype, relative to
# the largest magnitude of the float64 result. The kernels accumulate in
# float32 (float64 for float64 maps) and round each result once; a few
# roundings of the dtype pass, a misplaced tap or an accumulation in half
# precision does not (see self_check_cases.ROUNDED_BETWEEN).
TOLERANCES = {
    torch.float64: 1e-9,
    torch.float32: 2e-5,
    torch.float16: 1e-2,
    torch.bfloat16: 6e-2,
}

_verdicts: Dict[tuple, Optional[str]] = {}
_lock = threading.Lock()
_state = threading.local()


def enabled() -> bool:
    """Whether ``MRLA_OPS_SELF_CHECK`` (default 1) asks for the check."""
    value = os.environ.get('MRLA_OPS_SELF_CHECK', '1')
    if value not in ('0', '1'):
        raise ValueError(f'MRLA_OPS_SELF_CHECK must be 0 or 1, got '
                         f'{value!r}')
    return value == '1'


def running() -> bool:
    """Whether this thread is running a self-check."""
    return getattr(_state, 'running', False)


def failure(op: str, maps: Sequence[Tensor]) -> Optional[str]:
    """Why ``op``'s compiled kernels must not serve ``maps``: the failed
    self-check of their kind, or None. Checks the kind on its first
    call."""
    x = maps[0]
    if x.device.type not in CHECKED_DEVICE_TYPES or not enabled():
        return None
    key = (op, x.device, x.dtype, ext_loader.map_format(x))
    if key in _verdicts:
        return _verdicts[key]
    if (running() or torch.compiler.is_compiling()
            or _capturing(x) or not _accepted(maps)):
        # Within a check, a trace or a graph capture no check can run;
        # the next call of the kind is checked.
        return None
    with _lock:
        if key not in _verdicts:
            _verdicts[key] = _check(*key)
    return _verdicts[key]


def _capturing(x: Tensor) -> bool:
    return x.device.type == 'cuda' and torch.cuda.is_current_stream_capturing()


def _accepted(maps: Sequence[Tensor]) -> bool:
    """Whether the kernels' own checks pass the maps' rank, shape and
    device (each op converts dtypes itself)."""
    x = maps[0]
    return all(t.dim() == 4 and t.shape == x.shape and t.device == x.device
               for t in maps)


def _device_name(device: torch.device) -> str:
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    return device.type.upper()


def _check(op: str, device: torch.device, dtype: torch.dtype,
           fmt: torch.memory_format) -> Optional[str]:
    """Runs the kind's case; the failure message, or None if it passed."""
    # The cases import the ops, which import this module.
    from .self_check_cases import compare
    _state.running = True
    try:
        error = compare(op, device, dtype, fmt, TOLERANCES)
    except Exception as e:  # a kernel that raises fails its check
        error = f'{type(e).__name__}: {e}'
    finally:
        _state.running = False
    if error is None:
        return None
    message = (f'the compiled kernels failed their self-check on '
               f'{_device_name(device)} ({device}), {dtype}, {fmt}: {error}')
    logger.warning(f'{op}: {message}; auto runs the PyTorch composition '
                   'for this device, dtype and format from now on')
    return message
