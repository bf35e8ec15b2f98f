"""The double backward of the compiled ops.

Each op's ``autograd.Function`` takes its first-order gradients from the
kernels, which build no graph. When a graph of the gradient is asked for
(``create_graph=True``), its backward instead differentiates the op's
PyTorch composition, which computes the same function, under autograd.
"""
from typing import Callable, List, Optional, Sequence

import torch
from torch import Tensor


def composition_grads(inputs: Sequence[Optional[Tensor]], grad_out: Tensor,
                      composition: Callable[[], Tensor]
                      ) -> List[Optional[Tensor]]:
    """The gradients of ``composition()`` for ``inputs`` (the saved
    inputs, which carry their autograd history in a double backward) at
    ``grad_out``, with their graph; None for an input that is None or
    needs no gradient."""
    with torch.enable_grad():
        out = composition()
        wanted = [t for t in inputs if t is not None and t.requires_grad]
        grads = iter(
            torch.autograd.grad(out, wanted, grad_out, create_graph=True))
    return [
        next(grads) if t is not None and t.requires_grad else None
        for t in inputs
    ]
