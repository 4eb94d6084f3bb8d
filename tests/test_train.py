"""train_srresnet.py and train_srgan.py end to end through their command lines, at tiny sizes."""
import copy
import io
import math
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

import models
import train_srgan
import train_srresnet
import training
from conftest import run_here
from checkpoints import load_checkpoint
from utils import imresize

TINY_SRRESNET = ['--n-blocks', 2, '--n-channels', 8, '--crop-size', 32, '--batch-size', 3, '--workers', 0]
TINY_D = ['--n-blocks-d', 2, '--n-channels-d', 8, '--fc-size-d', 16]


def train(tmp_path, data, *extra, script='train_srresnet.py'):
    return run_here(script, '--data-folder', data, '--results-dir', tmp_path / 'results',
                    '--runs-dir', tmp_path / 'runs', *extra)


def test_srresnet_trains_saves_tutorial_keys_and_resume_continues_epochs(tmp_path, tiny_dataset):
    result = train(tmp_path, tiny_dataset['data'], *TINY_SRRESNET, '--epochs', 1)
    assert result.returncode == 0, result.stderr
    assert 'epoch 1/1' in result.stdout and 'cached 6 training images' in result.stdout
    path = tmp_path / 'results' / 'checkpoint_srresnet.pth'
    ckpt = load_checkpoint(path)
    assert {'epoch', 'model', 'optimizer', 'arch', 'model_config', 'format_version'} <= set(ckpt)
    assert ckpt['epoch'] == 1 and ckpt['arch'] == 'srresnet'
    assert ckpt['model_config'] == models.model_config('srresnet', 4, n_blocks=2, n_channels=8)
    assert not any(k.startswith('module.') for k in ckpt['model'])
    model = models.build_model('srresnet', ckpt['model_config'])
    model.load_state_dict(ckpt['model'])
    (log,) = (tmp_path / 'runs').iterdir()  # the run's own TensorBoard folder, recorded in the checkpoint
    assert log.name == ckpt['args']['log_name'] and log.name.startswith('srresnet_') and list(log.iterdir())

    result = train(tmp_path, tiny_dataset['data'], *TINY_SRRESNET, '--epochs', 3, '--resume')
    assert result.returncode == 0, result.stderr
    assert 'resumed' in result.stdout and 'epoch 2/3' in result.stdout and 'epoch 3/3' in result.stdout
    assert 'epoch 1/3' not in result.stdout
    resumed = load_checkpoint(path)
    assert resumed['epoch'] == 3 and resumed['step'] == 3 * 2  # 6 images / batch 3 = 2 steps per epoch
    assert list((tmp_path / 'runs').iterdir()) == [log] and resumed['args']['log_name'] == log.name
    assert not torch.equal(resumed['model']['conv_block1.conv_block.0.weight'],
                           ckpt['model']['conv_block1.conv_block.0.weight'])


def test_srresnet_resume_refuses_another_configuration(tmp_path, tiny_dataset):
    assert train(tmp_path, tiny_dataset['data'], *TINY_SRRESNET, '--epochs', 1).returncode == 0
    result = train(tmp_path, tiny_dataset['data'], *TINY_SRRESNET[:2], '--n-channels', 16, *TINY_SRRESNET[4:],
                   '--epochs', 2, '--resume')
    assert result.returncode == 2
    assert 'n_channels: checkpoint 8 vs now 16' in result.stderr


@pytest.mark.parametrize('argv, message', [
    (['--crop-size', 30], 'not divisible by --scale 4'),
    (['--scale', 3], 'supports scales 2, 4, 8'),
    (['--batch-size', 0], 'must be >= 1'),
    (['--keep-best'], '--keep-best needs --val-folder'),
    (['--arch', 'edsr', '--model-opt', 'n_blocks=3'], 'has no option n_blocks'),
])
def test_train_flag_errors_before_any_work(tmp_path, argv, message):
    result = train(tmp_path, tmp_path / 'no-data', *argv)
    assert result.returncode == 2 and message in result.stderr


