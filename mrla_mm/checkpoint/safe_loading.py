"""Let torch's safe loader open mmengine training checkpoints.

torch >= 2.6 loads with ``weights_only=True`` by default: its unpickler
builds tensors, containers and numbers only, and refuses every other
global a file names. mmengine's training checkpoints hold a few more
(found by listing ``torch.serialization.get_unsafe_globals_in_checkpoint``
of mmdet and mmpretrain training checkpoints): the message hub's
:class:`HistoryBuffer` of each logged scalar, whose log and count
histories are numpy arrays of numeric dtypes, numpy scalars (e.g. the
``eta``), and ``getattr(HistoryBuffer, name)`` for the buffer's statistic
methods. :func:`allow_mmengine_checkpoints` allow-lists exactly these, so
every ``torch.load`` of the process (mmengine's ``load_checkpoint``,
``--resume``, ``load_from``, ``init_detector``...) opens such checkpoints
safely. Anything else a file names is still refused by torch, with the
global it refused in the message.

``getattr`` is not allow-listed itself: :func:`history_buffer_statistic`
stands in for it and returns only the statistic methods of
:class:`HistoryBuffer`.
"""
import pickle
from contextlib import contextmanager
from typing import Callable, List, Tuple, Union

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

# The statistic methods a HistoryBuffer pickles by reference.
HISTORY_BUFFER_STATISTICS = ('min', 'max', 'current', 'mean')
# Numeric dtypes only: a numpy array or scalar of them is inert data.
NUMERIC_DTYPE_CHARS = '?bhilqBHILQefdgFDG'


def history_buffer_statistic(obj, name: str) -> Callable:
    """``getattr`` restricted to the statistic methods of HistoryBuffer.

    Raises:
        pickle.UnpicklingError: For any other object or attribute.
    """
    if obj is not HistoryBuffer or name not in HISTORY_BUFFER_STATISTICS:
        raise pickle.UnpicklingError(
            f'refused getattr({obj!r}, {name!r}) while loading: the safe '
            'loader of mrla_mm allows getattr only for the statistic methods '
            f'{HISTORY_BUFFER_STATISTICS} of {HistoryBuffer.__qualname__}')
    return getattr(HistoryBuffer, name)


def mmengine_checkpoint_globals() -> List[Union[Callable, Tuple]]:
    """The globals of mmengine training checkpoints, in the form
    :func:`torch.serialization.add_safe_globals` takes."""
    # What numpy pickles arrays and scalars with, named as numpy 2.x
    # (numpy._core) and numpy 1.x (numpy.core) write it.
    reconstruct = np.zeros(0).__reduce__()[0]
    scalar = np.float64(0).__reduce__()[0]
    numpy_functions = [(f, f'numpy.{core}.multiarray.{f.__name__}')
                       for f in (reconstruct, scalar)
                       for core in ('_core', 'core')]
    dtype_classes = {type(np.dtype(c)) for c in NUMERIC_DTYPE_CHARS}
    return [
        HistoryBuffer,
        np.ndarray,
        np.dtype,
        *sorted(dtype_classes, key=lambda t: t.__name__),
        *numpy_functions,
        (history_buffer_statistic, 'builtins.getattr'),
    ]


def allow_mmengine_checkpoints() -> None:
    """Allow-list :func:`mmengine_checkpoint_globals` for safe loading."""
    torch.serialization.add_safe_globals(mmengine_checkpoint_globals())


@contextmanager
def torch_defaults_only():
    """Inside the block, torch's safe loader allows its own defaults only,
    as in a process that never imported mrla_mm (e.g. to check that a
    file loads there)."""
    allowed = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    try:
        yield
    finally:
        torch.serialization.add_safe_globals(allowed)
