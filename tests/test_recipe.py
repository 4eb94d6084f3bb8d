"""The named recipe of the primary model (train_srresnet.py --recipe cpu-291), the per-step warm-up + cosine learning
rate and the EMA warm-up: values against hand computations, end-to-end runs, resume."""
import math

import pytest
import torch

import models
import train_srresnet
import training
from conftest import run_here
from checkpoints import load_checkpoint

TINY = ['--n-blocks', 2, '--n-channels', 8, '--crop-size', 32, '--batch-size', 3, '--workers', 0, '--device', 'cpu',
        '--amp', 'off']


def train(tmp_path, data, *extra):
    return run_here('train_srresnet.py', '--data-folder', data, '--results-dir', tmp_path / 'results',
                    '--runs-dir', tmp_path / 'runs', *extra)


def test_warmup_cosine_lr_at_the_points_of_its_definition():
    lr = training.warmup_cosine_lr
    assert lr(1.0, 0, 100, 10) == pytest.approx(0.1)  # linear warm-up: 1/10, 2/10, ... 10/10
    assert lr(1.0, 4, 100, 10) == pytest.approx(0.5)
    assert lr(1.0, 9, 100, 10) == pytest.approx(1.0)
    assert lr(1.0, 10, 100, 10) == pytest.approx(1.0)  # the cosine starts at the peak
    # halfway through the cosine part (steps 10..99): 0.01 + 0.99 * (1 + cos(pi / 2)) / 2
    assert lr(2e-3, 10 + 89 / 2, 100, 10) == pytest.approx(2e-3 * (0.01 + 0.99 * 0.5))
    assert lr(1.0, 99, 100, 10) == pytest.approx(0.01)  # the last step at lr / 100
    assert lr(1.0, 150, 100, 10) == pytest.approx(0.01)  # and there after
    steps = [lr(1.0, s, 100, 10) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(steps, steps[1:]))


def test_ema_warmup_decay_follows_the_num_updates_rule():
    assert training.ema_warmup_decay(0.999, 1) == pytest.approx(2 / 11)
    assert training.ema_warmup_decay(0.999, 8) == pytest.approx(0.5)
    assert training.ema_warmup_decay(0.999, 80) == pytest.approx(0.9)
    assert training.ema_warmup_decay(0.999, 10 ** 6) == 0.999


def test_ema_with_warmup_is_the_hand_computed_average():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    weights = [model.weight.detach().clone()]
    ema = training.make_ema(model, 0.999, warmup=True)
    expected = weights[0].clone()
    for n in range(1, 5):  # n weight sets averaged before this update
        with torch.no_grad():
            model.weight.add_(torch.randn_like(model.weight))
        training.update_ema(ema, model)
        decay = min(0.999, (1 + n) / (10 + n))
        expected = decay * expected + (1 - decay) * model.weight.detach()
    assert torch.allclose(ema.module.weight, expected, atol=1e-6)
    plain = training.make_ema(torch.nn.Linear(3, 2), 0.999)
    assert plain.warmup is False and training.ema_state(ema, 'model_ema')['ema_warmup'] is True


def test_cpu_291_is_the_tutorial_network_with_its_named_recipe():
    args = train_srresnet.resolve_settings(train_srresnet.build_parser(), ['--recipe', 'cpu-291'])
    recipe = models.ARCHS['srresnet'].recipes['cpu-291']
    for key, value in recipe.items():
        assert getattr(args, key) == value, key
    assert args.recipe == 'cpu-291' and args.scale == 4
    model = models.build_model(args.arch, args.model_config)
    assert models.count_parameters(model) == 1549462  # the tutorial's SRResNet, unchanged
    tutorial = train_srresnet.resolve_settings(train_srresnet.build_parser(), [])
    assert (tutorial.batch_size, tutorial.lr, tutorial.loss, tutorial.epochs) == (400, 1e-4, 'mse', 130)
    assert tutorial.ema_decay is None and tutorial.recipe is None
    flagged = train_srresnet.resolve_settings(train_srresnet.build_parser(), ['--recipe', 'cpu-291', '--lr', '5e-4'])
    assert flagged.lr == 5e-4 and flagged.loss == recipe['loss']  # a flag given overrides the recipe's entry


@pytest.mark.parametrize('argv, message', [
    (['--arch', 'espcn', '--scale', 3, '--recipe', 'cpu-291'], "espcn has no recipe 'cpu-291'"),
    (['--lr-schedule', 'warmup-cosine'], 'needs --warmup-steps'),
])
def test_recipe_and_schedule_errors_are_one_line(tmp_path, argv, message):
    result = train(tmp_path, tmp_path / 'no-data', *argv)
    assert result.returncode == 2 and message in result.stderr and 'Traceback' not in result.stderr


def test_per_step_schedule_runs_records_and_resumes_bit_for_bit(tmp_path, tiny_dataset):
    """6 images / batch 3 = 2 steps per epoch; 3 epochs = 6 steps with 2 of warm-up. The learning rate of the last
    step is the schedule's; a run stopped after 3 steps and resumed ends with the same weights and EMA."""
    flags = [*TINY, '--recipe', 'cpu-291', '--patches-per-image', 1, '--epochs', 3, '--warmup-steps', 2,
             '--ema-decay', 0.9, '--deterministic']
    straight = tmp_path / 'straight'
    result = train(straight, tiny_dataset['data'], *flags)
    assert result.returncode == 0, result.stderr
    assert 'recipe cpu-291 (srresnet x4): l1 loss, lr 0.001 warmup-cosine over 2 warm-up steps' in result.stdout
    assert 'EMA 0.9 with warm-up' in result.stdout
    ckpt = load_checkpoint(straight / 'results' / 'checkpoint_srresnet.pth')
    assert ckpt['args']['recipe'] == 'cpu-291' and ckpt['ema_warmup'] is True and ckpt['step'] == 6
    last_lr = ckpt['optimizer']['param_groups'][0]['lr']
    assert last_lr == pytest.approx(1e-3 * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi))))  # step 5 of 0..5: lr / 100

    split = tmp_path / 'split'
    assert train(split, tiny_dataset['data'], *flags, '--max-steps', 3).returncode == 0
    # the recipe, its overrides and the EMA come back from the checkpoint; speed flags are given anew (numerics pinned)
    result = train(split, tiny_dataset['data'], '--resume', '--device', 'cpu', '--amp', 'off', '--workers', 0,
                   '--deterministic')
    assert result.returncode == 0, result.stderr
    resumed = load_checkpoint(split / 'results' / 'checkpoint_srresnet.pth')
    for key in ('model', 'model_ema'):
        for name, tensor in ckpt[key].items():
            assert torch.equal(resumed[key][name], tensor), (key, name)


def test_resume_refuses_another_ema_warmup(tmp_path, tiny_dataset):
    flags = [*TINY, '--epochs', 2, '--ema-decay', 0.9, '--ema-warmup']
    assert train(tmp_path, tiny_dataset['data'], *flags, '--max-steps', 1).returncode == 0
    result = train(tmp_path, tiny_dataset['data'], *TINY, '--epochs', 2, '--resume', '--no-ema-warmup')
    assert result.returncode == 2 and 'was trained with --ema-warmup' in result.stderr