@pytest.mark.parametrize('argv, message', [
    (['--faithful', '--amp', 'bf16'], "tutorial's fp32 NCHW eager loop"),
    (['--faithful', '--tail-before-shuffle'], "tutorial's fp32 NCHW eager loop"),
    (['--faithful', '--fast-prelu'], "tutorial's fp32 NCHW eager loop"),
    (['--faithful', '--fused-adam'], "tutorial's fp32 NCHW eager loop"),
    (['--faithful', '--fast-tanh'], "tutorial's fp32 NCHW eager loop"),
    (['--faithful', '--lr-from', 'image'], 'downscales each patch'),
    (['--amp', 'fp16', '--device', 'cpu'], 'needs a CUDA GPU'),
])
def test_speed_flag_errors(tmp_path, argv, message):
    result = train(tmp_path, tmp_path / 'no-data', *argv)
    assert result.returncode == 2 and message in result.stderr


@pytest.mark.parametrize('script', ['train_srresnet.py', 'train_srgan.py'])
def test_faithful_with_lr_from_image_is_refused_before_any_file_is_touched(tmp_path, tiny_dataset, script):
    (tmp_path / 'results').mkdir()
    name = 'checkpoint_srresnet.pth' if script == 'train_srresnet.py' else 'checkpoint_srgan.pth'
    (tmp_path / 'results' / name).write_bytes(b'an earlier run')
    result = train(tmp_path, tiny_dataset['data'], '--faithful', '--lr-from', 'image', '--restart', script=script)
    assert result.returncode == 2 and result.stderr.count('\n') == 1 and 'downscales each patch' in result.stderr
    assert [p.name for p in (tmp_path / 'results').iterdir()] == [name]  # --restart set nothing aside
    assert (tmp_path / 'results' / name).read_bytes() == b'an earlier run'


def test_faithful_tutorial_pipeline_trains(tmp_path, tiny_dataset):
    result = train(tmp_path, tiny_dataset['data'], *TINY_SRRESNET, '--epochs', 1, '--faithful', '--workers', 1)
    assert result.returncode == 0, result.stderr
    assert 'cached' not in result.stdout and 'epoch 1/1' in result.stdout


def test_missing_data_list_is_one_line_error(tmp_path):
    result = train(tmp_path, tmp_path / 'no-data', *TINY_SRRESNET, '--epochs', 1)
    assert result.returncode == 2 and 'create_data_lists.py' in result.stderr
    assert result.stderr.strip().count('\n') == 0


def test_srgan_step_with_random_vgg_warm_start_and_full_checkpoint(tmp_path, tiny_dataset):
    assert train(tmp_path, tiny_dataset['data'], *TINY_SRRESNET, '--epochs', 1).returncode == 0
    srresnet = load_checkpoint(tmp_path / 'results' / 'checkpoint_srresnet.pth')
    result = train(tmp_path, tiny_dataset['data'], '--vgg-weights', 'random', '--epochs', 1, '--batch-size', 3,
                   '--crop-size', 32, '--workers', 0, *TINY_D, script='train_srgan.py')
    assert result.returncode == 0, result.stderr
    assert 'RANDOM weights' in result.stderr and 'content' in result.stdout
    ckpt = load_checkpoint(tmp_path / 'results' / 'checkpoint_srgan.pth')
    assert {'generator', 'discriminator', 'optimizer_g', 'optimizer_d', 'epoch'} <= set(ckpt)
    assert ckpt['generator_config'] == srresnet['model_config']  # taken from the warm-start checkpoint
    assert len(ckpt['optimizer_d']['state']) == len(list(models.Discriminator(3, 8, 2, 16).parameters()))
    generator = models.Generator(**ckpt['generator_config'])
    generator.load_state_dict(ckpt['generator'])
    # Adam moved the generator away from its warm start.
    assert not torch.equal(ckpt['generator']['net.conv_block1.conv_block.0.weight'],
                           srresnet['model']['conv_block1.conv_block.0.weight'])


