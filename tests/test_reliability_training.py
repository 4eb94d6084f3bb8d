"""Training survives interruption: exact resume, Ctrl-C / SIGTERM saves and exits 0, NaN/inf stops cleanly."""
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO, run_here, run_script
from checkpoints import load_checkpoint

TINY = ['--n-blocks', 2, '--n-channels', 8, '--crop-size', 32, '--batch-size', 2, '--deterministic',
        '--device', 'cpu']


def train(results, data, *extra, script='train_srresnet.py'):
    return run_here(script, '--data-folder', data, '--results-dir', results, '--runs-dir', results / 'runs',
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


def start_endless_run(tmp_path, data, workers, **popen):
    cmd = [sys.executable, f"{REPO}/train_srresnet.py", '--data-folder', data, '--results-dir', tmp_path,
           '--runs-dir', tmp_path / 'runs', *TINY, '--epochs', 100000, '--workers', workers]
    env = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1')  # as run_script: the same float results
    return subprocess.Popen(list(map(str, cmd)), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, **popen)


def wait_for_line(proc, prefix):
    """Read the run's stdout up to the first line starting with ``prefix``; returns the lines read."""
    lines = [proc.stdout.readline()]
    while lines[-1] and not lines[-1].startswith(prefix):
        lines.append(proc.stdout.readline())
    assert lines[-1], proc.stderr.read()
    return lines


def assert_saved_where_it_stopped(out, seen, checkpoint, steps_per_epoch=3):
    """The stop's line names epoch E and step S (steps of E done); the checkpoint holds exactly that position, past
    the last end-of-epoch save: E - 1 epochs complete, S steps into E, global step (E - 1) * steps + S. Returns E."""
    match = re.search(r"stopped at epoch (\d+), step (\d+); saved ", out)
    assert match, out
    epoch, step = map(int, match.groups())
    ends = [int(m) for m in re.findall(r"^epoch (\d+)/", ''.join(seen) + out, flags=re.M)]
    assert ends == list(range(1, epoch)), ends  # every earlier epoch ended (and saved), this one did not
    assert 1 <= step <= steps_per_epoch  # the step being trained when the signal landed was finished
    ckpt = load_checkpoint(checkpoint)
    assert (ckpt['epoch'], ckpt['resume_step'], ckpt['step']) == (epoch - 1, step,
                                                                  (epoch - 1) * steps_per_epoch + step)
    return epoch


def test_sigterm_finishes_step_saves_and_exits_zero(tmp_path, tiny_dataset):
    data = tiny_dataset['data']  # 6 images, batch 2: 3 steps per epoch
    proc = start_endless_run(tmp_path / 'stopped', data, 0)
    seen = wait_for_line(proc, 'epoch 2/')  # printed after epoch 2 was saved: the signal lands in a later epoch
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert 'SIGTERM received' in err and 'Resume with:' in out and '--resume' in out
    epoch = assert_saved_where_it_stopped(out, seen, tmp_path / 'stopped' / 'checkpoint_srresnet.pth')
    # resumed to the end of that epoch: bit for bit the run that was never stopped
    resumed = train(tmp_path / 'stopped', data, '--workers', 0, '--epochs', epoch, '--resume')
    assert resumed.returncode == 0 and 'resumed' in resumed.stdout, resumed.stderr
    straight = train(tmp_path / 'straight', data, '--workers', 0, '--epochs', epoch)
    assert straight.returncode == 0, straight.stderr
    assert_same_weights(weights(tmp_path / 'stopped' / 'checkpoint_srresnet.pth'),
                        weights(tmp_path / 'straight' / 'checkpoint_srresnet.pth'))


def test_sigint_during_data_loading_workers_also_saves(tmp_path, tiny_dataset):
    proc = start_endless_run(tmp_path, tiny_dataset['data'], 2, start_new_session=True)
    seen = wait_for_line(proc, 'epoch 1/')
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches the whole process group
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert 'Resume with:' in out
    assert_saved_where_it_stopped(out, seen, tmp_path / 'checkpoint_srresnet.pth')


def test_sigterm_to_the_whole_process_group_with_workers_also_saves(tmp_path, tiny_dataset):
    """A job scheduler's SIGTERM (Slurm's scancel) reaches the loader workers too: they ignore it, and the run
    saves after its step as with a SIGTERM to the main process alone."""
    proc = start_endless_run(tmp_path, tiny_dataset['data'], 2, start_new_session=True)
    seen = wait_for_line(proc, 'epoch 1/')
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert 'SIGTERM received' in err and 'Resume with:' in out and 'Traceback' not in err
    assert_saved_where_it_stopped(out, seen, tmp_path / 'checkpoint_srresnet.pth')


class SignalledInWorkers(torch.utils.data.Dataset):
    """Eight numbers (indexed by EpochSampler's (epoch, index) pairs); the first item a DataLoader worker fetches
    sends ``signum`` to that worker, as a terminal's Ctrl-C or a scheduler's SIGTERM to the whole process group."""

    def __init__(self, signum):
        self.main_pid, self.signum = os.getpid(), signum

    def __len__(self):
        return 8

    def __getitem__(self, item):
        if os.getpid() != self.main_pid and not getattr(self, 'signalled', False):
            self.signalled = True  # this worker's copy
            os.kill(os.getpid(), self.signum)
        return torch.tensor(item[1])


@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM])
def test_training_loader_workers_survive_stop_signals_sent_to_the_process_group(signum):
    """The main process turns the signal into a save after its step; a worker killed by it would crash the run at
    the next batch it owed (the epoch's end, the next epoch of persistent workers). Two epochs, every item each."""
    from training import Dist, make_train_loader
    loader, sampler = make_train_loader(SignalledInWorkers(signum), 2, Dist(), workers=2, seed=0)
    for epoch in (1, 2):
        sampler.set_epoch(epoch, 0)
        assert sorted(torch.cat(list(loader)).tolist()) == list(range(8))
    del loader  # shuts the persistent workers down


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
