"""Loads the compiled MRLA ops (``mrla_mm._ext``) and picks the path.

The ops dispatch to the compiled extension when it is built and supports
the inputs, else to the pure-PyTorch composition, which computes the same
function. Which path runs is logged once per reason. The environment
variable ``MRLA_OPS_BACKEND`` selects the path: ``auto`` (default),
``pytorch`` (never the extension) or ``compiled`` (raise if the extension
cannot serve a call).

``auto`` also leaves to PyTorch the inputs on which the compiled kernels
were measured slower than PyTorch's own: :data:`ROUTES` holds, for every
op, device and memory format, the path ``auto`` takes and the measurement
it rests on. Under ``torch.compile``, ``auto`` takes the PyTorch path,
which the compiler traces into kernels of its own. ``compiled`` runs the
kernels in all these cases all the same.

While a model is exported (``torch.onnx.export``, with either exporter,
or ``torch.export``) every op takes the PyTorch composition whatever the
backend: the kernels are Python bindings that no exporter can trace, and
the composition exports as standard ONNX operators.

On CUDA each op's kernels are also checked against its PyTorch composition
the first time they run for a device, dtype and memory format
(:mod:`mrla_mm.ops.self_check`); ``auto`` leaves a kind that failed to
PyTorch, ``compiled`` raises.
"""
import contextlib
import importlib
import logging
import os
import threading
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

import torch

from . import self_check

logger = logging.getLogger('mrla_mm.ops')

BACKENDS = ('auto', 'pytorch', 'compiled')
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32,
                    torch.float64)
OPS = ('mrla_light_core', 'mrla_light_batch_norm', 'mrla_value_map',
       'mrla_base_readout', 'mrla_base_batch_norm', 'residual_relu_pool')
# The paths a route may give ``auto``.
COMPILED = 'compiled'
PYTORCH = 'pytorch'
# Compiled only while autograd records through none of the maps.
COMPILED_WITHOUT_GRAD = 'compiled without autograd'


@dataclass(frozen=True)
class Route:
    """The path ``auto`` takes for an op on maps of a device and memory
    format, and why.

    Attributes:
        path (str): :data:`COMPILED`, :data:`PYTORCH` or
            :data:`COMPILED_WITHOUT_GRAD`.
        min_plane (int): smaller planes (``H * W`` pixels) take PyTorch.
        measured (str): the measurement the route rests on
            (docs/benchmarks.md).
    """
    path: str
    min_plane: int = 0
    measured: str = ''


# CPU, NCHW: at 3x3 pixels per plane the fused light training branch is
# slower than PyTorch's CPU ops (0.86x-0.89x) and the light core's
# training step even; from 4x4 on every kernel is faster.
_CPU_NCHW = Route(
    COMPILED, 16, 'from 4x4 pixels per plane every kernel is faster than '
    'PyTorch; at 3x3 the fused light training branch runs at 0.86x-0.89x')
# CPU, channels_last: the light ops run their NCHW kernels on copies,
# slower than PyTorch's channels_last ops; the base readout's own kernel
# and the pooling op's win on large planes and lose on 14x14 and 7x7 ones,
# the stages where most of a ResNet's blocks are, so these maps all take
# PyTorch.
_CPU_NHWC_LIGHT = Route(PYTORCH, 0, 'the NCHW kernels on copies run at '
                        '0.65x-0.92x of PyTorch (layer3, 25c76a2)')
_CPU_NHWC_BASE = Route(PYTORCH, 0, 'the base readout runs at 1.01x-4.91x '
                       'of PyTorch on large planes, 0.64x-1.07x on 14x14 '
                       'and 7x7 ones (7935626)')
_CPU_NHWC_POOL = Route(PYTORCH, 0, 'measured 1.21x of PyTorch at 56x56, '
                       '0.80x at 14x14 (25c76a2, loaded VM)')
_CUDA_NCHW = Route(COMPILED, 0, 'the CUDA kernels are faster than PyTorch '
                   'on NCHW maps (H100)')
# CUDA, channels_last (H100, bfloat16): the fused light training branch
# runs at 0.67x-0.78x of PyTorch; the base value map and norm go the way
# of the light branch until they are measured on their own; the light
# core's backward runs at 0.84x at detection size while its inference
# kernel is 1.25x-1.35x faster; the base readout and the pooling op are
# faster.
_CUDA_NHWC_SLOWER = Route(PYTORCH, 0, 'the fused light training branch '
                          'runs at 0.67x-0.78x of PyTorch on an H100 '
                          '(bfloat16)')
