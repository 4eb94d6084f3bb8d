"""Real-ESRGAN's GAN stage (train_srgan.py --variant realesrgan): its U-Net discriminator with spectral norm in the
released key layout, the perceptual loss's VGG19 feature maps before the ReLU, the step's losses, and the variant
end to end through its command line with random VGG weights."""
import pytest
import torch
import torch.nn.functional as F
from torchvision.models import vgg as tv_vgg

import models
import train_srgan
from checkpoints import load_checkpoint, load_sr_model, shipped_checkpoint
from conftest import run_here
from utils import Settings, convert_image

# RealESRGAN_x4plus_netD.pth's 'params', as Real-ESRGAN releases it: conv0 and conv9 plain, conv1-conv8 spectral-normed
# (torch.nn.utils.spectral_norm's weight_orig, weight_u, weight_v) without bias; (out, in, k) per conv for 64 features.
RELEASED_CONVS = {'conv0': (64, 3, 3), 'conv1': (128, 64, 4), 'conv2': (256, 128, 4), 'conv3': (512, 256, 4),
                  'conv4': (256, 512, 3), 'conv5': (128, 256, 3), 'conv6': (64, 128, 3), 'conv7': (64, 64, 3),
                  'conv8': (64, 64, 3), 'conv9': (1, 64, 3)}
TINY = ['--n-blocks', 2, '--n-channels', 8, '--n-channels-d', 8, '--crop-size', 32, '--batch-size', 3,
        '--workers', 0, '--vgg-weights', 'random']


def released_layout():
    """{key: shape} of the released discriminator file, built from RELEASED_CONVS."""
    layout = {}
    for name, (out, inp, k) in RELEASED_CONVS.items():
        if name in ('conv0', 'conv9'):
            layout.update({f"{name}.weight": (out, inp, k, k), f"{name}.bias": (out,)})
        else:
            layout.update({f"{name}.weight_orig": (out, inp, k, k), f"{name}.weight_u": (out,),
                           f"{name}.weight_v": (inp * k * k,)})
    return layout


def test_the_unet_discriminator_has_the_released_key_layout_and_loads_a_file_in_it():
    d = models.UNetDiscriminatorSN()
    assert {k: tuple(v.shape) for k, v in d.state_dict().items()} == released_layout()
    expected = sum(out * inp * k * k + (out if name in ('conv0', 'conv9') else 0)
                   for name, (out, inp, k) in RELEASED_CONVS.items())
    assert sum(p.numel() for p in d.parameters()) == expected == 4_376_897
    torch.manual_seed(0)
    released = {k: torch.randn(shape) for k, shape in released_layout().items()}
    models.UNetDiscriminatorSN().load_state_dict(released)  # strict: every key, no other


def test_the_unet_discriminator_scores_every_pixel_and_needs_multiples_of_8():
    torch.manual_seed(0)
    d = models.UNetDiscriminatorSN(n_channels=8)
    assert d(torch.rand(2, 3, 24, 40)).shape == (2, 1, 24, 40)
    with pytest.raises(ValueError, match='multiples of 8'):
        d(torch.rand(1, 3, 36, 40))
    plain = models.UNetDiscriminatorSN(n_channels=8, skip_connection=False)
    plain.load_state_dict(d.state_dict())
    x = torch.rand(1, 3, 16, 16)
    d.eval(), plain.eval()
    assert not torch.allclose(d(x), plain(x))  # the skips are added


def test_spectral_norm_divides_each_inner_weight_by_its_largest_singular_value():
    torch.manual_seed(0)
    d = models.UNetDiscriminatorSN(n_channels=8)
    with torch.no_grad():
        for _ in range(1000):  # power iterations, one per forward pass in training mode
            d(torch.rand(1, 3, 8, 8))
    for name in ('conv1', 'conv4', 'conv8'):
        conv = getattr(d, name)
        sigma = torch.linalg.matrix_norm(conv.weight_orig.flatten(1), ord=2)
        assert torch.allclose(conv.weight, conv.weight_orig / sigma, rtol=1e-3, atol=1e-6)
        assert torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2).item() == pytest.approx(1., rel=1e-3)


