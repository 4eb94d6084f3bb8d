"""One command that checks the suite on a GPU and measures it, in at most about 8 minutes on one GPU.

    python benchmarks/gpu_check.py --prepare                 # here: copy T91, Set5, Set14 (+ part of BSD200) into
                                                            # .gpu_data/ (git-ignored, < 56 MiB) so that it travels
    python benchmarks/gpu_check.py --out gpu_check           # on the GPU machine: everything below, into gpu_check/
    python benchmarks/gpu_check.py --dry-run --out /tmp/gc   # on a CPU, tiny settings: checks the script itself
    python benchmarks/gpu_check.py --speedrun --out gpu_speedrun   # the primary recipe on the GPU, <= 8 minutes

Runs, in order, each step with its own time limit, recording what passed and what it measured:
  1. the environment: torch, CUDA, the GPU(s), bf16 support;
  2. the CUDA-only tests: `pytest -m cuda tests/test_cuda.py` (fp16 with GradScaler, bf16, channels_last, --compile,
     DataParallel on the GPUs present, DDP with nccl on one process, inference on the GPU against the CPU);
  3. benchmarks/bench_train.py --device cuda at batch 64 in bf16 and in fp32: patches/s, peak GPU memory, GPU
     utilisation, and (bf16) the step fed by the real data loader: how long each step waits for data;
  4. benchmarks/bench_inference.py --device cuda: the tutorial's whole-image inference against the suite's;
  5. SRResNet x4 trained on T91 (+ BSD200 when present) for the time left (at most --train-minutes), stopped with
     SIGTERM (the suite saves its position and exits 0), then eval.py on Set5 and Set14 (standard protocol).
Writes OUT/gpu_check.json (everything), OUT/summary.md (readable) and OUT/log.txt (every command's output).

--speedrun instead trains the primary model's recipe (train_srresnet.py --recipe cpu-291: SRResNet x4 on T91 +
BSD200, Set5 validated after every epoch) on the GPU in bf16 for at most --budget-minutes, more epochs with
--speedrun-flags "--epochs 40"; it records Set5 x4 PSNR (standard protocol, EMA weights) against wall time after
each epoch, the minutes to 31.2 dB (the CPU target) and the best PSNR reached (the paper: 32.05), then evaluates
the last state on Set5 and Set14.

Data: --data DIR holding T91/, Set5/, Set14/ (and optionally BSD200/); default ../shared/data next to the
repository, else .gpu_data/ inside it (made by --prepare). In --dry-run everything runs on the CPU with tiny
settings and a few seconds of training, so tests can run this script without a GPU.
"""
import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(REPO), 'shared', 'data')
LOCAL = os.path.join(REPO, '.gpu_data')
CAP_BYTES = 56 * 2 ** 20  # what --prepare copies: the device's working tree travels within 64 MiB in all
REQUIRED = ('T91', 'Set5', 'Set14')


def prepare(source, target, cap=CAP_BYTES):
    """Copy the required folders, then BSD200 images while they fit under ``cap`` bytes. Returns bytes copied."""
    total = 0
    for name in REQUIRED + ('BSD200',):
        src = os.path.join(source, name)
        if not os.path.isdir(src):
            if name in REQUIRED:
                sys.exit(f"error: {src} not found: --prepare needs {', '.join(REQUIRED)} under {source}")
            continue
        os.makedirs(os.path.join(target, name), exist_ok=True)
        for file in sorted(os.listdir(src)):
            size = os.path.getsize(os.path.join(src, file))
            if name == 'BSD200' and total + size > cap:
                break
            shutil.copyfile(os.path.join(src, file), os.path.join(target, name, file))
            total += size
    if total > cap:
        sys.exit(f"error: {', '.join(REQUIRED)} alone take {total / 2 ** 20:.0f} MiB, over the {cap / 2 ** 20:.0f} MiB "
                 f"that travel")
    return total


