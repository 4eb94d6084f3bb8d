"""Inference: the one way each model is fed, Upscaler (tiling, memory plan, self-ensemble, precision), the one
upscaling path of test.py, app.py and eval.py (ImageUpscaler), the papers' evaluation protocol used by eval.py and by
validation during training, and the network with its conventions in one graph (export.py). Checkpoints are
checkpoints.py's, videos video.py's.

    import checkpoints, inference
    model = checkpoints.load_sr_model('results/espcn_x3_t91.pth', 'cpu')   # a ModelDescription
    upscaler = inference.ImageUpscaler(model, 'cpu', inference.UpscaleOptions(max_memory='auto'))
    sr = upscaler.upscale_images([img])[0]            # img: a PIL image -> (3, 3h, 3w) uint8
    inference.sr_image(sr, img, model.scale)          # the SR image (PIL), its alpha channel (if any) by bicubic
    sr_rgb, sr_y = upscaler.upscale(lr)               # lr (N, 3, h, w) RGB in [0, 1] (Upscaler.upscale)

Imports utils, models and checkpoints.
"""
import contextlib
import math
import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

import models
# The loader's names, importable from here as before (checkpoints.py is where they live).
from checkpoints import (ModelDescription, add_assumption_args, add_weights_arg, convert_legacy_checkpoint,  # noqa: F401
                         describe_checkpoint, load_sr_model, suite_checkpoint)
from utils import (UserError, auto_precision, autocast, bicubic_upscale, check_precision, convert_image, gray_uint8,
                   imresize, imresize_up, is_out_of_memory, modcrop, parse_memory, pil_to_tensor, precision_caveat,
                   psnr, rgb_to_y, rgb_to_y_uint8, rgb_to_ycbcr, to_uint8, ycbcr_to_rgb)

# ----------------------------------------------------------------------------------------------
# How each architecture is fed: RGB in [0, 1] in, RGB in [0, 1] out (models.ArchSpec says the rest)
# ----------------------------------------------------------------------------------------------


def model_input(spec, lr, scale, resize=imresize):
    """What the network takes, from lr (N, 3, h, w) RGB in [0, 1]: RGB in spec.in_type for RGB models; for
    Y-channel models the BT.601 luma (N, 1, h, w) in [0, 1], bicubic-upscaled to (N, 1, s*h, s*w) when
    spec.pre_upsample (SRCNN). ``resize``: the MATLAB bicubic used (utils.imresize_up inside an ONNX graph)."""
    if spec.color == 'rgb':
        return convert_image(lr, '[0, 1]', spec.in_type)
    y = rgb_to_y(lr)  # (N, 1, h, w)
    return resize(y, scale) if spec.pre_upsample else y


def model_target(spec, hr):
    """The training target in the network's output space, from hr (N, 3, H, W) RGB in [0, 1]: RGB in
    spec.out_type, or the luma (N, 1, H, W) in [0, 1] for Y-channel models. The loss is computed there."""
    if spec.color == 'rgb':
        return convert_image(hr, '[0, 1]', spec.out_type)
    return rgb_to_y(hr)


def model_output(spec, out, lr, scale, resize=imresize):
    """The network's output as RGB: (sr_rgb (N, 3, s*h, s*w) float32 in [0, 1], unclamped; sr_y (N, s*h, s*w) the
    model's own luma for Y-channel models, else None). Y-channel models get Cb/Cr of lr (N, 3, h, w) by MATLAB
    bicubic (``resize``, as in model_input)."""
    if spec.color == 'rgb':
        return convert_image(out.float(), source=spec.out_type, target='[0, 1]'), None
    sr_y = out.float()  # (N, 1, s*h, s*w), in [0, 1]
    cbcr = resize(rgb_to_ycbcr(lr)[:, 1:], scale).float()  # (N, 2, s*h, s*w)
    return ycbcr_to_rgb(torch.cat([sr_y, cbcr], dim=1)), sr_y[:, 0]


# ----------------------------------------------------------------------------------------------
# Upscaler: any architecture on RGB images, whole or in tiles, within a memory budget
# ----------------------------------------------------------------------------------------------


