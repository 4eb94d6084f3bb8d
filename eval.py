"""Evaluate a super-resolution checkpoint, or the bicubic baseline, on test sets: PSNR / SSIM on luma.

    python eval.py                                   # results/checkpoint_srresnet.pth on Set5, Set14, BSD100
    python eval.py --checkpoint results/checkpoint_srgan.pth --device cuda
    python eval.py --checkpoint results/checkpoint_espcn.pth --scale 3 --test-folders data/Set5 data/Set14
    python eval.py --arch bicubic --scale 4 --test-folders data/Set5 --protocol standard     # 28.42 / 0.8104
    python eval.py --arch bicubic-rgb --scale 2 --datasets Set5 Set14 --data-folder ./data/
    python eval.py --convert-legacy OLD.pth NEW.pth  # the tutorial's pickled checkpoints (trusted files only)
    python eval.py --checkpoint edsr_baseline_x2-1bc95232.pt --test-folders data/Set5 --protocol standard
    python eval.py --checkpoint EDSR_Lx4_f256b32_DIV2K_official-76ee1c8f.pth --res-scale 0.1 --datasets Set5

The checkpoint says which network to rebuild (any architecture of models.ARCHS, SRGAN generators, the
tutorial's own checkpoints holding only 'model' or 'generator', safetensors files written by export.py, and
other projects' published weights: EDSR-PyTorch's EDSR, the official RCAN release, BasicSR's EDSR / RCAN /
MSRResNet, and what spandrel recognises; see inference.describe_checkpoint); --scale defaults to its scale, and
a checkpoint trained for another scale is refused. What published weights do not say about themselves follows
the official release (--res-scale, --rgb-range change it) and is printed as 'note:' lines and in the report.

Protocols (--protocol standard | tutorial | both; default both, printed side by side):
  standard  the papers' protocol: HR mod-cropped (top-left) to a multiple of the scale, LR = MATLAB bicubic
            (utils.imresize) rounded to uint8, SR rounded to uint8, rounded BT.601 luma, `scale` border pixels
            removed, PSNR and SSIM (11x11 Gaussian window, sigma 1.5).
  tutorial  exactly the tutorial's eval.py: HR centre-cropped to a multiple of the scale, LR = PIL bicubic,
            SR unrounded in [-1, 1], unrounded luma with a 4-pixel border removed, scikit-image's default
            PSNR and SSIM (7x7 uniform window). SRResNet/SRGAN get the ImageNet-normalised LR, as in the
            tutorial; other architectures run through inference.Upscaler on the LR in [0, 1] and their output is
            mapped from [0, 1] to [-1, 1].
Baselines (no checkpoint): --arch bicubic is the papers' bicubic row, computed on luma in floating point
(Y of the HR, imresize by 1/scale then by scale, rounded once at the end); --arch bicubic-rgb upscales the
same uint8 RGB LR the models get, like for like with RGB models. In the tutorial protocol both are the PIL
bicubic upscale of the PIL LR. Baselines always run on the CPU in float64, whatever --device says.

Models run in fp32, whatever the CPU: a reported PSNR is a reference number, and bf16 autocast moved Set5's by
-0.024 dB (shipped ESPCN; benchmarks/bench_precision.py), more than the 0.01 dB it may move (test.py's
--precision auto may use bf16: its images stay within 50 dB of fp32's).

Metrics are averaged per image, then per dataset. ms/image is the mean time of one forward pass (model
or bicubic upscale of one image in one protocol, with the LR's move to the device), without data loading,
LR creation or metric computation.

Writes, under --results-dir, eval_<name>_x<scale>.md (table), eval_<name>_x<scale>.json (summary) and
eval_<name>_x<scale>_per_image.csv, where <name> is the checkpoint's file name without '.pth' and without a
leading 'checkpoint_' (results/checkpoint_srresnet.pth -> srresnet), or the baseline's name (bicubic,
bicubic-rgb). Everything is computed first and written at the end, the three files all or nothing: an error
(or a full disk) leaves no new report file. A report of the same name from an earlier run is replaced.

Images: regular files up to --max-image-pixels (default PIL's 89478485; more is refused as a possible
decompression bomb: raise it for bigger images you trust); a FIFO, socket or device file in a test folder stops
the run with one line naming it, instead of blocking.
"""
import csv
import datetime
import io
import json
import math
import os

