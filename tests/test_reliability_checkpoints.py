"""Checkpoints: plain data only, safe loading (no code ever runs), atomic writes under SIGKILL and disk-full,
legacy conversion, prefix stripping, refusal of other architectures / scales / format versions."""
import errno
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import checkpoints
import models
import training
import utils
from conftest import REPO, run_here, run_script
from train_srresnet import Trainee, checkpoint_state

PLAIN = (dict, list, tuple, str, int, float, bool, type(None), torch.Tensor)


def assert_plain(obj, where='checkpoint'):
    assert isinstance(obj, PLAIN), f"{where} holds a {type(obj).__name__}"
    if isinstance(obj, dict):
        for k, v in obj.items():
            assert isinstance(k, (str, int)), f"{where} has key {k!r}"
            assert_plain(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            assert_plain(v, f"{where}[{i}]")


def test_training_checkpoint_is_plain_data_loadable_with_weights_only(tmp_path, tiny_dataset):
    result = run_here('train_srresnet.py', '--data-folder', tiny_dataset['data'], '--results-dir', tmp_path,
                      '--runs-dir', tmp_path / 'runs', '--n-blocks', 2, '--n-channels', 8, '--crop-size', 32,
                      '--batch-size', 3, '--workers', 0, '--epochs', 1, '--device', 'cpu', '--amp', 'off')
    assert result.returncode == 0, result.stderr
    ckpt = torch.load(tmp_path / 'checkpoint_srresnet.pth', weights_only=True, map_location='cpu')
    assert_plain(ckpt)
    assert ckpt['format_version'] == checkpoints.FORMAT_VERSION
    assert {'python', 'numpy', 'torch', 'cuda'} <= set(ckpt['rng'])
    assert ckpt['args']['arch'] == 'srresnet'
    assert ckpt['args']['model_config'] == ckpt['model_config']  # the recorded args keep dicts as dicts
    model = models.build_model('srresnet', ckpt['model_config'])
    assert ckpt['model'].keys() == model.state_dict().keys()  # the state_dicts themselves, not wrapped objects
    assert {'state', 'param_groups'} <= set(ckpt['optimizer']) and len(ckpt['optimizer']['state']) == len(
        list(model.parameters()))
    assert isinstance(ckpt['scheduler'], dict) and ckpt['scheduler']['last_epoch'] == 1  # one epoch's step
    assert ckpt['scaler'] == {}  # fp32 (--amp off): the GradScaler is disabled, and a disabled one has no state


class _Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, 'w'))


def test_pickle_payload_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / 'PWNED'
    evil = tmp_path / 'evil.pth'
    torch.save({'epoch': 1, 'model': _Payload(str(marker))}, evil)
    with pytest.raises(utils.UserError, match='refusing to load .* can run code'):
        checkpoints.load_checkpoint(str(evil))
    assert not marker.exists()
    # Through the command line too: resume and SRGAN warm start.
    result = run_script('train_srresnet.py', '--resume', evil, '--data-folder', tmp_path, '--epochs', 1)
    assert result.returncode == 2 and 'refusing to load' in result.stderr
    result = run_script('train_srgan.py', '--srresnet-checkpoint', evil, '--data-folder', tmp_path,
                        '--vgg-weights', 'random')
    assert result.returncode == 2 and 'refusing to load' in result.stderr
    assert not marker.exists()


def test_legacy_whole_model_checkpoint_gets_message_and_converter(tmp_path):
    torch.manual_seed(0)
    model = models.SRResNet(n_blocks=2, n_channels=8, scaling_factor=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    legacy = tmp_path / 'legacy.pth'
    torch.save({'epoch': 7, 'model': model, 'optimizer': optimizer}, legacy)  # the original tutorial's format
    with pytest.raises(utils.UserError) as err:
        checkpoints.load_checkpoint(str(legacy))
    assert '--convert-legacy' in str(err.value) and '\n' not in str(err.value)
    converted = tmp_path / 'converted.pth'
    checkpoints.convert_legacy_checkpoint(str(legacy), str(converted))
    ckpt = torch.load(converted, weights_only=True)
    assert_plain(ckpt)
    assert ckpt['epoch'] == 7 and ckpt['model_config']['scaling_factor'] == 2
    rebuilt = checkpoints.load_sr_model(str(converted))
    x = torch.randn(1, 3, 8, 8)
    assert rebuilt.arch == 'srresnet' and torch.equal(rebuilt.network(x), model.eval()(x))


WRITER = r'''
import sys, torch
sys.path.insert(0, sys.argv[1])
import checkpoints
path = sys.argv[2]
i = 0
while True:
    i += 1
    checkpoints.save_checkpoint({'version': i, 'weights': torch.full((4_000_000,), float(i))}, path)
    print(i, flush=True)
'''


def test_sigkill_during_saves_always_leaves_a_loadable_checkpoint(tmp_path):
    path = tmp_path / 'checkpoint.pth'
    kills, mid_write = 0, 0
    while kills < 4 or (not mid_write and kills < 12):  # until at least one kill landed inside a save
        proc = subprocess.Popen([sys.executable, '-c', WRITER, REPO, str(path)], stdout=subprocess.PIPE, text=True)
        proc.stdout.readline()  # at least one complete save
        time.sleep(0.05 + 0.07 * (kills % 4))  # land somewhere inside a later save
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        temps = [name for name in os.listdir(tmp_path) if name != 'checkpoint.pth']
        assert all(name.startswith('.checkpoint.pth.') and name.endswith('.tmp') for name in temps), temps
        mid_write += bool(temps)  # the killed writer left its half-written temp file
        ckpt = checkpoints.load_checkpoint(str(path))
        assert torch.equal(ckpt['weights'], torch.full((4_000_000,), float(ckpt['version'])))
    assert mid_write, f"none of {kills} kills landed inside a save: the temp-file clean-up below proves nothing"
    # The next save removes temp files left by killed writers.
    checkpoints.save_checkpoint({'version': 0}, str(path))
    assert sorted(os.listdir(tmp_path)) == ['checkpoint.pth']


def test_disk_full_raises_clear_error_and_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / 'checkpoint.pth'
    checkpoints.save_checkpoint({'epoch': 1}, str(path))
    before = path.read_bytes()

    def disk_full(fd):
        raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(os, 'fsync', disk_full)
    with pytest.raises(utils.UserError, match='No space left on device.*previous file'):
        checkpoints.save_checkpoint({'epoch': 2, 'w': torch.zeros(1000)}, str(path))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ['checkpoint.pth']


def test_permission_denied_is_a_clear_error(tmp_path, monkeypatch):
    real_open = os.open

    def denied(path, flags, *args, **kwargs):  # creating the temp file is denied, as in a read-only folder
        if flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, 'Permission denied')
        return real_open(path, flags, *args, **kwargs)
    monkeypatch.setattr(os, 'open', denied)
    with pytest.raises(utils.UserError, match='cannot write .*Permission denied'):
        checkpoints.save_checkpoint({'epoch': 1}, str(tmp_path / 'x.pth'))


