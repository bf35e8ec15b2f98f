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
import os.path as osp

import mrla_mm  # noqa: F401  registers the MRLA modules
from mrla_mm.utils.layer_attention import visualize_layer_attention


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
