"""Generate the synthetic COCO-format instance segmentation demo dataset.

Each image is a smooth random background with a few filled shapes of
several classes and sizes, drawn one over the other: later shapes occlude
earlier ones, and every mask, box and area is computed from what stays
visible. The same seed gives byte-identical files.

Example::

    python tools/misc/make_demo_dataset.py data/demo_shapes \\
        --num-train 400 --num-val 100 --img-size 128 --seed 0

Layout written (the one mmdet's ``CocoDataset`` reads)::

    data/demo_shapes/
        annotations/instances_train.json
        annotations/instances_val.json
        train/000000.png ...
        val/000000.png ...
"""
import argparse
import json
import os
import os.path as osp

import cv2
import numpy as np
import pycocotools.mask as mask_utils

CLASSES = ('circle', 'square', 'triangle', 'star')
# Split seeds are derived from the user's seed so that the train and val
# images never coincide.
SPLIT_OFFSET = dict(train=0, val=1_000_003)


def parse_args():
    parser = argparse.ArgumentParser(
        description='Generate the synthetic shapes demo dataset (COCO)')
    parser.add_argument(
        'out_dir', nargs='?', default='data/demo_shapes',
        help='output folder (default: data/demo_shapes)')
    parser.add_argument('--num-train', type=int, default=400)
    parser.add_argument('--num-val', type=int, default=100)
    parser.add_argument('--img-size', type=int, default=128)
    parser.add_argument(
        '--max-objects', type=int, default=5,
        help='upper bound of shapes drawn per image (at least 1 is drawn)')
    parser.add_argument('--seed', type=int, default=0)
    return parser.parse_args()


def shape_polygon(kind, center, size, angle):
    """Vertices (float [N, 2]) of a polygonal shape, None for a circle."""
    if kind == 'circle':
        return None
    if kind == 'square':
        n, radius = 4, size / np.sqrt(2)
        angles = angle + np.arange(n) * 2 * np.pi / n + np.pi / 4
        radii = np.full(n, radius)
    elif kind == 'triangle':
        n, radius = 3, size / np.sqrt(3) * 1.15
        angles = angle + np.arange(n) * 2 * np.pi / n
        radii = np.full(n, radius)
    elif kind == 'star':
        n, radius = 10, size * 0.62
        angles = angle + np.arange(n) * 2 * np.pi / n
        radii = np.where(np.arange(n) % 2 == 0, radius, radius * 0.45)
    else:
        raise ValueError(f'kind must be one of {CLASSES}, got {kind!r}')
    return np.stack([center[0] + radii * np.cos(angles),
                     center[1] + radii * np.sin(angles)], axis=1)


def draw_shape(kind, center, size, angle, height, width):
    """Binary mask ``[H, W]`` (uint8) of one shape."""
    mask = np.zeros((height, width), np.uint8)
    poly = shape_polygon(kind, center, size, angle)
    # Sub-pixel coordinates (shift=4) keep small shapes faithful.
    if poly is None:
        cv2.circle(mask, (int(center[0] * 16), int(center[1] * 16)),
                   int(size / 2 * 16), 1, -1, cv2.LINE_8, 4)
    else:
        cv2.fillPoly(mask, [np.round(poly * 16).astype(np.int32)], 1,
                     cv2.LINE_8, 4)
    return mask


def background(rng, height, width):
    """Smooth low-saturation gradient with a little noise (uint8 BGR)."""
    base = rng.uniform(40, 200)
    corners = np.clip(base + rng.uniform(-40, 40, (2, 2, 3)), 0, 255)
    img = cv2.resize(corners.astype(np.float32), (width, height),
                     interpolation=cv2.INTER_LINEAR)
    img += rng.normal(0, 6, img.shape)
    return img


def object_colour(rng, bg_mean):
    """A saturated colour that stands out against the background."""
    while True:
        colour = rng.uniform(0, 255, 3)
        if (np.abs(colour - bg_mean).max() > 70
                and colour.max() - colour.min() > 60):
            return colour


def make_image(rng, img_size, max_objects):
    """One scene: the image and its visible instance masks and labels."""
    img = background(rng, img_size, img_size)
    bg_mean = img.reshape(-1, 3).mean(0)
    objects = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        kind = int(rng.integers(len(CLASSES)))
        size = rng.uniform(0.14, 0.45) * img_size
        margin = size * 0.3
        center = rng.uniform(margin, img_size - margin, 2)
        mask = draw_shape(CLASSES[kind], center, size,
                          rng.uniform(0, 2 * np.pi), img_size, img_size)
        colour = object_colour(rng, bg_mean)
        shade = rng.uniform(0.85, 1.15)
        img[mask > 0] = np.clip(colour * shade, 0, 255)
        # The new shape hides whatever it covers of the earlier ones.
        for other in objects:
            other['mask'][mask > 0] = 0
        objects.append(dict(label=kind, mask=mask, full=int(mask.sum())))
    img = np.clip(img + rng.normal(0, 3, img.shape), 0, 255)
    # Shapes hidden for the most part are dropped (their pixels stay, as
    # unlabelled clutter), like COCO leaves out barely visible objects.
    kept = [o for o in objects if o['mask'].sum() >= 0.3 * o['full']
            and o['mask'].sum() >= 16]
    return img.astype(np.uint8), kept


def coco_annotation(obj, ann_id, image_id):
    """A COCO instance annotation with a compressed RLE mask."""
    rle = mask_utils.encode(np.asfortranarray(obj['mask']))
    x, y, w, h = mask_utils.toBbox(rle).tolist()
    return dict(
        id=ann_id,
        image_id=image_id,
        category_id=obj['label'] + 1,
        segmentation=dict(
            size=[int(s) for s in rle['size']],
            counts=rle['counts'].decode('ascii')),
        area=float(mask_utils.area(rle)),
        bbox=[x, y, w, h],
        iscrowd=0)


def make_split(out_dir, split, num_images, img_size, max_objects, seed):
    """Write one split's images and annotation file; return its counts."""
    os.makedirs(osp.join(out_dir, split), exist_ok=True)
    os.makedirs(osp.join(out_dir, 'annotations'), exist_ok=True)
    rng = np.random.default_rng(seed + SPLIT_OFFSET[split])
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        img, objects = make_image(rng, img_size, max_objects)
        file_name = f'{image_id:06d}.png'
        cv2.imwrite(osp.join(out_dir, split, file_name), img)
        images.append(dict(id=image_id, file_name=file_name,
                           height=img_size, width=img_size))
        for obj in objects:
            annotations.append(
                coco_annotation(obj, len(annotations) + 1, image_id))
    categories = [dict(id=i + 1, name=name, supercategory='shape')
                  for i, name in enumerate(CLASSES)]
    with open(osp.join(out_dir, 'annotations', f'instances_{split}.json'),
              'w') as f:
        json.dump(dict(images=images, annotations=annotations,
                       categories=categories), f)
    return len(images), len(annotations)


def main():
    args = parse_args()
    for name in ('num_train', 'num_val', 'img_size', 'max_objects'):
        if getattr(args, name) < 1:
            raise SystemExit(f'--{name.replace("_", "-")} must be >= 1, '
                             f'got {getattr(args, name)}')
    for split, num in (('train', args.num_train), ('val', args.num_val)):
        n_img, n_ann = make_split(args.out_dir, split, num, args.img_size,
                                  args.max_objects, args.seed)
        print(f'{split}: {n_img} images, {n_ann} instances -> '
              f'{osp.join(args.out_dir, split)}')


if __name__ == '__main__':
    main()
