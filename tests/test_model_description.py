"""One description of a model from one loader, and settings made once from the flags: every script (test.py, eval.py,
export.py, the web page, both trainers) reads its checkpoints through checkpoints.load_sr_model and works from the
ModelDescription it returns, never reading a checkpoint into a model another way; the trainers and eval.py resolve
their flags into a frozen utils.Settings and leave the parsed flags as they were.
"""
import argparse

import numpy as np
import pytest
import torch
from PIL import Image

import app
import checkpoints
import eval as eval_script
import export
import models
import train_srgan
import train_srresnet
from test_test_script import run_main
from utils import Settings

TINY_RUN = ['--crop-size', 32, '--batch-size', 3, '--workers', 0, '--device', 'cpu', '--amp', 'off', '--max-steps', 1]
TINY_D = ['--n-blocks-d', 2, '--n-channels-d', 8, '--fc-size-d', 16, '--vgg-weights', 'random']


def save_tiny(path, arch, scale, **config):
    """A random-weight checkpoint of this suite's format at ``path``."""
    torch.manual_seed(0)
    config = models.model_config(arch, scale, **config)
    checkpoints.save_checkpoint({'format_version': checkpoints.FORMAT_VERSION, 'arch': arch, 'model_config': config,
                                 'epoch': 1, 'model': models.build_model(arch, config).state_dict()}, str(path))
    return str(path)


@pytest.fixture
def files(tmp_path):
    """A tiny ESPCN x2 and a tiny SRResNet x4 checkpoint, and a folder holding one 32x28 photo."""
    photos = tmp_path / 'photos'
    photos.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (28, 32, 3), dtype=np.uint8)).save(photos / 'photo.png')
    return {'espcn': save_tiny(tmp_path / 'espcn.pth', 'espcn', 2, channels=(8, 8)),
            'srresnet': save_tiny(tmp_path / 'srresnet.pth', 'srresnet', 4, n_blocks=2, n_channels=8),
            'photos': photos, 'photo': str(photos / 'photo.png')}


@pytest.fixture
def loads(monkeypatch):
    """The paths checkpoints.load_sr_model was asked for, in order. Its steps (describe_checkpoint, build_network)
    called from anywhere but inside it fail the test: no script reads a checkpoint into a model by another way."""
    calls, inside = [], []
    real_load, real_describe, real_build = (checkpoints.load_sr_model, checkpoints.describe_checkpoint,
                                            checkpoints.build_network)

    def load_sr_model(path, *args, **kwargs):
        inside.append(path)
        try:
            model = real_load(path, *args, **kwargs)
        finally:
            inside.pop()
        assert isinstance(model, checkpoints.ModelDescription) and isinstance(model.spec, models.ArchSpec)
        assert model.network is not None and model.path == path
        calls.append(str(path))
        return model

    def only_inside(step):
        def called(*args, **kwargs):
            assert inside, f"checkpoints.{step.__name__} called outside checkpoints.load_sr_model"
            return step(*args, **kwargs)
        return called

    monkeypatch.setattr(checkpoints, 'load_sr_model', load_sr_model)
    monkeypatch.setattr(checkpoints, 'describe_checkpoint', only_inside(real_describe))
    monkeypatch.setattr(checkpoints, 'build_network', only_inside(real_build))
    return calls


def test_test_py_gets_its_model_from_the_loader(files, loads, tmp_path):
    code, _, err = run_main('--checkpoint', files['espcn'], '--image', files['photo'],
                            '--output-dir', tmp_path / 'out', '--device', 'cpu')
    assert code == 0, err
    assert loads == [files['espcn']] and (tmp_path / 'out' / 'photo_x2_espcn.png').exists()


def test_eval_py_gets_its_model_from_the_loader(files, loads, tmp_path):
    assert eval_script.main(['--checkpoint', files['espcn'], '--test-folders', str(files['photos']),
                             '--results-dir', str(tmp_path / 'eval'), '--device', 'cpu']) == 0
    assert loads == [files['espcn']] and (tmp_path / 'eval' / 'eval_espcn_x2.json').exists()


