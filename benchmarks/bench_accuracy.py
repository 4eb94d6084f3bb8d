"""Accuracy parity: a short SRResNet x4 run with the suite's fast defaults against the same run in fp32 NCHW.

    python benchmarks/bench_accuracy.py                     # BSD200 -> Set5 from ../shared/data, 1 epoch of 150 steps
    python benchmarks/bench_accuracy.py --patches-per-image 24 --device cuda

Every run goes through train_srresnet.py with the same seed, so all runs on the fast pipeline see identical
patches; only the numerics differ, and each run pins them (--amp auto would be bf16 on CPUs with AMX or
AVX512-BF16 and fp32 elsewhere). Runs: 'defaults' (the speed rewrites in fp32: --amp off, channels_last, tail
before shuffle, fast PReLU backward, fast tanh), 'fp32' (--amp off --no-channels-last --no-tail-before-shuffle
--no-fast-prelu --no-fast-tanh: the tutorial's numerics), 'bf16' (forced, even where the CPU emulates it), and
'faithful' (the tutorial's own loop and PIL-per-patch pipeline: other random crops, so it differs by sampling noise
too). Validation PSNR is
the standard protocol on Set5 (Y, border = scale). Goal: |defaults - fp32| <= 0.05 dB.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(REPO), 'shared', 'data')
# Each run pins its numerics (--amp auto would mean bf16 on some machines and fp32 on others).
RUNS = {'defaults': ['--amp', 'off'],
        'fp32': ['--amp', 'off', '--no-channels-last', '--no-tail-before-shuffle', '--no-fast-prelu',
                 '--no-fast-tanh'],
        'bf16': ['--amp', 'bf16'], 'faithful': ['--faithful']}


def run(name, extra, common, workdir):
    t0 = time.perf_counter()
    result = subprocess.run([sys.executable, os.path.join(REPO, 'train_srresnet.py'), *common, *extra,
                             '--results-dir', os.path.join(workdir, name), '--runs-dir', os.path.join(workdir, 'runs')],
                            capture_output=True, text=True)
    if result.returncode != 0:
        return {'run': name, 'error': result.stderr.strip().splitlines()[-1]}
    match = re.search(r'val PSNR ([0-9.]+) dB', result.stdout)
    return {'run': name, 'val_psnr': float(match.group(1)), 'seconds': round(time.perf_counter() - t0, 1),
            'loss': float(re.search(r'loss ([0-9.e-]+)', result.stdout).group(1))}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument('--train-folder', default=os.path.join(SHARED, 'BSD200'))
    parser.add_argument('--val-folder', default=os.path.join(SHARED, 'Set5'))
    parser.add_argument('--patches-per-image', type=int, default=12, help='BSD200: 12 -> 150 steps of 16')
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--device', default='auto')
    parser.add_argument('--runs', nargs='*', default=list(RUNS), choices=list(RUNS))
    args = parser.parse_args()
    for folder in (args.train_folder, args.val_folder):
        if not os.path.isdir(folder):
            sys.exit(f"{folder} not found: pass --train-folder/--val-folder")
    sys.path.insert(0, REPO)
    from datasets import create_data_lists
    with tempfile.TemporaryDirectory() as workdir:
        create_data_lists([args.train_folder], [], 96, workdir, workers=2, log=lambda *a: None)
        common = ['--data-folder', workdir, '--epochs', 1, '--batch-size', args.batch_size, '--patches-per-image',
                  args.patches_per_image, '--lr', 1e-4, '--val-folder', args.val_folder, '--device', args.device,
                  '--workers', 2, '--seed', 0]
        common = list(map(str, common))
        results = [run(name, RUNS[name], common, workdir) for name in args.runs]
    by_name = {r['run']: r for r in results}
    for r in results:
        if 'val_psnr' in r and 'fp32' in by_name and 'val_psnr' in by_name['fp32']:
            r['delta_vs_fp32_db'] = round(r['val_psnr'] - by_name['fp32']['val_psnr'], 3)
        print(json.dumps({'benchmark': 'accuracy_parity', 'date': time.strftime('%Y-%m-%d'), **r}))
    print('; '.join(f"{r['run']}: {r.get('val_psnr', r.get('error'))} dB" + (
        f" ({r['delta_vs_fp32_db']:+.3f} vs fp32)" if 'delta_vs_fp32_db' in r else '') for r in results))


if __name__ == '__main__':
    main()
