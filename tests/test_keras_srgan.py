"""Seed 001's Keras SRGAN (train_srgan.py --variant keras): its layers, initialisation and BatchNorm as the seed's
Keras code builds them, its training step in the seed's order, and the variant end to end through the scripts."""
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import checkpoints
import inference
import models
import train_srgan
import train_srresnet
import training
from conftest import run_script
from checkpoints import load_checkpoint, save_checkpoint
from utils import UserError

# ----------------------------------------------------------------------------------------------
# The seed's layer lists (nets/srgan.py), written out as PyTorch parameter shapes, layer by layer
# ----------------------------------------------------------------------------------------------


def conv(c_in, c_out, k):  # Conv2D(c_out, kernel_size=k): kernel and bias
    return [(c_out, c_in, k, k), (c_out,)]


def bn(c):  # BatchNormalization: gamma and beta (moving mean/variance are not trainable)
    return [(c,), (c,)]


def prelu(c):  # PReLU(shared_axes=[1, 2]): one slope per channel
    return [(c,)]


def dense(n_in, n_out):
    return [(n_out, n_in), (n_out,)]


SEED_GENERATOR = (conv(3, 64, 9) + prelu(64)
                  + 16 * (conv(64, 64, 3) + bn(64) + prelu(64) + conv(64, 64, 3) + bn(64))  # residual_block x 16
                  + conv(64, 64, 3) + bn(64)
                  + 2 * (conv(64, 256, 3) + prelu(64))  # deconv2d x 2 (x4): PReLU after depth_to_space
                  + conv(64, 3, 9))  # the tanh output conv
SEED_DISCRIMINATOR = (conv(3, 64, 3)
                      + conv(64, 64, 3) + bn(64) + conv(64, 128, 3) + bn(128)
                      + conv(128, 128, 3) + bn(128) + conv(128, 256, 3) + bn(256)
                      + conv(256, 256, 3) + bn(256) + conv(256, 512, 3) + bn(512)
                      + conv(512, 512, 3) + bn(512)
                      + dense(512, 1024) + dense(1024, 1))


def trainable_shapes(model):
    return [tuple(p.shape) for p in model.parameters() if p.requires_grad]


def test_parameter_counts_are_srgan_keras_layer_by_layer():
    assert sum(math.prod(s) for s in SEED_GENERATOR) == 1_550_659
    assert sum(math.prod(s) for s in SEED_DISCRIMINATOR) == 5_215_425
    assert trainable_shapes(models.KerasSRGANGenerator()) == SEED_GENERATOR
    assert trainable_shapes(models.KerasSRGANDiscriminator()) == SEED_DISCRIMINATOR


def tiny_generator(scale=4):
    return models.KerasSRGANGenerator(scaling_factor=scale, n_channels=8, n_blocks=2)


def tiny_discriminator():
    return models.KerasSRGANDiscriminator(n_channels=8, n_blocks=4, fc_size=16)


@pytest.mark.parametrize('scale', [2, 4, 8])
def test_generator_shapes_and_tanh_range(scale):
    g = tiny_generator(scale).eval()
    with torch.no_grad():
        out = g(torch.rand(2, 3, 6, 5) * 2 - 1)
    assert out.shape == (2, 3, 6 * scale, 5 * scale)
    assert out.abs().max() <= 1
    with pytest.raises(ValueError, match='2, 4 or 8'):
        models.KerasSRGANGenerator(scaling_factor=3)


@pytest.mark.parametrize('h, w', [(48, 48), (45, 37), (7, 9)])
def test_discriminator_gives_one_probability_per_image_at_any_size(h, w):
    d = tiny_discriminator().eval()
    x = torch.rand(3, 3, h, w) * 2 - 1
    with torch.no_grad():
        out = d(x)
        d.fc2.bias.fill_(3.)  # the N(0, 0.02) weights leave the last dense layer's output near its bias
        shifted = d(x)
    assert out.shape == (3, 1) and ((out > 0) & (out < 1)).all()
    assert torch.allclose(shifted, torch.full((3, 1), 1 / (1 + math.exp(-3))), atol=1e-3)  # sigmoid(3), not 3


