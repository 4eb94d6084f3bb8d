"""A long run must survive anything: train the primary recipe once straight through, and once stopped at random
points (Ctrl-C, SIGTERM and kill -9, each followed by the same command with --resume), and compare the two final
checkpoints tensor by tensor (weights, EMA weights, optimizer state) and in their counters.

    python benchmarks/bench_resume.py                                  # the cpu-291 recipe, 8 short epochs
    python benchmarks/bench_resume.py --stops 5 --seed 1
    python benchmarks/bench_resume.py --train-flags "--epochs 16 --patches-per-image 64"   # the whole recipe

The numerics are pinned (--device cpu --amp off --deterministic), so on one machine the split run must end bit for
bit where the straight one does. Each stop lands a random delay (up to an epoch's time in the straight run) after
the first epoch line of its segment, so every segment makes progress and where the stop falls (a step, the
validation, the save) is left to chance; kill -9 loses the steps since the last save, which the resumed run does
again. Prints one JSON line and a verdict; exits 1 when they differ.
"""
import argparse
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(REPO), 'shared', 'data')
sys.path.insert(0, REPO)
from checkpoints import load_checkpoint  # noqa: E402

PINNED = ['--recipe', 'cpu-291', '--device', 'cpu', '--amp', 'off', '--deterministic']
SIGNALS = {'SIGINT': signal.SIGINT, 'SIGTERM': signal.SIGTERM, 'SIGKILL': signal.SIGKILL}


def command(flags, data_lists, results, val_folder):
    return [sys.executable, os.path.join(REPO, 'train_srresnet.py'), *PINNED, *flags, '--data-folder', data_lists,
            '--results-dir', results, '--runs-dir', os.path.join(results, 'runs'), '--val-folder', val_folder]


def run_segment(argv, stop=None):
    """Run the trainer; with ``stop`` = (delay in s, signal name), send that signal the delay after its first epoch
    line. Returns (exit code, whether the signal was sent, times of its epoch lines since the start in s)."""
    env = dict(os.environ, PYTHONUNBUFFERED='1', OMP_WAIT_POLICY='PASSIVE')
    start = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    sent, times, timer = [], [], None

    def send():
        if process.poll() is None:
            process.send_signal(SIGNALS[stop[1]])
            sent.append(True)
    for line in process.stdout:
        if line.startswith('epoch '):
            times.append(time.perf_counter() - start)
            if stop is not None and timer is None:
                timer = threading.Timer(stop[0], send)
                timer.start()
    code = process.wait()
    if timer is not None:
        timer.cancel()
        timer.join()
    return code, bool(sent), times


def compare(a, b):
    """Names of the entries where checkpoints ``a`` and ``b`` differ (tensors bit for bit, counters exactly)."""
    diffs = [k for k in ('epoch', 'step', 'resume_step', 'best_psnr', 'ema_n_averaged') if a.get(k) != b.get(k)]
    for key in ('model', 'model_ema'):
        diffs += [f"{key}.{n}" for n, t in a[key].items() if not torch.equal(t, b[key][n])]
    state_a, state_b = a['optimizer']['state'], b['optimizer']['state']
    diffs += [f"optimizer.{i}.{n}" for i in state_a for n, t in state_a[i].items()
              if not torch.equal(t, state_b[i][n])]
    if a['optimizer']['param_groups'][0]['lr'] != b['optimizer']['param_groups'][0]['lr']:
        diffs.append('optimizer lr')
    return diffs


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument('--data', default=SHARED, help='folder holding T91, BSD200 and Set5')
    parser.add_argument('--train-flags', default='--epochs 8 --patches-per-image 1', metavar='FLAGS',
                        help='train_srresnet.py flags added to the pinned recipe (default: 8 short epochs)')
    parser.add_argument('--stops', type=int, default=3, help='stops of the split run (at least 3: one is kill -9)')
    parser.add_argument('--seed', type=int, default=0, help='draws the stop points and signals')
    args = parser.parse_args()
    if args.stops < 3:
        parser.error('--stops must be at least 3 (Ctrl-C, SIGTERM and kill -9)')
    missing = [n for n in ('T91', 'BSD200', 'Set5') if not os.path.isdir(os.path.join(args.data, n))]
    if missing:
        sys.exit(f"{', '.join(missing)} not found under {args.data}: pass --data")
    rng = random.Random(args.seed)
    signals = ['SIGINT', 'SIGTERM', 'SIGKILL'] + [rng.choice(list(SIGNALS)) for _ in range(args.stops - 3)]
    rng.shuffle(signals)
    flags = shlex.split(args.train_flags)
    with tempfile.TemporaryDirectory() as work:
        lists = os.path.join(work, 'data')
        subprocess.run([sys.executable, os.path.join(REPO, 'create_data_lists.py'), '--train-folders',
                        os.path.join(args.data, 'T91'), os.path.join(args.data, 'BSD200'), '--min-size', '96',
                        '--output-folder', lists], check=True, capture_output=True)
        val = os.path.join(args.data, 'Set5')
        straight, split = os.path.join(work, 'straight'), os.path.join(work, 'split')
        t0 = time.perf_counter()
        code, _, times = run_segment(command(flags, lists, straight, val))
        if code != 0 or len(times) < 2:
            sys.exit(f"the straight run failed (exit {code}) or had fewer than 2 epochs")
        minutes = (time.perf_counter() - t0) / 60
        epoch_s = (times[-1] - times[0]) / (len(times) - 1)
        stops, path = [], os.path.join(split, 'checkpoint_srresnet.pth')
        for name in signals:
            resume = ['--resume'] if os.path.exists(path) else []
            delay = rng.uniform(0, epoch_s)
            code, sent, _ = run_segment(command(flags, lists, split, val) + resume, (delay, name))
            stops.append({'signal': name, 'delay_s': round(delay, 1), 'sent': sent, 'exit': code})
            if not sent:  # the run ended before the stop was due: the remaining stops have nothing to stop
                break
        code, _, _ = run_segment(command(flags, lists, split, val) + ['--resume'])
        if code != 0:
            sys.exit(f"the final resumed run failed (exit {code})")
        diffs = compare(load_checkpoint(os.path.join(straight, 'checkpoint_srresnet.pth')), load_checkpoint(path))
    row = {'benchmark': 'resume', 'train_flags': args.train_flags, 'straight_minutes': round(minutes, 1),
           'epoch_seconds': round(epoch_s, 1),
           'stops': stops, 'stops_sent': sum(s['sent'] for s in stops), 'equal': not diffs, 'differences': diffs[:20],
           'date': time.strftime('%Y-%m-%d')}
    print(json.dumps(row))
    sent = [s['signal'] for s in stops if s['sent']]
    print(f"{len(sent)} stops ({', '.join(sent)}), each resumed: the final checkpoint "
          + ("equals the uninterrupted run's bit for bit" if not diffs else f"DIFFERS in {len(diffs)} entries"))
    sys.exit(1 if diffs else 0)


if __name__ == '__main__':
    main()