_CUDA_NHWC_UNMEASURED = Route(PYTORCH, 0, 'not measured on its own; it '
                              'follows the fused light training branch '
                              '(0.67x-0.78x of PyTorch on an H100)')
_CUDA_NHWC_FASTER = Route(COMPILED, 0, 'faster than PyTorch on '
                          'channels_last maps (H100, bfloat16)')

_NCHW, _NHWC = torch.contiguous_format, torch.channels_last
# One row per op, device type and memory format of the maps.
ROUTES = {
    **{(op, 'cpu', _NCHW): _CPU_NCHW for op in OPS},
    **{(op, 'cpu', _NHWC): _CPU_NHWC_LIGHT
       for op in ('mrla_light_core', 'mrla_light_batch_norm',
                  'mrla_value_map')},
    **{(op, 'cpu', _NHWC): _CPU_NHWC_BASE
       for op in ('mrla_base_readout', 'mrla_base_batch_norm')},
    ('residual_relu_pool', 'cpu', _NHWC): _CPU_NHWC_POOL,
    **{(op, 'cuda', _NCHW): _CUDA_NCHW for op in OPS},
    ('mrla_light_core', 'cuda', _NHWC): Route(
        COMPILED_WITHOUT_GRAD, 0, 'the inference kernel is 1.25x-1.35x '
        'faster than PyTorch, the backward 0.84x at detection size (H100, '
        'bfloat16)'),
    ('mrla_light_batch_norm', 'cuda', _NHWC): _CUDA_NHWC_SLOWER,
    ('mrla_value_map', 'cuda', _NHWC): _CUDA_NHWC_UNMEASURED,
    ('mrla_base_batch_norm', 'cuda', _NHWC): _CUDA_NHWC_UNMEASURED,
    ('mrla_base_readout', 'cuda', _NHWC): _CUDA_NHWC_FASTER,
    ('residual_relu_pool', 'cuda', _NHWC): _CUDA_NHWC_FASTER,
}
_DEVICE_NAMES = dict(cpu='the CPU', cuda='CUDA')

_ext = None
_ext_error: Optional[str] = None
_logged = set()
# The path a thread's ops take whatever MRLA_OPS_BACKEND says (the
# self-check runs both), see forced_backend.
_forced = threading.local()


def load_ext():
    """The extension module, or None if it is not built (reason kept)."""
    global _ext, _ext_error
    if _ext is None and _ext_error is None:
        try:
            _ext = importlib.import_module('mrla_mm._ext')
        except ImportError as e:
            _ext_error = str(e)
    return _ext


def ops_backend() -> str:
    """The path selected by ``MRLA_OPS_BACKEND`` (or
    :func:`forced_backend`)."""
    # Never forced in a torch.compile trace (no check runs there), which
    # need not trace the thread-local.
    forced = (None if torch.compiler.is_compiling() else getattr(
        _forced, 'backend', None))
    if forced is not None:
        return forced
    backend = os.environ.get('MRLA_OPS_BACKEND', 'auto')
    if backend not in BACKENDS:
        raise ValueError(f'MRLA_OPS_BACKEND must be one of {BACKENDS}, got '
                         f'{backend!r}')
    return backend


@contextlib.contextmanager
def forced_backend(backend: str) -> Iterator[None]:
    """Within the context this thread's ops take ``backend``."""
    if backend not in BACKENDS:
        raise ValueError(f'backend must be one of {BACKENDS}, got '
                         f'{backend!r}')
    before = getattr(_forced, 'backend', None)
    _forced.backend = backend
    try:
        yield
    finally:
        _forced.backend = before


def _log_once(key: str, level: int, msg: str) -> None:
    # A logging call inside a torch.compile trace would split its graph;
    # the self-check's own calls would log paths the caller's do not take.
    if (key not in _logged and not torch.compiler.is_compiling()
            and not self_check.running()):
        _logged.add(key)
        logger.log(level, msg)


