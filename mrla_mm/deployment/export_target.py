"""What of an mmdet or mmpretrain model is exported, with which inputs."""
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from .dense_detector import DenseDetectorExport, unsupported_head_reason
from .onnx_export import ExportError

PARTS = ('backbone', 'model')


@dataclass
class ExportTarget:
    """A module to export, its example inputs and the graph's names."""
    module: nn.Module
    inputs: List[Tensor]
    input_names: List[str]
    output_names: List[str]
    dynamic_axes: Dict[str, Dict[int, str]] = field(default_factory=dict)
    # Whether batch and spatial sizes may be left free.
    dynamic_ok: bool = True


class TupleOutputs(nn.Module):
    """A backbone's outputs as a flat tuple of tensors."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        out = self.module(x)
        return tuple(out) if isinstance(out, (tuple, list)) else (out, )


class ClassifierLogits(nn.Module):
    """An mmpretrain classifier's logits (``mode='tensor'``)."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(x, mode='tensor')


def build_export_target(model: nn.Module,
                        part: str,
                        shape: Sequence[int],
                        batch: int = 1,
                        dynamic: bool = False) -> ExportTarget:
    """The module for ``part`` of ``model`` and a random input of
    ``batch x 3 x H x W``.

    ``part`` is ``'backbone'`` (``model.backbone``, or ``model`` itself if
    it is a backbone) or ``'model'``: an mmpretrain classifier's logits, or
    an mmdet single-stage detector with an anchor head, NMS included
    (:class:`DenseDetectorExport`, one image). Other detectors raise
    :class:`ExportError` naming the part that has no ONNX path here.
    """
    if part not in PARTS:
        raise ValueError(f'part must be one of {PARTS}, got {part!r}')
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f'shape must be (H, W) >= 1, got {tuple(shape)}')
    if batch < 1:
        raise ValueError(f'batch must be >= 1, got {batch}')
    model.eval()
    x = torch.randn(batch, 3, *shape)
    if part == 'backbone':
        module = TupleOutputs(getattr(model, 'backbone', model))
        with torch.no_grad():
            outs = module(x)
        names = [f'out{i}' for i in range(len(outs))]
        return ExportTarget(
            module, [x], ['input'], names,
            _dynamic_axes(['input'], names, outs, dynamic))
    if hasattr(model, 'head') and not hasattr(model, 'bbox_head'):
        module = ClassifierLogits(model)
        return ExportTarget(
            module, [x], ['input'], ['logits'],
            _dynamic_axes(['input'], ['logits'], [None], dynamic))
    for name in ('roi_head', 'rpn_head'):
        if getattr(model, name, None) is not None:
            head = getattr(model, name)
            raise ExportError(
                f'{name} ({type(head).__name__}) of {type(model).__name__} '
                'has no export wrapper here: mmdet picks its proposals and '
                'post-processes its RoIs image by image in Python, with '
                'data-dependent shapes, which mmdeploy rewrites for export '
                '(docs/deployment.md); export --part backbone, or a '
                'single-stage detector with --part model')
    reason = unsupported_head_reason(getattr(model, 'bbox_head', None))
    if reason is not None:
        raise ExportError(f'bbox_head of {type(model).__name__}: {reason}')
    if batch != 1 or dynamic:
        raise ExportError(
            f'{type(model).__name__} with NMS exports for one image of a '
            f'fixed size; got batch={batch}, dynamic={dynamic}')
    return ExportTarget(
        DenseDetectorExport(model), [x], ['input'],
        ['boxes', 'scores', 'labels'],
        dynamic_ok=False)


def _dynamic_axes(input_names, output_names, outputs,
                  dynamic) -> Dict[str, Dict[int, str]]:
    """Batch (and for 4-D tensors, height and width) left free."""
    if not dynamic:
        return {}
    axes = {
        name: {
            0: 'batch',
            2: 'height',
            3: 'width'
        }
        for name in input_names
    }
    for i, (name, out) in enumerate(zip(output_names, outputs)):
        axes[name] = {0: 'batch'}
        if out is not None and out.dim() == 4:
            axes[name].update({2: f'height{i}', 3: f'width{i}'})
    return axes
