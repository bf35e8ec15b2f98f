"""The value gradients of an MRLA-base group, gathered where each value's
backward runs instead of accumulated from the start of the group's
backward.

The gradient of layer ``s``'s value map is a sum over the later layers of
its group, ``sum_t weights_t[:, :, s] * dO_t``, ``dO_t`` the gradient of
layer ``t``'s readout. Left to autograd, the backward of the last layer
returns a gradient for every earlier value and autograd holds one
accumulated gradient per value from then on: ``T`` maps on top of
everything the forward saved, at the moment the backward starts.

With a :class:`ReadoutGradients` shared by a group, layer ``t``'s backward
returns only its own value's gradient and leaves ``dO_t`` here; layer
``s`` sums its share of the gradients left by the later layers when its
own backward runs, and a ``dO_t`` is let go once every layer it serves has
taken it. The store grows by one map per layer while each layer's
backward lets the maps saved for it go, so the group's backward needs no
more memory than its start.

Autograd runs layer ``t``'s backward before layer ``s``'s for ``s < t``
where layer ``t``'s input depends on layer ``s``'s output (a ResNet stage,
a ViT), and otherwise too, as its engine runs later-made nodes first; a
layer whose backward would still come after an earlier layer's raises
instead of leaving that layer a partial gradient. The gradients of one
backward pass are kept apart from another's (``retain_graph``) by
autograd's graph task.
"""
import weakref
from typing import Dict, List, Optional, Set, Tuple

import torch
from torch import Tensor

from .mrla_base import readout_inference
from .torch_internals import current_graph_task_id, will_engine_execute_node


class _Pass:
    """One backward pass through a group: the layers whose backward ran,
    and the readout gradients left for earlier layers."""

    def __init__(self):
        self.done: Set[int] = set()
        self.left: Dict[int, Tuple[Tensor, Tensor, Set[int]]] = {}


class ReadoutGradients:
    """Readout gradients of an MRLA-base group's layers, kept in the
    backward until the earlier layers have taken their share.

    Layers are numbered by their position in the group (the number of
    values before theirs). A layer whose backward takes its value gradient
    from here :meth:`join` s in its forward; the gradients of the other
    layers' values are left to autograd.
    """

    def __init__(self):
        # Per layer, its autograd node when it joined (held weakly).
        self._nodes: List[Optional[weakref.ref]] = []
        self._passes: Dict[int, _Pass] = {}

    def join(self, layer: int, node) -> None:
        """Have ``layer``, whose forward makes autograd ``node`` now, take
        its value gradient from here."""
        if layer < len(self._nodes):
            raise ValueError(f'layer {layer} of this MRLA-base group joined '
                             'already; a group is one forward pass')
        self._nodes.extend([None] * (layer - len(self._nodes)))
        self._nodes.append(weakref.ref(node))

    def joined(self, layer: int) -> bool:
        """Whether ``layer`` takes its value gradient from here."""
        return layer < len(self._nodes) and self._nodes[layer] is not None

    def exchange(self, layer: int, grad_readout: Tensor, weights: Tensor,
                 takers: Set[int]) -> Tensor:
        """In ``layer``'s backward: the gradient of its value map, its own
        readout's share (from ``grad_readout`` and the softmax weights
        ``weights`` ``[B, G, layer + 1]``) plus what the later layers of
        this backward pass left for it; ``grad_readout`` and ``weights``
        are left in turn for the earlier layers ``takers``."""
        state = self._pass()
        self._check_later_layers_ran(layer, state)
        maps, columns = [grad_readout], [weights[..., layer]]
        for later in sorted(state.left):
            g, w, waiting = state.left[later]
            if layer in waiting:
                maps.append(g)
                columns.append(w[..., layer].to(weights.dtype))
                waiting.discard(layer)
                if not waiting:
                    del state.left[later]
        state.done.add(layer)
        if takers:
            state.left[layer] = (grad_readout, weights, set(takers))
        first = next(i for i, n in enumerate(self._nodes) if n is not None)
        if layer == first:
            # Nothing of this pass is left to take.
            self._passes.pop(current_graph_task_id(), None)
        return readout_inference(torch.stack(columns, -1), maps, None, None,
                                None)

    def _pass(self) -> _Pass:
        return self._passes.setdefault(current_graph_task_id(),
                                       _Pass())

    def _check_later_layers_ran(self, layer: int, state: _Pass) -> None:
        for later in range(layer + 1, len(self._nodes)):
            ref = self._nodes[later]
            node = None if ref is None else ref()
            if (node is not None and later not in state.done
                    and will_engine_execute_node(node)):
                raise RuntimeError(
                    f'the backward of layer {layer} of an MRLA-base group '
                    f'ran before that of its later layer {later}, which '
                    'adds to its value gradient; layers of a group must '
                    'feed each other in order (layer t + 1 taking layer '
                    "t's output), or their value gradients must be left to "
                    'autograd (gradients=None)')
