"""Check published checkpoints against the hash in their names.

Example::

    python tools/model_converters/verify_model.py \\
        releases/mask-rcnn_r50-mrlal_fpn_1x_coco-1a2b3c4d.pth

Prints ``OK`` and the full SHA-256 of each good file; exits with status 1
after naming every file whose content does not match its name. The same
check runs automatically whenever mmengine loads such a file with mrla_mm
imported (``load_from``, ``init_cfg=dict(type='Pretrained')``).
"""
import argparse
import sys

from mrla_mm.checkpoint.integrity import verify_checkpoint_hash


def main():
    parser = argparse.ArgumentParser(
        description='Verify NAME-<sha256 prefix>.pth files')
    parser.add_argument('files', nargs='+', help='published checkpoints')
    failed = 0
    for path in parser.parse_args().files:
        try:
            sha256 = verify_checkpoint_hash(path)
        except (ValueError, FileNotFoundError) as error:
            print(f'FAILED {path}: {error}')
            failed += 1
        else:
            print(f'OK {path} sha256 {sha256}')
    sys.exit(1 if failed else 0)


if __name__ == '__main__':
    main()
