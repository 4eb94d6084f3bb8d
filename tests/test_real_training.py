"""The trainers on real-photo data: --degradation (Real-ESRGAN's degradations of each HR crop) and --paired (the LR
images given), recorded in the checkpoint and taken back by a bare --resume; contradictions refused in one line."""
import re

import numpy as np
import pytest
import torch
from PIL import Image

import degradations
import train_srgan
import train_srresnet
import training
from checkpoints import load_checkpoint
from conftest import photo_crops, run_here
from datasets import create_paired_lists
from utils import UserError

TINY = ['--n-blocks', 2, '--n-channels', 8, '--crop-size', 32, '--batch-size', 3, '--workers', 0]


def train(tmp_path, data, *extra, script='train_srresnet.py'):
    return run_here(script, '--data-folder', data, '--results-dir', tmp_path / 'results',
                    '--runs-dir', tmp_path / 'runs', *extra)


def settings_of(tmp_path, data, *extra, script=train_srresnet):
    argv = [str(a) for a in ('--data-folder', data, '--results-dir', tmp_path / 'results', *extra)]
    return script.resolve_settings(script.build_parser(), argv)


def test_degradation_flags_reach_the_dataset_with_their_ranges(tmp_path, tiny_dataset):
    s = settings_of(tmp_path, tiny_dataset['data'], *TINY, '--degradation', 'light',
                    '--degradation-opt', 'second.jpeg_range=50,95', '--degradation-opt', 'final_sinc_prob=0.25')
    assert s.lr_from == 'patch' and s.degradation == 'light' and not s.paired
    dataset, _ = training.build_train_dataset(s, log=lambda *_: None)
    expected = degradations.with_overrides(degradations.preset('light'),
                                           ['second.jpeg_range=50,95', 'final_sinc_prob=0.25'])
    assert dataset.degradation == expected and dataset.degradation != degradations.preset('light')
    assert dataset.lr_method is None and not dataset.paired
    lr, hr = dataset[(1, 0)]  # (1, 3, 8, 8), (1, 3, 32, 32) uint8
    assert lr.shape == (1, 3, 8, 8) and hr.shape == (1, 3, 32, 32)
    again = degradations.degrade(hr[0].numpy(), 4, expected, degradations.patch_rng(s.seed, 1, 0, 0))
    assert np.array_equal(lr[0].numpy(), again)
    # the recipe's LR source does not override the degradation (cpu-291 makes LR from each image)
    s = settings_of(tmp_path, tiny_dataset['data'], '--recipe', 'cpu-291', '--degradation', 'realesrgan')
    assert s.lr_from == 'patch'
    # the SRGAN trainer takes the same flags
    s = settings_of(tmp_path, tiny_dataset['data'], '--degradation', 'realesrgan', '--vgg-weights', 'random',
                    script=train_srgan)
    assert s.degradation == 'realesrgan' and s.lr_from == 'patch'


def test_without_a_preset_the_lr_is_bicubic_as_before(tmp_path, tiny_dataset):
    s = settings_of(tmp_path, tiny_dataset['data'], *TINY)
    assert s.degradation == 'bicubic' and s.lr_from == 'patch'
    dataset, _ = training.build_train_dataset(s, log=lambda *_: None)
    assert dataset.degradation is None and torch.is_tensor(dataset[(1, 0)])  # HR only: LR made on the device


@pytest.mark.parametrize('extra, message', [
    (['--degradation', 'light', '--paired'], '--paired trains on the LR images given'),
    (['--degradation', 'light', '--lr-from', 'image'], '--lr-from image: --degradation light degrades'),
    (['--degradation-opt', 'second.jpeg_range=50,95'], 'give one of them'),
    (['--degradation', 'light', '--degradation-opt', 'second.nope=1'], 'is not KEY=VALUE with KEY one of'),
    (['--degradation', 'light', '--degradation-opt', 'second.jpeg_range=95,50'], 'jpeg_range'),
    (['--faithful', '--degradation', 'realesrgan'], "--faithful: the tutorial's pipeline makes each LR patch"),
    (['--paired', '--lr-from', 'patch'], '--lr-from patch: --paired cuts each LR crop'),
])
def test_contradictions_are_refused_naming_the_flags(tmp_path, tiny_dataset, extra, message):
    with pytest.raises(UserError, match=re.escape(message)):
        settings_of(tmp_path, tiny_dataset['data'], *TINY, *extra)


