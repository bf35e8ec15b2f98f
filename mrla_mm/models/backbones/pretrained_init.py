"""Strict ``init_cfg=dict(type='Pretrained')`` loading for MRLA ResNets.

mmengine's ``Pretrained`` initializer loads with ``strict=False``: a
checkpoint of another architecture loads in part, with a warning buried in
the log, and a missing local file is noticed only when ``init_weights``
runs, after the Runner has built the datasets. The MRLA ResNets keep the
usual config (``checkpoint``, ``prefix``, ``map_location``) and load it
themselves:

- a local checkpoint is looked for when the backbone is built, before any
  dataset;
- the weights are those under ``prefix`` (``'backbone.'`` for a classifier
  or a detector checkpoint); a checkpoint without that prefix whose keys
  are the backbone's own (a converter output, torchvision's ResNet) loads
  as it is, and mmdet's and mmpretrain's names of the deep stem are matched
  to each other;
- every entry of the backbone must come from the checkpoint with its shape,
  and every entry of the checkpoint must go into the backbone, except a
  classifier head (``fc.*``, ``head.*``) and the MRLA branches as a whole:
  a checkpoint without any MRLA weight (an ImageNet ResNet) leaves them at
  their initialisation with each branch's norm weight and bias at zero, so
  the backbone starts as exactly the pretrained ResNet;
- anything else raises :class:`CheckpointError` naming the first
  mismatching, missing or unexpected key with its shapes, and nothing is
  loaded.
"""
import logging
import os
import os.path as osp
import re
from collections import Counter, OrderedDict
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from mmengine.logging import print_log
from mmengine.model.weight_init import PretrainedInit
from mmengine.runner import CheckpointLoader
from torch import Tensor

from mrla_mm.converters import CheckpointError
from mrla_mm.converters.resnet import deep_stem_names
from .mrla_block import MRLABlockMixin

# The default init_cfg of mmdet's and mmpretrain's ResNet.
DEFAULT_INIT_CFG = [
    dict(type='Kaiming', layer='Conv2d'),
    dict(type='Constant', val=1, layer=['_BatchNorm', 'GroupNorm'])
]
# Keys of an ImageNet classifier's head: torchvision's ``fc``, a bare
# mmpretrain ``head``.
HEAD_PREFIXES = ('fc.', 'head.')
# The deep stem is an nn.Sequential in mmdet and ConvModules in mmpretrain.
_STEM_RENAMES = {
    fmt: {
        deep_stem_names(src)[module]: deep_stem_names(fmt)[module]
        for module in deep_stem_names(fmt)
    }
    for fmt, src in (('mmdet', 'mmpretrain'), ('mmpretrain', 'mmdet'))
}
_BLOCK_KEY = re.compile(r'^layer(\d+)\.(\d+)\.')
# The ImageNet configs of configs/mrla_cls, by (depth, MRLA type).
_IMAGENET_CONFIGS = {
    (50, 'MRLALight'): 'resnet50-mrlal_8xb32_in1k',
    (101, 'MRLALight'): 'resnet101-mrlal_8xb32_in1k',
    (50, 'MRLABase'): 'resnet50-mrlab_8xb32_in1k',
    (101, 'MRLABase'): 'resnet101-mrlab_8xb32_in1k',
}
# The names the authors' detection configs give their ImageNet checkpoints.
_AUTHORS_FILES = {
    (50, 'MRLALight'): 'r50_mrlal_77.75.pth.tar',
    (101, 'MRLALight'): 'r101_mrlal_78.66.pth.tar',
}


def pretrained_init_cfg(init_cfg) -> Optional[dict]:
    """The ``Pretrained`` entry of ``init_cfg`` (a dict or a list of
    dicts), or None."""
    cfgs = init_cfg if isinstance(init_cfg, (list, tuple)) else [init_cfg]
    found = [
        c for c in cfgs if isinstance(c, dict)
        and c.get('type') in ('Pretrained', PretrainedInit)
    ]
    if len(found) > 1:
        raise ValueError(f'init_cfg has {len(found)} Pretrained entries, '
                         f'expected at most one: {init_cfg}')
    return found[0] if found else None


