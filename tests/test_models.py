"""Architectures: the tutorial's parameter counts and state_dict keys, shapes, VGG truncation and weights."""
import math
import os
import urllib.error

import pytest
import torch
from torch import nn

import models
from conftest import doc_text


def test_srresnet_x4_matches_tutorial_parameter_count_and_keys():
    model = models.SRResNet()
    assert models.count_parameters(model) == 1_549_462
    keys = model.state_dict().keys()
    for key in ('conv_block1.conv_block.0.weight', 'residual_blocks.0.conv_block1.conv_block.1.running_mean',
                'subpixel_convolutional_blocks.0.conv.weight', 'subpixel_convolutional_blocks.1.prelu.weight',
                'conv_block3.conv_block.0.bias', 'residual_blocks.15.conv_block2.conv_block.1.num_batches_tracked'):
        assert key in keys
    assert 'residual_blocks.16.conv_block1.conv_block.0.weight' not in keys


@pytest.mark.parametrize('scale', [2, 4, 8])
def test_srresnet_scales_output_shape_and_range(scale):
    model = models.SRResNet(n_channels=8, n_blocks=2, scaling_factor=scale).eval()
    out = model(torch.randn(2, 3, 12, 10))
    assert out.shape == (2, 3, 12 * scale, 10 * scale)
    assert out.abs().max() <= 1  # tanh output
    assert len(model.subpixel_convolutional_blocks) == int(math.log2(scale))


@pytest.mark.parametrize('scale', [3, 5, 1])
def test_srresnet_rejects_other_scales(scale):
    with pytest.raises(ValueError, match='2, 4 or 8'):
        models.SRResNet(scaling_factor=scale)


def test_generator_keys_are_net_plus_srresnet_keys_and_warm_start_works():
    srresnet = models.SRResNet(n_channels=8, n_blocks=2)
    generator = models.Generator(n_channels=8, n_blocks=2)
    assert list(generator.state_dict()) == ['net.' + k for k in srresnet.state_dict()]
    generator.net.load_state_dict(srresnet.state_dict())
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(generator.eval()(x), srresnet.eval()(x))


def test_discriminator_parameter_count_logits_and_fc_size():
    d = models.Discriminator()
    assert models.count_parameters(d) == 23_565_505
    assert d(torch.randn(3, 3, 96, 96)).shape == (3, 1)
    # The tutorial's fc2 ignored fc_size (hard-coded 1024); any size must work now.
    small = models.Discriminator(n_channels=8, n_blocks=4, fc_size=16)
    assert small.fc2.in_features == 16
    assert small(torch.randn(2, 3, 48, 48)).shape == (2, 1)


def test_truncated_vgg19_keeps_conv5_4_and_its_relu_and_is_frozen(capsys):
    vgg = models.TruncatedVGG19(5, 4, weights='random')
    layers = list(vgg.truncated_vgg19)
    assert len(layers) == 36
    assert isinstance(layers[-1], nn.ReLU) and isinstance(layers[-2], nn.Conv2d)
    assert sum(isinstance(m, nn.Conv2d) for m in layers) == 16
    assert not any(p.requires_grad for p in vgg.parameters())
    vgg.train()
    assert not vgg.training
    assert vgg(torch.randn(1, 3, 64, 48)).shape == (1, 512, 4, 3)
    assert 'RANDOM' in capsys.readouterr().err


def test_truncated_vgg19_i2_j2_and_invalid_choice():
    vgg = models.TruncatedVGG19(2, 2, weights='random')
    assert len(vgg.truncated_vgg19) == 9  # conv1_1 relu conv1_2 relu pool conv2_1 relu conv2_2 relu
    with pytest.raises(ValueError):
        models.TruncatedVGG19(6, 1, weights='random')


def test_vgg_weights_from_a_file(tmp_path):
    import torchvision
    reference = torchvision.models.vgg19(weights=None)
    path = tmp_path / 'vgg19.pth'
    torch.save(reference.state_dict(), path)
    vgg = models.TruncatedVGG19(5, 4, weights=str(path))
    assert torch.equal(vgg.truncated_vgg19[34].weight, reference.features[34].weight)


