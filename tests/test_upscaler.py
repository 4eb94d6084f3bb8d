"""inference.Upscaler options: tiling, memory budgets, precision, self-ensemble, channels_last; bicubic_upscale.

Tiny random-weight models (2 blocks, 8-16 channels) on 24-48 px images, CPU only. Reference results are computed
here independently (whole-image passes, hand-written transforms), so every check can fail.
"""
import dataclasses
import math
import os
import sys

import pytest
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import inference  # noqa: E402
import models  # noqa: E402
import utils  # noqa: E402
from inference import Upscaler  # noqa: E402
from utils import UserError  # noqa: E402

SPEC = models.ARCHS  # what Upscaler takes: each architecture's models.ArchSpec

TINY = {
    'srresnet': dict(n_blocks=2, n_channels=8),
    'edsr': dict(n_resblocks=2, n_feats=8),
    'rcan': dict(n_resgroups=2, n_resblocks=2, n_feats=16, reduction=4),  # channel attention: global pooling
    'espcn': dict(channels=(8, 8)),
    'srcnn': dict(channels=(8, 8)),
}


def tiny_model(arch, scale=4, seed=0):
    """A random-weight tiny model in eval mode with non-trivial BatchNorm statistics (SRResNet) and SRCNN
    re-initialised with PyTorch's default init (the paper's N(0, 0.001) makes its output almost constant)."""
    torch.manual_seed(seed)
    model = models.build_model(arch, models.model_config(arch, scale, **TINY[arch]))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
        if arch == 'srcnn' and isinstance(m, nn.Conv2d):
            m.reset_parameters()
    return model.eval()


