"""Training-step throughput of SRResNet x4: the suite's defaults against the tutorial's fp32 NCHW eager step.

    python benchmarks/bench_train.py                      # CPU (or the default device), batch 16, 96-px crops
    python benchmarks/bench_train.py --amp bf16           # the suite side in bf16 (what --amp auto picks on AMX CPUs)
    python benchmarks/bench_train.py --device cuda --batch-size 64 --amp bf16 --data ../shared/data/T91
    python benchmarks/bench_train.py --no-fast-prelu               # one of the suite's rewrites off: what it gives

Each side runs in its own fresh process, as a user would run it (the suite's scripts tune the process's memory
allocator; the tutorial does not), on the same random batches; the processes alternate round by round so that
machine load hits both alike, and the best round of each counts. The reference is written here as the tutorial
wrote it (imagenet-norm LR in, [-1, 1] out, MSE, Adam, fp32, NCHW, eager). The suite side uses the suite's own
pieces, as train_srresnet.py does without --faithful: keep_freed_memory, training.resolve_speed (--amp auto,
channels_last), the training rewrites, utils.autocast, inference.model_input / model_target.

Also prints the convolution floor of the suite's step: every convolution the step runs (forward and backward, as
aten dispatches them, in the step's own precision and memory format, captured with a dispatch mode), each replayed
alone with the same shapes and timed (best of --floor-repeat), summed. The step does those convolutions and more, so
it cannot take less than that floor; tutorial time / floor is the largest speed-up these convolutions allow, and
suite time / floor says how much the rest of the step (BatchNorm, PReLU, the loss, Adam, memory traffic) costs.

With --data FOLDER the suite side also trains from real images through the suite's own data path (PatchDataset
from the RAM cache, training.make_train_loader, training.batch_to_device, LR made on the device): the time each step
waits for its batch and the step time against the same step on pre-loaded tensors (the data pipeline is not the
bottleneck when the two are within a few percent). On CUDA the suite side also reports peak GPU memory and the mean
GPU utilisation over the timed steps (NVML, when available).
Prints one JSON line and one readable line.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import datasets  # noqa: E402
import inference  # noqa: E402
import models  # noqa: E402
import training  # noqa: E402
import utils  # noqa: E402

CONV_OPS = (torch.ops.aten.convolution.default, torch.ops.aten.convolution_backward.default)


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


def suite_model(args, device):
    """SRResNet x4 (seed 0) with the suite's speed settings for this device; (model, speed)."""
    torch.manual_seed(0)
    speed = training.resolve_speed(device, amp=args.amp, compile=args.compile,
                                   tail_before_shuffle=args.tail_before_shuffle, fast_prelu=args.fast_prelu,
                                   fused_adam=args.fused_adam, fast_tanh=args.fast_tanh)
    return training.apply_speed(models.SRResNet().to(device), speed), speed


def build_side(side, args, device):
    """The step callable of one side, with its own model and optimizer (seed 0), and the suite's settings."""
    lr01, hr01 = batches(args, device)
    if side == 'tutorial':
        torch.manual_seed(0)
        model = models.SRResNet().to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        lr_norm = utils.convert_image(lr01, '[0, 1]', 'imagenet-norm')
        hr_pm1 = utils.convert_image(hr01, '[0, 1]', '[-1, 1]')
        return lambda: tutorial_step(model, optimizer, lr_norm, hr_pm1), {}
    utils.keep_freed_memory()
    model, speed = suite_model(args, device)
    optimizer = training.make_adam(model.parameters(), 1e-4, speed)
    net = torch.compile(model) if args.compile else model
    settings = {'amp': speed.amp, 'channels_last': speed.channels_last, 'compile': args.compile,
                'tail_before_shuffle': model.tail_before_shuffle,
                'fast_prelu': speed.fast_prelu, 'fused_adam': speed.fused_adam, 'fast_tanh': speed.fast_tanh,
                'allocator': 'keep_freed_memory'}
    return lambda: suite_step(net, optimizer, lr01, hr01, speed, device), settings


class GPUUtilisation:
    """Mean GPU utilisation (percent, NVML via torch.cuda.utilization) sampled every 20 ms while active; None
    where NVML is not available."""

    def __init__(self, device):
        self.device, self.samples, self._stop = device, [], threading.Event()
        try:
            torch.cuda.utilization(device)
            self.available = True
        except Exception:  # no pynvml / NVML: utilisation unknown, everything else still measured
            self.available = False

    def __enter__(self):
        if self.available:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.02):
            self.samples.append(torch.cuda.utilization(self.device))

    def __exit__(self, *exc):
        self._stop.set()
        if self.available:
            self._thread.join()

    def mean(self):
        return round(sum(self.samples) / len(self.samples), 1) if self.samples else None


