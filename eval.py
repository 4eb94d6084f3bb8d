"""Evaluate a super-resolution checkpoint, or the bicubic baseline, on test sets: PSNR / SSIM on luma, LPIPS on RGB.

    python eval.py                   # on Set5, Set14, BSD100: your results/checkpoint_srresnet.pth, else the shipped x4
    python eval.py --checkpoint results/checkpoint_srgan.pth --device cuda
    python eval.py --checkpoint results/checkpoint_espcn.pth --scale 3 --test-folders data/Set5 data/Set14
    python eval.py --arch bicubic --scale 4 --test-folders data/Set5 --protocol standard     # 28.42 / 0.8104
    python eval.py --arch bicubic-rgb --scale 2 --datasets Set5 Set14 --data-folder ./data/
    python eval.py --convert-legacy OLD.pth NEW.pth  # the tutorial's pickled checkpoints (trusted files only)
    python eval.py --checkpoint edsr_baseline_x2-1bc95232.pt --test-folders data/Set5 --protocol standard
    python eval.py --checkpoint EDSR_Lx4_f256b32_DIV2K_official-76ee1c8f.pth --res-scale 0.1 --datasets Set5
    python eval.py --checkpoint results/checkpoint_srgan.pth --metrics psnr ssim lpips     # + LPIPS (AlexNet)
    python eval.py --arch bicubic --metrics psnr ssim lpips --lpips-net vgg --lpips-backbone-weights vgg16.pth
    python eval.py --checkpoint results/checkpoint_srresnet.pth --weights raw    # not the EMA weights it holds
    python eval.py --checkpoint results/espcn_x3_t91.pth --test-folders data/Set5 --report html  # + a visual page
    python eval.py --checkpoint results/espcn_x3_t91.pth --checkpoint results/srcnn_x3_t91.pth \
        --test-folders data/Set5 --figure --figure-images butterfly        # the papers' comparison figure

The checkpoint says which network to rebuild (any architecture of models.ARCHS, SRGAN generators, the
tutorial's own checkpoints holding only 'model' or 'generator', safetensors files written by export.py, and
other projects' published weights: EDSR-PyTorch's EDSR, the official RCAN release, BasicSR's EDSR / RCAN /
MSRResNet, and what spandrel recognises; see checkpoints.describe_checkpoint); --scale defaults to its scale, and
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
-0.027 dB (shipped ESPCN; benchmarks/bench_precision.py), more than the 0.01 dB it may move (test.py's
--precision auto may use bf16: its images stay within 50 dB of fp32's).

--metrics (default psnr ssim) picks the columns; lpips adds LPIPS v0.1 of the lpips package (AlexNet, or VGG16
with --lpips-net vgg; lower is better) in the standard protocol only: computed on RGB in [-1, 1] (what lpips
expects) from the standard protocol's uint8 SR image and the mod-cropped HR, with the same `scale`-pixel border
removed as for PSNR/SSIM (all three measure the same pixels), in float32, on --device. For --arch bicubic the
RGB SR image is the same float64 bicubic on RGB, rounded once. Its backbone's ImageNet weights come from
torchvision's weights API (the torch hub cache: torchvision downloads them there once when online) or
--lpips-backbone-weights PATH; without either, one line says both ways (exit code 2). Its linear layers ship
inside the lpips package.

Weights: a checkpoint that holds an exponential moving average of its weights (the trainers' --ema-decay:
'model_ema' / 'generator_ema'; BasicSR's 'params_ema') is evaluated with it, as the trainer validated it;
--weights raw evaluates the trained weights, --weights ema insists on the average. Which was used is printed as a
'note:' line and written in the report.

Metrics are averaged per image, then per dataset. ms/image is the mean time of one forward pass (model
or bicubic upscale of one image in one protocol, with the LR's move to the device), without data loading,
LR creation or metric computation.

Writes, under --results-dir, eval_<name>_x<scale>.md (table), eval_<name>_x<scale>.json (summary) and
eval_<name>_x<scale>_per_image.csv, where <name> is the checkpoint's file name without '.pth' and without a
leading 'checkpoint_' (results/checkpoint_srresnet.pth -> srresnet), or the baseline's name (bicubic,
bicubic-rgb). Everything is computed first and written at the end, the three files all or nothing: an error
(or a full disk) leaves no new report file. A report of the same name from an earlier run is replaced.

--report html adds eval_<name>_x<scale>.html to the set: one self-contained page (images embedded, readable
offline) with the table and, for every image, the HR thumbnail, the crops of bicubic, the model and HR at the box
where the model gains most over bicubic, and the standard protocol's PSNR / SSIM of both; its rows sort by the
PSNR gain over bicubic.

--figure writes, instead of the tables, the papers' comparison figure: for each image (--figure-images), the HR with
a red box, then the boxed crop of bicubic (the papers' baseline), of every --checkpoint (several, side by side) and
of HR, each labelled with its PSNR / SSIM on that image (standard protocol), as
<results-dir>/figure_<names>_x<scale>.png. Run again with the same checkpoint files (the same bytes: the PNG
records their SHA-256) and weights, it is replaced (other images or boxes: that figure refined); a figure of other
models that shares the name (two runs' checkpoint_srresnet.pth), or a file it did not make, is refused in one line
unless --overwrite. The box is --figure-box X,Y,W,H in HR px, or
the square of a quarter of the shorter side where the first checkpoint gains most PSNR over bicubic. The networks
run in float64 for it, so the PNG is the same on every CPU (fp32 rounds differently on each).

Images: regular files up to --max-image-pixels (default PIL's 89478485; more is refused as a possible
decompression bomb: raise it for bigger images you trust); a FIFO, socket or device file in a test folder stops
the run with one line naming it, instead of blocking.
"""
import argparse
import copy
import csv
import datetime
import io
import json
import math
import os

import torch
from PIL import Image

import checkpoints
import datasets
import inference
import models
import reports
from utils import (ImageTransforms, Settings, UserError, atomic_write, atomic_write_many, check_output_folder,
                   convert_image, dataset_name, file_digest, gray_uint8, imresize, is_grayscale_file, list_image_files,
                   load_image, lpips_distance, make_parser, modcrop, pick_device, pil_to_tensor, png_text, positive_int,
                   psnr, rgb_to_y_uint8, run_cli, ssim, timer, tutorial_metrics)