def test_export_py_gets_its_model_from_the_loader(files, loads, tmp_path):
    out = tmp_path / 'espcn.safetensors'
    assert export.main(['--checkpoint', files['espcn'], '--format', 'safetensors', '--output', str(out)]) == 0
    assert loads == [files['espcn']] and out.exists()


def test_the_web_page_gets_its_model_from_the_loader(files, loads, tmp_path):
    (tmp_path / 'work').mkdir()
    service = app.SRService(app.Settings(torch.device('cpu'), str(tmp_path), 10 ** 6, True, str(tmp_path / 'work')))
    assert service.describe(files['espcn'])[1] == 2
    (result,), _ = service.job([files['photo']], files['espcn'], '', None, False, 'fp32', 'auto', 's', lambda *a: None)
    assert loads == [files['espcn']] and result.out_size == (64, 56)  # loaded once, kept for the job


def test_both_trainers_get_their_starting_weights_from_the_loader(files, loads, tiny_dataset, tmp_path):
    common = ['--data-folder', str(tiny_dataset['data']), '--runs-dir', str(tmp_path / 'runs'), *map(str, TINY_RUN)]
    assert train_srresnet.main([*common, '--results-dir', str(tmp_path / 'init'), '--n-blocks', '2',
                                '--n-channels', '8', '--init-from', files['srresnet']]) == 0
    assert loads == [files['srresnet']]  # --init-from
    assert train_srgan.main([*common, '--results-dir', str(tmp_path / 'gan'), *map(str, TINY_D),
                             '--srresnet-checkpoint', files['srresnet']]) == 0
    assert loads == [files['srresnet']] * 3  # the warm start: its configuration checked with the flags, its weights


@pytest.fixture
def parsed(monkeypatch):
    """[(namespace, its values when parse_args returned it)] of every parse_args call."""
    seen, real = [], argparse.ArgumentParser.parse_args

    def parse_args(self, args=None, namespace=None):
        flags = real(self, args, namespace)
        seen.append((flags, dict(vars(flags))))
        return flags
    monkeypatch.setattr(argparse.ArgumentParser, 'parse_args', parse_args)
    return seen


@pytest.mark.parametrize('script_name', ['train_srresnet', 'train_srgan', 'eval'])
def test_settings_are_made_once_from_the_flags_and_frozen(script_name, files, parsed, tmp_path):
    run = checkpoints.load_checkpoint(files['espcn'])  # --resume needs a training run's state, not weights only
    run['optimizer'] = torch.optim.Adam(models.build_model('espcn', run['model_config']).parameters()).state_dict()
    checkpoints.save_checkpoint(run, str(tmp_path / 'espcn_run.pth'))
    module, argv = {
        'train_srresnet': (train_srresnet, ['--arch', 'espcn', '--scale', '2', '--model-opt', 'channels=[8,8]',
                                            '--resume', str(tmp_path / 'espcn_run.pth'), '--results-dir',
                                            str(tmp_path)]),
        'train_srgan': (train_srgan, ['--srresnet-checkpoint', files['srresnet'], '--results-dir', str(tmp_path)]),
        'eval': (eval_script, ['--arch', 'bicubic', '--metrics', 'ssim', 'psnr', 'psnr']),
    }[script_name]
    resolve = getattr(module, 'resolve_settings', None) or module.resolve_args
    settings = resolve(module.build_parser(), argv)
    assert isinstance(settings, Settings) and parsed
    assert all(vars(flags) == values for flags, values in parsed)  # no parsed flag was changed afterwards
    with pytest.raises(AttributeError, match='made once from the flags'):
        settings.scale = 3
    with pytest.raises(AttributeError, match='made once from the flags'):
        del settings.scale
    resolved = {'train_srresnet': lambda s: (s.scale, s.crop_size, s.checkpoint_path, s.resume),
                'train_srgan': lambda s: (s.scale, s.generator_config['n_channels'], s.crop_size),
                'eval': lambda s: (s.scale, s.metrics, s.protocols)}[script_name](settings)
    assert resolved == {'train_srresnet': (2, 34, str(tmp_path / 'checkpoint_espcn.pth'),
                                           str(tmp_path / 'espcn_run.pth')),
                        'train_srgan': (4, 8, 96),
                        'eval': (4, ('psnr', 'ssim'), ('standard', 'tutorial'))}[script_name]