def test_a_contradiction_on_the_command_line_is_one_line_and_exit_2_before_any_work(tmp_path, tiny_dataset):
    result = train(tmp_path, tiny_dataset['data'], *TINY, '--epochs', 1, '--degradation', 'light', '--paired')
    assert result.returncode == 2, result.stdout
    assert '--paired trains on the LR images given' in result.stderr and 'Traceback' not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / 'results').exists() or not list((tmp_path / 'results').iterdir())


def run_main(*argv):
    """(exit code, stdout) of train_srresnet.py's command line in this process (conftest.run_here)."""
    result = run_here('train_srresnet.py', *argv)
    return result.returncode, result.stdout


def test_a_degraded_run_records_its_degradation_and_a_bare_resume_keeps_it(tmp_path, tiny_dataset):
    code, out = run_main('--data-folder', tiny_dataset['data'], '--results-dir', tmp_path / 'results',
                         '--runs-dir', tmp_path / 'runs', *TINY, '--epochs', 1, '--degradation', 'light',
                         '--degradation-opt', 'first.noise_range=9,9', '--degradation-opt', 'clean_prob=0.3',
                         '--degradation-opt', 'first.noise_range=1,5')
    assert code == 0
    # each key once, with the value the run uses (the last one given)
    assert ("LR by Real-ESRGAN's degradations of each HR crop (light, first.noise_range=1,5, clean_prob=0.3)"
            in out)
    path = tmp_path / 'results' / 'checkpoint_srresnet.pth'
    record = load_checkpoint(path)['args']
    assert record['degradation'] == 'light' and record['degradation_opt'] == ['first.noise_range=9,9', 'clean_prob=0.3',
                                                                       'first.noise_range=1,5']
    assert record['lr_from'] == 'patch' and record['paired'] is False
    code, out = run_main('--results-dir', tmp_path / 'results', '--epochs', 2, '--resume')
    assert code == 0 and 'epoch 2/2' in out and '(light, first.noise_range=1,5, clean_prob=0.3)' in out
    resumed = load_checkpoint(path)
    assert resumed['epoch'] == 2 and resumed['args']['degradation'] == 'light'
    assert resumed['args']['degradation_opt'] == record['degradation_opt']


def make_pair_folder(folder, scale, size=40):
    """LR/ and HR/ of photo crops: HR a crop of size x size, LR its box-filtered shrink (any LR would do)."""
    for sub in ('LR', 'HR'):
        (folder / sub).mkdir(parents=True)
    for i, img in enumerate(photo_crops(size=size, count=4)):
        Image.fromarray(img).save(folder / 'HR' / f"p{i}.png")
        Image.fromarray(img).resize((size // scale, size // scale), Image.Resampling.BOX).save(
            folder / 'LR' / f"p{i}.png")


def test_a_paired_run_trains_on_the_lr_images_given(tmp_path):
    make_pair_folder(tmp_path / 'pairs', 4, size=48)
    data = tmp_path / 'lists'
    create_paired_lists([str(tmp_path / 'pairs')], [], 4, str(data), workers=1, log=lambda *_: None)
    s = settings_of(tmp_path, data, *TINY, '--paired')
    dataset, _ = training.build_train_dataset(s, log=lambda *_: None)
    assert s.lr_from == 'image' and dataset.paired and dataset.degradation is None and dataset.lr_method is None
    lr, hr = dataset[(1, 2)]  # (1, 3, 8, 8), (1, 3, 32, 32): aligned crops of a given pair
    given = [np.asarray(Image.open(tmp_path / 'pairs' / 'LR' / f"p{i}.png")).transpose(2, 0, 1) for i in range(4)]
    assert any(_contains(g, lr[0].numpy()) for g in given)
    code, out = run_main('--data-folder', data, '--results-dir', tmp_path / 'results', '--runs-dir',
                         tmp_path / 'runs', *TINY, '--epochs', 1, '--paired')
    assert code == 0 and 'LR cropped from the LR images given (--paired)' in out
    assert load_checkpoint(tmp_path / 'results' / 'checkpoint_srresnet.pth')['args']['paired'] is True


def _contains(image, patch):
    """Whether the (3, h, w) ``patch`` is a crop of ``image`` (3, H, W), up to flips and transposition."""
    variants = [patch, patch[:, :, ::-1], patch[:, ::-1], patch[:, ::-1, ::-1]]
    variants += [v.transpose(0, 2, 1) for v in variants]
    _, h, w = patch.shape
    return any(np.array_equal(image[:, i:i + h, j:j + w], v) for v in variants
               for i in range(image.shape[1] - h + 1) for j in range(image.shape[2] - w + 1))
