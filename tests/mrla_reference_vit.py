"""An independent, plain evaluation of DeiT with MRLA, for the tests.

Written from the equations and the placement in ../shared/docs/MRLA.md, not
from the package: LayerNorm, attention heads, GELU and the MRLA heads are
spelled out with explicit loops in float64. The network is evaluated from a
state dict in the *authors'* layout (timm names), so that comparing against
it also checks the checkpoint converter. The patch grid is whatever the
patch convolution produces; nothing assumes a square.
"""
import math

import torch
import torch.nn.functional as F

from mrla_reference import _kernel, base_layer, light_layer


def layer_norm(x, sd, prefix, eps=1e-6):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean)**2).mean(-1, keepdim=True)
    return ((x - mean) / torch.sqrt(var + eps) * sd[prefix + '.weight'] +
            sd[prefix + '.bias'])


def linear(x, sd, prefix):
    return x @ sd[prefix + '.weight'].T + sd[prefix + '.bias']


def gelu(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def self_attention(x, sd, p, num_heads):
    b, n, c = x.shape
    d = c // num_heads
    qkv = linear(x, sd, p + '.qkv').reshape(b, n, 3, num_heads, d)
    heads = []
    for h in range(num_heads):
        q, k, v = qkv[:, :, 0, h], qkv[:, :, 1, h], qkv[:, :, 2, h]
        scores = q @ k.transpose(1, 2) / math.sqrt(d)
        weights = torch.exp(scores - scores.max(-1, keepdim=True).values)
        heads.append(weights / weights.sum(-1, keepdim=True) @ v)
    return linear(torch.cat(heads, dim=-1), sd, p + '.proj')


def to_map(tokens, grid):
    """Patch tokens [B, h*w, C] (row-major) -> [B, C, h, w]."""
    b, _, c = tokens.shape
    return tokens.reshape(b, grid[0], grid[1], c).permute(0, 3, 1, 2)


def deit_mrla(x, sd, mode, num_heads, dim_per_head=16, group_size=4,
              with_cls_token=True):
    """Tokens ``[B, E + h*w, C]`` after the final norm of the authors'
    DeiT with MRLA-light (``mode='light'``) or MRLA-base (``'base'``);
    ``E`` is 1 with the class token, else 0 (then ``sd`` holds no
    ``cls_token`` entry in use and ``pos_embed`` covers the patches only).

    ``sd['pos_embed']`` must already match the input's patch grid.
    """
    patches = F.conv2d(
        x,
        sd['patch_embed.proj.weight'],
        sd['patch_embed.proj.bias'],
        stride=sd['patch_embed.proj.weight'].shape[-2:])
    grid = patches.shape[-2:]
    tokens = patches.flatten(2).transpose(1, 2)
    b = x.shape[0]
    e = 1 if with_cls_token else 0
    x = tokens
    if with_cls_token:
        x = torch.cat((sd['cls_token'].expand(b, -1, -1), tokens), dim=1)
    x = x + sd['pos_embed']
    depth = 1 + max(
        int(k.split('.')[1]) for k in sd if k.startswith('blocks.'))
    history = []
    for i in range(depth):
        p = f'blocks.{i}'
        x_in = x
        x = x + self_attention(
            layer_norm(x, sd, p + '.norm1'), sd, p + '.attn', num_heads)
        hidden = gelu(linear(layer_norm(x, sd, p + '.norm2'), sd,
                             p + '.mlp.fc1'))
        x = x + linear(hidden, sd, p + '.mlp.fc2')

        m = p + '.mrla.'
        xn = layer_norm(x, sd, m + 'normx')
        w = [sd[m + 'mrla.' + n + '.weight'] for n in ('Wq', 'Wk', 'Wv')]
        if mode == 'light':
            o_prev = to_map(layer_norm(x_in, sd, m + 'normo')[:, e:], grid)
            out = light_layer(to_map(xn[:, e:], grid), o_prev, *w,
                              sd[m + 'lambda_t'], dim_per_head, gelu=True)
        else:
            if i % group_size == 0:
                history = []
            out = base_layer(to_map(xn[:, e:], grid), history, *w,
                             dim_per_head)
        x = x + torch.cat((xn[:, :e], out.flatten(2).transpose(1, 2)), dim=1)
    return layer_norm(x, sd, 'norm')


def random_deit_state_dict(mode, embed_dims=64, depth=8, mlp_ratio=4,
                           patch_size=8, grid=(4, 6), num_classes=10,
                           seed=0, with_head=True):
    """Random weights in the authors' DeiT-MRLA layout (timm names), with
    non-trivial LayerNorm affine parameters; light adds ``lambda_t`` [C]
    and ``normo`` to every block."""
    g = torch.Generator().manual_seed(seed)
    c = embed_dims
    k = _kernel(c)

    def rnd(*shape, scale=1.0):
        return scale * torch.randn(*shape, generator=g)

    def ln(prefix):
        sd[prefix + '.weight'] = 1 + rnd(c, scale=0.2)
        sd[prefix + '.bias'] = rnd(c, scale=0.1)

    def lin(prefix, cout, cin):
        sd[prefix + '.weight'] = rnd(cout, cin, scale=cin**-0.5)
        sd[prefix + '.bias'] = rnd(cout, scale=0.1)

    sd = {}
    sd['cls_token'] = rnd(1, 1, c, scale=0.5)
    sd['pos_embed'] = rnd(1, 1 + grid[0] * grid[1], c, scale=0.5)
    sd['patch_embed.proj.weight'] = rnd(
        c, 3, patch_size, patch_size, scale=(3 * patch_size**2)**-0.5)
    sd['patch_embed.proj.bias'] = rnd(c, scale=0.1)
    for i in range(depth):
        p = f'blocks.{i}'
        ln(p + '.norm1')
        lin(p + '.attn.qkv', 3 * c, c)
        lin(p + '.attn.proj', c, c)
        ln(p + '.norm2')
        lin(p + '.mlp.fc1', mlp_ratio * c, c)
        lin(p + '.mlp.fc2', c, mlp_ratio * c)
        m = p + '.mrla.'
        sd[m + 'mrla.Wq.weight'] = rnd(1, 1, k, scale=0.5)
        sd[m + 'mrla.Wk.weight'] = rnd(1, 1, k, scale=0.5)
        sd[m + 'mrla.Wv.weight'] = rnd(c, 1, 3, 3, scale=1 / 3)
        ln(m + 'normx')
        if mode == 'light':
            sd[m + 'lambda_t'] = rnd(c)
            ln(m + 'normo')
    ln('norm')
    if with_head:
        lin('head', num_classes, c)
    return sd
