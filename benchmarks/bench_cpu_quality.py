"""Quality reachable on a CPU: train the shipped models with the suite's own scripts, evaluate them with the
standard protocol, print the PSNR reached and the training time against each target.

    python benchmarks/bench_cpu_quality.py --archs espcn srcnn      # x3 on T91, from ../shared/data
    python benchmarks/bench_cpu_quality.py --archs espcn --out results   # also write results/espcn_x3_t91.pth
    python benchmarks/bench_cpu_quality.py --archs srresnet --out results   # SRResNet x4 on T91 + BSD200 (291 images)
    python benchmarks/bench_cpu_quality.py --archs srresnet --amp off      # fp32 where the CPU has no native bf16

Targets: the papers' 91-image Set5 x3 figures, ESPCN >= 32.55 dB and SRCNN >= 32.39 dB, each trained in at most
30 minutes on a 2-core CPU (bicubic 30.39 dB); SRResNet x4 (the tutorial's network, --recipe cpu-291) >= 31.2 dB on
Set5 x4 (bicubic 28.42, VDSR on the same 291 images 31.35) in at most 150 minutes on a 2-core CPU with native bf16.
The training commands are exactly the ones of docs/architectures.md ("Shipped checkpoints"); this script only adds
the folders. Each model is evaluated on every test set found (Set5, Set14, BSD100) in both protocols; the training's
epoch lines are printed as they come, with the minutes since the start, so the validation PSNR (Set5, for SRResNet)
can be read against wall time. How the recipes were found: docs/recipes-history.md.
"""
import argparse
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(REPO), 'shared', 'data')
# arch -> scale, training sets (folders of SHARED), shipped file name, Set5 target (dB), minutes allowed, command.
# The numerics are pinned, the same on every machine (--amp auto would depend on the CPU): SRCNN fp32; ESPCN and
# SRResNet bf16, what --amp auto runs on CPUs with AMX or AVX512-BF16 (elsewhere bf16 is emulated, far slower: give
# --amp off there, and the result is then an fp32 run).
RUNS = {
    'espcn': dict(scale=3, train=('T91',), min_size=32, out='espcn_x3_t91.pth', target=32.55, minutes=30,
                  data='data/t91', command=['--arch', 'espcn', '--scale', '3', '--device', 'cpu', '--amp', 'bf16']),
    'srcnn': dict(scale=3, train=('T91',), min_size=32, out='srcnn_x3_t91.pth', target=32.39, minutes=30,
                  data='data/t91', command=['--arch', 'srcnn', '--scale', '3', '--device', 'cpu', '--amp', 'off']),
    'srresnet': dict(scale=4, train=('T91', 'BSD200'), min_size=96, out='srresnet_x4_291.pth', target=31.2,
                     minutes=150, data='data/291', val=True,
                     command=['--recipe', 'cpu-291', '--device', 'cpu', '--amp', 'bf16']),
}
COMMANDS = {arch: run['command'] for arch, run in RUNS.items()}
TEST_SETS = ('Set5', 'Set14', 'BSD100')
sys.path.insert(0, REPO)
from checkpoints import load_checkpoint, save_checkpoint  # noqa: E402


def child_env():
    """The scripts' environment: OpenMP threads sleep instead of spinning while they wait (OMP_WAIT_POLICY=PASSIVE,
    unless set), so that another process on the machine slows the training by its share of the cores, not ~3x
    (README, Speed)."""
    return {'OMP_WAIT_POLICY': 'PASSIVE', **os.environ}


def sh(script, *args):
    result = subprocess.run([sys.executable, os.path.join(REPO, script), *map(str, args)], capture_output=True,
                            text=True, env=child_env())
    if result.returncode != 0:
        sys.exit(f"{script} failed: {result.stderr.strip().splitlines()[-1]}")
    return result.stdout