def auto_memory_budget(device):
    """The working-memory budget test.py uses for --max-memory auto: on CUDA half of the free device memory,
    elsewhere a quarter of the available RAM, at most 1 GiB (CPU speed hardly depends on the tile size)."""
    device = torch.device(device)
    if device.type == 'cuda':
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.5)
    available = None
    try:
        with open('/proc/meminfo') as f:
            for line in f:
                if line.startswith('MemAvailable:'):
                    available = int(line.split()[1]) * 1024
    except OSError:
        pass
    if available is None:
        try:
            available = os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
        except (AttributeError, ValueError, OSError):
            available = 4 * 2 ** 30
    return int(min(2 ** 30, available // 4))


def tile_starts(length, tile, overlap):
    """Start offsets of windows ``tile`` px long covering [0, length), spread evenly so that neighbours share at
    least ``overlap`` px (one window at 0 when length <= tile). Needs tile > overlap >= 0."""
    if length <= tile:
        return [0]
    n = math.ceil((length - overlap) / (tile - overlap))
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def fit_tile(length, tile, overlap):
    """The window size actually used along an axis: the smallest one that covers ``length`` with as many windows
    as ``tile`` needs, so the recomputed overlap is as small as possible (512 px, tile 256, overlap 16: three
    windows of 182 px instead of three of 256)."""
    if length <= tile:
        return length
    n = math.ceil((length - overlap) / (tile - overlap))
    return min(tile, -(-(length + (n - 1) * overlap) // n))


def _blend_ramp(starts, i, size, length, scale, device):
    """Blending weights (size * scale,) along one axis for window i of size ``size`` LR px at starts[i].

    Where two windows share W LR px (W * scale output px), the outer quarter on each side is ignored (weight 0:
    those pixels saw zero padding instead of their neighbours) and the middle half is a linear cross-fade, so
    the two weights add up to 1. Image borders are not ramped.
    """
    n = size * scale
    pos = torch.arange(n, dtype=torch.float32, device=device) + 0.5  # output pixel centres from the window start
    weight = torch.ones(n, dtype=torch.float32, device=device)
    a = starts[i]
    if i > 0:  # overlap with the previous window: [a, previous end)
        shared = (starts[i - 1] + size - a) * scale
        if shared > 0:
            margin = shared // 4
            weight = torch.minimum(weight, ((pos - margin) / (shared - 2 * margin)).clamp(0, 1))
    if i + 1 < len(starts):  # overlap with the next window: [next start, a + size)
        shared = (a + size - starts[i + 1]) * scale
        if shared > 0:
            margin = shared // 4
            weight = torch.minimum(weight, ((n - pos - margin) / (shared - 2 * margin)).clamp(0, 1))
    return weight


def check_finite_output(out, name, model=None, precision='fp32'):
    """UserError when a network's output ``out`` holds NaN or infinity: the one rule for every pass (Upscaler, and
    eval.py's direct tutorial-protocol call). The message names ``name`` and the likely cause: non-finite weights
    in ``model`` (a diverged training), or an overflow in reduced precision."""
    if math.isfinite(torch.sum(out, dtype=torch.float32).item()):  # NaN and inf survive a sum; no mask is allocated
        return
    if model is not None and any(not bool(torch.isfinite(p).all()) for p in model.state_dict().values()
                                 if torch.is_tensor(p) and p.is_floating_point()):
        cause = "its weights hold NaN/inf values (a diverged training?): use an earlier checkpoint"
    elif precision != 'fp32':
        cause = f"an overflow in {precision}? try --precision fp32"
    else:
        cause = "the network overflowed in fp32 (its weights are finite)"
    raise UserError(f"{name} produced NaN/inf values: {cause}")


def pad_to_requirements(x, spec):
    """x (N, C, h, w) padded at the bottom and right to what spec's network needs (spec.min_size, multiple_of,
    square), by reflection and, where a side is too short to reflect, replication (as spandrel pads); x itself
    when it already fits."""
    h, w = x.shape[-2:]
    th, tw = max(h, spec.min_size), max(w, spec.min_size)
    th, tw = -(-th // spec.multiple_of) * spec.multiple_of, -(-tw // spec.multiple_of) * spec.multiple_of
    if spec.square:
        th = tw = max(th, tw)
    if (th, tw) == (h, w):
        return x
    rh, rw = min(th - h, h - 1), min(tw - w, w - 1)  # reflection repeats no edge pixel: at most side - 1
    x = torch.nn.functional.pad(x, (0, rw, 0, rh), mode='reflect')
    return torch.nn.functional.pad(x, (0, tw - w - rw, 0, th - h - rh), mode='replicate')


class Upscaler:
    """Runs any architecture of the suite (or a spandrel network) on RGB images, hiding its input/output conventions.

    ``spec``: the models.ArchSpec that describes the network (a ModelDescription's spec, which is right also for
    EDSR/RCAN in [0, 1] and spandrel networks; models.arch_spec for a network built here). Inputs are padded to the
    spec's size requirements (reflected, then replicated where reflection runs out) and the outputs cropped back.
    The scripts do not build one themselves: ImageUpscaler does, from a ModelDescription and UpscaleOptions.

    ``upscale(lr)`` takes (N, 3, h, w) RGB in [0, 1] on any device and returns (sr_rgb, sr_y):
    sr_rgb (N, 3, s*h, s*w) in [0, 1] (float32, unclamped), and for Y-channel models the model's own luma
    (N, s*h, s*w) in [0, 1] (None for RGB models). Y-channel models upscale Cb/Cr with MATLAB bicubic.
    ``upscale_uint8(lr)`` returns the rounded RGB image (N, 3, s*h, s*w) uint8 on the CPU, built tile by tile
    without a full-size float copy. Both take ``progress=callable(done, total)``, called after every tile (a
    whole-image pass is one step), for progress bars.

    Options (keywords; the defaults run the whole image at once in fp32, exactly as before):
      tile: largest LR window side in px: the image is cut into equal windows (as few as this allows, shrunk by
        fit_tile) whose neighbours share at least ``tile_overlap`` LR px; each window's output is weighted by a
        ramp that ignores the outer quarter of each shared strip and cross-fades across the middle half (see
        _blend_ramp), then weights are normalised. The overlap should be about twice the distance at which the
        network stops seeing a pixel (16 suits SRResNet); with 0 the cuts show wherever the network has spatial
        context. Models with global pooling (RCAN's channel attention) see per-window statistics, so their tiled
        output is close to, not equal to, the whole-image one. Y-models tile the whole pipeline (Y through the
        model, Cb/Cr through bicubic); SRCNN's pre-upsampling happens per window, so it sees tile_overlap * scale
        px of upscaled context.
      max_memory: working-memory budget in bytes (or '2GB'): when tile is None and the estimate of a whole-image
        pass (memory_per_pixel() x pixels) exceeds it, the largest tile that fits is chosen. The result buffer
        itself comes on top (4 bytes x 3 x s^2 per LR px for upscale(), 1 byte for upscale_uint8()).
      precision: 'fp32', 'bf16' (CPU or CUDA) or 'fp16' (CUDA or MPS): autocast around the network only ('auto':
        utils.auto_precision's pick, with its reason in ``precision_reason``); the
        input and output conversions stay in fp32.
      self_ensemble: average the outputs of the 8 flips/rotations of the input (EDSR's x8 geometric ensemble).
      channels_last: run the network in channels_last memory format (converts ``model`` in place, or the copy
        made by fuse).
      fuse: run a copy made by models.fuse_for_inference (BatchNorm folded, the last conv on the sub-pixel grid): same
        results up to float rounding; with channels_last, SRResNet x4 runs ~1.9x faster on a CPU.
      name: what the model is called in errors (the checkpoint's path).

    Every pass of the network is checked: an output holding NaN or infinity (NaN weights from a diverged
    training, or an overflow in fp16/bf16) raises UserError naming ``name`` (check_finite_output), instead of
    becoming a black or saturated image.
    """

    def __init__(self, model, spec, scale, device, *, tile=None, tile_overlap=16, max_memory=None,
                 precision='fp32', self_ensemble=False, channels_last=False, fuse=False, name=None):
        if not isinstance(spec, models.ArchSpec):
            raise TypeError(f"spec must be a models.ArchSpec (a ModelDescription's spec, or models.arch_spec), not "
                            f"{spec!r}")
        self.model, self.spec, self.scale, self.device = model, spec, int(scale), torch.device(device)
        self.name = name or 'the model'
        # the input's dtype: float32, or float64 for a network in float64 (eval.py --figure: the same pixels on
        # every CPU, whatever its vector width and summation order)
        self.dtype = torch.float64 if any(p.dtype == torch.float64 for p in model.parameters()) else torch.float32
        if tile is not None and int(tile) < max(self.min_input_size(), 1):
            raise UserError(f"tile {tile} is too small: at least {self.min_input_size()} px")
        if tile_overlap < 0 or (tile is not None and tile_overlap >= tile):
            smaller = f" and smaller than the tile ({tile})" if tile is not None else ''
            raise UserError(f"tile overlap {tile_overlap}: must be >= 0{smaller}")
        self.tile, self.tile_overlap = (None if tile is None else int(tile)), int(tile_overlap)
        try:
            self.max_memory = parse_memory(max_memory)
        except ValueError as e:
            raise UserError(f"max memory: {e}") from None
        self.precision_reason = None
        if precision == 'auto':
            precision, self.precision_reason = auto_precision(self.device, self.spec.precisions,
                                                                 self.spec.cpu_bf16_pays)
        self.precision = check_precision(precision, self.device)
        if self.precision_reason is None:
            self.precision_reason = precision_caveat(self.precision, self.device)
        if self.precision not in self.spec.precisions:
            raise UserError(f"--precision {self.precision}: {self.spec.name} runs in {', '.join(self.spec.precisions)} "
                            f"only")
        self.self_ensemble, self.channels_last, self.fuse = bool(self_ensemble), bool(channels_last), bool(fuse)
        if self.fuse:
            self.model = models.fuse_for_inference(self.model)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self._per_pixel = None

    def min_input_size(self):
        """Smallest LR side the model accepts (the Discriminator-free models accept 1 px; keep 2 for bicubic)."""
        return 2

    # -- the network and its conventions --------------------------------------------------------

    def _net(self, x):
        h, w = x.shape[-2:]
        x = pad_to_requirements(x, self.spec)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.precision):
            out = self.model(x)
        k = out.shape[-2] // x.shape[-2]  # output px per input px: the scale (1 for SRCNN's pre-upscaled input)
        return out if out.shape[-2:] == (h * k, w * k) else out[..., :h * k, :w * k]

    def _body(self, x):
        """The network on x in its input space; with self_ensemble, the mean over the 8 dihedral transforms."""
        if not self.self_ensemble:
            return self._net(x)
        total = None
        for k in range(4):
            for flip in (False, True):
                t = torch.rot90(x.flip(-1) if flip else x, k, dims=(-2, -1))
                y = torch.rot90(self._net(t).float(), -k, dims=(-2, -1))
                y = y.flip(-1) if flip else y
                total = y.clone() if total is None else total.add_(y)
        return total.div_(8.)

    def _sr(self, lr):
        """One pass over lr (N, 3, h, w) in [0, 1]: (sr_rgb, sr_y or None), as documented for upscale()."""
        lr = lr.to(self.device, self.dtype)  # (N, 3, h, w), in [0, 1]
        out = self._body(model_input(self.spec, lr, self.scale))  # (N, C, s*h, s*w), in spec.out_type
        check_finite_output(out, self.name, self.model, self.precision)
        return model_output(self.spec, out, lr, self.scale)

    def _sr_stacked(self, lr):
        """(N, C, s*h, s*w) float32: RGB, plus the model's luma as a 4th channel for Y-models."""
        sr, sr_y = self._sr(lr)
        return sr if sr_y is None else torch.cat([sr, sr_y[:, None]], dim=1)

    # -- memory estimate and tiling ------------------------------------------------------------------

    def memory_per_pixel(self):
        """Estimated peak working memory (bytes) per LR pixel of a whole-image fp32 pass.

        Measured once: a 16x16 probe runs through the network with forward hooks on every module, which finds the
        largest tensor any module outputs per input pixel (B). While that layer runs, its input, its output and
        a skip tensor may be alive, so the network is charged 3 B per input pixel (SRResNet x4: 3 x 4 KiB, where
        its real peak, the second pixel-shuffle stage, is about 9 KiB). On top: the input conversions, 3 float32
        copies of the output (conversion, weighting, rounding), 2 more with self_ensemble, and for Y-models
        MATLAB bicubic's float64 work space (8 bytes x (6 taps + 2) per upscaled Cb/Cr/Y value).
        """
        if self._per_pixel is None:
            spec, s = self.spec, self.scale
            in_channels = 3 if spec.color == 'rgb' else 1
            sizes = []

            def hook(module, inputs, output):
                if torch.is_tensor(output):
                    sizes.append(output.numel() * 4)

            handles = [m.register_forward_hook(hook) for m in self.model.modules()]
            side = -(-max(16, spec.min_size) // spec.multiple_of) * spec.multiple_of  # a size the network takes
            try:
                with torch.no_grad():
                    self.model(torch.zeros(1, in_channels, side, side, device=self.device))
            finally:
                for h in handles:
                    h.remove()
            inputs_per_lr = s * s if spec.pre_upsample else 1  # model-input px per LR px
            network = 3 * max(sizes) / (side * side) * inputs_per_lr
            out_channels = 3 if spec.color == 'rgb' else 4
            output = 4 * out_channels * s * s * (3 + (2 if self.self_ensemble else 0))
            inputs = 4 * 3 * 3
            bicubic = 0 if spec.color == 'rgb' else 8 * (6 + 2) * s * s * (3 if spec.pre_upsample else 2)
            self._per_pixel = int(math.ceil(network + output + inputs + bicubic))
        return self._per_pixel

    def _tiling_cost(self, n, h, w, tile):
        """Estimated bytes for tiles of ``tile`` px: one window's pass plus the float32 band of output rows."""
        th, tw = fit_tile(h, tile, self.tile_overlap), fit_tile(w, tile, self.tile_overlap)
        s, c = self.scale, 3 if self.spec.color == 'rgb' else 4
        window = n * th * tw * (self.memory_per_pixel() + 4 * c * s * s)
        band = (2 * n * c + 1) * th * s * w * s * 4
        return window + band

    def plan_tile(self, n, h, w):
        """Tile side (LR px) for a batch of n h x w images, or None for a whole-image pass: ``tile`` when given;
        else None when there is no max_memory or the whole-image estimate fits it; else the largest tile (a
        multiple of 8) whose estimate fits, never below 2 * overlap + 16 (with a warning when even that does not)."""
        if self.tile is not None:
            return self.tile
        if self.max_memory is None or n * h * w * self.memory_per_pixel() <= self.max_memory:
            return None
        smallest = 2 * self.tile_overlap + 16
        best = None
        for t in range(max(h, w) // 8 * 8, smallest - 1, -8):
            if self._tiling_cost(n, h, w, t) <= self.max_memory:
                best = t
                break
        if best is None:
            best = smallest
            warnings.warn(f"max_memory {self.max_memory} bytes is too small for this model: using the smallest "
                          f"tile ({smallest} px), which needs about {self._tiling_cost(n, h, w, smallest)} bytes")
        return best

    def _tiled(self, lr, tile, sink, progress=None):
        """Run the model over overlapping windows of lr (N, 3, h, w) and blend them. Finished output rows go to
        ``sink(row0, rows)`` with rows (N, C, r, s*w) float32 (C = 3, or 4 with the Y-model's luma last); only one
        band of output rows (one window high) is held in float32 at a time. ``progress(done, total)`` is called
        after each window."""
        n, _, h, w = lr.shape
        s, c, overlap = self.scale, 3 if self.spec.color == 'rgb' else 4, self.tile_overlap
        th, tw = fit_tile(h, tile, overlap), fit_tile(w, tile, overlap)
        ys, xs = tile_starts(h, th, overlap), tile_starts(w, tw, overlap)
        wx = [_blend_ramp(xs, j, tw, w, s, self.device) for j in range(len(xs))]
        band_top, band, weights, windows = 0, None, None, len(ys) * len(xs)
        for i, y0 in enumerate(ys):
            wy = _blend_ramp(ys, i, th, h, s, self.device)
            bottom = (y0 + th) * s
            new_band = torch.zeros(n, c, bottom - band_top, w * s, device=self.device)
            new_weights = torch.zeros(bottom - band_top, w * s, device=self.device)
            if band is not None:
                new_band[:, :, :band.shape[2]] = band
                new_weights[:weights.shape[0]] = weights
            band, weights = new_band, new_weights
            r0 = y0 * s - band_top
            for j, x0 in enumerate(xs):
                out = self._sr_stacked(lr[:, :, y0:y0 + th, x0:x0 + tw])  # (N, C, th*s, tw*s)
                wt = wy[:, None] * wx[j][None, :]
                band[:, :, r0:r0 + th * s, x0 * s:(x0 + tw) * s].addcmul_(out, wt)
                weights[r0:r0 + th * s, x0 * s:(x0 + tw) * s] += wt
                del out
                if progress is not None:
                    progress(i * len(xs) + j + 1, windows)
            done = ys[i + 1] * s if i + 1 < len(ys) else h * s  # rows above the next window row are final
            k = done - band_top
            sink(band_top, band[:, :, :k].div_(weights[:k]))
            band, weights, band_top = band[:, :, k:].clone(), weights[k:].clone(), done

    # -- public API --------------------------------------------------------------------------------

    @torch.no_grad()
    def upscale(self, lr, progress=None):
        """(sr_rgb, sr_y) of lr (N, 3, h, w) RGB in [0, 1], as the class documents. ``progress(done, total)`` is
        called after each tile (total = the number of tiles; a whole-image pass is one step)."""
        n, _, h, w = lr.shape
        tile = self.plan_tile(n, h, w)
        if tile is None:
            result = self._sr(lr)
            if progress is not None:
                progress(1, 1)
            return result
        s, c = self.scale, 3 if self.spec.color == 'rgb' else 4
        out = torch.empty(n, c, h * s, w * s, device=self.device)

        def sink(row, rows):
            out[:, :, row:row + rows.shape[2]] = rows

        self._tiled(lr, tile, sink, progress)
        return (out, None) if c == 3 else (out[:, :3], out[:, 3])

    @torch.no_grad()
    def upscale_uint8(self, lr, progress=None):
        """lr (N, 3, h, w) RGB in [0, 1] -> (N, 3, s*h, s*w) uint8 RGB on the CPU (clamped, rounded half up).
        ``progress(done, total)`` as for upscale()."""
        n, _, h, w = lr.shape
        s = self.scale
        out = torch.empty(n, 3, h * s, w * s, dtype=torch.uint8)

        def sink(row, rows):  # rows (N, C, r, s*w) float32 on the device: round in slices of 256 rows
            for r in range(0, rows.shape[2], 256):
                part = rows[:, :3, r:r + 256]
                out[:, :, row + r:row + r + part.shape[2]] = to_uint8(part).cpu()

        tile = self.plan_tile(n, h, w)
        if tile is None:
            sink(0, self._sr(lr)[0])
            if progress is not None:
                progress(1, 1)
        else:
            self._tiled(lr, tile, sink, progress)
        return out


# ----------------------------------------------------------------------------------------------
# The one way the scripts upscale (test.py's images and video frames, app.py's jobs, eval.py's passes)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UpscaleOptions:
    """How a model upscales: test.py's flags and the web page's fields of the same names (Upscaler's options).
    max_memory: bytes, 'auto' (auto_memory_budget of the device, decided when ImageUpscaler sets the model up) or None
    (no budget); memory_option reads a flag or a field into it. The defaults run the whole image in fp32."""
    tile: int = None
    tile_overlap: int = 16
    max_memory: object = None
    precision: str = 'fp32'
    self_ensemble: bool = False
    channels_last: bool = False
    fuse: bool = False


def memory_option(text, what):
    """A memory budget as typed ('auto', '2GB', '512MB', a byte count) as UpscaleOptions.max_memory: 'auto' or bytes.
    UserError naming ``what`` (the flag or the field) when it is not a memory size."""
    if str(text).strip() == 'auto':
        return 'auto'
    try:
        return parse_memory(text)
    except ValueError as e:
        raise UserError(f"{what}: {e}") from None


def images_to_tensor(images):
    """Same-size PIL images (RGB, or RGBA whose alpha is left out here) -> (N, 3, h, w) float32 RGB in [0, 1]."""
    return torch.stack([pil_to_tensor(img.convert('RGB')) for img in images]).float().div_(255.)


def sr_image(sr, img, scale):
    """The SR image of the PIL image ``img`` as a PIL image: ``sr`` ((3, s*h, s*w) uint8 RGB) with, when ``img`` is
    RGBA, its alpha channel upscaled by MATLAB-style bicubic (utils.bicubic_upscale) attached."""
    if img.mode == 'RGBA':
        alpha = bicubic_upscale(pil_to_tensor(img.getchannel('A')), scale)  # (1, s*h, s*w) uint8
        sr = torch.cat([sr, alpha])  # (4, s*h, s*w)
    return Image.fromarray(np.ascontiguousarray(sr.permute(1, 2, 0).numpy()))  # RGB or RGBA from the shape


class ImageUpscaler:
    """The one way test.py (images and video frames), app.py and eval.py upscale with a model: a
    checkpoints.ModelDescription and UpscaleOptions set up as an Upscaler (``upscaler``; the budget 'auto' decided
    for ``device``), with the same conversions and the same errors for all three.

    upscale(lr) and upscale_uint8(lr) are the Upscaler's, and upscale_images(images) takes same-size PIL images
    (images_to_tensor; sr_image then turns each result back into an image, alpha included); running out of memory
    in any of them is one line (UserError) that says ``out_of_memory``: how the caller's user lowers the memory
    needed (test.py names its flags, the page its field). precision_note() says what --precision auto picked.
    """

    def __init__(self, model, device, options=UpscaleOptions(), *, out_of_memory='lower the memory budget'):
        budget = auto_memory_budget(device) if options.max_memory == 'auto' else options.max_memory
        self.model, self.scale, self.label, self.out_of_memory = model, model.scale, model.label, out_of_memory
        self.upscaler = Upscaler(model.network, model.spec, model.scale, device, tile=options.tile,
                                 tile_overlap=options.tile_overlap, max_memory=budget, precision=options.precision,
                                 self_ensemble=options.self_ensemble, channels_last=options.channels_last,
                                 fuse=options.fuse, name=model.path)

    @property
    def precision(self):
        return self.upscaler.precision

    def precision_note(self, change):
        """'bf16 (why; ``change``)' when the precision was picked for this machine (UpscaleOptions.precision 'auto'),
        or when the one asked for runs slower than expected here (utils.precision_caveat), else None; ``change``: how
        the caller's user picks another."""
        reason = self.upscaler.precision_reason
        return f"{self.upscaler.precision} ({reason}; {change})" if reason else None

    def min_input_size(self):
        return self.upscaler.min_input_size()

    @contextlib.contextmanager
    def _memory_errors(self, name=None):
        """An allocation failure inside as a UserError of one line (``name``: the image, when there is one)."""
        try:
            yield
        except RuntimeError as e:  # torch.OutOfMemoryError is a RuntimeError too
            if not is_out_of_memory(e):
                raise
            raise UserError(f"{name + ': ' if name else ''}out of memory while upscaling: {self.out_of_memory} "
                            f"({str(e).splitlines()[0][:100]})") from None

    def upscale(self, lr, progress=None):
        """Upscaler.upscale: (sr_rgb, sr_y) of lr (N, 3, h, w) RGB in [0, 1]."""
        with self._memory_errors():
            return self.upscaler.upscale(lr, progress)

    def upscale_uint8(self, lr, progress=None):
        """Upscaler.upscale_uint8: lr (N, 3, h, w) RGB in [0, 1] -> (N, 3, s*h, s*w) uint8 on the CPU."""
        with self._memory_errors():
            return self.upscaler.upscale_uint8(lr, progress)

    def upscale_images(self, images, progress=None, name=None):
        """Same-size PIL images (RGB or RGBA) -> their SR (N, 3, s*h, s*w) uint8 RGB on the CPU (sr_image adds the
        alpha); ``name``: the image in an out-of-memory message."""
        with self._memory_errors(name):
            return self.upscaler.upscale_uint8(images_to_tensor(images), progress)


# ----------------------------------------------------------------------------------------------
# The papers' protocol on one image (eval.py, and validation while training)
# ----------------------------------------------------------------------------------------------


def standard_protocol(upscaler, hr, scale, gray=False, lr=None):
    """The papers' protocol on one image. hr: (3, H, W) uint8 RGB (a grey file as R = G = B).

    HR is mod-cropped (top-left); LR = MATLAB bicubic 1/scale, in uint8; SR = model(LR) rounded to uint8; both
    are reduced to rounded BT.601 luma (Y-channel models: their own Y output, rounded). Grey files (gray=True)
    are their own Y: HR's grey value, and SR's grey value (round(0.299 R + 0.587 G + 0.114 B)).
    lr: the LR image given instead, (3, h, w) uint8 (a paired test set); HR is then cut to (s h, s w).
    Returns (sr_y, hr_y, sr_rgb_uint8): float64 (H', W') luma with integer values, and the SR image.
    """
    if lr is None:
        hr = modcrop(hr, scale)  # (3, H', W'), uint8
        lr = imresize(hr, 1. / scale)  # (3, H' / s, W' / s), uint8
    else:
        hr = hr[:, :scale * lr.shape[1], :scale * lr.shape[2]]  # (3, H', W'), the pixels of the given LR
    sr, sr_y = upscaler.upscale(lr.unsqueeze(0).float() / 255.)  # (1, 3, H', W') in [0, 1]
    sr_u8 = to_uint8(sr[0]).cpu()  # (3, H', W')
    if gray:
        return gray_uint8(sr_u8), gray_uint8(hr), sr_u8
    y = torch.floor(sr_y[0].double().clamp(0, 1).cpu() * 255. + 0.5) if sr_y is not None else rgb_to_y_uint8(sr_u8)
    return y, rgb_to_y_uint8(hr), sr_u8


def validate_psnr(upscaler, hr_images, scale):
    """Mean standard-protocol PSNR (Y, border = scale) over (3, H, W) uint8 images; model in eval mode."""
    values = []
    for hr in hr_images:
        sr_y, hr_y, _ = standard_protocol(upscaler, hr, scale)
        values.append(psnr(sr_y, hr_y, border=scale))
    return sum(values) / len(values)


# ----------------------------------------------------------------------------------------------
# One graph for deployment: the network with its conventions inside (export.py writes it as ONNX)
# ----------------------------------------------------------------------------------------------


class RGBNetwork(torch.nn.Module):
    """``network`` with the conventions Upscaler applies around it, in one module: (N, 3, h, w) RGB in [0, 1] ->
    (N, 3, s*h, s*w) RGB in [0, 1], clamped. Value-range conversions for RGB models; for Y-channel models the BT.601
    conversion, SRCNN's bicubic pre-upscaling and the bicubic Cb/Cr, with utils.imresize_up (MATLAB's bicubic as
    convolutions). Only ops that torch.onnx exports with dynamic height and width; on one whole image it computes
    what Upscaler computes, up to float rounding. Inputs of at least 2 px; no padding inside, so not for networks with
    other size requirements (spandrel's SwinIR, HAT...)."""

    def __init__(self, network, spec, scale):
        super().__init__()
        if spec.min_size > 2 or spec.multiple_of > 1 or spec.square:  # the graph takes 2 px and more
            raise ValueError(f"{spec.name} needs its input padded (to at least {spec.min_size} px, a multiple of "
                             f"{spec.multiple_of}{', square' if spec.square else ''}), which this graph does not do")
        self.network, self.spec, self.scale = network, spec, int(scale)

    def forward(self, lr):
        x = model_input(self.spec, lr, self.scale, resize=imresize_up)  # in the network's input space
        sr, _ = model_output(self.spec, self.network(x), lr, self.scale, resize=imresize_up)  # (N, 3, s*h, s*w)
        return sr.clamp(0, 1)