def timed(step, steps, device):
    """Seconds per step over ``steps`` calls of step(), with the device synchronised at both ends."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - t0) / steps


def loader_step_times(args, device):
    """The suite side trained from --data through the suite's data path: (s per step, s per step waiting for data).

    The batch is fetched, moved and downscaled on the device as train_srresnet.py does, so the wait covers the
    loader, the copy and the LR making."""
    model, speed = suite_model(args, device)
    optimizer = training.make_adam(model.parameters(), 1e-4, speed)
    with tempfile.TemporaryDirectory() as lists:
        datasets.create_data_lists([args.data], [], args.crop_size, lists, workers=2, log=lambda *a: None)
        n_images = len(datasets.read_data_list(lists, 'train'))
        patches = (args.warmup + args.steps + 1) * args.batch_size  # enough for every step of this one epoch
        settings = utils.Settings(data_folder=lists, crop_size=args.crop_size, scale=4, faithful=False,
                                  downsample='pil', lr_from='patch', seed=0, patches_per_image=-(-patches // n_images),
                                  crops_per_visit=None, hflip=False, vflip=False, rot90=False, cache_gb=None,
                                  max_bad_fraction=0.05, workers=args.workers, degradation='bicubic',
                                  degradation_opt=None, paired=False)
        dataset, collate = training.build_train_dataset(settings, log=lambda *a: None)
    dist = training.Dist(device=device)
    loader, sampler = training.make_train_loader(dataset, args.batch_size, dist, args.workers, 0,
                                                 pin_memory=device.type == 'cuda', collate_fn=collate)
    sampler.set_epoch(1)
    batches_iter = iter(loader)
    waits = []

    def step():
        t0 = time.perf_counter()
        lr01, hr01 = training.batch_to_device(next(batches_iter), device, 4, 'pil')
        sync(device)
        waits.append(time.perf_counter() - t0)
        suite_step(model, optimizer, lr01, hr01, speed, device)

    for _ in range(args.warmup):
        step()
    waits.clear()
    seconds = timed(step, args.steps, device)
    return seconds, sum(waits) / len(waits)


def run_side(side, args):
    """In this (fresh) process: warm up, time --steps steps, print one JSON line."""
    device = utils.pick_device(args.device)
    step, settings = build_side(side, args, device)
    for _ in range(args.warmup):  # first steps: allocator growth, kernel selection, compilation
        step()
    result = {'side': side, 'settings': settings, 'threads': torch.get_num_threads(), 'device': str(device)}
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
        with GPUUtilisation(device) as util:
            result['s_per_step'] = timed(step, args.steps, device)
        result['peak_gpu_memory_gib'] = round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2)
        result['gpu_utilisation_percent'] = util.mean()
        result['gpu'] = torch.cuda.get_device_name(device)
    else:
        result['s_per_step'] = timed(step, args.steps, device)
    if side == 'suite' and args.data:
        result['loader_s_per_step'], result['data_wait_s_per_step'] = loader_step_times(args, device)
    print(json.dumps(result))


class ConvRecorder(TorchDispatchMode):
    """Records every convolution aten runs (forward and backward) with its arguments' shapes, strides and dtypes."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in CONV_OPS:
            self.calls.append((func, [_describe(a) for a in args]))
        return func(*args, **(kwargs or {}))


def _describe(arg):
    if isinstance(arg, torch.Tensor):
        return ('tensor', tuple(arg.shape), tuple(arg.stride()), arg.dtype, arg.device)
    return ('value', arg)


def _materialise(desc):
    if desc[0] == 'tensor':
        _, shape, stride, dtype, device = desc
        return torch.empty_strided(shape, stride, dtype=dtype, device=device).normal_()
    return desc[1]


def conv_floor(args, device, repeat):
    """(seconds, convolutions) of the suite step's convolutions, each replayed alone and timed (best of repeat)."""
    model, speed = suite_model(args, device)
    optimizer = training.make_adam(model.parameters(), 1e-4, speed)
    lr01, hr01 = batches(args, device)
    suite_step(model, optimizer, lr01, hr01, speed, device)  # warm-up: the recorded step is a steady one
    with ConvRecorder() as recorder:
        suite_step(model, optimizer, lr01, hr01, speed, device)
    total = 0.
    with torch.no_grad():
        for func, described in recorder.calls:
            inputs = [_materialise(d) for d in described]
            func(*inputs)  # first call: kernel selection
            total += min(timed(lambda: func(*inputs), 1, device) for _ in range(repeat))
    return total, len(recorder.calls)


