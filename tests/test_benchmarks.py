"""The benchmark scripts still run end to end, on tiny settings. Their numbers belong in README, not in CI, but a
benchmark broken by a refactor would go unnoticed until someone needs it."""
import json

from conftest import run_script


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
    floor = res['gflop_per_step'] / res['fp32_gemm_gflop_per_s']  # seconds at large-GEMM speed
    assert abs(res['fp32_floor_s_per_step'] / floor - 1) < 0.05 and res['fp32_speedup_ceiling'] > 0


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
    assert set(rows) == {'tutorial', 'suite_cached', 'suite_streaming_4_crops', 'suite_cached_default_allocator'}
    assert rows['tutorial']['vs_tutorial'] == 1.0 and all(r['patches_per_s_per_core'] > 0 for r in rows.values())


def test_bench_inference_reports_time_and_peak_memory_per_case():
    result = run_script('benchmarks/bench_inference.py', '--sizes', 32, '--cases', 'reference', 'suite-tiled',
                        '--tile', 24, '--repeat', 1, '--threads', 1)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout[result.stdout.index('\n[') + 1:])
    assert [r['case'] for r in rows] == ['reference', 'suite-tiled']
    assert all(r['size'] == 32 and r['seconds'] > 0 and r['peak_rss_mib'] > 100 for r in rows)
    assert rows[1]['tile'] == 24


def test_bench_video_measures_model_pipeline_and_codec():
    result = run_script('benchmarks/bench_video.py', '--size', '32x18', '--frames', 3, '--warmup', 1,
                        '--precisions', 'fp32', '--preset', 'ultrafast')
    assert result.returncode == 0, result.stderr
    rows = json_lines(result.stdout)
    assert [(r['what'], r['precision']) for r in rows] == [('model', 'fp32'), ('pipeline', 'fp32'), ('codec', '-')]
    assert all(r['in'] == '32x18' and r['out'] == '96x54' and r['fps'] > 0 for r in rows)
    assert rows[0]['frames'] == 2 and rows[1]['frames'] == rows[2]['frames'] == 3
