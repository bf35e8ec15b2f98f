"""Export a module to ONNX and check the file in onnxruntime.

The MRLA ops take their PyTorch composition while a graph is exported
(:func:`mrla_mm.ops.exporting`), so an MRLA model exports as
standard ONNX operators with either of torch's exporters. What this module
adds around ``torch.onnx.export``:

- the file appears at its path only when the export succeeded and the
  graph holds standard operators only (it is written under a temporary
  name next to it, then renamed); an existing file is kept unless
  ``force``;
- a failure names the module that was running and the reason
  (:class:`ExportError`), as does a graph that would need operators of a
  custom domain, which onnxruntime does not have;
- :func:`run_onnxruntime` and :func:`max_rel_error` check the file against
  PyTorch.
"""
import os
import os.path as osp
import re
import tempfile
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
from torch import Tensor

# Opset of the TorchScript-based exporter: the one mmdeploy's onnxruntime
# configs use.
DEFAULT_OPSET = 17
STANDARD_DOMAINS = ('', 'ai.onnx')


class ExportError(RuntimeError):
    """A module that cannot be exported, with the reason."""


def check_out_path(out: str, force: bool) -> None:
    """Refuse to overwrite ``out`` unless ``force``; its folder must exist."""
    if osp.exists(out) and not force:
        raise FileExistsError(
            f'{out} exists; pass --force (force=True) to overwrite it')
    folder = osp.dirname(osp.abspath(out))
    if not osp.isdir(folder):
        raise FileNotFoundError(
            f'the folder of the output file {out} does not exist')


class _ModuleTracker:
    """The modules whose forward is running, innermost last: after an
    exception inside a forward the innermost one is the culprit."""

    def __init__(self, model: nn.Module):
        self.stack: List[str] = []
        self._handles = []
        for name, module in model.named_modules():
            self._handles.append(
                module.register_forward_pre_hook(self._enter(name)))
            self._handles.append(module.register_forward_hook(self._exit))

    def _enter(self, name):

        def hook(module, args):
            self.stack.append(f'{name or "<model>"} '
                              f'({type(module).__name__})')

        return hook

    def _exit(self, module, args, output):
        self.stack.pop()

    def remove(self):
        for handle in self._handles:
            handle.remove()


def _scope_module(node_name: str, model: nn.Module) -> str:
    """The module of an ONNX node, from the scope path in its name
    (``/layer1/layer1.0/conv2/Conv`` -> ``layer1.0.conv2``)."""
    modules = dict(model.named_modules())
    parts = [p for p in node_name.split('/')[:-1] if p]
    for i in range(len(parts), 0, -1):
        name = parts[i - 1]
        if name in modules:
            return f'{name} ({type(modules[name]).__name__})'
    return f'node {node_name!r}'


def custom_operators(path: str) -> List[tuple]:
    """``(node name, domain::op)`` of every node of the ONNX file outside
    the standard domains."""
    import onnx
    graph = onnx.load(path, load_external_data=False).graph
    return [(node.name, f'{node.domain}::{node.op_type}')
            for node in graph.node if node.domain not in STANDARD_DOMAINS]


def export_onnx(model: nn.Module,
                inputs: Sequence[Tensor],
                out: str,
                *,
                input_names: Sequence[str],
                output_names: Sequence[str],
                dynamic_axes: Optional[Dict[str, Dict[int, str]]] = None,
                dynamo: bool = False,
                opset: Optional[int] = None,
                force: bool = False) -> str:
    """Export ``model(*inputs)`` to the ONNX file ``out``.

    Args:
        model (nn.Module): The module, exported in eval mode.
        inputs (Sequence[Tensor]): Example inputs.
        out (str): The ONNX file to write.
        input_names (Sequence[str]): Names of the graph inputs.
        output_names (Sequence[str]): Names of the graph outputs.
        dynamic_axes (dict, optional): ``{name: {axis: axis name}}`` of the
            inputs and outputs whose sizes are left free.
        dynamo (bool): Use torch's default, ``torch.export``-based exporter
            instead of the TorchScript-based one. Defaults to False.
        opset (int, optional): ONNX opset. Defaults to 17 for the
            TorchScript exporter and to the dynamo exporter's own choice.
        force (bool): Overwrite an existing ``out``. Defaults to False.

    Returns:
        str: ``out``.

    Raises:
        ExportError: a module could not be traced or converted, or the graph
            needs operators of a custom domain; names the module.
    """
    check_out_path(out, force)
    model.eval()
    fd, tmp = tempfile.mkstemp(
        suffix='.onnx', prefix='.export-', dir=osp.dirname(osp.abspath(out)))
    os.close(fd)
    tracker = _ModuleTracker(model)
    try:
        try:
            with torch.no_grad():
                kwargs = dict(
                    input_names=list(input_names),
                    output_names=list(output_names),
                    dynamic_axes=dynamic_axes,
                    dynamo=dynamo)
                if dynamo:
                    kwargs.update(external_data=False, opset_version=opset)
                else:
                    kwargs.update(opset_version=opset or DEFAULT_OPSET)
                torch.onnx.export(model, tuple(inputs), tmp, **kwargs)
        except Exception as e:
            where = (tracker.stack[-1] if tracker.stack else
                     _failing_module(str(e), model))
            raise ExportError(
                f'{where} cannot be exported to ONNX: '
                f'{type(e).__name__}: {_first_lines(str(e))}') from e
        custom = custom_operators(tmp)
        if custom:
            node, op = custom[0]
            raise ExportError(
                f'{_scope_module(node, model)} cannot be exported to '
                f'standard ONNX: it exports as the custom operator {op}, '
                'which onnxruntime runs only with a library of custom ops '
                f'({len(custom)} such node(s) in the graph)')
        os.replace(tmp, out)
    finally:
        tracker.remove()
        if osp.exists(tmp):
            os.remove(tmp)
    return out


def _failing_module(message: str, model: nn.Module) -> str:
    """The module a converter error names in a scope path, if any."""
    for path in re.findall(r'(/[\w./]+)', message):
        where = _scope_module(path + '/op', model)
        if not where.startswith('node'):
            return where
    return type(model).__name__


def _first_lines(text: str, count: int = 6) -> str:
    return '\n'.join(text.strip().splitlines()[:count])


def run_onnxruntime(path: str, inputs: Sequence[Tensor]) -> List[Tensor]:
    """Outputs of the ONNX file ``path`` on ``inputs`` in onnxruntime's
    CPU execution provider."""
    import onnxruntime as ort
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    feed = {
        arg.name: t.detach().cpu().numpy()
        for arg, t in zip(session.get_inputs(), inputs)
    }
    return [torch.from_numpy(o) for o in session.run(None, feed)]


def max_rel_error(actual: Sequence[Tensor],
                  expected: Sequence[Tensor]) -> float:
    """Largest ``max |a - e| / max |e|`` over pairs of outputs, in
    float64."""
    if len(actual) != len(expected):
        raise ValueError(f'{len(actual)} outputs against {len(expected)}')
    worst = 0.
    for a, e in zip(actual, expected):
        if a.shape != e.shape:
            raise ValueError(f'output shape {tuple(a.shape)} against '
                             f'{tuple(e.shape)}')
        if e.numel() == 0:
            continue
        a, e = a.double(), e.detach().double()
        scale = e.abs().max().clamp_min(1e-300)
        worst = max(worst, ((a - e).abs().max() / scale).item())
    return worst
