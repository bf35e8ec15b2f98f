"""Publishing a checkpoint and loading it back with its hash checked."""
import errno
import hashlib
import os
import os.path as osp
import random
import re
import shutil
import subprocess
import sys
import time

import pytest
import torch
from mmengine.logging import MessageHub
from mmengine.runner import CheckpointLoader, load_checkpoint
from mmengine.runner.checkpoint import _load_checkpoint

import mrla_mm
from mrla_mm.checkpoint.integrity import (
    HASH_CHECK_ENV,
    CheckpointHashError,
    load_from_local_sha256,
    verify_checkpoint_hash,
)
from mrla_mm.checkpoint.publish import (
    PublishError,
    publish_checkpoint,
    published_name,
)
from mrla_mm.models import MRLAResNet

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
PUBLISHED = re.compile(r'^(.*)-([0-9a-f]{8,64})\.pth$')
CFG_TEXT = "model = dict(type='MaskRCNN')\n"


def small_backbone(**kwargs):
    return MRLAResNet(
        depth=18, base_channels=16, stem_channels=16,
        mrla_cfg=dict(type='MRLALight', dim_per_head=8), **kwargs)


def training_checkpoint(path, state_dict):
    """What mmengine's Runner saves: weights, meta and training state."""
    params = [torch.nn.Parameter(v.clone()) for v in state_dict.values()
              if v.is_floating_point()]
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    sum(p.sum() for p in params).backward()
    optimizer.step()
    hub = MessageHub.get_instance('publish_test')
    hub.update_scalar('train/loss', 1.5)
    torch.save(
        dict(
            meta=dict(cfg=CFG_TEXT, epoch=12, iter=3000, seed=0,
                      mmengine_version='0.10.7',
                      dataset_meta=dict(classes=('circle', 'square'))),
            state_dict=state_dict,
            message_hub=hub.state_dict(),
            optimizer=optimizer.state_dict(),
            param_schedulers=[dict(last_step=3000, base_values=[0.1])]),
        path)
    return path


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('publish')
    torch.manual_seed(0)
    backbone = small_backbone()
    backbone.init_weights()
    state_dict = backbone.state_dict()
    src = training_checkpoint(str(tmp / 'epoch_12.pth'), state_dict)
    info = publish_checkpoint(src, str(tmp / 'release' / 'r18-mrlal.pth'))
    return dict(tmp=tmp, src=src, state_dict=state_dict, info=info)