def train(command, t0):
    """Run train_srresnet.py, echoing its epoch lines with the minutes since ``t0``; exits on failure, and when the
    run was stopped before its last epoch (SIGTERM, passed on to it, or Ctrl-C: it saves first), so that nothing
    is evaluated as if it had finished."""
    process = subprocess.Popen([sys.executable, os.path.join(REPO, 'train_srresnet.py'), *command],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: process.send_signal(signum))
    stopped = None
    try:
        while True:
            try:
                for line in process.stdout:
                    if line.startswith(('epoch ', 'recipe ')):
                        print(f"[{(time.perf_counter() - t0) / 60:6.1f} min] {line.rstrip()}", flush=True)
                    elif line.startswith('stopped at '):
                        stopped = line.strip()
                break
            except KeyboardInterrupt:  # Ctrl-C reached the trainer too (one process group): it saves, then exits
                continue
        err = process.stderr.read()
        code = process.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if code != 0:
        sys.exit(f"train_srresnet.py failed: {(err.strip().splitlines() or ['?'])[-1]}")
    if stopped:
        where = stopped.split(';')[0][len('stopped at '):]
        sys.exit(f"train_srresnet.py was stopped at {where} (its checkpoint saved): the training did not finish, so "
                 f"nothing is evaluated")


def evaluate(ckpt, folders, work, weights='ema', protocols=('standard', 'tutorial'), label=None, lpips=None):
    """{protocol: {test set: (PSNR, SSIM)}} of ``ckpt`` in ``protocols`` (both by default), from eval.py's JSON table
    (full precision; ``weights``: a checkpoint's EMA weights, eval.py's default, its raw ones, or None for whatever
    eval.py picks; ``label``: the name of its eval folder under ``work``, default eval_<weights>). With ``lpips``
    (AlexNet's weights: 'imagenet' for the torch hub cache, or a state_dict file) the standard protocol's tuples
    are (PSNR, SSIM, LPIPS)."""
    out = os.path.join(work, label or f"eval_{weights}")
    protocol = 'both' if len(protocols) == 2 else protocols[0]
    metrics = ['--metrics', 'psnr', 'ssim', 'lpips'] if lpips else []
    metrics += ['--lpips-backbone-weights', lpips] if lpips not in (None, 'imagenet') else []
    sh('eval.py', '--checkpoint', ckpt, '--test-folders', *folders, '--protocol', protocol,
       *(['--weights', weights] if weights else []), *metrics, '--results-dir', out, '--device', 'cpu')
    (table,) = [name for name in os.listdir(out) if name.endswith('.json')]
    with open(os.path.join(out, table)) as f:
        rows = json.load(f)['datasets']
    return {protocol: {row['name']: tuple(row[f"{protocol}_{m}"] for m in ('psnr', 'ssim', 'lpips')
                                          if f"{protocol}_{m}" in row) for row in rows}
            for protocol in protocols}


SHIP_DROPPED = ('optimizer', 'scheduler', 'scaler', 'rng', 'model_ema', 'ema_n_averaged')  # resume-only state


def ship(src, dst, arch, data_folder, label=None):
    """Copy a trained checkpoint for the repository: the paths it records become the documented command's. A run
    with an EMA ships its EMA weights as 'model' (what eval.py and test.py would pick anyway) and none of the
    resume-only state: the tutorial's SRResNet is then ~6 MB instead of 25. ``label``: the model's name in output file
    names when not its architecture's."""
    ckpt = load_checkpoint(src)
    if ckpt.get('model_ema') is not None:
        ckpt['model'] = ckpt['model_ema']
        ckpt['notes'] = [f"the EMA of the trained weights (decay {ckpt.get('ema_decay')}"
                         f"{', with warm-up' if ckpt.get('ema_warmup') else ''}), shipped as the model"]
    for key in SHIP_DROPPED:
        ckpt.pop(key, None)
    if label:  # its own name in test.py's output names (srresnet_real next to the shipped srresnet)
        ckpt['label'] = label
    start = ckpt['args'].get('init_from')  # the shipped model it was fine-tuned from, as the repository names it
    if start and os.path.isabs(start) and os.path.dirname(os.path.dirname(start)) == REPO:
        ckpt['args']['init_from'] = os.path.relpath(start, REPO)
    ckpt['args'].pop('log_name', None)  # the run's TensorBoard folder, named by its start time: not the model's
    ckpt['args'].update(data_folder=data_folder, results_dir='results', runs_dir='runs', resume=None,
                        val_folder='data/Set5' if ckpt['args'].get('val_folder') else None,
                        checkpoint_path=os.path.join('results', f"checkpoint_{arch}.pth"))
    save_checkpoint(ckpt, dst)


