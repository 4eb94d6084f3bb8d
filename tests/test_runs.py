"""A training run is never lost and never kills another (issue 12): resume after an epoch's partial last batch, no
silent overwrite (--restart keeps the old file), atomic writers and trainers side by side, one checkpoint loader
for --resume and the inference scripts, resumed runs that take their settings from their checkpoint, and one-line
errors for impossible flags, a failing TensorBoard writer and Ctrl-C during start-up."""
import errno
import importlib.util
import os
import shlex
import signal
import subprocess
import sys
import threading
import warnings

import pytest
import torch
from PIL import Image

import checkpoints
import train_srgan
import train_srresnet
import training
import utils
from conftest import REPO, photo_crops, run_here, run_script
from datasets import create_data_lists

TINY = ['--n-blocks', 2, '--n-channels', 8, '--crop-size', 32, '--batch-size', 2, '--workers', 0, '--device', 'cpu',
        '--amp', 'off']
TINY_D = ['--n-blocks-d', 2, '--n-channels-d', 8, '--fc-size-d', 16, '--vgg-weights', 'random']


@pytest.fixture(scope='module')
def five_images(tmp_path_factory):
    """Data lists of 5 training photos: at batch 2 an epoch is 3 steps, the last one a partial batch of 1."""
    root = tmp_path_factory.mktemp('five_images')
    (root / 'train').mkdir()
    for i, img in enumerate(photo_crops(count=5)):
        Image.fromarray(img).save(root / 'train' / f"img{i}.png")
    create_data_lists([str(root / 'train')], [], 32, str(root / 'data'), workers=1, log=lambda *_: None)
    return root / 'data'


def train(results, data, *extra, script='train_srresnet.py'):
    return run_here(script, '--data-folder', data, '--results-dir', results, '--runs-dir', results / 'runs',
                    *TINY, *extra)


def one_error_line(result):
    """The stderr of a refused command: exactly one line, 'error: ...' (argparse's usage line aside)."""
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith('usage:')]
    assert result.returncode == 2 and len(lines) == 1 and 'Traceback' not in result.stderr, result.stderr
    return lines[0]


def test_resume_after_an_epochs_partial_last_batch_is_exact(tmp_path, five_images):
    straight, split = tmp_path / 'straight', tmp_path / 'split'
    assert train(straight, five_images, '--epochs', 2, '--deterministic').returncode == 0
    stopped = train(split, five_images, '--epochs', 2, '--deterministic', '--max-steps', 3)
    assert stopped.returncode == 0 and 'stopped at epoch 1, step 3' in stopped.stdout, stopped.stderr
    ckpt = checkpoints.load_checkpoint(split / 'checkpoint_srresnet.pth')
    assert (ckpt['epoch'], ckpt['resume_step'], ckpt['step']) == (0, 3, 3)  # 3 steps x 2 > 5 samples
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        resumed = train(split, five_images, '--epochs', 2, '--deterministic', '--resume')
    assert resumed.returncode == 0, resumed.stderr
    assert 'epoch 1/2: its steps were done before the resume' in resumed.stdout and 'epoch 2/2: loss' in resumed.stdout
    # the schedule steps before the resumed run's first optimizer step: PyTorch's order warning is not for this case
    assert not [w for w in caught if 'lr_scheduler.step()' in str(w.message)]
    a, b = (checkpoints.load_checkpoint(d / 'checkpoint_srresnet.pth') for d in (straight, split))
    assert (b['epoch'], b['step']) == (2, 6)
    assert a['model'].keys() == b['model'].keys()
    assert all(torch.equal(a['model'][k], b['model'][k]) for k in a['model'])