# ----------------------------------------------------------------------------------------------
# Keras's conventions: 'same' padding, depth_to_space, initialisers, BatchNorm
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize('size, kernel, stride, pads', [
    (8, 3, 2, (0, 1)), (7, 3, 2, (1, 1)), (6, 3, 2, (0, 1)), (1, 3, 2, (1, 1)), (8, 3, 1, (1, 1)), (8, 4, 1, (1, 2)),
])
def test_keras_same_padding_puts_the_odd_pixel_after(size, kernel, stride, pads):
    assert models.keras_same_padding(size, kernel, stride) == pads


def test_strided_discriminator_convs_sample_the_pixels_tensorflow_samples():
    c = models.KerasSameConv2d(1, 1, 3, stride=2)
    with torch.no_grad():
        c.weight.zero_()
        c.weight[0, 0, 0, 0] = 1.  # the window's top-left tap
        c.bias.zero_()
    x = torch.arange(1., 65.).view(1, 1, 8, 8)
    assert torch.equal(c(x), x[..., ::2, ::2])  # even size: windows start at rows/columns 0, 2, 4, 6
    assert not torch.equal(F.conv2d(x, c.weight, stride=2, padding=1), x[..., ::2, ::2])  # PyTorch's symmetric pad
    x7 = torch.arange(1., 50.).view(1, 1, 7, 7)
    expected = torch.zeros(1, 1, 4, 4)
    expected[..., 1:, 1:] = x7[..., 1::2, 1::2]  # odd size: one pixel of padding on each side
    assert torch.equal(c(x7), expected)


def test_depth_to_space_is_tensorflows_channel_order():
    x = torch.randn(2, 12, 3, 4)  # C = 3 output channels, r = 2
    out = models.DepthToSpace(2)(x)
    assert out.shape == (2, 3, 6, 8)
    for c in range(3):
        for i in range(2):
            for j in range(2):
                assert torch.equal(out[:, c, i::2, j::2], x[:, (i * 2 + j) * 3 + c])
    assert not torch.equal(out, F.pixel_shuffle(x, 2))


def test_the_generators_upsampling_puts_channels_where_tensorflow_does():
    """Each upsampling stage of the generator, on its conv's output, as tf.nn.depth_to_space written out here:
    output channel c at sub-position (i, j) is conv channel (i * 2 + j) * C + c, then PReLU."""
    torch.manual_seed(0)
    g = models.KerasSRGANGenerator(scaling_factor=4, n_channels=4, n_blocks=1).eval()
    for m in g.modules():
        if isinstance(m, nn.PReLU):  # slopes 0 at the start: per-channel slopes make the channel order matter more
            nn.init.uniform_(m.weight, 0.1, 0.9)
    x = torch.randn(1, 4, 5, 6)
    for stage in g.upsample:
        conv, prelu = stage[0], stage[-1]
        with torch.no_grad():
            z, out = conv(x), stage(x)
        expected = torch.empty(1, 4, 2 * x.shape[2], 2 * x.shape[3])
        for c in range(4):
            for i in range(2):
                for j in range(2):
                    expected[:, c, i::2, j::2] = z[:, (i * 2 + j) * 4 + c]
        with torch.no_grad():
            torch.testing.assert_close(out, prelu(expected), rtol=0, atol=0)
        x = out


def test_initialisation_is_srgan_keras():
    g, d = models.KerasSRGANGenerator(), models.KerasSRGANDiscriminator()
    normal = ([m for m in g.modules() if isinstance(m, nn.Conv2d) and m is not g.tail]
              + [m for m in d.modules() if isinstance(m, (nn.Conv2d, nn.Linear))])
    assert len(normal) == 1 + 2 * 16 + 1 + 2 + 8 + 2
    for m in normal:  # random_normal(stddev=0.02); >= 1,024 weights per layer
        assert abs(m.weight.std().item() - 0.02) < 0.002 and abs(m.weight.mean().item()) < 0.002
    last = g.tail.weight  # no kernel_initializer in the seed: Keras's glorot_uniform
    bound = math.sqrt(6 / (64 * 9 * 9 + 3 * 9 * 9))
    assert 0.99 * bound < last.abs().max().item() <= bound
    assert abs(last.std().item() - bound / math.sqrt(3)) < 0.02 * bound / math.sqrt(3)
    biased = normal + [g.tail]
    assert all(torch.count_nonzero(m.bias) == 0 for m in biased)
    norms = [m for model in (g, d) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 2 * 16 + 1 + 7
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) and torch.count_nonzero(m.bias) == 0 for m in norms)
    prelus = [m for m in g.modules() if isinstance(m, nn.PReLU)]
    assert len(prelus) == 1 + 16 + 2 and all(torch.count_nonzero(m.weight) == 0 for m in prelus)  # Keras: zeros