def smooth_image(h, w, n=1, seed=0):
    """(n, 3, h, w) in [0, 1]: low-frequency colour patterns plus a little texture."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing='ij')
    phase = torch.rand(n, 3, 1, 1, generator=g) * 6.
    img = 0.5 + 0.3 * torch.sin(4 * xx + 3 * yy + phase) * torch.cos(5 * yy - 2 * xx + phase)
    return (img + 0.05 * torch.rand(n, 3, h, w, generator=g)).clamp(0, 1)


def psnr01(a, b):
    """PSNR in dB of two [0, 1] images (clamped), float64; inf when equal."""
    mse = ((a.double().clamp(0, 1) - b.double().clamp(0, 1)) ** 2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(1. / mse)


def scale_of(arch):
    return 3 if arch == 'srcnn' else 4


# ----------------------------------------------------------------------------------------------
# Tiling
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize('length,tile,overlap', [(10, 4, 0), (185, 100, 16), (50, 64, 16), (100, 32, 8), (37, 24, 5),
                                                 (48, 24, 0)])
def test_tile_starts_cover_with_overlap(length, tile, overlap):
    starts = inference.tile_starts(length, tile, overlap)
    size = min(tile, length)
    assert starts[0] == 0 and starts[-1] + size == length
    for a, b in zip(starts, starts[1:]):
        assert a < b and a + size - b >= overlap  # neighbours share at least the overlap, no gaps


@pytest.mark.parametrize('length,tile,overlap', [(512, 256, 16), (2048, 256, 16), (61, 24, 6), (50, 64, 16),
                                                 (48, 24, 0), (100, 33, 8)])
def test_fit_tile_shrinks_windows_without_adding_any(length, tile, overlap):
    fitted = inference.fit_tile(length, tile, overlap)
    assert fitted <= tile and len(inference.tile_starts(length, fitted, overlap)) == len(inference.tile_starts(length, tile,
                                                                                                     overlap))
    if length > tile:  # one px less would need another window (or lose the overlap)
        n = len(inference.tile_starts(length, tile, overlap))
        assert n * (fitted - 1) - (n - 1) * overlap < length <= n * fitted - (n - 1) * overlap


@pytest.mark.parametrize('length,tile,overlap,scale', [(80, 32, 8, 2), (61, 24, 6, 4), (48, 24, 0, 3)])
def test_blend_weights_partition_of_unity(length, tile, overlap, scale):
    starts = inference.tile_starts(length, tile, overlap)
    size = min(tile, length)
    total = torch.zeros(length * scale)
    for i, a in enumerate(starts):
        total[a * scale:(a + size) * scale] += inference._blend_ramp(starts, i, size, length, scale, 'cpu')
    torch.testing.assert_close(total, torch.ones_like(total))


TILE_CASES = [  # (h, w, tile, overlap): odd sizes, several windows per axis
    (45, 37, 32, 16),  # test.py's default --tile-overlap 16: docs/upscaling.md's "PSNR > 60 dB" (measured 73.6-180 dB)
    (61, 53, 32, 16),
    (37, 29, 24, 8),  # narrower overlaps than the default: less (measured 59.0-149 dB)
    (45, 31, 20, 12),
]
DEFAULT_OVERLAP_PSNR = 60.  # docs/upscaling.md: tiled output equals untiled within PSNR > 60 dB
NARROW_OVERLAP_PSNR = 55.


@pytest.mark.parametrize('arch', sorted(TINY))
@pytest.mark.parametrize('h,w,tile,overlap', TILE_CASES)
def test_tiled_equals_untiled(arch, h, w, tile, overlap):
    s = scale_of(arch)
    model = tiny_model(arch, s)
    lr = smooth_image(h, w, n=2)
    ref, ref_y = Upscaler(model, SPEC[arch], s, 'cpu').upscale(lr)
    assert inference.tile_starts(h, tile, overlap) != [0]  # really tiled
    out, out_y = Upscaler(model, SPEC[arch], s, 'cpu', tile=tile, tile_overlap=overlap).upscale(lr)
    assert out.shape == ref.shape == (2, 3, h * s, w * s)
    least = DEFAULT_OVERLAP_PSNR if overlap >= 16 else NARROW_OVERLAP_PSNR
    assert psnr01(out, ref) > least
    if ref_y is not None:  # Y-models also return their own luma
        assert out_y.shape == ref_y.shape == (2, h * s, w * s)
        assert psnr01(out_y, ref_y) > least
    assert not torch.equal(out, ref) or arch == 'srcnn'  # tiles really changed the computation


@pytest.mark.parametrize('arch', ['srresnet', 'espcn', 'srcnn'])
def test_tile_larger_than_image_is_exact(arch):
    s = scale_of(arch)
    model = tiny_model(arch, s)
    lr = smooth_image(23, 17)
    ref, ref_y = Upscaler(model, SPEC[arch], s, 'cpu').upscale(lr)
    out, out_y = Upscaler(model, SPEC[arch], s, 'cpu', tile=64, tile_overlap=16).upscale(lr)
    assert torch.equal(out, ref)
    assert (ref_y is None and out_y is None) or torch.equal(out_y, ref_y)


class Pointwise(nn.Module):
    """A model without spatial context: 1x1 convs and pixel shuffle (tiling must be exact, even overlap 0)."""

    def __init__(self, scale):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 1), nn.PReLU(), nn.Conv2d(8, 3 * scale * scale, 1))
        self.shuffle = nn.PixelShuffle(scale)

    def forward(self, x):
        return torch.tanh(self.shuffle(self.body(x)))


def test_overlap_zero_pointwise_model_is_exact():
    torch.manual_seed(1)
    model = Pointwise(4).eval()
    lr = smooth_image(48, 40)
    assert inference.tile_starts(48, 24, 0) == [0, 24]  # no shared pixels at all
    ref, _ = Upscaler(model, SPEC['srresnet'], 4, 'cpu').upscale(lr)
    out, _ = Upscaler(model, SPEC['srresnet'], 4, 'cpu', tile=24, tile_overlap=0).upscale(lr)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)


def test_overlap_zero_conv_model_exact_away_from_seams():
    """With overlap 0 a conv net sees zero padding at the cuts: output differs near the seams only."""
    model = tiny_model('srresnet')
    lr = smooth_image(48, 48)
    ref, _ = Upscaler(model, SPEC['srresnet'], 4, 'cpu').upscale(lr)
    out, _ = Upscaler(model, SPEC['srresnet'], 4, 'cpu', tile=24, tile_overlap=0).upscale(lr)
    # receptive field of the tiny SRResNet: 4 (9x9) + 2 * 2 (blocks) + 1 + 2 (subpixel) + 1 (9x9 at 4x) < 14 LR px
    far = 14 * 4
    for sl in ((slice(None), slice(None), slice(0, 96 - far), slice(0, 96 - far)),
               (slice(None), slice(None), slice(96 + far, None), slice(96 + far, None))):
        torch.testing.assert_close(out[sl], ref[sl], rtol=0, atol=1e-5)
    assert (out - ref).abs().max() > 1e-4  # and the seams do differ: the test can see them


def test_tiled_batch_and_sr_y_buffers():
    model = tiny_model('espcn')
    lr = smooth_image(33, 27, n=3)
    ref, ref_y = Upscaler(model, SPEC['espcn'], 4, 'cpu').upscale(lr)
    # overlap >= 2 x receptive radius
    out, out_y = Upscaler(model, SPEC['espcn'], 4, "cpu", tile=16, tile_overlap=8).upscale(lr)
    assert out.shape == (3, 3, 132, 108) and out_y.shape == (3, 132, 108)
    for i in range(3):
        assert psnr01(out[i], ref[i]) >= 50. and psnr01(out_y[i], ref_y[i]) >= 50.


def test_upscaler_takes_a_spec_never_a_bare_name():
    with pytest.raises(TypeError, match='models.ArchSpec'):
        Upscaler(tiny_model('espcn'), 'espcn', 4, 'cpu')


def test_bad_tile_options():
    model = tiny_model('srresnet')
    with pytest.raises(UserError, match='overlap'):
        Upscaler(model, SPEC['srresnet'], 4, 'cpu', tile=16, tile_overlap=16)
    with pytest.raises(UserError, match='overlap'):
        Upscaler(model, SPEC['srresnet'], 4, 'cpu', tile_overlap=-1)
    with pytest.raises(UserError, match='too small'):
        Upscaler(model, SPEC['srresnet'], 4, 'cpu', tile=1, tile_overlap=0)


# ----------------------------------------------------------------------------------------------
# Memory budget
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize('text,expected', [('2GB', 2 * 2 ** 30), ('1.5 GiB', 3 * 2 ** 29), ('512M', 2 ** 29),
                                           ('800k', 800 * 1024), ('2000000000', 2 * 10 ** 9), (4096, 4096),
                                           (None, None), ('100b', 100)])
def test_parse_memory(text, expected):
    assert utils.parse_memory(text) == expected


@pytest.mark.parametrize('text', ['abc', '2XB', '-1GB', '0', 'GB', ''])
def test_parse_memory_rejects(text):
    with pytest.raises(ValueError):
        utils.parse_memory(text)


def test_memory_per_pixel_bounds_a_real_forward_pass():
    """The estimate must be at least the largest activation of the model times the pixels, computed here by
    hand for SRResNet x4: the second pixel-shuffle conv outputs 4 * 4 * n_channels floats at 2x per LR px."""
    model = tiny_model('srresnet')
    est = Upscaler(model, SPEC['srresnet'], 4, 'cpu').memory_per_pixel()
    largest = 4 * (4 * 8) * (2 * 2)  # bytes per LR px of conv(8 -> 32 channels) at 2x resolution
    assert est >= 3 * largest
    assert est < 100 * largest  # and not absurd


@pytest.mark.parametrize('arch', ['srresnet', 'rcan', 'espcn', 'srcnn'])
def test_max_memory_triggers_tiling_and_matches(arch):
    s = scale_of(arch)
    model = tiny_model(arch, s)
    lr = smooth_image(48, 44)
    ref, _ = Upscaler(model, SPEC[arch], s, 'cpu').upscale(lr)
    big = Upscaler(model, SPEC[arch], s, 'cpu', max_memory='1GB')
    assert big.plan_tile(1, 48, 44) is None  # fits: whole image, same result
    assert torch.equal(big.upscale(lr)[0], ref)
    budget = Upscaler(model, SPEC[arch], s, 'cpu', tile_overlap=8)._tiling_cost(1, 48, 44, 40)
    assert budget < big.memory_per_pixel() * 48 * 44  # a whole-image pass would not fit
    small = Upscaler(model, SPEC[arch], s, 'cpu', tile_overlap=8, max_memory=budget)
    assert small.plan_tile(1, 48, 44) == 40  # the largest multiple of 8 that fits
    out, _ = small.upscale(lr)
    assert psnr01(out, ref) > NARROW_OVERLAP_PSNR  # 8-px overlap (measured 56.9-125 dB)


def test_tiny_budget_warns_and_still_works():
    model = tiny_model('srresnet')
    lr = smooth_image(40, 40)
    up = Upscaler(model, SPEC['srresnet'], 4, 'cpu', tile_overlap=2, max_memory='1k')
    with pytest.warns(UserWarning, match='too small'):
        out, _ = up.upscale(lr)
    ref, _ = Upscaler(model, SPEC['srresnet'], 4, 'cpu').upscale(lr)
    assert out.shape == ref.shape and psnr01(out, ref) >= 40.


def test_progress_is_called_after_every_tile():
    model = tiny_model('espcn', scale=2)
    lr = smooth_image(28, 40)
    tiled = Upscaler(model, SPEC['espcn'], 2, 'cpu', tile=16, tile_overlap=4)
    calls = []
    out = tiled.upscale_uint8(lr, progress=lambda done, total: calls.append((done, total)))
    # windows of at most 16 px sharing at least 4: ceil((40 - 4) / 12) = 3 across, ceil((28 - 4) / 12) = 2 down
    assert calls == [(k, 6) for k in range(1, 7)]
    assert torch.equal(out, tiled.upscale_uint8(lr))  # the callback changes nothing
    calls.clear()
    tiled.upscale(lr, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(k, 6) for k in range(1, 7)]
    whole = Upscaler(model, SPEC['espcn'], 2, 'cpu')
    calls.clear()
    whole.upscale_uint8(lr, progress=lambda done, total: calls.append((done, total)))
    whole.upscale(lr, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 1), (1, 1)]


@pytest.mark.parametrize('arch,tile', [('srresnet', None), ('srresnet', 16), ('espcn', 16)])
def test_upscale_uint8_matches_rounded_float(arch, tile):
    model = tiny_model(arch)
    lr = smooth_image(30, 26, n=2)
    up = Upscaler(model, SPEC[arch], 4, 'cpu', tile=tile, tile_overlap=4)
    sr, _ = up.upscale(lr)
    u8 = up.upscale_uint8(lr)
    assert u8.dtype == torch.uint8 and u8.device.type == 'cpu' and u8.shape == (2, 3, 120, 104)
    expected = torch.floor(sr.clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    assert (u8.int() - expected.int()).abs().max() <= 1  # float rounding of the blend only
    assert (u8 != expected).float().mean() < 1e-3


def test_default_path_is_the_plain_pipeline():
    """Default options: exactly model(imagenet-norm(lr)) mapped from [-1, 1] to [0, 1], computed here by hand."""
    model = tiny_model('srresnet')
    lr = smooth_image(20, 18)
    mean = torch.tensor(utils.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(utils.IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = (model((lr - mean) / std) + 1.) / 2.
    sr, sr_y = Upscaler(model, SPEC['srresnet'], 4, 'cpu').upscale(lr)
    assert sr_y is None
    torch.testing.assert_close(sr, expected, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Self-ensemble, precision, channels_last
# ----------------------------------------------------------------------------------------------


def dihedral(x, transpose, flip_h, flip_w):
    """One of the 8 symmetries of the square, built from a transpose and two flips (not from rot90)."""
    if transpose:
        x = x.transpose(-2, -1)
    if flip_h:
        x = x.flip(-2)
    if flip_w:
        x = x.flip(-1)
    return x


def undo_dihedral(y, transpose, flip_h, flip_w):
    if flip_w:
        y = y.flip(-1)
    if flip_h:
        y = y.flip(-2)
    if transpose:
        y = y.transpose(-2, -1)
    return y


SYMMETRIES = [(t, fh, fw) for t in (False, True) for fh in (False, True) for fw in (False, True)]


@pytest.mark.parametrize('arch', ['srresnet', 'espcn'])
def test_self_ensemble_is_mean_of_eight_transformed_outputs(arch):
    model = tiny_model(arch)
    lr = smooth_image(20, 14)  # not square: transposes change the shape
    plain = Upscaler(model, SPEC[arch], 4, 'cpu')
    expected = torch.stack([undo_dihedral(plain.upscale(dihedral(lr, *g))[0], *g) for g in SYMMETRIES]).mean(0)
    out, out_y = Upscaler(model, SPEC[arch], 4, 'cpu', self_ensemble=True).upscale(lr)
    torch.testing.assert_close(out, expected, rtol=0, atol=2e-5)
    assert (out - plain.upscale(lr)[0]).abs().max() > 1e-3  # a random model is not equivariant
    if arch == 'espcn':
        expected_y = torch.stack([undo_dihedral(plain.upscale(dihedral(lr, *g))[1], *g) for g in SYMMETRIES]).mean(0)
        torch.testing.assert_close(out_y, expected_y, rtol=0, atol=2e-5)


class Equivariant(nn.Module):
    """Exactly flip/rotation equivariant: a 1x1 conv, tanh, nearest-neighbour upscaling."""

    def __init__(self, scale):
        super().__init__()
        self.conv, self.up = nn.Conv2d(3, 3, 1), nn.Upsample(scale_factor=scale, mode='nearest')

    def forward(self, x):
        return self.up(torch.tanh(self.conv(x)))


def test_self_ensemble_of_equivariant_model_equals_plain():
    torch.manual_seed(2)
    model = Equivariant(4).eval()
    lr = smooth_image(18, 13)
    plain, _ = Upscaler(model, SPEC['srresnet'], 4, 'cpu').upscale(lr)
    ens, _ = Upscaler(model, SPEC['srresnet'], 4, 'cpu', self_ensemble=True).upscale(lr)
    torch.testing.assert_close(ens, plain, rtol=0, atol=1e-6)


def test_self_ensemble_with_tiles():
    model = tiny_model('srresnet')
    lr = smooth_image(40, 36)
    ref, _ = Upscaler(model, SPEC['srresnet'], 4, 'cpu', self_ensemble=True).upscale(lr)
    out, _ = Upscaler(model, SPEC['srresnet'], 4, 'cpu', self_ensemble=True, tile=24, tile_overlap=8).upscale(lr)
    assert psnr01(out, ref) >= 50.


def test_bf16_on_cpu_close_to_fp32():
    # Measured on this image, seeds 0-2: tiny SRResNet 79-82 dB, tiny ESPCN (Y) 52-56 dB; thresholds leave margin.
    model = tiny_model('srresnet')
    lr = smooth_image(32, 32)
    ref, _ = Upscaler(model, SPEC['srresnet'], 4, 'cpu').upscale(lr)
    seen = []
    hook = model.conv_block1.conv_block[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    out, _ = Upscaler(model, SPEC['srresnet'], 4, 'cpu', precision='bf16').upscale(lr)
    hook.remove()
    assert seen == [torch.bfloat16]  # the network really ran in bf16...
    assert out.dtype == torch.float32  # ...and the result is converted back
    assert 60. < psnr01(out, ref) < math.inf


def test_bf16_y_model_and_tiles():
    model = tiny_model('espcn')
    lr = smooth_image(32, 32)
    ref, ref_y = Upscaler(model, SPEC['espcn'], 4, 'cpu').upscale(lr)
    out, out_y = Upscaler(model, SPEC['espcn'], 4, 'cpu', precision='bf16', tile=16, tile_overlap=6).upscale(lr)
    assert out_y.dtype == torch.float32
    assert 40. < psnr01(out_y, ref_y) < math.inf and 40. < psnr01(out, ref) < math.inf


def test_auto_precision_is_bf16_only_on_cpus_with_native_bf16(monkeypatch):
    model = tiny_model('srresnet')
    lr = smooth_image(24, 20)
    outputs = {p: Upscaler(model, SPEC['srresnet'], 4, 'cpu', precision=p).upscale(lr)[0] for p in ('fp32', 'bf16')}
    assert not torch.equal(outputs['fp32'], outputs['bf16'])  # so that the comparisons below tell them apart
    for native, expected in ((True, 'bf16'), (False, 'fp32')):
        monkeypatch.setattr(utils, 'native_bf16', lambda device, native=native: native)
        auto = Upscaler(model, SPEC['srresnet'], 4, 'cpu', precision='auto')
        assert auto.precision == expected and 'native' in auto.precision_reason
        assert torch.equal(auto.upscale(lr)[0], outputs[expected])  # it really runs what it says
        explicit = Upscaler(model, SPEC['srresnet'], 4, 'cpu', precision='bf16')
        assert explicit.precision == 'bf16'  # what the user asked for, with a word where it is emulated
        assert (explicit.precision_reason is None) == native and ('emulated' in (explicit.precision_reason or '')) \
            != native
        assert Upscaler(model, SPEC['srresnet'], 4, 'cpu', precision='fp32').precision_reason is None
    monkeypatch.setattr(utils, 'native_bf16', lambda device: True)
    fp32_only = dataclasses.replace(SPEC['srresnet'], precisions=('fp32',))
    assert Upscaler(model, fp32_only, 4, 'cpu', precision='auto').precision == 'fp32'  # never what the net can't
    espcn = Upscaler(tiny_model('espcn', 3), SPEC['espcn'], 3, 'cpu', precision='auto')  # bf16 no faster for it
    assert espcn.precision == 'fp32' and 'no faster' in espcn.precision_reason
    assert Upscaler(tiny_model('srcnn', 3), SPEC['srcnn'], 3, 'cpu', precision='auto').precision == 'bf16'
    assert utils.auto_precision('cuda') == ('fp32', 'bf16 on cuda is not measured yet')


def test_precision_errors():
    model = tiny_model('srresnet')
    with pytest.raises(UserError, match='fp16 needs a CUDA'):
        Upscaler(model, SPEC['srresnet'], 4, 'cpu', precision='fp16')
    with pytest.raises(UserError, match='choose fp32'):
        Upscaler(model, SPEC['srresnet'], 4, 'cpu', precision='int8')


def test_channels_last_matches():
    model = tiny_model('srresnet')
    lr = smooth_image(21, 19)
    ref, _ = Upscaler(model, SPEC['srresnet'], 4, 'cpu').upscale(lr)
    out, _ = Upscaler(tiny_model('srresnet'), SPEC['srresnet'], 4, 'cpu', channels_last=True).upscale(lr)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Bicubic in bands of rows
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize('scale', [2, 3, 4])
def test_bicubic_upscale_equals_imresize(scale):
    g = torch.Generator().manual_seed(scale)
    img = torch.randint(0, 256, (4, 19, 23), dtype=torch.uint8, generator=g)
    expected = utils.imresize(img, scale)
    out = utils.bicubic_upscale(img, scale, chunk_bytes=20000)  # a few rows per band
    assert out.dtype == torch.uint8 and out.shape == (4, 19 * scale, 23 * scale)
    assert torch.equal(out, expected)
    flt = img.double() / 255.
    torch.testing.assert_close(utils.bicubic_upscale(flt, scale, chunk_bytes=20000), utils.imresize(flt, scale),
                               rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# fuse: BatchNorm folding and the last convolution on the sub-pixel grid
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize('r,k', [(2, 9), (2, 3), (3, 3), (2, 5), (3, 9)])
def test_subpixel_conv_equals_conv_after_shuffle(r, k):
    torch.manual_seed(r * 10 + k)
    conv = nn.Conv2d(4, 3, k, padding=k // 2)
    z = torch.randn(2, 4 * r * r, 7, 6)
    new = models.subpixel_conv(conv, r)
    with torch.no_grad():
        expected = conv(nn.functional.pixel_shuffle(z, r))
        got = nn.functional.pixel_shuffle(new(z), r)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert models.subpixel_conv(nn.Conv2d(4, 3, 3, padding=0), r) is None  # not 'same' padding: refused


@pytest.mark.parametrize('arch,scale', [('srresnet', 2), ('srresnet', 4), ('srresnet', 8), ('edsr', 3),
                                        ('edsr', 4), ('rcan', 2), ('espcn', 4), ('srcnn', 3)])
def test_fuse_matches_and_leaves_the_model_alone(arch, scale):
    model = tiny_model(arch, scale)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lr = smooth_image(19, 23)
    ref, ref_y = Upscaler(model, SPEC[arch], scale, 'cpu').upscale(lr)
    up = Upscaler(model, SPEC[arch], scale, 'cpu', fuse=True, channels_last=True)
    out, out_y = up.upscale(lr)
    torch.testing.assert_close(out, ref, rtol=0, atol=2e-5)
    if ref_y is not None:
        torch.testing.assert_close(out_y, ref_y, rtol=0, atol=2e-5)
    assert up.model is not model and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in up.model.modules())
    if arch == 'srresnet':
        assert up.model.tail_before_shuffle and not model.tail_before_shuffle  # the 9x9 conv moved, on the copy
    if arch in ('edsr', 'rcan'):
        assert isinstance(up.model.tail[-1], nn.PixelShuffle)


# ----------------------------------------------------------------------------------------------
# Networks with size requirements and precision limits (ArchSpec built at load time, e.g. spandrel's)
# ----------------------------------------------------------------------------------------------


class NeedsMultipleOf8(nn.Module):
    """x2 nearest upscale plus a 3x3 conv, refusing inputs whose sides are not multiples of 8."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        assert x.shape[-2] % 8 == 0 and x.shape[-1] % 8 == 0 and x.shape[-1] == x.shape[-2], x.shape
        return self.conv(nn.functional.interpolate(x, scale_factor=2))


