"""Export an MRLA backbone, classifier or RetinaNet to ONNX and check it in
onnxruntime.

The file is exported, run in onnxruntime on the same random input as the
PyTorch model, and the max relative error against PyTorch and the file
size are printed. See docs/deployment.md.

Examples::

    python tools/deployment/export_onnx.py \\
        configs/mrla_cls/resnet50-mrlal_8xb32_in1k.py r50.onnx --dynamic
    python tools/deployment/export_onnx.py \\
        configs/mrla_cls/deit-tiny-mrlal_4xb256_in1k.py CKPT deit.onnx \\
        --part model
    python tools/deployment/export_onnx.py \\
        configs/retinanet/retinanet_r50-mrlal_fpn_1x_coco.py CKPT \\
        retinanet.onnx --part model --shape 800 1344
"""
import argparse
import os.path as osp
import sys

import torch
from mmengine.config import Config, DictAction
from mmengine.registry import init_default_scope
from mmengine.runner import load_checkpoint

import mrla_mm  # noqa: F401  registers the MRLA modules
from mrla_mm.deployment import (
    ExportError,
    build_export_target,
    export_onnx,
    max_rel_error,
    run_onnxruntime,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Export an MRLA model to ONNX, check it in onnxruntime')
    parser.add_argument('config', help='mmdet or mmpretrain config file')
    parser.add_argument(
        'checkpoint', nargs='?', help='checkpoint (default: initial weights)')
    parser.add_argument('out', help='the ONNX file to write')
    parser.add_argument(
        '--part',
        choices=('backbone', 'model'),
        default='backbone',
        help='the backbone (default) or the whole model: a classifier\'s '
        'logits, or a single-stage detector with NMS')
    parser.add_argument(
        '--shape', type=int, nargs=2, default=[224, 224], metavar=('H', 'W'))
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument(
        '--dynamic',
        action='store_true',
        help='leave batch, height and width free')
    parser.add_argument(
        '--dynamo',
        action='store_true',
        help='torch\'s default (torch.export) exporter instead of the '
        'TorchScript one')
    parser.add_argument(
        '--opset',
        type=int,
        default=None,
        help='ONNX opset (default: 17 for the TorchScript exporter)')
    parser.add_argument(
        '--force', action='store_true', help='overwrite an existing OUT')
    parser.add_argument(
        '--tolerance',
        type=float,
        default=1e-4,
        help='exit with status 1 if the max relative error exceeds it')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override settings in the config, as in mmdet\'s tools')
    return parser.parse_args(argv)


def build_model(args):
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    scope = cfg.get('default_scope', 'mmdet')
    init_default_scope(scope)
    if scope == 'mmpretrain':
        from mmpretrain.registry import MODELS
    else:
        from mmdet.registry import MODELS
    # Without a checkpoint the modules keep their construction-time
    # weights: init_cfg would load the pretrained files a config names.
    model = MODELS.build(cfg.model)
    if args.checkpoint:
        load_checkpoint(model, args.checkpoint, map_location='cpu')
    model.eval()
    return model


def check_dynamic(path, target, shape):
    """Run the file on another batch and size than it was exported with."""
    b, h, w = target.inputs[0].shape[0] + 1, shape[0] + 32, shape[1] + 32
    x = torch.randn(b, 3, h, w)
    with torch.no_grad():
        expected = target.module(x)
    expected = expected if isinstance(expected, tuple) else (expected, )
    err = max_rel_error(run_onnxruntime(path, [x]), expected)
    return f'{b}x3x{h}x{w}: max relative error {err:.2e}'


def main(argv=None):
    args = parse_args(argv)
    if osp.exists(args.out) and not args.force:
        sys.exit(f'error: {args.out} exists; pass --force to overwrite it')
    model = build_model(args)
    try:
        target = build_export_target(model, args.part, args.shape, args.batch,
                                     args.dynamic)
        export_onnx(
            target.module,
            target.inputs,
            args.out,
            input_names=target.input_names,
            output_names=target.output_names,
            dynamic_axes=target.dynamic_axes,
            dynamo=args.dynamo,
            opset=args.opset,
            force=args.force)
    except ExportError as e:
        sys.exit(f'error: {e}')
    with torch.no_grad():
        expected = target.module(*target.inputs)
    expected = expected if isinstance(expected, tuple) else (expected, )
    actual = run_onnxruntime(args.out, target.inputs)
    size_mb = osp.getsize(args.out) / 2**20
    exporter = 'dynamo' if args.dynamo else 'torchscript'
    shape = 'x'.join(map(str, target.inputs[0].shape))
    print(f'exported {args.part} of {args.config} with the {exporter} '
          f'exporter to {args.out} ({size_mb:.2f} MiB)')
    if args.part == 'model' and target.output_names[0] == 'boxes':
        err = detection_report(actual, expected)
    else:
        err = max_rel_error(actual, expected)
        print(f'onnxruntime vs PyTorch, input {shape}: max relative error '
              f'{err:.2e}')
    if args.dynamic:
        print('dynamic axes, input ' + check_dynamic(args.out, target,
                                                    args.shape))
    if err > args.tolerance:
        sys.exit(f'error: max relative error {err:.2e} exceeds '
                 f'--tolerance {args.tolerance:g}')


def detection_report(actual, expected):
    """Print the detections' agreement; the worst score difference, or
    infinity when the detections differ."""
    boxes, scores, labels = actual
    ref_boxes, ref_scores, ref_labels = expected
    print(f'onnxruntime: {len(scores)} detections, PyTorch: '
          f'{len(ref_scores)}')
    if len(scores) != len(ref_scores) or not torch.equal(
            labels, ref_labels):
        print('the detections differ')
        return float('inf')
    if len(scores) == 0:
        return 0.
    score_err = (scores - ref_scores).abs().max().item()
    box_err = max_rel_error([boxes], [ref_boxes])
    print(f'same labels; max |score difference| {score_err:.2e}, boxes max '
          f'relative error {box_err:.2e}')
    return score_err


if __name__ == '__main__':
    main()
