"""Export an MRLA backbone, classifier or RetinaNet to ONNX and check it in
onnxruntime.

The file is exported, run in onnxruntime on the same random input as the
PyTorch model, and the max relative error against PyTorch and the file
size are printed. See docs/deployment.md.

Examples::

    python tools/deployment/export_onnx.py \\
        configs/mrla_cls/resnet50-mrlal_8xb32_in1k.py r50.onnx --dynamic
    python tools/deployment/export_onnx.py \\
        configs/mrla_cls/resnet50-mrlal_8xb32_in1k.py r50.onnx \\
        --exporter torchscript --dynamic --force
    python tools/deployment/export_onnx.py \\
        configs/mrla_cls/deit-tiny-mrlal_4xb256_in1k.py CKPT deit.onnx \\
        --part model
    python tools/deployment/export_onnx.py \\
        configs/demo/retinanet_r18-mrlal_fpn_demo.py CKPT retinanet.onnx \\
        --part model --shape 128 128 --val-images 4
"""
import argparse
import os
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
    match_detections,
    max_rel_error,
    predict_parity,
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
    parser.add_argument(
        '--batch',
        type=int,
        default=None,
        help='batch of the example input (default: 1; 2 with --dynamic, '
        'since torch.export specializes a batch of 1)')
    parser.add_argument(
        '--dynamic',
        action='store_true',
        help='leave batch, height and width free')
    parser.add_argument(
        '--exporter',
        choices=('dynamo', 'torchscript'),
        default='dynamo',
        help='torch\'s default, torch.export-based exporter (default) or '
        'the legacy TorchScript-based one (opset 17 by default, as '
        'mmdeploy); see docs/deployment.md')
    parser.add_argument(
        '--opset',
        type=int,
        default=None,
        help='ONNX opset (default: the dynamo exporter\'s own; 17 for '
        'the TorchScript exporter)')
    parser.add_argument(
        '--force', action='store_true', help='overwrite an existing OUT')
    parser.add_argument(
        '--tolerance',
        type=float,
        default=1e-4,
        help='exit with status 1 if the max relative error exceeds it')
    parser.add_argument(
        '--val-images',
        type=int,
        default=0,
        help='detectors: also compare with mmdet\'s predict on this many '
        'images of the config\'s test set (the export --shape must be '
        'their padded size)')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override settings in the config, as in mmdet\'s tools')
    return parser.parse_args(argv)


def model_cfg(args):
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    return cfg


def build_model(args):
    cfg = model_cfg(args)
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
    print(f'dynamic axes, input {b}x3x{h}x{w}: max relative error {err:.2e}')
    return err


def main(argv=None):
    args = parse_args(argv)
    if osp.exists(args.out) and not args.force:
        sys.exit(f'error: {args.out} exists; pass --force to overwrite it')
    batch = args.batch or (2 if args.dynamic else 1)
    model = build_model(args)
    try:
        target = build_export_target(model, args.part, args.shape, batch,
                                     args.dynamic)
        export_onnx(
            target.module,
            target.inputs,
            args.out,
            input_names=target.input_names,
            output_names=target.output_names,
            dynamic_axes=target.dynamic_axes,
            dynamo=args.exporter == 'dynamo',
            opset=args.opset,
            force=args.force)
    except ExportError as e:
        sys.exit(f'error: {e}')
    try:
        err = check(args, model, target)
    except Exception as e:
        # A file that onnxruntime cannot run as asked is not left behind.
        os.remove(args.out)
        sys.exit(f'error: onnxruntime cannot run the exported file as asked '
                 f'({type(e).__name__}: {str(e).strip()[:800]}); {args.out} '
                 'removed')
    if err > args.tolerance:
        os.remove(args.out)
        sys.exit(f'error: max relative error {err:.2e} exceeds --tolerance '
                 f'{args.tolerance:g}; {args.out} removed')


def check(args, model, target):
    """Run the file in onnxruntime against PyTorch; print the figures and
    return the error compared with --tolerance."""
    with torch.no_grad():
        expected = target.module(*target.inputs)
    expected = expected if isinstance(expected, tuple) else (expected, )
    actual = run_onnxruntime(args.out, target.inputs)
    size_mb = osp.getsize(args.out) / 2**20
    shape = 'x'.join(map(str, target.inputs[0].shape))
    print(f'exported {args.part} of {args.config} with the {args.exporter} '
          f'exporter to {args.out} ({size_mb:.2f} MiB)')
    if target.output_names[0] == 'boxes':
        return detection_report(args, model, actual, expected)
    err = max_rel_error(actual, expected)
    print(f'onnxruntime vs PyTorch, input {shape}: max relative error '
          f'{err:.2e}')
    if args.dynamic:
        err = max(err, check_dynamic(args.out, target, args.shape))
    return err


def detection_report(args, model, actual, expected):
    """Print how the file's detections pair with PyTorch's, on the random
    input and on --val-images images of the config's test set (against
    mmdet's own predict); return the largest score difference, or infinity
    when the detections differ."""
    rows = [('random input', len(expected[1]),
             *match_detections(actual, expected))]
    if args.val_images:
        from mmdet.registry import DATASETS
        dataset = DATASETS.build(model_cfg(args).test_dataloader.dataset)
        items = [dataset[i] for i in range(min(args.val_images,
                                               len(dataset)))]
        rows += [(osp.basename(item['data_samples'].img_path), *row)
                 for item, row in zip(
                     items, predict_parity(model, args.out, items))]
    worst = 0.
    for name, count, unpaired, score_err, box_err in rows:
        print(f'{name}: {count} detections, {unpaired} unpaired; max '
              f'|score difference| {score_err:.2e}, max |box coordinate '
              f'difference| {box_err:.2e} px')
        worst = max(worst, float('inf') if unpaired else score_err)
    return worst


if __name__ == '__main__':
    main()