def test_srgan_d_first_order_and_missing_warm_start(tmp_path, tiny_dataset):
    result = train(tmp_path, tiny_dataset['data'], '--vgg-weights', 'random', '--epochs', 1, '--batch-size', 3,
                   '--crop-size', 32, '--workers', 0, '--n-blocks', 2, '--n-channels', 8, *TINY_D,
                   '--srresnet-checkpoint', 'none', '--update-order', 'd-first', script='train_srgan.py')
    assert result.returncode == 0, result.stderr
    result = train(tmp_path, tiny_dataset['data'], '--vgg-weights', 'random', '--srresnet-checkpoint',
                   tmp_path / 'absent.pth', script='train_srgan.py')
    assert result.returncode == 2 and 'train SRResNet first' in result.stderr


@pytest.mark.parametrize('order, expected', [('g-first', 'GDGD'), ('d-first', 'DGDG')])
def test_srgan_update_order_is_the_order_of_the_optimizer_steps(tmp_path, tiny_dataset, monkeypatch, order,
                                                                 expected):
    """--update-order: per step, the generator's Adam step then the discriminator's (tutorial), or the reverse
    (seed 001's Keras SRGAN), recorded from the optimizers' own step calls in train_srgan.main."""
    steps, d_optimizers = [], set()
    adam_step, d_step = torch.optim.Adam.step, train_srgan.discriminator_step

    def recording_adam_step(self, *args, **kwargs):
        steps.append(id(self))
        return adam_step(self, *args, **kwargs)

    def recording_d_step(discriminator, optimizer_d, *args, **kwargs):
        d_optimizers.add(id(optimizer_d))
        return d_step(discriminator, optimizer_d, *args, **kwargs)
    monkeypatch.setattr(torch.optim.Adam, 'step', recording_adam_step)
    monkeypatch.setattr(train_srgan, 'discriminator_step', recording_d_step)
    code = train_srgan.main(['--data-folder', str(tiny_dataset['data']), '--results-dir', str(tmp_path / 'results'),
                             '--runs-dir', str(tmp_path / 'runs'), '--vgg-weights', 'random', '--srresnet-checkpoint',
                             'none', '--n-blocks', '2', '--n-channels', '8', *map(str, TINY_D), '--epochs', '1',
                             '--batch-size', '3', '--crop-size', '32', '--workers', '0', '--device', 'cpu', '--amp',
                             'off', '--update-order', order])
    assert code == 0
    assert len(d_optimizers) == 1 and len(set(steps)) == 2  # one Adam per network
    assert ''.join('D' if s in d_optimizers else 'G' for s in steps) == expected  # 6 images / 3: two steps


