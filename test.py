"""Upscale your own images with a trained model of the suite (the tutorial's test.py, for any image).

    python test.py --image photo.jpg               # your results/checkpoint_srresnet.pth, else the shipped x4 model
                                                   # -> results/photo_x4_{bicubic,srresnet,srresnet_compare}.png
    python test.py --image photo.jpg --checkpoint results/espcn_x3_t91.pth   # next to those, no --overwrite needed:
                                                   # -> results/photo_x3_{bicubic,espcn,espcn_compare}.png
    python test.py --image photo.jpg --checkpoint results/checkpoint_srgan.pth
    python test.py --image my_photos/ --output-dir results/my_photos --batch-size 4
    python test.py --image big.png --max-memory 1GB       # bounded memory: tiles are chosen automatically
    python test.py --image big.png --tile 256 --tile-overlap 16 --precision bf16 --device cpu
    python test.py --image photo.png --no-fuse --no-channels-last      # the plain eager model (same output)
    python test.py --image photo.png --self-ensemble --device cuda --precision fp16
    python test.py --image photo.jpg --checkpoint results/checkpoint_srgan.pth --overwrite   # replace earlier outputs
    python test.py --image panorama.jpg --max-image-pixels 200000000     # a photo over PIL's 89.5-megapixel limit
    python test.py --image photo.png --checkpoint edsr_x4-4f62e9ef.pt     # EDSR-PyTorch's EDSR (docs/export.md)
    python test.py --image photo.png --checkpoint RealESRGAN_x4plus.pth   # through spandrel: photo_x4_ESRGAN.png
    python test.py --image clip.mp4 --checkpoint results/espcn_x3_t91.pth   # a video: results/clip_x3_espcn.mp4
    python test.py --image clip.mkv --checkpoint results/espcn_x3_t91.pth --video-crf 14 --video-preset slow
    python test.py --image photo.png --checkpoint results/checkpoint_srgan.pth --weights raw   # not its EMA weights

For every input image, writes under --output-dir (<scale>: the model's factor):
    <stem>_x<scale>_bicubic.png         the input upscaled with MATLAB-style bicubic (imresize of the 8-bit image)
    <stem>_x<scale>_<arch>.png          the super-resolved image (arch: srresnet, srgan, edsr, rcan, espcn, srcnn,
                                        or spandrel's architecture, such as ESRGAN)
    <stem>_x<scale>_<arch>_compare.png  bicubic | SR side by side, labelled, scaled down to at most
                                        --compare-max-width px
and prints the time the model took per image. --image may be a folder: every image in it (same-size images are
batched by --batch-size). A checkpoint holding an exponential moving average of its weights (the trainers'
--ema-decay) upscales with it, as a 'note:' line says; --weights raw takes the trained ones. All inputs are
checked before anything is written, so an error (exit code 2, one line) leaves no output; each image's files are
written all or nothing (temp files renamed into place once all are written), so a full disk leaves every image
complete or absent.

Names: <stem> is the input's file name without its extension. Every name holds the scale, and the SR and
comparison images the model too, so the outputs of different models or scales never share a name: run several
models on one photo into one folder, no --overwrite needed (the same model at the same scale again needs it). The
bicubic image is every model's at its scale: a run that finds test.py's bicubic of the same input file at the same
scale (the file's SHA-256 is a PNG text chunk of the bicubic image) keeps it as it is; --overwrite writes it again.
When inputs would share output names (letter case ignored, as on macOS and Windows: a.png and a.jpg, or a.png and
a.PNG), each of them adds its extension (a_png, a_jpg), and a number when that still clashes (a_png_2), in sorted
order of the file names; an output never takes the name of an input of the run (with --output-dir equal to the
input folder, photo.png and the user's own photo_x4_bicubic.png both get their outputs, and photo_x4_bicubic.png
stays as it is). Outputs carry a PNG text chunk (Software: SR suite test.py) by which test.py knows its own files:
a folder run leaves them out (name one as --image to upscale it again), and a file of an earlier run is replaced
only with --overwrite (without it, test.py stops before writing anything, naming the file). A file in the way
that test.py did not write is never replaced.

Images: any size >= 2x2 px up to --max-image-pixels (default PIL's 89478485; more is refused as a possible
decompression bomb: raise it for a bigger photo you trust), any mode (utils.load_image), regular files only (a
FIFO, socket or device is refused instead of blocking). EXIF orientation is applied; 16-bit images keep
their high byte (v // 256, what Pillow itself does for 16-bit colour PNGs);
grayscale and palette images are upscaled as RGB (the outputs are RGB); transparency (RGBA, LA, PA, palette with
transparency) is kept: the alpha channel is upscaled with bicubic and attached to the SR image, saved as an RGBA
PNG (the comparison shows both on white).

Memory: --max-memory bounds the model's working memory (default auto: half the free GPU memory on CUDA,
otherwise a quarter of the available RAM and at most 1 GiB). When a whole-image pass would exceed it, the image
is processed in overlapping tiles blended seamlessly; --tile forces a tile size. The output is built in 8-bit,
so a 2048x2048 photo upscaled x4 (8192x8192) by SRResNet needs about 1.8 GB of RAM in all on a CPU (measured
with benchmarks/bench_inference.py). Speed: --fuse and --channels-last are on by default
(about 2x on a CPU, same output up to float rounding). --precision auto (the default) runs bf16 on CPUs with
native bf16 (AMX / AVX512-BF16), where it is faster and its output stays above 50 dB PSNR of fp32's on Set5 and
Set14 (benchmarks/bench_precision.py), and fp32 elsewhere (emulated bf16 is slower); it prints what it picked.

Videos: when --image is a video file (a video extension, or a file PyAV reads as one; video.is_video_file),
every frame is upscaled with the same model and options (tiling and --max-memory apply per frame) and written to
<stem>_x<scale>_<arch><ext> (.mp4, .m4v, .mov and .mkv inputs keep their container, any other becomes .mkv):
H.264 (libx264, yuv420p, --video-crf, --video-preset), every frame at its input timestamp, the audio streams
copied untouched.
A progress bar shows frames per second and the time left. A corrupt or truncated video stops with one line
(exit code 2) and leaves no output file. No bicubic or comparison video is made (each would cost a second
encode); video.upscale_video does the work.
"""
import argparse
import collections
import itertools
import os
import sys
import unicodedata