def unsupported_reason(maps: Iterable[torch.Tensor]) -> Optional[str]:
    """Why the extension cannot take these feature maps, or None."""
    ext = load_ext()
    if ext is None:
        return f'the extension mrla_mm._ext is not built ({_ext_error})'
    for t in maps:
        if t.device.type == 'cuda' and not ext.with_cuda():
            return 'the extension was built without CUDA'
        if t.device.type not in ('cpu', 'cuda'):
            return f'no kernel for device {t.device.type!r}'
        if t.dtype not in SUPPORTED_DTYPES:
            return f'no kernel for dtype {t.dtype}'
        if t.numel() == 0:
            return 'empty input'
    return None


def route(op: str, t: torch.Tensor) -> Route:
    """The row of :data:`ROUTES` for ``op`` on map ``t``."""
    try:
        return ROUTES[op, t.device.type, map_format(t)]
    except KeyError:
        raise ValueError(
            f'no route for op {op!r} on a {t.device.type} map; ops are '
            f'{OPS}, devices cpu and cuda') from None


def prefers_pytorch(op: str, maps: Iterable[torch.Tensor]) -> Optional[str]:
    """Why ``auto`` leaves ``op`` on these maps to PyTorch (see
    :data:`ROUTES`), or None."""
    maps = list(maps)
    for t in maps:
        if t.dim() != 4:
            continue
        row = route(op, t)
        where = _DEVICE_NAMES[t.device.type]
        if row.path == PYTORCH or (row.path == COMPILED_WITHOUT_GRAD
                                   and needs_autograd(*maps)):
            fmt = ('channels_last' if map_format(t) is torch.channels_last
                   else 'NCHW')
            return f'{fmt} maps run faster through PyTorch on {where}'
        if t.shape[2] * t.shape[3] < row.min_plane:
            return (f'planes under {row.min_plane} pixels run faster '
                    f'through PyTorch on {where}')
    return None


def exporting() -> bool:
    """Whether a graph is being exported (``torch.onnx.export`` with
    either exporter, or ``torch.export``)."""
    return torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting()


def use_compiled(op: str, maps: Iterable[torch.Tensor]) -> bool:
    """Whether ``op`` runs compiled on ``maps``; logs the choice once."""
    if exporting():
        return False
    backend = ops_backend()
    if backend == 'auto' and torch.compiler.is_compiling():
        # torch.compile traces the composition and generates kernels of
        # its own; the extension would split its graph.
        return False
    if backend == 'pytorch':
        _log_once(f'{op}:env', logging.INFO,
                  f'{op}: pure-PyTorch path (MRLA_OPS_BACKEND=pytorch)')
        return False
    maps = list(maps)
    reason = unsupported_reason(maps)
    preference = None
    if reason is None and backend == 'auto':
        preference = prefers_pytorch(op, maps)
    if reason is None and preference is not None:
        _log_once(f'{op}:{preference}', logging.INFO,
                  f'{op}: pure-PyTorch path, since {preference}')
        return False
    if reason is None:
        failure = self_check.failure(op, maps)
        if failure is None:
            _log_once(f'{op}:ext', logging.INFO,
                      f'{op}: compiled path (mrla_mm._ext)')
            return True
        if backend == 'compiled':
            raise RuntimeError(f'{op}: MRLA_OPS_BACKEND=compiled but '
                               f'{failure}')
        # self_check warned once; this kind takes PyTorch from now on.
        return False
    if backend == 'compiled':
        raise RuntimeError(f'{op}: MRLA_OPS_BACKEND=compiled but {reason}')
    _log_once(f'{op}:{reason}', logging.WARNING,
              f'{op}: pure-PyTorch path, since {reason}')
    return False


def needs_autograd(*tensors: Optional[torch.Tensor]) -> bool:
    """Whether autograd records a graph through any of ``tensors``."""
    return torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in tensors)


def map_format(x: torch.Tensor) -> torch.memory_format:
    """The memory format the kernels use for ``x`` (a copy is made only
    if ``x`` is neither contiguous nor channels_last)."""
    if not x.is_contiguous() and x.is_contiguous(
            memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def acc_dtype(x: torch.Tensor) -> torch.dtype:
    """Dtype of the small operands and of the accumulation."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def small_operand(t: Optional[torch.Tensor],
                  x: torch.Tensor) -> torch.Tensor:
    """``t`` (a per-channel vector such as a folded norm's scale) as the
    kernels take it next to map ``x``: flat, contiguous, in the
    accumulation dtype, out of autograd; an empty tensor for None."""
    if t is None:
        return x.new_empty(0, dtype=acc_dtype(x))
    return t.detach().to(acc_dtype(x)).reshape(-1).contiguous()