PROTOCOLS = ('standard', 'tutorial')
METRICS = ('psnr', 'ssim', 'lpips')
DEFAULT_METRICS = ('psnr', 'ssim')
PROTOCOL_METRICS = {'standard': METRICS, 'tutorial': ('psnr', 'ssim')}  # LPIPS: on the standard protocol's images
BASELINES = ('bicubic', 'bicubic-rgb')
SCALES = (2, 3, 4, 8)
DEFAULT_DATASETS = ('Set5', 'Set14', 'BSD100')
SSIM_WINDOW = 11  # utils.ssim's Gaussian window (standard protocol)
SKIMAGE_WINDOW = 7  # scikit-image's default SSIM window (tutorial protocol)
TUTORIAL_BORDER = 4  # convert_image(..., 'y-channel') removes 4 pixels per side
FIGURE_MAX_IMAGES = 8  # --figure without --figure-images: at most this many rows
FIGURE_MODELS = 'SR suite figure of'  # the figure's PNG text chunk: its checkpoints' SHA-256 and weights (JSON)
OUT_OF_MEMORY = "evaluate on a device with more memory (--device), or smaller images"  # no tiles: reference numbers

PAIRED_NOTE = ["paired test sets: the LR images given (not made from the HR), the HR cut to scale x their size"]
PROTOCOL_TEXT = {
    'standard': "papers' protocol: MATLAB-bicubic LR (uint8), SR rounded to uint8, rounded BT.601 Y, "
                "border = scale, SSIM 11x11 Gaussian (sigma 1.5)",
    'tutorial': "tutorial's eval.py: centre crop, PIL-bicubic LR, unrounded Y with a 4-px border, "
                "scikit-image default PSNR/SSIM (7x7 uniform window)",
}
LPIPS_TEXT = ("LPIPS v{version} ({net}; lower is better) on RGB in [-1, 1] of the standard protocol's uint8 SR and "
              "mod-cropped HR, border = scale removed (the pixels PSNR/SSIM measure)")


def build_parser():
    parser = make_parser(__doc__)
    parser.add_argument('--checkpoint', metavar='PATH', action='append',
                        help="checkpoint to evaluate (default: your own results/checkpoint_srresnet.pth when it "
                             "exists, else the shipped SRResNet x4, results/srresnet_x4_291.pth; not with --arch "
                             "bicubic*); --figure takes several")
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
    parser.add_argument('--metrics', nargs='+', choices=METRICS, default=list(DEFAULT_METRICS),
                        help="lpips: the perceptual distance of the lpips package (lower is better), in the standard "
                             "protocol only; it needs ImageNet weights of its backbone (--lpips-backbone-weights)")
    parser.add_argument('--lpips-net', choices=tuple(models.LPIPS_BACKBONES),
                        help="LPIPS's backbone: alex (AlexNet, the default: the lpips authors' choice for a metric) "
                             "or vgg (VGG16)")
    parser.add_argument('--lpips-backbone-weights', metavar='PATH',
                        help="a torchvision AlexNet / VGG16 state_dict file for --lpips-net (default: torchvision's "
                             "ImageNet weights from the torch hub cache)")
    parser.add_argument('--results-dir', default='results', help='where the reports go')
    parser.add_argument('--overwrite', action='store_true',
                        help="replace a report set of the same name made of another model or other test sets (the "
                             "same model on the same sets replaces its own without it), or --figure's figure of "
                             "other checkpoint files or weights")
    parser.add_argument('--max-image-pixels', type=positive_int, default=Image.MAX_IMAGE_PIXELS,
                        help='images with more pixels are refused as possible decompression bombs')
    parser.add_argument('--convert-legacy', nargs=2, metavar=('OLD', 'NEW'),
                        help="convert a tutorial checkpoint holding pickled models (UNPICKLES it: trusted files "
                             "only) into this suite's format, then exit")
    checkpoints.add_assumption_args(parser)
    checkpoints.add_weights_arg(parser)
    add_picture_args(parser)
    return parser


def box_arg(text):
    """'X,Y,W,H' -> (x, y, w, h) of non-negative integers, w and h >= 1 (argparse type)."""
    try:
        box = tuple(int(v) for v in text.split(','))
    except ValueError:
        box = ()
    if len(box) != 4 or min(box) < 0 or min(box[2:]) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected X,Y,W,H in HR px (e.g. 60,90,64,64)")
    return box


def add_picture_args(parser):
    g = parser.add_argument_group('pictures')
    g.add_argument('--report', choices=('html',),
                   help="also write eval_<name>_x<scale>.html: one self-contained page with the table and every "
                        "image's thumbnail, crops and metrics next to bicubic, sortable by PSNR gain over bicubic")
    g.add_argument('--figure', action='store_true',
                   help="instead of the tables: the papers' comparison figure, HR with a box, then the boxed crop of "
                        "bicubic, of every --checkpoint (give several) and of HR, each labelled with its PSNR / SSIM; "
                        "written as <results-dir>/figure_<names>_x<scale>.png")
    g.add_argument('--figure-images', nargs='+', metavar='NAME',
                   help=f"the test images --figure shows, by file name or stem (default: all of them, at most "
                        f"{FIGURE_MAX_IMAGES})")
    g.add_argument('--figure-box', action='append', type=box_arg, metavar='X,Y,W,H',
                   help="the crop --figure shows, in HR px: once for all images, or once per --figure-images name "
                        "(default: the square of a quarter of the shorter side where the first checkpoint gains most "
                        "PSNR over bicubic)")