import torch
from PIL import Image

import datasets
import inference
import models
from utils import (ImageTransforms, UserError, atomic_write_many, check_output_folder, convert_image, dataset_name,
                   gray_uint8, imresize, is_grayscale_file, list_image_files, load_image, make_parser, modcrop,
                   pick_device, pil_to_tensor, positive_int, psnr, rgb_to_y_uint8, run_cli, ssim, timer,
                   tutorial_metrics)

PROTOCOLS = ('standard', 'tutorial')
BASELINES = ('bicubic', 'bicubic-rgb')
SCALES = (2, 3, 4, 8)
DEFAULT_CHECKPOINT = os.path.join('results', 'checkpoint_srresnet.pth')
DEFAULT_DATASETS = ('Set5', 'Set14', 'BSD100')
SSIM_WINDOW = 11  # utils.ssim's Gaussian window (standard protocol)
SKIMAGE_WINDOW = 7  # scikit-image's default SSIM window (tutorial protocol)
TUTORIAL_BORDER = 4  # convert_image(..., 'y-channel') removes 4 pixels per side

PROTOCOL_TEXT = {
    'standard': "papers' protocol: MATLAB-bicubic LR (uint8), SR rounded to uint8, rounded BT.601 Y, "
                "border = scale, SSIM 11x11 Gaussian (sigma 1.5)",
    'tutorial': "tutorial's eval.py: centre crop, PIL-bicubic LR, unrounded Y with a 4-px border, "
                "scikit-image default PSNR/SSIM (7x7 uniform window)",
}


def build_parser():
    parser = make_parser(__doc__)
    parser.add_argument('--checkpoint', metavar='PATH',
                        help=f"checkpoint to evaluate (default {DEFAULT_CHECKPOINT}; not with --arch bicubic*)")
    parser.add_argument('--arch', choices=BASELINES + tuple(sorted(models.ARCHS)) + ('srgan',),
                        help="bicubic / bicubic-rgb: the baselines, no checkpoint. Default: the architecture "
                             "recorded in the checkpoint (naming one only checks that it matches)")
    parser.add_argument('--scale', type=int, choices=SCALES,
                        help="upscaling factor; default: the checkpoint's scale (4 for the baselines)")
    parser.add_argument('--protocol', choices=PROTOCOLS + ('both',), default='both', help='metric protocol(s)')
    parser.add_argument('--datasets', nargs='+', metavar='NAME',
                        help=f"test sets read from <data-folder>/<NAME>_test_images.json "
                             f"(default: {' '.join(DEFAULT_DATASETS)})")
    parser.add_argument('--test-folders', nargs='+', metavar='DIR',
                        help='evaluate these image folders directly instead of the data lists')
    parser.add_argument('--results-dir', default='results', help='where the reports go')
    parser.add_argument('--max-image-pixels', type=positive_int, default=Image.MAX_IMAGE_PIXELS,
                        help='images with more pixels are refused as possible decompression bombs')
    parser.add_argument('--convert-legacy', nargs=2, metavar=('OLD', 'NEW'),
                        help="convert a tutorial checkpoint holding pickled models (UNPICKLES it: trusted files "
                             "only) into this suite's format, then exit")
    inference.add_assumption_args(parser)
    return parser


def resolve_args(parser, argv=None):
    """Parse flags and reject impossible combinations before any work."""
    args = parser.parse_args(argv)
    if args.convert_legacy:
        return args
    baseline = args.arch in BASELINES
    if baseline and args.checkpoint:
        parser.error(f"--arch {args.arch} is computed without a model: drop --checkpoint")
    if args.datasets and args.test_folders:
        parser.error("give either --datasets (data lists) or --test-folders (image folders), not both")
    if not baseline and args.checkpoint is None:
        args.checkpoint = DEFAULT_CHECKPOINT
    if baseline and args.scale is None:
        args.scale = 4
    args.protocols = PROTOCOLS if args.protocol == 'both' else (args.protocol,)
    return args


# ----------------------------------------------------------------------------------------------
# What is evaluated: a model, or one of the bicubic baselines
# ----------------------------------------------------------------------------------------------


class Stopwatch:
    """Accumulates the time of the blocks it wraps (waits for queued GPU work at both ends)."""

    def __init__(self):
        self.seconds = 0.

    def __enter__(self):
        self._start = timer()
        return self

    def __exit__(self, *exc):
        self.seconds += timer() - self._start
        return False