def test_resume_continues_the_epoch_schedule_where_it_was(tmp_path, five_images):
    """--lr-schedule step, milestone at epoch 2: stopped inside epoch 2 (after one finished epoch) and resumed, the
    scheduler goes on from its saved position, so the rate is halved after epoch 2 as in a run in one go (a
    scheduler restarted at 0 would halve it after epoch 3 only)."""
    flags = ['--epochs', 3, '--lr', 1e-3, '--lr-schedule', 'step', '--lr-milestones', 2, '--lr-gamma', 0.5]
    stopped = train(tmp_path, five_images, *flags, '--max-steps', 4)  # 3 steps per epoch: stops in epoch 2
    assert stopped.returncode == 0 and 'stopped at epoch 2, step 1' in stopped.stdout, stopped.stderr
    ckpt = checkpoints.load_checkpoint(tmp_path / 'checkpoint_srresnet.pth')
    assert ckpt['scheduler']['last_epoch'] == 1 and ckpt['optimizer']['param_groups'][0]['lr'] == 1e-3
    resumed = train(tmp_path, five_images, '--resume', '--max-steps', 7)  # global steps: the rest of epoch 2, 1 more
    assert resumed.returncode == 0 and 'stopped at epoch 3, step 1' in resumed.stdout, resumed.stderr
    ckpt = checkpoints.load_checkpoint(tmp_path / 'checkpoint_srresnet.pth')
    assert ckpt['scheduler']['last_epoch'] == 2  # epochs 1 and 2 done
    assert ckpt['optimizer']['param_groups'][0]['lr'] == pytest.approx(0.5e-3, rel=1e-12)  # epoch 3 at lr * gamma


def test_new_run_refuses_an_existing_checkpoint_and_restart_keeps_it(tmp_path, five_images):
    assert train(tmp_path, five_images, '--epochs', 1).returncode == 0
    path = tmp_path / 'checkpoint_srresnet.pth'
    before = path.read_bytes()
    line = one_error_line(train(tmp_path, five_images, '--epochs', 1))
    assert str(path) in line and '--resume' in line and '--restart' in line
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.glob('*.pth')) == [path.name]
    restarted = train(tmp_path, five_images, '--epochs', 1, '--max-steps', 1, '--restart')
    assert restarted.returncode == 0, restarted.stderr
    (kept,) = [p for p in tmp_path.glob('checkpoint_srresnet.*.pth')]
    assert f"kept as {kept}" in restarted.stdout and kept.read_bytes() == before
    assert checkpoints.load_checkpoint(path)['step'] == 1  # the new run's
    line = one_error_line(train(tmp_path, five_images, '--epochs', 2, '--resume', '--restart'))
    assert '--resume' in line and '--restart' in line


def test_two_atomic_writers_of_one_file_do_not_break_each_other(tmp_path):
    path = str(tmp_path / 'checkpoint.pth')
    with utils.atomic_path(path) as slow:  # writer 1 is half-way through its temp file
        with open(slow, 'wb') as f:
            f.write(b'slow writer')
            utils.atomic_write(path, lambda g: g.write(b'fast writer'))  # writer 2 starts and ends meanwhile
            f.write(b', done')
    with open(path, 'rb') as f:
        assert f.read() == b'slow writer, done'
    # Temp files follow one rule: those of a writer that has gone are removed, a live one's stay.
    gone = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True)
    live = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
    try:
        dead_tmp = tmp_path / f".checkpoint.pth.{int(gone.stdout)}.0123abcd.tmp"
        live_tmp = tmp_path / f".checkpoint.pth.{live.pid}.4567cdef.tmp"
        dead_tmp.write_bytes(b'x')
        live_tmp.write_bytes(b'x')
        checkpoints.save_checkpoint({'epoch': 1}, path)
        assert not dead_tmp.exists() and live_tmp.exists()
    finally:
        live.kill()
        live.wait()
    assert checkpoints.load_checkpoint(path) == {'epoch': 1}


def test_second_trainer_on_the_same_checkpoint_refuses_naming_the_first(tmp_path, five_images):
    cmd = [sys.executable, os.path.join(REPO, 'train_srresnet.py'), '--data-folder', five_images, '--results-dir',
           tmp_path, '--runs-dir', tmp_path / 'runs', *TINY, '--epochs', 100000]
    first = subprocess.Popen(list(map(str, cmd)), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1'))
    try:
        line = first.stdout.readline()
        while line and not line.startswith('epoch 1/'):
            line = first.stdout.readline()
        assert line, first.stderr.read()
        with pytest.raises(utils.UserError, match=f"in use by another training run \\(pid {first.pid}\\)"):
            utils.RunLock(str(tmp_path / 'checkpoint_srresnet.pth')).acquire()
        second = train(tmp_path, five_images, '--epochs', 100000, '--resume', '--max-steps', 1)  # bounded if it ran
        assert f"pid {first.pid}" in one_error_line(second)
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=120) == 0, first.stderr.read()
    finally:
        if first.poll() is None:
            first.kill()
        first.communicate()
    with utils.RunLock(str(tmp_path / 'checkpoint_srresnet.pth')):  # free again once the run has ended
        pass
    assert checkpoints.load_checkpoint(tmp_path / 'checkpoint_srresnet.pth')['step'] >= 3