def test_vgg19_feature_maps_are_the_convolutions_before_their_relu():
    names = models.vgg19_layer_names()
    assert len(names) == len(tv_vgg.make_layers(tv_vgg.cfgs['E'])) == 37
    assert names[:5] == ['conv1_1', 'relu1_1', 'conv1_2', 'relu1_2', 'pool1'] and names[34] == 'conv5_4'
    torch.manual_seed(0)
    maps = models.VGG19FeatureMaps(train_srgan.REALESRGAN_PERCEPTUAL_LAYERS, weights='random')
    reference = tv_vgg.make_layers(tv_vgg.cfgs['E'])
    reference.load_state_dict(maps.features.state_dict())
    x = torch.randn(1, 3, 32, 32)
    out = maps(x)
    assert list(out) == ['conv1_2', 'conv2_2', 'conv3_4', 'conv4_4', 'conv5_4']
    for name, index in (('conv1_2', 2), ('conv3_4', 16), ('conv5_4', 34)):
        with torch.no_grad():
            expected = reference[:index + 1](x.clone())  # torchvision's own layers, up to that conv
        assert torch.allclose(out[name], expected, atol=1e-5)
        assert out[name].min() < 0  # before the ReLU
    assert not any(p.requires_grad for p in maps.parameters()) and not maps.train().training
    with pytest.raises(ValueError, match='conv6_1'):
        models.VGG19FeatureMaps({'conv6_1': 1.}, weights='random')


def test_the_generator_loss_is_l1_plus_the_weighted_perceptual_loss_plus_beta_times_the_gan_loss():
    torch.manual_seed(0)
    vgg = models.VGG19FeatureMaps(train_srgan.REALESRGAN_PERCEPTUAL_LAYERS, weights='random')
    sr, hr = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        fs, fh = vgg(sr), vgg(hr)
    expected = (0.1 * (fs['conv1_2'] - fh['conv1_2']).abs().mean() + 0.1 * (fs['conv2_2'] - fh['conv2_2']).abs().mean()
                + sum((fs[n] - fh[n]).abs().mean() for n in ('conv3_4', 'conv4_4', 'conv5_4')))
    assert train_srgan.perceptual_loss(vgg, sr, hr).item() == pytest.approx(expected.item(), rel=1e-5)

    # one step: the losses it reports are those of the generator it started from
    generator = models.Generator(large_kernel_size=3, small_kernel_size=3, n_channels=8, n_blocks=1,
                                 scaling_factor=4)
    discriminator = models.UNetDiscriminatorSN(n_channels=8)
    lr, hr = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        sr = (generator(convert_image(lr, '[0, 1]', 'imagenet-norm')) + 1) / 2
        d_copy = models.UNetDiscriminatorSN(n_channels=8)
        d_copy.load_state_dict(discriminator.state_dict())
        logits = d_copy(sr)
        expected_content = train_srgan.perceptual_loss(vgg, convert_image(sr, '[0, 1]', 'imagenet-norm'),
                                                       convert_image(hr, '[0, 1]', 'imagenet-norm'))
    gan = train_srgan.GAN(generator, discriminator, vgg, torch.optim.Adam(generator.parameters(), 1e-4),
                          torch.optim.Adam(discriminator.parameters(), 1e-4), torch.amp.GradScaler('cpu',
                                                                                                   enabled=False))
    speed = Settings(channels_last=False, precision='fp32')
    _, losses = train_srgan.realesrgan_step(gan, lr, hr, torch.device('cpu'), speed, Settings(beta=0.1))
    assert losses['pixel'].item() == pytest.approx(F.l1_loss(sr, hr).item(), rel=1e-5)
    assert losses['content'].item() == pytest.approx(expected_content.item(), rel=1e-5)
    assert losses['adversarial'].item() == pytest.approx(
        F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits)).item(), rel=1e-4)


