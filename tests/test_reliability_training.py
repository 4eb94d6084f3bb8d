"""Training survives interruption: exact resume, Ctrl-C / SIGTERM saves and exits 0, NaN/inf stops cleanly."""
import signal
import subprocess
import sys
import time

import torch

from conftest import REPO, run_script
from utils import load_checkpoint

TINY = ['--n-blocks', 2, '--n-channels', 8, '--crop-size', 32, '--batch-size', 2, '--deterministic',
        '--device', 'cpu']


def train(results, data, *extra, script='train_srresnet.py'):
    return run_script(script, '--data-folder', data, '--results-dir', results, '--runs-dir', results / 'runs',
                      *TINY, *extra)


def weights(path):
    return load_checkpoint(path)['model']


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_at_epoch_boundary_and_mid_epoch_is_exact(tmp_path, tiny_dataset):
    data = tiny_dataset['data']  # 6 images, batch 2: 3 steps per epoch
    straight, split, mid = tmp_path / 'straight', tmp_path / 'split', tmp_path / 'mid'
    for args in [(straight, '--epochs', 2), (split, '--epochs', 1), (split, '--epochs', 2, '--resume'),
                 (mid, '--epochs', 2, '--max-steps', 4), (mid, '--epochs', 2, '--resume', '--workers', 2)]:
        result = train(args[0], data, '--workers', 0, *args[1:])
        assert result.returncode == 0, result.stderr
    stopped = load_checkpoint(mid / 'checkpoint_srresnet.pth')
    assert stopped['epoch'] == 2  # finished after the resume
    reference = weights(straight / 'checkpoint_srresnet.pth')
    assert_same_weights(weights(split / 'checkpoint_srresnet.pth'), reference)
    assert_same_weights(weights(mid / 'checkpoint_srresnet.pth'), reference)
    assert load_checkpoint(split / 'checkpoint_srresnet.pth')['step'] == 6


def test_max_steps_saves_position_inside_the_epoch(tmp_path, tiny_dataset):
    result = train(tmp_path, tiny_dataset['data'], '--workers', 0, '--epochs', 3, '--max-steps', 4)
    assert result.returncode == 0, result.stderr
    assert 'stopped at epoch 2, step 1' in result.stdout and '--resume' in result.stdout
    ckpt = load_checkpoint(tmp_path / 'checkpoint_srresnet.pth')
    assert (ckpt['epoch'], ckpt['resume_step'], ckpt['step']) == (1, 1, 4)


def test_sigterm_finishes_step_saves_and_exits_zero(tmp_path, tiny_dataset):
    cmd = [sys.executable, f"{REPO}/train_srresnet.py", '--data-folder', tiny_dataset['data'], '--results-dir',
           tmp_path, '--runs-dir', tmp_path / 'runs', *map(str, TINY), '--epochs', 100000, '--workers', 0]
    proc = subprocess.Popen(list(map(str, cmd)), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    line = proc.stdout.readline()
    while line and not line.startswith('epoch 2/'):
        line = proc.stdout.readline()
    assert line, proc.stderr.read()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert 'SIGTERM received' in err and 'Resume with:' in out and '--resume' in out
    ckpt = load_checkpoint(tmp_path / 'checkpoint_srresnet.pth')
    assert ckpt['epoch'] >= 2 and ckpt['step'] >= 6
    resumed = train(tmp_path, tiny_dataset['data'], '--workers', 0, '--epochs', 100000, '--resume',
                    '--max-steps', ckpt['step'] + 1)
    assert resumed.returncode == 0 and 'resumed' in resumed.stdout


def test_sigint_during_data_loading_workers_also_saves(tmp_path, tiny_dataset):
    cmd = [sys.executable, f"{REPO}/train_srresnet.py", '--data-folder', tiny_dataset['data'], '--results-dir',
           tmp_path, '--runs-dir', tmp_path / 'runs', *map(str, TINY), '--epochs', 100000, '--workers', 2]
    proc = subprocess.Popen(list(map(str, cmd)), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    line = proc.stdout.readline()
    while line and not line.startswith('epoch 1/'):
        line = proc.stdout.readline()
    time.sleep(0.5)
    import os
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches the whole process group
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert 'Resume with:' in out
    load_checkpoint(tmp_path / 'checkpoint_srresnet.pth')


def test_diverging_loss_stops_naming_the_step_and_keeps_last_good_checkpoint(tmp_path, tiny_dataset):
    edsr = ['--arch', 'edsr', '--scale', 2, '--model-opt', 'n_resblocks=1', '--model-opt', 'n_feats=8',
            '--patches-per-image', 1,
            '--workers', 0, '--epochs', 1]
    good = run_script('train_srresnet.py', '--data-folder', tiny_dataset['data'], '--results-dir', tmp_path,
                      '--runs-dir', tmp_path / 'runs', '--crop-size', 32, '--batch-size', 2, *edsr)
    assert good.returncode == 0, good.stderr
    path = tmp_path / 'checkpoint_edsr.pth'
    before = path.read_bytes()
    # A learning rate of 1e30 blows the weights up after the first update: the next loss is inf or NaN.
    bad = run_script('train_srresnet.py', '--data-folder', tiny_dataset['data'], '--results-dir', tmp_path,
                     '--runs-dir', tmp_path / 'runs', '--crop-size', 32, '--batch-size', 2, *edsr, '--lr', 1e30,
                     '--restart')
    assert bad.returncode == 2
    assert 'loss became' in bad.stderr and 'epoch 1, step 1' in bad.stderr and 'saved nothing yet' in bad.stderr
    (kept,) = tmp_path.glob('checkpoint_edsr.*.pth')  # --restart kept the good run's file; nothing else was saved
    assert kept.read_bytes() == before and not path.exists()
