"""Inference time and peak memory: the tutorial's test.py approach against the suite's Upscaler (CPU or CUDA).

    python benchmarks/bench_inference.py                         # 512 px: all cases; 2048 px: bounded memory
    python benchmarks/bench_inference.py --device cuda --sizes 512 2048 --cases reference suite-fast suite-bf16
    python benchmarks/bench_inference.py --sizes 512 --threads 1
    python benchmarks/bench_inference.py --sizes 2048 --cases suite-budget cli   # + test.py end to end
    python benchmarks/bench_inference.py --json results/bench_inference.json
    python benchmarks/bench_inference.py --accuracy-image ../shared/data/Set14/baboon.png --sizes   # PSNRs only

Model: a full-size SRResNet x4 (16 blocks, 64 channels) with random weights (seed 0); input: a synthetic
SIZE x SIZE RGB image. Every case runs in a fresh Python process, so its peak RSS (the kernel's ru_maxrss of that
process from wait4, which includes the ~0.7 GB that importing torch maps) is its own. Each process first warms up on a
64 x 64 image, then times an upscale from a PIL image to a PIL image (model time plus conversions, no file I/O):
the best of --repeat runs for sizes up to 1024 px, a single run above. With --device cuda the model runs on the GPU
(input and output stay PIL images on the host, as test.py has them) and each case also reports its peak GPU memory
(torch.cuda.max_memory_allocated).

Cases:
  reference      the tutorial: convert_image(img, 'pil', 'imagenet-norm'), fp32, NCHW, the whole image at once,
                 eager, convert_image(sr, '[-1, 1]', 'pil'). Run for sizes <= --reference-max-size only: at
                 2048 px its activations need about 40 GB (see 'estimate_gb' in the 2048 line).
  suite-default  inference.Upscaler with its defaults (whole image, fp32), upscale_uint8
  suite-fast     fuse (BatchNorm folded, last conv on the sub-pixel grid) + channels_last, whole image, fp32
  suite-tiled    suite-fast in --tile px windows (overlap 16)
  suite-bf16     suite-tiled in bf16 autocast
  suite-budget   suite-fast with --max-memory (tiles chosen automatically): the bounded-memory case
  cli            (only when named in --cases) python test.py --fuse --channels-last on a PNG of that size with
                 a checkpoint of this model, all outputs written (bicubic, SR and comparison PNGs); its time is
                 the one test.py prints, its peak RSS the whole process's

Prints one readable line per case, then all results as JSON. With --accuracy-image, first prints how far the
suite's options move the output of the same model on that (real) image: PSNR of bf16, fuse + channels_last and
tiling against the default fp32 whole-image result, in dB over RGB in [0, 1] (float, and after rounding to 8 bits).
"""
import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CASES = {512: ['reference', 'suite-default', 'suite-fast', 'suite-tiled', 'suite-bf16'],
                 2048: ['suite-budget']}


def synthetic_image(size):
    """A size x size RGB PIL image with smooth colours and fine texture (content does not change the speed)."""
    import numpy as np
    from PIL import Image
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    rng = np.random.default_rng(0)
    img = np.stack([0.5 + 0.4 * np.sin(9 * xx + 5 * yy + c) * np.cos(7 * yy - 3 * xx - c) for c in range(3)], -1)
    img = img + rng.normal(0, 0.03, img.shape).astype(np.float32)
    return Image.fromarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8))


def build_model():
    import models
    import torch
    torch.manual_seed(0)
    return models.build_model('srresnet', models.model_config('srresnet', 4)).eval()


def reference_pipeline(model, device):
    """The tutorial's test.py steps (without saving): PIL -> imagenet-norm -> model -> PIL, fp32, whole image."""
    import torch
    from utils import convert_image

    def run(img):
        lr_img = convert_image(img, source='pil', target='imagenet-norm').to(device)
        lr_img.unsqueeze_(0)
        with torch.no_grad():
            sr_img = model(lr_img).squeeze(0).cpu().detach()  # (3, 4h, 4w), in [-1, 1]
        return convert_image(sr_img, source='[-1, 1]', target='pil')
    return run


def suite_pipeline(model, device, **options):
    """PIL -> Upscaler.upscale_uint8 -> PIL, as test.py does."""
    import numpy as np
    from PIL import Image
    import models
    from inference import Upscaler
    from utils import pil_to_tensor
    upscaler = Upscaler(model, models.ARCHS['srresnet'], 4, device, **options)

    def run(img):
        lr = pil_to_tensor(img).unsqueeze(0).float().div_(255.)
        sr = upscaler.upscale_uint8(lr)[0]
        return Image.fromarray(np.ascontiguousarray(sr.permute(1, 2, 0).numpy()))
    run.upscaler = upscaler
    return run


