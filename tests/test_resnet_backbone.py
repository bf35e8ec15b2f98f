import pytest
import torch
import torchvision
from mmcv.cnn.bricks import DropPath
from torch.nn.modules.batchnorm import _BatchNorm

from mrla_mm.models import (
    MRLABase,
    MRLAClsResNet,
    MRLALight,
    MRLAResNet,
    MRLAResNeXt,
)
from conftest import rel_err

LIGHT, BASE = dict(type='MRLALight'), dict(type='MRLABase')
MRLA_KEY = ('.mrla.', '.bn_mrla.')


def _is_mrla(key):
    return any(m in key for m in MRLA_KEY)


@pytest.mark.parametrize('cls', [MRLAResNet, MRLAClsResNet])
@pytest.mark.parametrize('depth,tv', [(50, torchvision.models.resnet50),
                                      (18, torchvision.models.resnet18)])
@pytest.mark.parametrize('cfg', [LIGHT, BASE])
def test_torchvision_checkpoint_loads(cls, depth, tv, cfg):
    """Only the MRLA parameters are missing; only fc is unexpected."""
    model = cls(depth, mrla_cfg=cfg)
    state = tv().state_dict()
    result = model.load_state_dict(state, strict=False)
    assert result.missing_keys and all(map(_is_mrla, result.missing_keys))
    assert sorted(result.unexpected_keys) == ['fc.bias', 'fc.weight']
    # BatchNorm fills a missing num_batches_tracked without reporting it.
    mrla_keys = [k for k in model.state_dict()
                 if _is_mrla(k) and not k.endswith('num_batches_tracked')]
    assert sorted(result.missing_keys) == sorted(mrla_keys)
    plain = [k for k in model.state_dict() if not _is_mrla(k)]
    for k in plain:
        assert torch.equal(model.state_dict()[k], state[k])


@pytest.mark.parametrize('cls', [MRLAResNet, MRLAClsResNet])
def test_plain_when_no_mrla(cls):
    from mmdet.models.backbones import ResNet as DetResNet
    from mmpretrain.models.backbones import ResNet as ClsResNet
    host = DetResNet if cls is MRLAResNet else ClsResNet
    ours, ref = cls(50, mrla_cfg=None), host(50)
    assert ours.load_state_dict(ref.state_dict(), strict=True)
    ours.eval()
    ref.eval()
    x = torch.rand(1, 3, 64, 64)
    for a, b in zip(ours(x), ref(x)):
        assert torch.equal(a, b)


def test_mrla_params_count():
    # MRLA.md: light adds 12C + 2k per block, base 11C + 2k.
    def count(model):
        return sum(p.numel() for n, p in model.named_parameters()
                   if _is_mrla(n))

    blocks = [(256, 5)] * 3 + [(512, 5)] * 4 + [(1024, 5)] * 6 + [(2048, 7)
                                                                  ] * 3
    assert count(MRLAResNet(50, mrla_cfg=LIGHT)) == sum(
        12 * c + 2 * k for c, k in blocks) == 181420
    assert count(MRLAResNet(50, mrla_cfg=BASE)) == sum(
        11 * c + 2 * k for c, k in blocks)


@pytest.mark.parametrize('cfg', [LIGHT, BASE])
def test_frozen_stages_and_norm_eval(cfg):
    model = MRLAResNet(50, mrla_cfg=cfg, frozen_stages=1, norm_eval=True)
    model.train()
    for name, p in model.named_parameters():
        frozen = name.startswith(('layer1.', 'conv1.', 'bn1.'))
        assert p.requires_grad is not frozen, name
    assert not model.layer1[0].mrla.training
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            assert not m.training
    assert isinstance(model.layer2[1].bn_mrla, _BatchNorm)
    model = MRLAResNet(50, mrla_cfg=cfg, frozen_stages=-1, norm_eval=False)
    model.train()
    assert model.layer1[0].bn_mrla.training


@pytest.mark.parametrize('depth', [18, 50])
@pytest.mark.parametrize('cfg', [LIGHT, BASE])
def test_with_cp_same_outputs_and_grads(depth, cfg):
    torch.manual_seed(1)
    # Both store MRLA's input (with_cp leaves no rebuilding to do), so the
    # forward runs the same ops.
    a = MRLAResNet(depth, mrla_cfg=cfg, norm_eval=False, out_indices=(2, 3),
                   mrla_recompute_input=False)
    b = MRLAResNet(depth, mrla_cfg=cfg, norm_eval=False, out_indices=(2, 3),
                   with_cp=True)
    for p in a.parameters():
        p.data.normal_(0, 0.5)
    b.load_state_dict(a.state_dict())
    a.train()
    b.train()
    x = torch.rand(2, 3, 64, 64)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    outs_a, outs_b = a(xa), b(xb)
    for oa, ob in zip(outs_a, outs_b):
        assert torch.allclose(oa, ob, rtol=0, atol=0)
    sum(o.square().sum() for o in outs_a).backward()
    sum(o.square().sum() for o in outs_b).backward()
    assert rel_err(xb.grad, xa.grad) < 1e-6
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert rel_err(pb.grad, pa.grad) < 1e-5, n


@pytest.mark.parametrize('kwargs,shapes', [
    (dict(depth=18), [64, 128, 256, 512]),
    (dict(depth=34, mrla_cfg=BASE), [64, 128, 256, 512]),
    (dict(depth=101, deep_stem=True, avg_down=True), [256, 512, 1024, 2048]),
    (dict(depth=50, style='caffe', mrla_cfg=dict(type='MRLALight',
                                                 num_heads=4,
                                                 kernel_size=3)),
     [256, 512, 1024, 2048]),
])
def test_variants_forward(kwargs, shapes):
    model = MRLAResNet(out_indices=(0, 1, 2, 3), **kwargs)
    model.eval()
    outs = model(torch.rand(1, 3, 64, 96))
    assert [o.shape[1] for o in outs] == shapes
    assert outs[-1].shape[2:] == (2, 3)