def resolve_picture_args(parser, args):
    """--checkpoint (one, or several for --figure), --figure's and --report's flags, checked before any work.
    Returns the checkpoints given, a list (--checkpoint is repeatable)."""
    checkpoints = list(args.checkpoint or [])
    if len(checkpoints) > 1 and not args.figure:
        parser.error("several --checkpoint are compared by --figure; the tables evaluate one checkpoint per run")
    if args.figure:
        if args.arch in BASELINES:
            parser.error("--figure shows bicubic next to checkpoints: give --checkpoint, not --arch " + args.arch)
        if args.report:
            parser.error("--figure writes the figure instead of the reports: drop --report")
        if args.figure_box and args.figure_images and len(args.figure_box) not in (1, len(args.figure_images)):
            parser.error(f"--figure-box: give one box for all images or one per --figure-images name "
                         f"({len(args.figure_images)}), not {len(args.figure_box)}")
        if args.figure_box and not args.figure_images and len(args.figure_box) > 1:
            parser.error("several --figure-box need --figure-images: one box per image, in its order")
    elif args.figure_images or args.figure_box:
        parser.error("--figure-images and --figure-box are for --figure")
    if args.report == 'html' and args.protocol == 'tutorial':
        parser.error("--report html shows the standard protocol's images: use --protocol standard or both")
    return checkpoints


def resolve_args(parser, argv=None):
    """The flags, resolved once into a frozen utils.Settings (the default checkpoint or scale, the metrics in the
    table's order, the protocols they need); impossible combinations rejected before any work."""
    args = parser.parse_args(argv)
    if args.convert_legacy:
        return Settings(**vars(args))
    given = resolve_picture_args(parser, args)
    baseline = args.arch in BASELINES
    if baseline and given:
        parser.error(f"--arch {args.arch} is computed without a model: drop --checkpoint")
    if args.datasets and args.test_folders:
        parser.error("give either --datasets (data lists) or --test-folders (image folders), not both")
    if baseline and args.weights:
        parser.error(f"--weights picks a checkpoint's weights: --arch {args.arch} has none")
    metrics = tuple(m for m in METRICS if m in args.metrics)  # the table's order, each once
    if (args.lpips_net or args.lpips_backbone_weights) and 'lpips' not in metrics:
        parser.error("--lpips-net and --lpips-backbone-weights are for --metrics ... lpips")
    if 'lpips' in metrics and args.protocol == 'tutorial':
        parser.error("LPIPS is computed on the standard protocol's images: use --protocol standard or both")
    protocols = PROTOCOLS if args.protocol == 'both' else (args.protocol,)
    checkpoint = given[0] if given else None if baseline else checkpoints.default_checkpoint()
    return Settings(**{
        **vars(args), 'metrics': metrics, 'lpips_net': args.lpips_net or 'alex',
        'checkpoints': tuple(given or ([] if baseline else [checkpoint])),
        'checkpoint': checkpoint,
        'scale': 4 if baseline and args.scale is None else args.scale,
        'protocols': tuple(p for p in protocols if set(PROTOCOL_METRICS[p]) & set(metrics))})


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


def bicubic_float(img, scale, stopwatch=None):
    """imresize by 1/scale and back by scale in float64 without rounding in between, rounded (and clamped to
    [0, 255]) at the end. img: (..., H', W') with values in [0, 255], sides multiples of the scale."""
    with stopwatch or Stopwatch():
        out = imresize(imresize(img.to(torch.float64), 1. / scale), scale)  # (..., H', W'), float64, unrounded
    return torch.floor(out.clamp(0, 255) + 0.5)


def bicubic_y(hr, scale, stopwatch=None, gray=False):
    """The papers' bicubic baseline on luma. hr: (3, H, W) uint8 RGB (a grey file as R = G = B).

    Y of the mod-cropped HR (rounded, as MATLAB's rgb2ycbcr on uint8; a grey file is its own Y), then
    bicubic_float. Returns (sr_y, hr_y): float64 (H', W') with integer values.
    """
    hr_y = (gray_uint8 if gray else rgb_to_y_uint8)(modcrop(hr, scale))  # (H', W'), float64
    return bicubic_float(hr_y, scale, stopwatch), hr_y


def pil_bicubic_upscale(lr01, scale):
    """The tutorial-side bicubic: PIL bicubic upscale of the PIL LR image. lr01: (3, h, w) in [0, 1] (values k/255,
    as ImageTransforms makes them) -> (3, s*h, s*w) in [-1, 1]."""
    lr_img = convert_image(lr01, source='[0, 1]', target='pil')
    sr_img = lr_img.resize((lr_img.width * scale, lr_img.height * scale), Image.Resampling.BICUBIC)
    return convert_image(sr_img, source='pil', target='[-1, 1]')


class Method:
    """Something to evaluate. standard(hr, gray, rgb, lr) -> (sr_y, hr_y, sr_rgb) of the standard protocol (sr_rgb:
    the (3, H', W') uint8 SR image, for LPIPS; with rgb=False it may be None; lr: the LR given by a paired set); tutorial(lr01) -> SR in [-1, 1];
    ``stopwatch`` holds the time of the forward passes only."""

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

    def standard(self, hr, gray=False, rgb=False, lr=None):
        """bicubic: its SR image for LPIPS is the same computation on RGB (float64, rounded once), untimed. With an
        LR given (a paired test set) both baselines are bicubic-rgb's: MATLAB bicubic of that uint8 RGB LR."""
        if self.arch == 'bicubic' and lr is None:
            sr_y, hr_y = bicubic_y(hr.to(self.device), self.scale, self.stopwatch, gray)
            sr_rgb = bicubic_float(modcrop(hr, self.scale), self.scale).to(torch.uint8) if rgb else None
            return sr_y, hr_y, sr_rgb  # sr_rgb: (3, H', W') uint8 or None
        upscaler = TimedUpscaler(BicubicUpscaler(self.scale, self.device), self.stopwatch)
        return inference.standard_protocol(upscaler, hr, self.scale, gray, lr=lr)

    def tutorial(self, lr01):
        with self.stopwatch:
            return pil_bicubic_upscale(lr01, self.scale)