def bad_checkpoints(folder, good):
    """The damaged files of issue 12, made from the good checkpoint ``good``: name -> path."""
    ckpt = torch.load(good, weights_only=True)
    out = {}
    for name, change in (('future', {'format_version': 99}), ('string_version', {'format_version': '1'}),
                         ('model_hello', {'model': 'hello'})):
        out[name] = folder / f"{name}.pth"
        torch.save({**ckpt, **change}, out[name])
    out['empty'] = folder / 'empty.pth'
    out['empty'].write_bytes(b'')
    out['random'] = folder / 'random.pth'
    out['random'].write_bytes(os.urandom(5000))
    return out


def test_resume_refuses_bad_checkpoints_with_the_inference_loaders_line(tmp_path, five_images):
    assert train(tmp_path / 'good', five_images, '--epochs', 1).returncode == 0
    good = tmp_path / 'good' / 'checkpoint_srresnet.pth'
    for name, path in bad_checkpoints(tmp_path, good).items():
        with pytest.raises(utils.UserError) as err:  # the route of test.py, eval.py and export.py
            checkpoints.load_sr_model(str(path))
        with pytest.raises(utils.UserError) as resumed:  # --resume reads its checkpoint before any work
            train_srresnet.resolve_settings(train_srresnet.build_parser(), ['--resume', str(path)])
        assert str(resumed.value) == str(err.value) and '--convert-legacy' not in str(err.value), name
        assert {'future': 'format version 99', 'string_version': "format_version is '1'",
                'model_hello': "'model' is a str", 'empty': 'empty (0 bytes)',
                'random': 'corrupt'}[name] in str(err.value), err.value
    # Through the command line, as one line and nothing written.
    line = one_error_line(train(tmp_path / 'run', five_images, '--epochs', 2, '--resume', tmp_path / 'random.pth'))
    assert line == f"error: {err.value}" and not (tmp_path / 'run' / 'checkpoint_srresnet.pth').exists()


def test_both_trainers_train_on_lr_cut_from_each_whole_image(tmp_path, five_images):
    """--lr-from image through both command lines: the pairs reach the step and the checkpoints record it."""
    assert train(tmp_path, five_images, '--epochs', 1, '--lr-from', 'image').returncode == 0
    assert checkpoints.load_checkpoint(tmp_path / 'checkpoint_srresnet.pth')['args']['lr_from'] == 'image'
    gan = run_here('train_srgan.py', '--data-folder', five_images, '--results-dir', tmp_path, '--runs-dir',
                   tmp_path / 'runs', '--crop-size', 32, '--batch-size', 2, '--workers', 0, '--device', 'cpu',
                   '--amp', 'off', *TINY_D, '--epochs', 1, '--lr-from', 'image')
    assert gan.returncode == 0, gan.stderr
    ckpt = checkpoints.load_checkpoint(tmp_path / 'checkpoint_srgan.pth')
    assert ckpt['args']['lr_from'] == 'image' and ckpt['epoch'] == 1