class BicubicUpscaler:
    """The 'identity' model of the bicubic-rgb baseline: MATLAB bicubic, with inference.Upscaler's interface.

    upscale(lr): (N, 3, h, w) RGB in [0, 1] -> ((N, 3, s*h, s*w) RGB in [0, 1], unrounded float64, None).
    """

    def __init__(self, scale, device):
        self.scale, self.device = int(scale), torch.device(device)

    def min_input_size(self):
        return 1

    def upscale(self, lr):
        return imresize(lr.to(self.device, torch.float64), self.scale), None


class TimedUpscaler:
    """Wraps an upscaler so that only its upscale() calls are timed."""

    def __init__(self, upscaler, stopwatch):
        self.upscaler, self.stopwatch = upscaler, stopwatch

    def upscale(self, lr):
        with self.stopwatch:
            return self.upscaler.upscale(lr)


def bicubic_y(hr, scale, stopwatch=None, gray=False):
    """The papers' bicubic baseline on luma. hr: (3, H, W) uint8 RGB (a grey file as R = G = B).

    Y of the mod-cropped HR (rounded, as MATLAB's rgb2ycbcr on uint8; a grey file is its own Y), imresize by
    1/scale and back by scale in float64 without rounding in between, rounded (and clamped to [0, 255]) at the end.
    Returns (sr_y, hr_y): float64 (H', W') with integer values.
    """
    hr_y = (gray_uint8 if gray else rgb_to_y_uint8)(modcrop(hr, scale))  # (H', W'), float64
    with stopwatch or Stopwatch():
        sr_y = imresize(imresize(hr_y, 1. / scale), scale)  # (H', W'), float64, unrounded
    return torch.floor(sr_y.clamp(0, 255) + 0.5), hr_y


def pil_bicubic_upscale(lr01, scale):
    """The tutorial-side bicubic: PIL bicubic upscale of the PIL LR image. lr01: (3, h, w) in [0, 1] (values k/255,
    as ImageTransforms makes them) -> (3, s*h, s*w) in [-1, 1]."""
    lr_img = convert_image(lr01, source='[0, 1]', target='pil')
    sr_img = lr_img.resize((lr_img.width * scale, lr_img.height * scale), Image.Resampling.BICUBIC)
    return convert_image(sr_img, source='pil', target='[-1, 1]')


class Method:
    """Something to evaluate. standard(hr) -> (sr_y, hr_y) of the standard protocol; tutorial(lr01) -> SR in
    [-1, 1]; ``stopwatch`` holds the time of the forward passes only."""

    label = arch = source = None
    notes = ()
    min_lr_size = 1

    def __init__(self, scale, device):
        self.scale, self.device, self.stopwatch = int(scale), torch.device(device), Stopwatch()

    def warm_up(self):
        pass


class BicubicMethod(Method):
    """--arch bicubic (luma, floating point) or bicubic-rgb (from the uint8 RGB LR, like the models).

    Always computed on the CPU in float64 (MPS has no float64), so the baseline never depends on --device.
    """

    def __init__(self, arch, scale, device='cpu'):
        super().__init__(scale, 'cpu')
        self.label = self.arch = arch

    def standard(self, hr, gray=False):
        if self.arch == 'bicubic':
            return bicubic_y(hr.to(self.device), self.scale, self.stopwatch, gray)
        upscaler = TimedUpscaler(BicubicUpscaler(self.scale, self.device), self.stopwatch)
        sr_y, hr_y, _ = inference.standard_protocol(upscaler, hr, self.scale, gray)
        return sr_y, hr_y

    def tutorial(self, lr01):
        with self.stopwatch:
            return pil_bicubic_upscale(lr01, self.scale)


