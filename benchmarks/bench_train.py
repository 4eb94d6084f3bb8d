"""Training-step throughput of SRResNet x4: the suite's defaults against the tutorial's fp32 NCHW eager step.

    python benchmarks/bench_train.py                      # CPU (or the default device), batch 16, 96-px crops
    python benchmarks/bench_train.py --device cuda --batch-size 64 --compile
    python benchmarks/bench_train.py --no-fast-prelu               # one of the suite's rewrites off: what it gives

Each side runs in its own fresh process, as a user would run it (the suite's scripts tune the process's memory
allocator; the tutorial does not), on the same random batches; the processes alternate round by round so that
machine load hits both alike, and the best round of each counts. The reference is written here as the tutorial
wrote it (imagenet-norm LR in, [-1, 1] out, MSE, Adam, fp32, NCHW, eager). The suite side uses the suite's own
pieces, as train_srresnet.py does without --faithful: keep_freed_memory, resolve_speed_args (--amp auto,
channels_last), the training rewrites, utils.autocast, inference.model_input / model_target.

Also prints the fp32 ceiling: the step's floating-point operations (torch's FlopCounterMode: convolutions and
matrix products, forward and backward) at the rate of a large fp32 matrix product on this device, i.e. the step
time if every convolution ran as fast as the best-case GEMM and everything else took no time. No fp32 direct
convolution beats that ceiling; only lower precision (native bf16 or fp16) or fewer multiplications (Winograd
convolutions, which the CPU backend does not use for these layers) go past it.
Prints one JSON line and one readable line.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import inference  # noqa: E402
import models  # noqa: E402
import training  # noqa: E402
import utils  # noqa: E402


def tutorial_step(model, optimizer, lr_imgs, hr_imgs):
    """The tutorial's training step, verbatim in spirit: fp32 NCHW eager."""
    sr_imgs = model(lr_imgs)
    loss = torch.nn.functional.mse_loss(sr_imgs, hr_imgs)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss


def suite_step(model, optimizer, lr01, hr01, speed, device):
    """The suite's step (as train_srresnet.train_one_epoch does it)."""
    spec = models.ARCHS['srresnet']
    x, target = inference.model_input(spec, lr01, 4), inference.model_target(spec, hr01)
    if speed.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with utils.autocast(device, speed.precision):
        sr = model(x)
    loss = torch.nn.functional.mse_loss(sr.float(), target)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss


