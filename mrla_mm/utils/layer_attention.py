"""Record and draw where each MRLA layer looks.

Forward hooks on the :class:`MRLABase` and :class:`MRLALight` layers of a
model recompute, from the layer's own input and parameters, the quantities
the layer used, with the functions of :mod:`mrla_mm.ops.mrla_math` (no
second copy of the math):

- MRLA-base: the softmax weights ``[B, G, t]`` that layer ``t`` puts on the
  layers ``s <= t`` of its group, from its query and the keys in the
  group's :class:`MRLACache` (which holds this layer's key once it ran);
- MRLA-light: the per-head gate ``[B, G]`` (:meth:`MRLALight.gate`) and the
  magnitude of the learned ``lambda`` averaged over each head's channels.

Base groups are the layers sharing one cache (a ResNet stage, a block group
of a ViT, named by its range, e.g. ``layers.4-7``); light layers are
grouped by the module path before the block index (``layer1.0.mrla`` ->
``layer1``). Everything is averaged over the images.
"""
import json
import os
import os.path as osp
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from mrla_mm.models.layers import MRLABase, MRLACache, MRLALight
from mrla_mm.ops.mrla_math import (
    base_weights,
    channel_conv1d,
    channel_descriptor,
)


def group_name(layer_name: str) -> str:
    """``'layer1.0.mrla'`` -> ``'layer1'``: the path before the block index.
    """
    parts = layer_name.split('.')
    for i in range(len(parts) - 1, -1, -1):
        if parts[i].isdigit():
            return '.'.join(parts[:i]) or layer_name
    return layer_name


def _count(n: int, noun: str) -> str:
    return f'{n} {noun}' + ('' if n == 1 else 's')


@dataclass
class BaseGroupAttention:
    """MRLA-base weights of the layers of one group (one cache).

    Attributes:
        name (str): The group, e.g. ``'layer2'``.
        layers (list[str]): Module names of its MRLA layers, in order.
        weights (list[Tensor]): ``weights[t]`` is ``[G, t + 1]``, the mean
            over images of layer ``t``'s weights on layers ``0..t``.
    """
    name: str
    layers: List[str]
    weights: List[Tensor]

    @property
    def num_heads(self) -> int:
        return self.weights[0].shape[0]

    def matrix(self, head: Optional[int] = None) -> Tensor:
        """``[T, T]`` map, row ``t`` = weights of layer ``t`` on ``s <= t``.

        Averaged over heads, or of one ``head``; NaN above the diagonal.
        Each row sums to one.
        """
        n = len(self.layers)
        out = torch.full((n, n), float('nan'))
        for t, w in enumerate(self.weights):
            out[t, :t + 1] = w.mean(0) if head is None else w[head]
        return out


@dataclass
class LightGroupAttention:
    """MRLA-light gates and lambdas of the layers of one group.

    Attributes:
        name (str): The group, e.g. ``'layer2'``.
        layers (list[str]): Module names of its MRLA layers, in order.
        gates (Tensor): ``[L, G]`` mean gate per layer and head over images.
        lambda_abs (Tensor): ``[L, G]`` mean ``|lambda|`` over each head's
            channels (a parameter: the same for every image).
    """
    name: str
    layers: List[str]
    gates: Tensor
    lambda_abs: Tensor


