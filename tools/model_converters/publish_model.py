"""Publish a trained checkpoint as a model-zoo release file.

Example::

    python tools/model_converters/publish_model.py \\
        work_dirs/mask-rcnn_r50-mrlal_fpn_1x_coco/epoch_12.pth \\
        releases/mask-rcnn_r50-mrlal_fpn_1x_coco.pth [--fp16]

writes ``releases/mask-rcnn_r50-mrlal_fpn_1x_coco-<8 hex>.pth`` holding
``state_dict`` and ``meta`` only, the 8 hex digits being the start of the
file's SHA-256 (longer if those 8 are all decimal digits), and prints
its size and hash. With mrla_mm imported, mmengine checks that hash
whenever the file is loaded. An input that cannot be published (not a
checkpoint, truncated, holding objects torch's safe loader refuses) or a
failed write ends with the reason and exit status 1, leaving no file.
"""
import argparse
import sys

from mrla_mm.checkpoint.publish import PublishError, publish_checkpoint


def parse_args():
    parser = argparse.ArgumentParser(
        description='Strip training state from a checkpoint and name it '
        'after its sha256')
    parser.add_argument('in_file', help='training checkpoint')
    parser.add_argument(
        'out_file', help='output path without the hash (.pth optional)')
    parser.add_argument(
        '--fp16',
        action='store_true',
        help='store floating weights as float16 (half the size)')
    return parser.parse_args()


def main():
    args = parse_args()
    try:
        info = publish_checkpoint(args.in_file, args.out_file, fp16=args.fp16)
    except (PublishError, FileNotFoundError) as error:
        sys.exit(f'publish_model.py: error: {error}')
    removed = ', '.join(info['removed_keys']) or 'nothing'
    print(f'removed: {removed}\n'
          f'kept: meta, state_dict ({info["num_tensors"]} tensors'
          f'{", float16" if args.fp16 else ""})\n'
          f'published: {info["path"]}\n'
          f'size: {info["size"] / 2**20:.2f} MiB ({info["size"]} bytes)\n'
          f'sha256: {info["sha256"]}')


if __name__ == '__main__':
    main()
