"""Promises that hold for every script (docs/reliability.md): flags are never guessed from a prefix, a bare --resume
continues the run that was, data, validation and best-keeping included, and a run without a terminal shows it is
alive."""
import ast
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import app
import eval as eval_script
import export
import models
import train_srgan
import train_srresnet
import training
from checkpoints import load_checkpoint, save_checkpoint
from conftest import REPO_ROOT, run_here
from utils import run_cli


def parser_calls():
    """(file, call) of every argparse.ArgumentParser(...) in the scripts, the library and the benchmarks."""
    for path in sorted(list(REPO_ROOT.glob('*.py')) + list((REPO_ROOT / 'benchmarks').glob('*.py'))):
        for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'))):
            if isinstance(node, ast.Call) and getattr(node.func, 'attr', None) == 'ArgumentParser':
                yield path.name, node


def test_every_parser_turns_prefix_matching_off():
    calls = list(parser_calls())
    assert len(calls) >= 10  # utils.make_parser (every script) and each benchmark's own
    for name, call in calls:
        flags = {k.arg: k.value for k in call.keywords}
        assert 'allow_abbrev' in flags and flags['allow_abbrev'].value is False, name


def test_a_prefix_of_a_flag_is_an_error_not_that_flag(capsys):
    """app.py --checkpoint FILE used to be read as --checkpoint-dir FILE: the server started with no model."""
    with pytest.raises(SystemExit) as e:
        app.build_parser().parse_args(['--checkpoint-d', 'results'])
    assert e.value.code == 2 and 'unrecognized arguments: --checkpoint-d' in capsys.readouterr().err


def test_a_bare_resume_continues_with_the_runs_data_validation_and_best_keeping(tmp_path, tiny_dataset):
    model = ['--n-blocks', 2, '--n-channels', 8, '--crop-size', 32, '--batch-size', 2, '--device', 'cpu']
    first = run_here('train_srresnet.py', '--data-folder', tiny_dataset['data'], '--val-folder',
                     tiny_dataset['test'], '--keep-best', '--runs-dir', tmp_path / 'logs', '--epochs', 1, *model,
                     '--progress-every', 7, '--max-bad-fraction', 0.5, '--deterministic', cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    resumed = run_here('train_srresnet.py', '--resume', '--epochs', 2, '--device', 'cpu', cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert re.search(r"epoch 2/2: loss [\d.]+, val PSNR [\d.]+ dB", resumed.stdout), resumed.stdout
    ckpt = load_checkpoint(tmp_path / 'results' / 'checkpoint_srresnet.pth')
    assert ckpt['epoch'] == 2 and ckpt['args']['data_folder'] == str(tiny_dataset['data'])
    assert ckpt['args']['keep_best'] is True and ckpt['args']['runs_dir'] == str(tmp_path / 'logs')
    assert ckpt['args']['progress_every'] == 7 and ckpt['args']['max_bad_fraction'] == 0.5
    assert ckpt['args']['deterministic'] is True
    assert (tmp_path / 'results' / 'checkpoint_srresnet_best.pth').is_file()
    assert len(ckpt['history']) == 2 and 'val_psnr' in ckpt['history'][1]


def test_a_resumed_fine_tuning_keeps_the_record_of_the_weights_it_began_from(tmp_path, tiny_dataset, capsys):
    """The shipped photo model was fine-tuned with --init-from and resumed: its record had lost init_from."""
    tiny = ['--data-folder', tiny_dataset['data'], '--runs-dir', tmp_path / 'runs', '--n-blocks', 2, '--n-channels',
            8, '--crop-size', 32, '--batch-size', 3, '--workers', 0, '--device', 'cpu']
    start = tmp_path / 'start' / 'checkpoint_srresnet.pth'
    for argv in ([*tiny, '--results-dir', start.parent, '--epochs', 1],
                 [*tiny, '--results-dir', tmp_path / 'tuned', '--epochs', 1, '--init-from', start],
                 ['--results-dir', tmp_path / 'tuned', '--epochs', 2, '--resume']):
        assert run_cli(lambda: train_srresnet.main([str(a) for a in argv])) == 0
    start.unlink()  # resumed, the run never reads it again
    assert run_cli(lambda: train_srresnet.main(['--results-dir', str(tmp_path / 'tuned'), '--epochs', '3',
                                                '--resume'])) == 0, capsys.readouterr().err
    ckpt = load_checkpoint(tmp_path / 'tuned' / 'checkpoint_srresnet.pth')
    assert ckpt['epoch'] == 3 and ckpt['args']['init_from'] == str(start)


def test_resuming_a_finished_run_says_there_is_nothing_to_train_and_writes_nothing(tmp_path, tiny_dataset, capsys):
    """It used to print 'resumed ...: epoch 3' for a run of 2 epochs, then 'done', and rewrite its curves."""
    argv = ['--data-folder', tiny_dataset['data'], '--results-dir', tmp_path, '--runs-dir', tmp_path / 'runs',
            '--n-blocks', 2, '--n-channels', 8, '--crop-size', 32, '--batch-size', 3, '--workers', 0, '--epochs', 2,
            '--device', 'cpu']
    assert run_cli(lambda: train_srresnet.main([str(a) for a in argv])) == 0
    capsys.readouterr()
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.iterdir() if p.is_file()}
    for extra in ([], ['--epochs', '1'], ['--epochs', '2']):
        assert run_cli(lambda: train_srresnet.main(['--results-dir', str(tmp_path), '--resume', *extra])) == 0
        out = capsys.readouterr().out
        assert out.strip() == (f"nothing to train: {tmp_path / 'checkpoint_srresnet.pth'} has done 2 epochs of the "
                               f"{extra[1] if extra else 2} asked; --epochs N with N > 2 continues it"), out
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.iterdir() if p.is_file()} == before
    assert run_cli(lambda: train_srresnet.main(['--results-dir', str(tmp_path), '--resume', '--epochs', '3'])) == 0
    out = capsys.readouterr().out
    assert f"resumed {tmp_path / 'checkpoint_srresnet.pth'}: epoch 3" in out and 'epoch 3/3' in out