def skip_backbone_pretrained(model_cfg) -> None:
    """Drop the backbone's ``Pretrained`` ``init_cfg`` from a model config,
    in place, for tools that load all weights themselves or need none
    (testing a trained checkpoint, counting FLOPs): its file then need not
    exist, as in mmdet's ``init_detector``."""
    backbone = model_cfg.get('backbone')
    if backbone is not None and pretrained_init_cfg(
            backbone.get('init_cfg')) is not None:
        backbone.init_cfg = None


def _mrla_type(mrla_cfg) -> Optional[str]:
    return mrla_cfg.get('type') if isinstance(mrla_cfg, dict) else None


class PretrainedInitMixin:
    """Adds the strict ``Pretrained`` loading described in this module to
    an MRLA ResNet (mmdet's or mmpretrain's).

    The host calls :meth:`check_pretrained_file` in its ``__init__``, with
    ``depth``, ``mrla_cfg`` and ``deep_stem`` known.
    """

    def check_pretrained_file(self, init_cfg, depth: int, mrla_cfg,
                              deep_stem: bool) -> None:
        """Raise FileNotFoundError, saying how to make the file, when a
        ``Pretrained`` ``init_cfg`` names a local checkpoint that is not
        there."""
        cfg = pretrained_init_cfg(init_cfg)
        if cfg is None:
            return
        checkpoint = cfg.get('checkpoint')
        if not isinstance(checkpoint, str) or not checkpoint:
            # A TypeError, as mmdet's ResNet raises for `pretrained`.
            error = ValueError if isinstance(checkpoint, str) else TypeError
            raise error(
                f'init_cfg.checkpoint must be a path or URL of the '
                f'pretrained weights, got {checkpoint!r} in {cfg}')
        if '://' in checkpoint or osp.isfile(osp.expanduser(checkpoint)):
            return
        raise FileNotFoundError(
            self._missing_checkpoint_message(checkpoint, depth,
                                             _mrla_type(mrla_cfg), deep_stem))

    def _missing_checkpoint_message(self, checkpoint: str, depth: int,
                                    mrla_type: Optional[str],
                                    deep_stem: bool) -> str:
        name = type(self).__name__
        lines = [
            f'model.backbone.init_cfg.checkpoint={checkpoint!r}: no such '
            f'file (from {os.getcwd()}). This {name} (depth {depth}, '
            f'{mrla_type or "no MRLA"}{", deep stem" if deep_stem else ""}) '
            'starts from ImageNet weights; make the file with one of:'
        ]
        config = _IMAGENET_CONFIGS.get((depth, mrla_type))
        if config is not None and deep_stem == (mrla_type == 'MRLABase'):
            lines.append(
                f'  python tools/train.py configs/mrla_cls/{config}.py  '
                f'# then copy work_dirs/{config}/epoch_100.pth to '
                f'{checkpoint}, or pass --cfg-options '
                'model.backbone.init_cfg.checkpoint=<that file>')
        else:
            lines.append(
                f'  python tools/train.py <an mmpretrain config with type='
                f"'MRLAResNet', depth={depth} and this backbone's other "
                f'settings>  # then point model.backbone.init_cfg.checkpoint '
                'at its checkpoint')
        if depth in (50, 101, 152) and mrla_type is not None:
            source = _AUTHORS_FILES.get((depth, mrla_type),
                                        'AUTHORS_CHECKPOINT.pth.tar')
            lines.append(
                '  python tools/model_converters/'
                f'mrla_official_to_openmmlab.py {source} {checkpoint}'
                "  # the authors' ImageNet checkpoint")
        if deep_stem:
            lines.append(
                'Only an ImageNet checkpoint of the same deep-stem MRLA '
                'backbone fits: torchvision\'s ResNets have a one-conv stem.')
        elif depth in (18, 34, 50, 101, 152):
            lines.append(
                'Or start from torchvision\'s ImageNet ResNet, the MRLA '
                'branches starting as the identity (not the paper\'s '
                'recipe): --cfg-options model.backbone.init_cfg.checkpoint='
                f'torchvision://resnet{depth}')
        lines.append('See docs/detection.md, "From ImageNet to COCO".')
        return '\n'.join(lines)

    _mrla_load_checked = False

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Every load of a state dict holding this backbone's weights passes
        # here first, mmengine's non-strict ones included.
        if not self._mrla_load_checked:
            check_loaded_architecture(self, state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def init_weights(self) -> None:
        """Initialise as the host does, then load a ``Pretrained``
        ``init_cfg`` strictly (see :func:`load_pretrained_backbone`)."""
        cfg = pretrained_init_cfg(self.init_cfg)
        if cfg is None or self.is_init:
            super().init_weights()
            return
        init_cfg = self.init_cfg
        others = [c for c in (
            init_cfg if isinstance(init_cfg, (list, tuple)) else [init_cfg])
                  if c is not cfg]
        # The default initialisation first (what MRLA branches keep when the
        # checkpoint has none), or the other entries of init_cfg; the
        # checkpoint then overwrites what it holds.
        self.init_cfg = others or DEFAULT_INIT_CFG
        try:
            super().init_weights()
        finally:
            self.init_cfg = init_cfg
        load_pretrained_backbone(
            self, cfg['checkpoint'], prefix=cfg.get('prefix'),
            map_location=cfg.get('map_location', 'cpu'))


def _state_dict_of(checkpoint, source: str) -> Dict[str, Tensor]:
    """The weights of a loaded checkpoint, ``module.`` prefixes removed."""
    if isinstance(checkpoint, dict):
        for key in ('state_dict', 'model'):
            if isinstance(checkpoint.get(key), dict):
                checkpoint = checkpoint[key]
                break
    if not (isinstance(checkpoint, dict) and checkpoint
            and all(isinstance(v, Tensor) for v in checkpoint.values())):
        keys = sorted(checkpoint)[:8] if isinstance(checkpoint, dict) else (
            type(checkpoint).__name__)
        raise CheckpointError(
            f'{source} holds no state dict: expected a dict of tensors, bare '
            f"or under 'state_dict' or 'model', got {keys}")
    return OrderedDict(
        (k[len('module.'):] if k.startswith('module.') else k, v)
        for k, v in checkpoint.items())


def _backbone_part(weights: Dict[str, Tensor], prefix: Optional[str],
                   expected: Dict[str, Tensor],
                   source: str) -> Tuple[Dict[str, Tensor], str, List[str]]:
    """The backbone's weights in ``weights``, where they were found and the
    keys left out."""
    if prefix and not prefix.endswith('.'):
        prefix += '.'
    for candidate in dict.fromkeys((prefix, '', 'backbone.')):
        if candidate is None:
            continue
        part = OrderedDict((k[len(candidate):], v)
                           for k, v in weights.items()
                           if k.startswith(candidate))
        # Bare keys count when some are the backbone's own; a prefix when
        # it is the one asked for or the usual 'backbone.'.
        if part and (candidate or any(k in expected for k in part)):
            where = f'keys under {candidate!r}' if candidate else 'bare keys'
            if not candidate and prefix:
                where += f', none under {prefix!r}'
            left = [k for k in weights if not k.startswith(candidate)]
            return part, where, left
    raise CheckpointError(
        f'{source}: none of its {len(weights)} keys is a backbone key: '
        f'expected keys such as {next(iter(expected))!r}, bare or under '
        f"{prefix or 'backbone.'!r}; its keys begin {list(weights)[:5]}")


def _match_stem_names(weights: Dict[str, Tensor],
                      expected: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """Rename a deep stem saved by the other codebase to this backbone's
    names."""
    for renames in _STEM_RENAMES.values():
        source = next(iter(renames))
        if (f'{source}.weight' in weights
                and f'{renames[source]}.weight' in expected):
            out = OrderedDict()
            for key, value in weights.items():
                module, leaf = key.rsplit('.', 1)
                out[f'{renames.get(module, module)}.{leaf}'] = value
            return out
    return weights


def _mrla_entries(backbone: nn.Module) -> Tuple[List[nn.Module], List[str]]:
    """The blocks with an MRLA branch and the state-dict keys of their
    branches (layer and norm)."""
    blocks, keys = [], []
    for name, module in backbone.named_modules():
        if isinstance(module, MRLABlockMixin) and module.mrla is not None:
            blocks.append(module)
            for part in ('mrla', module.mrla_norm_name):
                keys += [
                    f'{name}.{part}.{k}'
                    for k in getattr(module, part).state_dict()
                ]
    return blocks, keys


def _blocks_per_stage(keys) -> Tuple[int, ...]:
    blocks = {m.groups() for m in map(_BLOCK_KEY.match, keys) if m}
    count = Counter(int(stage) for stage, _ in blocks)
    return tuple(count[s] for s in sorted(count))


def _shape(t: Tensor) -> Tuple[int, ...]:
    return tuple(t.shape)


def _mismatch_report(weights: Dict[str, Tensor], expected: Dict[str, Tensor],
                     mismatched: List[str], missing: List[str],
                     unexpected: List[str]) -> List[str]:
    """One line per kind of problem, naming the first key, then hints."""
    lines = []
    if mismatched:
        k = mismatched[0]
        lines.append(f'{len(mismatched)} shape mismatch(es), first {k!r}: '
                     f'checkpoint {_shape(weights[k])}, backbone '
                     f'{_shape(expected[k])}')
    if missing:
        k = missing[0]
        lines.append(f'{len(missing)} backbone key(s) not in the checkpoint, '
                     f'first {k!r} (backbone {_shape(expected[k])})')
    if unexpected:
        k = unexpected[0]
        lines.append(f'{len(unexpected)} checkpoint key(s) not in the '
                     f'backbone, first {k!r} (checkpoint '
                     f'{_shape(weights[k])})')
    has_lambda = [any(k.endswith('.mrla.lambda_t') for k in d)
                  for d in (weights, expected)]
    has_mrla = any('.mrla.' in k for k in weights)
    if has_mrla and has_lambda == [True, False]:
        lines.append('the checkpoint is MRLA-light (lambda_t), the backbone '
                     'MRLA-base')
    elif has_mrla and has_lambda == [False, True]:
        lines.append('the checkpoint is MRLA-base (no lambda_t), the backbone '
                     'MRLA-light')
    stages = [_blocks_per_stage(d) for d in (weights, expected)]
    if stages[0] and stages[0] != stages[1]:
        lines.append(f'blocks per stage: checkpoint {stages[0]}, backbone '
                     f'{stages[1]}')
    if any('.mrla.mrla.' in k for k in weights):
        lines.append("this is the authors' key layout: convert it with "
                     'tools/model_converters/mrla_official_to_openmmlab.py')
    return lines


def _fit_report(weights: Dict[str, Tensor], expected: Dict[str, Tensor],
                may_miss=frozenset(), ignored=()) -> List[str]:
    """What keeps ``weights`` from loading into a backbone whose state
    dict is ``expected`` (empty when they fit): entries of another shape,
    entries missing but for ``may_miss`` and BatchNorm counters, entries
    the backbone lacks but for ``ignored``."""
    mismatched = [
        k for k, v in weights.items()
        if k in expected and v.shape != expected[k].shape
    ]
    missing = [
        k for k in expected if k not in weights and k not in may_miss
        and not k.endswith('num_batches_tracked')
    ]
    unexpected = [
        k for k in weights if k not in expected and k not in ignored
    ]
    if not (mismatched or missing or unexpected):
        return []
    return _mismatch_report(weights, expected, mismatched, missing,
                            unexpected)


def _backbone_fit(backbone: nn.Module, weights: Dict[str, Tensor],
                  expected: Dict[str, Tensor]):
    """``(blocks, mrla_keys, without_mrla, report)``: the backbone's MRLA
    blocks and entries, whether ``weights`` hold none of those entries (an
    ImageNet ResNet, which may then miss them all), and the
    :func:`_fit_report` of ``weights``, a classifier head ignored."""
    blocks, mrla_keys = _mrla_entries(backbone)
    without_mrla = not any(k in weights for k in mrla_keys)
    head = [k for k in weights
            if k not in expected and k.startswith(HEAD_PREFIXES)]
    report = _fit_report(weights, expected,
                         set(mrla_keys) if without_mrla else set(), head)
    return blocks, mrla_keys, without_mrla, report


def check_loaded_architecture(backbone: nn.Module,
                              state_dict: Dict[str, Tensor],
                              prefix: str) -> None:
    """Raise :class:`CheckpointError` when the entries of ``state_dict``
    under ``prefix`` are meant for ``backbone`` (one of its keys is there)
    but do not fit it: the other MRLA type, another depth or width.
    mmengine loads ``load_from``, ``--resume`` and the checkpoint of
    ``test.py`` non-strictly, which would leave such a model half loaded
    after one warning. A checkpoint without any MRLA weight (an ImageNet
    ResNet) loads with the MRLA entries missing, with a warning.
    """
    expected = backbone.state_dict()
    weights = {
        k[len(prefix):]: v
        for k, v in state_dict.items() if k.startswith(prefix)
    }
    if not any(k in expected for k in weights):
        return
    name = type(backbone).__name__
    _, mrla_keys, without_mrla, report = _backbone_fit(
        backbone, weights, expected)
    if report:
        raise CheckpointError(
            f"the checkpoint's entries under {prefix!r} do not fit {name} "
            '(a checkpoint of another architecture); nothing of it should '
            'be loaded:\n  ' + '\n  '.join(report))
    if without_mrla and mrla_keys:
        print_log(
            f"{name}: the checkpoint's entries under {prefix!r} hold no MRLA "
            'weights (a ResNet without MRLA): the MRLA branches keep their '
            'current values. To start them as the identity, load it '
            "through init_cfg=dict(type='Pretrained', ...)",
            logger='current', level=logging.WARNING)


def load_pretrained_backbone(backbone: nn.Module,
                             checkpoint: str,
                             prefix: Optional[str] = None,
                             map_location='cpu') -> None:
    """Load ``checkpoint`` into an MRLA ResNet, strictly (see the module's
    docstring), and log what was loaded.

    Args:
        backbone (nn.Module): An MRLA ResNet of mmdet or mmpretrain.
        checkpoint (str): Path or URL, anything mmengine's
            ``CheckpointLoader`` reads.
        prefix (str, optional): Where the backbone's weights are in the
            checkpoint, e.g. ``'backbone.'``. Checkpoints without it are
            read as bare backbone keys.
        map_location: As in :func:`torch.load`. Defaults to ``'cpu'``.

    Raises:
        CheckpointError: The checkpoint does not fit the backbone.
    """
    name = type(backbone).__name__
    loaded = CheckpointLoader.load_checkpoint(
        checkpoint, map_location=map_location, logger='current')
    expected = backbone.state_dict()
    weights, where, left = _backbone_part(
        _state_dict_of(loaded, checkpoint), prefix, expected, checkpoint)
    weights = _match_stem_names(weights, expected)
    blocks, mrla_keys, without_mrla, report = _backbone_fit(
        backbone, weights, expected)
    if report:
        raise CheckpointError(
            f'{checkpoint} ({where}) does not fit {name}; nothing was '
            'loaded:\n  ' + '\n  '.join(report))
    backbone._mrla_load_checked = True
    try:
        backbone.load_state_dict(
            OrderedDict((k, v) for k, v in weights.items() if k in expected),
            strict=False)
    finally:
        backbone._mrla_load_checked = False
    if without_mrla:
        for block in blocks:
            norm = block.mrla_norm
            if getattr(norm, 'weight', None) is None:
                raise CheckpointError(
                    f'{checkpoint} holds no MRLA weights and the MRLA '
                    f'branches cannot start as the identity: their norm '
                    f'{type(norm).__name__} has no affine weight')
            with torch.no_grad():
                norm.weight.zero_()
                norm.bias.zero_()

    def count(keys):
        return sum(not k.endswith('num_batches_tracked') for k in keys)

    total, mrla = count(expected), count(mrla_keys)
    print_log(
        f'{name}: loaded {count(k for k in weights if k in expected)} of '
        f'{total} backbone entries from {checkpoint} ({where}); MRLA: '
        f'{0 if without_mrla else mrla} of {mrla} entries of '
        f'{len(blocks)} branches', logger='current')
    if without_mrla and blocks:
        print_log(
            f'{name}: {checkpoint} holds no MRLA weights: the {len(blocks)} '
            'MRLA branches keep their initialisation and start as the '
            'identity (weight and bias of each branch norm at 0)',
            logger='current')
    # The report is empty: what the backbone lacks is a classifier head.
    ignored = left + [k for k in weights if k not in expected]
    if ignored:
        print_log(
            f'{name}: ignored {len(ignored)} checkpoint entries outside the '
            f'backbone: {", ".join(ignored[:4])}'
            f'{", ..." if len(ignored) > 4 else ""}', logger='current')