def batches(args, device):
    torch.manual_seed(0)
    n, c = args.batch_size, args.crop_size
    return torch.rand(n, 3, c // 4, c // 4, device=device), torch.rand(n, 3, c, c, device=device)


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


def build_side(side, args, device):
    """The step callable of one side, with its own model and optimizer (seed 0), and the suite's settings."""
    lr01, hr01 = batches(args, device)
    torch.manual_seed(0)
    model = models.SRResNet().to(device)
    if side == 'tutorial':
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        lr_norm = utils.convert_image(lr01, '[0, 1]', 'imagenet-norm')
        hr_pm1 = utils.convert_image(hr01, '[0, 1]', '[-1, 1]')
        return lambda: tutorial_step(model, optimizer, lr_norm, hr_pm1), {}
    utils.keep_freed_memory()
    speed = training.resolve_speed(device, amp=args.amp, compile=args.compile,
                                   tail_before_shuffle=args.tail_before_shuffle, fast_prelu=args.fast_prelu)
    model = training.apply_speed(model, speed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    net = torch.compile(model) if args.compile else model
    settings = {'amp': speed.amp, 'channels_last': speed.channels_last, 'compile': args.compile,
                'tail_before_shuffle': model.tail_before_shuffle,
                'fast_prelu': speed.fast_prelu, 'allocator': 'keep_freed_memory'}
    return lambda: suite_step(net, optimizer, lr01, hr01, speed, device), settings


def run_side(side, args):
    """In this (fresh) process: warm up, time --steps steps, print one JSON line."""
    device = utils.pick_device(args.device)
    step, settings = build_side(side, args, device)
    for _ in range(args.warmup):  # first steps: allocator growth, kernel selection, compilation
        step()
    sync(device)
    t0 = utils.timer()
    for _ in range(args.steps):
        step()
    sync(device)
    print(json.dumps({'side': side, 's_per_step': (utils.timer() - t0) / args.steps, 'settings': settings,
                      'threads': torch.get_num_threads(), 'device': str(device)}))


def fp32_ceiling(args, device):
    """(GFLOP per training step, fp32 GEMM GFLOP/s on this device): the best case any fp32 implementation meets."""
    from torch.utils.flop_counter import FlopCounterMode
    lr01, hr01 = batches(args, device)
    model = models.SRResNet().to(device)
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.mse_loss(model(lr01), hr01).backward()
    a, b = torch.randn(2048, 2048, device=device), torch.randn(2048, 2048, device=device)
    a @ b
    best = float('inf')
    for _ in range(5):  # the best of 5 trials: the machine's rate, not its load
        sync(device)
        t0 = utils.timer()
        for _ in range(4):
            a @ b
        sync(device)
        best = min(best, (utils.timer() - t0) / 4)
    return counter.get_total_flops() / 1e9, 2 * 2048 ** 3 / best / 1e9


def spawn(side, args):
    command = [sys.executable, os.path.abspath(__file__), '--side', side, '--device', args.device,
               '--batch-size', str(args.batch_size), '--crop-size', str(args.crop_size), '--steps', str(args.steps),
               '--warmup', str(args.warmup), '--amp', args.amp] + (['--compile'] if args.compile else [])
    for flag in ('tail_before_shuffle', 'fast_prelu'):
        if getattr(args, flag) is not None:
            command.append(('--' if getattr(args, flag) else '--no-') + flag.replace('_', '-'))
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{side} side failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='auto')
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--crop-size', type=int, default=96)
    parser.add_argument('--steps', type=int, default=5, help='timed steps per round')
    parser.add_argument('--warmup', type=int, default=2, help='untimed steps at the start of each process')
    parser.add_argument('--rounds', type=int, default=3, help='alternating rounds; the best round counts')
    parser.add_argument('--amp', default='auto', choices=('auto', 'off', 'bf16', 'fp16'))
    parser.add_argument('--compile', action='store_true')
    parser.add_argument('--tail-before-shuffle', action=argparse.BooleanOptionalAction,
                        help="the suite side's flag of that name (default: the training scripts' default, on)")
    parser.add_argument('--fast-prelu', action=argparse.BooleanOptionalAction,
                        help="the suite side's flag of that name (default: the training scripts' default, on)")
    parser.add_argument('--side', choices=('tutorial', 'suite'), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        return run_side(args.side, args)
    runs = {'tutorial': [], 'suite': []}
    for _ in range(args.rounds):
        for side in runs:
            runs[side].append(spawn(side, args))
    ref_s, suite_s = (min(r['s_per_step'] for r in runs[side]) for side in runs)
    device = utils.pick_device(args.device)
    gflop, gemm = fp32_ceiling(args, device)
    floor_s = gflop / gemm
    n, c = args.batch_size, args.crop_size
    result = {
        'benchmark': 'train_step_srresnet_x4', 'device': runs['suite'][0]['device'], 'torch': torch.__version__,
        'threads': runs['suite'][0]['threads'], 'batch_size': n, 'crop_size': c,
        'suite_settings': runs['suite'][0]['settings'],
        'reference_s_per_step': round(ref_s, 4), 'suite_s_per_step': round(suite_s, 4),
        'reference_patches_per_s': round(n / ref_s, 1), 'suite_patches_per_s': round(n / suite_s, 1),
        'speedup': round(ref_s / suite_s, 2),
        'rounds': {side: [round(r['s_per_step'], 4) for r in runs[side]] for side in runs},
        'gflop_per_step': round(gflop, 3), 'fp32_gemm_gflop_per_s': round(gemm, 1),
        'fp32_floor_s_per_step': round(floor_s, 4), 'fp32_speedup_ceiling': round(ref_s / floor_s, 2),
        'date': time.strftime('%Y-%m-%d'),
    }
    print(json.dumps(result))
    s = result['suite_settings']
    print(f"train step SRResNet x4, batch {n}, {c}px, {result['device']}: tutorial fp32 NCHW {ref_s:.3f} s/step, "
          f"suite (amp {s['amp']}, channels_last {s['channels_last']}, compile {s['compile']}) {suite_s:.3f} s/step: "
          f"{ref_s / suite_s:.2f}x; fp32 ceiling: {gflop:.0f} GFLOP at the {gemm:.0f} GFLOP/s of a large GEMM = "
          f"{floor_s:.3f} s/step, {ref_s / floor_s:.2f}x")


if __name__ == '__main__':
    main()