class ModelMethod(Method):
    """A network rebuilt from a checkpoint."""

    min_lr_size = 2  # inference.Upscaler.min_input_size()

    def __init__(self, model, arch, config, checkpoint, device, spec=None, source=None, notes=()):
        super().__init__(config['scaling_factor'], device)
        self.model, self.arch, self.config, self.checkpoint = model, arch, config, checkpoint
        self.spec, self.source, self.notes = spec or models.ARCHS[arch], source, list(notes)
        self.upscaler = inference.Upscaler(model, self.spec, self.scale, device, name=checkpoint)
        self.label = report_name(checkpoint, arch)

    def warm_up(self):
        """One untimed forward pass, so CUDA start-up costs stay out of ms/image."""
        if self.device.type != 'cpu':
            self.upscaler.upscale(torch.rand(1, 3, 16, 16, device=self.device))

    def standard(self, hr, gray=False):
        sr_y, hr_y, _ = inference.standard_protocol(TimedUpscaler(self.upscaler, self.stopwatch), hr, self.scale,
                                                    gray)
        return sr_y, hr_y

    @torch.no_grad()
    def tutorial(self, lr01):
        lr = lr01.unsqueeze(0).to(self.device)  # (1, 3, h, w), in [0, 1]
        with self.stopwatch:
            if self.arch == 'srresnet':  # the tutorial: ImageNet-normalised LR in, its [-1, 1] output untouched
                sr = self.model(inference.model_input(self.spec, lr, self.scale))
            else:  # any other architecture: its own conventions via Upscaler (which checks its output), -> [-1, 1]
                sr = convert_image(self.upscaler.upscale(lr)[0], source='[0, 1]', target='[-1, 1]')
        inference.check_finite_output(sr, self.checkpoint, self.model)  # the Upscaler's rule, on the direct call too
        return sr[0]  # (3, s*h, s*w), in [-1, 1]


def load_method(args, device):
    """The baseline or the checkpoint's model named by the flags (UserError for a bad checkpoint/scale)."""
    if args.arch in BASELINES:
        return BicubicMethod(args.arch, args.scale, device)
    loaded = inference.load_sr_model(args.checkpoint, device, expect_scale=args.scale, res_scale=args.res_scale,
                                     rgb_range=args.rgb_range)
    named = 'srresnet' if args.arch == 'srgan' else args.arch  # an SRGAN generator is an SRResNet
    if named is not None and named != loaded.arch:
        raise UserError(f"--arch {args.arch}: {args.checkpoint} holds a {loaded.arch} model")
    return ModelMethod(loaded.model, loaded.arch, loaded.config, args.checkpoint, device, loaded.spec, loaded.source,
                       loaded.notes)


def report_name(checkpoint, arch):
    """Report base name: the checkpoint's stem without 'checkpoint_' (results/checkpoint_srgan.pth -> srgan)."""
    if checkpoint is None:
        return arch
    stem = os.path.splitext(os.path.basename(checkpoint))[0]
    return stem[len('checkpoint_'):] if stem.startswith('checkpoint_') and len(stem) > 11 else stem


# ----------------------------------------------------------------------------------------------
# Test sets and per-image evaluation
# ----------------------------------------------------------------------------------------------


def resolve_test_sets(args):
    """[(name, source, image paths)] for --test-folders or the data lists; UserError for empty/missing ones."""
    sets = []
    if args.test_folders:
        for folder in args.test_folders:
            paths = list_image_files(folder)
            if not paths:
                raise UserError(f"{folder}: no image files found (extensions: png, jpg, jpeg, bmp, tif, tiff, webp)")
            sets.append((dataset_name(folder), folder, paths))
    else:
        for name in args.datasets or DEFAULT_DATASETS:
            sets.append((name, os.path.join(args.data_folder, datasets.test_list_name(name)),
                         datasets.read_data_list(args.data_folder, 'test', name)))
    names = [name for name, _, _ in sets]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UserError(f"two test sets are both named {duplicates[0]!r}: their report rows would collide")
    return sets


def min_side(scale, protocols, min_lr_size=1):
    """Smallest image side (after cropping to a multiple of the scale) the protocols can measure."""
    need = [min_lr_size * scale]
    if 'standard' in protocols:
        need.append(SSIM_WINDOW + 2 * scale)  # SSIM window after removing `scale` pixels per side
    if 'tutorial' in protocols:
        need.append(SKIMAGE_WINDOW + 2 * TUTORIAL_BORDER)
    return max(need)


def check_size(path, img, scale, protocols, min_lr_size=1):
    """UserError when ``img`` (PIL) is too small to be evaluated at ``scale``."""
    need = min_side(scale, protocols, min_lr_size)
    w, h = img.width - img.width % scale, img.height - img.height % scale
    if min(w, h) < need:
        raise UserError(f"{path}: {img.width}x{img.height} is too small for x{scale} "
                        f"(needs at least {need} px per side after cropping to a multiple of {scale})")


