"""Generate the small folder classification dataset of the MRLA demo.

Every image shows one pattern class on a random colour pair, with a random
period, phase and pixel noise: horizontal stripes, vertical stripes, a
checkerboard or a centred disc. The classes differ in spatial structure,
not in colour. The same seed gives byte-identical files.

Example::

    python tools/misc/make_cls_demo_dataset.py data/cls_demo \\
        --num-train 32 --num-val 16 --img-size 32 --seed 0

Layout written (the one mmpretrain's ``CustomDataset`` reads without an
annotation file, one folder per class)::

    data/cls_demo/
        train/checker/000000.png ...
        train/disc/... train/stripes_h/... train/stripes_v/...
        val/...
"""
import argparse
import os
import os.path as osp

import cv2
import numpy as np

CLASSES = ('checker', 'disc', 'stripes_h', 'stripes_v')
# Split seeds are derived from the user's seed so that the train and val
# images never coincide.
SPLIT_OFFSET = dict(train=0, val=1_000_003)


def parse_args():
    parser = argparse.ArgumentParser(
        description='Generate the folder classification demo dataset')
    parser.add_argument(
        'out_dir', nargs='?', default='data/cls_demo',
        help='output folder (default: data/cls_demo)')
    parser.add_argument(
        '--num-train', type=int, default=32, help='train images per class')
    parser.add_argument(
        '--num-val', type=int, default=16, help='val images per class')
    parser.add_argument('--img-size', type=int, default=32)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    for name in ('num_train', 'num_val', 'img_size'):
        if getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} must be >= 1, got '
                         f'{getattr(args, name)}')
    if args.img_size < 8:
        parser.error(f'--img-size must be >= 8 for the patterns to show, '
                     f'got {args.img_size}')
    return args


def pattern_mask(kind: str, size: int, rng: np.random.Generator):
    """Boolean ``size x size`` mask of one pattern with a random period."""
    yy, xx = np.mgrid[0:size, 0:size]
    period = int(rng.integers(max(2, size // 8), max(3, size // 3) + 1))
    phase = int(rng.integers(0, period))
    if kind == 'stripes_h':
        return ((yy + phase) // period) % 2 == 0
    if kind == 'stripes_v':
        return ((xx + phase) // period) % 2 == 0
    if kind == 'checker':
        return (((yy + phase) // period + (xx + phase) // period) % 2) == 0
    radius = rng.uniform(0.2, 0.45) * size
    center = (size - 1) / 2 + rng.uniform(-0.1, 0.1, size=2) * size
    return (yy - center[0])**2 + (xx - center[1])**2 <= radius**2


def make_image(kind: str, size: int, rng: np.random.Generator):
    fg, bg = rng.integers(0, 256, size=(2, 3))
    # Keep the two colours apart so that every pattern stays visible.
    while np.abs(fg - bg).sum() < 150:
        fg, bg = rng.integers(0, 256, size=(2, 3))
    img = np.where(pattern_mask(kind, size, rng)[..., None], fg, bg)
    img = img + rng.normal(0, 12, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_split(out_dir: str, split: str, per_class: int, size: int,
                seed: int) -> int:
    rng = np.random.default_rng(seed + SPLIT_OFFSET[split])
    for kind in CLASSES:
        folder = osp.join(out_dir, split, kind)
        os.makedirs(folder, exist_ok=True)
        for i in range(per_class):
            cv2.imwrite(
                osp.join(folder, f'{i:06d}.png'),
                make_image(kind, size, rng))
    return per_class * len(CLASSES)


def main():
    args = parse_args()
    for split, n in (('train', args.num_train), ('val', args.num_val)):
        total = write_split(args.out_dir, split, n, args.img_size, args.seed)
        print(f'{split}: {total} images of {len(CLASSES)} classes in '
              f'{osp.join(args.out_dir, split)}')


if __name__ == '__main__':
    main()
