"""Data pipeline throughput (patches/s per CPU core): the tutorial's per-patch PIL pipeline against the suite's.

    python benchmarks/bench_data.py                                  # BSD200 from ../shared/data, crop 96, x4
    python benchmarks/bench_data.py --folder data/DIV2K/DIV2K_train_HR --crop-size 192
    python benchmarks/bench_data.py --crop-size 256                  # Real-ESRGAN's 256-px HR patches

One thread, no DataLoader workers: what one core delivers. Each mode runs in its own fresh process, as a user
would run it (the suite's scripts call keep_freed_memory; the tutorial does not), and the modes alternate round by
round. The reference is written here as the tutorial's SRDataset + ImageTransforms do it: open and decode the
image file for every patch, random crop, PIL bicubic downscale, convert both to tensors (imagenet-norm LR, [-1, 1]
HR). The suite: PatchDataset (images decoded once into a uint8 RAM cache; also its streaming mode, decoding once
per visit for 4 crops), each batch fetched at once as the training loader does (__getitems__), uint8, LR made for
the whole batch by batch_to_device. The mode suite_cached_default_allocator shows what keep_freed_memory adds.
The mode suite_cached_realesrgan makes each LR patch by Real-ESRGAN's second-order degradation with its published
ranges (degradations.py, PatchDataset(degradation=...)) instead of the bicubic downscale. Prints one JSON line per
mode and a readable summary (a second line for the degradations).
"""
import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import datasets  # noqa: E402
import degradations  # noqa: E402
import training  # noqa: E402
import utils  # noqa: E402

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), 'shared',
                      'data')


def tutorial_patch(path, crop, scale, rng):
    """One patch exactly the tutorial's way (decode per patch)."""
    img = Image.open(path, mode='r').convert('RGB')
    left, top = rng.randint(0, img.width - crop), rng.randint(0, img.height - crop)
    hr = img.crop((left, top, left + crop, top + crop))
    lr = hr.resize((crop // scale, crop // scale), Image.Resampling.BICUBIC)
    return (utils.convert_image(lr, 'pil', 'imagenet-norm'), utils.convert_image(hr, 'pil', '[-1, 1]'))


def measure(step, seconds):
    """Patches/s of ``step`` (a callable returning how many patches it made): one warm-up call (first-use setup such
    as the resize weights is not throughput), then calls until ``seconds`` have passed."""
    step()
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        done += step()
    return done / (time.perf_counter() - t0)


def tutorial_step(paths, crop, scale, batch):
    """A batch of patches the tutorial's way: one decode per patch, in sequence over the image list."""
    rng, state = random.Random(0), {'i': 0}

    def step():
        for _ in range(batch):
            tutorial_patch(paths[state['i'] % len(paths)], crop, scale, rng)
            state['i'] += 1
        return batch
    return step


def suite_step(lists, crop, scale, batch, cache_bytes, crops_per_visit, degradation=None):
    """A batch the suite's way: PatchDataset crops (cached or streamed), collated as uint8, LR made batched (or
    each LR patch made by ``degradation``, a degradations preset name, in the dataset)."""
    settings = degradations.preset(degradation) if degradation else None
    ds = datasets.PatchDataset(lists, crop, scale, seed=0, patches_per_image=100, crops_per_visit=crops_per_visit,
                               cache_bytes=cache_bytes, degradation=settings, log=lambda *a: None)
    visits, state = batch // ds.crops_per_visit, {'j': 0}

    def step():
        j = state['j']
        hr = datasets.collate_patches(ds.__getitems__([(0, (j + k) % len(ds)) for k in range(visits)]))
        lr, hr = training.batch_to_device(hr, torch.device('cpu'), scale, 'pil')
        utils.convert_image(lr, '[0, 1]', 'imagenet-norm'), utils.convert_image(hr, '[0, 1]', '[-1, 1]')
        state['j'] = j + visits
        return hr.shape[0]
    return step


MODES = ('tutorial', 'suite_cached', 'suite_streaming_4_crops', 'suite_cached_default_allocator',
         'suite_cached_realesrgan')
DEGRADATION_MODES = {'suite_cached_realesrgan': 'realesrgan'}


def run_mode(mode, args):
    """In this (fresh) process: set up ``mode`` on --folder and print its patches/s on one thread."""
    torch.set_num_threads(1)
    if mode in ('suite_cached', 'suite_streaming_4_crops', *DEGRADATION_MODES):
        utils.keep_freed_memory()
    with tempfile.TemporaryDirectory() as lists:
        datasets.create_data_lists([args.folder], [], args.crop_size, lists, workers=1, log=lambda *a: None)
        if mode == 'tutorial':
            step = tutorial_step(datasets.read_data_list(lists, 'train'), args.crop_size, args.scale, args.batch_size)
        elif mode == 'suite_streaming_4_crops':
            step = suite_step(lists, args.crop_size, args.scale, args.batch_size, 0, 4)
        elif mode in DEGRADATION_MODES:
            step = suite_step(lists, args.crop_size, args.scale, args.batch_size, None, None, DEGRADATION_MODES[mode])
        else:
            step = suite_step(lists, args.crop_size, args.scale, args.batch_size, None, None)
        print(json.dumps({'mode': mode, 'rate': measure(step, args.seconds)}))


def spawn(mode, args):
    command = [sys.executable, os.path.abspath(__file__), '--mode', mode, '--folder', args.folder, '--crop-size',
               str(args.crop_size), '--scale', str(args.scale), '--seconds', str(args.seconds), '--batch-size',
               str(args.batch_size)]
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{mode} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])['rate']


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument('--folder', default=os.path.join(SHARED, 'BSD200'))
    parser.add_argument('--crop-size', type=int, default=96)
    parser.add_argument('--scale', type=int, default=4)
    parser.add_argument('--seconds', type=float, default=3., help='length of each measurement')
    parser.add_argument('--rounds', type=int, default=3, help='alternating rounds; the median rate counts')
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--mode', choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not os.path.isdir(args.folder):
        sys.exit(f"{args.folder} not found: pass --folder DIR with training images")
    if args.mode:
        return run_mode(args.mode, args)
    rates = {mode: [] for mode in MODES}
    for _ in range(args.rounds):  # alternating, so that a busy moment hits every mode alike
        for mode in MODES:
            rates[mode].append(spawn(mode, args))
    median = {mode: statistics.median(r) for mode, r in rates.items()}
    ref = median['tutorial']
    common = {'folder': os.path.basename(os.path.normpath(args.folder)), 'crop_size': args.crop_size,
              'scale': args.scale, 'threads': 1, 'date': time.strftime('%Y-%m-%d')}
    for mode in MODES:
        print(json.dumps({'benchmark': 'data_pipeline', 'mode': mode, 'patches_per_s_per_core': round(median[mode], 1),
                          'vs_tutorial': round(median[mode] / ref, 1), 'rounds': [round(r, 1) for r in rates[mode]],
                          **common}))
    cached, streaming, plain, realesrgan = (median[m] for m in MODES[1:])
    print(f"data pipeline, {common['folder']}, crop {args.crop_size}, x{args.scale}, one core: tutorial "
          f"{ref:.0f} patches/s; suite cached {cached:.0f} ({cached / ref:.1f}x); suite streaming, 4 crops per "
          f"decode {streaming:.0f} ({streaming / ref:.1f}x); suite cached without keep_freed_memory {plain:.0f} "
          f"({plain / ref:.1f}x)")
    print(f"real-world degradations, one core: Real-ESRGAN's published ranges {realesrgan:.1f} patches/s (bicubic, "
          f"suite cached: {cached:.0f})")


if __name__ == '__main__':
    main()
