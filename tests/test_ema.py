"""--ema-decay: the EMA of the weights in both trainers, recomputed by hand from the weights recorded after each
step, saved under the model's own keys, resumed bit for bit, judged by validation and --keep-best, off by default.

Numerics pinned (--device cpu --amp off --deterministic); 6 training images, batch 2: 3 steps per epoch.
"""
import pytest
import torch

import inference
import models
import train_srresnet
from conftest import run_here, run_script
from checkpoints import FORMAT_VERSION, load_checkpoint, save_checkpoint
from utils import list_image_files, load_image, pil_to_tensor, run_cli

TINY = ['--n-blocks', 2, '--n-channels', 8, '--crop-size', 32, '--batch-size', 2, '--deterministic',
        '--device', 'cpu', '--amp', 'off', '--workers', 0]
TINY_D = ['--n-blocks-d', 2, '--n-channels-d', 8, '--fc-size-d', 16, '--vgg-weights', 'random']
EMA_KEYS = {'model_ema', 'generator_ema', 'ema_decay', 'ema_n_averaged'}


def train(results, data, *extra, script='train_srresnet.py'):
    result = run_here(script, '--data-folder', data, '--results-dir', results, '--runs-dir', results / 'runs',
                      *TINY, *extra)
    assert result.returncode == 0, result.stderr
    return result


def assert_ema_step(ema, previous_ema, weights, decay):
    """ema == decay * previous_ema + (1 - decay) * weights for every float tensor (computed here in float64);
    integer buffers (BatchNorm's num_batches_tracked) equal the model's."""
    assert ema.keys() == weights.keys() == previous_ema.keys()
    for k, w in weights.items():
        assert ema[k].shape == w.shape and ema[k].dtype == w.dtype, k
        if w.is_floating_point():
            expected = decay * previous_ema[k].double() + (1 - decay) * w.double()
            torch.testing.assert_close(ema[k].double(), expected, rtol=0, atol=1e-6, msg=k)
        else:
            assert torch.equal(ema[k], w), k


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def initial_weights(path, seed=1):
    """A suite checkpoint of a tiny SRResNet with known weights (for --init-from)."""
    config = models.model_config('srresnet', 4, n_blocks=2, n_channels=8)
    torch.manual_seed(seed)
    state = models.build_model('srresnet', config).state_dict()
    save_checkpoint({'format_version': FORMAT_VERSION, 'arch': 'srresnet', 'model_config': config, 'model': state},
                    path)
    return state


def test_ema_after_each_step_is_the_recurrence_from_the_init_from_weights(tmp_path, tiny_dataset):
    data, results = tiny_dataset['data'], tmp_path / 'run'
    w0 = initial_weights(tmp_path / 'init.pth')
    ckpt_path = results / 'checkpoint_srresnet.pth'
    ema_args = ['--ema-decay', 0.75, '--lr', 1e-2, '--epochs', 1]  # big steps: every step moves the EMA visibly
    previous = w0  # --init-from: the EMA starts at the initial weights
    for step, extra in enumerate([['--init-from', tmp_path / 'init.pth', '--max-steps', 1],
                                  ['--resume', '--max-steps', 2], ['--resume']], start=1):
        train(results, data, *ema_args, *extra)
        ckpt = load_checkpoint(ckpt_path)
        assert ckpt['step'] == step
        assert ckpt['ema_decay'] == 0.75 and ckpt['ema_n_averaged'] == 1 + step
        assert {k: v.shape for k, v in ckpt['model_ema'].items()} == {k: v.shape for k, v in ckpt['model'].items()}
        assert_ema_step(ckpt['model_ema'], previous, ckpt['model'], 0.75)
        previous = ckpt['model_ema']
    model = models.build_model('srresnet', ckpt['model_config'])
    model.load_state_dict(ckpt['model_ema'])  # loads strictly into the architecture, as eval.py would


def test_ema_resume_is_bit_exact(tmp_path, tiny_dataset):
    data, straight, stopped = tiny_dataset['data'], tmp_path / 'straight', tmp_path / 'stopped'
    ema = ['--ema-decay', 0.9]
    # stopped after step 4 of 6 (epoch 2, step 1), resumed there: the same weights and EMA as without the stop
    for results, extra in [(straight, ['--epochs', 2]), (stopped, ['--epochs', 2, '--max-steps', 4]),
                           (stopped, ['--epochs', 2, '--resume'])]:
        train(results, data, *ema, *extra)
    reference = load_checkpoint(straight / 'checkpoint_srresnet.pth')
    ckpt = load_checkpoint(stopped / 'checkpoint_srresnet.pth')
    assert reference['ema_n_averaged'] == ckpt['ema_n_averaged'] == 1 + 6
    assert_same(ckpt['model'], reference['model'])
    assert_same(ckpt['model_ema'], reference['model_ema'])
    assert any(not torch.equal(reference['model_ema'][k], reference['model'][k]) for k in reference['model'])