def step_gflop(args, device):
    """GFLOP of one tutorial training step (convolutions and matrix products, forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode
    lr01, hr01 = batches(args, device)
    model = models.SRResNet().to(device)
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.mse_loss(model(lr01), hr01).backward()
    return counter.get_total_flops() / 1e9


def spawn(side, args):
    command = [sys.executable, os.path.abspath(__file__), '--side', side, '--device', args.device,
               '--batch-size', str(args.batch_size), '--crop-size', str(args.crop_size), '--steps', str(args.steps),
               '--warmup', str(args.warmup), '--amp', args.amp] + (['--compile'] if args.compile else [])
    if args.data:
        command += ['--data', args.data] + (['--workers', str(args.workers)] if args.workers is not None else [])
    for flag in ('tail_before_shuffle', 'fast_prelu', 'fused_adam', 'fast_tanh'):
        if getattr(args, flag) is not None:
            command.append(('--' if getattr(args, flag) else '--no-') + flag.replace('_', '-'))
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{side} side failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def summary(runs, args, device):
    """The JSON result of all rounds."""
    ref_s, suite_s = (min(r['s_per_step'] for r in runs[side]) for side in runs)
    best_suite = min(runs['suite'], key=lambda r: r['s_per_step'])
    floor_s, n_convs = conv_floor(args, device, args.floor_repeat)
    gflop = step_gflop(args, device)
    n, c = args.batch_size, args.crop_size
    result = {
        'benchmark': 'train_step_srresnet_x4', 'device': best_suite['device'], 'torch': torch.__version__,
        'threads': best_suite['threads'], 'batch_size': n, 'crop_size': c,
        'suite_settings': best_suite['settings'],
        'reference_s_per_step': round(ref_s, 4), 'suite_s_per_step': round(suite_s, 4),
        'reference_patches_per_s': round(n / ref_s, 1), 'suite_patches_per_s': round(n / suite_s, 1),
        'speedup': round(ref_s / suite_s, 2),
        'rounds': {side: [round(r['s_per_step'], 4) for r in runs[side]] for side in runs},
        'gflop_per_step': round(gflop, 3), 'suite_gflop_per_s': round(gflop / suite_s, 1),
        'conv_floor_s_per_step': round(floor_s, 4), 'conv_floor_ops': n_convs,
        'conv_floor_speedup_ceiling': round(ref_s / floor_s, 2),
        'date': time.strftime('%Y-%m-%d'),
    }
    for key in ('peak_gpu_memory_gib', 'gpu_utilisation_percent', 'gpu'):
        if key in best_suite:
            result[key] = best_suite[key]
    if args.data:
        loader_s = min(r['loader_s_per_step'] for r in runs['suite'])
        result.update(loader_s_per_step=round(loader_s, 4),
                      data_wait_s_per_step=round(min(r['data_wait_s_per_step'] for r in runs['suite']), 4),
                      loader_vs_preloaded=round(loader_s / suite_s, 3))
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
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
    parser.add_argument('--fused-adam', action=argparse.BooleanOptionalAction,
                        help="the suite side's flag of that name (default: the training scripts' default, on)")
    parser.add_argument('--fast-tanh', action=argparse.BooleanOptionalAction,
                        help="the suite side's flag of that name (default: the training scripts' default, on)")
    parser.add_argument('--data', help='image folder: also time the suite side fed by its real data loader')
    parser.add_argument('--workers', type=int, help='loader workers with --data (default: the training default)')
    parser.add_argument('--floor-repeat', type=int, default=3, help='timed replays of each convolution (best kept)')
    parser.add_argument('--side', choices=('tutorial', 'suite'), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        return run_side(args.side, args)
    runs = {'tutorial': [], 'suite': []}
    for _ in range(args.rounds):
        for side in runs:
            runs[side].append(spawn(side, args))
    device = utils.pick_device(args.device)
    result = summary(runs, args, device)
    print(json.dumps(result))
    s, ref_s, suite_s, floor_s = (result['suite_settings'], result['reference_s_per_step'],
                                  result['suite_s_per_step'], result['conv_floor_s_per_step'])
    line = (f"train step SRResNet x4, batch {result['batch_size']}, {result['crop_size']}px, {result['device']}: "
            f"tutorial fp32 NCHW {ref_s:.3f} s/step, suite (amp {s['amp']}, channels_last {s['channels_last']}, "
            f"compile {s['compile']}) {suite_s:.3f} s/step: {ref_s / suite_s:.2f}x; its {result['conv_floor_ops']} "
            f"convolutions alone take {floor_s:.3f} s (ceiling {ref_s / floor_s:.2f}x)")
    if args.data:
        line += (f"; from the loader {result['loader_s_per_step']:.3f} s/step ({result['loader_vs_preloaded']:.3f}x "
                 f"pre-loaded, {result['data_wait_s_per_step'] * 1000:.1f} ms waiting for data)")
    if 'peak_gpu_memory_gib' in result:
        line += f"; peak GPU memory {result['peak_gpu_memory_gib']} GiB, GPU busy {result['gpu_utilisation_percent']}%"
    print(line)


if __name__ == '__main__':
    main()