def case_options(case, args):
    return {'suite-default': {},
            'suite-fast': dict(fuse=True, channels_last=True),
            'suite-tiled': dict(tile=args.tile, tile_overlap=16, fuse=True, channels_last=True),
            'suite-bf16': dict(tile=args.tile, tile_overlap=16, fuse=True, channels_last=True, precision='bf16'),
            'suite-budget': dict(max_memory=args.max_memory, tile_overlap=16, fuse=True, channels_last=True)}[case]


def rss_mib(field='VmRSS'):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1]) / 1024.
    return float('nan')


def worker(case, size, args):
    """Run one case in this (fresh) process; print one JSON line."""
    sys.path.insert(0, REPO)
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = build_model().to(device)
    run = (reference_pipeline(model, device) if case == 'reference'
           else suite_pipeline(model, device, **case_options(case, args)))
    run(synthetic_image(64))  # warm-up: library initialisation, first-call costs
    img = synthetic_image(size)
    result = {'case': case, 'size': size, 'device': str(device), 'threads': torch.get_num_threads(),
              'rss_before_mib': round(rss_mib())}
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    if hasattr(run, 'upscaler'):
        up = run.upscaler
        result['tile'] = up.plan_tile(1, size, size)
        if result['tile']:  # the window side actually used (fit_tile shrinks it to the fewest windows)
            from inference import fit_tile
            result['window'] = fit_tile(size, result['tile'], up.tile_overlap)
        result['estimate_gb'] = round(up.memory_per_pixel() * size * size / 1e9, 2)
    runs = []
    for _ in range(args.repeat if size <= 1024 else 1):
        usage0, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        out = run(img)
        seconds = time.perf_counter() - start
        usage1 = resource.getrusage(resource.RUSAGE_SELF)
        assert out.size == (4 * size, 4 * size)
        del out
        runs.append((seconds, usage1.ru_utime + usage1.ru_stime - usage0.ru_utime - usage0.ru_stime))
    seconds, cpu = min(runs)
    result.update(seconds=round(seconds, 2), us_per_px=round(seconds / size ** 2 * 1e6, 1),
                  cpu_seconds=round(cpu, 2), runs=len(runs))
    if device.type == 'cuda':
        result['peak_gpu_memory_mib'] = round(torch.cuda.max_memory_allocated(device) / 2 ** 20)
        result['gpu'] = torch.cuda.get_device_name(device)
    print(json.dumps(result), flush=True)


def run_measured(command, env=None):
    """Run a command in the repository root; (stdout, wall seconds, peak RSS in MiB of that very process)."""
    with tempfile.TemporaryFile('w+') as out, tempfile.TemporaryFile('w+') as err:
        start = time.perf_counter()
        proc = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=err, text=True, env=env)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (ru_maxrss in KiB on Linux)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, command))} failed:\n{stderr[-2000:]}")
    return stdout, wall, round(usage.ru_maxrss / 1024.)


def measure_case(case, size, args):
    """A case in a fresh process: its JSON result plus the peak RSS of that process."""
    command = [sys.executable, os.path.abspath(__file__), '--worker', case, '--sizes', str(size), '--device',
               args.device, '--tile', str(args.tile), '--max-memory', args.max_memory, '--repeat', str(args.repeat)]
    if args.threads:
        command += ['--threads', str(args.threads)]
    out, _, peak = run_measured(command)
    result = json.loads(out.strip().splitlines()[-1])
    result['peak_rss_mib'] = peak
    return result


def measure_cli(size, args, tmp):
    """test.py end to end on a size x size PNG with a checkpoint of the benchmark model."""
    sys.path.insert(0, REPO)
    import checkpoints
    import models
    model = build_model()
    ckpt = os.path.join(tmp, 'bench_srresnet.pth')
    checkpoints.save_checkpoint({'format_version': 1, 'arch': 'srresnet',
                                 'model_config': models.model_config('srresnet', 4), 'epoch': 0,
                                 'model': model.state_dict()}, ckpt)
    image = os.path.join(tmp, f"bench_{size}.png")
    synthetic_image(size).save(image)
    command = [sys.executable, 'test.py', '--checkpoint', ckpt, '--image', image, '--output-dir', tmp,
               '--device', args.device, '--channels-last', '--fuse']
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads)) if args.threads else None
    out, wall, peak = run_measured(command, env)
    model_seconds = float(out.strip().splitlines()[0].rsplit(' in ', 1)[1].split()[0])
    return {'case': 'cli', 'size': size, 'seconds': round(model_seconds, 2),
            'us_per_px': round(model_seconds / size ** 2 * 1e6, 1), 'wall_with_io_seconds': round(wall, 1),
            'peak_rss_mib': peak, 'command': f"python test.py --image IMAGE --checkpoint CKPT --device {args.device} "
                                              '--channels-last --fuse (default --max-memory auto)'}