def test_resnext():
    model = MRLAResNeXt(depth=50, groups=32, base_width=4,
                        mrla_cfg=dict(type='MRLABase'), out_indices=(3, ))
    assert model.layer1[0].conv2.groups == 32
    assert isinstance(model.layer3[2].mrla, MRLABase)
    model.eval()
    assert model(torch.rand(1, 3, 64, 64))[0].shape == (1, 2048, 2, 2)


@pytest.mark.parametrize('cfg,cls', [(LIGHT, MRLALight), (BASE, MRLABase)])
def test_default_init(cfg, cls):
    torch.manual_seed(0)
    model = MRLAResNet(50, mrla_cfg=cfg)
    model.init_weights()
    block = model.layer3[1]
    assert isinstance(block.mrla, cls)
    assert block.mrla.dim_per_head == (32 if cls is MRLALight else 16)
    assert torch.all(block.norm3.weight == 0)  # zero-init residual
    assert torch.all(block.bn_mrla.weight == 1)
    assert torch.all(block.bn_mrla.bias == 0)
    w = block.mrla.value_conv.weight
    # Kaiming normal (fan_out, relu) as torch computes it for [C, 1, 3, 3].
    assert abs(w.std().item() / (2 / (9 * 1024))**0.5 - 1) < 0.05
    if cls is MRLALight:
        lam = torch.cat([b.mrla.lambda_t for layer in
                         (model.layer1, model.layer2) for b in layer])
        assert abs(lam.std().item() - 1) < 0.1


@pytest.mark.parametrize('cls', [MRLAResNet, MRLAClsResNet])
@pytest.mark.parametrize('kwargs,match', [
    (dict(mrla_drop_path=1.5), r'mrla_drop_path must be a number in \[0, 1\)'
     r' .*got 1.5'),
    (dict(mrla_drop_path=-0.1), r'got -0.1'),
    (dict(mrla_drop_path=1), r'got 1$'),
    (dict(mrla_drop_path='0.2'), r"got '0.2'"),
    (dict(mrla_recompute_input='yes'), r'mrla_recompute_input must be True, '
     r"False or None, got 'yes'"),
    (dict(mrla_cfg=dict(type='MRLALight', kernel_size=999)),
     r'kernel_size=999 is too large for channels=64'),
    (dict(mrla_cfg=dict(type='MRLALight', lambda_init='a')),
     r"lambda_init must be a finite number or None, got 'a'"),
])
def test_bad_mrla_values_fail_at_build(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(18, **kwargs)


def test_mmpretrain_resnet_drop_paths():
    model = MRLAClsResNet(50, mrla_cfg=LIGHT, mrla_drop_path=0.2,
                          drop_path_rate=0.1)
    model.init_weights()
    assert isinstance(model.layer2[0].mrla_drop_path, DropPath)
    assert model.layer2[0].mrla_drop_path.drop_prob == 0.2
    assert torch.all(model.layer4[2].norm3.weight == 0)
    x = torch.rand(2, 3, 64, 64)
    model.eval()
    y1, y2 = model(x)[0], model(x)[0]
    assert torch.equal(y1, y2)
    model.train()
    assert not torch.equal(model(x)[0], model(x)[0])


def test_base_block_needs_stage():
    model = MRLAResNet(18, mrla_cfg=BASE)
    with pytest.raises(ValueError, match='needs the cache of its stage'):
        model.layer1[0](torch.rand(1, 64, 8, 8))


@pytest.mark.parametrize('backend', ['pytorch', 'auto'])
@pytest.mark.parametrize('cfg', [LIGHT, BASE])
@pytest.mark.parametrize('train', [True, False])
def test_autocast_keeps_maps_in_half_precision(cfg, backend, train,
                                               monkeypatch):
    """Under bfloat16 autocast every block, MRLA layer and norm returns
    bfloat16 maps: MRLA's float32 factors (lambda, gates, softmax weights,
    folded norms) must not promote the maps to float32 (twice the memory
    traffic, and a cast back before each convolution)."""
    monkeypatch.setenv('MRLA_OPS_BACKEND', backend)
    model = MRLAResNet(50, mrla_cfg=cfg, norm_eval=False, out_indices=(3, ))
    model.train(train)
    seen = {}
    for name, module in model.named_modules():
        if isinstance(module, (MRLALight, MRLABase, _BatchNorm)) or (
                name.count('.') == 1 and name.startswith('layer')):
            module.register_forward_hook(
                lambda m, a, o, n=name: seen.__setitem__(n, o.dtype))
    with torch.autocast('cpu', dtype=torch.bfloat16), \
            torch.set_grad_enabled(train):
        out, = model(torch.rand(2, 3, 64, 64))
    # 16 blocks and 16 MRLA layers; the fused ops apply some norms
    # themselves (no hook call), the stem's and the blocks' remain.
    assert sum(n.count('.') == 1 for n in seen) == 16
    assert sum(n.endswith('.mrla') for n in seen) == 16
    assert {n: d for n, d in seen.items() if d != torch.bfloat16} == {}
    assert out.dtype == torch.bfloat16
    if train:
        out.float().square().mean().backward()
        grads = [p.grad for p in model.layer1[1].mrla.parameters()]
        assert grads and all(g.dtype == torch.float32 for g in grads)