class Run:
    """The record of a gpu_check run: steps with their status and numbers, a log of every command's output."""

    def __init__(self, out, dry):
        self.out, self.dry, self.start = out, dry, time.monotonic()
        self.steps, self.log = [], open(os.path.join(out, 'log.txt'), 'w')

    def elapsed(self):
        return time.monotonic() - self.start

    def command(self, name, cmd, timeout, stop_after=None, start_marker=None, line_times=False):
        """Run ``cmd`` in the repository root, killed after ``timeout`` s; with ``stop_after``, sent SIGTERM that many
        seconds after it printed a line containing ``start_marker`` (the trainers then save their position and exit
        0). Logs the output. Returns (status, stdout), and with ``line_times`` also {line: minutes after the
        ``start_marker`` line (or the start) when it arrived}."""
        self.log.write(f"\n===== {name}: {' '.join(cmd)}\n")
        self.log.flush()
        env = dict(os.environ, PYTHONUNBUFFERED='1')
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines, times, deadline, stop_at = [], {}, time.monotonic() + timeout, None
        started = [time.monotonic()]

        def read():
            for line in iter(proc.stdout.readline, ''):
                if start_marker and start_marker in line:
                    started[0] = time.monotonic()
                times[line.rstrip('\n')] = (time.monotonic() - started[0]) / 60
                lines.append(line)
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        status = 'ok'
        while proc.poll() is None:
            now = time.monotonic()
            if stop_after is not None and stop_at is None and any(start_marker in line for line in lines):
                stop_at = now + stop_after
            if stop_at is not None and now >= stop_at:
                proc.send_signal(signal.SIGTERM)
                stop_at = float('inf')
            if now >= deadline:
                proc.kill()
                status = f'timed out after {timeout} s'
            time.sleep(0.1)
        reader.join()
        out = ''.join(lines)
        if status == 'ok' and proc.returncode != 0:
            status = f'exit code {proc.returncode}'
        self.log.write(out)
        self.log.flush()
        return (status, out, times) if line_times else (status, out)

    def record(self, name, status, seconds, **numbers):
        self.steps.append({'step': name, 'status': status, 'seconds': round(seconds, 1), **numbers})
        print(f"{name}: {status} ({seconds:.0f} s)", flush=True)


def json_lines(text):
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith('{') or line.startswith('['):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return rows


def environment(run, device):
    import torch
    info = {'torch': torch.__version__, 'cuda': torch.version.cuda, 'device': device,
            'date': time.strftime('%Y-%m-%d %H:%M'), 'python': sys.version.split()[0]}
    if device == 'cuda':
        info.update(gpus=[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
                    bf16=torch.cuda.is_bf16_supported(),
                    gpu_memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2 ** 30, 1))
    run.record('environment', 'ok', 0, **info)
    return info


def cuda_tests(run):
    t0 = time.monotonic()
    cmd = [sys.executable, '-m', 'pytest', '-q', '-m', 'cuda', 'tests/test_cuda.py', '-p', 'no:cacheprovider', '-rs']
    status, out = run.command('cuda tests', cmd, timeout=150 if run.dry else 240)
    last = out.strip().splitlines()[-1] if out.strip() else ''
    if status == 'exit code 5' or ('skipped' in last and 'passed' not in last and 'failed' not in last):
        status = 'skipped: no CUDA device' if run.dry else 'skipped'
    run.record('cuda tests', status, time.monotonic() - t0, summary=last)