import numpy as np
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin
from tqdm import tqdm

import checkpoints
import inference
import video
from utils import (IMAGE_EXTENSIONS, AtomicFileSet, UserError, bicubic_upscale, check_output_folder, file_digest,
                   list_image_files, load_image, make_parser, pick_device, pil_to_tensor, png_text, positive_int,
                   run_cli, timer)

SOFTWARE = 'SR suite test.py'  # the PNG text chunk (key Software) that marks this script's own outputs
INPUT_DIGEST = 'SR suite input SHA-256'  # the PNG text chunk of a bicubic output: the input file it was made from
OUT_OF_MEMORY = "lower --max-memory or --batch-size, or pass --tile"  # how to upscale in less memory
X264_PRESETS = ('ultrafast', 'superfast', 'veryfast', 'faster', 'fast', 'medium', 'slow', 'slower', 'veryslow')


def build_parser():
    parser = make_parser(__doc__, data=False)
    parser.add_argument('--checkpoint',
                        help="checkpoint of any architecture of the suite, an SRGAN one, the tutorial's own, or "
                             "published weights (EDSR-PyTorch, RCAN, BasicSR, spandrel's architectures); default: "
                             "your own results/checkpoint_srresnet.pth when it exists, else the shipped SRResNet x4, "
                             "results/srresnet_x4_291.pth")
    parser.add_argument('--model', choices=sorted(checkpoints.SHIPPED_MODELS),
                        help='a shipped x4 model by what it is for, instead of --checkpoint: ' + '; '.join(
                            f"'{k}': {suits}" for k, (_, suits) in sorted(checkpoints.SHIPPED_MODELS.items())))
    parser.add_argument('--image', default='results/test.jpg',
                        help='an image file, a folder of images, or a video file')
    parser.add_argument('--output-dir', default='results', help='where the output PNGs (and videos) go')
    parser.add_argument('--scale', type=positive_int, help='expected upscaling factor (checked against the checkpoint)')
    parser.add_argument('--batch-size', type=positive_int, default=1, help='same-size images upscaled together')
    parser.add_argument('--tile', type=positive_int, help='tile side in input px (default: only when memory needs it)')
    parser.add_argument('--tile-overlap', type=int, default=16, help='input px shared by neighbouring tiles')
    parser.add_argument('--max-memory', default='auto',
                        help="working-memory budget for the model, e.g. 2GB or 512MB (1GB = 2**30 bytes), or 'auto'")
    parser.add_argument('--precision', choices=('auto', 'fp32', 'bf16', 'fp16'), default='auto',
                        help='autocast for the network: bf16 on CPU or CUDA, fp16 on CUDA; auto: bf16 on CPUs that '
                             'run it natively (AMX/AVX512-BF16), else fp32')
    parser.add_argument('--self-ensemble', action='store_true', help='average over 8 flips/rotations (8x slower)')
    parser.add_argument('--channels-last', action=argparse.BooleanOptionalAction, default=True,
                        help='channels_last memory format')
    parser.add_argument('--fuse', action=argparse.BooleanOptionalAction, default=True,
                        help='fold BatchNorm and move the last conv before the pixel shuffle (same output up to '
                             'rounding; with --channels-last about 2x faster on a CPU)')
    parser.add_argument('--compare-max-width', type=positive_int, default=4096,
                        help='the comparison image is scaled down to at most this width')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace the outputs of an earlier run of test.py (never any other file)')
    parser.add_argument('--max-image-pixels', type=positive_int, default=Image.MAX_IMAGE_PIXELS,
                        help='images with more pixels are refused as possible decompression bombs')
    checkpoints.add_assumption_args(parser)
    checkpoints.add_weights_arg(parser)
    parser.add_argument('--video-crf', type=int, default=18,
                        help='videos: H.264 quality, 0 (lossless) to 51 (worst); 18 looks like the source')
    parser.add_argument('--video-preset', choices=X264_PRESETS, default='medium',
                        help='videos: H.264 encoder speed (slower presets make smaller files at the same quality)')
    return parser