class ModelMethod(Method):
    """A network rebuilt from a checkpoint: ``model``, its checkpoints.ModelDescription (load_sr_model's), run through
    inference.ImageUpscaler in fp32, the whole image at once."""

    min_lr_size = 2  # inference.Upscaler.min_input_size()

    def __init__(self, model, device):
        super().__init__(model.scale, device)
        self.model, self.arch, self.checkpoint = model, model.arch, model.path
        self.source, self.notes, self.selected = model.source, list(model.notes), model.selected
        self.upscaler = inference.ImageUpscaler(model, device, out_of_memory=OUT_OF_MEMORY)
        self.label = report_name(model.path, model.arch)

    def warm_up(self):
        """One untimed forward pass, so CUDA start-up costs stay out of ms/image."""
        if self.device.type != 'cpu':
            self.upscaler.upscale(torch.rand(1, 3, 16, 16, device=self.device))

    def standard(self, hr, gray=False, rgb=False, lr=None):
        return inference.standard_protocol(TimedUpscaler(self.upscaler, self.stopwatch), hr, self.scale, gray, lr=lr)

    @torch.no_grad()
    def tutorial(self, lr01):
        lr = lr01.unsqueeze(0).to(self.device)  # (1, 3, h, w), in [0, 1]
        with self.stopwatch:
            if self.arch == 'srresnet':  # the tutorial: ImageNet-normalised LR in, its [-1, 1] output untouched
                sr = self.model.network(inference.model_input(self.model.spec, lr, self.scale))
            else:  # any other architecture: its own conventions via Upscaler (which checks its output), -> [-1, 1]
                sr = convert_image(self.upscaler.upscale(lr)[0], source='[0, 1]', target='[-1, 1]')
        inference.check_finite_output(sr, self.checkpoint, self.model.network)  # Upscaler's rule, on the direct call
        return sr[0]  # (3, s*h, s*w), in [-1, 1]


def load_method(args, device):
    """The baseline or the checkpoint's model named by the flags (UserError for a bad checkpoint/scale)."""
    if args.arch in BASELINES:
        return BicubicMethod(args.arch, args.scale, device)
    model = checkpoints.load_sr_model(args.checkpoint, device, expect_scale=args.scale, res_scale=args.res_scale,
                                      rgb_range=args.rgb_range, weights=args.weights)
    named = 'srresnet' if args.arch == 'srgan' else args.arch  # an SRGAN generator is an SRResNet
    if named is not None and named != model.arch:
        raise UserError(f"--arch {args.arch}: {args.checkpoint} holds a {model.arch} model")
    return ModelMethod(model, device)


def load_lpips(args, device):
    """The LPIPS network for --metrics lpips on ``device`` (None without it); UserError of one line when the
    backbone's weights are missing (naming the torch hub cache file and --lpips-backbone-weights)."""
    if 'lpips' not in args.metrics:
        return None
    try:
        return models.build_lpips(args.lpips_net, args.lpips_backbone_weights or 'imagenet').to(device)
    except models.BackboneWeightsError as e:
        raise UserError(str(e)) from None


def report_name(checkpoint, arch):
    """Report base name: the checkpoint's stem without 'checkpoint_' (results/checkpoint_srgan.pth -> srgan)."""
    if checkpoint is None:
        return arch
    stem = os.path.splitext(os.path.basename(checkpoint))[0]
    return stem[len('checkpoint_'):] if stem.startswith('checkpoint_') and len(stem) > 11 else stem


# ----------------------------------------------------------------------------------------------
# Test sets and per-image evaluation
# ----------------------------------------------------------------------------------------------


def resolve_test_sets(args, scale):
    """[(name, source, items)] for --test-folders or the data lists; an item is an image path, or for a paired test
    set (a folder with LR/ and HR/, or a list of create_data_lists.py's --paired-test-folders / --degrade-test) the
    pair (LR path, HR path) at ``scale``. UserError for empty, missing or mismatched ones."""
    sets = []
    for name, source, paired in test_set_sources(args):
        if not paired:
            items = (list_image_files(source) if args.test_folders
                     else datasets.read_data_list(args.data_folder, 'test', name))
            if not items:
                raise UserError(f"{source}: no image files found (extensions: png, jpg, jpeg, bmp, tif, tiff, webp)")
        elif args.test_folders:
            items = datasets.match_pairs(source, scale)
        else:
            listed, items = datasets.read_pair_list(args.data_folder, 'test', name)
            if listed != scale:
                raise UserError(f"{source} lists x{listed} pairs, the model is x{scale}: evaluate it with an "
                                f"x{listed} model")
        sets.append((name, source, items))
    names = [name for name, _, _ in sets]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UserError(f"two test sets are both named {duplicates[0]!r}: their report rows would collide")
    return sets


def test_set_sources(args):
    """[(name, source, paired?)] of --test-folders (a folder with LR/ and HR/ is paired) or of the data lists of
    --datasets (a name with <name>_test_pairs.json and no image list is paired)."""
    if args.test_folders:
        return [(dataset_name(folder), folder, datasets.is_paired_folder(folder)) for folder in args.test_folders]
    sources = []
    for name in args.datasets or DEFAULT_DATASETS:
        images, pairs = (os.path.join(args.data_folder, n) for n in (datasets.test_list_name(name),
                                                                      datasets.test_pairs_name(name)))
        paired = not os.path.exists(images) and os.path.exists(pairs)
        sources.append((name, pairs if paired else images, paired))
    return sources


def has_pairs(test_sets):
    """Whether any test set of resolve_test_sets is paired (its items are (LR, HR) pairs)."""
    return any(isinstance(item, tuple) for _, _, items in test_sets for item in items)


def min_side(scale, protocols, min_lr_size=1, metrics=DEFAULT_METRICS, lpips_net='alex'):
    """Smallest image side (after cropping to a multiple of the scale) the protocols and metrics can measure."""
    need = [min_lr_size * scale]
    if 'standard' in protocols and 'ssim' in metrics:
        need.append(SSIM_WINDOW + 2 * scale)  # SSIM window after removing `scale` pixels per side
    if 'standard' in protocols and 'lpips' in metrics:
        need.append(models.LPIPS_MIN_SIDE[lpips_net] + 2 * scale)  # the backbone's input, same border
    if 'tutorial' in protocols:
        need.append(SKIMAGE_WINDOW + 2 * TUTORIAL_BORDER)
    return max(need)


def check_size(path, img, scale, protocols, min_lr_size=1, metrics=DEFAULT_METRICS, lpips_net='alex'):
    """UserError when ``img`` (PIL) is too small to be evaluated at ``scale``."""
    need = min_side(scale, protocols, min_lr_size, metrics, lpips_net)
    w, h = img.width - img.width % scale, img.height - img.height % scale
    if min(w, h) < need:
        raise UserError(f"{path}: {img.width}x{img.height} is too small for x{scale} "
                        f"(needs at least {need} px per side after cropping to a multiple of {scale})")