def bench_train(run, device, data, precision):
    t0 = time.monotonic()
    if run.dry:
        size = ['--batch-size', '2', '--crop-size', '16', '--steps', '1', '--warmup', '1', '--rounds', '1',
                '--floor-repeat', '1', '--workers', '0']
    else:
        size = ['--batch-size', '64', '--crop-size', '96', '--steps', '10', '--warmup', '3', '--rounds', '2']
    cmd = [sys.executable, 'benchmarks/bench_train.py', '--device', device, '--amp', precision, *size]
    if precision != 'off':  # the loader-fed step once, in the precision users get by default
        cmd += ['--data', os.path.join(data, 'T91')]
    status, out = run.command(f"bench_train {precision}", cmd, timeout=120 if run.dry else 150)
    rows = [r for r in json_lines(out) if isinstance(r, dict) and r.get('benchmark') == 'train_step_srresnet_x4']
    keep = ('suite_s_per_step', 'suite_patches_per_s', 'reference_s_per_step', 'reference_patches_per_s', 'speedup',
            'conv_floor_s_per_step', 'peak_gpu_memory_gib', 'gpu_utilisation_percent', 'loader_s_per_step',
            'data_wait_s_per_step', 'loader_vs_preloaded', 'batch_size', 'suite_settings')
    numbers = {k: rows[-1][k] for k in keep if rows and k in rows[-1]}
    run.record(f"bench_train {precision}", status if rows or status != 'ok' else 'no result', time.monotonic() - t0,
               **numbers)


def bench_inference(run, device):
    t0 = time.monotonic()
    if run.dry:
        size = ['--sizes', '32', '--cases', 'reference', 'suite-fast', '--repeat', '1', '--threads', '1']
    else:
        size = ['--sizes', '512', '2048', '--cases', 'reference', 'suite-fast', 'suite-bf16', '--repeat', '3',
                '--reference-max-size', '2048']
    status, out = run.command('bench_inference', [sys.executable, 'benchmarks/bench_inference.py', '--device',
                                                  device, *size], timeout=120 if run.dry else 150)
    table = json.loads(out[out.index('\n[') + 1:]) if '\n[' in out else []  # the closing JSON list of all cases
    cases = [{k: r.get(k) for k in ('case', 'size', 'seconds', 'us_per_px', 'peak_gpu_memory_mib', 'peak_rss_mib')}
             for r in table]
    run.record('bench_inference', status if cases or status != 'ok' else 'no result', time.monotonic() - t0,
               cases=cases)


def train_and_eval(run, device, data, train_seconds):
    """SRResNet x4 on T91 (+ BSD200) for train_seconds, stopped by SIGTERM, then eval.py on Set5 and Set14."""
    t0 = time.monotonic()
    work = os.path.join(run.out, 'train')
    folders = [os.path.join(data, 'T91')] + [os.path.join(data, 'BSD200')] * os.path.isdir(os.path.join(data, 'BSD200'))
    status, _ = run.command('data lists', [sys.executable, 'create_data_lists.py', '--train-folders', *folders,
                                           '--min-size', '32' if run.dry else '96', '--output-folder',
                                           os.path.join(work, 'data')],
                            timeout=120)
    size = (['--n-blocks', '2', '--n-channels', '8', '--batch-size', '4', '--crop-size', '32', '--workers', '0']
            if run.dry else ['--batch-size', '64'])
    cmd = [sys.executable, 'train_srresnet.py', '--device', device, '--data-folder', os.path.join(work, 'data'),
           '--results-dir', os.path.join(work, 'results'), '--runs-dir', os.path.join(work, 'runs'),
           '--patches-per-image', '16', '--downsample', 'matlab', '--epochs', '100000', '--restart', *size]
    if status == 'ok':
        status, out = run.command('train', cmd, timeout=train_seconds + 180, stop_after=train_seconds,
                                  start_marker='training images')  # counted from the data being ready
    checkpoint = os.path.join(work, 'results', 'checkpoint_srresnet.pth')
    numbers = {'train_seconds': train_seconds, 'command': ' '.join(cmd[1:])}
    if status == 'ok' and os.path.isfile(checkpoint):
        import torch
        state = torch.load(checkpoint, map_location='cpu', weights_only=True)
        numbers.update(steps=state['step'], epochs_done=state['epoch'])
        status = evaluate_set5_set14(run, 'eval', checkpoint, device, data, work, numbers)
    elif status == 'ok':
        status = 'no checkpoint written'
    run.record('train + eval', status, time.monotonic() - t0, **numbers)