def test_default_is_off_resume_keeps_the_decay_and_refuses_another(tmp_path, tiny_dataset, capsys):
    data, plain, with_ema = tiny_dataset['data'], tmp_path / 'plain', tmp_path / 'ema'
    train(plain, data, '--epochs', 1, '--max-steps', 2)
    plain_ckpt = load_checkpoint(plain / 'checkpoint_srresnet.pth')
    assert not EMA_KEYS & set(plain_ckpt)
    train(with_ema, data, '--epochs', 1, '--max-steps', 2, '--ema-decay', 0.5)
    ema_ckpt = load_checkpoint(with_ema / 'checkpoint_srresnet.pth')
    assert_same(ema_ckpt['model'], plain_ckpt['model'])  # the EMA only watches: the training is the same
    assert any(not torch.equal(ema_ckpt['model_ema'][k], v) for k, v in plain_ckpt['model'].items())
    for results, extra, message in [
            (with_ema, ['--ema-decay', 0.9], 'was trained with --ema-decay 0.5: resume it with --ema-decay 0.5'),
            (with_ema, ['--ema-decay', 0], 'was trained with --ema-decay 0.5'),
            (plain, ['--ema-decay', 0.5], 'has no EMA weights: resume it without --ema-decay')]:
        argv = [str(a) for a in ('--data-folder', data, '--results-dir', results, '--runs-dir', results / 'runs',
                                 *TINY, '--epochs', 2, '--resume', *extra)]
        with pytest.raises(SystemExit) as stop:  # in this process: the refusal comes before any training
            run_cli(lambda: train_srresnet.main(argv))
        err = capsys.readouterr().err
        assert stop.value.code == 2 and message in err and err.strip().count('\n') == 0, err
    result = run_script('train_srresnet.py', '--data-folder', data, '--results-dir', with_ema, '--runs-dir',
                        with_ema / 'runs', *TINY, '--epochs', 2, '--resume')  # a bare --resume keeps the run's EMA
    assert result.returncode == 0, result.stderr
    resumed = load_checkpoint(with_ema / 'checkpoint_srresnet.pth')
    assert resumed['ema_decay'] == 0.5 and resumed['args']['ema_decay'] == 0.5 and resumed['step'] > 2
    with pytest.raises(SystemExit) as stop:  # 1 would freeze the EMA at the initial weights
        train_srresnet.build_parser().parse_args(['--ema-decay', '1'])
    assert stop.value.code == 2 and '--ema-decay: must be in [0, 1)' in capsys.readouterr().err


def psnr_of(state, hr_images):
    model = models.build_model('srresnet', models.model_config('srresnet', 4, n_blocks=2, n_channels=8))
    model.load_state_dict(state)
    return inference.validate_psnr(inference.Upscaler(model.eval(), models.ARCHS['srresnet'], 4, 'cpu'), hr_images, 4)


def test_validation_and_keep_best_judge_the_ema_weights(tmp_path, tiny_dataset):
    results = tmp_path / 'run'
    # the plain eager model, so that this test's own Upscaler runs the very same arithmetic as the validation
    result = train(results, tiny_dataset['data'], '--epochs', 2, '--lr', 1e-2, '--ema-decay', 0.9, '--val-folder',
                   tiny_dataset['test'], '--keep-best', '--no-channels-last', '--no-tail-before-shuffle')
    assert 'val PSNR (EMA)' in result.stdout
    hr_images = [pil_to_tensor(load_image(p)) for p in list_image_files(tiny_dataset['test'])]
    best = load_checkpoint(results / 'checkpoint_srresnet_best.pth')
    latest = load_checkpoint(results / 'checkpoint_srresnet.pth')
    assert best['best_psnr'] == pytest.approx(psnr_of(best['model_ema'], hr_images), abs=1e-9)
    assert latest['best_psnr'] == best['best_psnr']
    assert psnr_of(latest['model_ema'], hr_images) <= latest['best_psnr'] + 1e-9
    # the raw weights score differently: validation really saw the EMA
    assert abs(psnr_of(best['model'], hr_images) - best['best_psnr']) > 1e-3
    assert list((results / 'runs').rglob('events.*'))


def test_srgan_starts_from_the_srresnet_ema_and_keeps_generator_ema(tmp_path, tiny_dataset):
    data, results = tiny_dataset['data'], tmp_path / 'run'
    train(results, data, '--epochs', 1, '--max-steps', 2, '--lr', 1e-2, '--ema-decay', 0.5)
    srresnet = load_checkpoint(results / 'checkpoint_srresnet.pth')
    previous = {f"net.{k}": v for k, v in srresnet['model_ema'].items()}  # the warm start: the pretrain's EMA
    path = results / 'checkpoint_srgan.pth'
    for step, extra in enumerate([['--max-steps', 1], ['--resume', '--max-steps', 2]], start=1):
        train(results, data, *TINY_D, '--epochs', 1, '--lr', 1e-2, '--ema-decay', 0.5, *extra,
              script='train_srgan.py')
        ckpt = load_checkpoint(path)
        assert ckpt['step'] == step and ckpt['ema_n_averaged'] == 1 + step and 'model_ema' not in ckpt
        assert_ema_step(ckpt['generator_ema'], previous, ckpt['generator'], 0.5)
        previous = ckpt['generator_ema']
    models.Generator(**ckpt['generator_config']).load_state_dict(ckpt['generator_ema'])
    train(tmp_path / 'plain', data, *TINY_D, '--epochs', 1, '--max-steps', 1, '--srresnet-checkpoint', 'none',
          script='train_srgan.py')
    assert not EMA_KEYS & set(load_checkpoint(tmp_path / 'plain' / 'checkpoint_srgan.pth'))
