"""The cases of the ops' self-check (:mod:`mrla_mm.ops.self_check`).

Each case runs one op on a small random input of a kind (device, dtype,
memory format) through the path the caller forces, every kernel of the op
(inference, training with autograd, each value activation, batch and
running statistics) and returns its outputs and gradients by name;
:func:`compare` runs it compiled in the kind's dtype and through PyTorch
in float64, on the same values. The maps, 2 x 8 x 64 x 64, give a GPU's
kernels several slices per plane and idle lanes in a channels_last tile,
and reductions over 8192 values per channel.
"""
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import ext_loader
from .mrla_base import mrla_base_batch_norm, mrla_base_readout
from .mrla_light import mrla_light_batch_norm, mrla_light_core, mrla_value_map
from .residual_relu_pool import residual_relu_pool

SHAPE = (2, 8, 64, 64)
HEADS = 2
# Cached value maps of the base readout.
LAYERS = 3


class Inputs:
    """Random inputs of a kind, the same values whatever ``dtype`` they
    are given in: drawn in float64 from a fixed seed (the caller's random
    state is left alone) and rounded to ``kind_dtype``. Maps are in
    ``dtype``, small operands in its accumulation dtype, as the modules
    give them (float32 parameters next to half-precision maps)."""

    def __init__(self, device: torch.device, kind_dtype: torch.dtype,
                 fmt: torch.memory_format, dtype: torch.dtype,
                 shape: Tuple[int, int, int, int]):
        self.device, self.kind_dtype, self.fmt = device, kind_dtype, fmt
        self.dtype, self.shape = dtype, shape
        self.small_dtype = (torch.float64
                            if dtype == torch.float64 else torch.float32)
        self._gen = torch.Generator().manual_seed(0)

    def _draw(self, shape, dtype: torch.dtype, positive: bool) -> Tensor:
        draw = torch.rand if positive else torch.randn
        t = draw(*shape, generator=self._gen, dtype=torch.float64)
        return t.to(self.kind_dtype).to(device=self.device, dtype=dtype)

    def map(self, shape: Optional[Sequence[int]] = None) -> Tensor:
        return self._draw(shape or self.shape, self.dtype,
                          False).contiguous(memory_format=self.fmt)

    def small(self, *shape: int, positive: bool = False) -> Tensor:
        return self._draw(shape, self.small_dtype, positive)

    def like(self, t: Tensor) -> Tensor:
        """A random gradient for output ``t``."""
        if t.dim() == 4:
            return self.map(t.shape)
        return self._draw(t.shape, t.dtype, False)


Outputs = Dict[str, Tensor]


def _with_grads(out: Outputs, name: str, t: Inputs, fn: Callable,
                **inputs: Tensor) -> None:
    """Adds ``fn(**inputs)``'s outputs and, under random output gradients,
    the gradients of its inputs to ``out``."""
    leaves = {k: v.detach().clone().requires_grad_()
              for k, v in inputs.items()}
    got = fn(**leaves)
    got = got if isinstance(got, tuple) else (got, )
    for i, y in enumerate(got):
        out[f'{name}: output {i}'] = y
    grads = torch.autograd.grad(got, list(leaves.values()),
                                [t.like(y) for y in got])
    for k, g in zip(leaves, grads):
        out[f'{name}: gradient of {k}'] = g


def _light_inputs(t: Inputs) -> Dict[str, Tensor]:
    b, c = t.shape[:2]
    x, o_prev = t.map(), t.map()
    weight, lam = t.small(c, 1, 3, 3), t.small(c)
    return dict(x=x, value_weight=weight,
                gate=t.small(b, HEADS, positive=True), lambda_t=lam,
                o_prev=o_prev)


def light_core(t: Inputs) -> Outputs:
    c = t.shape[1]
    inputs = _light_inputs(t)
    scale, shift = t.small(c, positive=True), t.small(c)
    out = {}
    for act in ('identity', 'gelu'):
        with torch.no_grad():
            out[f'{act}, inference'] = mrla_light_core(
                **inputs, value_act=act, scale=scale, shift=shift,
                add_input=True)
        _with_grads(out, act, t,
                    lambda **a: mrla_light_core(**a, value_act=act),
                    **inputs)
    return out


def value_map(t: Inputs) -> Outputs:
    x, weight = t.map(), t.small(t.shape[1], 1, 3, 3)
    out = {}
    for act in ('identity', 'gelu'):
        _with_grads(out, act, t,
                    lambda **a: mrla_value_map(**a, value_act=act),
                    x=x, value_weight=weight)
    return out


def light_batch_norm(t: Inputs) -> Outputs:
    c = t.shape[1]
    inputs = _light_inputs(t)
    gamma, beta = t.small(c, positive=True), t.small(c)
    mean, var = t.small(c), t.small(c, positive=True)
    out = {}
    # Batch statistics (training) and running statistics (norm_eval).
    for act, training in (('identity', True), ('gelu', False)):
        stats = [mean.clone(), var.clone()]
        name = f'{act}, training={training}'
        _with_grads(out, name, t,
                    lambda **a: mrla_light_batch_norm(
                        **a, value_act=act, running_mean=stats[0],
                        running_var=stats[1], training=training),
                    weight=gamma, bias=beta, **inputs)
        out[f'{name}: running statistics'] = torch.cat(stats)
    return out