def test_batch_norm_is_keras_momentum_0_5_and_epsilon_1e_3():
    norms = [m for model in (tiny_generator(), tiny_discriminator()) for m in model.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and all(m.momentum == 0.5 and m.eps == 1e-3 for m in norms)
    # Keras momentum m keeps m of the old moving statistic: with m = 0.9, moving = 0.9 * old + 0.1 * batch
    norm = models.keras_batch_norm(4, momentum=0.9)
    x = torch.randn(8, 4, 5, 5) * 3 + 2
    norm.train()(x)
    assert torch.allclose(norm.running_mean, 0.1 * x.mean((0, 2, 3)), atol=1e-6)
    assert torch.allclose(norm.running_var, 0.9 + 0.1 * x.var((0, 2, 3)), atol=1e-5)  # PyTorch: unbiased
    with torch.no_grad():
        norm.running_var.fill_(1e-3)
    expected = (x - norm.running_mean.view(1, 4, 1, 1)) / math.sqrt(1e-3 + 1e-3)
    assert torch.allclose(norm.eval()(x), expected, rtol=1e-5, atol=1e-4)


def test_keras_binary_crossentropy_clips_like_keras():
    p = torch.tensor([[0.], [1.], [0.25]])
    clipped_one = float(torch.tensor(1 - 1e-7))  # 1 - 1e-7 in float32
    expected = (-math.log(1e-7) - math.log(clipped_one) - math.log(0.25)) / 3
    assert train_srgan.keras_binary_crossentropy(p, 1.).item() == pytest.approx(expected, rel=1e-6)
    expected = (-math.log(1 - 1e-7) - math.log(1 - clipped_one) - math.log(0.75)) / 3
    assert train_srgan.keras_binary_crossentropy(p, 0.).item() == pytest.approx(expected, rel=1e-5)


# ----------------------------------------------------------------------------------------------
# The training step: D first (two Adam steps), then G against the updated, frozen D
# ----------------------------------------------------------------------------------------------


def test_keras_step_updates_the_discriminator_first_and_the_generator_sees_it():
    g, d = tiny_generator(), tiny_discriminator()
    features = nn.Conv2d(3, 4, 3).requires_grad_(False)  # stands in for VGG19
    opt_g = torch.optim.Adam(g.parameters(), lr=1e-2, **train_srgan.KERAS_ADAM)
    opt_d = torch.optim.Adam(d.parameters(), lr=1e-2, **train_srgan.KERAS_ADAM)
    device = torch.device('cpu')
    speed = training.resolve_speed(device, amp='off', channels_last=False)
    d_norm = d.conv_blocks[1][1]
    g0, d0 = g.tail.weight.detach().clone(), d.fc2.weight.detach().clone()
    d_calls, g_calls = [], []
    d.register_forward_pre_hook(lambda m, i: d_calls.append(
        (g.tail.weight.detach().clone(), d.fc2.weight.detach().clone(), d_norm.track_running_stats,
         d_norm.running_mean.clone())))
    g.register_forward_pre_hook(lambda m, i: g_calls.append((m.training, torch.is_grad_enabled())))
    lr, hr = torch.rand(3, 3, 8, 8), torch.rand(3, 3, 32, 32)
    g.train(), d.train()
    gan = train_srgan.GAN(g, d, features, opt_g, opt_d, training.make_scaler(device, speed))
    shown, losses = train_srgan.keras_step(gan, lr, hr, device, speed, SimpleNamespace(beta=1e-3))
    assert len(d_calls) == 3 and set(losses) == {'pixel', 'content', 'adversarial', 'discriminator'}
    (g_real, d_real, *_), (g_fake, d_fake, *_), (_, d_seen_by_g, tracks, running) = d_calls
    assert torch.equal(g_real, g0) and torch.equal(g_fake, g0)  # both D updates before the generator's
    assert torch.equal(d_real, d0) and not torch.equal(d_fake, d0)  # real, then fake: one Adam step each
    assert not torch.equal(d_seen_by_g, d_fake) and torch.equal(d_seen_by_g, d.fc2.weight)  # G sees the updated D
    assert opt_d.state[d.fc2.weight]['step'] == 2 and opt_g.state[g.tail.weight]['step'] == 1
    assert not torch.equal(g.tail.weight, g0) and torch.equal(d.fc2.weight, d_seen_by_g)  # G's step leaves D
    assert g_calls == [(False, False), (True, True)]  # fakes for D as Keras's predict: inference mode, no gradient
    assert tracks is False and d_norm.track_running_stats  # frozen D: batch statistics only during G's step ...
    assert torch.equal(d_norm.running_mean, running)  # ... its running statistics as D's own updates left them
    assert shown[-1] == '[-1, 1]' and torch.equal(shown[0], lr * 2 - 1)


def test_batch_statistics_only_normalises_with_the_batch_and_keeps_running_statistics():
    norm = models.keras_batch_norm(3).train()
    x = torch.randn(4, 3, 5, 5) + 1
    with train_srgan.batch_statistics_only(nn.Sequential(norm)):
        out = norm(x)
    assert torch.equal(norm.running_mean, torch.zeros(3)) and torch.equal(norm.running_var, torch.ones(3))
    assert norm.num_batches_tracked == 0 and norm.track_running_stats
    mean, var = x.mean((0, 2, 3), keepdim=True), x.var((0, 2, 3), unbiased=False, keepdim=True)
    assert torch.allclose(out, (x - mean) / torch.sqrt(var + 1e-3), atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Flags, checkpoints, and the variant through the scripts
# ----------------------------------------------------------------------------------------------


def srgan_args(*argv):
    return train_srgan.resolve_settings(train_srgan.build_parser(), list(map(str, argv)))


def test_keras_variant_brings_the_seeds_recipe_and_refuses_what_the_seed_fixes(tmp_path):
    keras = srgan_args('--variant', 'keras', '--results-dir', tmp_path)  # no SRResNet checkpoint needed
    assert (keras.crop_size, keras.batch_size, keras.epochs, keras.lr, keras.downsample) == (384, 4, 200, 2e-4, 'pil')
    assert keras.hflip and not keras.vflip and not keras.rot90 and keras.update_order == 'd-first'
    assert keras.generator_config == models.model_config('srgan_keras', 4)
    tutorial = srgan_args('--srresnet-checkpoint', 'none', '--results-dir', tmp_path)
    assert (tutorial.variant, tutorial.update_order, tutorial.crop_size, tutorial.lr) == ('tutorial', 'g-first', 96, 1e-4)
    for argv in (['--srresnet-checkpoint', tmp_path / 'x.pth'], ['--update-order', 'g-first'], ['--scale', 3]):
        with pytest.raises(SystemExit):
            srgan_args('--variant', 'keras', '--results-dir', tmp_path, *argv)
    with pytest.raises(SystemExit):  # trained only as a GAN: not an --arch of train_srresnet.py
        train_srresnet.build_parser().parse_args(['--arch', 'srgan_keras'])


def test_checkpoints_of_the_keras_variant_load_with_its_own_conventions(tmp_path):
    g = tiny_generator().eval()
    path = tmp_path / 'checkpoint_srgan.pth'
    save_checkpoint({'arch': 'srgan', 'variant': 'keras', 'generator': g.state_dict(),
                     'generator_config': models.model_config('srgan_keras', 4, n_channels=8, n_blocks=2)}, path)
    loaded = checkpoints.load_sr_model(path)
    assert (loaded.arch, loaded.label, loaded.spec.in_type, loaded.spec.out_type) == \
        ('srgan_keras', 'srgan_keras', '[-1, 1]', '[-1, 1]')
    lr = torch.rand(1, 3, 10, 12)
    sr, _ = inference.Upscaler(loaded.network, loaded.spec, 4, 'cpu').upscale(lr)
    with torch.no_grad():
        expected = (g(lr * 2 - 1) + 1) / 2  # the seed's (x / 255 - 0.5) / 0.5 in, tanh out
    assert torch.allclose(sr, expected.clamp(0, 1), atol=1e-6)
    with pytest.raises(UserError, match="unknown SRGAN variant 'pix2pix'"):
        checkpoints.describe_checkpoint({'generator': {}, 'variant': 'pix2pix'}, 'x.pth')


TINY_KERAS = ['--variant', 'keras', '--vgg-weights', 'random', '--batch-size', 3, '--crop-size', 32, '--workers', 0,
              '--n-blocks', 2, '--n-channels', 8, '--n-blocks-d', 2, '--n-channels-d', 8, '--fc-size-d', 16,
              '--device', 'cpu', '--amp', 'off']


def train_keras(results, data, *extra):
    """train_srgan.py's main with these flags, in this process (its command line without a second interpreter's
    start: ~6 s of CPU each on the shared machine); eval.py and test.py below run as commands."""
    return train_srgan.main(list(map(str, ['--data-folder', data, '--results-dir', results, '--runs-dir',
                                           results / 'runs', *extra])))


def test_keras_variant_trains_resumes_exactly_evaluates_and_upscales_through_the_scripts(tmp_path, tiny_dataset,
                                                                                        capsys):
    data = tiny_dataset['data']
    assert train_keras(tmp_path / 'a', data, *TINY_KERAS, '--epochs', 2) == 0
    assert 'pixel' in capsys.readouterr().out
    assert train_keras(tmp_path / 'b', data, *TINY_KERAS, '--epochs', 1) == 0
    assert train_keras(tmp_path / 'b', data, *TINY_KERAS[2:], '--epochs', 2, '--resume') == 0  # no --variant
    out = capsys.readouterr().out
    assert 'resumed' in out and 'epoch 2/2' in out
    a = load_checkpoint(tmp_path / 'a' / 'checkpoint_srgan.pth')
    path = tmp_path / 'b' / 'checkpoint_srgan.pth'
    b = load_checkpoint(path)
    assert b['variant'] == 'keras' and b['epoch'] == 2
    assert b['generator_config'] == models.model_config('srgan_keras', 4, n_channels=8, n_blocks=2)
    for key in ('generator', 'discriminator'):  # one run and a resumed one: the same weights, bit for bit
        assert a[key].keys() == b[key].keys() and all(torch.equal(a[key][k], b[key][k]) for k in a[key])
    steps = 2 * 2  # 6 images / batch 3, 2 epochs
    d_state, g_state = b['optimizer_d'], b['optimizer_g']
    assert {int(s['step']) for s in d_state['state'].values()} == {2 * steps}  # two Adam steps of D per step
    assert {int(s['step']) for s in g_state['state'].values()} == {steps}
    for group in d_state['param_groups'] + g_state['param_groups']:  # the seed's x0.98 after epoch 1, Adam eps
        assert group['lr'] == pytest.approx(2e-4 * 0.98, rel=1e-12) and group['eps'] == 1e-7
    models.KerasSRGANDiscriminator(**b['discriminator_config']).load_state_dict(b['discriminator'])
    with pytest.raises(UserError, match='is a run of the keras variant'):
        srgan_args('--resume', path, '--variant', 'tutorial', '--results-dir', tmp_path / 'b')

    ev = run_script('eval.py', '--checkpoint', path, '--test-folders', tiny_dataset['test'], '--results-dir',
                    tmp_path / 'eval', '--device', 'cpu')
    assert ev.returncode == 0, ev.stderr
    assert 'srgan_keras' in ev.stdout and 'Tiny' in ev.stdout
    image = sorted(tiny_dataset['test'].iterdir())[0]  # 64 x 64
    up = run_script('test.py', '--checkpoint', path, '--image', image, '--output-dir', tmp_path / 'up', '--device',
                    'cpu')
    assert up.returncode == 0, up.stderr
    with Image.open(tmp_path / 'up' / f"{image.stem}_x4_srgan_keras.png") as sr:
        assert sr.size == (256, 256) and sr.mode == 'RGB'
