"""Parameter and FLOP counts through mmengine's analysis (fvcore-style).

FLOPs count one multiply-add as one FLOP, as mmengine's counter does;
elementwise ops (gates, additions, activations) are not counted. Two
products are added by hand because the reference computes them with
matrix products, which mmengine counts, while our composition multiplies
elementwise: MRLA-base's readout, a weighted sum over the cached values
(one multiply-add per cached value element), and MRLA-light's head scores
``Q . K`` (one multiply-add per channel and sample).
"""
import os
from contextlib import contextmanager
from typing import Sequence

import torch
import torch.nn as nn
from mmengine.analysis import get_model_complexity_info

from mrla_mm.models.layers import MRLABase, MRLALight


class _DetectorTensorForward(nn.Module):
    """Calls a detector's tensor-mode forward with one synthetic sample."""

    def __init__(self, detector: nn.Module, shape: Sequence[int]):
        super().__init__()
        from mmdet.structures import DetDataSample
        self.detector = detector
        h, w = shape
        self.sample = DetDataSample(
            metainfo=dict(
                img_shape=(h, w),
                ori_shape=(h, w),
                pad_shape=(h, w),
                batch_input_shape=(h, w),
                scale_factor=(1.0, 1.0)))

    def forward(self, x):
        return self.detector._forward(x, [self.sample])


@contextmanager
def _pytorch_ops():
    """Run MRLA through its PyTorch composition: the tracer counts the
    convolutions inside it, while a compiled op is opaque to it."""
    previous = os.environ.get('MRLA_OPS_BACKEND')
    os.environ['MRLA_OPS_BACKEND'] = 'pytorch'
    try:
        yield
    finally:
        if previous is None:
            del os.environ['MRLA_OPS_BACKEND']
        else:
            os.environ['MRLA_OPS_BACKEND'] = previous


def _base_readout_flops(model: nn.Module, inputs: tuple) -> int:
    """Multiply-adds of every MRLA-base readout in one forward pass."""
    total = [0]

    def count(layer, args, out):
        total[0] += out.numel() * len(args[1])  # args: (x, cache)

    hooks = [
        m.register_forward_hook(count) for m in model.modules()
        if isinstance(m, MRLABase)
    ]
    if hooks:
        try:
            model(*inputs)
        finally:
            for hook in hooks:
                hook.remove()
    return total[0]


def _light_score_flops(model: nn.Module, batch: int) -> int:
    """Multiply-adds of every MRLA-light ``Q . K`` in one forward pass
    (each light layer runs once per pass)."""
    return batch * sum(m.channels for m in model.modules()
                       if isinstance(m, MRLALight))


def model_complexity(model: nn.Module,
                     shape: Sequence[int] = (224, 224),
                     part: str = 'model') -> dict:
    """Count parameters and FLOPs of ``model`` on a ``1x3xHxW`` input.

    Args:
        model (nn.Module): A backbone, an mmdet detector or an mmpretrain
            classifier.
        shape (Sequence[int]): Input ``(H, W)``.
        part (str): ``'model'`` (the whole model's tensor forward) or
            ``'backbone'`` (``model.backbone`` only).

    Returns:
        dict: ``params``, ``flops`` (ints) and their short strings.
    """
    if part not in ('model', 'backbone'):
        raise ValueError(
            f"part must be 'model' or 'backbone', got {part!r}")
    if part == 'backbone':
        if not hasattr(model, 'backbone'):
            raise ValueError(f'{type(model).__name__} has no backbone')
        model = model.backbone
    elif hasattr(model, 'roi_head') or hasattr(model, 'bbox_head'):
        model = _DetectorTensorForward(model, shape)
    model.eval()  # some OpenMMLab backbones return None from train()
    inputs = (torch.rand(1, 3, *shape), )
    with torch.no_grad(), _pytorch_ops():
        info = get_model_complexity_info(
            model, inputs=inputs, show_table=False, show_arch=False)
        flops = (int(info['flops']) + _base_readout_flops(model, inputs) +
                 _light_score_flops(model, len(inputs[0])))
    return dict(
        params=int(info['params']),
        flops=flops,
        params_str=info['params_str'],
        flops_str=f'{flops / 1e9:.3f}G')