def test_the_variant_trains_resumes_and_its_generator_upscales(tmp_path, tiny_dataset):
    results, runs = tmp_path / 'results', tmp_path / 'runs'
    common = ['--data-folder', tiny_dataset['data'], '--results-dir', results, '--runs-dir', runs]
    result = run_here('train_srgan.py', '--variant', 'realesrgan', '--srresnet-checkpoint', 'none', *TINY,
                      '--epochs', 1, *common)
    assert result.returncode == 0, result.stderr
    ckpt = load_checkpoint(results / 'checkpoint_srgan.pth')
    assert ckpt['variant'] == 'realesrgan' and ckpt['discriminator_config'] == {'n_channels': 8,
                                                                                'skip_connection': True}
    assert 'conv1.weight_orig' in ckpt['discriminator'] and 'generator_ema' in ckpt and ckpt['ema_decay'] == 0.999
    args = ckpt['args']
    assert args['degradation'] == 'realesrgan' and args['beta'] == 0.1 and args['hflip'] and not args['rot90']
    assert [g['betas'] for g in ckpt['optimizer_d']['param_groups']] == [(0.9, 0.99)]
    result = run_here('train_srgan.py', '--results-dir', results, '--runs-dir', runs, '--epochs', 2, '--resume',
                      '--vgg-weights', 'random', '--workers', 0)
    assert result.returncode == 0, result.stderr
    assert 'epoch 2/2' in result.stdout and load_checkpoint(results / 'checkpoint_srgan.pth')['epoch'] == 2
    model = load_sr_model(str(results / 'checkpoint_srgan.pth'))
    assert model.label == 'srgan_real' and model.arch == 'srresnet' and model.scale == 4
    image = tiny_dataset['test'] / 'img0.png'
    result = run_here('test.py', '--checkpoint', results / 'checkpoint_srgan.pth', '--image', image,
                      '--output-dir', tmp_path / 'out', '--device', 'cpu')
    assert result.returncode == 0, result.stderr
    assert (tmp_path / 'out' / 'img0_x4_srgan_real.png').is_file()


@pytest.mark.parametrize('extra, message', [
    (['--n-blocks-d', 4], '--n-blocks-d: not used by the realesrgan variant'),
    (['--vgg19-i', 4, '--vgg19-j', 2], '--vgg19-i, --vgg19-j: not used by the realesrgan variant'),
    (['--update-order', 'g-first'], '--update-order: not used by the realesrgan variant'),
    (['--crop-size', 36], '--crop-size 36: the realesrgan variant'),
])
def test_flags_that_do_not_apply_are_refused_in_one_line(tmp_path, tiny_dataset, extra, message, capsys):
    argv = [str(a) for a in ('--variant', 'realesrgan', '--srresnet-checkpoint', 'none', '--vgg-weights', 'random',
                             '--data-folder', tiny_dataset['data'], '--results-dir', tmp_path, *extra)]
    with pytest.raises(SystemExit) as stop:
        train_srgan.resolve_settings(train_srgan.build_parser(), argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and message in err.strip().splitlines()[-1] and 'Traceback' not in err
    assert not list(tmp_path.iterdir())


def test_the_default_warm_start_is_the_shipped_photo_model(tmp_path, tiny_dataset, capsys):
    shipped = shipped_checkpoint('srresnet_x4_real.pth')  # in the repository: test_primary_model holds it
    argv = [str(a) for a in ('--variant', 'realesrgan', '--vgg-weights', 'random', '--data-folder',
                             tiny_dataset['data'], '--results-dir', tmp_path)]
    s = train_srgan.resolve_settings(train_srgan.build_parser(), argv)
    assert s.srresnet_checkpoint == shipped and 'srresnet_x4_real.pth (photo model' in capsys.readouterr().out
    argv = [a for a in argv if a != 'realesrgan' and a != '--variant']
    assert train_srgan.resolve_settings(train_srgan.build_parser(), argv).srresnet_checkpoint.endswith(
        'srresnet_x4_291.pth')