def test_inputs_are_padded_to_the_spec_and_outputs_cropped():
    spec = models.ArchSpec('needs8', NeedsMultipleOf8, 'a test', scales=(2,), color='rgb', in_type='[0, 1]',
                           out_type='[0, 1]', min_size=16, multiple_of=8, square=True, precisions=('fp32',))
    torch.manual_seed(0)
    net = NeedsMultipleOf8().eval()
    x = torch.rand(1, 3, 13, 21)
    padded = nn.functional.pad(x, (0, 3, 0, 11), mode='reflect')  # 13 x 21 -> 24 x 24: square, multiples of 8
    with torch.no_grad():
        expected = net(padded)[..., :26, :42]
    upscaler = Upscaler(net, spec, 2, 'cpu', self_ensemble=True)
    assert torch.equal(Upscaler(net, spec, 2, 'cpu').upscale(x)[0], expected)
    assert upscaler.upscale(x)[0].shape == (1, 3, 26, 42)  # every rotation padded too
    tiny = torch.rand(1, 3, 2, 3)  # too short to reflect up to 16: replicated beyond
    assert inference.pad_to_requirements(tiny, spec).shape[-2:] == (16, 16)
    assert Upscaler(net, spec, 2, 'cpu', tile=16, tile_overlap=4).upscale(torch.rand(1, 3, 30, 20))[0].shape == \
        (1, 3, 60, 40)
    assert Upscaler(net, spec, 2, 'cpu').memory_per_pixel() > 0  # the probe respects the requirements
    with pytest.raises(UserError, match='--precision bf16: needs8 runs in fp32 only'):
        Upscaler(net, spec, 2, 'cpu', precision='bf16')


