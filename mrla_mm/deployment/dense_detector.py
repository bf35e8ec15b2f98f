"""A RetinaNet-style detector, post-processing and NMS included, as one
module that exports to standard ONNX operators."""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmdet.models.dense_heads import AnchorHead
from mmdet.models.task_modules.coders import DeltaXYWHBBoxCoder
from mmdet.models.task_modules.coders.delta_xywh_bbox_coder import delta2bbox
from torch import Tensor
from torchvision.ops import nms

from .onnx_export import run_onnxruntime


class DenseDetectorExport(nn.Module):
    """Backbone, neck, head, box decoding and per-class NMS of an mmdet
    single-stage detector with an :class:`AnchorHead` (RetinaNet), for one
    image.

    Computes what the head's ``predict`` does with ``rescale=False``
    (``test_cfg``: ``nms_pre``, ``score_thr``, ``min_bbox_size``, ``nms``
    with its IoU threshold, ``max_per_img``), in operators ONNX has:
    top-k per level instead of sorting the scores above the threshold
    (the same candidates), a mask where the head drops boxes, the class
    offsets of mmcv's ``batched_nms`` and torchvision's ``nms``, which
    exports as ``NonMaxSuppression``. Boxes are in the frame of the input
    tensor; dividing them by the pipeline's ``scale_factor`` gives the
    original image's, as ``rescale=True`` would.

    Args:
        detector (nn.Module): An mmdet ``SingleStageDetector`` whose
            ``bbox_head`` is an :class:`AnchorHead` with sigmoid
            classification and no score factors.
        img_shape (Sequence[int], optional): ``(h, w)`` of the image within
            the (padded) input, where boxes are clipped. Defaults to None,
            the whole input.

    Returns (forward):
        tuple[Tensor, Tensor, Tensor]: boxes ``[K, 4]`` (x1, y1, x2, y2),
        scores ``[K]`` and labels ``[K]``, by descending score.
    """

    def __init__(self,
                 detector: nn.Module,
                 img_shape: Optional[Sequence[int]] = None):
        super().__init__()
        head = getattr(detector, 'bbox_head', None)
        reason = unsupported_head_reason(head)
        if reason is not None:
            raise ValueError(f'{type(detector).__name__}.bbox_head '
                             f'({type(head).__name__}): {reason}')
        self.detector = detector
        self.img_shape = None if img_shape is None else tuple(img_shape)
        cfg = head.test_cfg
        self.nms_pre = cfg.get('nms_pre', -1)
        self.score_thr = cfg.get('score_thr', 0.)
        self.min_bbox_size = cfg.get('min_bbox_size', -1)
        self.iou_threshold = cfg['nms']['iou_threshold']
        self.max_per_img = cfg['max_per_img']

    def forward(self, img: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        head = self.detector.bbox_head
        cls_scores, bbox_preds = head(self.detector.extract_feat(img))
        priors = head.prior_generator.grid_priors(
            [c.shape[-2:] for c in cls_scores],
            dtype=img.dtype,
            device=img.device)
        scores, labels, deltas, anchors = [], [], [], []
        # Sizes spelled out, not -1: the TorchScript exporter loses the
        # rank of these reshapes otherwise.
        for cls_score, bbox_pred, prior in zip(cls_scores, bbox_preds, priors):
            score = cls_score[0].permute(1, 2, 0).reshape(
                cls_score[0].numel()).sigmoid()
            k = score.shape[0] if self.nms_pre <= 0 else min(
                self.nms_pre, score.shape[0])
            score, index = score.topk(k, dim=0)
            anchor = index // head.cls_out_channels
            scores.append(score)
            labels.append(index % head.cls_out_channels)
            deltas.append(bbox_pred[0].permute(1, 2, 0).reshape(
                prior.shape[0], 4)[anchor])
            anchors.append(prior[anchor])
        scores = torch.cat(scores)
        labels = torch.cat(labels)
        # The coder's own decode takes mmdet's ONNX branch while exporting,
        # which imports a module mmdet 3 no longer has; its eager branch:
        coder = head.bbox_coder
        boxes = delta2bbox(
            torch.cat(anchors), torch.cat(deltas), coder.means, coder.stds,
            self.img_shape or img.shape[-2:], 16 / 1000, coder.clip_border,
            coder.add_ctr_clamp, coder.ctr_clamp)
        keep = scores > self.score_thr
        if self.min_bbox_size >= 0:
            wh = boxes[:, 2:] - boxes[:, :2]
            keep = keep & (wh > self.min_bbox_size).all(1)
        keep = keep.nonzero()[:, 0]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        # mmcv's batched_nms: classes apart by offsets of the largest
        # coordinate plus one (the zero keeps the max defined when empty).
        top = torch.cat((boxes, boxes.new_zeros(1, 4))).max()
        offsets = labels.to(boxes.dtype) * (top + 1)
        keep = nms(boxes + offsets[:, None], scores,
                   self.iou_threshold)[:self.max_per_img]
        return boxes[keep], scores[keep], labels[keep]


def unsupported_head_reason(head: Optional[nn.Module]) -> Optional[str]:
    """Why :class:`DenseDetectorExport` cannot take ``head``, or None."""
    if head is None:
        return 'the detector has no bbox_head (not a single-stage detector)'
    if not isinstance(head, AnchorHead):
        return ('only anchor heads (AnchorHead, as RetinaNet\'s) are '
                'wrapped for export')
    if type(head.bbox_coder) is not DeltaXYWHBBoxCoder or \
            head.bbox_coder.use_box_type:
        return 'only the DeltaXYWHBBoxCoder on plain tensors is wrapped'
    if not head.use_sigmoid_cls:
        return 'only sigmoid classification is wrapped for export'
    if type(head).predict_by_feat is not AnchorHead.predict_by_feat or \
            type(head)._predict_by_feat_single is not \
            AnchorHead._predict_by_feat_single:
        return ('its post-processing differs from AnchorHead\'s (score '
                'factors or its own decoding)')
    if head.test_cfg.get('nms', {}).get('type', 'nms') != 'nms':
        return 'only test_cfg.nms type "nms" is wrapped for export'
    return None


def match_detections(actual: Sequence[Tensor],
                     expected: Sequence[Tensor]) -> Tuple[int, float, float]:
    """Pair two detection sets ``(boxes, scores, labels)`` one to one.

    Detections of equal score may come in either order, so each expected
    detection takes the closest unpaired actual one of its label (sum of
    the largest box coordinate difference and the score difference).

    Returns:
        tuple[int, float, float]: the number of expected detections left
        without a partner (plus the surplus of actual ones), the largest
        score difference and the largest box coordinate difference of
        the pairs.
    """
    boxes, scores, labels = actual
    ref_boxes, ref_scores, ref_labels = expected
    free = list(range(len(scores)))
    unpaired = max(len(scores) - len(ref_scores), 0)
    score_err = box_err = 0.
    for i in range(len(ref_scores)):
        candidates = [j for j in free if labels[j] == ref_labels[i]]
        if not candidates:
            unpaired += 1
            continue
        cost = [(boxes[j] - ref_boxes[i]).abs().max().item() +
                abs(scores[j] - ref_scores[i]).item() for j in candidates]
        j = candidates[cost.index(min(cost))]
        free.remove(j)
        score_err = max(score_err, abs(scores[j] - ref_scores[i]).item())
        box_err = max(box_err, (boxes[j] - ref_boxes[i]).abs().max().item())
    return unpaired, score_err, box_err


def predict_parity(detector: nn.Module, onnx_path: str,
                   items: Sequence[dict]) -> List[Tuple[int, int, float,
                                                        float]]:
    """The ONNX file of :class:`DenseDetectorExport` against mmdet's own
    ``predict`` (``rescale=False``) on dataset items (the test pipeline's
    ``inputs`` and ``data_samples``), through the detector's data
    preprocessor; the file must take the preprocessed input's size.

    Returns:
        list[tuple]: per item, the number of mmdet's detections, then
        :func:`match_detections` of the file's against them.
    """
    rows = []
    for item in items:
        data = detector.data_preprocessor(
            dict(inputs=[item['inputs']], data_samples=[item['data_samples']]),
            False)
        with torch.no_grad():
            pred = detector.predict(
                data['inputs'], data['data_samples'],
                rescale=False)[0].pred_instances
        actual = run_onnxruntime(onnx_path, [data['inputs']])
        rows.append((len(pred.scores), *match_detections(
            actual, (pred.bboxes, pred.scores, pred.labels))))
    return rows