def upscale_options(args):
    """The upscaling flags as inference.UpscaleOptions (--max-memory read here, the one check of it)."""
    return inference.UpscaleOptions(tile=args.tile, tile_overlap=args.tile_overlap,
                                    max_memory=inference.memory_option(args.max_memory, '--max-memory'),
                                    precision=args.precision, self_ensemble=args.self_ensemble,
                                    channels_last=args.channels_last, fuse=args.fuse)


def load_upscaler(args, device):
    """The inference.ImageUpscaler of --checkpoint with the upscaling flags (its label names the outputs: 'srgan' for
    an SRGAN checkpoint); prints the checkpoint's notes, and what --precision auto picked."""
    options = upscale_options(args)
    if args.model and args.checkpoint:
        raise UserError(f"--model {args.model} names a shipped model, --checkpoint a file: give one of them")
    path = (args.checkpoint or (checkpoints.shipped_model(args.model) if args.model else None)
            or checkpoints.default_checkpoint())
    model = checkpoints.load_sr_model(path, device, expect_scale=args.scale, res_scale=args.res_scale,
                                      rgb_range=args.rgb_range, weights=args.weights)
    for note in model.notes:
        print(f"note: {note}")
    upscaler = inference.ImageUpscaler(model, device, options, out_of_memory=OUT_OF_MEMORY)
    picked = upscaler.precision_note('--precision picks another')
    if picked:
        print(f"precision: {picked}")
    return upscaler


def is_own_output(path):
    """True when ``path`` is a PNG written by this script (its Software text chunk)."""
    return png_text(path).get('Software') == SOFTWARE


def same_folder(a, b):
    """True when the folders a and b are one folder (whatever the spelling, letter case or links)."""
    try:
        return os.path.samefile(a or '.', b or '.')
    except OSError:
        return False


