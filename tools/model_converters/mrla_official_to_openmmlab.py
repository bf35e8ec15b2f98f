"""Convert the authors' official MRLA ImageNet checkpoints to OpenMMLab:
an mmdet backbone (``--format mmdet``, the default) or an mmpretrain
classifier (``--format mmpretrain``).

Example::

    python tools/model_converters/mrla_official_to_openmmlab.py \\
        model_best.pth.tar checkpoints/r50_mrlal_mmdet.pth
    python tools/model_converters/mrla_official_to_openmmlab.py \\
        best_checkpoint.pth deit_tiny_mrlal.pth --format mmpretrain --keep-head

The result is checked against a freshly built model of the detected (or
given) architecture and must fit it exactly (``strict=True``).
"""
import argparse
import os
import os.path as osp

import torch

import mrla_mm  # noqa: F401  registers the MRLA modules
from mrla_mm.converters import (
    ARCHS,
    FORMATS,
    build_deit_backbone,
    check_state_dict,
    convert,
    load_reference_checkpoint,
    resnet_depth,
)
from mrla_mm.models import MRLAResNet


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
        choices=FORMATS,
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
        base = arch == 'resnet_base'
        return MRLAResNet(
            depth=resnet_depth(state_dict),
            deep_stem=base,
            mrla_cfg=dict(type='MRLABase' if base else 'MRLALight'))
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
