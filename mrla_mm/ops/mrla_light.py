"""MRLA-light core: ``gate * act(dwconv3x3(x)) + lambda * o_prev``."""
from torch import Tensor

from .checks import check_value_act
from .mrla_math import light_combine, mrla_value


def mrla_light_core(x: Tensor,
                    value_weight: Tensor,
                    gate: Tensor,
                    lambda_t: Tensor,
                    o_prev: Tensor,
                    value_act: str = 'identity') -> Tensor:
    """Output of an MRLA-light layer given its per-head gate.

    Args:
        x (Tensor): layer output ``X^t``, ``[B, C, H, W]``.
        value_weight (Tensor): depthwise kernel ``[C, 1, 3, 3]``.
        gate (Tensor): ``sigmoid(q . k / sqrt(d))`` per head, ``[B, G]``.
        lambda_t (Tensor): per-channel weight of the history, ``[C]``.
        o_prev (Tensor): approximation of ``O^{t-1}``, ``[B, C, H, W]``.
        value_act (str): ``'identity'`` (ResNet) or ``'gelu'`` (ViT).

    Returns:
        Tensor: ``O^t``, ``[B, C, H, W]``.
    """
    v = mrla_value(x, value_weight, check_value_act(value_act))
    return light_combine(v, gate, lambda_t, o_prev)