@dataclass
class LayerAttention:
    """What :func:`record_layer_attention` found, averaged over images."""
    num_images: int
    base: List[BaseGroupAttention] = field(default_factory=list)
    light: List[LightGroupAttention] = field(default_factory=list)

    def summary(self) -> str:
        """A few lines per group of the numbers the pictures show."""
        lines = []
        if self.base:
            lines.append(f'MRLA-base: softmax weights over earlier layers, '
                         f'mean over {self.num_images} image(s) and heads')
        for g in self.base:
            m = g.matrix()
            head = (f'  {g.name}: {len(g.layers)} layers, '
                    f'{_count(g.num_heads, "head")}')
            if len(g.layers) == 1:
                lines.append(head + ' (a lone layer attends to itself)')
                continue
            lines.append(
                f'{head}; layers 1..{len(g.layers) - 1} put '
                f'{m.diagonal()[1:].mean():.3f} on themselves and '
                f'{m[1:, 0].mean():.3f} on the first layer (mean)')
            for t in range(1, len(g.layers)):
                row = m[t, :t + 1]
                top = int(row.argmax())
                lines.append(f'    {g.layers[t]}: self {row[t]:.3f}, most '
                             f'on {g.layers[top]} ({row[top]:.3f})')
        if self.light:
            lines.append(f'MRLA-light: gate sigmoid(q.k/sqrt(d)) mean over '
                         f'{self.num_images} image(s); |lambda| mean over '
                         'channels')
        for g in self.light:
            lines.append(
                f'  {g.name}: {len(g.layers)} layers, '
                f'{_count(g.gates.shape[1], "head")}; gate mean '
                f'{g.gates.mean():.3f} (min {g.gates.min():.3f}, max '
                f'{g.gates.max():.3f}); |lambda| '
                f'mean {g.lambda_abs.mean():.3f} (per layer: '
                + ', '.join(f'{v:.2f}' for v in g.lambda_abs.mean(1)) + ')')
        return '\n'.join(lines)

    def to_dict(self) -> Dict:
        """JSON-friendly numbers (lists of floats)."""
        return dict(
            num_images=self.num_images,
            base=[
                dict(name=g.name, layers=g.layers,
                     weights=[w.tolist() for w in g.weights])
                for g in self.base
            ],
            light=[
                dict(name=g.name, layers=g.layers, gates=g.gates.tolist(),
                     lambda_abs=g.lambda_abs.tolist()) for g in self.light
            ])


class LayerAttentionRecorder:
    """Forward hooks that collect MRLA weights over several forward passes.

    Use as a context manager around the forward passes, one image batch
    each, then call :meth:`result`.

    Args:
        model (nn.Module): Any module holding MRLA layers.
    """

    def __init__(self, model: nn.Module):
        self.layers = [(n, m) for n, m in model.named_modules()
                       if isinstance(m, (MRLABase, MRLALight))]
        if not self.layers:
            raise ValueError(
                f'{type(model).__name__} has no MRLABase or MRLALight layer '
                'to visualise')
        self.handles = []
        self.num_images = 0
        # Sums over images, keyed by layer name.
        self.base_sums: Dict[str, Tensor] = {}
        self.light_sums: Dict[str, Tensor] = {}
        self.base_groups: Optional[List[List[str]]] = None
        self._pass_caches: List[MRLACache] = []
        self._pass_groups: List[List[str]] = []

    def __enter__(self):
        for name, module in self.layers:
            hook = self._base_hook if isinstance(
                module, MRLABase) else self._light_hook
            self.handles.append(
                module.register_forward_hook(
                    self._named(hook, name), with_kwargs=True))
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        self.handles = []

    @staticmethod
    def _named(hook, name):
        return lambda module, args, kwargs, output: hook(
            name, module, args, kwargs)

    @staticmethod
    def _arg(args, kwargs, index, key):
        return args[index] if len(args) > index else kwargs[key]

    def _base_hook(self, name, module, args, kwargs):
        x = self._arg(args, kwargs, 0, 'x')
        cache = self._arg(args, kwargs, 1, 'cache')
        # Keep the caches alive for the pass: they identify the groups.
        for i, seen in enumerate(self._pass_caches):
            if seen is cache:
                group = self._pass_groups[i]
                break
        else:
            self._pass_caches.append(cache)
            group = []
            self._pass_groups.append(group)
        group.append(name)
        if len(cache) != len(group):
            raise RuntimeError(
                f'{name} ran as layer {len(cache)} of its MRLA-base cache '
                f'but is the {len(group)}th layer seen with it')
        q = channel_conv1d(channel_descriptor(x), module.query_conv.weight)
        w = base_weights(q, cache.stacked_keys(), module.num_heads)
        self._add(self.base_sums, name, w.detach().float().sum(0))

    def _light_hook(self, name, module, args, kwargs):
        x = self._arg(args, kwargs, 0, 'x')
        self._add(self.light_sums, name,
                  module.gate(x).detach().float().sum(0))

    @staticmethod
    def _add(sums, name, value):
        sums[name] = value if name not in sums else sums[name] + value

    def forward(self, model: nn.Module, inputs: Tensor):
        """Run ``model(inputs)`` once, counting ``inputs.shape[0]`` images.
        """
        self._pass_caches, self._pass_groups = [], []
        with torch.no_grad():
            out = model(inputs)
        if self.base_groups is None:
            self.base_groups = self._pass_groups
        elif self.base_groups != self._pass_groups:
            raise RuntimeError('the MRLA-base groups changed between passes:'
                               f' {self.base_groups} vs {self._pass_groups}')
        self._pass_caches = []
        self.num_images += inputs.shape[0]
        return out

    def result(self) -> LayerAttention:
        """Means over all images seen so far."""
        if not self.num_images:
            raise RuntimeError('no forward pass was recorded')
        n = self.num_images
        result = LayerAttention(num_images=n)
        groups = self.base_groups or []
        names = [group_name(layers[0]) for layers in groups]
        for layers, name in zip(groups, names):
            if names.count(name) > 1:
                # Several caches in one module list (a ViT's block groups):
                # name each by its block range, e.g. 'layers.4-7'.
                first, last = (_short(layers[i]).split('.')[0]
                               for i in (0, -1))
                name = f'{name}.{first}-{last}'
            result.base.append(
                BaseGroupAttention(
                    name, list(layers),
                    [self.base_sums[layer] / n for layer in layers]))
        modules = dict(self.layers)
        for name in self.light_sums:
            module = modules[name]
            lam = module.lambda_t.detach().float().abs()
            lam = lam.reshape(module.num_heads, -1).mean(1)
            gate = self.light_sums[name] / n
            last = result.light[-1] if result.light else None
            if (last is not None and last.name == group_name(name)
                    and last.gates.shape[1] == gate.shape[0]):
                last.layers.append(name)
                last.gates = torch.cat([last.gates, gate[None]])
                last.lambda_abs = torch.cat([last.lambda_abs, lam[None]])
            else:
                result.light.append(
                    LightGroupAttention(group_name(name), [name], gate[None],
                                        lam[None]))
        return result