def test_wrapper_prefixes_never_leak_into_saved_files_and_prefixed_files_load(tmp_path):
    model = models.SRResNet(n_blocks=2, n_channels=8)
    wrapped = torch.compile(torch.nn.DataParallel(model))  # state_dict keys: _orig_mod.module.*
    assert next(iter(wrapped.state_dict())).startswith('_orig_mod.module.')
    config = models.model_config('srresnet', 4, n_blocks=2, n_channels=8)
    settings = utils.Settings(arch='srresnet', model_config=config)
    speed = training.resolve_speed(torch.device('cpu'), amp='off')
    opt = torch.optim.Adam(model.parameters())
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [])
    trainee = Trainee(wrapped, opt, sched, torch.nn.MSELoss(), training.make_scaler(torch.device('cpu'), speed))
    state = checkpoint_state(trainee, 0, settings, speed, 1, 0, None)
    assert list(state['model']) == list(model.state_dict())
    # A file written by someone else's wrapped model still loads.
    prefixed = {'model': {'module.' + k: v for k, v in model.state_dict().items()}, 'epoch': 1}
    checkpoints.save_checkpoint(prefixed, str(tmp_path / 'prefixed.pth'))
    loaded = checkpoints.load_sr_model(str(tmp_path / 'prefixed.pth'))
    assert loaded.config['n_blocks'] == 2
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(loaded.network(x), model.eval()(x))


def test_other_arch_scale_and_format_version_are_refused(tmp_path, tiny_dataset):
    model = models.SRResNet(n_blocks=2, n_channels=8, scaling_factor=2)
    config = models.model_config('srresnet', 2, n_blocks=2, n_channels=8)
    checkpoints.save_checkpoint({'format_version': 1, 'arch': 'srresnet', 'model_config': config, 'epoch': 1,
                                 'model': model.state_dict(),  # a run's state: --resume refuses weights only
                                 'optimizer': torch.optim.Adam(model.parameters()).state_dict()},
                                str(tmp_path / 'x2.pth'))
    with pytest.raises(utils.UserError, match='trained for x2, not x4'):
        checkpoints.load_sr_model(str(tmp_path / 'x2.pth'), expect_scale=4)
    checkpoints.save_checkpoint({'format_version': 99, 'model': {}, 'epoch': 1}, str(tmp_path / 'future.pth'))
    with pytest.raises(utils.UserError, match='format version 99'):
        checkpoints.load_sr_model(str(tmp_path / 'future.pth'))
    common = ['--data-folder', tiny_dataset['data'], '--results-dir', tmp_path, '--epochs', 1, '--workers', 0]
    result = run_here('train_srresnet.py', *common, '--arch', 'espcn', '--scale', 2, '--resume', tmp_path / 'x2.pth')
    assert result.returncode == 2 and 'is a srresnet checkpoint, not espcn' in result.stderr
    result = run_here('train_srresnet.py', *common, '--n-blocks', 2, '--n-channels', 8, '--scale', 4,
                      '--resume', tmp_path / 'x2.pth')
    assert result.returncode == 2 and 'scaling_factor: checkpoint 2 vs now 4' in result.stderr


def test_saved_files_get_the_usual_permissions_and_non_checkpoints_a_plain_error(tmp_path):
    old = os.umask(0o022)
    try:
        checkpoints.save_checkpoint({'epoch': 1}, str(tmp_path / 'c.pth'))
    finally:
        os.umask(old)
    assert (tmp_path / 'c.pth').stat().st_mode & 0o777 == 0o644
    (tmp_path / 'notes.pth').write_text('hello world\n')
    with pytest.raises(utils.UserError, match='not a readable checkpoint'):
        checkpoints.load_checkpoint(str(tmp_path / 'notes.pth'))
