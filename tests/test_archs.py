"""Every architecture through the same scripts: recipes, a few training steps via the CLI, then eval on it."""

import pytest
import torch
from torch import nn

import models
from conftest import run_here, run_script
from train_srresnet import build_parser, build_training, resolve_settings
import training
from checkpoints import load_checkpoint

TINY_OPTS = {
    'srresnet': ['--n-blocks', 2, '--n-channels', 8],
    'srcnn': ['--model-opt', 'channels=[8,4]'],
    'espcn': ['--model-opt', 'channels=[8,4]'],
    'edsr': ['--model-opt', 'n_resblocks=1', '--model-opt', 'n_feats=8'],
    'rcan': ['--model-opt', 'n_resgroups=1', '--model-opt', 'n_resblocks=1', '--model-opt', 'n_feats=8',
             '--model-opt', 'reduction=4'],
    'msrresnet': ['--model-opt', 'n_blocks=1', '--model-opt', 'n_channels=8'],
    'srvgg_compact': ['--model-opt', 'num_conv=2', '--model-opt', 'num_feat=8'],
}


def args_for(*argv):
    return resolve_settings(build_parser(), list(map(str, argv)))


def test_each_arch_brings_its_recipe_and_flags_override_it():
    edsr = args_for('--arch', 'edsr', '--scale', 2)
    assert (edsr.loss, edsr.lr, edsr.crop_size, edsr.batch_size, edsr.downsample) == ('l1', 1e-4, 96, 16, 'matlab')
    assert edsr.hflip and edsr.rot90
    srresnet = args_for()
    assert (srresnet.loss, srresnet.lr, srresnet.crop_size, srresnet.batch_size, srresnet.epochs) == \
        ('mse', 1e-4, 96, 400, 130)
    assert srresnet.downsample == 'pil' and not srresnet.hflip
    overridden = args_for('--arch', 'edsr', '--scale', 4, '--loss', 'mse', '--lr', 3e-4, '--crop-size', 64,
                          '--no-hflip')
    assert (overridden.loss, overridden.lr, overridden.crop_size, overridden.hflip) == ('mse', 3e-4, 64, False)
    assert args_for('--arch', 'rcan', '--scale', 3).crop_size == 144  # 48-px LR patches
    espcn = args_for('--arch', 'espcn', '--scale', 3)
    assert (espcn.crop_size, espcn.patches_per_image, espcn.lr_schedule) == (51, 256, 'cosine')
    msr = args_for('--arch', 'msrresnet')  # BasicSR's train_MSRResNet_x4.yml: gt_size 128, L1, Adam 2e-4, batch 16
    assert (msr.crop_size, msr.loss, msr.lr, msr.batch_size, msr.lr_schedule, msr.epochs) == \
        (128, 'l1', 2e-4, 16, 'cosine', 1000)
    assert args_for().patches_per_image == 1


@pytest.mark.parametrize('loss, criterion', [('l1', nn.L1Loss), ('mse', nn.MSELoss)])
def test_loss_flag_selects_the_criterion(loss, criterion):
    args = args_for('--arch', 'espcn', '--scale', 3, '--loss', loss, '--channels-last')
    built = build_training(args, training.speed_of(args, torch.device('cpu')), torch.device('cpu')).criterion
    assert isinstance(built, criterion)


@pytest.mark.parametrize('argv, tail, prelu', [((), True, True), (('--faithful',), False, False),
                                               (('--no-tail-before-shuffle',), False, True),
                                               (('--no-fast-prelu',), True, False)])
def test_training_rewrites_are_on_by_default_and_off_when_faithful(argv, tail, prelu):
    args = args_for('--n-blocks', 2, '--n-channels', 8, *argv)
    model, *_ = build_training(args, training.speed_of(args, torch.device('cpu')), torch.device('cpu'))
    assert model.tail_before_shuffle is tail
    prelus = [m for m in model.modules() if isinstance(m, models.PReLU)]
    assert len(prelus) == 5 and all(m.fast_backward is prelu for m in prelus)


@pytest.mark.parametrize('argv, fast', [((), True), (('--faithful',), False), (('--no-fast-tanh',), False)])
def test_espcn_tanh_is_fast_by_default_and_torchs_when_faithful(argv, fast):
    args = args_for('--arch', 'espcn', '--scale', 3, '--model-opt', 'channels=[8,4]', *argv)
    model, *_ = build_training(args, training.speed_of(args, torch.device('cpu')), torch.device('cpu'))
    tanhs = [m for m in model.modules() if isinstance(m, models.Tanh)]
    assert len(tanhs) == 2 and all(m.fast is fast for m in tanhs)
    out = model(torch.rand(2, 1, 9, 9).contiguous(memory_format=torch.channels_last))
    assert out.shape == (2, 1, 27, 27)


@pytest.mark.parametrize('argv, lr_from', [
    (('--arch', 'espcn'), 'image'), (('--arch', 'espcn', '--faithful'), 'patch'), (('--arch', 'srcnn'), 'patch'),
    (('--arch', 'espcn', '--lr-from', 'patch'), 'patch')])