def test_srgan_printed_resume_command_works_with_a_non_default_generator(tmp_path, five_images):
    assert train(tmp_path, five_images, '--epochs', 1).returncode == 0  # SRResNet with 8 channels, 2 blocks
    gan = run_here('train_srgan.py', '--data-folder', five_images, '--results-dir', tmp_path, '--runs-dir',
                   tmp_path / 'runs', '--crop-size', 32, '--batch-size', 2, '--workers', 0, '--device', 'cpu',
                   '--amp', 'off', *TINY_D, '--epochs', 2, '--max-steps', 2)
    assert gan.returncode == 0 and 'Resume with:' in gan.stdout, gan.stderr
    command = shlex.split(gan.stdout.strip().splitlines()[-1])
    assert command[0] == 'python' and '--max-steps' not in command and '--resume' in command
    resumed = subprocess.run([sys.executable, *command[1:]], cwd=REPO, capture_output=True, text=True, timeout=300,
                             env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert resumed.returncode == 0, resumed.stderr
    assert 'epoch 2/2' in resumed.stdout  # past the 2 steps of the first run: it trained on to the end
    ckpt = checkpoints.load_checkpoint(tmp_path / 'checkpoint_srgan.pth')
    assert ckpt['epoch'] == 2 and ckpt['step'] == 6 and ckpt['generator_config']['n_channels'] == 8
    # A non-default SRResNet resumes from a bare --resume too: its configuration comes from the checkpoint.
    resumed = run_here('train_srresnet.py', '--data-folder', five_images, '--results-dir', tmp_path, '--runs-dir',
                       tmp_path / 'runs', '--workers', 0, '--device', 'cpu', '--epochs', 2, '--resume')
    assert resumed.returncode == 0, resumed.stderr
    ckpt = checkpoints.load_checkpoint(tmp_path / 'checkpoint_srresnet.pth')
    assert ckpt['model_config']['n_channels'] == 8 and ckpt['args']['batch_size'] == 2 and ckpt['step'] == 6


def test_resume_with_another_learning_rate_is_refused_and_the_checkpoint_records_what_ran(tmp_path, five_images):
    assert train(tmp_path, five_images, '--epochs', 1, '--lr', 1e-3).returncode == 0
    path = tmp_path / 'checkpoint_srresnet.pth'
    before = path.read_bytes()
    line = one_error_line(train(tmp_path, five_images, '--epochs', 2, '--resume', '--lr', 5))
    assert '--lr 5.0' in line and '0.001' in line and path.read_bytes() == before
    assert train(tmp_path, five_images, '--epochs', 2, '--resume').returncode == 0
    ckpt = checkpoints.load_checkpoint(path)
    assert ckpt['args']['lr'] == 1e-3 and ckpt['optimizer']['param_groups'][0]['lr'] == 1e-3


def test_resume_keeps_the_runs_adam_kernel_and_refuses_the_other(tmp_path, five_images):
    assert train(tmp_path, five_images, '--epochs', 1, '--no-fused-adam').returncode == 0
    path = tmp_path / 'checkpoint_srresnet.pth'
    before = path.read_bytes()
    line = one_error_line(train(tmp_path, five_images, '--epochs', 2, '--resume', '--fused-adam'))
    assert line.startswith('error: --fused-adam: ') and 'trained with --no-fused-adam' in line
    assert 'drop --fused-adam' in line
    assert path.read_bytes() == before
    assert train(tmp_path, five_images, '--epochs', 2, '--resume').returncode == 0
    ckpt = checkpoints.load_checkpoint(path)
    assert ckpt['epoch'] == 2 and ckpt['args']['fused_adam'] is False
    assert not ckpt['optimizer']['param_groups'][0]['fused']


def test_resume_continues_a_faithful_run_faithfully_and_refuses_faithful_for_a_suite_run(tmp_path, five_images):
    """--faithful is the run's: resumed without it, a tutorial-pipeline run stays one; given to a run of the suite's
    pipeline, it is refused by its own name (not by the speed flags the run recorded and the user never typed)."""
    faithful, suite = tmp_path / 'faithful', tmp_path / 'suite'
    assert train(faithful, five_images, '--epochs', 1, '--faithful').returncode == 0
    resumed = train(faithful, five_images, '--epochs', 2, '--resume')
    assert resumed.returncode == 0, resumed.stderr
    assert 'cached' not in resumed.stdout  # the tutorial's SRDataset again, not the suite's RAM cache
    args = checkpoints.load_checkpoint(faithful / 'checkpoint_srresnet.pth')['args']
    assert args['faithful'] is True and args['fused_adam'] is False and args['channels_last'] is False
    assert train(suite, five_images, '--epochs', 1).returncode == 0
    before = (suite / 'checkpoint_srresnet.pth').read_bytes()
    line = one_error_line(train(suite, five_images, '--epochs', 2, '--resume', '--faithful'))
    assert line.startswith('error: --faithful: ') and 'drop --faithful' in line and 'fused' not in line
    assert (suite / 'checkpoint_srresnet.pth').read_bytes() == before


def test_resuming_a_checkpoint_older_than_a_flag_keeps_what_that_run_did(tmp_path, five_images):
    """A checkpoint whose args predate --fused-adam and --lr-from resumes with the plain Adam and LR made per patch
    (what every run did then), not with today's defaults (fused; ESPCN's recipe: LR from each image)."""
    tiny_espcn = ['--arch', 'espcn', '--scale', 3, '--crop-size', 24, '--model-opt', 'channels=[8,4]']
    assert train(tmp_path, five_images, *tiny_espcn, '--epochs', 1, '--no-fused-adam').returncode == 0
    path = tmp_path / 'checkpoint_espcn.pth'
    ckpt = checkpoints.load_checkpoint(path)
    assert ckpt['args']['lr_from'] == 'image' and ckpt['args']['fused_adam'] is False  # the recipe's, and as given
    for key in ('lr_from', 'fused_adam'):
        del ckpt['args'][key]
    checkpoints.save_checkpoint(ckpt, path)
    assert train(tmp_path, five_images, *tiny_espcn, '--epochs', 2, '--resume').returncode == 0
    ckpt = checkpoints.load_checkpoint(path)
    assert ckpt['epoch'] == 2 and ckpt['args']['lr_from'] == 'patch' and ckpt['args']['fused_adam'] is False
    assert not ckpt['optimizer']['param_groups'][0]['fused']


def test_printed_resume_command_leaves_out_flags_a_resumed_run_must_not_repeat():
    argv = ['train_srresnet.py', '--max-steps', '4', '--epochs', '3', '--restart', '--init-from', 'w.pth',
            '--max-steps=9', '--results-dir', 'my runs']
    assert training.resume_command(argv) == "python train_srresnet.py --epochs 3 --results-dir 'my runs' --resume"
    assert training.resume_command(['t.py', '--resume', 'a.pth']) == 'python t.py --resume a.pth'


@pytest.mark.parametrize('module, argv, message', [
    (train_srresnet, ['--device', 'gpu'], "'gpu' is not a device"),
    (train_srresnet, ['--device', 'cuda:x'], "'cuda:x' is not a device"),
    (train_srresnet, ['--device', 'meta'], "'meta' is not a device"),
    (train_srresnet, ['--workers', '-1'], 'must be >= 0'),
    (train_srresnet, ['--lr', 'nan'], 'must be a finite number >= 0'),
    (train_srresnet, ['--lr=-1'], 'must be a finite number >= 0'),
    (train_srresnet, ['--large-kernel-size', '4'], 'must be odd'),
    (train_srresnet, ['--small-kernel-size', '2'], 'must be odd'),
    (train_srgan, ['--large-kernel-size', '4'], 'must be odd'),
    (train_srgan, ['--vgg19-i', '9'], 'VGG19 has 5 blocks'),
    (train_srgan, ['--vgg19-i', '2', '--vgg19-j', '3'], 'block 2 of VGG19 has 2 convolutions'),
    (train_srgan, ['--vgg19-j', '5'], 'block 5 of VGG19 has 4 convolutions'),
])
def test_impossible_training_flags_fail_at_parsing(module, argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as stop:
        none = ['--srresnet-checkpoint', 'none'] * (module is train_srgan)
        module.resolve_settings(module.build_parser(), argv + none + ['--results-dir', str(tmp_path)])
    assert stop.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize('name, message', [('gpu', 'is not a device'), ('meta', 'is not a device'),
                                           ('cuda:x', 'is not a device'), ('cpu:0', 'is not a device')])
def test_pick_device_refuses_what_is_not_a_device_in_one_line(name, message):
    with pytest.raises(utils.UserError, match=message):
        utils.pick_device(name)
    assert utils.pick_device('cpu') == torch.device('cpu')


@pytest.mark.parametrize('script', ['test.py', 'eval.py', 'app.py'])
def test_inference_scripts_refuse_a_device_that_is_not_one(script):
    result = run_script(script, '--device', 'meta')
    assert result.returncode == 2 and "'meta' is not a device" in result.stderr
    assert 'Traceback' not in result.stderr


def test_tensorboard_writer_that_cannot_write_is_one_line_or_a_warning(tmp_path, five_images, monkeypatch, capsys):
    (tmp_path / 'file').write_text('a file where the runs folder should go')
    result = run_here('train_srresnet.py', '--data-folder', five_images, '--results-dir', tmp_path / 'r1',
                      '--runs-dir', tmp_path / 'file' / 'runs', *TINY, '--epochs', 1)
    line = one_error_line(result)
    assert 'TensorBoard' in line and '--runs-dir' in line and not (tmp_path / 'r1' / 'checkpoint_srresnet.pth').exists()

    def full(self, *args, **kwargs):  # the disk fills up during the run
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(training.SummaryWriter, 'add_scalar', full)
    argv = ['--data-folder', str(five_images), '--results-dir', str(tmp_path / 'r2'), '--runs-dir',
            str(tmp_path / 'runs'), *map(str, TINY), '--epochs', '2']
    assert utils.run_cli(lambda: train_srresnet.main(argv)) == 0  # the run goes on without its logs
    err = capsys.readouterr().err
    assert err.count('TensorBoard logging stopped') == 1 and 'No space left on device' in err
    assert checkpoints.load_checkpoint(tmp_path / 'r2' / 'checkpoint_srresnet.pth')['epoch'] == 2


def test_a_full_disk_under_the_tensorboard_writer_thread_is_one_line_not_its_traceback(tmp_path, five_images,
                                                                                    monkeypatch, capsys):
    """The event file's own writer thread hits the full disk: its exception reaches the suite's one line at the next
    log write, and the thread's traceback is not printed (utils.thread_failure_line)."""
    from tensorboard.summary.writer.record_writer import RecordWriter
    write, calls = RecordWriter.write, []

    def full_after_the_first_event(self, data):  # the file's header is written at open, on the main thread
        calls.append(threading.current_thread().name)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write(self, data)
    monkeypatch.setattr(RecordWriter, 'write', full_after_the_first_event)
    argv = ['--data-folder', str(five_images), '--results-dir', str(tmp_path / 'r'), '--runs-dir',
            str(tmp_path / 'runs'), *map(str, TINY), '--epochs', '2']
    assert utils.run_cli(lambda: train_srresnet.main(argv)) == 0  # the run goes on without its logs
    err = capsys.readouterr().err
    assert 'Traceback' not in err and err.count('TensorBoard') == 1, err
    assert 'No space left on device' in err and calls[1] != threading.main_thread().name  # failed in its thread
    assert checkpoints.load_checkpoint(tmp_path / 'r' / 'checkpoint_srresnet.pth')['epoch'] == 2


@pytest.mark.parametrize('resume', [False, True])
def test_ctrl_c_during_start_up_is_one_line_and_saves_nothing(resume, tmp_path, five_images, monkeypatch, capsys):
    argv = ['--data-folder', str(five_images), '--results-dir', str(tmp_path), '--runs-dir', str(tmp_path / 'runs'),
            *map(str, TINY), '--epochs', '2']
    path = tmp_path / 'checkpoint_srresnet.pth'
    if resume:
        assert utils.run_cli(lambda: train_srresnet.main(argv + ['--max-steps', '1'])) == 0
        argv += ['--resume']
    before = path.read_bytes() if resume else None
    build_train_dataset, handler = training.build_train_dataset, signal.getsignal(signal.SIGINT)

    def interrupted(*args, **kwargs):  # Ctrl-C while the training images are read
        os.kill(os.getpid(), signal.SIGINT)
        return build_train_dataset(*args, **kwargs)
    monkeypatch.setattr(training, 'build_train_dataset', interrupted)
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        utils.run_cli(lambda: train_srresnet.main(argv))
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 130 and len(err.splitlines()) == 1, err
    assert err.startswith('error: interrupted during start-up') and 'nothing was saved' in err
    assert (path.read_bytes() == before) if resume else not path.exists()
    assert signal.getsignal(signal.SIGINT) == handler  # the run gave the handlers back


def load_benchmark(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, 'benchmarks', f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_and_benchmarks_pin_their_numerics():
    """--amp auto is bf16 on CPUs with AMX or AVX512-BF16: every training command of the demo and of the
    benchmarks that report numbers names its device and precision, so it gives the same numerics everywhere."""
    make = subprocess.run(['make', '-n', 'demo', 'STAMP=', 'PY=python'], cwd=REPO, capture_output=True, text=True)
    assert make.returncode == 0, make.stderr
    lines = make.stdout.replace('\\\n', ' ').splitlines()  # the recipe's continued lines joined
    (demo,) = [line for line in lines if 'train_srresnet.py' in line and 'echo' not in line]
    words = demo.split()
    assert {'--device cpu', '--amp off'} <= {' '.join(pair) for pair in zip(words, words[1:])} and '--restart' in words
    for command in load_benchmark('bench_cpu_quality').COMMANDS.values():
        assert command[command.index('--amp') + 1] in ('off', 'bf16')  # pinned, never auto
        assert command[command.index('--device') + 1] == 'cpu'
    for name, flags in load_benchmark('bench_accuracy').RUNS.items():
        assert '--faithful' in flags or '--amp' in flags, name
