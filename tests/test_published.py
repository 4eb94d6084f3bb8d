"""Other projects' published weights through the suite's one loader (checkpoints.describe_checkpoint / load_sr_model).

No download: state_dicts are built from the published key names and shapes (EDSR-PyTorch's src/model/edsr.py and
rcan.py, the official RCAN release, BasicSR's edsr_arch.py, rcan_arch.py and srresnet_arch.py), filled with random
values, and the suite's network is compared with a functional re-statement of the publishing project's forward pass
(written here from their code, not from the suite's classes). spandrel files are built from spandrel's own
architecture classes and compared with spandrel's own call.
"""
import json
import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import checkpoints
import inference
import models
import utils
from conftest import run_here

DIV2K = (0.4488, 0.4371, 0.4040)
DT = torch.float64


# ----------------------------------------------------------------------------------------------
# Published layouts: key names and shapes as the publishing projects' code builds them
# ----------------------------------------------------------------------------------------------

def conv(shapes, name, c_out, c_in, k=3):
    shapes[f'{name}.weight'] = (c_out, c_in, k, k)
    shapes[f'{name}.bias'] = (c_out,)


def upsampler(shapes, prefix, scale, nf):
    """EDSR-PyTorch common.Upsampler / BasicSR arch_util.Upsample: convs at 0, 2, 4 (PixelShuffle at 1, 3, 5)."""
    steps = [3] if scale == 3 else [2] * int(math.log2(scale))
    for i, r in enumerate(steps):
        conv(shapes, f'{prefix}.{2 * i}', r * r * nf, nf)


def mean_shifts(shapes):
    shapes.update({'sub_mean.weight': (3, 3, 1, 1), 'sub_mean.bias': (3,), 'add_mean.weight': (3, 3, 1, 1),
                   'add_mean.bias': (3,)})


def edsr_pytorch_shapes(scale, nb, nf):
    s = {}
    mean_shifts(s)
    conv(s, 'head.0', nf, 3)
    for i in range(nb):
        conv(s, f'body.{i}.body.0', nf, nf)
        conv(s, f'body.{i}.body.2', nf, nf)
    conv(s, f'body.{nb}', nf, nf)
    upsampler(s, 'tail.0', scale, nf)
    conv(s, 'tail.1', 3, nf)
    return s