def _short(name: str) -> str:
    """Layer label inside its group: ``layer1.2.mrla`` -> ``2``."""
    return re.sub(r'(\.mrla)+$', '', name[len(group_name(name)) + 1:])


def _layer_label(name: str) -> str:
    """``layer1.2.mrla`` -> ``layer1.2``: the block or encoder layer."""
    return re.sub(r'(\.mrla)+$', '', name)


def _grid(n: int, max_cols: int = 4):
    cols = min(n, max_cols)
    return (n + cols - 1) // cols, cols


# A panel of at most this many rows and columns shows each cell's value.
MAX_ANNOTATED_SIDE = 8
# At most this many tick labels on a head axis.
MAX_HEAD_TICKS = 16


def lambda_colour_range(result: LayerAttention) -> Tuple[float, float]:
    """``(0, top)`` for the ``|lambda|`` pictures: 0 is no carry, 1 a full
    carry of ``O^{t-1}``; ``top`` is 1, or the largest value if above."""
    top = max(float(g.lambda_abs.max()) for g in result.light)
    return 0.0, max(1.0, top)


def _head_ticks(set_ticks, num_heads: int) -> None:
    """Integer ticks, one per head or evenly thinned: never the -0.5 ..
    0.5 float ticks matplotlib puts on a one-column image."""
    step = -(-num_heads // MAX_HEAD_TICKS)
    ticks = list(range(0, num_heads, step))
    set_ticks(ticks, [str(h) for h in ticks], fontsize=7)


def _panel(ax, values, norm, cmap: str):
    """Draw ``values`` ``[rows, cols]`` (NaN left blank) on the figure's
    common colour scale, writing each value when there are few."""
    import numpy as np
    image = ax.imshow(values, norm=norm, cmap=cmap, aspect='auto',
                      interpolation='nearest')
    if max(values.shape) <= MAX_ANNOTATED_SIDE:
        colours = image.cmap(norm(values))
        for (r, c), v in np.ndenumerate(values):
            if np.isnan(v):
                continue
            # Dark text on bright cells, white on dark ones.
            luminance = colours[r, c, :3] @ np.array([0.299, 0.587, 0.114])
            ax.text(c, r, f'{v:.2f}', ha='center', va='center', fontsize=7,
                    color='k' if luminance > 0.5 else 'w')
    return image


def _figure(num_panels: int, max_cols: int, panel_size: Tuple[float, float]):
    import matplotlib.pyplot as plt
    rows, cols = _grid(num_panels, max_cols)
    fig, axes = plt.subplots(
        rows, cols, squeeze=False, layout='constrained',
        figsize=(panel_size[0] * cols + 0.8, panel_size[1] * rows + 0.6))
    for ax in axes.flat[num_panels:]:
        ax.remove()
    return fig, list(axes.flat[:num_panels])


def layer_attention_figures(result: LayerAttention,
                            per_head: bool = False) -> Dict[str, object]:
    """The matplotlib figures of ``result``, keyed by their file names.

    Every panel of a figure shares one colour scale, fixed to the range of
    its quantity (softmax weights and gates 0-1, ``|lambda|`` see
    :func:`lambda_colour_range`), with one colour bar; panels of at most
    :data:`MAX_ANNOTATED_SIDE` rows and columns carry their values.

    Files: ``mrla_base_weights.png`` (one panel per group, querying layer
    by attended layer, mean over heads), with ``per_head`` also
    ``mrla_base_weights_<group>_per_head.png`` (one panel per layer: head
    by attended layer); ``mrla_light_gates.png`` and
    ``mrla_light_lambda.png`` (one panel per group: layer by head).
    """
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib.colors import Normalize

    figures = {}
    unit = Normalize(0, 1)
    if result.base:
        fig, axes = _figure(len(result.base), 4, (3.6, 3.3))
        for ax, g in zip(axes, result.base):
            image = _panel(ax, g.matrix().numpy(), unit, 'viridis')
            labels = [_short(n) for n in g.layers]
            ax.set_xticks(range(len(labels)), labels, fontsize=7)
            ax.set_yticks(range(len(labels)), labels, fontsize=7)
            ax.set_xlabel(f'attended layer s of {g.name}')
            ax.set_ylabel(f'querying layer t of {g.name}')
            ax.set_title(f'{g.name}: mean of {_count(g.num_heads, "head")}',
                         fontsize=9)
        fig.colorbar(image, ax=axes, label='softmax weight', shrink=0.8)
        fig.suptitle('MRLA-base: weight of layer t on layer s '
                     f'({result.num_images} image(s))')
        figures['mrla_base_weights.png'] = fig
    for g in result.base if per_head else []:
        fig, axes = _figure(len(g.layers), 6, (2.3, 2.4))
        for t, (ax, w) in enumerate(zip(axes, g.weights)):
            image = _panel(ax, w.numpy(), unit, 'viridis')
            ax.set_xticks(range(t + 1), [_short(n) for n in g.layers[:t + 1]],
                          fontsize=7)
            _head_ticks(ax.set_yticks, g.num_heads)
            ax.set_xlabel('attended layer', fontsize=7)
            ax.set_ylabel('head', fontsize=7)
            ax.set_title(f'{_layer_label(g.layers[t])}: '
                         f'{_count(g.num_heads, "head")}', fontsize=8)
        fig.colorbar(image, ax=axes, label='softmax weight', shrink=0.8)
        fig.suptitle(f'MRLA-base {g.name}: weights of each head '
                     f'({result.num_images} image(s))')
        figures[f'mrla_base_weights_{g.name}_per_head.png'] = fig
    if not result.light:
        return figures
    for attr, norm, label, title, name in [
        ('gates', unit, 'gate', 'MRLA-light gate sigmoid(q.k/sqrt(d)), mean '
         f'over {result.num_images} image(s)', 'mrla_light_gates.png'),
        ('lambda_abs', Normalize(*lambda_colour_range(result)), '|lambda|',
         "MRLA-light |lambda|, mean over each head's channels",
         'mrla_light_lambda.png'),
    ]:
        fig, axes = _figure(len(result.light), 4, (3.6, 2.8))
        for ax, g in zip(axes, result.light):
            values = getattr(g, attr).numpy()
            image = _panel(ax, values, norm, 'magma')
            ax.set_yticks(range(len(g.layers)),
                          [_layer_label(n) for n in g.layers], fontsize=7)
            _head_ticks(ax.set_xticks, values.shape[1])
            ax.set_xlabel('head')
            ax.set_ylabel('MRLA layer')
            ax.set_title(f'{g.name}: {_count(len(g.layers), "layer")} x '
                         f'{_count(values.shape[1], "head")}', fontsize=9)
        fig.colorbar(image, ax=axes, label=label, shrink=0.8)
        fig.suptitle(title)
        figures[name] = fig
    return figures


def plot_layer_attention(result: LayerAttention,
                         out_dir: str,
                         per_head: bool = False) -> List[str]:
    """Write the PNGs of :func:`layer_attention_figures` into ``out_dir``.

    Returns:
        list[str]: The written paths.
    """
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    written = []
    for name, fig in layer_attention_figures(result, per_head).items():
        path = osp.join(out_dir, name)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def _test_pipeline_cfg(cfg) -> List[dict]:
    """The config's test pipeline without annotation loading."""
    dataset = cfg.get('test_dataloader', {}).get('dataset', {})
    pipeline = dataset.get('pipeline') or cfg.get('test_pipeline')
    if pipeline is None:
        raise ValueError('the config has no test_dataloader.dataset.pipeline '
                         'nor test_pipeline to prepare the images with')
    return [
        t for t in pipeline
        if not str(t.get('type', '')).endswith('LoadAnnotations')
    ]


def build_model_from_checkpoint(config: str, checkpoint: str,
                                device: str = 'cpu'):
    """Build a config's model and load a checkpoint into it (eval mode).

    ``checkpoint`` may hold the whole model (``backbone.*`` keys, e.g. a
    trained detector, published or not) or the backbone alone (e.g. a
    converted ImageNet checkpoint). Published files are hash checked.
    Its backbone weights must fit the backbone exactly: the pictures of a
    partly random backbone would mislead.

    Returns:
        tuple: ``(model, cfg)``.
    """
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmengine.runner.checkpoint import _load_checkpoint

    from mrla_mm.models import skip_backbone_pretrained
    cfg = Config.fromfile(config)
    skip_backbone_pretrained(cfg.model)  # the checkpoint brings the weights
    scope = cfg.get('default_scope', 'mmdet')
    init_default_scope(scope)
    if scope == 'mmpretrain':
        from mmpretrain.registry import MODELS
    else:
        from mmdet.registry import MODELS
    model = MODELS.build(cfg.model)
    ckpt = _load_checkpoint(checkpoint, map_location='cpu')
    state_dict = ckpt.get('state_dict', ckpt)
    state_dict = {
        (k[len('module.'):] if k.startswith('module.') else k): v
        for k, v in state_dict.items()
    }
    backbone = getattr(model, 'backbone', model)
    whole = any(k.startswith('backbone.') for k in state_dict)
    target = model if whole else backbone
    missing, unexpected = target.load_state_dict(state_dict, strict=False)
    prefix = 'backbone.' if whole and target is not backbone else ''
    lost = [k for k in missing if k.startswith(prefix)]
    extra = [k for k in unexpected if k.startswith(prefix)]
    if lost or extra:
        raise KeyError(
            f'the backbone weights of {checkpoint} do not fit the backbone '
            f'of {config}: it lacks {len(lost)} (e.g. {lost[:3]}) and has '
            f'{len(extra)} unknown (e.g. {extra[:3]}); it does not belong '
            'to this config')
    model.to(device).eval()
    return model, cfg


def record_layer_attention(model: nn.Module, cfg, images: Sequence[str],
                           device: str = 'cpu') -> LayerAttention:
    """Run the backbone of ``model`` on each image and record its MRLA.

    Args:
        model (nn.Module): An mmdet detector, an mmpretrain classifier (its
            ``backbone`` is run) or a bare backbone.
        cfg (Config): The model's config; its test pipeline (annotation
            loading removed) and the model's data preprocessor prepare the
            images as in testing.
        images (Sequence[str]): Image files.

    Returns:
        LayerAttention
    """
    from mmengine.dataset import Compose, pseudo_collate

    if not images:
        raise ValueError('images must name at least one image file')
    missing = [p for p in images if not osp.isfile(p)]
    if missing:
        raise FileNotFoundError(f'images not found: {missing}')
    pipeline = Compose(_test_pipeline_cfg(cfg))
    backbone = getattr(model, 'backbone', model)
    with LayerAttentionRecorder(backbone) as recorder:
        for i, path in enumerate(images):
            data = pseudo_collate([pipeline(dict(img_path=path, img_id=i))])
            inputs = model.data_preprocessor(data, False)['inputs']
            recorder.forward(backbone, inputs.to(device))
    return recorder.result()


def visualize_layer_attention(config: str,
                              checkpoint: str,
                              images: Sequence[str],
                              out_dir: str,
                              per_head: bool = False,
                              device: str = 'cpu') -> LayerAttention:
    """Record, draw and summarise a checkpoint's MRLA layer attention.

    Writes the PNGs of :func:`plot_layer_attention`, ``summary.txt`` and
    ``layer_attention.json`` (all the numbers) into ``out_dir``.
    """
    model, cfg = build_model_from_checkpoint(config, checkpoint, device)
    result = record_layer_attention(model, cfg, images, device)
    plot_layer_attention(result, out_dir, per_head)
    with open(osp.join(out_dir, 'summary.txt'), 'w') as f:
        f.write(result.summary() + '\n')
    with open(osp.join(out_dir, 'layer_attention.json'), 'w') as f:
        json.dump(result.to_dict(), f)
    return result