# ----------------------------------------------------------------------------------------------
# --max-memory auto (docs/upscaling.md: half the free GPU memory on CUDA, else a quarter of the available RAM,
# at most 1 GiB)
# ----------------------------------------------------------------------------------------------


def fake_meminfo(monkeypatch, available_kib):
    """/proc/meminfo as inference reads it, with MemAvailable = available_kib (None: the file cannot be read)."""
    import io

    def fake_open(path, *args, **kwargs):
        if path != '/proc/meminfo':
            return open(path, *args, **kwargs)
        if available_kib is None:
            raise FileNotFoundError(2, 'No such file or directory', path)
        return io.StringIO(f"MemTotal:       99999999 kB\nMemFree:          123456 kB\n"
                           f"MemAvailable:   {available_kib:8d} kB\nBuffers:           1000 kB\n")
    monkeypatch.setattr(inference, 'open', fake_open, raising=False)


@pytest.mark.parametrize('available_gib, budget', [(2, 2 ** 29), (3.5, 7 * 2 ** 27), (4, 2 ** 30), (64, 2 ** 30)])
def test_auto_memory_budget_is_a_quarter_of_available_ram_at_most_1_gib(monkeypatch, available_gib, budget):
    fake_meminfo(monkeypatch, int(available_gib * 2 ** 20))
    assert inference.auto_memory_budget('cpu') == budget


