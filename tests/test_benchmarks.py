"""The benchmark scripts still run end to end, on tiny settings. Their numbers belong in docs/ (speed.md,
benchmarks.md), not in CI, but a benchmark broken by a refactor would go unnoticed until someone needs it."""
import json
import os
import signal
import subprocess
import sys

import torch
import torchvision
from PIL import Image

import models
from checkpoints import load_checkpoint, save_checkpoint
from conftest import REPO_ROOT, photo_crops, run_script


def json_lines(stdout):
    return [json.loads(line) for line in stdout.splitlines() if line.startswith('{')]


def srresnet_x4_step_flops(batch, lr_side, channels=64, blocks=16):
    """Forward + backward FLOPs of an SRResNet x4 training step, by hand: 2 * MACs per conv, backward twice the
    forward (input and weight gradients) except for the first conv, whose input needs no gradient."""
    def conv(c_in, c_out, k, side):
        return 2 * side * side * c_in * c_out * k * k
    first = conv(3, channels, 9, lr_side)
    forward = (first + (2 * blocks + 1) * conv(channels, channels, 3, lr_side)
               + conv(channels, 4 * channels, 3, lr_side) + conv(channels, 4 * channels, 3, 2 * lr_side)
               + conv(channels, 3, 9, 4 * lr_side))
    return batch * (3 * forward - first)


def test_bench_train_runs_both_sides_and_counts_the_step_flops():
    result = run_script('benchmarks/bench_train.py', '--device', 'cpu', '--batch-size', 2, '--crop-size', 16,
                        '--steps', 1, '--warmup', 1, '--rounds', 1)
    assert result.returncode == 0, result.stderr
    (res,) = json_lines(result.stdout)
    settings = res['suite_settings']
    assert settings['channels_last'] and settings['tail_before_shuffle'] and not settings['compile']
    assert settings['fast_prelu']
    assert len(res['rounds']['tutorial']) == len(res['rounds']['suite']) == 1 and res['speedup'] > 0
    assert abs(res['gflop_per_step'] - srresnet_x4_step_flops(2, 4) / 1e9) < 1e-3
    # The convolution floor replays every convolution of the suite's step: 37 convolutions (first, 2 x 16 in the
    # blocks, the one after them, 2 sub-pixel, the tail on the sub-pixel grid), each once forward, once backward.
    assert res['conv_floor_ops'] == 2 * (1 + 2 * 16 + 1 + 2 + 1) and res['conv_floor_s_per_step'] > 0
    assert abs(res['conv_floor_speedup_ceiling'] - res['reference_s_per_step'] / res['conv_floor_s_per_step']) < 0.05


def test_bench_train_passes_the_rewrite_flags_to_the_suite_side():
    result = run_script('benchmarks/bench_train.py', '--device', 'cpu', '--batch-size', 2, '--crop-size', 16,
                        '--steps', 1, '--warmup', 0, '--rounds', 1, '--no-fast-prelu', '--no-tail-before-shuffle')
    assert result.returncode == 0, result.stderr
    (res,) = json_lines(result.stdout)
    assert res['suite_settings']['fast_prelu'] is False and res['suite_settings']['tail_before_shuffle'] is False


def test_bench_data_measures_every_mode(tiny_dataset):
    result = run_script('benchmarks/bench_data.py', '--folder', tiny_dataset['train'], '--crop-size', 32,
                        '--seconds', 0.2, '--rounds', 1, '--batch-size', 4)
    assert result.returncode == 0, result.stderr
    rows = {r['mode']: r for r in json_lines(result.stdout)}
    assert set(rows) == {'tutorial', 'suite_cached', 'suite_streaming_4_crops', 'suite_cached_default_allocator',
                         'suite_cached_realesrgan'}
    assert 'real-world degradations, one core' in result.stdout
    assert rows['tutorial']['vs_tutorial'] == 1.0 and all(r['patches_per_s_per_core'] > 0 for r in rows.values())


def test_bench_inference_reports_time_and_peak_memory_per_case():
    result = run_script('benchmarks/bench_inference.py', '--sizes', 32, '--cases', 'reference', 'suite-tiled',
                        '--tile', 24, '--repeat', 1, '--threads', 1)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout[result.stdout.index('\n[') + 1:])
    assert [r['case'] for r in rows] == ['reference', 'suite-tiled']
    assert all(r['size'] == 32 and r['seconds'] > 0 and r['peak_rss_mib'] > 100 for r in rows)
    assert rows[1]['tile'] == 24