def evaluate_image(method, img, protocols, gray=False, metrics=DEFAULT_METRICS, lpips_net=None, keep=None, lr=None):
    """Metrics of one PIL RGB image: {'standard_psnr': ..., 'standard_ssim': ..., 'standard_lpips': ...,
    'tutorial_psnr': ..., ...}, those of ``metrics`` that each protocol has (PROTOCOL_METRICS).

    gray: the file stored one grey channel, which is then its own Y in the standard protocol (as the papers'
    MATLAB scripts); the tutorial protocol always uses the RGB formula, as the tutorial does. lpips_net: the
    LPIPS network (load_lpips) for 'lpips', computed on RGB: the standard protocol's uint8 SR image and the
    mod-cropped HR (a grey file's R = G = B), with the same `scale`-pixel border removed as for PSNR/SSIM.
    keep: a dict that receives the standard protocol's images (hr, sr_y, hr_y, sr_rgb, lr), for --report html.
    lr: the LR image given (a paired test set), (3, h, w) uint8, instead of the one the standard protocol makes; the
    tutorial protocol makes its own LR, so it is not measured then."""
    if lr is not None and 'tutorial' in protocols:
        raise ValueError("a paired image is measured in the standard protocol only")
    row, scale = {}, method.scale
    if 'standard' in protocols:
        hr = pil_to_tensor(img)  # (3, H, W) uint8
        sr_y, hr_y, sr_rgb = method.standard(hr, gray, rgb='lpips' in metrics or keep is not None, lr=lr)  # luma
        if keep is not None:
            keep.update(hr=hr, sr_y=sr_y, hr_y=hr_y, sr_rgb=sr_rgb, lr=lr)
        if 'psnr' in metrics:
            row['standard_psnr'] = psnr(sr_y, hr_y, border=scale)
        if 'ssim' in metrics:
            row['standard_ssim'] = ssim(sr_y, hr_y, border=scale)
        if 'lpips' in metrics:
            row['standard_lpips'] = lpips_distance(lpips_net, sr_rgb, modcrop(hr, scale), border=scale)
    if 'tutorial' in protocols:
        transform = ImageTransforms('test', 0, scale, lr_img_type='[0, 1]', hr_img_type='[-1, 1]', downsample='pil')
        lr01, hr = transform(img)  # (3, h, w) in [0, 1]; (3, s*h, s*w) in [-1, 1]
        sr = method.tutorial(lr01)  # (3, s*h, s*w) in [-1, 1]
        values = dict(zip(('psnr', 'ssim'), tutorial_metrics(sr, hr)))
        row.update({f'tutorial_{m}': values[m] for m in metrics if m in values})
    return row


def mean(values):
    values = list(values)
    return sum(values) / len(values)


def split_item(item):
    """(LR path or None, HR path) of a test-set item of resolve_test_sets: an image path, or an (LR, HR) pair."""
    return item if isinstance(item, tuple) else (None, item)


def read_item(item, scale, check, max_pixels=None):
    """(HR path, HR image (PIL), the LR given as (3, h, w) uint8 or None) of a test-set item; ``check(path, img)``
    (check_size) runs on the HR image before its LR is read."""
    lr_path, path = split_item(item)
    img = load_image(path, max_pixels=max_pixels)
    check(path, img)
    return path, img, None if lr_path is None else given_lr(lr_path, img, scale, max_pixels)


def given_lr(path, hr_img, scale, max_pixels=None):
    """The LR image of a pair, (3, h, w) uint8, checked against its HR image (PIL): scale x its size, up to scale - 1
    px more per side, which the protocol cuts off as it cuts HR images to a multiple of the scale."""
    lr = load_image(path, max_pixels=max_pixels)
    if hr_img.width // scale != lr.width or hr_img.height // scale != lr.height:
        raise UserError(f"{path}: {lr.width}x{lr.height} is not 1/{scale} of its HR image ({hr_img.width}x"
                        f"{hr_img.height})")
    return pil_to_tensor(lr)


def evaluate_dataset(method, name, paths, protocols, source=None, max_pixels=None, metrics=DEFAULT_METRICS,
                     lpips_net=None, lpips_backbone='alex', visual=None):
    """Evaluate every image (``paths``: image paths, or (LR path, HR path) pairs whose LR is given instead of made);
    returns {'name', 'source', 'images', <metric>: mean, 'ms_per_image', 'per_image'}.
    max_pixels: the decompression-bomb limit (default PIL's); lpips_net (its backbone name lpips_backbone): the
    LPIPS network for 'lpips' in metrics (load_lpips). visual: report_image for --report html, whose result each
    per-image row keeps as 'visual'."""
    per_image = []
    for item in paths:
        path, img, lr = read_item(item, method.scale, lambda p, i: check_size(
            p, i, method.scale, protocols, method.min_lr_size, metrics, lpips_backbone), max_pixels)
        before = method.stopwatch.seconds
        keep = {} if visual is not None else None
        gray = is_grayscale_file(path)
        row = evaluate_image(method, img, protocols, gray=gray, metrics=metrics, lpips_net=lpips_net, keep=keep,
                             lr=lr)
        ms = 1000. * (method.stopwatch.seconds - before) / len(protocols)
        per_image.append({'image': os.path.basename(path), 'width': img.width, 'height': img.height, **row,
                          'ms': ms})
        if visual is not None:
            per_image[-1]['visual'] = visual(method, name, path, keep, gray)
    summary = {'name': name, 'source': source, 'images': len(per_image)}
    for key in table_columns(protocols, metrics):
        summary[key] = mean(r[key] for r in per_image)
    summary['ms_per_image'] = mean(r['ms'] for r in per_image)
    summary['per_image'] = per_image
    return summary


# ----------------------------------------------------------------------------------------------
# Reports
# ----------------------------------------------------------------------------------------------


def table_columns(protocols, metrics=DEFAULT_METRICS):
    """Summary keys ('standard_psnr', ...): per protocol, the metrics of ``metrics`` it has, PSNR, SSIM, LPIPS."""
    return [f"{p}_{m}" for p in protocols for m in METRICS if m in metrics and m in PROTOCOL_METRICS[p]]