def evaluate_set5_set14(run, step, checkpoint, device, data, work, numbers):
    """eval.py on Set5 and Set14 (standard protocol) as step ``step``; its table goes to numbers['eval']. Returns
    the step's status."""
    tests = [os.path.join(data, name) for name in ('Set5', 'Set14')]
    status, _ = run.command(step, [sys.executable, 'eval.py', '--checkpoint', checkpoint, '--device', device,
                                   '--test-folders', *tests, '--protocol', 'standard', '--results-dir',
                                   os.path.join(work, 'results')], timeout=120)
    report = os.path.join(work, 'results', 'eval_srresnet_x4.json')
    if status == 'ok' and os.path.isfile(report):
        with open(report) as f:
            numbers['eval'] = [{k: d[k] for k in ('name', 'images', 'standard_psnr', 'standard_ssim')}
                               for d in json.load(f)['datasets']]
    return status


def epoch_curve(out, start_times):
    """[(minutes, epoch, Set5 PSNR)] from a trainer's epoch lines ('epoch 3/12: loss ..., val PSNR (EMA) 30.1 dB')
    and the monotonic time each line arrived (``start_times``: {line: minutes since the training started})."""
    curve = []
    for line in out.splitlines():
        match = re.match(r'epoch (\d+)/\d+: .*val PSNR(?: \(EMA\))? ([\d.]+) dB', line)
        if match:
            curve.append((round(start_times.get(line, float('nan')), 2), int(match.group(1)), float(match.group(2))))
    return curve


def speedrun(run, device, data, seconds, extra):
    """The primary recipe on ``device`` for at most ``seconds`` (SIGTERM then: the run saves and exits), the Set5
    curve against wall time, then eval.py on Set5 and Set14."""
    t0 = time.monotonic()
    work = os.path.join(run.out, 'speedrun')
    folders = [os.path.join(data, n) for n in ('T91', 'BSD200') if os.path.isdir(os.path.join(data, n))]
    status, _ = run.command('data lists', [sys.executable, 'create_data_lists.py', '--train-folders', *folders,
                                           '--min-size', '96', '--output-folder', os.path.join(work, 'data')],
                            timeout=120)
    cmd = [sys.executable, 'train_srresnet.py', '--recipe', 'cpu-291', '--device', device,
           '--amp', 'off' if run.dry else 'bf16', '--data-folder', os.path.join(work, 'data'),
           '--val-folder', os.path.join(data, 'Set5'), '--results-dir', os.path.join(work, 'results'),
           '--runs-dir', os.path.join(work, 'runs'), '--restart', *extra]
    numbers = {'command': ' '.join(cmd[1:]), 'train_folders': [os.path.basename(f) for f in folders],
               'train_images': sum(len(os.listdir(f)) for f in folders), 'budget_seconds': seconds}
    if status == 'ok':
        status, out, times = run.command('speedrun train', cmd, timeout=seconds + 120, stop_after=seconds,
                                         start_marker='training images', line_times=True)
        curve = epoch_curve(out, times)
        numbers['curve'] = curve  # (minutes since the data was ready, epoch, Set5 PSNR)
        numbers['minutes_to_31_2'] = next((m for m, _, p in curve if p >= 31.2), None)
        numbers['best_set5_psnr'] = max((p for _, _, p in curve), default=None)
    checkpoint = os.path.join(work, 'results', 'checkpoint_srresnet.pth')
    if status == 'ok' and os.path.isfile(checkpoint):
        status = evaluate_set5_set14(run, 'speedrun eval', checkpoint, device, data, work, numbers)
    elif status == 'ok':
        status = 'no checkpoint written'
    run.record('speedrun', status, time.monotonic() - t0, **numbers)