def find_inputs(image):
    """Image paths to upscale: the file itself, or the images of a folder minus this script's own outputs (of an
    earlier run; one passed by name is upscaled). UserError when there is nothing to do."""
    if not os.path.isdir(image):
        if not os.path.lexists(image):
            raise UserError(f"--image {image}: no such file or folder")
        return [image]
    listed = list_image_files(image)
    paths = [p for p in listed if not is_own_output(p)]
    if len(paths) < len(listed):
        print(f"{image}: {len(listed) - len(paths)} file(s) written by test.py left out (pass one as --image to "
              f"upscale it again)")
    if not paths:
        found = 'only outputs of test.py' if listed else f"no images (looked for {', '.join(IMAGE_EXTENSIONS)})"
        raise UserError(f"--image {image}: {found} in this folder")
    return paths


def name_key(name):
    """File names as a case-insensitive filesystem compares them (letter case and Unicode normalisation)."""
    return unicodedata.normalize('NFC', name).casefold()


def output_suffixes(label, scale):
    """{role: suffix} of the output names <stem>_<suffix>.png of one input upscaled x ``scale`` by the model
    ``label``: the scale in every name and the model in each of the model's own, so that the outputs of different
    models or scales never share a name; the bicubic image (role bicubic) is every model's at that scale."""
    return {'bicubic': f"x{scale}_bicubic", 'sr': f"x{scale}_{label}", 'compare': f"x{scale}_{label}_compare"}


def output_stems(paths, kinds, reserved=()):
    """{path: stem of its output names <stem>_<kind>.png}, unique under name_key across every input and kind (the
    suffixes of output_suffixes), and never one of the ``reserved`` names (the inputs that live in the output
    folder).

    The stem is the file name without extension; inputs whose stems clash (a.png, a.jpg, A.png) add their
    extension (a_png, a_jpg), then a number if that still clashes (a_png_2). Inputs with a stem of their own
    choose first, then the rest, each in sorted order of the file names: the result depends on the set of inputs
    only, not on their order."""
    split = {p: os.path.splitext(os.path.basename(p)) for p in paths}
    shared = collections.Counter(name_key(stem) for stem, _ in split.values())
    taken = {name_key(n) for n in reserved}

    def candidates(path):
        stem, ext = split[path]
        if shared[name_key(stem)] == 1:
            yield stem
        tagged = f"{stem}_{ext[1:].lower()}" if ext else stem
        yield tagged
        for i in itertools.count(2):
            yield f"{tagged}_{i}"

    order = sorted(paths, key=lambda p: (shared[name_key(split[p][0])] > 1, os.path.basename(p), p))
    stems = {}
    for path in order:
        for stem in candidates(path):
            names = {name_key(f"{stem}_{kind}.png") for kind in kinds}
            if not names & taken:
                taken |= names
                stems[path] = stem
                break
    return stems


def plan_outputs(paths, output_dir, label, scale, overwrite):
    """{input path: {role: output path}} for the roles of output_suffixes (bicubic, sr, compare), checked before
    anything is written: a file in the way that this script did not write is refused; one of an earlier run needs
    ``overwrite``, except the bicubic image of the same input file (its INPUT_DIGEST) at the same scale, which every
    model shares: without ``overwrite`` that one is kept as it is (its role maps to None: not written again)."""
    suffixes = output_suffixes(label, scale)
    reserved = [os.path.basename(p) for p in paths if same_folder(os.path.dirname(p), output_dir)]
    stems = output_stems(paths, suffixes.values(), reserved)
    plan = {p: {role: os.path.join(output_dir, f"{stems[p]}_{suffix}.png") for role, suffix in suffixes.items()}
            for p in paths}
    for src, outputs in plan.items():
        for role, path in list(outputs.items()):
            if not os.path.lexists(path):
                continue
            if os.path.isdir(path) or not is_own_output(path):
                raise UserError(f"{path} exists and was not written by test.py: it is left as it is; move it, "
                                f"or choose another --output-dir")
            if overwrite:
                continue
            if role == 'bicubic' and png_text(path).get(INPUT_DIGEST) == file_digest(src):
                outputs[role] = None  # this input's bicubic at this scale, from a run with another model: kept
                continue
            raise UserError(f"{path} exists (written by an earlier run of test.py): pass --overwrite to replace "
                            f"the outputs of earlier runs, or choose another --output-dir")
    return plan