def fmt(key, value):
    """PSNR with 2 decimals, SSIM and LPIPS with 4, as the papers quote them."""
    return f"{value:.2f}" if key.endswith('psnr') else f"{value:.4f}"


def column_title(key):
    protocol, metric = key.split('_')
    return f"{protocol} {metric.upper()}" + (' (lower is better)' if metric == 'lpips' else '')


def format_row(result, protocols, metrics=DEFAULT_METRICS):
    return [result['name'], str(result['images'])] + [fmt(k, result[k]) for k in table_columns(protocols, metrics)] \
        + [f"{result['ms_per_image']:.1f}"]


def console_table(results, protocols, metrics=DEFAULT_METRICS):
    """Plain-text table: dataset, images, PSNR/SSIM(/LPIPS) per protocol, ms/image."""
    header = ['dataset', 'images'] + [column_title(k) for k in table_columns(protocols, metrics)] + ['ms/image']
    rows = [header] + [format_row(r, protocols, metrics) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ['  '.join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    return '\n'.join(lines)


def describe(meta):
    checkpoint = f", checkpoint {meta['checkpoint']}" if meta['checkpoint'] else ''
    return f"{meta['model']}{checkpoint}, x{meta['scale']}, device {meta['device']}, {meta['date']}"


def markdown_report(meta, results):
    protocols, metrics = meta['protocols'], meta['metrics']
    header = ['dataset', 'images'] + [column_title(k) for k in table_columns(protocols, metrics)] + ['ms/image']
    lines = [f"# Evaluation: {meta['name']} x{meta['scale']}", '',
             f"- model: {meta['model']}" + (f" (checkpoint `{meta['checkpoint']}`)" if meta['checkpoint'] else ''),
             f"- scale: x{meta['scale']}",
             f"- protocol(s): {', '.join(protocols)}"]
    if meta.get('weights'):
        lines.append(f"- weights: {meta['weights']}" + (f" ({meta['weights_selected']} weights)"
                                                         if meta.get('weights_selected') else ''))
    lines += [f"  - {note}" for note in meta.get('notes') or ()]
    lines += [f"  - {p}: {PROTOCOL_TEXT[p]}" for p in protocols]
    lines += [f"- device: {meta['device']}", f"- date: {meta['date']}",
              "- PSNR (dB) and SSIM on luma, averaged per image; ms/image: model time of one forward pass"]
    if meta.get('lpips'):
        lines.append(f"- {meta['lpips']['definition']}; averaged per image; backbone weights: "
                     f"{meta['lpips']['backbone_weights']}")
    lines += ['', '| ' + ' | '.join(header) + ' |', '|' + '|'.join(['---'] + ['---:'] * (len(header) - 1)) + '|']
    lines += ['| ' + ' | '.join(format_row(r, protocols, metrics)) + ' |' for r in results]
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
    metrics = [m for m in METRICS if m in meta['metrics']]
    writer.writerow(['dataset', 'image', 'width', 'height', 'protocol', *metrics, 'model_ms', 'scale',
                     'model', 'checkpoint', 'date'])
    for r in results:
        for row in r['per_image']:
            for p in meta['protocols']:  # a metric the protocol does not have (tutorial LPIPS) stays empty
                values = [f"{row[f'{p}_{m}']:.6f}" if f'{p}_{m}' in row else '' for m in metrics]
                writer.writerow([r['name'], row['image'], row['width'], row['height'], p, *values,
                                 f"{row['ms']:.3f}", meta['scale'], meta['model'], meta['checkpoint'] or '',
                                 meta['date']])
    return buf.getvalue()


def lpips_meta(args):
    """What the report says about LPIPS (None without it)."""
    if 'lpips' not in args.metrics:
        return None
    return {'net': args.lpips_net, 'version': models.LPIPS_VERSION, 'better': 'lower',
            'backbone_weights': args.lpips_backbone_weights or "torchvision's ImageNet weights (torch hub cache)",
            'definition': LPIPS_TEXT.format(version=models.LPIPS_VERSION, net=args.lpips_net)
            + ("; bicubic's RGB SR image: the same float64 bicubic on RGB, rounded once" if args.arch == 'bicubic'
               else '')}


def report_paths(results_dir, name, scale, html=False):
    """The report set's files by kind: md, json, csv, and with ``html`` the HTML page."""
    base = os.path.join(results_dir, f"eval_{name}_x{scale}")
    return {'md': base + '.md', 'json': base + '.json', 'csv': base + '_per_image.csv',
            **({'html': base + '.html'} if html else {})}


def check_report_names(results_dir, meta, set_names, html, overwrite):
    """Before any work: the report set this run will write may replace only its own earlier version (the same
    model file, or baseline, and weights, EMA or raw, on the same test sets); one of another model, other weights or
    other sets, which shares its name (eval_<name>_x<scale>: two runs' checkpoint_srresnet.pth), is refused in one
    line unless ``overwrite``."""
    paths = report_paths(results_dir, meta['name'], meta['scale'], html)
    there = [p for p in paths.values() if os.path.lexists(p)]
    if not there or overwrite:
        return
    try:
        with open(paths['json'], encoding='utf-8') as f:
            earlier = json.load(f)
        made_of = (earlier.get('model'), earlier.get('checkpoint') and os.path.abspath(earlier['checkpoint']),
                   earlier.get('weights_selected'), [d.get('name') for d in earlier.get('datasets', [])])
    except (OSError, ValueError, AttributeError, TypeError):
        earlier = made_of = None
    if made_of == (meta['model'], meta['checkpoint'] and os.path.abspath(meta['checkpoint']),
                   meta['weights_selected'], list(set_names)):
        return
    weights = f" ({made_of[2]} weights)" if earlier and made_of[2] else ''
    what = (f"the report of {earlier.get('checkpoint') or earlier.get('model')}{weights} on "
            f"{', '.join(made_of[3]) or 'no test set'}" if earlier else "a report this run did not make")
    raise UserError(f"{there[0]} is {what}: pass --overwrite to replace it, or give another --results-dir")


def write_reports(results_dir, meta, results, html=False):
    """Write the markdown table, the JSON summary and the per-image CSV (and with ``html`` the HTML page), all or
    nothing (a failure while writing any of them leaves none of the new ones and the old set as it was). Returns
    their paths."""
    texts = {'md': markdown_report(meta, results), 'json': json_report(meta, results),
             'csv': csv_report(meta, results)}
    paths = report_paths(results_dir, meta['name'], meta['scale'], html)
    if html:
        texts['html'] = html_report(meta, results)
    atomic_write_many({paths[kind]: text for kind, text in texts.items()})
    return paths


# ----------------------------------------------------------------------------------------------
# Pictures: the HTML report's images (--report html) and the papers' comparison figure (--figure)
# ----------------------------------------------------------------------------------------------


def hwc(img):
    """(3, H, W) uint8 tensor -> (H, W, 3) uint8 numpy array."""
    return img.permute(1, 2, 0).contiguous().numpy()


def auto_box_side(hr_y):
    """The side of the automatic box: a quarter of the shorter side of the (mod-cropped) image, at least 8 px."""
    return max(8, min(hr_y.shape[-2:]) // 4)


def metrics_line(sr_y, hr_y, scale):
    """'PSNR dB / SSIM' of one image, standard protocol (luma, border = scale), as the papers print them."""
    return f"{psnr(sr_y, hr_y, border=scale):.2f} dB / {ssim(sr_y, hr_y, border=scale):.4f}"


def report_image(method, dataset, path, keep, gray):
    """The HTML report's row of one image (reports.ReportImage) from the standard protocol's images ``keep``
    (evaluate_image): the papers' bicubic next to the model, the box where the model gains most PSNR over bicubic,
    the HR thumbnail with that box and the crops of bicubic, the model and HR."""
    scale = method.scale
    bic_y, hr_y, bic_rgb = BicubicMethod('bicubic', scale).standard(keep['hr'], gray, rgb=True, lr=keep.get('lr'))
    sr_y = keep['sr_y']
    box = reports.best_gain_box(sr_y, bic_y, hr_y, auto_box_side(hr_y), border=scale)
    hr = hwc(modcrop(keep['hr'], scale)[:, :hr_y.shape[0], :hr_y.shape[1]])  # the pixels measured
    thumbnail, _ = reports.overview(hr, box, reports.THUMB)
    crops = [(label, reports.png_bytes(Image.fromarray(reports.crop_zoom(img, box, reports.CROP))))
             for label, img in (('bicubic', hwc(bic_rgb)), (method.label, hwc(keep['sr_rgb'])), ('HR', hr))]
    return reports.ReportImage(
        dataset, os.path.basename(path), f"{hr.shape[1]}x{hr.shape[0]} px", psnr(sr_y, hr_y, border=scale),
        ssim(sr_y, hr_y, border=scale), psnr(bic_y, hr_y, border=scale), ssim(bic_y, hr_y, border=scale), box,
        reports.png_bytes(Image.fromarray(thumbnail)), crops)


def html_report(meta, results):
    """The self-contained HTML page of a run: the markdown report's facts and table, and every image's row."""
    facts = [line.strip()[2:] for line in markdown_report(meta, results).splitlines()
             if line.lstrip().startswith('- ')]
    header = ['dataset', 'images'] + [column_title(k) for k in table_columns(meta['protocols'], meta['metrics'])] \
        + ['ms/image']
    rows = [format_row(r, meta['protocols'], meta['metrics']) for r in results]
    images = [row['visual'] for r in results for row in r['per_image']]
    return reports.html_report(f"Evaluation: {meta['name']} x{meta['scale']}", facts, (header, rows), images)


def float64_upscaler(model, scale, name):
    """inference.Upscaler of a copy of ``model`` (a ModelDescription's network) in float64 on the CPU, whole image at
    once. For --figure: fp32 convolutions round differently on each CPU (vector width, summation order), which moves
    a few pixels by a grey level; in float64 those differences stay far below one, so the PNG is the same
    everywhere."""
    return inference.Upscaler(copy.deepcopy(model.network).cpu().double().eval(), model.spec, scale, 'cpu', name=name)


def figure_images(test_sets, names):
    """[(dataset, item)] that --figure shows (item: an image path or an (LR, HR) pair): the images named (file name
    or stem of the HR image, in the order given, every test set's match), or every image of the test sets (at most
    FIGURE_MAX_IMAGES)."""
    if not names:
        found = [(name, path) for name, _, paths in test_sets for path in paths]
        if len(found) > FIGURE_MAX_IMAGES:
            raise UserError(f"--figure: the test sets hold {len(found)} images, more than {FIGURE_MAX_IMAGES} rows; "
                            f"pick some with --figure-images NAME ...")
        return found
    found = []
    for wanted in names:
        matches = [(name, item) for name, _, items in test_sets for item in items
                   if wanted in (os.path.basename(split_item(item)[1]), os.path.splitext(os.path.basename(split_item(item)[1]))[0])]
        if not matches:
            some = ', '.join(os.path.splitext(os.path.basename(split_item(p)[1]))[0] for _, _, items in test_sets
                             for p in items[:4])
            raise UserError(f"--figure-images {wanted}: no such image in the test sets (there are e.g. {some})")
        found += matches
    return found


def figure_path(results_dir, labels, scale):
    return os.path.join(results_dir, f"figure_{'_'.join(labels)}_x{scale}.png")


def figure_record(checkpoint_paths, weights):
    """What a figure is of, as its PNG records it (FIGURE_MODELS): the SHA-256 of each checkpoint file, in order,
    and the weights asked for (None: eval.py's choice). No paths: the same models give the same bytes anywhere."""
    return json.dumps({'checkpoints': [file_digest(p) for p in checkpoint_paths], 'weights': weights})


def check_figure_name(path, record, overwrite):
    """Before any work: the figure at ``path`` may be replaced only by one of the same models and weights (its
    ``record``); a figure of others sharing the name, or a file eval.py did not make, is refused in one line unless
    ``overwrite``."""
    if os.path.isdir(path):
        raise UserError(f"{path} is a folder, where the figure goes: move it, or give another --results-dir")
    if overwrite or not os.path.lexists(path):
        return
    earlier = png_text(path).get(FIGURE_MODELS)
    if earlier == record:
        return
    what = "a figure of other models or weights" if earlier else "a file eval.py --figure did not make"
    raise UserError(f"{path} is {what}: pass --overwrite to replace it, or give another --results-dir")


def make_figure(args):
    """--figure: the papers' comparison figure of every --checkpoint next to bicubic and HR; returns its path. On a
    paired test set every panel is made from the LR given (bicubic: of that LR)."""
    upscalers, labels, scale = [], [], args.scale
    for path in args.checkpoints:
        loaded = checkpoints.load_sr_model(path, 'cpu', expect_scale=scale, res_scale=args.res_scale,
                                           rgb_range=args.rgb_range, weights=args.weights)
        scale = loaded.scale
        upscalers.append(float64_upscaler(loaded, scale, path))
        labels.append(report_name(path, loaded.arch))
        for note in loaded.notes:
            print(f"note: {path}: {note}")
    out, record = figure_path(args.results_dir, labels, scale), figure_record(args.checkpoints, args.weights)
    check_figure_name(out, record, args.overwrite)
    rows, test_sets = [], resolve_test_sets(args, scale)
    for k, (dataset, item) in enumerate(figure_images(test_sets, args.figure_images)):
        path, img, lr = read_item(item, scale, lambda p, i: check_size(p, i, scale, ('standard',), 2),
                                  args.max_image_pixels)
        hr, gray = pil_to_tensor(img), is_grayscale_file(path)
        bic_y, hr_y, bic_rgb = BicubicMethod('bicubic', scale).standard(hr, gray, rgb=True, lr=lr)
        outputs = [inference.standard_protocol(up, hr, scale, gray, lr=lr) for up in upscalers]  # (sr_y, hr_y, sr)
        box = args.figure_box[min(k, len(args.figure_box) - 1)] if args.figure_box else \
            reports.best_gain_box(outputs[0][0], bic_y, hr_y, auto_box_side(hr_y), border=scale)
        try:
            reports.check_box(box, hr_y.shape[1], hr_y.shape[0])
        except ValueError as e:
            raise UserError(f"--figure-box for {path}: {e} (cropped to a multiple of {scale})") from None
        panels = [(('bicubic', metrics_line(bic_y, hr_y, scale)), hwc(bic_rgb))]
        panels += [((label, metrics_line(sr_y, hr_y, scale)), hwc(sr_rgb))
                   for label, (sr_y, _, sr_rgb) in zip(labels, outputs)]
        shown = hwc(modcrop(hr, scale)[:, :hr_y.shape[0], :hr_y.shape[1]])  # the pixels measured
        panels.append((('HR', 'ground truth'), shown))
        name = os.path.splitext(os.path.basename(path))[0]
        rows.append(reports.FigureRow((f"{name} ({dataset})", f"x{scale}, box {','.join(map(str, box))}"
                                       + (', LR given' if lr is not None else '')), shown, box, panels))
        print(f"{dataset}/{name}: box {','.join(map(str, box))}; " + '; '.join(
            f"{label} {text}" for (label, text), _ in panels[:-1]))
    image, _ = reports.render_figure(rows)
    png = reports.png_bytes(image, {FIGURE_MODELS: record})
    atomic_write(out, lambda f: f.write(png))
    print(f"wrote {out} ({image.width}x{image.height} px, {len(png) // 1024} KiB)")
    return out


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------


def convert_legacy(src, dst):
    """--convert-legacy: the tutorial's pickled-model checkpoint -> this suite's format."""
    if not os.path.isfile(src):
        raise UserError(f"checkpoint {src}: no such file")
    try:
        out = checkpoints.convert_legacy_checkpoint(src, dst)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"cannot convert {src} ({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
    print(f"wrote {dst}: {out['arch']}, epoch {out['epoch']}")
    return 0


def paired_protocols(protocols, asked, test_sets):
    """The protocols a run measures: ``protocols``, but the standard one alone when a test set is paired (its LR is
    given; the tutorial protocol makes its own), with a note under --protocol both (the default); UserError under
    --protocol tutorial."""
    if not has_pairs(test_sets) or 'tutorial' not in protocols:
        return protocols
    if asked == 'tutorial':
        raise UserError("--protocol tutorial makes the LR from the HR image: paired test sets (their LR given) are "
                        "measured with --protocol standard")
    print("note: paired test sets (their LR given) are measured in the standard protocol only")
    return tuple(p for p in protocols if p != 'tutorial')


def main(argv=None):
    args = resolve_args(build_parser(), argv)
    if args.convert_legacy:
        return convert_legacy(*args.convert_legacy)
    check_output_folder(args.results_dir, '--results-dir')
    device = pick_device(args.device)
    if args.figure:
        make_figure(args)
        return 0
    lpips_net = load_lpips(args, device)
    method = load_method(args, device)
    test_sets = resolve_test_sets(args, method.scale)
    protocols = paired_protocols(args.protocols, args.protocol, test_sets)
    meta = {'name': method.label, 'model': method.arch, 'checkpoint': getattr(method, 'checkpoint', None),
            'scale': method.scale, 'protocols': list(protocols), 'metrics': list(args.metrics),
            'device': str(method.device), 'date': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
            'weights': method.source, 'weights_selected': getattr(method, 'selected', None),
            'notes': list(method.notes) + (PAIRED_NOTE if has_pairs(test_sets) else []), 'lpips': lpips_meta(args)}
    check_report_names(args.results_dir, meta, [name for name, _, _ in test_sets], args.report == 'html',
                       args.overwrite)
    print(f"eval.py: {describe(meta)}; protocol(s): {', '.join(protocols)}; metrics: {', '.join(args.metrics)}",
          flush=True)
    for note in meta['notes']:
        print(f"note: {note}")
    method.warm_up()
    results = []
    for name, source, paths in test_sets:
        print(f"evaluating {name} ({len(paths)} images)", flush=True)
        results.append(evaluate_dataset(method, name, paths, protocols, source, args.max_image_pixels,
                                        args.metrics, lpips_net, args.lpips_net,
                                        visual=report_image if args.report == 'html' else None))
    print(console_table(results, protocols, args.metrics))
    paths = write_reports(args.results_dir, meta, results, html=args.report == 'html')
    print(f"wrote {', '.join(paths.values())}")
    return 0


if __name__ == '__main__':
    raise SystemExit(run_cli(main))
