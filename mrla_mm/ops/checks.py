"""Argument and input checks shared by the MRLA ops and modules.

Each error names the argument, the value it got and what is allowed.
"""
import math
from numbers import Real
from typing import Optional, Tuple

from torch import Tensor

from .mrla_math import adaptive_kernel_size

VALUE_ACTS = ('identity', 'gelu')


def check_kernel_size(kernel_size: Optional[int], channels: int) -> int:
    """Return the Q/K kernel size, adaptive when ``kernel_size`` is None."""
    if kernel_size is None:
        return adaptive_kernel_size(channels)
    if (not isinstance(kernel_size, int) or isinstance(kernel_size, bool)
            or kernel_size < 1 or kernel_size % 2 == 0):
        raise ValueError(
            f'kernel_size must be a positive odd int or None (adaptive), '
            f'got {kernel_size!r}')
    # Centred on a channel, a wider kernel's outer taps only read padding.
    if kernel_size > 2 * channels - 1:
        raise ValueError(
            f'kernel_size={kernel_size} is too large for channels='
            f'{channels}: allowed are odd sizes up to 2 * channels - 1 = '
            f'{2 * channels - 1}, the widest whose every tap can reach a '
            'channel')
    return kernel_size


def check_bool(name: str, value, allow_none: bool = False):
    """Return ``value`` if it is a bool (or None where ``allow_none``)."""
    if isinstance(value, bool) or (allow_none and value is None):
        return value
    allowed = 'True, False or None' if allow_none else 'True or False'
    raise ValueError(f'{name} must be {allowed}, got {value!r}')


def check_number(name: str, value, allow_none: bool = False):
    """Return ``value`` if it is a finite real number (or None where
    ``allow_none``); bools are refused."""
    if allow_none and value is None:
        return value
    if (not isinstance(value, Real) or isinstance(value, bool)
            or not math.isfinite(value)):
        allowed = ('a finite number or None' if allow_none else
                   'a finite number')
        raise ValueError(f'{name} must be {allowed}, got {value!r}')
    return value


def check_rate(name: str, value) -> float:
    """Return ``value`` if it is a probability in [0, 1)."""
    if (not isinstance(value, Real) or isinstance(value, bool)
            or not 0 <= value < 1):
        raise ValueError(
            f'{name} must be a number in [0, 1) (a probability; 0 disables '
            f'it), got {value!r}')
    return value


def resolve_heads(channels: int,
                  dim_per_head: Optional[int] = None,
                  num_heads: Optional[int] = None) -> Tuple[int, int]:
    """Return ``(num_heads, dim_per_head)`` from exactly one of the two.

    Raises:
        ValueError: if both or neither are given, if a value is not a
            positive int, or if it does not divide ``channels``.
    """
    if not isinstance(channels, int) or channels < 1:
        raise ValueError(f'channels must be a positive int, got {channels!r}')
    if (dim_per_head is None) == (num_heads is None):
        raise ValueError(
            'exactly one of dim_per_head and num_heads must be given, got '
            f'dim_per_head={dim_per_head!r}, num_heads={num_heads!r}')
    name, value = (('dim_per_head', dim_per_head)
                   if dim_per_head is not None else ('num_heads', num_heads))
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f'{name} must be a positive int, got {value!r}')
    if channels % value:
        raise ValueError(
            f'{name}={value} does not divide channels={channels}; allowed '
            f'values are the divisors of {channels}')
    other = channels // value
    return (other, value) if name == 'dim_per_head' else (value, other)


def check_value_act(value_act: str) -> str:
    """Return ``value_act`` if the value activation is supported."""
    if value_act not in VALUE_ACTS:
        raise ValueError(
            f'value_act must be one of {VALUE_ACTS}, got {value_act!r}')
    return value_act


def check_given_together(first: str, a, second: str, b) -> None:
    """Require the arguments named ``first`` and ``second`` (values ``a``
    and ``b``) both or neither."""
    if (a is None) != (b is None):
        raise ValueError(f'{first} and {second} must be given together or '
                         f'not at all, got {first}={type(a).__name__}, '
                         f'{second}={type(b).__name__}')


def check_folded_norm(scale: Optional[Tensor],
                      shift: Optional[Tensor]) -> None:
    """Require a folded norm's ``scale`` and ``shift`` both or neither."""
    check_given_together('scale', scale, 'shift', shift)


def check_feature_map(x: Tensor, channels: int, name: str = 'x') -> None:
    """Require a ``[B, channels, H, W]`` tensor."""
    if not isinstance(x, Tensor):
        raise TypeError(f'{name} must be a Tensor, got {type(x).__name__}')
    if x.dim() != 4:
        raise ValueError(f'{name} must be a 4-D [B, C, H, W] tensor, got '
                         f'shape {tuple(x.shape)} (rank {x.dim()})')
    if x.shape[1] != channels:
        raise ValueError(f'{name} must have {channels} channels (dim 1), got '
                         f'shape {tuple(x.shape)}')


def check_batch_norm_input(x: Tensor, running_mean: Optional[Tensor],
                           running_var: Optional[Tensor],
                           training: bool) -> None:
    """What :func:`torch.nn.functional.batch_norm` needs of a fused op's
    norm: running statistics to normalise with when not ``training``, more
    than one value per channel of ``x`` when ``training``."""
    if not training and (running_mean is None or running_var is None):
        raise ValueError('running_mean and running_var are required when '
                         'training=False')
    if training and x.numel() // x.shape[1] <= 1:
        raise ValueError('Expected more than 1 value per channel when '
                         f'training, got input size {tuple(x.shape)}')


def check_norm_excludes_fold(norm, scale: Optional[Tensor],
                             add_input: bool) -> None:
    """A layer given a norm module applies it and adds its input itself: a
    folded norm (``scale``/``shift``) or ``add_input`` on top is an error."""
    if norm is not None and (scale is not None or add_input):
        given = 'set' if scale is not None else None
        raise ValueError('norm replaces scale, shift and add_input; got '
                         f'norm={type(norm).__name__} with scale={given}, '
                         f'add_input={add_input}')