def test_vgg_weights_missing_file_or_offline_give_one_clear_error(tmp_path, monkeypatch):
    with pytest.raises(models.VGGWeightsError, match='--vgg-weights'):
        models.TruncatedVGG19(weights=str(tmp_path / 'absent.pth'))

    def offline(*args, **kwargs):
        raise urllib.error.URLError('no network')
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))  # an empty torch hub cache
    monkeypatch.setattr(torch.hub, 'download_url_to_file', offline)
    with pytest.raises(models.VGGWeightsError) as err:
        models.TruncatedVGG19()
    message = str(err.value)
    assert '\n' not in message and 'torch hub cache' in message and '--vgg-weights PATH' in message
    assert os.path.join(str(tmp_path / 'torch'), 'hub', 'checkpoints', 'vgg19-dcbb9e9d.pth') in message


# ---- a state_dict written by the tutorial's own classes loads unchanged --------------------------------
# An independent transcription of the tutorial's SRResNet (seed 000), used only to produce a state_dict.

class _TutConvBlock(nn.Module):
    def __init__(self, cin, cout, k, stride=1, batch_norm=False, activation=None):
        super().__init__()
        layers = [nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2)]
        if batch_norm:
            layers.append(nn.BatchNorm2d(cout))
        if activation == 'prelu':
            layers.append(nn.PReLU())
        elif activation == 'tanh':
            layers.append(nn.Tanh())
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x):
        return self.conv_block(x)


class _TutResBlock(nn.Module):
    def __init__(self, k, c):
        super().__init__()
        self.conv_block1 = _TutConvBlock(c, c, k, batch_norm=True, activation='prelu')
        self.conv_block2 = _TutConvBlock(c, c, k, batch_norm=True)

    def forward(self, x):
        return self.conv_block2(self.conv_block1(x)) + x