def espcn_val_psnr_by_hand(state, config, folder):
    """Validation PSNR of ESPCN weights, the standard protocol written out: HR mod-cropped top-left, LR by MATLAB
    bicubic in uint8 (utils.imresize, tested against MATLAB's in test_imresize.py), the network on the BT.601 luma
    of the LR, its Y rounded against HR's rounded Y, scale pixels of border removed, peak 255, mean over images."""
    scale = config['scaling_factor']
    model = models.build_model('espcn', config).eval()
    model.load_state_dict(state)
    values = []
    for name in sorted(os.listdir(folder)):
        hr = np.array(Image.open(os.path.join(folder, name)).convert('RGB'))
        hr = np.ascontiguousarray(hr[:hr.shape[0] // scale * scale, :hr.shape[1] // scale * scale])  # (H', W', 3)
        lr = imresize(torch.from_numpy(hr).permute(2, 0, 1), 1 / scale).permute(1, 2, 0).numpy() / 255.
        y = (16 + 65.481 * lr[..., 0] + 128.553 * lr[..., 1] + 24.966 * lr[..., 2]) / 255  # (h, w) in [0, 1]
        with torch.no_grad():
            out = model(torch.from_numpy(y).float()[None, None])[0, 0].double().numpy()  # (H', W')
        sr_y = np.floor(np.clip(out, 0, 1) * 255 + 0.5)
        hr_y = np.floor(16 + (65.481 * hr[..., 0] + 128.553 * hr[..., 1] + 24.966 * hr[..., 2]) / 255 + 0.5)
        diff = (sr_y - hr_y)[scale:-scale, scale:-scale]
        values.append(10 * math.log10(255 ** 2 / np.mean(diff ** 2)))
    return sum(values) / len(values)


def test_keep_best_keeps_the_weights_of_the_best_validation_psnr(tmp_path, tiny_dataset, monkeypatch, capsys):
    """--keep-best: checkpoint_<arch>_best.pth holds the weights of the epoch with the best validation PSNR
    (recomputed here from each epoch's weights), is written only when validation improves, and not at all
    without the flag. A learning rate high enough that validation goes down as well as up."""
    results = tmp_path / 'results'
    best_path = results / 'checkpoint_espcn_best.pth'
    epochs = []  # per end-of-epoch save: (weights, best file's bytes after the save)
    save = training.CheckpointSaver.save

    def recording_save(self, state, improved=False):
        save(self, state, improved)
        epochs.append((copy.deepcopy(state['model']), best_path.read_bytes() if best_path.exists() else None))
    monkeypatch.setattr(training.CheckpointSaver, 'save', recording_save)
    config_opt = ['--arch', 'espcn', '--scale', '3', '--model-opt', 'channels=[8,4]']
    argv = ['--data-folder', str(tiny_dataset['data']), '--results-dir', str(results), '--runs-dir',
            str(tmp_path / 'runs'), *config_opt, '--crop-size', '24', '--batch-size', '2', '--patches-per-image', '1',
            '--workers', '0', '--device', 'cpu', '--amp', 'off', '--lr', '1e-2', '--val-folder',
            str(tiny_dataset['test'])]
    assert train_srresnet.main(argv + ['--epochs', '5', '--keep-best']) == 0
    printed = [float(v) for v in re.findall(r"val PSNR ([\d.]+) dB", capsys.readouterr().out)]
    config = load_checkpoint(results / 'checkpoint_espcn.pth')['model_config']
    psnrs = [espcn_val_psnr_by_hand(weights, config, tiny_dataset['test']) for weights, _ in epochs]
    assert len(psnrs) == len(printed) == 5
    assert np.allclose(psnrs, printed, atol=1.5e-3)  # the printed values, 3 decimals
    improved = [i == 0 or p > max(psnrs[:i]) for i, p in enumerate(psnrs)]
    assert any(improved[1:]) and not all(improved)  # the run both improves and gets worse
    for i, (_, best_bytes) in enumerate(epochs):
        if improved[i]:  # rewritten, with this epoch's weights
            assert best_bytes != (epochs[i - 1][1] if i else None)
            written = torch.load(io.BytesIO(best_bytes), weights_only=True)
            assert all(torch.equal(written['model'][k], epochs[i][0][k]) for k in epochs[i][0])
            assert written['best_psnr'] == pytest.approx(psnrs[i], abs=1e-3)  # float32 rounding: a pixel or two
        else:  # left as it was
            assert best_bytes == epochs[i - 1][1]
    best = load_checkpoint(best_path)
    assert best['best_psnr'] == pytest.approx(max(psnrs), abs=1e-3)
    assert best['epoch'] == 1 + int(np.argmax(psnrs))
    # off by default
    assert train_srresnet.main(argv + ['--epochs', '1', '--results-dir', str(tmp_path / 'plain')]) == 0
    assert sorted(os.listdir(tmp_path / 'plain')) == ['checkpoint_espcn.pth', 'espcn_curves.png']  # no _best.pth


def test_srgan_learning_rate_decays_once_at_half_the_epochs_also_when_resumed_inside_that_epoch(tmp_path,
                                                                                               tiny_dataset):
    """The tutorial's x0.1 at epoch == epochs / 2 (docs/differences.md, 18): applied when epoch 2 of 4 starts, and
    not again when a run stopped inside epoch 2 is resumed there. 6 images, batch 3: 2 steps per epoch."""
    srgan = ['--vgg-weights', 'random', '--srresnet-checkpoint', 'none', '--n-blocks', 2, '--n-channels', 8, *TINY_D,
             '--batch-size', 3, '--crop-size', 32, '--workers', 0, '--device', 'cpu', '--amp', 'off', '--epochs', 4,
             '--lr', 1e-3]
    path = tmp_path / 'results' / 'checkpoint_srgan.pth'

    def learning_rates():
        ckpt = load_checkpoint(path)
        return ({g['lr'] for g in ckpt['optimizer_g']['param_groups']} |
                {g['lr'] for g in ckpt['optimizer_d']['param_groups']}), ckpt
    first = train(tmp_path, tiny_dataset['data'], *srgan, '--max-steps', 1, script='train_srgan.py')
    assert first.returncode == 0, first.stderr
    assert learning_rates()[0] == {1e-3}  # epoch 1: no decay yet
    second = train(tmp_path, tiny_dataset['data'], *srgan, '--resume', '--max-steps', 3, script='train_srgan.py')
    assert second.returncode == 0 and 'stopped at epoch 2, step 1' in second.stdout, second.stderr
    rates, ckpt = learning_rates()
    assert sorted(rates) == pytest.approx([1e-4]) and ckpt['resume_step'] == 1  # decayed when epoch 2 began
    third = train(tmp_path, tiny_dataset['data'], *srgan, '--resume', '--max-steps', 4, script='train_srgan.py')
    assert third.returncode == 0, third.stderr
    rates, ckpt = learning_rates()
    assert ckpt['step'] == 4 and sorted(rates) == pytest.approx([1e-4])  # resumed inside epoch 2: not decayed again


def test_tensorboard_logs_the_epoch_mean_per_step_losses_and_first_batch_grids(tmp_path, tiny_dataset, capsys):
    """docs/differences.md, 11: the epoch's loss is the mean of its steps' (the tutorial logged the last batch's),
    every step is logged, and every epoch gets LR/SR/HR grids (the tutorial's came at batch n_iter - 2 only)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    argv = ['--data-folder', str(tiny_dataset['data']), '--results-dir', str(tmp_path / 'results'), '--runs-dir',
            str(tmp_path / 'runs'), *map(str, TINY_SRRESNET[:-4]), '--batch-size', '2', '--workers', '0',
            '--device', 'cpu', '--amp', 'off', '--epochs', '2']
    assert train_srresnet.main(argv) == 0
    printed = [float(v) for v in re.findall(r"^epoch \d/2: loss ([\d.e+-]+)", capsys.readouterr().out, flags=re.M)]
    (log,) = (tmp_path / 'runs').iterdir()
    events = EventAccumulator(str(log), size_guidance={'images': 0, 'scalars': 0})
    events.Reload()
    steps = [e.value for e in sorted(events.Scalars('srresnet/loss_step'), key=lambda e: e.step)]
    epochs = [e.value for e in sorted(events.Scalars('srresnet/loss'), key=lambda e: e.step)]
    assert len(steps) == 6 and len(epochs) == len(printed) == 2  # 6 images, batch 2: 3 steps per epoch
    for i in range(2):
        mean = sum(steps[3 * i:3 * i + 3]) / 3  # equal batches: the plain mean
        assert epochs[i] == pytest.approx(mean, rel=1e-6) and printed[i] == pytest.approx(mean, rel=1e-4)
        assert abs(epochs[i] - steps[3 * i + 2]) > 1e-6  # not the last batch's loss
    images = set(events.Tags()['images'])
    assert {f"srresnet/epoch_{e}/{k}" for e in (1, 2) for k in ('1_lr', '2_sr', '3_hr')} <= images