def test_gpu_check_dry_run_runs_every_step_and_writes_its_report(tmp_path):
    data = tmp_path / 'data'
    for name, count in (('T91', 6), ('Set5', 2), ('Set14', 2)):
        (data / name).mkdir(parents=True)
        for i, img in enumerate(photo_crops(48, count)):
            Image.fromarray(img).save(data / name / f"{i}.png")
    out = tmp_path / 'gc'
    result = run_script('benchmarks/gpu_check.py', '--dry-run', '--data', data, '--out', out, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((out / 'gpu_check.json').read_text())
    steps = {s['step']: s for s in report['steps']}
    assert list(steps) == ['environment', 'cuda tests', 'bench_train auto', 'bench_train off', 'bench_inference',
                           'train + eval']
    assert steps['cuda tests']['status'].startswith('skipped')  # no GPU here: skipped with the reason, not passed
    assert all(s['status'] == 'ok' for name, s in steps.items() if name != 'cuda tests')
    assert steps['bench_train auto']['loader_s_per_step'] > 0 and steps['bench_train off']['suite_settings']['amp'] == 'off'
    assert [c['case'] for c in steps['bench_inference']['cases']] == ['reference', 'suite-fast']
    trained = steps['train + eval']
    assert trained['steps'] > 0 and [d['name'] for d in trained['eval']] == ['Set5', 'Set14']
    assert all(d['standard_psnr'] > 10 for d in trained['eval'])
    assert (out / 'summary.md').read_text().count('| ok |') == 5 and (out / 'log.txt').stat().st_size > 0


def test_bench_video_measures_model_pipeline_and_codec():
    result = run_script('benchmarks/bench_video.py', '--size', '32x18', '--frames', 3, '--warmup', 1,
                        '--precisions', 'fp32', '--preset', 'ultrafast')
    assert result.returncode == 0, result.stderr
    rows = json_lines(result.stdout)
    assert [(r['what'], r['precision']) for r in rows] == [('model', 'fp32'), ('pipeline', 'fp32'), ('codec', '-')]
    assert all(r['in'] == '32x18' and r['out'] == '96x54' and r['fps'] > 0 for r in rows)
    assert rows[0]['frames'] == 2 and rows[1]['frames'] == rows[2]['frames'] == 3


def test_bench_ema_reports_both_sides_and_the_run_without_ema_matches(tmp_path, tiny_dataset):
    result = run_script('benchmarks/bench_ema.py', '--train-folder', tiny_dataset['train'], '--val-folder',
                        tiny_dataset['test'], '--epochs', 1, '--patches-per-image', 8, '--check-without')
    assert result.returncode == 0, result.stderr
    (res,) = json_lines(result.stdout)
    assert res['steps'] == 2 and res['without_run_matches_raw_weights'] is True  # 6 images x 8 / batch 32, rounded up
    assert res['set5_psnr_ema'] != res['set5_psnr_without_ema'] and 'with EMA 0.99 ' in result.stdout


def test_bench_optimizer_times_every_adam_variant():
    result = run_script('benchmarks/bench_optimizer.py', '--archs', 'espcn', '--steps', 2, '--rounds', 1)
    assert result.returncode == 0, result.stderr
    (res,) = json_lines(result.stdout)
    assert res['arch'] == 'espcn' and res['params'] == 22_729  # ESPCN x3: 64, 32 filters, 9 outputs
    assert all(res[f"{name}_ms"] > 0 for name in ('plain', 'foreach', 'fused'))
    # the ratio of the unrounded times (each printed to 4 places, the ratio to 2): within the rounding's bounds
    plain, fused, half = res['plain_ms'], res['fused_ms'], 0.5e-4
    assert (plain - half) / (fused + half) - 0.005 <= res['fused_speedup'] <= (plain + half) / (fused - half) + 0.005


def benchmark_like_folders(root, names=('T91', 'BSD200', 'Set5', 'Set14', 'BSD100')):
    """Folders named like ../shared/data's, each holding two 128-px real photo crops (enough for 96-px crops)."""
    for i, name in enumerate(names):
        (root / name).mkdir(parents=True)
        for j, img in enumerate(photo_crops(128)[2 * (i % 3):2 * (i % 3) + 2]):
            Image.fromarray(img).save(root / name / f"{name}_{j}.png")
    return root


TINY_RECIPE = '--n-blocks 2 --n-channels 8 --batch-size 4 --patches-per-image 2 --warmup-steps 2'


def test_bench_resume_stops_three_ways_and_ends_bit_for_bit(tmp_path):
    data = benchmark_like_folders(tmp_path / 'data', ('T91', 'BSD200', 'Set5'))
    result = run_script('benchmarks/bench_resume.py', '--data', data, '--train-flags', f"{TINY_RECIPE} --epochs 8",
                        timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    (row,) = json_lines(result.stdout)
    assert row['equal'] and not row['differences']
    assert {s['signal'] for s in row['stops'] if s['sent']} == {'SIGINT', 'SIGTERM', 'SIGKILL'}, row['stops']
    assert [s['exit'] for s in row['stops'] if s['signal'] == 'SIGKILL'] == [-9]


def test_bench_cpu_quality_trains_evaluates_and_ships_the_srresnet(tmp_path):
    data, out = benchmark_like_folders(tmp_path / 'data'), tmp_path / 'out'
    out.mkdir()
    result = run_script('benchmarks/bench_cpu_quality.py', '--archs', 'srresnet', '--amp', 'off', '--data', data,
                        '--out', out, '--train-flags', f"{TINY_RECIPE} --epochs 1", '--work', tmp_path / 'work',
                        timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    (row,) = json_lines(result.stdout)
    assert row['arch'] == 'srresnet' and row['scale'] == 4 and row['target_psnr'] == 31.2
    assert set(row['scores']['standard']) == set(row['scores']['tutorial']) == {'Set5', 'Set14', 'BSD100'}
    assert row['set5_psnr'] == round(row['scores']['standard']['Set5'][0], 3)
    assert 'scores_raw_weights' in row  # the recipe keeps an EMA: both weights are evaluated
    assert row['command'].startswith('python train_srresnet.py --recipe cpu-291 --device cpu --amp off')
    shipped = load_checkpoint(out / 'srresnet_x4_291.pth')
    assert shipped['args']['recipe'] == 'cpu-291' and shipped['args']['data_folder'] == 'data/291'
    assert shipped['args']['results_dir'] == 'results' and 'log_name' not in shipped['args']  # no start time
    trained = load_checkpoint(tmp_path / 'work' / 'checkpoint_srresnet.pth')
    assert not {'optimizer', 'model_ema', 'rng'} & set(shipped)  # the EMA weights as 'model', nothing resume-only
    assert shipped['notes'] and 'EMA' in shipped['notes'][0]
    assert all(torch.equal(shipped['model'][k], v) for k, v in trained['model_ema'].items())
    assert 'NOT met' in result.stdout  # a tiny model in one epoch is far from 31.2 dB


def test_bench_real_photos_fine_tunes_evaluates_both_models_with_lpips_and_ships(tmp_path):
    data, out = benchmark_like_folders(tmp_path / 'data'), tmp_path / 'out'
    out.mkdir()
    torch.manual_seed(0)
    base = tmp_path / 'base.pth'  # a bicubic-trained model's file, in the recipe's tiny configuration
    save_checkpoint({'format_version': 1, 'arch': 'srresnet', 'epoch': 1,
                     'model_config': models.model_config('srresnet', 4, n_blocks=2, n_channels=8),
                     'model': models.SRResNet(n_blocks=2, n_channels=8, scaling_factor=4).state_dict()}, base)
    alexnet = tmp_path / 'alexnet.pth'  # random weights in torchvision's layout: LPIPS runs, its values mean nothing
    torch.save(torchvision.models.alexnet(weights=None).features.state_dict(), alexnet)
    (tmp_path / 'junk.pth').write_bytes(b'junk')
    refused = run_script('benchmarks/bench_real_photos.py', '--data', data, '--base', base, '--work', tmp_path / 'work',
                         '--lpips-backbone-weights', tmp_path / 'junk.pth')
    assert refused.returncode == 1 and refused.stderr.strip().startswith(
        f"--lpips-backbone-weights {tmp_path / 'junk.pth'}: not a loadable state_dict (")
    assert not (tmp_path / 'work').exists()  # refused before any work, not after the training
    command = ['benchmarks/bench_real_photos.py', '--data', data, '--base', base, '--out', out, '--work',
               tmp_path / 'work', '--lpips-backbone-weights', alexnet]
    env = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1', TORCH_HOME=str(tmp_path / 'no_hub'))
    # SIGTERM to the benchmark: its training saves and stops, and nothing is evaluated as if it had finished
    first = subprocess.Popen([sys.executable, *map(str, command), '--train-flags', f"{TINY_RECIPE} --epochs 500"],
                             cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in first.stdout:
            if 'epoch 1/500' in line:
                first.send_signal(signal.SIGTERM)
                break
        out_text, err = first.communicate(timeout=300)
    finally:
        first.kill()
    assert first.returncode == 1 and 'nothing is evaluated' in err and not json_lines(out_text), err
    stopped = load_checkpoint(tmp_path / 'work' / 'train' / 'checkpoint_srresnet.pth')
    assert 1 <= stopped['epoch'] < 500 and not list(out.iterdir())  # saved by the training; nothing shipped
    assert not (tmp_path / 'work' / 'train' / '.checkpoint_srresnet.pth.lock').exists()  # the trainer has exited
    # the same command again continues that run (to a shorter schedule here) and finishes
    result = run_script(*command, '--train-flags', f"{TINY_RECIPE} --epochs {stopped['epoch'] + 1}", timeout=600,
                        env_extra={'TORCH_HOME': str(tmp_path / 'no_hub')})
    assert result.returncode == 0, result.stdout + result.stderr
    (row,) = json_lines(result.stdout)
    assert row['command'].startswith('python train_srresnet.py --recipe cpu-291 --degradation light')
    degraded = {'Set5_x4_light', 'Set14_x4_light', 'BSD100_x4_light'}
    for model in ('real', 'base'):
        assert set(row[model]['degraded']) == degraded and set(row[model]['clean']) == {'Set5', 'Set14', 'BSD100'}
        scores = list(row[model]['degraded'].values()) + list(row[model]['clean'].values())
        assert all(len(s) == 3 and 5 < s[0] < 50 and 0 < s[1] <= 1 and s[2] >= 0 for s in scores)  # PSNR SSIM LPIPS
    assert row['real'] != row['base']
    gains = [t['value'] for t in row['targets'][:2]]
    assert gains == [round(row['real']['degraded'][n][0] - row['base']['degraded'][n][0], 3)
                     for n in ('Set14_x4_light', 'BSD100_x4_light')]
    set14 = row['real']['degraded']['Set14_x4_light']
    assert f"degraded Set14_x4_light: real-photo model {set14[0]:.2f} dB / {set14[1]:.4f} / LPIPS {set14[2]:.4f}" \
        in result.stdout
    assert 'LPIPS not measured' not in result.stdout
    shipped = load_checkpoint(out / 'srresnet_x4_real.pth')
    assert shipped['args']['degradation'] == 'light' and shipped['args']['init_from'] is not None
    assert not {'optimizer', 'model_ema'} & set(shipped)


def test_gpu_check_speedrun_records_the_set5_curve_against_time(tmp_path):
    data, out = benchmark_like_folders(tmp_path / 'data', ('T91', 'BSD200', 'Set5', 'Set14')), tmp_path / 'gs'
    result = run_script('benchmarks/gpu_check.py', '--dry-run', '--speedrun', '--data', data, '--out', out,
                        '--budget-minutes', 4, '--speedrun-flags', f"{TINY_RECIPE} --epochs 2", timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((out / 'gpu_check.json').read_text())
    assert [s['step'] for s in report['steps']] == ['environment', 'speedrun']
    run = report['steps'][1]
    assert run['status'] == 'ok' and run['train_folders'] == ['T91', 'BSD200'] and run['train_images'] == 4
    assert '--recipe cpu-291' in run['command']
    assert [epoch for _, epoch, _ in run['curve']] == [1, 2]  # one Set5 point per epoch
    minutes = [m for m, _, _ in run['curve']]
    assert 0 <= minutes[0] <= minutes[1] < 4 and all(10 < p < 40 for _, _, p in run['curve'])
    assert run['best_set5_psnr'] == max(p for _, _, p in run['curve']) and run['minutes_to_31_2'] is None
    assert [d['name'] for d in run['eval']] == ['Set5', 'Set14']