def sha256(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_publish_strips_training_state_and_names_by_hash(trained):
    info = trained['info']
    match = PUBLISHED.match(info['path'])
    assert match and match.group(1) == str(
        trained['tmp'] / 'release' / 'r18-mrlal')
    digest = sha256(info['path'])
    assert info['sha256'] == digest and digest.startswith(match.group(2))
    assert info['size'] == osp.getsize(info['path'])
    assert info['size'] < osp.getsize(trained['src'])
    assert info['removed_keys'] == [
        'message_hub', 'optimizer', 'param_schedulers'
    ]
    # The release loads without unpickling arbitrary objects.
    release = torch.load(info['path'], weights_only=True)
    assert set(release) == {'meta', 'state_dict'}
    meta = release['meta']
    assert meta['cfg'] == CFG_TEXT and meta['epoch'] == 12
    assert meta['dataset_meta'] == dict(classes=('circle', 'square'))
    # Recorded at training time, so not overwritten by the publisher's.
    assert meta['mmengine_version'] == '0.10.7'
    assert meta['mrla_mm_version'] == mrla_mm.__version__
    import mmdet
    assert meta['mmdet_version'] == mmdet.__version__
    assert meta['publish']['source'] == 'epoch_12.pth'
    assert meta['publish']['fp16'] is False
    for name, value in trained['state_dict'].items():
        assert torch.equal(release['state_dict'][name], value), name


def test_reload_through_init_cfg_checks_hash(trained, tmp_path):
    path = trained['info']['path']
    assert (CheckpointLoader._get_checkpoint_loader(path) is
            load_from_local_sha256)
    torch.manual_seed(1)
    backbone = small_backbone(
        init_cfg=dict(type='Pretrained', checkpoint=path))
    backbone.init_weights()
    loaded = backbone.state_dict()
    for name, value in trained['state_dict'].items():
        assert torch.equal(loaded[name], value), name


def test_load_from_checks_hash(trained):
    """Runner's load_from goes through _load_checkpoint/load_checkpoint."""
    path = trained['info']['path']
    assert set(_load_checkpoint(path, map_location='cpu')) == {
        'meta', 'state_dict'
    }
    backbone = small_backbone()
    load_checkpoint(backbone, path, map_location='cpu', strict=True)
    assert torch.equal(backbone.state_dict()['conv1.weight'],
                       trained['state_dict']['conv1.weight'])


def wrong_prefix(sha256):
    return 'deadbeef' if not sha256.startswith('deadbeef') else 'facade00'


def test_renamed_file_fails_with_clear_error(trained, tmp_path):
    path = trained['info']['path']
    wrong = wrong_prefix(trained['info']['sha256'])
    renamed = str(tmp_path / f'r18-mrlal-{wrong}.pth')
    shutil.copy(path, renamed)
    backbone = small_backbone(
        init_cfg=dict(type='Pretrained', checkpoint=renamed))
    with pytest.raises(CheckpointHashError) as error:
        backbone.init_weights()
    message = str(error.value)
    assert renamed in message
    assert f'expected to start with {wrong}' in message
    assert f'hashes to {trained["info"]["sha256"][:8]}' in message
    # What it knows, not a guess: no claim of corruption, and the way out.
    assert 'corrupt' not in message
    assert f'set {HASH_CHECK_ENV}=0 to load it without the check' in message
    with pytest.raises(CheckpointHashError):
        _load_checkpoint(renamed, map_location='cpu')


def test_hash_check_opt_out(trained, tmp_path, monkeypatch):
    wrong = wrong_prefix(trained['info']['sha256'])
    renamed = str(tmp_path / f'hand-named-{wrong}.pth')
    shutil.copy(trained['info']['path'], renamed)
    monkeypatch.setenv(HASH_CHECK_ENV, '0')
    assert set(_load_checkpoint(renamed)) == {'meta', 'state_dict'}
    monkeypatch.setenv(HASH_CHECK_ENV, 'no')
    with pytest.raises(ValueError, match=f"{HASH_CHECK_ENV}='no': allowed "
                       "values are '1'"):
        _load_checkpoint(renamed)


@pytest.mark.parametrize('name', ['run-20261202.pth', 'epoch-00000012.pth'])
def test_dates_and_counters_are_not_read_as_hashes(trained, tmp_path, name):
    path = str(tmp_path / name)
    shutil.copy(trained['src'], path)
    assert CheckpointLoader._get_checkpoint_loader(
        path).__name__ == 'load_from_local'
    assert _load_checkpoint(path)['meta']['epoch'] == 12
    with pytest.raises(ValueError, match='has no hash suffix'):
        verify_checkpoint_hash(path)


def test_published_names_always_hold_a_hex_letter(tmp_path):
    assert published_name('o.pth', '1234abcd' + '0' * 56) == 'o-1234abcd.pth'
    assert published_name('o', '12345678' + '9a' + '0' * 54) == (
        'o-123456789a.pth')
    # Find a release whose sha256 starts with 8 decimal digits (1 in 43).
    src = str(tmp_path / 'sd.pth')
    for i in range(2000):
        torch.save({'w': torch.tensor([float(i)])}, src)
        info = publish_checkpoint(src, str(tmp_path / 'digits.pth'))
        if info['sha256'][:8].isdigit():
            break
        os.remove(info['path'])
    else:
        pytest.fail('no sha256 started with 8 decimal digits in 2000 tries')
    prefix = PUBLISHED.match(info['path']).group(2)
    assert len(prefix) > 8 and prefix[:-1].isdigit()
    assert info['sha256'].startswith(prefix)
    # The longer name is checked on load like any published one.
    assert verify_checkpoint_hash(info['path']) == info['sha256']
    assert (CheckpointLoader._get_checkpoint_loader(info['path']) is
            load_from_local_sha256)


def test_same_input_gives_the_same_file(trained, tmp_path):
    time.sleep(1.1)  # a clock in the file would now read differently
    again = publish_checkpoint(trained['src'],
                               str(tmp_path / 'release' / 'r18-mrlal.pth'))
    assert again['sha256'] == trained['info']['sha256']
    assert osp.basename(again['path']) == osp.basename(
        trained['info']['path'])
    with open(again['path'], 'rb') as a, open(trained['info']['path'],
                                              'rb') as b:
        assert a.read() == b.read()


def test_corrupt_file_fails_before_loading(trained, tmp_path):
    corrupt = str(tmp_path / osp.basename(trained['info']['path']))
    data = bytearray(open(trained['info']['path'], 'rb').read())
    data[len(data) // 2] ^= 0xFF
    with open(corrupt, 'wb') as f:
        f.write(data)
    backbone = small_backbone()
    before = backbone.state_dict()['conv1.weight'].clone()
    with pytest.raises(CheckpointHashError, match=re.escape(corrupt)):
        load_checkpoint(backbone, corrupt, map_location='cpu')
    assert torch.equal(backbone.state_dict()['conv1.weight'], before)
    with pytest.raises(FileNotFoundError):
        _load_checkpoint(str(tmp_path / 'missing-0123abcd.pth'))


def test_other_files_and_schemes_keep_their_loaders(trained, tmp_path):
    plain = str(tmp_path / 'epoch_12.pth')
    shutil.copy(trained['src'], plain)
    # An unpublished name is loaded as before, without a hash check.
    assert set(torch.load(plain, weights_only=False)) >= {'optimizer'}
    assert CheckpointLoader._get_checkpoint_loader(
        plain).__name__ == 'load_from_local'
    for url, loader in [
        ('https://download.openmmlab.com/x/m-0123abcd.pth', 'load_from_http'),
        ('s3://bucket/m-0123abcd.pth', 'load_from_ceph'),
        ('torchvision://resnet50', 'load_from_torchvision'),
    ]:
        assert CheckpointLoader._get_checkpoint_loader(
            url).__name__ == loader, url
    with pytest.raises(ValueError, match='has no hash suffix'):
        verify_checkpoint_hash(plain)


def test_fp16_halves_the_size(trained, tmp_path):
    info = publish_checkpoint(
        trained['src'], str(tmp_path / 'half.pth'), fp16=True)
    ratio = info['size'] / trained['info']['size']
    assert 0.45 < ratio < 0.6, ratio
    release = torch.load(info['path'], weights_only=True)
    assert release['meta']['publish']['fp16'] is True
    for name, value in trained['state_dict'].items():
        half = release['state_dict'][name]
        if value.is_floating_point():
            assert half.dtype == torch.float16, name
            assert torch.equal(half, value.half()), name
        else:
            assert half.dtype == value.dtype and torch.equal(half, value)
    # A float16 release loads into a float32 model through init_cfg.
    backbone = small_backbone(
        init_cfg=dict(type='Pretrained', checkpoint=info['path']))
    backbone.init_weights()
    weight = backbone.state_dict()['layer1.0.mrla.value_conv.weight']
    assert weight.dtype == torch.float32
    assert torch.equal(
        weight,
        trained['state_dict']['layer1.0.mrla.value_conv.weight'].half()
        .float())


def test_fp16_overflow_is_refused(tmp_path):
    src = str(tmp_path / 'big.pth')
    torch.save(dict(state_dict={'a.weight': torch.tensor([1.0, 1e6])}), src)
    with pytest.raises(PublishError, match="a.weight has values beyond"):
        publish_checkpoint(src, str(tmp_path / 'big_out'), fp16=True)
    assert not list(tmp_path.glob('big_out*'))


def test_bad_inputs_are_refused(tmp_path):
    deit = str(tmp_path / 'best_checkpoint.pth')
    torch.save(dict(model={'w': torch.zeros(2)}, epoch=3), deit)
    with pytest.raises(PublishError, match='mrla_official_to_openmmlab.py'):
        publish_checkpoint(deit, str(tmp_path / 'out'))
    unsafe = str(tmp_path / 'unsafe.pth')
    torch.save(
        dict(state_dict={'w': torch.zeros(2)},
             meta=dict(buffer=MessageHub.get_instance('publish_test')
                       .log_scalars['train/loss'])), unsafe)
    with pytest.raises(PublishError, match=r"meta\['buffer'\]"):
        publish_checkpoint(unsafe, str(tmp_path / 'out'))
    with pytest.raises(FileNotFoundError, match='in_file'):
        publish_checkpoint(str(tmp_path / 'none.pth'), str(tmp_path / 'o'))
    assert not list(tmp_path.glob('out*')) and not list(tmp_path.glob('.*'))


class Foreign:
    """An object torch's safe loader refuses."""


def truncated(path):
    data = open(path, 'rb').read()
    return data[:len(data) // 2]


@pytest.mark.parametrize('content,what', [
    (lambda src: random.Random(0).randbytes(4096), 'is not a PyTorch '
     'checkpoint: it is neither the zip archive torch.save writes nor the '
     'older torch.save pickle'),
    (lambda src: b'', 'is not a checkpoint: it is empty'),
    (lambda src: b'model = dict(type="MaskRCNN")\n', "begins with b'model = "),
    (truncated, 'is not a complete checkpoint: it begins like a torch.save '
     'file but cannot be read, so it is truncated or damaged'),
])
def test_bad_files_are_refused_by_name(trained, tmp_path, content, what):
    bad = tmp_path / 'in.pth'
    bad.write_bytes(content(trained['src']))
    out = tmp_path / 'out'
    with pytest.raises(PublishError) as error:
        publish_checkpoint(str(bad), str(out / 'x.pth'))
    assert str(error.value).startswith(f'{bad} ')
    assert what in str(error.value)
    assert not out.exists()


def test_refused_objects_are_named(tmp_path):
    src = str(tmp_path / 'foreign.pth')
    torch.save(dict(state_dict={'w': torch.zeros(1)}, extra=Foreign()), src)
    with pytest.raises(PublishError, match=f"safe loader refuses it: "
                       f"Unsupported global: GLOBAL {__name__}.Foreign was "
                       'not an allowed global'):
        publish_checkpoint(src, str(tmp_path / 'out.pth'))
    assert not list(tmp_path.glob('out*'))


def test_full_disk_leaves_nothing_and_says_why(trained, tmp_path,
                                               monkeypatch):
    real_write = os.write

    def write_until_full(fd, data):
        if len(data) < 4096:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data[:len(data) // 2])

    monkeypatch.setattr(os, 'write', write_until_full)
    out = tmp_path / 'releases'
    out.mkdir()
    for target in (out / 'r18.pth', out / 'new' / 'folders' / 'r18.pth'):
        with pytest.raises(PublishError) as error:
            publish_checkpoint(trained['src'], str(target))
        message = str(error.value)
        assert re.search(
            rf'could not write {re.escape(str(target.parent))}/r18-[0-9a-f]+'
            r'\.pth \(\d+ bytes\): \[Errno 28\] No space left on device; '
            'nothing was written', message), message
        # Neither the file nor a folder made for it is left.
        assert not list(out.iterdir())


def test_bare_state_dict_is_published(tmp_path):
    src = str(tmp_path / 'sd.pth')
    torch.save({'w': torch.ones(3)}, src)
    info = publish_checkpoint(src, str(tmp_path / 'sd_release.pth'))
    release = torch.load(info['path'], weights_only=True)
    assert torch.equal(release['state_dict']['w'], torch.ones(3))
    assert info['removed_keys'] == []


def test_command_line_tools(trained, tmp_path):
    out = subprocess.run(
        [sys.executable, 'tools/model_converters/publish_model.py',
         trained['src'], str(tmp_path / 'cli.pth')],
        cwd=ROOT, capture_output=True, text=True, check=True).stdout
    path = re.search(r'published: (\S+)', out).group(1)
    assert osp.isfile(path) and PUBLISHED.match(path)
    assert f'sha256: {sha256(path)}' in out
    assert f'({osp.getsize(path)} bytes)' in out
    assert 'removed: message_hub, optimizer, param_schedulers' in out
    wrong = str(tmp_path / f'cli-{wrong_prefix(sha256(path))}.pth')
    shutil.copy(path, wrong)
    verify = subprocess.run(
        [sys.executable, 'tools/model_converters/verify_model.py', path,
         wrong], cwd=ROOT, capture_output=True, text=True)
    assert verify.returncode == 1
    assert f'OK {path} sha256 {sha256(path)}' in verify.stdout
    assert f'FAILED {wrong}' in verify.stdout
