"""Convert the authors' MRLA ImageNet checkpoints for mmdet / mmpretrain.

Example::

    python tools/model_converters/mrla_to_mmdet.py \\
        model_best.pth.tar checkpoints/r50_mrlal_mmdet.pth
    python tools/model_converters/mrla_to_mmdet.py \\
        best_checkpoint.pth deit_tiny_mrlal.pth --format mmpretrain --keep-head

The result is checked against a freshly built model of the detected (or
given) architecture and must fit it exactly (``strict=True``).
"""
import argparse
import os
import os.path as osp

import torch

import mrla_mm  # noqa: F401  registers the MRLA modules
from mrla_mm.utils import (
    ARCHS,
    check_state_dict,
    convert,
    load_reference_checkpoint,
)
from mrla_mm.utils.ckpt_convert import resnet_depth


def parse_args():
    parser = argparse.ArgumentParser(
        description='Convert an MRLA checkpoint of the authors\' code')
    parser.add_argument('src', help='authors\' checkpoint file')
    parser.add_argument('dst', help='output file')
    parser.add_argument(
        '--arch',
        choices=ARCHS,
        help='expected architecture (detected from the keys if omitted)')
    parser.add_argument(
        '--format',
        choices=('mmdet', 'mmpretrain'),
        default='mmdet',
        help='mmdet: bare backbone keys for a backbone init_cfg; '
        'mmpretrain: backbone./head. keys of an ImageClassifier')
    parser.add_argument(
        '--keep-head',
        action='store_true',
        help='keep the ImageNet classifier (mmpretrain format only)')
    parser.add_argument(
        '--ema',
        action='store_true',
        help='take the EMA weights of a DeiT checkpoint')
    return parser.parse_args()


def build_backbone(arch, state_dict):
    """A freshly built backbone of ``arch`` to check converted keys against.
    """
    if arch.startswith('resnet'):
        from mrla_mm.models import MRLAResNet
        base = arch == 'resnet_base'
        return MRLAResNet(
            depth=resnet_depth(state_dict),
            deep_stem=base,
            mrla_cfg=dict(type='MRLABase' if base else 'MRLALight'))
    from mrla_mm.utils.deit_convert import build_deit_backbone
    return build_deit_backbone(arch, state_dict)


def main():
    args = parse_args()
    source = load_reference_checkpoint(args.src, ema=args.ema)
    converted, arch = convert(
        source, arch=args.arch, fmt=args.format, keep_head=args.keep_head)
    backbone_keys = {
        k[len('backbone.'):] if k.startswith('backbone.') else k: v
        for k, v in converted.items() if not k.startswith('head.')
    }
    check_state_dict(backbone_keys, build_backbone(arch, source))
    os.makedirs(osp.dirname(osp.abspath(args.dst)), exist_ok=True)
    torch.save(
        dict(
            state_dict=converted,
            meta=dict(
                source=osp.basename(args.src),
                arch=arch,
                format=args.format,
                mrla_mm_version=mrla_mm.__version__)), args.dst)
    print(f'{args.src} ({arch}, {len(source)} tensors) -> {args.dst} '
          f'({args.format}, {len(converted)} tensors)')


if __name__ == '__main__':
    main()
