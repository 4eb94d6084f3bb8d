"""What bf16 inference does to test.py's output and to eval.py's PSNR, next to fp32, on real images.

    python benchmarks/bench_precision.py                          # Set5 + Set14 from ../shared/data, shipped models
    python benchmarks/bench_precision.py --folders my/test/set --device cuda

For each model (the shipped ESPCN x3 and SRCNN x3, and a full-size SRResNet x4 with the tutorial's random
initialisation, seed 0: no trained full-size SRResNet ships) and each image, the image goes through
inference.Upscaler with test.py's defaults (fused, channels_last) once in fp32 and once under bf16 autocast, in
alternating order:
- output parity: PSNR between the two 8-bit RGB outputs (all three channels, no border crop); test.py's
  `--precision auto` may pick bf16 only where the lowest of these stays above 50 dB;
- eval parity: the standard protocol's PSNR (Y, border = scale, against the HR image) with each precision,
  mean per folder; eval.py may use bf16 only where the mean moves by at most 0.01 dB;
- seconds per image for each precision (the sum over the folder; on a CPU without native bf16 the bf16 column
  is emulated and slower).
Prints one JSON object per (model, folder) and a readable line.
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import checkpoints  # noqa: E402
import inference  # noqa: E402
import models  # noqa: E402
import utils  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(REPO), 'shared', 'data')


def rgb_psnr(a, b):
    """PSNR in dB of two (3, H, W) uint8 RGB images over all channels, no border crop; inf when identical."""
    return utils.psnr(a.reshape(1, -1, a.shape[-1]), b.reshape(1, -1, b.shape[-1])).item()


def build_models(device):
    """(name, model, spec, scale): the shipped checkpoints and a randomly initialised full-size SRResNet x4."""
    out = []
    for name in ('espcn_x3_t91.pth', 'srcnn_x3_t91.pth'):
        loaded = checkpoints.load_sr_model(os.path.join(REPO, 'results', name), device)
        out.append((name, loaded.network, loaded.spec, int(loaded.config['scaling_factor'])))
    torch.manual_seed(0)
    srresnet = models.SRResNet(scaling_factor=4).to(device).eval()
    out.append(('srresnet_x4_random_init', srresnet, models.ARCHS['srresnet'], 4))
    return out


def measure(model, spec, scale, device, paths):
    """Per-folder parity and timing of fp32 against bf16 (see the module docstring)."""
    ups = {p: inference.Upscaler(model, spec, scale, device, precision=p, fuse=True, channels_last=True,
                                 max_memory=inference.auto_memory_budget(device)) for p in ('fp32', 'bf16')}
    parity, eval_psnr, seconds = [], {'fp32': [], 'bf16': []}, {'fp32': 0., 'bf16': 0.}
    for i, path in enumerate(paths):
        hr = utils.pil_to_tensor(utils.load_image(path))  # (3, H, W) uint8
        out = {}
        for p in (('fp32', 'bf16') if i % 2 == 0 else ('bf16', 'fp32')):
            t0 = time.perf_counter()
            sr_y, hr_y, sr_u8 = inference.standard_protocol(ups[p], hr, scale)
            seconds[p] += time.perf_counter() - t0
            eval_psnr[p].append(utils.psnr(sr_y, hr_y, border=scale))
            out[p] = sr_u8
        parity.append(rgb_psnr(out['fp32'], out['bf16']))
    mean = {p: sum(v) / len(v) for p, v in eval_psnr.items()}
    return {'images': len(paths), 'output_psnr_min': round(min(parity), 2),
            'output_psnr_mean': round(sum(parity) / len(parity), 2),
            'eval_psnr_fp32': round(mean['fp32'], 4), 'eval_psnr_bf16': round(mean['bf16'], 4),
            'eval_delta_db': round(mean['bf16'] - mean['fp32'], 4),
            'seconds_fp32': round(seconds['fp32'], 2), 'seconds_bf16': round(seconds['bf16'], 2)}


def main():
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split('\n')[0])
    parser.add_argument('--folders', nargs='+', default=[os.path.join(SHARED, s) for s in ('Set5', 'Set14')])
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--threads', type=int, help='torch threads (default: torch\'s)')
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = utils.pick_device(args.device)
    print(f"# torch {torch.__version__}, {device}, native bf16: {utils.native_bf16(device)}")
    for name, model, spec, scale in build_models(device):
        for folder in args.folders:
            row = {'model': name, 'folder': os.path.basename(os.path.normpath(folder)),
                   **measure(model, spec, scale, device, utils.list_image_files(folder))}
            print(json.dumps(row))
            print(f"{name} on {row['folder']}: bf16 output vs fp32 >= {row['output_psnr_min']} dB "
                  f"(mean {row['output_psnr_mean']}), eval PSNR {row['eval_psnr_fp32']:.4f} -> "
                  f"{row['eval_psnr_bf16']:.4f} ({row['eval_delta_db']:+.4f} dB), "
                  f"{row['seconds_fp32']} s fp32 / {row['seconds_bf16']} s bf16", flush=True)


if __name__ == '__main__':
    main()