def check_inputs(paths, min_size, max_pixels=None):
    """Decode every input once (so a bad file fails before anything is written). Returns {path: (w, h)}."""
    sizes = {}
    for path in paths:
        img = load_image(path, keep_alpha=True, max_pixels=max_pixels)
        if img.width < min_size or img.height < min_size:
            raise UserError(f"{path} is {img.width}x{img.height} px; the model needs at least {min_size}x{min_size}")
        sizes[path] = img.size
    return sizes


def make_batches(paths, sizes, batch_size):
    """Lists of at most batch_size paths of equal image size, in input order of their first member."""
    groups = {}
    for path in paths:
        groups.setdefault(sizes[path], []).append(path)
    order = {p: i for i, p in enumerate(paths)}
    batches = [g[i:i + batch_size] for g in groups.values() for i in range(0, len(g), batch_size)]
    return sorted(batches, key=lambda b: order[b[0]])


def bicubic_image(img, scale):
    """MATLAB-style bicubic x scale of a PIL RGB/RGBA image (alpha included), computed in bands of rows."""
    up = bicubic_upscale(pil_to_tensor(img), scale)  # (C, s*h, s*w) uint8, C = 3 or 4
    return Image.fromarray(np.ascontiguousarray(up.permute(1, 2, 0).numpy()))  # RGB or RGBA from the shape


def png_writer(img, text=None):
    """A write function for AtomicFileSet: ``img`` as a PNG marked as this script's output (see is_own_output), with
    the ``text`` chunks ({key: value}) too."""
    info = PngImagePlugin.PngInfo()
    info.add_text('Software', SOFTWARE)
    for key, value in (text or {}).items():
        info.add_text(key, value)
    return lambda f: img.save(f, format='PNG', pnginfo=info)


