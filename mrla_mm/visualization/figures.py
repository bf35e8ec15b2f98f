"""Draw what the layer-attention recorder found, with matplotlib
(imported only when drawing)."""
import os
import os.path as osp
from typing import Dict, List, Tuple

from .layer_attention import (
    LayerAttention,
    count_noun,
    layer_label,
    short_name,
)


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
            labels = [short_name(n) for n in g.layers]
            ax.set_xticks(range(len(labels)), labels, fontsize=7)
            ax.set_yticks(range(len(labels)), labels, fontsize=7)
            ax.set_xlabel(f'attended layer s of {g.name}')
            ax.set_ylabel(f'querying layer t of {g.name}')
            heads = count_noun(g.num_heads, 'head')
            ax.set_title(f'{g.name}: mean of {heads}', fontsize=9)
        fig.colorbar(image, ax=axes, label='softmax weight', shrink=0.8)
        fig.suptitle('MRLA-base: weight of layer t on layer s '
                     f'({result.num_images} image(s))')
        figures['mrla_base_weights.png'] = fig
    for g in result.base if per_head else []:
        fig, axes = _figure(len(g.layers), 6, (2.3, 2.4))
        for t, (ax, w) in enumerate(zip(axes, g.weights)):
            image = _panel(ax, w.numpy(), unit, 'viridis')
            ax.set_xticks(range(t + 1),
                          [short_name(n) for n in g.layers[:t + 1]],
                          fontsize=7)
            _head_ticks(ax.set_yticks, g.num_heads)
            ax.set_xlabel('attended layer', fontsize=7)
            ax.set_ylabel('head', fontsize=7)
            ax.set_title(f'{layer_label(g.layers[t])}: '
                         f'{count_noun(g.num_heads, "head")}', fontsize=8)
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
                          [layer_label(n) for n in g.layers], fontsize=7)
            _head_ticks(ax.set_xticks, values.shape[1])
            ax.set_xlabel('head')
            ax.set_ylabel('MRLA layer')
            ax.set_title(f'{g.name}: {count_noun(len(g.layers), "layer")} x '
                         f'{count_noun(values.shape[1], "head")}', fontsize=9)
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