def test_a_bare_srgan_resume_keeps_the_vgg_weights_it_was_trained_with(tmp_path, tiny_dataset):
    """Trained with --vgg-weights random (offline, no ImageNet weights cached): a bare --resume used to look for the
    ImageNet weights instead and stop."""
    common = ['--results-dir', tmp_path, '--runs-dir', tmp_path / 'runs', '--device', 'cpu', '--workers', 0]
    first = run_here('train_srgan.py', '--data-folder', tiny_dataset['data'], '--srresnet-checkpoint', 'none',
                     '--vgg-weights', 'random', '--n-blocks', 1, '--n-channels', 8, '--n-blocks-d', 2,
                     '--n-channels-d', 8, '--fc-size-d', 16, '--crop-size', 32, '--batch-size', 3, '--epochs', 1,
                     *common, env_extra={'TORCH_HOME': str(tmp_path / 'no_hub')})
    assert first.returncode == 0, first.stderr
    resumed = run_here('train_srgan.py', '--resume', '--epochs', 2, *common,
                       env_extra={'TORCH_HOME': str(tmp_path / 'no_hub')})
    assert resumed.returncode == 0, resumed.stderr
    assert 'RANDOM weights' in resumed.stderr and 'epoch 2/2' in resumed.stdout
    assert load_checkpoint(tmp_path / 'checkpoint_srgan.pth')['args']['vgg_weights'] == 'random'


