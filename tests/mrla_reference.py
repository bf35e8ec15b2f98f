"""An independent, plain evaluation of the MRLA equations, for the tests.

Written from the equations (../shared/docs/MRLA.md), not from the package:
explicit loops over heads and cached layers, a channel convolution spelled
out tap by tap, float64 throughout. Networks are evaluated from a state
dict in the *authors'* key layout, so that comparing against them also
checks the checkpoint converter.
"""
import math

import torch
import torch.nn.functional as F


def channel_conv(y, w):
    """Cross-correlate each row of ``y`` [B, C] with the taps ``w`` [1,1,k]."""
    taps = w.reshape(-1)
    k = taps.numel()
    pad = (k - 1) // 2
    y_pad = F.pad(y, (pad, pad))
    out = torch.zeros_like(y)
    for j in range(k):
        out = out + taps[j] * y_pad[:, j:j + y.shape[1]]
    return out


def descriptor_qkv(x, wq, wk, wv, gelu=False):
    y = x.mean(dim=(2, 3))
    v = F.conv2d(x, wv, padding=1, groups=x.shape[1])
    if gelu:
        v = 0.5 * v * (1 + torch.erf(v / math.sqrt(2)))
    return channel_conv(y, wq), channel_conv(y, wk), v


def light_layer(x, o_prev, wq, wk, wv, lam, d, gelu=False):
    """Eq. 8: sigmoid(Q_g . K_g / sqrt(d)) V_g + lambda * O^{t-1}."""
    q, k, v = descriptor_qkv(x, wq, wk, wv, gelu)
    lam = lam.reshape(-1)
    out = torch.empty_like(x)
    for g in range(x.shape[1] // d):
        sl = slice(g * d, (g + 1) * d)
        score = (q[:, sl] * k[:, sl]).sum(1) / math.sqrt(d)
        gate = 1 / (1 + torch.exp(-score))
        out[:, sl] = (gate[:, None, None, None] * v[:, sl] +
                      lam[sl][None, :, None, None] * o_prev[:, sl])
    return out


def base_layer(x, history, wq, wk, wv, d, gelu=False):
    """Eq. 6 over ``history`` (a list of (key, value), extended in place)."""
    q, k, v = descriptor_qkv(x, wq, wk, wv, gelu)
    history.append((k, v))
    out = torch.zeros_like(x)
    for g in range(x.shape[1] // d):
        sl = slice(g * d, (g + 1) * d)
        scores = torch.stack(
            [(q[:, sl] * ks[:, sl]).sum(1) / math.sqrt(d)
             for ks, _ in history], dim=1)
        weights = torch.exp(scores - scores.max(1, keepdim=True).values)
        weights = weights / weights.sum(1, keepdim=True)
        for s, (_, vs) in enumerate(history):
            out[:, sl] += weights[:, s, None, None, None] * vs[:, sl]
    return out


def bn(x, sd, prefix, training):
    return F.batch_norm(
        x,
        sd[prefix + '.running_mean'].clone(),
        sd[prefix + '.running_var'].clone(),
        sd[prefix + '.weight'],
        sd[prefix + '.bias'],
        training=training,
        eps=1e-5)


def bottleneck(x, sd, p, stride, training, mode, history):
    relu = torch.relu
    out = relu(bn(F.conv2d(x, sd[p + '.conv1.weight']), sd, p + '.bn1',
                  training))
    out = relu(
        bn(F.conv2d(out, sd[p + '.conv2.weight'], stride=stride, padding=1),
           sd, p + '.bn2', training))
    out = bn(F.conv2d(out, sd[p + '.conv3.weight']), sd, p + '.bn3', training)
    if p + '.downsample.0.weight' in sd:
        identity = bn(
            F.conv2d(x, sd[p + '.downsample.0.weight'], stride=stride), sd,
            p + '.downsample.1', training)
    else:
        identity = x
    out = relu(out + identity)
    m = p + '.mrla.mrla.'
    if mode == 'light':
        o = light_layer(out, identity, sd[m + 'Wq.weight'],
                        sd[m + 'Wk.weight'], sd[m + 'Wv.weight'],
                        sd[p + '.mrla.lambda_t'], 32)
        return out + bn(o, sd, p + '.bn_mrla', training)
    o = base_layer(out, history, sd[m + 'Wq.weight'], sd[m + 'Wk.weight'],
                   sd[m + 'Wv.weight'], 16)
    return out + relu(bn(o, sd, p + '.bn_mrla', training))


def resnet_mrla(x, sd, mode, training, depths=(3, 4, 6, 3)):
    """Features of the authors' light ResNet (``mode='light'``, plain stem,
    ``layerN.i``) or base ResNet (``'base'``, deep stem, ``stages.S.i``)
    for input ``x``; returns the four stage outputs."""
    relu = torch.relu
    if mode == 'light':
        x = relu(bn(F.conv2d(x, sd['conv1.weight'], stride=2, padding=3), sd,
                    'bn1', training))
    else:
        x = relu(bn(F.conv2d(x, sd['conv1.0.weight'], stride=2, padding=1),
                    sd, 'conv1.1', training))
        x = relu(bn(F.conv2d(x, sd['conv1.3.weight'], padding=1), sd,
                    'conv1.4', training))
        x = relu(bn(F.conv2d(x, sd['conv1.6.weight'], padding=1), sd, 'bn1',
                    training))
    x = F.max_pool2d(x, 3, 2, 1)
    outs = []
    for s, n in enumerate(depths):
        history = []
        for i in range(n):
            p = f'layer{s + 1}.{i}' if mode == 'light' else f'stages.{s}.{i}'
            x = bottleneck(x, sd, p, 2 if (i == 0 and s > 0) else 1, training,
                           mode, history)
        outs.append(x)
    return outs


def _kernel(c):
    t = int(abs((math.log2(c) + 1) / 2))
    return t if t % 2 else t + 1


def _bn_entries(sd, prefix, c, g):
    sd[prefix + '.weight'] = 1 + 0.2 * torch.randn(c, generator=g)
    sd[prefix + '.bias'] = 0.1 * torch.randn(c, generator=g)
    sd[prefix + '.running_mean'] = 0.1 * torch.randn(c, generator=g)
    sd[prefix + '.running_var'] = 0.5 + torch.rand(c, generator=g)
    sd[prefix + '.num_batches_tracked'] = torch.tensor(7)


def random_resnet_state_dict(mode, depths=(3, 4, 6, 3), seed=0,
                             with_fc=True):
    """Random weights in the authors' layout for their light ResNet
    (``layerN.i``, plain stem, lambda [C,1,1]) or base ResNet (``stages``,
    deep stem), with non-trivial BN statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)

    def conv(cout, cin, k):
        return torch.randn(cout, cin, k, k, generator=g) * math.sqrt(
            2 / (cin * k * k))

    sd = {}
    if mode == 'light':
        sd['conv1.weight'] = conv(64, 3, 7)
        _bn_entries(sd, 'bn1', 64, g)
    else:
        sd['conv1.0.weight'] = conv(32, 3, 3)
        _bn_entries(sd, 'conv1.1', 32, g)
        sd['conv1.3.weight'] = conv(32, 32, 3)
        _bn_entries(sd, 'conv1.4', 32, g)
        sd['conv1.6.weight'] = conv(64, 32, 3)
        _bn_entries(sd, 'bn1', 64, g)
    cin = 64
    for s, n in enumerate(depths):
        planes = 64 * 2**s
        cout = planes * 4
        for i in range(n):
            p = f'layer{s + 1}.{i}' if mode == 'light' else f'stages.{s}.{i}'
            sd[p + '.conv1.weight'] = conv(planes, cin, 1)
            _bn_entries(sd, p + '.bn1', planes, g)
            sd[p + '.conv2.weight'] = conv(planes, planes, 3)
            _bn_entries(sd, p + '.bn2', planes, g)
            sd[p + '.conv3.weight'] = conv(cout, planes, 1)
            _bn_entries(sd, p + '.bn3', cout, g)
            if i == 0:
                sd[p + '.downsample.0.weight'] = conv(cout, cin, 1)
                _bn_entries(sd, p + '.downsample.1', cout, g)
            k = _kernel(cout)
            m = p + '.mrla.mrla.'
            sd[m + 'Wq.weight'] = torch.randn(1, 1, k, generator=g)
            sd[m + 'Wk.weight'] = torch.randn(1, 1, k, generator=g)
            sd[m + 'Wv.weight'] = conv(cout, 1, 3)
            if mode == 'light':
                sd[p + '.mrla.lambda_t'] = torch.randn(cout, 1, 1, generator=g)
            _bn_entries(sd, p + '.bn_mrla', cout, g)
            cin = cout
    if with_fc:
        sd['fc.weight'] = 0.01 * torch.randn(1000, cin, generator=g)
        sd['fc.bias'] = torch.zeros(1000)
    return sd
