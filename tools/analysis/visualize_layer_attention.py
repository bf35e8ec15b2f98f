"""Draw where each MRLA layer of a trained model looks.

Example::

    python tools/analysis/visualize_layer_attention.py \\
        configs/demo/mask-rcnn_r18-mrlal_fpn_demo.py \\
        work_dirs/demo/epoch_12.pth data/demo_shapes/val/*.png \\
        --out-dir work_dirs/demo/layer_attention

For MRLA-base: one heatmap per stage of the softmax weights each layer puts
on the earlier layers of its stage (mean over heads and images;
``--per-head`` adds one picture per stage with every head). For
MRLA-light: the gate of every layer and head, and the learned ``|lambda|``.
Works on detector configs (their backbone is run) and classifier configs.
Writes PNGs, ``summary.txt`` and ``layer_attention.json`` into
``--out-dir`` and prints the summary.
"""
import argparse
import json
import os.path as osp
from typing import List, Sequence

import torch.nn as nn
from mmengine.config import Config
from mmengine.dataset import Compose, pseudo_collate
from mmengine.registry import init_default_scope
from mmengine.runner.checkpoint import _load_checkpoint

from mrla_mm.models import skip_backbone_pretrained
from mrla_mm.registry import CLS_MODELS, DET_MODELS
from mrla_mm.visualization import (
    LayerAttention,
    LayerAttentionRecorder,
    plot_layer_attention,
)


def _test_pipeline_cfg(cfg) -> List[dict]:
    """The config's test pipeline without annotation loading."""
    dataset = cfg.get('test_dataloader', {}).get('dataset', {})
    pipeline = dataset.get('pipeline') or cfg.get('test_pipeline')
    if pipeline is None:
        raise ValueError('the config has no test_dataloader.dataset.pipeline '
                         'nor test_pipeline to prepare the images with')
    return [
        t for t in pipeline
        if not str(t.get('type', '')).endswith('LoadAnnotations')
    ]


def build_model_from_checkpoint(config: str, checkpoint: str,
                                device: str = 'cpu'):
    """Build a config's model and load a checkpoint into it (eval mode).

    ``checkpoint`` may hold the whole model (``backbone.*`` keys, e.g. a
    trained detector, published or not) or the backbone alone (e.g. a
    converted ImageNet checkpoint). Published files are hash checked.
    Its backbone weights must fit the backbone exactly: the pictures of a
    partly random backbone would mislead.

    Returns:
        tuple: ``(model, cfg)``.
    """
    cfg = Config.fromfile(config)
    skip_backbone_pretrained(cfg.model)  # the checkpoint brings the weights
    scope = cfg.get('default_scope', 'mmdet')
    init_default_scope(scope)
    registry = CLS_MODELS if scope == 'mmpretrain' else DET_MODELS
    model = registry.build(cfg.model)
    ckpt = _load_checkpoint(checkpoint, map_location='cpu')
    state_dict = ckpt.get('state_dict', ckpt)
    state_dict = {
        (k[len('module.'):] if k.startswith('module.') else k): v
        for k, v in state_dict.items()
    }
    backbone = getattr(model, 'backbone', model)
    whole = any(k.startswith('backbone.') for k in state_dict)
    target = model if whole else backbone
    missing, unexpected = target.load_state_dict(state_dict, strict=False)
    prefix = 'backbone.' if whole and target is not backbone else ''
    lost = [k for k in missing if k.startswith(prefix)]
    extra = [k for k in unexpected if k.startswith(prefix)]
    if lost or extra:
        raise KeyError(
            f'the backbone weights of {checkpoint} do not fit the backbone '
            f'of {config}: it lacks {len(lost)} (e.g. {lost[:3]}) and has '
            f'{len(extra)} unknown (e.g. {extra[:3]}); it does not belong '
            'to this config')
    model.to(device).eval()
    return model, cfg


def record_layer_attention(model: nn.Module, cfg, images: Sequence[str],
                           device: str = 'cpu') -> LayerAttention:
    """Run the backbone of ``model`` on each image and record its MRLA.

    Args:
        model (nn.Module): An mmdet detector, an mmpretrain classifier (its
            ``backbone`` is run) or a bare backbone.
        cfg (Config): The model's config; its test pipeline (annotation
            loading removed) and the model's data preprocessor prepare the
            images as in testing.
        images (Sequence[str]): Image files.

    Returns:
        LayerAttention
    """
    if not images:
        raise ValueError('images must name at least one image file')
    missing = [p for p in images if not osp.isfile(p)]
    if missing:
        raise FileNotFoundError(f'images not found: {missing}')
    pipeline = Compose(_test_pipeline_cfg(cfg))
    backbone = getattr(model, 'backbone', model)
    with LayerAttentionRecorder(backbone) as recorder:
        for i, path in enumerate(images):
            data = pseudo_collate([pipeline(dict(img_path=path, img_id=i))])
            inputs = model.data_preprocessor(data, False)['inputs']
            recorder.forward(backbone, inputs.to(device))
    return recorder.result()


def visualize_layer_attention(config: str,
                              checkpoint: str,
                              images: Sequence[str],
                              out_dir: str,
                              per_head: bool = False,
                              device: str = 'cpu') -> LayerAttention:
    """Record, draw and summarise a checkpoint's MRLA layer attention.

    Writes the PNGs of :func:`plot_layer_attention`, ``summary.txt`` and
    ``layer_attention.json`` (all the numbers) into ``out_dir``.
    """
    model, cfg = build_model_from_checkpoint(config, checkpoint, device)
    result = record_layer_attention(model, cfg, images, device)
    plot_layer_attention(result, out_dir, per_head)
    with open(osp.join(out_dir, 'summary.txt'), 'w') as f:
        f.write(result.summary() + '\n')
    with open(osp.join(out_dir, 'layer_attention.json'), 'w') as f:
        json.dump(result.to_dict(), f)
    return result


def parse_args():
    parser = argparse.ArgumentParser(
        description='Visualise MRLA layer attention')
    parser.add_argument('config', help='mmdet or mmpretrain config file')
    parser.add_argument('checkpoint', help='checkpoint of that model')
    parser.add_argument('images', nargs='+', help='image files')
    parser.add_argument(
        '--out-dir', default='layer_attention', help='where to write')
    parser.add_argument(
        '--per-head',
        action='store_true',
        help='also draw the MRLA-base weights of every head')
    parser.add_argument('--device', default='cpu', help='e.g. cpu, cuda:0')
    return parser.parse_args()


def main():
    args = parse_args()
    result = visualize_layer_attention(
        args.config, args.checkpoint, args.images, args.out_dir,
        per_head=args.per_head, device=args.device)
    print(result.summary())
    print(f'pictures, summary.txt and layer_attention.json in '
          f'{osp.abspath(args.out_dir)}')


if __name__ == '__main__':
    main()