def _base_inputs(t: Inputs):
    b, c = t.shape[:2]
    return (t.small(b, c), t.small(b, LAYERS, c),
            [t.map() for _ in range(LAYERS)])


def _unpacked(fn: Callable, **a: Tensor):
    """``fn`` of the inputs, the value maps given one by one
    (``value0``, ...)."""
    values = [a.pop(f'value{s}') for s in range(LAYERS)]
    return fn(values=values, **a)


def base_readout(t: Inputs) -> Outputs:
    c = t.shape[1]
    q, keys, values = _base_inputs(t)
    scale, shift, residual = t.small(c, positive=True), t.small(c), t.map()
    out = {}
    with torch.no_grad():
        out['inference'] = mrla_base_readout(q, keys, values, HEADS,
                                             scale=scale, shift=shift,
                                             residual=residual)
    _with_grads(out, 'training', t,
                lambda **a: _unpacked(mrla_base_readout, num_heads=HEADS,
                                      **a),
                q=q, keys=keys,
                **{f'value{s}': v for s, v in enumerate(values)})
    return out


def base_batch_norm(t: Inputs) -> Outputs:
    c = t.shape[1]
    q, keys, values = _base_inputs(t)
    x = t.map()
    # The norm's output lies within +-0.7 of beta, |beta| >= 1: no ReLU
    # input near zero, whose mask the dtype's rounding could flip; half
    # the channels are all zero after the ReLU, half pass.
    gamma = t.small(c, positive=True) / 8
    sign = 1 - 2 * (torch.arange(c, device=gamma.device) % 2)
    beta = (t.small(c, positive=True) + 1) * sign
    mean, var = t.small(c), t.small(c, positive=True) + 1
    out = {}
    for training in (True, False):
        stats = [mean.clone(), var.clone()]
        name = f'training={training}'
        _with_grads(out, name, t,
                    lambda **a: _unpacked(
                        mrla_base_batch_norm, num_heads=HEADS,
                        running_mean=stats[0], running_var=stats[1],
                        training=training, **a),
                    x=x, q=q, keys=keys, weight=gamma, bias=beta,
                    **{f'value{s}': v for s, v in enumerate(values)})
        out[f'{name}: running statistics'] = torch.cat(stats)
    return out


def pool(t: Inputs) -> Outputs:
    c = t.shape[1]
    residual, identity = t.map(), t.map()
    scale, shift = t.small(c, positive=True), t.small(c)
    out = {}
    with torch.no_grad():
        got = residual_relu_pool(residual, identity, scale=scale,
                                 shift=shift)
    out['inference: output'], out['inference: means'] = got
    _with_grads(out, 'training', t, residual_relu_pool, residual=residual,
                identity=identity)
    return out


CASES = dict(mrla_light_core=light_core, mrla_value_map=value_map,
             mrla_light_batch_norm=light_batch_norm,
             mrla_base_readout=base_readout,
             mrla_base_batch_norm=base_batch_norm,
             residual_relu_pool=pool)
# Ops whose compiled path rounds maps to the map dtype between its steps
# (the base norm runs PyTorch's BatchNorm on the readout): their results
# are held to the tolerance of the maps' dtype. The others' results are
# held to that of their own dtype: a float32 gradient of a half-precision
# map's op is a float32 sum of exact products, and so the check sees an
# accumulation in half precision.
ROUNDED_BETWEEN = ('mrla_base_batch_norm', )


def rel_err(got: Tensor, want: Tensor) -> float:
    """max |got - want| / max |want|, in float64."""
    got, want = got.detach().double(), want.detach().double()
    return ((got - want).abs().max() /
            want.abs().max().clamp_min(1e-300)).item()


def compare(op: str,
            device: torch.device,
            dtype: torch.dtype,
            fmt: torch.memory_format,
            tolerances: Dict[torch.dtype, float],
            shape: Tuple[int, int, int, int] = SHAPE) -> Optional[str]:
    """Runs ``op``'s case on ``shape`` maps compiled in ``dtype`` and
    through PyTorch in float64; the first output or gradient whose error
    (relative to its largest magnitude) exceeds its tolerance (see
    :data:`ROUNDED_BETWEEN`), or None."""
    case = CASES[op]
    # The caller's autocast, inference mode and TF32 settings must not
    # change either run.
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.inference_mode(False), torch.enable_grad(), \
                torch.autocast(device.type, enabled=False):
            with ext_loader.forced_backend('compiled'):
                got = case(Inputs(device, dtype, fmt, dtype, shape))
            with ext_loader.forced_backend('pytorch'):
                want = case(Inputs(device, dtype, fmt, torch.float64, shape))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    for name, expected in want.items():
        held = dtype if op in ROUNDED_BETWEEN else got[name].dtype
        err = rel_err(got[name], expected)
        if not err <= tolerances[held]:
            return (f'{name}: max error {err:.3g} of its largest magnitude, '
                    f'allowed {tolerances[held]:g} ({held})')
    return None
