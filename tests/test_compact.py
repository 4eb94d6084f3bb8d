"""SRVGGNetCompact, Real-ESRGAN's compact network: its size, its published key layout, and its output against
spandrel's own implementation of the same network for the same weights."""
import pytest
import torch

import checkpoints
import models


def count_by_hand(num_feat, num_conv, scale):
    """SRVGGNetCompact's parameters, layer by layer: 3x3 convolutions (weights + biases) and a PReLU weight per
    channel after each but the last convolution."""
    first = 3 * num_feat * 9 + num_feat
    middle = num_conv * (num_feat * num_feat * 9 + num_feat)
    last = num_feat * 3 * scale * scale * 9 + 3 * scale * scale
    prelus = (num_conv + 1) * num_feat
    return first + middle + last + prelus


@pytest.mark.parametrize('num_feat, num_conv, scale', [(64, 16, 4), (64, 32, 4), (8, 2, 2), (16, 3, 3)])
def test_parameter_count_matches_the_layers_counted_by_hand(num_feat, num_conv, scale):
    model = models.SRVGGNetCompact(scale, num_feat=num_feat, num_conv=num_conv)
    assert models.count_parameters(model) == count_by_hand(num_feat, num_conv, scale)


def test_the_releases_sizes():
    """realesr-general-x4v3 (num_conv 32) has 1.21M parameters, realesr-animevideov3 (num_conv 16) 0.62M."""
    assert count_by_hand(64, 32, 4) == 1_213_296 and count_by_hand(64, 16, 4) == 621_424


def published_state_dict(num_feat, num_conv, scale, seed):
    """A state_dict in Real-ESRGAN's key layout (body.<i>.weight / .bias, PReLU weights at the odd indices), built
    by hand with random values (PReLU slopes too, so that they matter)."""
    g = torch.Generator().manual_seed(seed)
    sd, channels = {}, 3
    for i in range(num_conv + 2):
        out = 3 * scale * scale if i == num_conv + 1 else num_feat
        sd[f'body.{2 * i}.weight'] = torch.randn(out, channels, 3, 3, generator=g) * (2. / (9 * channels)) ** 0.5
        sd[f'body.{2 * i}.bias'] = torch.randn(out, generator=g) * 0.01
        if i <= num_conv:
            sd[f'body.{2 * i + 1}.weight'] = torch.rand(num_feat, generator=g) * 0.5
        channels = out
    return sd


def test_config_is_read_off_the_published_layout_and_rejects_others():
    sd = published_state_dict(8, 3, 3, seed=0)
    assert models.infer_srvgg_config(sd) == {'scaling_factor': 3, 'num_feat': 8, 'num_conv': 3,
                                             'act_type': 'prelu'}
    relu = {k: v for k, v in sd.items() if v.dim() != 1 or k.endswith('bias')}  # no PReLU weights
    assert models.infer_srvgg_config(relu)['act_type'] == 'relu'
    broken = dict(sd, **{'body.4.weight': torch.zeros(8, 4, 3, 3)})
    with pytest.raises(ValueError, match='body.4.weight'):
        models.infer_srvgg_config(broken)
    five = published_state_dict(8, 1, 2, seed=0)
    five['body.4.weight'], five['body.4.bias'] = torch.zeros(75, 8, 3, 3), torch.zeros(75)  # 3 x 5^2: no such scale
    with pytest.raises(ValueError, match='75 channels'):
        models.infer_srvgg_config(five)


@pytest.mark.parametrize('scale', [2, 4])
def test_released_style_checkpoint_loads_strictly_and_runs_as_spandrel_runs_it(tmp_path, scale):
    """A BasicSR-style file ({'params', 'params_ema'}) in the published layout: the suite's reading picks the EMA
    weights; the suite's SRVGGNetCompact, built from the configuration read off them, loads them strictly and gives
    spandrel's output for the same weights."""
    pytest.importorskip('spandrel')
    ema, raw = published_state_dict(8, 2, scale, seed=1), published_state_dict(8, 2, scale, seed=2)
    path = tmp_path / 'realesr-compact.pth'
    torch.save({'params': raw, 'params_ema': ema}, path)
    info = checkpoints.load_sr_model(str(path))
    assert info.arch == 'Compact' and info.selected == 'ema'  # spandrel's name for the same network
    assert info.state.keys() == ema.keys() and all(torch.equal(info.state[k], ema[k]) for k in ema)
    config = models.infer_srvgg_config(info.state)
    ours = models.build_model('srvgg_compact', models.model_config('srvgg_compact', config.pop('scaling_factor'),
                                                                    **config))
    ours.load_state_dict(info.state, strict=True)
    x = torch.rand(2, 3, 11, 13)
    with torch.no_grad():
        expected = info.network.eval()(x)  # spandrel's own module, as spandrel calls it
        got = ours.eval()(x)
    assert got.shape == (2, 3, 11 * scale, 13 * scale)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert (got - torch.nn.functional.interpolate(x, scale_factor=scale)).abs().mean() > 1e-2  # the body counts


def test_the_arch_is_registered_with_its_conventions():
    spec = models.ARCHS['srvgg_compact']
    assert spec.cls is models.SRVGGNetCompact and spec.in_type == spec.out_type == '[0, 1]' and spec.color == 'rgb'
    config = models.model_config('srvgg_compact', 4)
    assert config == {'scaling_factor': 4, 'num_feat': 64, 'num_conv': 16, 'act_type': 'prelu'}
    assert models.train_defaults('srvgg_compact', 4)['crop_size'] == 256  # Real-ESRNet's 256-px HR patches
    with pytest.raises(ValueError, match='act_type'):
        models.SRVGGNetCompact(4, act_type='gelu')