def markdown(info, steps):
    lines = [f"# gpu_check {info['date']}", '',
             f"torch {info['torch']}, CUDA {info['cuda']}, device {info['device']}"
             + (f", {', '.join(info.get('gpus', []))}" if info.get('gpus') else ''), '',
             '| step | status | seconds | numbers |', '|---|---|---:|---|']
    for s in steps:
        numbers = {k: v for k, v in s.items() if k not in ('step', 'status', 'seconds')}
        lines.append(f"| {s['step']} | {s['status']} | {s['seconds']} | `{json.dumps(numbers)}` |")
    return '\n'.join(lines) + '\n'


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument('--out', default='gpu_check', help='folder for gpu_check.json, summary.md and log.txt')
    parser.add_argument('--data', help='folder holding T91/, Set5/, Set14/ (default: ../shared/data, else .gpu_data)')
    parser.add_argument('--prepare', action='store_true', help='copy the data into .gpu_data/ and exit')
    parser.add_argument('--dry-run', action='store_true', help='CPU, tiny settings: check the script itself')
    parser.add_argument('--train-minutes', type=float, default=5., help='longest training (cut to fit 8 minutes)')
    parser.add_argument('--budget-minutes', type=float, default=8., help='the whole check, training included')
    parser.add_argument('--speedrun', action='store_true',
                        help='only train the primary recipe (--recipe cpu-291) for the budget: Set5 against time')
    parser.add_argument('--speedrun-flags', default='', metavar='FLAGS',
                        help='more train_srresnet.py flags for --speedrun, e.g. "--epochs 40"')
    args = parser.parse_args()
    if args.prepare:
        copied = prepare(args.data or SHARED, LOCAL)
        print(f"copied {copied / 2 ** 20:.1f} MiB into {LOCAL}: carry '.gpu_data' to the GPU machine")
        return
    data = args.data or (SHARED if os.path.isdir(os.path.join(SHARED, 'T91')) else LOCAL)
    missing = [n for n in REQUIRED if not os.path.isdir(os.path.join(data, n))]
    if missing:
        sys.exit(f"error: {', '.join(missing)} not found under {data}: pass --data or run --prepare where the data is")
    import torch
    device = 'cpu' if args.dry_run else 'cuda'
    if device == 'cuda' and not torch.cuda.is_available():
        sys.exit("error: no CUDA device here; --dry-run checks the script on a CPU")
    os.makedirs(args.out, exist_ok=True)
    run = Run(args.out, args.dry_run)
    info = environment(run, device)
    if args.speedrun:
        seconds = args.budget_minutes * 60 - run.elapsed() - 60  # the eval after it
        speedrun(run, device, data, int(max(20, seconds)), shlex.split(args.speedrun_flags))
    else:
        cuda_tests(run)
        bench_train(run, device, data, 'auto' if args.dry_run else 'bf16')
        bench_train(run, device, data, 'off')
        bench_inference(run, device)
        left = args.budget_minutes * 60 - run.elapsed() - (20 if args.dry_run else 60)  # eval and writing after it
        train_seconds = 5 if args.dry_run else max(30, min(args.train_minutes * 60, left))
        train_and_eval(run, device, data, int(train_seconds))
    result = {'info': info, 'steps': run.steps, 'total_seconds': round(run.elapsed(), 1)}
    with open(os.path.join(args.out, 'gpu_check.json'), 'w') as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(args.out, 'summary.md'), 'w') as f:
        f.write(markdown(info, run.steps))
    run.log.close()
    print(f"gpu_check done in {run.elapsed() / 60:.1f} min: {os.path.join(args.out, 'summary.md')}")
    failed = [s['step'] for s in run.steps if not (s['status'] == 'ok' or s['status'].startswith('skipped'))]
    if failed:
        sys.exit(f"error: failed steps: {', '.join(failed)} (see {os.path.join(args.out, 'log.txt')})")


if __name__ == '__main__':
    main()