def test_espcn_cuts_its_lr_from_each_image_unless_faithful_or_told(argv, lr_from):
    assert args_for(*argv).lr_from == lr_from


@pytest.mark.parametrize('argv, fused', [((), True), (('--faithful',), False), (('--no-fused-adam',), False)])
def test_adam_is_fused_by_default_and_torchs_plain_one_when_faithful(argv, fused):
    args = args_for('--n-blocks', 2, '--n-channels', 8, *argv)
    _, optimizer, *_ = build_training(args, training.speed_of(args, torch.device('cpu')), torch.device('cpu'))
    assert type(optimizer) is torch.optim.Adam
    assert bool(optimizer.defaults['fused']) is fused


def test_fused_adam_takes_plain_adams_steps():
    torch.manual_seed(0)
    plain, fused = models.ESPCN(3, channels=(8, 8)), models.ESPCN(3, channels=(8, 8))
    fused.load_state_dict(plain.state_dict())
    start = [p.detach().clone() for p in plain.parameters()]
    speed = training.resolve_speed(torch.device('cpu'), amp='off')
    opts = [torch.optim.Adam(plain.parameters(), lr=1e-2), training.make_adam(fused.parameters(), 1e-2, speed)]
    assert opts[1].defaults['fused'] and not opts[0].defaults['fused']
    x, y = torch.rand(4, 1, 12, 12), torch.rand(4, 1, 36, 36)
    for _ in range(5):
        for model, opt in zip((plain, fused), opts):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
    assert min((p - p0).abs().max().item() for p, p0 in zip(plain.parameters(), start)) > 1e-3  # 5 steps of lr 1e-2
    for p, q in zip(plain.parameters(), fused.parameters()):
        torch.testing.assert_close(q, p, rtol=0, atol=1e-5)


def test_training_rewrites_reach_the_srgan_generators_srresnet():
    generator = models.Generator(n_channels=8, n_blocks=2)
    models.apply_training_rewrites(generator, tail_before_shuffle=True, fast_prelu=True)
    assert generator.net.tail_before_shuffle
    assert all(m.fast_backward for m in generator.modules() if isinstance(m, models.PReLU))


@pytest.mark.parametrize('arch, scale', [('srresnet', 3), ('srresnet', 5), ('espcn', 5), ('edsr', 6)])
def test_impossible_scales_are_flag_errors(arch, scale):
    with pytest.raises(SystemExit):
        args_for('--arch', arch, '--scale', scale)


@pytest.mark.parametrize('arch, scale', [('srresnet', 2), ('srcnn', 3), ('espcn', 3), ('edsr', 3), ('rcan', 2),
                                         ('msrresnet', 3), ('srvgg_compact', 4)])
def test_train_then_evaluate_every_arch_through_the_cli(tmp_path, tiny_dataset, arch, scale):
    run = run_script if arch == 'srresnet' else run_here  # one in processes of their own, the rest in this one
    result = run('train_srresnet.py', '--arch', arch, '--scale', scale, *TINY_OPTS[arch],
                 '--data-folder', tiny_dataset['data'], '--results-dir', tmp_path, '--runs-dir',
                 tmp_path / 'runs', '--crop-size', 12 * scale, '--batch-size', 3, '--epochs', 1,
                 '--patches-per-image', 1, '--workers', 0)
    assert result.returncode == 0, result.stderr
    ckpt = load_checkpoint(tmp_path / f"checkpoint_{arch}.pth")
    assert ckpt['arch'] == arch and ckpt['model_config']['scaling_factor'] == scale
    model = models.build_model(arch, ckpt['model_config'])
    model.load_state_dict(ckpt['model'])
    spec = models.ARCHS[arch]
    channels = 1 if spec.color == 'y' else 3
    x = torch.rand(1, channels, 8 * (scale if spec.pre_upsample else 1), 8 * (scale if spec.pre_upsample else 1))
    assert model.eval()(x).shape == (1, channels, 8 * scale, 8 * scale)
    ev = run('eval.py', '--checkpoint', tmp_path / f"checkpoint_{arch}.pth", '--test-folders',
             tiny_dataset['test'], '--results-dir', tmp_path / 'eval', '--device', 'cpu')
    assert ev.returncode == 0, ev.stderr
    assert 'Tiny' in ev.stdout and f"x{scale}" in ev.stdout
    image = sorted(tiny_dataset['test'].iterdir())[0]  # 64 x 64
    up = run('test.py', '--checkpoint', tmp_path / f"checkpoint_{arch}.pth", '--image', image,
             '--output-dir', tmp_path / 'up', '--device', 'cpu')
    assert up.returncode == 0, up.stderr
    from PIL import Image
    with Image.open(tmp_path / 'up' / f"{image.stem}_x{scale}_{arch}.png") as sr:
        assert sr.size == (64 * scale, 64 * scale) and sr.mode == 'RGB'