def test_without_a_terminal_a_long_epoch_prints_progress_lines(tmp_path, tiny_dataset):
    """Output to a file (here a pipe): no tqdm bar, so a line every --progress-every seconds shows the run is alive."""
    common = ['--data-folder', tiny_dataset['data'], '--results-dir', tmp_path, '--runs-dir', tmp_path / 'runs',
              '--n-blocks', 2, '--n-channels', 8, '--crop-size', 32, '--batch-size', 2, '--epochs', 1,
              '--device', 'cpu']
    result = run_here('train_srresnet.py', *common, '--progress-every', 0.001)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith('progress: ')]
    assert lines and all(re.fullmatch(r"progress: epoch 1, step [1-3]/3: [\d.e+-]+ steps/s, loss [\d.e+-]+, "
                                      r"epoch ETA [\d.]+ min", line) for line in lines), lines
    quiet = run_here('train_srresnet.py', *common, '--restart', '--progress-every', 0)
    assert quiet.returncode == 0 and 'progress: ' not in quiet.stdout


def test_nothing_is_said_resumed_before_the_resume_is_known_to_work(tmp_path, tiny_dataset):
    """A resumed run whose data list has gone stops in one line and has not claimed 'resumed' first."""
    data = tmp_path / 'data'
    shutil.copytree(tiny_dataset['data'], data)
    model = ['--n-blocks', 2, '--n-channels', 8, '--crop-size', 32, '--batch-size', 2, '--device', 'cpu']
    first = run_here('train_srresnet.py', '--data-folder', data, '--epochs', 1, *model, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    (data / 'train_images.json').unlink()
    failed = run_here('train_srresnet.py', '--resume', '--epochs', 2, '--device', 'cpu', cwd=tmp_path)
    assert failed.returncode == 2 and 'train_images.json' in failed.stderr, failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1 and 'resumed' not in failed.stdout
    resumed = run_here('train_srresnet.py', '--resume', '--epochs', 2, '--device', 'cpu', '--data-folder',
                       tiny_dataset['data'], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    lines = resumed.stdout.splitlines()
    said = [i for i, line in enumerate(lines) if line.startswith('resumed ')]
    assert len(said) == 1 and lines[said[0]].endswith('epoch 2') and 'epoch 2/2' in ' '.join(lines[said[0]:])


class DiesAtTwo(torch.utils.data.Dataset):
    """Four items; the worker process that loads item 2 is killed (as the system's OOM killer would)."""

    def __len__(self):
        return 4

    def __getitem__(self, index):
        if index == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return torch.zeros(1)


class HandOverCut:
    """A loader whose next batch never arrives: its pipe closes (EOFError), as when a worker is killed mid-send."""

    def __init__(self, workers):
        self.num_workers = workers

    def __iter__(self):
        return self

    def __next__(self):
        raise EOFError


def test_a_run_whose_output_reader_goes_away_saves_and_stops_and_a_script_says_so_in_one_line(tmp_path,
                                                                                               tiny_dataset):
    """`train_srresnet.py ... | head`, or a benchmark that started the run killed: the next line printed raised
    BrokenPipeError, a traceback, and the run died without saving its epoch. Now it stops as on SIGTERM (finishing
    the step, saving); any other script ends in one line."""
    env = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1')
    results = tmp_path / 'results'
    run = subprocess.Popen([sys.executable, os.path.join(REPO_ROOT, 'train_srresnet.py'), '--data-folder',
                            str(tiny_dataset['data']), '--results-dir', str(results), '--runs-dir', str(tmp_path / 'runs'),
                            '--n-blocks', '2', '--n-channels', '8', '--crop-size', '32', '--batch-size', '3', '--workers',
                            '0', '--device', 'cpu', '--epochs', '1000'], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        for line in run.stdout:
            if line.startswith('epoch 1/1000'):
                break
        run.stdout.close()  # the reader goes away
        err = run.stderr.read()
        assert run.wait(timeout=300) == 0, err
    finally:
        run.kill()
    assert 'Traceback' not in err and 'the reader of the output went away (a closed pipe): finishing this step, ' \
        'then saving' in err
    saved = load_checkpoint(results / 'checkpoint_srresnet.pth')
    assert 1 <= saved['epoch'] < 1000 and 'optimizer' in saved  # a run's state, to resume
    evaluation = subprocess.Popen([sys.executable, os.path.join(REPO_ROOT, 'eval.py'), '--arch', 'bicubic', '--scale',
                                   '3', '--test-folders', str(tiny_dataset['test']), '--results-dir',
                                   str(tmp_path / 'eval')], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    evaluation.stdout.close()  # before its first line
    assert evaluation.wait(timeout=300) == 1
    assert evaluation.stderr.read().decode() == \
        "error: stopped: the reader of the output went away (a closed pipe)\n"


def test_a_data_loader_worker_that_dies_ends_the_run_in_one_line(capsys):
    """It used to end in PyTorch's traceback (RuntimeError: DataLoader worker (pid(s) ...) exited unexpectedly).
    PyTorch raises it from its SIGCHLD handler, so it may surface in training.batches (converted there, the loader
    let go) or anywhere else in the main process (converted by utils.run_cli): the same line either way."""
    loader = torch.utils.data.DataLoader(DiesAtTwo(), batch_size=1, num_workers=1)
    seen = []
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: seen.extend(training.batches(loader)))
    message = capsys.readouterr().err
    assert e.value.code == 2 and message.count('\n') == 1 and len(seen) <= 2
    assert message.startswith('error: a data loader worker process died (')  # PyTorch's words, or a closed pipe
    assert 'fewer --workers' in message and '--resume' in message
    with pytest.raises(SystemExit) as e:  # killed while handing a batch over: the connection closes first
        run_cli(lambda: list(training.batches(HandOverCut(workers=1))))
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith('error: a data loader worker process died (its connection closed')
    with pytest.raises(EOFError):  # without worker processes an EOFError is the dataset's own
        run_cli(lambda: list(training.batches(HandOverCut(workers=0))))
    for raised in ('DataLoader worker (pid 123) is killed by signal: Killed.',
                   'DataLoader worker (pid(s) 123) exited unexpectedly'):
        with pytest.raises(SystemExit) as e:
            run_cli(lambda: (_ for _ in ()).throw(RuntimeError(raised)))  # raised in the step, not in the loader
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count('\n') == 1 and 'fewer --workers' in err
        assert err.startswith(f"error: a data loader worker process died ({raised.rstrip('.')}; ")
    with pytest.raises(RuntimeError, match='Caught ValueError in DataLoader worker process 0'):
        run_cli(lambda: (_ for _ in ()).throw(RuntimeError('Caught ValueError in DataLoader worker process 0.')))
    assert [b.shape for b in training.batches(torch.utils.data.DataLoader(torch.zeros(3, 2), batch_size=2))] == [
        (2, 2), (1, 2)]  # a loader that ends normally: every batch, then the end


def test_resuming_a_file_of_weights_only_names_the_flag_that_starts_from_them(tmp_path, tiny_dataset, capsys):
    """--resume of the shipped SRResNet (its EMA weights, no optimizer) said 'records ema_decay but lacks
    model_ema/ema_n_averaged: not a complete checkpoint'; of an exported .pth or .safetensors, that the model
    configuration differed; of an exported generator, train_srgan.py spoke of the tutorial's optimizer_g."""
    argv = ['--data-folder', tiny_dataset['data'], '--results-dir', tmp_path / 'run', '--runs-dir', tmp_path / 'runs',
            '--n-blocks', 2, '--n-channels', 8, '--crop-size', 32, '--batch-size', 3, '--workers', 0, '--epochs', 1,
            '--device', 'cpu', '--ema-decay', 0.9]
    assert run_cli(lambda: train_srresnet.main([str(a) for a in argv])) == 0
    ckpt = load_checkpoint(tmp_path / 'run' / 'checkpoint_srresnet.pth')
    shipped = {k: v for k, v in ckpt.items() if k not in ('optimizer', 'model_ema', 'ema_n_averaged', 'scheduler',
                                                            'rng', 'scaler')}
    shipped['model'] = ckpt['model_ema']
    torch.save(shipped, tmp_path / 'shipped.pth')
    for export_format in ('pth', 'safetensors'):
        assert run_cli(lambda: export.main(['--checkpoint', str(tmp_path / 'run' / 'checkpoint_srresnet.pth'),
                                            '--format', export_format, '--output',
                                            str(tmp_path / f"exported.{export_format}")])) == 0
    capsys.readouterr()
    for name in ('shipped.pth', 'exported.pth', 'exported.safetensors'):
        path = tmp_path / name
        for script, flag in ((train_srresnet, '--init-from'), (train_srgan, '--srresnet-checkpoint')):
            before = sorted(p.name for p in tmp_path.rglob('*'))
            argv = ['--resume', str(path), '--results-dir', str(tmp_path / 'new'), '--epochs', '2', '--device',
                    'cpu'] + ['--vgg-weights', 'random'] * (script is train_srgan)
            with pytest.raises(SystemExit) as e:
                run_cli(lambda: script.main(argv))
            err = capsys.readouterr().err.strip()
            assert e.value.code == 2 and err == (f"error: --resume {path}: it holds weights only (a shipped, exported or "
                                         f"converted model), not a training run to continue: {flag} {path} starts "
                                         f"a new run from its weights"), (name, err)
            assert sorted(p.name for p in tmp_path.rglob('*')) == before  # nothing written


def test_a_results_dir_that_is_a_file_is_named_in_one_line(tmp_path, capsys):
    """It used to say 'cannot write FILE/.checkpoint_srresnet.pth.lock (the lock of ...): File exists'."""
    (tmp_path / 'taken').write_text('a file')
    for script, extra in ((train_srresnet, []), (train_srgan, ['--vgg-weights', 'random'])):
        for folder, said in ((tmp_path / 'taken', f"{tmp_path / 'taken'} is"),
                             (tmp_path / 'taken' / 'run', f"{tmp_path / 'taken' / 'run'}: {tmp_path / 'taken'} is")):
            with pytest.raises(SystemExit) as e:
                run_cli(lambda: script.main(['--results-dir', str(folder), '--device', 'cpu', *extra]))
            err = capsys.readouterr().err.strip().splitlines()
            assert e.value.code == 2 and err[-1] == f"error: --results-dir {said} a file, not a folder: name a folder"
    assert (tmp_path / 'taken').read_text() == 'a file'


def two_runs_checkpoints(tmp_path):
    """The checkpoint_espcn.pth of two runs (tiny, other random weights): paths run0/..., run1/... under tmp_path."""
    runs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        config = models.model_config('espcn', 3, channels=[8, 4])
        path = tmp_path / f"run{seed}" / 'checkpoint_espcn.pth'
        path.parent.mkdir()
        save_checkpoint({'format_version': 1, 'arch': 'espcn', 'model_config': config, 'epoch': 1,
                         'model': models.build_model('espcn', config).state_dict()}, str(path))
        runs.append(str(path))
    return runs


def test_an_eval_report_never_replaces_another_models_or_other_sets(tmp_path, tiny_dataset, capsys):
    """Two runs' checkpoint_srresnet.pth both report as eval_srresnet_x4: the second evaluation silently replaced
    the first one's report, as did the same model evaluated on other test sets."""
    runs = two_runs_checkpoints(tmp_path)
    results, test = tmp_path / 'reports', tiny_dataset['test']
    (tmp_path / 'other').mkdir()
    shutil.copy(sorted(test.iterdir())[0], tmp_path / 'other')

    def evaluate(checkpoint, folder, *extra):
        return run_cli(lambda: eval_script.main(['--checkpoint', checkpoint, '--test-folders', str(folder),
                                                 '--results-dir', str(results), '--protocol', 'standard',
                                                 '--device', 'cpu', *extra]))
    report = results / 'eval_espcn_x3.json'
    assert evaluate(runs[0], test) == 0 and evaluate(runs[0], test) == 0  # a re-run replaces its own report
    first = report.read_bytes()
    for checkpoint, folder in ((runs[1], test), (runs[0], tmp_path / 'other')):
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            evaluate(checkpoint, folder)
        out, err = capsys.readouterr()
        assert e.value.code == 2 and 'evaluating' not in out
        assert err.strip() == (f"error: {results / 'eval_espcn_x3.md'} is the report of {runs[0]} on "
                               f"{test.name}: pass --overwrite to replace it, or give another --results-dir")
        assert report.read_bytes() == first
    assert evaluate(runs[1], test, '--overwrite') == 0
    assert json.loads(report.read_text())['checkpoint'] == runs[1]


def test_an_eval_figure_never_replaces_one_of_other_models(tmp_path, tiny_dataset, capsys):
    """eval.py --figure names its PNG after the models' labels: a figure of two runs' checkpoint_espcn.pth both
    went to figure_espcn_x3.png, the second silently replacing the first, as it replaced any file of that name."""
    runs = two_runs_checkpoints(tmp_path)
    results, test = tmp_path / 'figures', tiny_dataset['test']
    first_image = sorted(test.iterdir())[0].stem

    def figure(checkpoint, *extra):
        return run_cli(lambda: eval_script.main(['--checkpoint', checkpoint, '--test-folders', str(test), '--figure',
                                                 '--results-dir', str(results), '--device', 'cpu', *extra]))
    out = results / 'figure_espcn_x3.png'
    assert figure(runs[0]) == 0
    two_rows = out.read_bytes()
    assert figure(runs[0], '--figure-images', first_image) == 0  # the same model, refined: replaced
    first = out.read_bytes()
    assert first != two_rows
    for checkpoint, what in ((runs[1], 'a figure of other models or weights'),
                             (runs[0], 'a file eval.py --figure did not make')):
        if 'did not make' in what:
            Image.new('RGB', (8, 8)).save(out)  # the user's own file of that name
            first = out.read_bytes()
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            figure(checkpoint)
        out_text, err = capsys.readouterr()
        assert e.value.code == 2 and 'box' not in out_text  # refused before any image was upscaled
        assert err.strip() == f"error: {out} is {what}: pass --overwrite to replace it, or give another --results-dir"
        assert out.read_bytes() == first
    assert figure(runs[1], '--overwrite') == 0 and figure(runs[1]) == 0
    assert out.read_bytes() != first
    out.unlink()
    out.mkdir()  # a folder in the way: named before any work, --overwrite or not
    with pytest.raises(SystemExit) as e:
        figure(runs[1], '--overwrite')
    assert e.value.code == 2 and capsys.readouterr().err.strip() == \
        f"error: {out} is a folder, where the figure goes: move it, or give another --results-dir"


def test_two_runs_never_write_their_curves_into_one_tensorboard_folder(tmp_path, tiny_dataset):
    """Every SRResNet run logged to <runs-dir>/srresnet: a second run (another --results-dir, or --restart) drew its
    curves over the first's in TensorBoard. Each new run gets its own folder; a resumed run keeps its own."""
    tiny = ['--data-folder', tiny_dataset['data'], '--runs-dir', tmp_path / 'runs', '--n-blocks', 2, '--n-channels',
            8, '--crop-size', 32, '--batch-size', 3, '--workers', 0, '--device', 'cpu', '--epochs', 1]
    for argv in ([*tiny, '--results-dir', tmp_path / 'a'], [*tiny, '--results-dir', tmp_path / 'b'],
                 [*tiny, '--results-dir', tmp_path / 'b', '--restart'],
                 ['--results-dir', tmp_path / 'a', '--resume', '--epochs', 2]):
        assert run_cli(lambda: train_srresnet.main([str(a) for a in argv])) == 0
    names = {run: load_checkpoint(tmp_path / run / 'checkpoint_srresnet.pth')['args']['log_name'] for run in 'ab'}
    folders = sorted(p.name for p in (tmp_path / 'runs').iterdir())
    assert len(folders) == 3 and set(names.values()) < set(folders)  # a, b, and b's run set aside by --restart
    assert all(re.fullmatch(r"srresnet_\d{8}-\d{6}(_\d+)?", name) for name in folders), folders
    steps = {e.step for e in EventAccumulator(str(tmp_path / 'runs' / names['a'])).Reload().Scalars('srresnet/loss')}
    assert steps == {1, 2}  # the resumed epoch 2 went to run a's folder