class _TutSubPixel(nn.Module):
    def __init__(self, k, c, s):
        super().__init__()
        self.conv = nn.Conv2d(c, c * s * s, k, padding=k // 2)
        self.pixel_shuffle = nn.PixelShuffle(s)
        self.prelu = nn.PReLU()

    def forward(self, x):
        return self.prelu(self.pixel_shuffle(self.conv(x)))


class _TutSRResNet(nn.Module):
    def __init__(self, lk=9, sk=3, c=64, n=16, s=4):
        super().__init__()
        self.conv_block1 = _TutConvBlock(3, c, lk, activation='prelu')
        self.residual_blocks = nn.Sequential(*[_TutResBlock(sk, c) for _ in range(n)])
        self.conv_block2 = _TutConvBlock(c, c, sk, batch_norm=True)
        self.subpixel_convolutional_blocks = nn.Sequential(*[_TutSubPixel(sk, c, 2) for _ in range(int(math.log2(s)))])
        self.conv_block3 = _TutConvBlock(c, 3, lk, activation='tanh')

    def forward(self, x):
        out = self.conv_block1(x)
        out = self.conv_block2(self.residual_blocks(out)) + out
        return self.conv_block3(self.subpixel_convolutional_blocks(out))


def test_tutorial_state_dict_loads_unchanged_and_gives_identical_outputs():
    torch.manual_seed(0)
    tut = _TutSRResNet()
    for m in tut.modules():  # non-trivial BN statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    ours = models.SRResNet()
    ours.load_state_dict(tut.state_dict())  # strict: same keys, same shapes
    x = torch.randn(1, 3, 16, 16)
    assert torch.equal(ours.eval()(x), tut.eval()(x))


@pytest.mark.parametrize('scale,channels_last', [(2, False), (4, True), (8, False)])
def test_training_rewrites_same_outputs_and_gradients(scale, channels_last):
    """The training-speed rewrites (tail before shuffle, fast PReLU backward) compute the tutorial's function:
    outputs and every parameter's gradient match the tutorial's order (train mode, batch statistics), and the
    state_dict is untouched."""
    torch.manual_seed(scale)
    ref = models.SRResNet(n_channels=8, n_blocks=2, scaling_factor=scale)
    fast = models.SRResNet(n_channels=8, n_blocks=2, scaling_factor=scale)
    fast.load_state_dict(ref.state_dict())
    assert fast.use_tail_before_shuffle() and not ref.tail_before_shuffle
    assert models.use_fast_prelu(fast) == 3 + int(math.log2(scale))  # head, 2 residual blocks, 1 per x2 upsampler
    assert list(fast.state_dict()) == list(ref.state_dict())
    x = torch.randn(3, 3, 7, 6)
    if channels_last:
        fast, x_fast = fast.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    else:
        x_fast = x
    target = torch.rand(3, 3, 7 * scale, 6 * scale) * 2 - 1
    out_ref, out_fast = ref(x), fast(x_fast)
    torch.testing.assert_close(out_fast, out_ref, rtol=0, atol=1e-5)
    nn.functional.mse_loss(out_ref, target).backward()
    nn.functional.mse_loss(out_fast, target).backward()
    for (name, p_ref), p_fast in zip(ref.named_parameters(), fast.parameters()):
        torch.testing.assert_close(p_fast.grad, p_ref.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize('channels_last', [False, True])
def test_fast_prelu_backward_matches_torch(channels_last):
    """The same output and input gradient bit for bit; the weight gradient equals a float64 sum."""
    torch.manual_seed(0)
    x = torch.randn(4, 8, 12, 10)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ref, fast = nn.PReLU(init=0.3), models.PReLU(init=0.3)
    assert models.use_fast_prelu(fast) == 1
    x_ref, x_fast = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ref, y_fast = ref(x_ref), fast(x_fast)
    assert y_fast.grad_fn.name() == '_PReLUFunctionBackward'  # the fast path ran
    assert torch.equal(y_fast, y_ref)
    grad = torch.randn_like(y_ref)
    y_ref.backward(grad)
    y_fast.backward(grad)
    assert torch.equal(x_fast.grad, x_ref.grad)
    exact = (grad.double() * x.double().clamp(max=0)).sum().reshape(1)
    torch.testing.assert_close(fast.weight.grad.double(), exact, rtol=1e-6, atol=0)
    torch.testing.assert_close(fast.weight.grad, ref.weight.grad, rtol=1e-5, atol=0)


def test_fast_prelu_is_torch_prelu_where_it_does_not_apply():
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    prelu, per_channel = models.PReLU(), models.PReLU(4)
    assert prelu(x).grad_fn.name() != '_PReLUFunctionBackward'  # off until use_fast_prelu
    models.use_fast_prelu(prelu)
    models.use_fast_prelu(per_channel)
    assert prelu(x).grad_fn.name() == '_PReLUFunctionBackward'
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert prelu(x.bfloat16()).grad_fn.name() != '_PReLUFunctionBackward'
    assert per_channel(x).grad_fn.name() != '_PReLUFunctionBackward'
    with torch.no_grad():
        assert torch.equal(prelu(x), nn.functional.prelu(x, prelu.weight))
    models.use_fast_prelu(prelu, False)
    assert prelu(x).grad_fn.name() != '_PReLUFunctionBackward'


@pytest.mark.parametrize('channels_last', [False, True])
def test_fast_tanh_matches_float64_tanh_forward_and_backward(channels_last):
    """Output within 2e-7 of tanh computed in float64 (torch's own float32 tanh is within 3e-8), the input gradient
    g * (1 - tanh(x)^2) within 1e-6, over [-30, 30] and in both memory formats."""
    x = torch.linspace(-30, 30, 4 * 8 * 25 * 25).reshape(4, 8, 25, 25)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x = x.requires_grad_()
    tanh = models.Tanh()
    assert models.use_fast_tanh(tanh) == 1
    y = tanh(x)
    assert y.grad_fn.name() == '_TanhFunctionBackward'  # the fast path ran
    exact = torch.tanh(x.detach().double())
    assert (y.double() - exact).abs().max() < 2e-7
    grad = torch.randn_like(y)
    y.backward(grad)
    torch.testing.assert_close(x.grad.double(), grad.double() * (1 - exact ** 2), rtol=0, atol=1e-6)


def test_fast_tanh_in_bf16_is_tanh_within_2e_7_then_rounded_to_bf16():
    """bf16 in, bf16 out: within 2e-7 of float64 tanh before the one rounding to bf16 (relative 2^-8), and equal to
    torch's own bf16 tanh for nearly every value (they differ near 0, where 2e-7 is many bf16 steps)."""
    x = torch.linspace(-8, 8, 200_001).bfloat16().requires_grad_()
    tanh = models.Tanh()
    models.use_fast_tanh(tanh)
    y = tanh(x)
    assert y.dtype == torch.bfloat16 and y.grad_fn.name() == '_TanhFunctionBackward'
    exact = torch.tanh(x.detach().double())
    assert ((y.detach().double() - exact).abs() <= 2e-7 + 2 ** -8 * exact.abs()).all()  # bf16 unit roundoff 2^-8
    assert (y.detach() != torch.tanh(x.detach())).float().mean() < 1e-3
    grad = torch.randn_like(y)
    y.backward(grad)
    assert torch.equal(x.grad, torch.ops.aten.tanh_backward(grad, y.detach()))


def test_fast_tanh_is_torch_tanh_where_it_does_not_apply():
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    tanh = models.Tanh()
    assert tanh(x).grad_fn.name() == 'TanhBackward0'  # off until use_fast_tanh
    models.use_fast_tanh(tanh)
    assert tanh(x.double()).grad_fn.name() == 'TanhBackward0'
    assert tanh(x.half()).grad_fn.name() == 'TanhBackward0'
    models.use_fast_tanh(tanh, False)
    assert torch.equal(tanh(x), torch.tanh(x))
    espcn = models.ESPCN(3)
    assert models.use_fast_tanh(espcn) == 2 and list(espcn.state_dict()) == list(models.ESPCN(3).state_dict())


def test_tail_before_shuffle_stays_off_when_it_would_change_the_function():
    model = models.SRResNet(n_channels=8, n_blocks=1, scaling_factor=2)
    model.subpixel_convolutional_blocks[-1].prelu = nn.PReLU(8)  # per-channel: does not commute with the shuffle
    assert model.use_tail_before_shuffle() is False and model.tail_before_shuffle is False
    even = models.SRResNet(large_kernel_size=4, n_channels=8, n_blocks=1, scaling_factor=2)
    assert even.use_tail_before_shuffle() is False  # padding 2 around a 4x4 kernel is not 'same'


# ---- the registry and the other architectures ---------------------------------------------------------

def test_build_model_records_full_config_and_rejects_bad_input():
    config = models.model_config('espcn', 3, channels=(16, 8))
    assert config['channels'] == [16, 8] and config['scaling_factor'] == 3 and config['activation'] == 'tanh'
    assert models.build_model('espcn', config)(torch.rand(1, 1, 5, 7)).shape == (1, 1, 15, 21)
    with pytest.raises(ValueError, match='no option'):
        models.model_config('edsr', 4, n_blocks=3)
    with pytest.raises(ValueError, match='supports scales'):
        models.build_model('srresnet', models.model_config('srresnet', 3))
    with pytest.raises(ValueError, match='unknown architecture'):
        models.build_model('vdsr', {'scaling_factor': 2})


def conv_params(cin, cout, k):
    return cin * cout * k * k + cout


def test_srcnn_and_espcn_parameter_counts_by_formula():
    assert models.count_parameters(models.SRCNN()) == conv_params(1, 64, 9) + conv_params(64, 32, 1) + conv_params(
        32, 1, 5)
    for s in (2, 3, 4, 8):
        expected = conv_params(1, 64, 5) + conv_params(64, 32, 3) + conv_params(32, s * s, 3)
        assert models.count_parameters(models.ESPCN(s)) == expected


def test_srcnn_keeps_size_and_espcn_seed004_variant():
    assert models.SRCNN()(torch.rand(2, 1, 21, 17)).shape == (2, 1, 21, 17)
    wide = models.ESPCN(3, channels=(512, 256, 64), kernel_sizes=(5, 3, 3, 3), activation='relu',
                        final_activation='relu', init='orthogonal')
    assert wide(torch.rand(1, 1, 8, 8)).shape == (1, 1, 24, 24)
    w = wide.body[0].weight.flatten(1)  # (512, 25): orthogonal columns
    assert torch.allclose(w.T @ w, torch.eye(25), atol=1e-4)


def edsr_params(n_blocks, f, s):
    ups = {2: [4], 3: [9], 4: [4, 4], 8: [4, 4, 4]}[s]
    return (conv_params(3, f, 3) + n_blocks * 2 * conv_params(f, f, 3) + conv_params(f, f, 3)
            + sum(conv_params(f, m * f, 3) for m in ups) + conv_params(f, 3, 3) + 2 * conv_params(3, 3, 1))


@pytest.mark.parametrize('scale', [2, 3, 4, 8])
def test_edsr_parameter_counts_and_shapes(scale):
    assert models.count_parameters(models.EDSR(scale)) == edsr_params(16, 64, scale)
    tiny = models.EDSR(scale, n_resblocks=2, n_feats=8)
    assert tiny(torch.rand(1, 3, 6, 5) * 255).shape == (1, 3, 6 * scale, 5 * scale)


def test_edsr_full_size_and_rcan_published_size():
    assert models.count_parameters(models.EDSR(4, 32, 256, 0.1)) == edsr_params(32, 256, 4)
    f, r = 64, 16
    rcab = 2 * conv_params(f, f, 3) + conv_params(f, f // r, 1) + conv_params(f // r, f, 1)
    expected = (conv_params(3, f, 3) + 10 * (20 * rcab + conv_params(f, f, 3)) + conv_params(f, f, 3)
                + 2 * conv_params(f, 4 * f, 3) + conv_params(f, 3, 3) + 2 * conv_params(3, 3, 1))
    rcan = models.RCAN(4)
    assert models.count_parameters(rcan) == expected
    assert 15.5e6 < expected < 15.7e6  # "about 15.6 M" in the RCAN paper
    assert 'body.0.body.0.body.3.conv_du.0.weight' in rcan.state_dict()  # EDSR-PyTorch's key layout


@pytest.mark.parametrize('scale', [2, 3, 4, 8])
def test_rcan_tiny_shapes_and_mean_shift_is_frozen(scale):
    model = models.RCAN(scale, n_resgroups=2, n_resblocks=2, n_feats=16, reduction=4)
    assert model(torch.rand(1, 3, 7, 6) * 255).shape == (1, 3, 7 * scale, 6 * scale)
    assert not model.sub_mean.weight.requires_grad and not model.add_mean.bias.requires_grad
    x = torch.full((1, 3, 2, 2), 100.)
    assert torch.allclose(model.sub_mean(x)[0, :, 0, 0], 100. - 255. * torch.tensor(models.DIV2K_RGB_MEAN))


def test_channel_attention_gates_each_channel_by_its_mean():
    ca = models.CALayer(8, reduction=4)
    x = torch.randn(2, 8, 5, 5)
    gate = torch.sigmoid(ca.conv_du[2](torch.relu(ca.conv_du[0](x.mean(dim=(2, 3), keepdim=True)))))
    assert torch.allclose(ca(x), x * gate, atol=1e-6)


# ---- MSRResNet (BasicSR's modified SRResNet) ---------------------------------------------------------------

def msrresnet_params(n_blocks, f, s):
    ups = [4, 4] if s == 4 else [s * s]
    return (conv_params(3, f, 3) + n_blocks * 2 * conv_params(f, f, 3) + sum(conv_params(f, m * f, 3) for m in ups)
            + conv_params(f, f, 3) + conv_params(f, 3, 3))


@pytest.mark.parametrize('scale', [2, 3, 4])
def test_msrresnet_parameter_counts_keys_and_shapes(scale):
    model = models.MSRResNet(scale)
    assert models.count_parameters(model) == msrresnet_params(16, 64, scale)
    keys = set(model.state_dict())  # BasicSR's names: its checkpoints load unchanged
    assert {'conv_first.weight', 'body.15.conv2.bias', 'upconv1.weight', 'conv_hr.weight', 'conv_last.bias'} <= keys
    assert ('upconv2.weight' in keys) == (scale == 4) and 'body.16.conv1.weight' not in keys
    tiny = models.build_model('msrresnet', models.model_config('msrresnet', scale, n_channels=8, n_blocks=2))
    assert tiny(torch.rand(2, 3, 7, 5)).shape == (2, 3, 7 * scale, 5 * scale)
    assert models.infer_msrresnet_config(tiny.state_dict()) == {'scaling_factor': scale, 'n_channels': 8,
                                                                'n_blocks': 2}
    with pytest.raises(ValueError, match='2, 3 or 4'):
        models.MSRResNet(8)


def test_msrresnet_learns_a_residual_over_bilinear_and_has_basicsrs_init():
    torch.manual_seed(0)
    model = models.MSRResNet(2, n_channels=16, n_blocks=2)
    w = model.body[0].conv1.weight
    assert torch.all(model.conv_first.bias == 0) and torch.all(model.body[1].conv2.bias == 0)
    assert w.std().item() == pytest.approx(0.1 * math.sqrt(2 / (16 * 9)), rel=0.15)  # Kaiming-normal x 0.1
    with torch.no_grad():
        model.conv_last.weight.zero_()
        model.conv_last.bias.zero_()
    x = torch.rand(1, 3, 6, 7)
    bilinear = nn.functional.interpolate(x, scale_factor=2, mode='bilinear', align_corners=False)
    assert torch.equal(model(x), bilinear)


def test_fuse_folds_batchnorm_only_in_sequentials_that_run_in_order():
    class Reversed(nn.Sequential):  # runs its children backwards: folding BN into the conv "before" it is wrong
        def forward(self, x):
            for m in reversed(self):
                x = m(x)
            return x

    net = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3), Reversed(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)))
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
    fused = models.fuse_for_inference(net)
    assert isinstance(fused[1], nn.Identity) and isinstance(fused[2][1], nn.BatchNorm2d)
    x = torch.rand(1, 3, 4, 4)
    torch.testing.assert_close(fused(x), net.eval()(x))


