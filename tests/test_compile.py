"""MRLA backbones under ``torch.compile`` (mmengine's ``compile=True``).

With ``MRLA_OPS_BACKEND=auto`` a compiled model traces the ops' PyTorch
composition, so the whole backbone is one graph (``fullgraph=True``
raises at any split, such as a call into the extension or a logging
call) and computes what the eager model computes. ``aot_eager`` traces
forward and backward through AOTAutograd without generating code, which
keeps the test fast; the code generators take the same graph.
"""
import copy

import pytest
import torch

from mrla_mm.models import MRLAResNet
from conftest import rel_err


def _model(kind, recompute_input=False):
    torch.manual_seed(0)
    return MRLAResNet(
        18,
        mrla_cfg=dict(type=kind),
        deep_stem=kind == 'MRLABase',
        out_indices=(0, 1, 2, 3),
        norm_eval=False,
        mrla_recompute_input=recompute_input).double()


@pytest.fixture(autouse=True)
def _fresh_compile_caches(monkeypatch):
    monkeypatch.setenv('MRLA_OPS_BACKEND', 'auto')
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize('kind,recompute_input', [('MRLALight', False),
                                                  ('MRLABase', False),
                                                  ('MRLABase', True)])
def test_training_step_compiles_to_one_graph(kind, recompute_input):
    """Blocks that rebuild MRLA's input in eager mode leave that to the
    compiler (saved-tensor hooks would split the graph)."""
    eager = _model(kind, recompute_input)
    compiled = copy.deepcopy(eager)
    step = torch.compile(compiled, backend='aot_eager', fullgraph=True)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    outs, refs = step(x), eager(x)
    for out, ref in zip(outs, refs):
        assert rel_err(out, ref) < 1e-12
    weights = [torch.randn_like(r) for r in refs]
    sum((o * w).sum() for o, w in zip(outs, weights)).backward()
    sum((r * w).sum() for r, w in zip(refs, weights)).backward()
    for (name, p), q in zip(compiled.named_parameters(), eager.parameters()):
        assert rel_err(p.grad, q.grad) < 1e-10, name
    # Batch statistics reach the running buffers as in eager mode.
    for (name, b), c in zip(compiled.named_buffers(), eager.buffers()):
        if b.is_floating_point():
            assert rel_err(b, c) < 1e-12, name


@pytest.mark.parametrize('kind', ['MRLALight', 'MRLABase'])
def test_inference_compiles_to_one_graph(kind):
    eager = _model(kind)
    eager.eval()
    infer = torch.compile(
        copy.deepcopy(eager), backend='aot_eager', fullgraph=True)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        for out, ref in zip(infer(x), eager(x)):
            assert rel_err(out, ref) < 1e-12


@pytest.mark.filterwarnings('ignore:Dynamo does not know how to trace')
def test_compiled_backend_still_calls_the_extension(monkeypatch):
    """MRLA_OPS_BACKEND=compiled keeps its meaning under torch.compile: the
    kernels run, so the graph splits around them."""
    monkeypatch.setenv('MRLA_OPS_BACKEND', 'compiled')
    model = _model('MRLALight')
    model.eval()
    step = torch.compile(model, backend='aot_eager', fullgraph=True)
    with torch.no_grad(), pytest.raises(torch._dynamo.exc.Unsupported):
        step(torch.randn(2, 3, 64, 64, dtype=torch.float64))