def evaluate_image(method, img, protocols, gray=False):
    """Metrics of one PIL RGB image: {'standard_psnr': ..., 'standard_ssim': ..., 'tutorial_psnr': ..., ...}.

    gray: the file stored one grey channel, which is then its own Y in the standard protocol (as the papers'
    MATLAB scripts); the tutorial protocol always uses the RGB formula, as the tutorial does."""
    row, scale = {}, method.scale
    if 'standard' in protocols:
        sr_y, hr_y = method.standard(pil_to_tensor(img), gray)  # (H', W') float64 luma, integer values
        row['standard_psnr'] = psnr(sr_y, hr_y, border=scale)
        row['standard_ssim'] = ssim(sr_y, hr_y, border=scale)
    if 'tutorial' in protocols:
        transform = ImageTransforms('test', 0, scale, lr_img_type='[0, 1]', hr_img_type='[-1, 1]', downsample='pil')
        lr01, hr = transform(img)  # (3, h, w) in [0, 1]; (3, s*h, s*w) in [-1, 1]
        sr = method.tutorial(lr01)  # (3, s*h, s*w) in [-1, 1]
        row['tutorial_psnr'], row['tutorial_ssim'] = tutorial_metrics(sr, hr)
    return row


def mean(values):
    values = list(values)
    return sum(values) / len(values)


def evaluate_dataset(method, name, paths, protocols, source=None, max_pixels=None):
    """Evaluate every image; returns {'name', 'source', 'images', <metric>: mean, 'ms_per_image', 'per_image'}.
    max_pixels: the decompression-bomb limit (default PIL's)."""
    per_image = []
    for path in paths:
        img = load_image(path, max_pixels=max_pixels)
        check_size(path, img, method.scale, protocols, method.min_lr_size)
        before = method.stopwatch.seconds
        row = evaluate_image(method, img, protocols, gray=is_grayscale_file(path))
        ms = 1000. * (method.stopwatch.seconds - before) / len(protocols)
        per_image.append({'image': os.path.basename(path), 'width': img.width, 'height': img.height, **row,
                          'ms': ms})
    summary = {'name': name, 'source': source, 'images': len(per_image)}
    for protocol in protocols:
        for metric in ('psnr', 'ssim'):
            key = f"{protocol}_{metric}"
            summary[key] = mean(r[key] for r in per_image)
    summary['ms_per_image'] = mean(r['ms'] for r in per_image)
    summary['per_image'] = per_image
    return summary


# ----------------------------------------------------------------------------------------------
# Reports
# ----------------------------------------------------------------------------------------------


def table_columns(protocols):
    return [f"{p}_{m}" for p in protocols for m in ('psnr', 'ssim')]


def fmt(key, value):
    """PSNR with 2 decimals, SSIM with 4, as the papers quote them."""
    return f"{value:.2f}" if key.endswith('psnr') else f"{value:.4f}"


def column_title(key):
    protocol, metric = key.split('_')
    return f"{protocol} {metric.upper()}"


def format_row(result, protocols):
    return [result['name'], str(result['images'])] + [fmt(k, result[k]) for k in table_columns(protocols)] + \
        [f"{result['ms_per_image']:.1f}"]


