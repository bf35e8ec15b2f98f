"""Parameter and FLOP counts through mmengine's analysis (fvcore-style).

FLOPs count one multiply-add as one FLOP, as mmengine's counter does;
elementwise ops (gates, additions, activations) are not counted.
"""
from typing import Sequence

import torch
import torch.nn as nn
from mmengine.analysis import get_model_complexity_info


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
    with torch.no_grad():
        info = get_model_complexity_info(
            model,
            inputs=(torch.rand(1, 3, *shape), ),
            show_table=False,
            show_arch=False)
    return dict(
        params=int(info['params']),
        flops=int(info['flops']),
        params_str=info['params_str'],
        flops_str=info['flops_str'])