def official_rcan_shapes(scale, ng, nb, nf, red):
    s = {}
    mean_shifts(s)
    conv(s, 'head.0', nf, 3)
    for g in range(ng):
        for b in range(nb):
            p = f'body.{g}.body.{b}.body'
            conv(s, f'{p}.0', nf, nf)
            conv(s, f'{p}.2', nf, nf)
            conv(s, f'{p}.3.conv_du.0', nf // red, nf, 1)
            conv(s, f'{p}.3.conv_du.2', nf, nf // red, 1)
        conv(s, f'body.{g}.body.{nb}', nf, nf)
    conv(s, f'body.{ng}', nf, nf)
    upsampler(s, 'tail.0', scale, nf)
    conv(s, 'tail.1', 3, nf)
    return s


def basicsr_edsr_shapes(scale, nb, nf):
    s = {}
    conv(s, 'conv_first', nf, 3)
    for i in range(nb):
        conv(s, f'body.{i}.conv1', nf, nf)
        conv(s, f'body.{i}.conv2', nf, nf)
    conv(s, 'conv_after_body', nf, nf)
    upsampler(s, 'upsample', scale, nf)
    conv(s, 'conv_last', 3, nf)
    return s


def basicsr_rcan_shapes(scale, ng, nb, nf, squeeze):
    s = {}
    conv(s, 'conv_first', nf, 3)
    for g in range(ng):
        for b in range(nb):
            p = f'body.{g}.residual_group.{b}.rcab'
            conv(s, f'{p}.0', nf, nf)
            conv(s, f'{p}.2', nf, nf)
            conv(s, f'{p}.3.attention.1', nf // squeeze, nf, 1)  # attention.0 is the AdaptiveAvgPool2d
            conv(s, f'{p}.3.attention.3', nf, nf // squeeze, 1)
        conv(s, f'body.{g}.conv', nf, nf)
    conv(s, 'conv_after_body', nf, nf)
    upsampler(s, 'upsample', scale, nf)
    conv(s, 'conv_last', 3, nf)
    return s


def msrresnet_shapes(scale, nb, nf):
    s = {}
    conv(s, 'conv_first', nf, 3)
    for i in range(nb):
        conv(s, f'body.{i}.conv1', nf, nf)
        conv(s, f'body.{i}.conv2', nf, nf)
    conv(s, 'upconv1', nf * (4 if scale == 4 else scale * scale), nf)
    if scale == 4:
        conv(s, 'upconv2', nf * 4, nf)
    conv(s, 'conv_hr', nf, nf)
    conv(s, 'conv_last', 3, nf)
    return s


LAST_CONVS = ('tail.1.weight', 'conv_last.weight')


def random_sd(shapes, seed=0, rgb_range=255., perturb_mean=True, dtype=DT, last_gain=1.):
    """Random weights in ``shapes``: convs ~ N(0, 1/fan_in), biases ~ N(0, 0.01); the last conv times last_gain
    (small: outputs stay inside the value range, so comparisons are not of clamped values); mean shifts at the DIV2K
    mean, perturbed (RCAN's and early EDSR-PyTorch's code did not freeze them: the stored tensors are what counts)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in shapes.items():
        if '_mean.' in k:
            continue
        if k.endswith('.weight'):
            sd[k] = torch.randn(shape, generator=g, dtype=DT) / math.sqrt(math.prod(shape[1:]))
            sd[k] *= last_gain if k in LAST_CONVS else 1.
        else:
            sd[k] = 0.1 * torch.randn(shape, generator=g, dtype=DT)
    for name, sign in (('sub_mean', -1), ('add_mean', 1)):
        if f'{name}.weight' in shapes:
            w = torch.eye(3, dtype=DT).view(3, 3, 1, 1)
            b = sign * rgb_range * torch.tensor(DIV2K, dtype=DT)
            if perturb_mean:
                w = w + 0.01 * torch.randn(w.shape, generator=g, dtype=DT)
                b = b * (1 + 0.01 * torch.randn(3, generator=g, dtype=DT))
            sd[f'{name}.weight'], sd[f'{name}.bias'] = w, b
    return {k: v.to(dtype) for k, v in sd.items()}


# ----------------------------------------------------------------------------------------------
# The publishing projects' forward passes, re-stated functionally from their code
# ----------------------------------------------------------------------------------------------

def c(sd, name, x):
    w = sd[f'{name}.weight']
    return F.conv2d(x, w, sd[f'{name}.bias'], padding=w.shape[-1] // 2)


def tail_up(sd, prefix, x):
    i = 0
    while f'{prefix}.{i}.weight' in sd:
        y = c(sd, f'{prefix}.{i}', x)
        x = F.pixel_shuffle(y, math.isqrt(y.shape[1] // x.shape[1]))
        i += 2
    return x


def edsr_pytorch_forward(sd, x, res_scale):  # src/model/edsr.py; x in [0, rgb_range]
    x = c(sd, 'head.0', c(sd, 'sub_mean', x))
    res, i = x, 0
    while f'body.{i}.body.0.weight' in sd:
        res = res + res_scale * c(sd, f'body.{i}.body.2', F.relu(c(sd, f'body.{i}.body.0', res)))
        i += 1
    res = c(sd, f'body.{i}', res) + x
    return c(sd, 'add_mean', c(sd, 'tail.1', tail_up(sd, 'tail.0', res)))


def channel_attention(x, w1, b1, w2, b2):
    return x * torch.sigmoid(F.conv2d(F.relu(F.conv2d(x.mean((2, 3), keepdim=True), w1, b1)), w2, b2))


def official_rcan_forward(sd, x):  # RCAN_TestCode/code/model/rcan.py; x in [0, rgb_range]
    x = c(sd, 'head.0', c(sd, 'sub_mean', x))
    res, g = x, 0
    while f'body.{g}.body.0.body.0.weight' in sd:
        group_in, b = res, 0
        while f'body.{g}.body.{b}.body.0.weight' in sd:
            p = f'body.{g}.body.{b}.body'
            h = c(sd, f'{p}.2', F.relu(c(sd, f'{p}.0', res)))
            gate = [sd[f'{p}.3.conv_du.{i}.{t}'] for i in (0, 2) for t in ('weight', 'bias')]
            res = res + channel_attention(h, *gate)
            b += 1
        res = c(sd, f'body.{g}.body.{b}', res) + group_in
        g += 1
    res = c(sd, f'body.{g}', res) + x
    return c(sd, 'add_mean', c(sd, 'tail.1', tail_up(sd, 'tail.0', res)))


def basicsr_edsr_forward(sd, x01, res_scale, img_range=255.):  # basicsr/archs/edsr_arch.py; x in [0, 1]
    m = torch.tensor(DIV2K, dtype=x01.dtype).view(1, 3, 1, 1)
    x = c(sd, 'conv_first', (x01 - m) * img_range)
    res, i = x, 0
    while f'body.{i}.conv1.weight' in sd:
        res = res + res_scale * c(sd, f'body.{i}.conv2', F.relu(c(sd, f'body.{i}.conv1', res)))
        i += 1
    res = c(sd, 'conv_after_body', res) + x
    return c(sd, 'conv_last', tail_up(sd, 'upsample', res)) / img_range + m


def basicsr_rcan_forward(sd, x01, res_scale=1., img_range=255.):  # basicsr/archs/rcan_arch.py; x in [0, 1]
    m = torch.tensor(DIV2K, dtype=x01.dtype).view(1, 3, 1, 1)
    x = c(sd, 'conv_first', (x01 - m) * img_range)
    res, g = x, 0
    while f'body.{g}.conv.weight' in sd:
        group_in, b = res, 0
        while f'body.{g}.residual_group.{b}.rcab.0.weight' in sd:
            p = f'body.{g}.residual_group.{b}.rcab'
            h = c(sd, f'{p}.2', F.relu(c(sd, f'{p}.0', res)))
            h = channel_attention(h, *[sd[f'{p}.3.attention.{i}.{t}'] for i in (1, 3) for t in ('weight', 'bias')])
            res = res + res_scale * h
            b += 1
        res = c(sd, f'body.{g}.conv', res) + group_in
        g += 1
    res = c(sd, 'conv_after_body', res) + x
    return c(sd, 'conv_last', tail_up(sd, 'upsample', res)) / img_range + m


def basicsr_msrresnet_forward(sd, x, scale):  # basicsr/archs/srresnet_arch.py; x in [0, 1]
    lrelu = lambda t: F.leaky_relu(t, 0.1)  # noqa: E731
    feat, i = lrelu(c(sd, 'conv_first', x)), 0
    while f'body.{i}.conv1.weight' in sd:
        feat = feat + c(sd, f'body.{i}.conv2', F.relu(c(sd, f'body.{i}.conv1', feat)))
        i += 1
    r = 2 if scale == 4 else scale
    feat = lrelu(F.pixel_shuffle(c(sd, 'upconv1', feat), r))
    if scale == 4:
        feat = lrelu(F.pixel_shuffle(c(sd, 'upconv2', feat), 2))
    out = c(sd, 'conv_last', lrelu(c(sd, 'conv_hr', feat)))
    return out + F.interpolate(x, scale_factor=scale, mode='bilinear', align_corners=False)


def described(ckpt, **assume):
    """describe_checkpoint, and its network built in float64 with the converted weights (exact comparisons)."""
    info = checkpoints.describe_checkpoint(ckpt, 'file.pth', **assume)
    model = models.build_model(info.arch, info.config).to(DT)
    model.load_state_dict(info.state)  # strict: the conversion accounts for every key
    return info, model.eval()


def lr_image(seed=1, size=(24, 28), n=2):
    return torch.rand(n, 3, *size, generator=torch.Generator().manual_seed(seed), dtype=DT)


# ----------------------------------------------------------------------------------------------
# EDSR-PyTorch's EDSR and the official RCAN release (bare state_dicts)
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize('scale', [2, 3, 4, 8])
def test_edsr_pytorch_bare_state_dict(scale):
    sd = random_sd(edsr_pytorch_shapes(scale, 2, 8), seed=scale)
    info, model = described(sd)
    assert (info.arch, info.label, info.source) == ('edsr', 'edsr', 'EDSR-PyTorch EDSR')
    assert {k: info.config[k] for k in ('scaling_factor', 'n_resblocks', 'n_feats', 'res_scale', 'rgb_range')} == \
        dict(scaling_factor=scale, n_resblocks=2, n_feats=8, res_scale=1.0, rgb_range=255)
    assert info.spec.in_type == '[0, 255]'
    assert any('res_scale 1 assumed' in n for n in info.notes) and any('read off sub_mean' in n for n in info.notes)
    x = 255 * lr_image()
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 3, 24 * scale, 28 * scale)
    torch.testing.assert_close(y, edsr_pytorch_forward(sd, x, 1.0), rtol=1e-10, atol=1e-8)


def test_edsr_res_scale_flag_prefix_and_value_range_read_off_sub_mean():
    sd = random_sd(edsr_pytorch_shapes(2, 2, 8))
    info, model = described({'module.' + k: v for k, v in sd.items()}, res_scale=0.1)  # DataParallel prefix
    assert info.config['res_scale'] == 0.1 and any('res_scale 0.1 (--res-scale)' in n for n in info.notes)
    x = 255 * lr_image()
    with torch.no_grad():
        torch.testing.assert_close(model(x), edsr_pytorch_forward(sd, x, 0.1), rtol=1e-10, atol=1e-8)
    # trained with --rgb_range 1: sub_mean says so, and the network then takes [0, 1]
    sd1 = random_sd(edsr_pytorch_shapes(2, 2, 8), rgb_range=1., perturb_mean=False)
    info, model = described(sd1)
    assert info.config['rgb_range'] == 1 and info.spec.in_type == info.spec.out_type == '[0, 1]'
    with torch.no_grad():
        torch.testing.assert_close(model(x / 255), edsr_pytorch_forward(sd1, x / 255, 1.0), rtol=1e-10, atol=1e-10)
    with pytest.raises(utils.UserError, match=r'--rgb-range 255: file.pth says rgb_range 1 itself'):
        checkpoints.describe_checkpoint(sd1, 'file.pth', rgb_range=255)


def test_edsr_without_mean_shifts_gets_the_defaults_or_the_flag():
    sd = random_sd(edsr_pytorch_shapes(2, 2, 8), perturb_mean=False)
    bare = {k: v for k, v in sd.items() if '_mean.' not in k}
    info, model = described(bare)
    assert info.config['rgb_range'] == 255 and any('no sub_mean' in n for n in info.notes)
    x = 255 * lr_image()
    with torch.no_grad():
        torch.testing.assert_close(model(x), edsr_pytorch_forward(sd, x, 1.0), rtol=1e-10, atol=1e-8)
    info, model = described(bare, rgb_range=1)
    sd1 = random_sd(edsr_pytorch_shapes(2, 2, 8), rgb_range=1., perturb_mean=False)
    with torch.no_grad():
        torch.testing.assert_close(model(x / 255), edsr_pytorch_forward(sd1, x / 255, 1.0), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('scale', [2, 3, 4, 8])
def test_official_rcan_bare_state_dict(scale):
    sd = random_sd(official_rcan_shapes(scale, 2, 2, 16, 4), seed=scale)
    info, model = described(sd)
    assert info.arch == 'rcan' and info.source.startswith('RCAN')
    assert {k: info.config[k] for k in ('scaling_factor', 'n_resgroups', 'n_resblocks', 'n_feats', 'reduction',
                                        'rgb_range')} == dict(scaling_factor=scale, n_resgroups=2, n_resblocks=2,
                                                              n_feats=16, reduction=4, rgb_range=255)
    x = 255 * lr_image(size=(24, 24))
    with torch.no_grad():
        torch.testing.assert_close(model(x), official_rcan_forward(sd, x), rtol=1e-10, atol=1e-8)
    with pytest.raises(utils.UserError, match='--res-scale does not apply to file.pth: its rcan has no res_scale'):
        checkpoints.describe_checkpoint(sd, 'file.pth', res_scale=0.1)


def meta_sd(shapes):
    """Full-size published weights on the meta device (no memory), real mean shifts (read by the loader)."""
    sd = {k: torch.empty(v, device='meta') for k, v in shapes.items() if '_mean.' not in k}
    for name, sign in (('sub_mean', -1), ('add_mean', 1)):
        if f'{name}.weight' in shapes:
            sd[f'{name}.weight'] = torch.eye(3).view(3, 3, 1, 1)
            sd[f'{name}.bias'] = sign * 255. * torch.tensor(DIV2K)
    return sd


# The official files (EDSR-PyTorch README: edsr_baseline_x2/3/4, edsr_x2/3/4; RCAN_BIX2/3/4/8): configuration read
# off the full-size shapes, res_scale by the release's rule, the suite's key set and shapes, and the parameter
# counts the EDSR-PyTorch README gives (1.37 / 1.55 / 1.52 M and 40.7 / 43.7 / 43.1 M).
@pytest.mark.parametrize('scale,nb,nf,res_scale,millions', [
    (2, 16, 64, 1.0, 1.37), (3, 16, 64, 1.0, 1.55), (4, 16, 64, 1.0, 1.52),
    (2, 32, 256, 0.1, 40.7), (3, 32, 256, 0.1, 43.7), (4, 32, 256, 0.1, 43.1)])
def test_published_edsr_files_configuration(scale, nb, nf, res_scale, millions):
    shapes = edsr_pytorch_shapes(scale, nb, nf)
    info = checkpoints.describe_checkpoint(meta_sd(shapes), 'edsr.pt')
    assert (info.config['scaling_factor'], info.config['n_resblocks'], info.config['n_feats'],
            info.config['res_scale']) == (scale, nb, nf, res_scale)
    with torch.device('meta'):
        model = models.build_model(info.arch, info.config)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes
    assert round(sum(math.prod(s) for s in shapes.values()) / 1e6, 1 if nf == 256 else 2) == millions


@pytest.mark.parametrize('scale', [2, 3, 4, 8])
def test_published_rcan_files_configuration(scale):
    shapes = official_rcan_shapes(scale, 10, 20, 64, 16)
    info = checkpoints.describe_checkpoint(meta_sd(shapes), 'RCAN_BIX.pt')
    assert (info.config['n_resgroups'], info.config['n_resblocks'], info.config['n_feats'],
            info.config['reduction'], info.config['scaling_factor']) == (10, 20, 64, 16, scale)
    with torch.device('meta'):
        model = models.build_model(info.arch, info.config)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes


# ----------------------------------------------------------------------------------------------
# BasicSR ({'params': ..., 'params_ema': ...})
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize('scale', [2, 3, 4])
def test_basicsr_edsr(scale):
    sd = random_sd(basicsr_edsr_shapes(scale, 2, 8), seed=scale)
    info, model = described({'params': sd})
    assert info.arch == 'edsr' and info.source == 'BasicSR EDSR'
    assert (info.config['scaling_factor'], info.config['n_resblocks'], info.config['n_feats']) == (scale, 2, 8)
    x = lr_image()
    with torch.no_grad():
        torch.testing.assert_close(model(255 * x) / 255, basicsr_edsr_forward(sd, x, 1.0), rtol=1e-10, atol=1e-10)
    info, model = described({'params': sd}, res_scale=0.1, rgb_range=1)  # img_range 1: the network takes [0, 1]
    assert info.spec.in_type == '[0, 1]'
    with torch.no_grad():
        torch.testing.assert_close(model(x), basicsr_edsr_forward(sd, x, 0.1, img_range=1.), rtol=1e-10, atol=1e-10)


def test_basicsr_prefers_params_ema_and_says_so():
    ema, plain = random_sd(basicsr_edsr_shapes(2, 2, 8), seed=1), random_sd(basicsr_edsr_shapes(2, 2, 8), seed=2)
    info, model = described({'params': plain, 'params_ema': ema})
    assert "weights from 'params_ema' (also in the file: params)" in info.notes
    x = lr_image()
    with torch.no_grad():
        torch.testing.assert_close(model(255 * x) / 255, basicsr_edsr_forward(ema, x, 1.0), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('scale,res_scale', [(2, None), (3, None), (4, None), (2, 0.5)])
def test_basicsr_rcan(scale, res_scale):
    sd = random_sd(basicsr_rcan_shapes(scale, 2, 2, 16, 4), seed=scale)
    info, model = described({'params_ema': sd}, res_scale=res_scale)
    assert info.arch == 'rcan' and (info.config['n_resgroups'], info.config['n_resblocks'],
                                    info.config['reduction']) == (2, 2, 4)
    x = lr_image(size=(24, 24))
    with torch.no_grad():  # a res_scale other than 1 is folded into the weights: still BasicSR's function
        torch.testing.assert_close(model(255 * x) / 255, basicsr_rcan_forward(sd, x, res_scale or 1.),
                                   rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('scale', [2, 3, 4])
def test_basicsr_msrresnet_is_the_suites_msrresnet(scale):
    sd = random_sd(msrresnet_shapes(scale, 2, 8), seed=scale)
    info, model = described({'params': sd})
    assert (info.arch, info.source, info.spec.in_type) == ('msrresnet', 'BasicSR MSRResNet', '[0, 1]')
    assert (info.config['scaling_factor'], info.config['n_channels'], info.config['n_blocks']) == (scale, 8, 2)
    assert set(info.state) == set(sd)  # BasicSR's names are the suite's
    x = lr_image()
    with torch.no_grad():
        torch.testing.assert_close(model(x), basicsr_msrresnet_forward(sd, x, scale), rtol=1e-10, atol=1e-10)


def test_layouts_are_told_apart_and_the_unrecognised_refused_in_one_line(monkeypatch):
    layouts = {'edsr': edsr_pytorch_shapes(4, 2, 8), 'rcan': official_rcan_shapes(4, 2, 2, 16, 4),
               'basicsr-edsr': basicsr_edsr_shapes(4, 2, 8), 'basicsr-rcan': basicsr_rcan_shapes(4, 2, 2, 16, 4),
               'msrresnet': msrresnet_shapes(4, 2, 8)}
    for name, shapes in layouts.items():
        assert checkpoints._layout(meta_sd(shapes)) == name
    strange = {'encoder.0.weight': torch.zeros(8, 3, 3, 3), 'encoder.0.bias': torch.zeros(8)}
    with pytest.raises(utils.UserError) as err:
        checkpoints.describe_checkpoint(strange, 'strange.pth')
    message = str(err.value)
    assert '\n' not in message and 'unrecognised weights (2 tensor(s): encoder.0.weight, encoder.0.bias)' in message
    sd = random_sd(basicsr_edsr_shapes(2, 2, 8))
    sd['extra.weight'] = torch.zeros(3)
    with pytest.raises(utils.UserError, match="BasicSR EDSR weights with an unexpected key 'extra.weight'"):
        checkpoints.describe_checkpoint({'params': sd}, 'x.pth')
    with pytest.raises(utils.UserError, match='holds no model weights: not an SR checkpoint .*epoch, notes'):
        checkpoints.describe_checkpoint({'epoch': 3, 'notes': 'hello'}, 'x.pth')


# ----------------------------------------------------------------------------------------------
# spandrel files (optional dependency)
# ----------------------------------------------------------------------------------------------

spandrel = pytest.importorskip('spandrel')


def tiny_spandrel(kind):
    """A tiny model of spandrel's own architecture classes, random weights, eval mode."""
    torch.manual_seed(0)
    if kind == 'ESRGAN':
        from spandrel.architectures.ESRGAN import ESRGAN
        return ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=2, scale=4).eval()
    if kind == 'Compact':
        from spandrel.architectures.Compact import Compact
        return Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2).eval()
    from spandrel.architectures.SwinIR import SwinIR  # window 8 (7 makes spandrel assume img_range 255)
    return SwinIR(img_size=16, in_chans=3, embed_dim=12, depths=[2, 2], num_heads=[2, 2], window_size=8,
                  mlp_ratio=2.0, upscale=2, img_range=1.0, upsampler='pixelshuffledirect',
                  resi_connection='1conv').eval()


def save_weights(net, path):
    if str(path).endswith('.safetensors'):
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    else:
        torch.save(net.state_dict(), path)
    return path


@pytest.mark.parametrize('kind,ext,size', [('ESRGAN', '.pth', (21, 19)), ('Compact', '.safetensors', (20, 24)),
                                           ('SwinIR', '.pth', (13, 21))])  # SwinIR: padded to 16 px, cropped
def test_spandrel_files_run_through_the_suite_as_spandrel_runs_them(tmp_path, kind, ext, size):
    path = save_weights(tiny_spandrel(kind), tmp_path / f'tiny{ext}')
    loaded = checkpoints.load_sr_model(str(path))
    assert loaded.arch == loaded.label == loaded.spec.name == kind and loaded.source.startswith('spandrel')
    assert loaded.spec.in_type == loaded.spec.out_type == '[0, 1]'
    scale = loaded.config['scaling_factor']
    descriptor = spandrel.ModelLoader().load_from_file(str(path))
    x = torch.rand(1, 3, *size)
    expected = descriptor(x.clone())  # spandrel's own call: pads, runs, clamps to [0, 1], crops
    sr, sr_y = inference.Upscaler(loaded.network, loaded.spec, scale, 'cpu').upscale(x)
    assert sr_y is None and sr.shape == (1, 3, size[0] * scale, size[1] * scale)
    torch.testing.assert_close(sr.clamp(0, 1), expected, rtol=0, atol=1e-6)
    assert ((expected > 0) & (expected < 1)).float().mean() > 0.5  # not a comparison of clamped values


def test_without_spandrel_a_foreign_file_says_how_to_get_it(tmp_path, monkeypatch):
    path = save_weights(tiny_spandrel('ESRGAN'), tmp_path / 'esrgan.pth')
    monkeypatch.setitem(sys.modules, 'spandrel', None)  # `import spandrel` now raises ImportError
    with pytest.raises(utils.UserError) as err:
        checkpoints.load_sr_model(str(path))
    message = str(err.value)
    assert '\n' not in message and message.endswith('pip install spandrel')
    assert 'model.0.weight' in message  # what was seen
    edsr = random_sd(edsr_pytorch_shapes(2, 1, 8), dtype=torch.float32)  # the suite's own layouts need no spandrel
    assert checkpoints.describe_checkpoint(edsr, 'edsr.pt').arch == 'edsr'


def test_spandrel_descriptor_limits_are_kept(tmp_path):
    loaded = checkpoints.load_sr_model(str(save_weights(tiny_spandrel('SwinIR'), tmp_path / 'swinir.pth')))
    assert loaded.spec.min_size == 16 and 'fp16' not in loaded.spec.precisions  # spandrel: no half for SwinIR
    assert any('tiling is discouraged' in n for n in loaded.notes)
    assert any('padded (reflected)' in n and 'at least 16 px' in n for n in loaded.notes)


# ----------------------------------------------------------------------------------------------
# The check: each kind upscales an image through test.py and scores through eval.py
# ----------------------------------------------------------------------------------------------

class ReferenceUpscaler:
    """The publishing project's forward (functional re-statement, float64) with Upscaler's upscale() interface."""

    def __init__(self, forward):
        self.forward = forward

    def upscale(self, lr):  # (N, 3, h, w) RGB in [0, 1] -> ((N, 3, s*h, s*w) in [0, 1], None)
        with torch.no_grad():
            return self.forward(lr.to(DT)).float(), None


def published_file(kind, tmp_path):
    """(path, label, reference forward on RGB in [0, 1]) for the three kinds of the issue's check."""
    if kind == 'edsr-pytorch':
        sd = random_sd(edsr_pytorch_shapes(2, 2, 8), last_gain=0.1)
        path = tmp_path / 'edsr_baseline_x2.pt'
        torch.save({k: v.float() for k, v in sd.items()}, path)  # a bare state_dict, as EDSR-PyTorch saves
        return path, 'edsr', lambda x: edsr_pytorch_forward(sd, 255 * x, 1.0) / 255
    if kind == 'basicsr-params-ema':
        sd = random_sd(msrresnet_shapes(2, 2, 8))
        path = tmp_path / 'MSRResNet_x2.pth'
        torch.save({'params': {k: 0 * v.float() for k, v in sd.items()},
                    'params_ema': {k: v.float() for k, v in sd.items()}}, path)
        return path, 'msrresnet', lambda x: basicsr_msrresnet_forward(sd, x, 2)
    net = tiny_spandrel('ESRGAN')
    path = save_weights(net, tmp_path / 'RRDB_ESRGAN_x4.pth')
    descriptor = spandrel.ModelLoader().load_from_file(str(path))
    return path, 'ESRGAN', lambda x: descriptor(x.float().clone()).to(DT)


@pytest.mark.parametrize('kind', ['edsr-pytorch', 'basicsr-params-ema', 'spandrel-esrgan'])
def test_published_weights_upscale_through_test_py_and_score_through_eval_py(tmp_path, kind):
    path, label, forward = published_file(kind, tmp_path)
    photo = tmp_path / 'photos' / 'photo.png'
    photo.parent.mkdir()
    rgb = np.asarray(Image.open(photo_path()).convert('RGB'))[:24, :28]
    Image.fromarray(rgb).save(photo)
    up = run_here('test.py', '--checkpoint', path, '--image', photo, '--output-dir', tmp_path / 'out',
                  '--device', 'cpu', '--precision', 'fp32')
    assert up.returncode == 0, up.stderr
    assert 'note:' in up.stdout
    lr = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255
    expected = utils.to_uint8(ReferenceUpscaler(forward).upscale(lr)[0][0]).numpy().transpose(1, 2, 0)
    scale = {'edsr-pytorch': 2, 'basicsr-params-ema': 2, 'spandrel-esrgan': 4}[kind]
    with Image.open(tmp_path / 'out' / f'photo_x{scale}_{label}.png') as sr:
        got = np.asarray(sr.convert('RGB')).astype(int)
    assert got.shape == expected.shape  # fused + channels_last float32 vs float64: at most one grey level apart
    assert np.abs(got - expected).max() <= 1 and (got != expected).mean() < 0.01
    ev = run_here('eval.py', '--checkpoint', path, '--test-folders', photo.parent, '--results-dir',
                  tmp_path / 'eval', '--device', 'cpu')
    assert ev.returncode == 0, ev.stderr
    report = json.loads(next((tmp_path / 'eval').glob('eval_*.json')).read_text())
    assert report['model'] == label and report['weights'] and report['notes']
    hr = torch.from_numpy(np.asarray(Image.open(photo)).copy()).permute(2, 0, 1)
    scale = report['scale']
    sr_y, hr_y, _ = inference.standard_protocol(ReferenceUpscaler(forward), hr, scale)
    assert report['datasets'][0]['standard_psnr'] == pytest.approx(utils.psnr(sr_y, hr_y, border=scale), abs=0.02)


def photo_path():
    from skimage import data
    return data.data_dir + '/chelsea.png'