def run_arch(arch, args, tests, work):
    """Make the data lists, train ``arch`` (timed), evaluate it, ship it to --out; returns its result row."""
    run, lists = RUNS[arch], os.path.join(work, arch + '_data')
    sh('create_data_lists.py', '--train-folders', *(os.path.join(args.data, n) for n in run['train']),
       '--min-size', run['min_size'], '--output-folder', lists)
    flags = list(run['command'])
    if args.amp and arch != 'srcnn':
        flags[flags.index('--amp') + 1] = args.amp
    flags += shlex.split(args.train_flags)
    command = flags + ['--data-folder', lists, '--results-dir', work, '--runs-dir', os.path.join(work, 'runs')]
    if run.get('val'):
        command += ['--val-folder', os.path.join(args.data, 'Set5')]
    t0 = time.perf_counter()
    train(command, t0)
    minutes = (time.perf_counter() - t0) / 60
    ckpt = os.path.join(work, f"checkpoint_{arch}.pth")
    scores = evaluate(ckpt, tests, work)
    psnr, ssim = scores['standard']['Set5']
    row = {'benchmark': 'cpu_quality', 'arch': arch, 'scale': run['scale'], 'set5_psnr': round(psnr, 3),
           'set5_ssim': round(ssim, 4), 'train_minutes': round(minutes, 1), 'target_psnr': run['target'],
           'max_minutes': run['minutes'], 'meets_target': psnr >= run['target'] and minutes <= run['minutes'],
           'scores': scores, 'command': 'python train_srresnet.py ' + ' '.join(flags),
           'date': time.strftime('%Y-%m-%d')}
    if load_checkpoint(ckpt).get('model_ema') is not None:  # what the EMA gave over the trained weights
        row['scores_raw_weights'] = evaluate(ckpt, tests, work, weights='raw')
    if args.out:
        ship(ckpt, os.path.join(args.out, run['out']), arch, run['data'])
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument('--data', default=SHARED, help='folder holding T91, BSD200, Set5, Set14, BSD100')
    parser.add_argument('--archs', nargs='*', default=['espcn', 'srcnn'], choices=list(RUNS))
    parser.add_argument('--amp', choices=('bf16', 'off'),
                        help="the precision of ESPCN's and SRResNet's training instead of the pinned bf16 (off: fp32, "
                             "for CPUs without native bf16)")
    parser.add_argument('--out', help='copy the trained checkpoints here (e.g. results)')
    parser.add_argument('--work', help='keep the data lists, checkpoints, logs and eval tables in this new folder '
                                       '(default: a temporary folder, removed at the end)')
    parser.add_argument('--train-flags', default='', metavar='FLAGS',
                        help='more train_srresnet.py flags, e.g. "--epochs 1 --patches-per-image 1" for a smoke run '
                             '(the numbers are then not the recipe\'s)')
    args = parser.parse_args()
    needed = {name for arch in args.archs for name in RUNS[arch]['train']} | {'Set5'}
    missing = [name for name in sorted(needed) if not os.path.isdir(os.path.join(args.data, name))]
    if missing:
        sys.exit(f"{', '.join(missing)} not found under {args.data}: pass --data")
    tests = [os.path.join(args.data, name) for name in TEST_SETS if os.path.isdir(os.path.join(args.data, name))]
    if args.work:
        os.makedirs(args.work)  # a new folder: an earlier run's files are never mixed in
    with (tempfile.TemporaryDirectory() if args.work is None else contextlib.nullcontext(args.work)) as work:
        rows = [run_arch(arch, args, tests, work) for arch in args.archs]
    for row in rows:
        print(json.dumps(row))
    print('; '.join(f"{r['arch']} x{r['scale']}: Set5 {r['set5_psnr']:.2f} dB / {r['set5_ssim']:.4f} in "
                    f"{r['train_minutes']} min (target {r['target_psnr']} dB in {r['max_minutes']} min: "
                    f"{'met' if r['meets_target'] else 'NOT met'})" for r in rows))


if __name__ == '__main__':
    main()