def console_table(results, protocols):
    """Plain-text table: dataset, images, PSNR/SSIM per protocol, ms/image."""
    header = ['dataset', 'images'] + [column_title(k) for k in table_columns(protocols)] + ['ms/image']
    rows = [header] + [format_row(r, protocols) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ['  '.join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    return '\n'.join(lines)


def describe(meta):
    checkpoint = f", checkpoint {meta['checkpoint']}" if meta['checkpoint'] else ''
    return f"{meta['model']}{checkpoint}, x{meta['scale']}, device {meta['device']}, {meta['date']}"


def markdown_report(meta, results):
    protocols = meta['protocols']
    header = ['dataset', 'images'] + [column_title(k) for k in table_columns(protocols)] + ['ms/image']
    lines = [f"# Evaluation: {meta['name']} x{meta['scale']}", '',
             f"- model: {meta['model']}" + (f" (checkpoint `{meta['checkpoint']}`)" if meta['checkpoint'] else ''),
             f"- scale: x{meta['scale']}",
             f"- protocol(s): {', '.join(protocols)}"]
    if meta.get('weights'):
        lines.append(f"- weights: {meta['weights']}")
    lines += [f"  - {note}" for note in meta.get('notes') or ()]
    lines += [f"  - {p}: {PROTOCOL_TEXT[p]}" for p in protocols]
    lines += [f"- device: {meta['device']}", f"- date: {meta['date']}",
              "- PSNR (dB) and SSIM on luma, averaged per image; ms/image: model time of one forward pass", '',
              '| ' + ' | '.join(header) + ' |', '|' + '|'.join(['---'] + ['---:'] * (len(header) - 1)) + '|']
    lines += ['| ' + ' | '.join(format_row(r, protocols)) + ' |' for r in results]
    return '\n'.join(lines) + '\n'


def json_number(value):
    """JSON has no inf/nan (identical images give PSNR inf): written as null."""
    return value if isinstance(value, (int, str)) or value is None or math.isfinite(value) else None


def json_report(meta, results):
    out = dict(meta)
    out['protocol_definitions'] = {p: PROTOCOL_TEXT[p] for p in meta['protocols']}
    out['datasets'] = [{k: json_number(v) for k, v in r.items() if k != 'per_image'} for r in results]
    return json.dumps(out, indent=2) + '\n'


def csv_report(meta, results):
    """One row per image and protocol, each naming the model, checkpoint, scale and date."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator='\n')
    writer.writerow(['dataset', 'image', 'width', 'height', 'protocol', 'psnr', 'ssim', 'model_ms', 'scale',
                     'model', 'checkpoint', 'date'])
    for r in results:
        for row in r['per_image']:
            for p in meta['protocols']:
                writer.writerow([r['name'], row['image'], row['width'], row['height'], p,
                                 f"{row[p + '_psnr']:.6f}", f"{row[p + '_ssim']:.6f}", f"{row['ms']:.3f}",
                                 meta['scale'], meta['model'], meta['checkpoint'] or '', meta['date']])
    return buf.getvalue()


def report_paths(results_dir, name, scale):
    base = os.path.join(results_dir, f"eval_{name}_x{scale}")
    return {'md': base + '.md', 'json': base + '.json', 'csv': base + '_per_image.csv'}


def write_reports(results_dir, meta, results):
    """Write the markdown table, the JSON summary and the per-image CSV, all or nothing (a failure while writing
    any of them leaves none of the new ones and the old set as it was). Returns their paths."""
    texts = {'md': markdown_report(meta, results), 'json': json_report(meta, results),
             'csv': csv_report(meta, results)}
    paths = report_paths(results_dir, meta['name'], meta['scale'])
    atomic_write_many({paths[kind]: text for kind, text in texts.items()})
    return paths


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------


def convert_legacy(src, dst):
    """--convert-legacy: the tutorial's pickled-model checkpoint -> this suite's format."""
    if not os.path.isfile(src):
        raise UserError(f"checkpoint {src}: no such file")
    try:
        out = inference.convert_legacy_checkpoint(src, dst)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"cannot convert {src} ({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
    print(f"wrote {dst}: {out['arch']}, epoch {out['epoch']}")
    return 0


def main(argv=None):
    args = resolve_args(build_parser(), argv)
    if args.convert_legacy:
        return convert_legacy(*args.convert_legacy)
    check_output_folder(args.results_dir, '--results-dir')
    device = pick_device(args.device)
    test_sets = resolve_test_sets(args)
    method = load_method(args, device)
    meta = {'name': method.label, 'model': method.arch, 'checkpoint': getattr(method, 'checkpoint', None),
            'scale': method.scale, 'protocols': list(args.protocols), 'device': str(method.device),
            'date': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
            'weights': method.source, 'notes': list(method.notes)}
    print(f"eval.py: {describe(meta)}; protocol(s): {', '.join(args.protocols)}", flush=True)
    for note in meta['notes']:
        print(f"note: {note}")
    method.warm_up()
    results = []
    for name, source, paths in test_sets:
        print(f"evaluating {name} ({len(paths)} images)", flush=True)
        results.append(evaluate_dataset(method, name, paths, args.protocols, source, args.max_image_pixels))
    print(console_table(results, args.protocols))
    paths = write_reports(args.results_dir, meta, results)
    print(f"wrote {paths['md']}, {paths['json']}, {paths['csv']}")
    return 0


if __name__ == '__main__':
    raise SystemExit(run_cli(main))