def thumbnail(img, width):
    """img scaled to ``width`` px wide (kept when already that size), composited on white, RGB."""
    if img.width != width:
        height = max(1, round(img.height * width / img.width))
        img = img.resize((width, height), Image.Resampling.LANCZOS, reducing_gap=3.0)
    if img.mode == 'RGBA':
        background = Image.new('RGBA', img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return img.convert('RGB')


def panel_width(width, max_width, gap):
    """Width of each of the two comparison panels: the image width, or less to fit max_width."""
    return max(1, min(width, (max_width - gap) // 2))


def compare_image(left, right, labels, gap=8):
    """Two same-size RGB panels side by side on white, each labelled in its top-left corner."""
    w, h = left.size
    canvas = Image.new('RGB', (2 * w + gap, h), (255, 255, 255))
    canvas.paste(left, (0, 0))
    canvas.paste(right, (w + gap, 0))
    draw = ImageDraw.Draw(canvas)
    try:
        font = ImageFont.load_default(size=max(10, min(h, w) // 20))
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the fixed bitmap font
        font = ImageFont.load_default()
    for x0, text in ((0, labels[0]), (w + gap, labels[1])):
        box = draw.textbbox((x0 + 4, 4), text, font=font)
        draw.rectangle((box[0] - 3, box[1] - 3, box[2] + 3, box[3] + 3), fill=(0, 0, 0))
        draw.text((x0 + 4, 4), text, fill=(255, 255, 255), font=font)
    return canvas


def save_outputs(img, sr, outputs, label, scale, compare_max_width, source):
    """Write the outputs of one input (PIL, read from the file ``source``) and its SR ((3, H, W) uint8) to
    ``outputs`` ({role: path}, plan_outputs: a bicubic of None is kept as it is) all or nothing, holding at most one
    full-size PIL image at a time (each goes to its temp file as it is made). Returns the paths written."""
    width = panel_width(img.width * scale, compare_max_width, gap=8)
    with AtomicFileSet() as files:
        bicubic = bicubic_image(img, scale)
        if outputs['bicubic']:
            files.write(outputs['bicubic'], png_writer(bicubic, {INPUT_DIGEST: file_digest(source)}))
        left = thumbnail(bicubic, width)
        del bicubic
        result = inference.sr_image(sr, img, scale)  # alpha (if any) by bicubic, as in bicubic's own output
        files.write(outputs['sr'], png_writer(result))
        right = thumbnail(result, width)
        del result
        files.write(outputs['compare'], png_writer(compare_image(left, right, ('bicubic', f"{label} x{scale}"))))
    return [path for path in outputs.values() if path]


def upscale_video_file(args, upscaler, device):
    """--image is a video: write <stem>_x<scale>_<label><ext> to --output-dir (video.upscale_video: every frame through
    ``upscaler``), with a progress bar (frames/s, time left), and print what was done."""
    label, scale = upscaler.label, upscaler.scale
    if not 0 <= args.video_crf <= 51:
        raise UserError(f"--video-crf {args.video_crf}: must be 0 to 51")
    info = video.probe_video(args.image)
    dst = video.video_output_path(args.image, args.output_dir, label, scale)
    if os.path.lexists(dst):  # the rule for images: only our own earlier output, and only with --overwrite
        if video.video_tags(dst).get('comment') != SOFTWARE:
            raise UserError(f"{dst} exists and test.py did not write it: choose another --output-dir")
        if not args.overwrite:
            raise UserError(f"{dst} is the output of an earlier run: pass --overwrite to replace it")
    print(f"{args.image}: {info.width}x{info.height} at {float(info.fps):.3f} fps, "
          f"{info.expected_frames or 'unknown number of'} frames, audio: {', '.join(info.audio) or 'none'}")
    with tqdm(total=info.expected_frames, unit='frame', desc=os.path.basename(args.image), dynamic_ncols=True) as bar:
        result = video.upscale_video(upscaler, args.image, dst, crf=args.video_crf, preset=args.video_preset,
                                     progress=lambda done, total: bar.update(done - bar.n), tags={'comment': SOFTWARE})
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    (w, h), (sw, sh) = result.in_size, result.out_size
    print(f"{dst}: {result.frames} frames {w}x{h} -> {sw}x{sh} ({label} x{scale}), {result.audio_packets} audio "
          f"packets copied, {result.seconds:.1f} s ({result.frames / result.seconds:.2f} frames/s; the model "
          f"{result.frames / max(result.model_seconds, 1e-9):.2f} frames/s) on {device}")


def main(argv=None):
    args = build_parser().parse_args(argv)
    check_output_folder(args.output_dir, '--output-dir')
    device = pick_device(args.device)
    upscaler = load_upscaler(args, device)
    label, scale = upscaler.label, upscaler.scale
    if video.is_video_file(args.image):
        return upscale_video_file(args, upscaler, device)
    paths = find_inputs(args.image)
    sizes = check_inputs(paths, upscaler.min_input_size(), args.max_image_pixels)
    outputs, total = plan_outputs(paths, args.output_dir, label, scale, args.overwrite), 0.
    for batch in make_batches(paths, sizes, args.batch_size):
        images = [load_image(p, keep_alpha=True, max_pixels=args.max_image_pixels) for p in batch]
        start = timer()
        sr = upscaler.upscale_images(images)  # (N, 3, s*h, s*w) uint8
        seconds = timer() - start
        total += seconds
        for i, (path, img) in enumerate(zip(batch, images)):
            save_outputs(img, sr[i], outputs[path], label, scale, args.compare_max_width, path)
            print(f"{path}: {img.width}x{img.height} -> {img.width * scale}x{img.height * scale} "
                  f"({label} x{scale}) in {seconds / len(batch):.3f} s")
        del sr, images
    print(f"{len(paths)} image(s) in {args.output_dir}: mean {total / len(paths):.3f} s per image on {device}")


if __name__ == '__main__':
    raise SystemExit(run_cli(main))
