"""Test (and evaluate) a detector whose config may use MRLA modules.

The command line is mmdet's ``tools/test.py``::

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out FILE.pkl]
        [--show] [--show-dir DIR] [--wait-time S]
        [--cfg-options KEY=VALUE ...] [--launcher {none,pytorch,slurm,mpi}]

``--show-dir`` paints predictions (and ground truth) into
``WORK_DIR/TIMESTAMP/SHOW_DIR``, as mmdet does. ``--launcher pytorch`` also
works without a GPU; see ``mrla_mm.engine.launch``.
"""
import argparse
import os
import os.path as osp

from mmdet.evaluation import DumpDetResults
from mmengine.config import Config, DictAction
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

import mrla_mm  # noqa: F401  registers the MRLA modules
from mrla_mm.engine import close_process_group, setup_cpu_distributed
from mrla_mm.models import skip_backbone_pretrained


def parse_args():
    parser = argparse.ArgumentParser(
        description='Test (and evaluate) a detector')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument(
        '--work-dir', help='the dir to save the evaluation metrics')
    parser.add_argument(
        '--out', help='dump predictions to a pickle file (.pkl / .pickle)')
    parser.add_argument(
        '--show', action='store_true', help='show predictions in a window')
    parser.add_argument(
        '--show-dir',
        help='save painted predictions to WORK_DIR/TIMESTAMP/SHOW_DIR')
    parser.add_argument(
        '--wait-time', type=float, default=2,
        help='seconds each image is shown with --show')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config settings, key=value pairs, e.g. '
        'test_dataloader.batch_size=4; lists as key="[a,b]" or key=a,b')
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def build_config(args) -> Config:
    """The config of the run: file, command-line overrides, checkpoint."""
    if not osp.isfile(args.checkpoint) and '://' not in args.checkpoint:
        raise FileNotFoundError(
            f'checkpoint {args.checkpoint}: no such file')
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        raise ValueError(f'--out must name a .pkl or .pickle file, got '
                         f'{args.out!r}')
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])
    # mmdet's visualization hook joins work_dir and --show-dir again at
    # every iteration: only an absolute work_dir keeps the path fixed.
    cfg.work_dir = osp.abspath(cfg.work_dir)
    cfg.load_from = args.checkpoint
    # The tested checkpoint holds every weight.
    skip_backbone_pretrained(cfg.model)
    if args.show or args.show_dir:
        hook = cfg.default_hooks.get('visualization')
        if hook is None:
            raise RuntimeError(
                '--show and --show-dir need a visualization hook in '
                "default_hooks, e.g. dict(type='DetVisualizationHook')")
        hook.draw = True
        if args.show:
            hook.show = True
            hook.wait_time = args.wait_time
        if args.show_dir:
            hook.test_out_dir = args.show_dir
    return cfg


def main():
    args = parse_args()
    cfg = build_config(args)
    setup_cpu_distributed(cfg)
    runner = (Runner.from_cfg(cfg)
              if 'runner_type' not in cfg else RUNNERS.build(cfg))
    if args.out is not None:
        runner.test_evaluator.metrics.append(
            DumpDetResults(out_file_path=args.out))
    runner.test()
    close_process_group()


if __name__ == '__main__':
    main()