def test_arch_spec_follows_edsrs_value_range():
    assert models.arch_spec('edsr', models.model_config('edsr', 2)).in_type == '[0, 255]'
    spec = models.arch_spec('rcan', models.model_config('rcan', 2, rgb_range=1))
    assert spec.in_type == spec.out_type == '[0, 1]' and spec.name == 'rcan'
    with pytest.raises(ValueError, match='rgb_range 2'):
        models.arch_spec('edsr', {'rgb_range': 2})


def rcan_params(f=64, r=16, groups=10, blocks=20):
    rcab = 2 * conv_params(f, f, 3) + conv_params(f, f // r, 1) + conv_params(f // r, f, 1)
    return (conv_params(3, f, 3) + groups * (blocks * rcab + conv_params(f, f, 3)) + conv_params(f, f, 3)
            + 2 * conv_params(f, 4 * f, 3) + conv_params(f, 3, 3) + 2 * conv_params(3, 3, 1))


def test_readme_parameter_counts_are_the_models_and_the_formulas():
    """The Architectures table (docs/architectures.md): every parameter count it prints is the model's and the
    layer-by-layer formula's (the tutorial's SRResNet and Discriminator counts: the tutorial's own numbers, tested
    above)."""
    readme = doc_text('architectures.md')
    table = readme.split('| arch | paper | parameters |', 1)[1].split('\n\n', 1)[0].splitlines()[2:]
    rows = {line.split('|')[1].strip(): line.split('|')[3].strip() for line in table}
    expected = {
        '`srresnet`': ('1,549,462 (x4)', models.SRResNet(), 1_549_462),
        'SRGAN generator': ('1,549,462 (x4); D 23,565,505', models.Generator(), 1_549_462),
        # seed 001's Keras layers: a PReLU slope per channel in each of the 19 PReLUs (PyTorch's: one)
        '`srgan_keras` (SRGAN generator, `--variant keras`)': ('1,550,659 (x4); D 5,215,425',
                                                               models.KerasSRGANGenerator(), 1_549_462 + 19 * 63),
        '`srcnn` 9-1-5': ('8,129', models.SRCNN(), conv_params(1, 64, 9) + conv_params(64, 32, 1)
                          + conv_params(32, 1, 5)),
        '`espcn`': ('22,729 (x3)', models.ESPCN(3), conv_params(1, 64, 5) + conv_params(64, 32, 3)
                    + conv_params(32, 9, 3)),
        '`edsr` baseline': ('1,517,595 (x4)', models.EDSR(4), edsr_params(16, 64, 4)),
        '`edsr` full (`--model-opt n_resblocks=32 n_feats=256 res_scale=0.1`)':
            ('43,089,947 (x4)', models.EDSR(4, 32, 256, 0.1), edsr_params(32, 256, 4)),
        '`rcan`': ('15,592,379 (x4)', models.RCAN(4), rcan_params()),
        '`msrresnet`': ('1,517,571 (x4)', models.MSRResNet(4), msrresnet_params(16, 64, 4)),
    }
    for name, (cell, model, count) in expected.items():
        assert rows[name] == cell, name
        assert models.count_parameters(model) == count == int(cell.split()[0].replace(',', '')), name
    assert models.count_parameters(models.Discriminator()) == 23_565_505
    # Keras's discriminator: global average pooling into dense 1024, not 6x6 x 512 into fc 1024
    keras_d = 23_565_505 - conv_params(6 * 6 * 512, 1024, 1) + conv_params(512, 1024, 1)
    assert models.count_parameters(models.KerasSRGANDiscriminator()) == keras_d == 5_215_425
    assert set(rows) == set(expected)  # every row of the table checked
