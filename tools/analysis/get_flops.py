"""Count parameters and FLOPs of a config's model (mmengine's analysis).

Examples::

    python tools/analysis/get_flops.py \\
        configs/mask_rcnn/mask-rcnn_r50-mrlal_fpn_1x_coco.py --shape 800 1333
    python tools/analysis/get_flops.py CONFIG --part backbone --shape 224
"""
import argparse

from mmengine.config import Config, DictAction
from mmengine.registry import init_default_scope

import mrla_mm  # noqa: F401  registers the MRLA modules
from mrla_mm.analysis import model_complexity
from mrla_mm.models import skip_backbone_pretrained


def parse_args():
    parser = argparse.ArgumentParser(description='Params and FLOPs')
    parser.add_argument('config', help='mmdet or mmpretrain config file')
    parser.add_argument(
        '--shape', type=int, nargs='+', default=[224], help='input H [W]')
    parser.add_argument(
        '--part',
        choices=('model', 'backbone'),
        default='model',
        help='count the whole model or its backbone only')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override settings in the config, as in mmdet\'s tools')
    return parser.parse_args()


def main():
    args = parse_args()
    if len(args.shape) not in (1, 2):
        raise SystemExit(f'--shape takes H or H W, got {args.shape}')
    shape = tuple(args.shape) * (3 - len(args.shape))
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    scope = cfg.get('default_scope', 'mmdet')
    init_default_scope(scope)
    if scope == 'mmpretrain':
        from mmpretrain.registry import MODELS
    else:
        from mmdet.registry import MODELS
    skip_backbone_pretrained(cfg.model)  # counting needs no weights
    model = MODELS.build(cfg.model)
    info = model_complexity(model, shape, args.part)
    print(f'{args.config} ({args.part}, input 1x3x{shape[0]}x{shape[1]})\n'
          f'params: {info["params"]:,} ({info["params_str"]})\n'
          f'FLOPs:  {info["flops"] / 1e9:.3f} G ({info["flops_str"]})')


if __name__ == '__main__':
    main()