def test_auto_memory_budget_without_proc_meminfo(monkeypatch):
    fake_meminfo(monkeypatch, None)
    pages = {'SC_AVPHYS_PAGES': 2 ** 18, 'SC_PAGE_SIZE': 4096}  # 1 GiB available
    monkeypatch.setattr(os, 'sysconf', lambda name: pages[name])
    assert inference.auto_memory_budget('cpu') == 2 ** 28
    monkeypatch.setattr(os, 'sysconf', lambda name: (_ for _ in ()).throw(ValueError(name)))
    assert inference.auto_memory_budget('cpu') == 2 ** 30  # nothing known: 4 GiB assumed, a quarter of it


def test_auto_memory_budget_on_cuda_is_half_the_free_memory(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'mem_get_info', lambda device: (6 * 2 ** 30 + 2, 80 * 2 ** 30))
    assert inference.auto_memory_budget('cuda') == 3 * 2 ** 30 + 1  # no 1 GiB cap on a GPU


@pytest.mark.skipif(not os.path.exists('/proc/meminfo'), reason='no /proc/meminfo on this OS')
def test_auto_memory_budget_of_this_machine():
    with open('/proc/meminfo') as f:
        available = next(int(line.split()[1]) * 1024 for line in f if line.startswith('MemAvailable:'))
    assert 0 < inference.auto_memory_budget('cpu') <= min(2 ** 30, available // 4 + 2 ** 26)  # RAM moves a little