def accuracy(path, args):
    """PSNR (dB, RGB in [0, 1]) of each option's output against the default fp32 whole-image output."""
    sys.path.insert(0, REPO)
    import torch
    import models
    from inference import Upscaler
    from utils import load_image, pil_to_tensor
    if args.threads:
        torch.set_num_threads(args.threads)
    model = build_model()
    lr = pil_to_tensor(load_image(path)).unsqueeze(0).float() / 255.
    ref = Upscaler(model, models.ARCHS['srresnet'], 4, 'cpu').upscale(lr)[0].clamp(0, 1)

    def psnr(a, b):
        mse = ((a.double() - b.double()) ** 2).mean().item()
        return round(10 * math.log10(1. / mse), 2) if mse else math.inf

    rows = {'bf16': dict(precision='bf16'), 'fuse+channels_last': dict(fuse=True, channels_last=True),
            'tile 64, overlap 16': dict(tile=64, tile_overlap=16),
            'bf16+fuse+channels_last+tile 64': dict(precision='bf16', fuse=True, channels_last=True, tile=64)}
    out = {'image': os.path.basename(path), 'lr_size': list(lr.shape[-2:]),
           'reference_output_std': round(ref.std().item(), 4)}  # random weights: a low-contrast output
    for name, options in rows.items():
        sr = Upscaler(model, models.ARCHS['srresnet'], 4, 'cpu', **options).upscale(lr)[0].clamp(0, 1)
        out[name] = {'psnr_float': psnr(sr, ref),
                     'psnr_uint8': psnr(torch.floor(sr * 255 + 0.5) / 255, torch.floor(ref * 255 + 0.5) / 255)}
    return out


def describe(r):
    peak = f"{r['peak_rss_mib']} MiB" if r.get('peak_rss_mib') else 'n/a'
    extra = f", tile {r['tile']} (windows of {r['window']} px)" if r.get('tile') else ''
    extra += f", cpu {r['cpu_seconds']} s" if 'cpu_seconds' in r else ''
    extra += f", wall with file I/O {r['wall_with_io_seconds']} s" if 'wall_with_io_seconds' in r else ''
    extra += f", peak GPU memory {r['peak_gpu_memory_mib']} MiB" if 'peak_gpu_memory_mib' in r else ''
    return (f"{r['size']:>5} px  {r['case']:<14} {r['seconds']:>8.1f} s  {r['us_per_px']:>7.1f} us/px  "
            f"peak RSS {peak}{extra}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument('--sizes', type=int, nargs='*', default=[512, 2048], help='input sides (px)')
    parser.add_argument('--device', default='cpu', help='cpu or cuda (the model\'s device)')
    parser.add_argument('--cases', nargs='+', help='cases to run for every size (default: see above)')
    parser.add_argument('--reference-max-size', type=int, default=512, help='largest size the reference runs at')
    parser.add_argument('--tile', type=int, default=256, help='tile for suite-tiled and suite-bf16')
    parser.add_argument('--max-memory', default='1GB', help='budget for suite-budget')
    parser.add_argument('--threads', type=int, help='torch threads (default: torch\'s own choice)')
    parser.add_argument('--repeat', type=int, default=2, help='timed runs per case for sizes <= 1024 (best kept)')
    parser.add_argument('--json', help='also write the results to this file')
    parser.add_argument('--accuracy-image', help='also compare the options\' outputs on this image (PSNR)')
    parser.add_argument('--worker', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.sizes[0], args)
    results = []
    if args.accuracy_image:
        results.append({'case': 'accuracy', **accuracy(args.accuracy_image, args)})
        print(json.dumps(results[-1]), flush=True)
    for size in args.sizes:
        cases = args.cases or DEFAULT_CASES.get(size, ['reference', 'suite-default', 'suite-budget'])
        cases = [c for c in cases if c != 'reference' or size <= args.reference_max_size]
        for case in cases:
            if case == 'cli':
                with tempfile.TemporaryDirectory() as tmp:
                    results.append(measure_cli(size, args, tmp))
            else:
                results.append(measure_case(case, size, args))
            print(describe(results[-1]), flush=True)
    print(json.dumps(results, indent=1))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(results, f, indent=1)


if __name__ == '__main__':
    main()
