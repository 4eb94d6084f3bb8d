"""Inference: checkpoints into ready models, the one way each model is fed, Upscaler (tiling, memory plan,
self-ensemble, precision) and the papers' evaluation protocol used by eval.py and by validation during training.

    import inference
    loaded = inference.load_sr_model('results/espcn_x3_t91.pth', 'cpu')
    upscaler = inference.Upscaler(loaded.model, loaded.arch, loaded.config['scaling_factor'], 'cpu')
    sr_rgb, sr_y = upscaler.upscale(lr)          # lr (N, 3, h, w) RGB in [0, 1]

Imports utils and models only.
"""
import math
import os
import warnings
from typing import NamedTuple

import av
import av.logging
import numpy as np
import torch
from PIL import Image

import models
from utils import (FORMAT_VERSION, IMAGE_EXTENSIONS, UserError, atomic_path, autocast, check_precision, convert_image,
                   gray_uint8, imresize, load_checkpoint, modcrop, parse_memory, psnr, rgb_to_y_uint8, rgb_to_ycbcr,
                   save_checkpoint, strip_prefixes, timer, to_uint8, ycbcr_to_rgb)

# ----------------------------------------------------------------------------------------------
# How each architecture is fed: RGB in [0, 1] in, RGB in [0, 1] out (models.ArchSpec says the rest)
# ----------------------------------------------------------------------------------------------


def model_input(spec, lr, scale):
    """What the network takes, from lr (N, 3, h, w) RGB in [0, 1]: RGB in spec.in_type for RGB models; for
    Y-channel models the BT.601 luma (N, 1, h, w) in [0, 1], bicubic-upscaled to (N, 1, s*h, s*w) when
    spec.pre_upsample (SRCNN)."""
    if spec.color == 'rgb':
        return convert_image(lr, '[0, 1]', spec.in_type)
    y = rgb_to_ycbcr(lr)[:, :1]  # (N, 1, h, w)
    return imresize(y, scale) if spec.pre_upsample else y


def model_target(spec, hr):
    """The training target in the network's output space, from hr (N, 3, H, W) RGB in [0, 1]: RGB in
    spec.out_type, or the luma (N, 1, H, W) in [0, 1] for Y-channel models. The loss is computed there."""
    if spec.color == 'rgb':
        return convert_image(hr, '[0, 1]', spec.out_type)
    return rgb_to_ycbcr(hr)[:, :1]


def model_output(spec, out, lr, scale):
    """The network's output as RGB: (sr_rgb (N, 3, s*h, s*w) float32 in [0, 1], unclamped; sr_y (N, s*h, s*w) the
    model's own luma for Y-channel models, else None). Y-channel models get Cb/Cr of lr (N, 3, h, w) by MATLAB
    bicubic."""
    if spec.color == 'rgb':
        return convert_image(out.float(), source=spec.out_type, target='[0, 1]'), None
    sr_y = out.float()  # (N, 1, s*h, s*w), in [0, 1]
    cbcr = imresize(rgb_to_ycbcr(lr)[:, 1:], scale).float()  # (N, 2, s*h, s*w)
    return ycbcr_to_rgb(torch.cat([sr_y, cbcr], dim=1)), sr_y[:, 0]


# ----------------------------------------------------------------------------------------------
# Checkpoints into models
# ----------------------------------------------------------------------------------------------


class LoadedModel(NamedTuple):
    """A network rebuilt from a checkpoint: ``model`` (eval mode, on the device), ``arch`` (how to feed it:
    'srresnet' also for an SRGAN generator), ``config`` (constructor keywords), ``label`` (what it is called in
    file names and reports: 'srgan' for an SRGAN generator, else arch)."""
    model: torch.nn.Module
    arch: str
    config: dict
    label: str


def _srresnet_config(state, prefix, path):
    """models.infer_srresnet_config as a UserError naming the file."""
    try:
        return models.infer_srresnet_config(state, prefix)
    except ValueError as e:
        raise UserError(f"{path}: {e}") from None


def describe_checkpoint(ckpt, path):
    """(arch, model_config, state_dict) of the SR network in a checkpoint of any supported kind.

    Accepts this suite's checkpoints (any architecture; SRGAN gives its generator, arch 'srgan', with the
    generator's SRResNet weights), and the tutorial's own SRResNet/SRGAN checkpoints, whose configuration is read
    off the weights. The file format version was checked by utils.load_checkpoint.
    """
    if 'generator' in ckpt:
        state = strip_prefixes(ckpt['generator'])
        config = ckpt.get('generator_config') or _srresnet_config(state, 'net.', path)
        return 'srgan', dict(config), {k[len('net.'):]: v for k, v in state.items() if k.startswith('net.')}
    if 'model' in ckpt:
        state = strip_prefixes(ckpt['model'])
        arch = ckpt.get('arch', 'srresnet')
        config = ckpt.get('model_config') or _srresnet_config(state, '', path)
        if arch not in models.ARCHS:
            raise UserError(f"{path}: unknown architecture {arch!r}")
        return arch, dict(config), state
    raise UserError(f"{path} holds no 'model' or 'generator' weights: not an SR checkpoint")


def load_sr_model(path, device='cpu', expect_scale=None):
    """Rebuild the SR network recorded in a checkpoint file: a LoadedModel (model in eval mode on ``device``).

    ``expect_scale`` turns a scale mismatch into a UserError naming both scales.
    """
    label, config, state = describe_checkpoint(load_checkpoint(path), path)
    arch = 'srresnet' if label == 'srgan' else label  # an SRGAN generator's weights are an SRResNet's
    scale = int(config['scaling_factor'])
    if expect_scale is not None and int(expect_scale) != scale:
        raise UserError(f"{path} was trained for x{scale}, not x{expect_scale}: pass --scale {scale} "
                        f"or a x{expect_scale} checkpoint")
    try:
        model = models.build_model(arch, config)
        model.load_state_dict(state)
    except (RuntimeError, TypeError, ValueError) as e:
        raise UserError(f"{path}: weights do not match a {arch} with {config} "
                        f"({str(e).splitlines()[0][:160]})") from None
    return LoadedModel(model.to(device).eval(), arch, config, label)


def convert_legacy_checkpoint(src, dst):
    """Convert a tutorial checkpoint holding whole pickled models into this suite's format.

    This UNPICKLES ``src`` without restrictions, which can execute code: run it only on files you trust.
    """
    ckpt = torch.load(src, map_location='cpu', weights_only=False)
    out = {'format_version': FORMAT_VERSION, 'epoch': int(ckpt.get('epoch', 0))}
    for key in ('model', 'generator', 'discriminator'):
        obj = ckpt.get(key)
        if obj is not None:
            out[key] = strip_prefixes(obj.state_dict() if hasattr(obj, 'state_dict') and not isinstance(obj, dict)
                                      else obj)
    for key in ('optimizer', 'optimizer_g', 'optimizer_d'):
        obj = ckpt.get(key)
        if obj is not None:
            out[key] = obj.state_dict() if hasattr(obj, 'state_dict') else obj
    if 'model' not in out and 'generator' not in out:
        raise UserError(f"{src} holds neither 'model' nor 'generator': not a tutorial checkpoint")
    if 'generator' in out:
        out['arch'] = 'srgan'
        out['generator_config'] = _srresnet_config(out['generator'], 'net.', src)
    else:
        out['arch'] = 'srresnet'
        out['model_config'] = _srresnet_config(out['model'], '', src)
    save_checkpoint(out, dst)
    return out


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


class Upscaler:
    """Runs any architecture of the suite on RGB images, hiding its input/output conventions.

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
      precision: 'fp32', 'bf16' (CPU or CUDA) or 'fp16' (CUDA or MPS): autocast around the network only; the
        input and output conversions stay in fp32.
      self_ensemble: average the outputs of the 8 flips/rotations of the input (EDSR's x8 geometric ensemble).
      channels_last: run the network in channels_last memory format (converts ``model`` in place, or the copy
        made by fuse).
      fuse: run a copy made by models.fuse_for_inference (BatchNorm folded, the last conv on the sub-pixel grid): same
        results up to float rounding; with channels_last, SRResNet x4 runs ~1.9x faster on a CPU.
    """

    def __init__(self, model, arch, scale, device, *, tile=None, tile_overlap=16, max_memory=None,
                 precision='fp32', self_ensemble=False, channels_last=False, fuse=False):
        self.model, self.spec, self.scale, self.device = model, models.ARCHS[arch], int(scale), torch.device(device)
        if tile is not None and int(tile) < max(self.min_input_size(), 1):
            raise UserError(f"tile {tile} is too small: at least {self.min_input_size()} px")
        if tile_overlap < 0 or (tile is not None and tile_overlap >= tile):
            raise UserError(f"tile overlap {tile_overlap} must be >= 0 and smaller than the tile ({tile})")
        self.tile, self.tile_overlap = (None if tile is None else int(tile)), int(tile_overlap)
        try:
            self.max_memory = parse_memory(max_memory)
        except ValueError as e:
            raise UserError(f"max memory: {e}") from None
        self.precision = check_precision(precision, self.device)
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
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.precision):
            return self.model(x)

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
        lr = lr.to(self.device, torch.float32)  # (N, 3, h, w), in [0, 1]
        out = self._body(model_input(self.spec, lr, self.scale))  # (N, C, s*h, s*w), in spec.out_type
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
            try:
                with torch.no_grad():
                    self.model(torch.zeros(1, in_channels, 16, 16, device=self.device))
            finally:
                for h in handles:
                    h.remove()
            inputs_per_lr = s * s if spec.pre_upsample else 1  # model-input px per LR px
            network = 3 * max(sizes) / 256. * inputs_per_lr
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
# The papers' protocol on one image (eval.py, and validation while training)
# ----------------------------------------------------------------------------------------------


def standard_protocol(upscaler, hr, scale, gray=False):
    """The papers' protocol on one image. hr: (3, H, W) uint8 RGB (a grey file as R = G = B).

    HR is mod-cropped (top-left); LR = MATLAB bicubic 1/scale, in uint8; SR = model(LR) rounded to uint8; both
    are reduced to rounded BT.601 luma (Y-channel models: their own Y output, rounded). Grey files (gray=True)
    are their own Y: HR's grey value, and SR's grey value (round(0.299 R + 0.587 G + 0.114 B)).
    Returns (sr_y, hr_y, sr_rgb_uint8): float64 (H', W') luma with integer values, and the SR image.
    """
    hr = modcrop(hr, scale)  # (3, H', W'), uint8
    lr = imresize(hr, 1. / scale)  # (3, H' / s, W' / s), uint8
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
# Videos: every frame through an Upscaler, the timing kept, the audio copied (PyAV)
# ----------------------------------------------------------------------------------------------

VIDEO_EXTENSIONS = ('.mp4', '.m4v', '.mov', '.mkv', '.webm', '.avi', '.mpg', '.mpeg', '.ts', '.mts', '.m2ts',
                    '.flv', '.wmv', '.ogv', '.3gp')
# Output containers: these keep the input's; any other input is written as Matroska, which holds H.264 and nearly
# every audio codec (WebM cannot hold H.264, AVI and MPEG-TS hold its timing badly).
VIDEO_MUXERS = {'.mp4': 'mp4', '.m4v': 'ipod', '.mov': 'mov', '.mkv': 'matroska'}
MUXER_OPTIONS = {'mp4': {'movflags': '+faststart'}, 'ipod': {'movflags': '+faststart'},
                 'mov': {'movflags': '+faststart'}}  # the index first: plays while it downloads
# FFmpeg's demuxers and decoders say 'partial file', 'File ended prematurely', 'Invalid NAL unit size' at this
# level and still hand out what they could read: logged errors count as damage (with frame-count and duration
# checks behind them).
_FFMPEG_ERROR = av.logging.ERROR


def is_video_file(path):
    """True for a file test.py treats as a video: a video extension (VIDEO_EXTENSIONS, any letter case), or an
    extension of neither kind on a file that Pillow cannot open and PyAV opens as a moving-picture container."""
    ext = os.path.splitext(path)[1].lower()
    if ext in VIDEO_EXTENSIONS:
        return True
    if ext in IMAGE_EXTENSIONS or not os.path.isfile(path):
        return False
    try:
        with Image.open(path):
            return False  # any image Pillow reads stays an image (GIF, PPM, ...), as before
    except Exception:  # Pillow raises many types for what it cannot read
        pass
    try:
        with av.open(path, metadata_errors='ignore') as container:
            name = container.format.name  # FFmpeg also 'plays' stills and text files (image2, *_pipe, tty)
            still = name in ('image2', 'tty') or name.endswith('_pipe')
            return not still and _main_video_stream(container) is not None
    except (av.error.FFmpegError, OSError, ValueError):
        return False


def video_output_path(src, output_dir, label):
    """Where test.py writes the upscaled video: <output_dir>/<stem>_<label><ext>, ext the input's when it is
    .mp4 .m4v .mov or .mkv, else .mkv (see VIDEO_MUXERS)."""
    stem, ext = os.path.splitext(os.path.basename(src))
    return os.path.join(output_dir, f"{stem}_{label}{ext.lower() if ext.lower() in VIDEO_MUXERS else '.mkv'}")


class VideoInfo(NamedTuple):
    """What probe_video reads from a file's header: frame size, frame rate (a Fraction), the number of frames the
    header states (None when it states none), the video's duration in seconds (None when unknown), the
    container's name and the codecs of the video and of its audio streams."""
    width: int
    height: int
    fps: object
    frames: object
    duration: object
    container: str
    codec: str
    audio: tuple

    @property
    def expected_frames(self):
        """The header's frame count, else duration x frame rate (an estimate, for progress bars), else None."""
        return self.frames or (round(self.duration * self.fps) if self.duration else None)


def _main_video_stream(container):
    """The first video stream that is not an attached picture (cover art), or None."""
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    return None


def _stream_duration(stream):
    """The video stream's duration in seconds from the header: stream.duration (mp4), else Matroska's DURATION
    tag (which is the stream's end time); None when neither is there."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    tag = (stream.metadata or {}).get('DURATION')
    if tag:
        try:
            hours, minutes, seconds = tag.split(':')
            return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
        except ValueError:
            pass
    return None


def _video_info(container, stream):
    cc = stream.codec_context
    fps = stream.average_rate or stream.guessed_rate or stream.base_rate
    audio = tuple(a.codec_context.name for a in container.streams.audio)
    return VideoInfo(cc.width, cc.height, fps, stream.frames or None, _stream_duration(stream),
                     container.format.name, cc.name, audio)


def _why(error):
    return getattr(error, 'strerror', None) or str(error).splitlines()[0][:120] or type(error).__name__


def probe_video(path):
    """VideoInfo of a video file; UserError (one line) when it is missing, not a video PyAV can read, or has no
    video stream. Reads the header only."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    try:
        with av.open(path, metadata_errors='ignore') as container:
            stream = _main_video_stream(container)
            if stream is None:
                raise UserError(f"{path}: no video stream in this file")
            info = _video_info(container, stream)
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable video ({_why(e)})") from None
    if not (info.width and info.height and info.fps):
        raise UserError(f"{path}: the video stream has no frame size or frame rate")
    return info


class VideoResult(NamedTuple):
    """What upscale_video did: frames written, input and output sizes, seconds in all and in the model, audio
    packets copied, and warnings (one line each)."""
    frames: int
    in_size: tuple
    out_size: tuple
    seconds: float
    model_seconds: float
    audio_packets: int
    warnings: tuple


def _encoder():
    """'libx264' where PyAV's FFmpeg has it (its wheels do), else 'mpeg4' (FFmpeg's own MPEG-4 Part 2)."""
    try:
        av.codec.Codec('libx264', 'w')
        return 'libx264'
    except (av.error.FFmpegError, ValueError):
        return 'mpeg4'


def _check_ffmpeg_log(log, names, src):
    """UserError for an error that FFmpeg logged from the input's demuxer or decoder (damage it read past)."""
    for entry in log:
        level, name, message = entry[0], entry[1], entry[2]
        if level <= _FFMPEG_ERROR and name in names:
            raise UserError(f"{src}: corrupt or truncated video ({name}: {message.strip()})")


def _frame_tensor(frame):
    """Decoded frame -> (1, 3, h, w) float32 RGB in [0, 1], converted with the frame's own matrix and range."""
    rgb = frame.to_ndarray(format='rgb24', src_color_range=frame.color_range)  # (h, w, 3) uint8
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float().div_(255.)


def upscale_video(upscaler, src, dst, *, crf=18, preset='medium', progress=None):
    """Upscale every frame of the video ``src`` with ``upscaler`` (tiling and memory budget apply per frame) into
    ``dst``: H.264 (libx264, yuv420p, ``crf``, ``preset``; FFmpeg's mpeg4 where libx264 is missing), every frame at
    its own timestamp in the input's time base (constant and variable frame rates and start offsets survive), the
    audio streams copied packet for packet (no re-encoding); subtitle and data streams are dropped. The container
    follows dst's extension (VIDEO_MUXERS).

    yuv420p needs even sizes: an odd output side loses its last row or column (a warning says so). The colour
    matrix and range of the input are used to decode and to encode, and tagged on the output.
    ``progress(done, total)`` is called after every frame (total: VideoInfo.expected_frames, or None).

    A damaged input (unreadable header, a decoding error, an error logged by FFmpeg's demuxer or decoder, a frame
    flagged corrupt, or clearly fewer frames or seconds than the header promises) raises UserError; dst is
    written atomically (utils.atomic_path), so any failure, Ctrl-C included, leaves no partial file and an
    existing dst as it was.
    """
    info = probe_video(src)
    ext = os.path.splitext(dst)[1].lower()
    if ext not in VIDEO_MUXERS:
        raise UserError(f"{dst}: write videos as {', '.join(VIDEO_MUXERS)}")
    if os.path.exists(dst) and os.path.samefile(src, dst):
        raise UserError(f"{dst}: the output would overwrite the input")
    s, encoder, warned = upscaler.scale, _encoder(), []
    width, height = info.width * s - info.width * s % 2, info.height * s - info.height * s % 2
    if (width, height) != (info.width * s, info.height * s):
        warned.append(f"{src}: output cropped to {width}x{height} px (x{s} is {info.width * s}x{info.height * s}; "
                      f"yuv420p needs even sizes)")
    if encoder != 'libx264':
        warned.append(f"libx264 is not in this FFmpeg build: encoding with {encoder} (larger files)")
    options = {'crf': str(crf), 'preset': preset} if encoder == 'libx264' else {'qscale': '2'}
    start, model_seconds, frames, audio_packets = timer(), 0., 0, 0
    level = av.logging.get_level()
    av.logging.set_level(_FFMPEG_ERROR)  # PyAV keeps FFmpeg silent by default: its error lines are evidence here
    try:
        with av.logging.Capture(local=False) as log, atomic_path(dst) as tmp, \
                av.open(src, metadata_errors='ignore') as inp, \
                av.open(tmp, 'w', format=VIDEO_MUXERS[ext], options=MUXER_OPTIONS.get(VIDEO_MUXERS[ext], {})) as out:
            ivs = _main_video_stream(inp)
            ivs.thread_type = 'AUTO'
            names = {inp.format.name, ivs.codec_context.name}
            ovs = out.add_stream(encoder, rate=info.fps, options=options)
            ovs.width, ovs.height, ovs.pix_fmt = width, height, 'yuv420p'
            ovs.time_base = ovs.codec_context.time_base = ivs.time_base  # the input's pts values, as they are
            for attr in ('colorspace', 'color_range', 'color_primaries', 'color_trc'):
                setattr(ovs.codec_context, attr, getattr(ivs.codec_context, attr))
            audio = {}
            for ias in inp.streams.audio:
                if ias.codec_context.name not in out.supported_codecs:
                    raise UserError(f"{src}: its {ias.codec_context.name} audio cannot be copied into {ext}: "
                                    f"write .mkv")
                audio[ias] = out.add_stream_from_template(ias)
            dropped = len(inp.streams) - len(audio) - len(inp.streams.video)
            if dropped:
                warned.append(f"{src}: {dropped} subtitle, data or attachment stream(s) not copied")
            last_pts, last_time = None, None
            for packet in inp.demux(ivs, *audio):
                if packet.stream is not ivs:
                    if packet.dts is not None:  # the demuxer's final empty packets carry nothing
                        packet.stream = audio[packet.stream]
                        out.mux(packet)
                        audio_packets += 1
                    continue
                try:
                    decoded = packet.decode()
                except (av.error.FFmpegError, ValueError) as e:
                    raise UserError(f"{src}: corrupt video data near frame {frames} ({_why(e)})") from None
                for frame in decoded:
                    _check_ffmpeg_log(log, names, src)
                    if frame.is_corrupt:
                        raise UserError(f"{src}: corrupt video frame {frames} (at {frame.time} s)")
                    if (frame.width, frame.height) != (info.width, info.height):
                        raise UserError(f"{src}: the frame size changes from {info.width}x{info.height} to "
                                        f"{frame.width}x{frame.height} at frame {frames}; not supported")
                    t0 = timer()
                    sr = upscaler.upscale_uint8(_frame_tensor(frame))[0, :, :height, :width]  # (3, H, W) uint8
                    model_seconds += timer() - t0
                    rgb = np.ascontiguousarray(sr.permute(1, 2, 0).numpy())  # (H, W, 3)
                    encoded = av.VideoFrame.from_ndarray(rgb, format='rgb24').reformat(
                        format='yuv420p', dst_colorspace=frame.colorspace, dst_color_range=frame.color_range)
                    pts = frame.pts
                    if pts is None or (last_pts is not None and pts <= last_pts):  # no or repeated stamps (AVI)
                        pts = 0 if last_pts is None else last_pts + max(1, round(1 / (info.fps * ivs.time_base)))
                    encoded.pts, encoded.time_base = pts, ivs.time_base
                    out.mux(ovs.encode(encoded))
                    frames, last_pts, last_time = frames + 1, pts, float(pts * ivs.time_base)
                    if progress is not None:
                        progress(frames, info.expected_frames)
            out.mux(ovs.encode())  # the frames the encoder still holds
            _check_ffmpeg_log(log, names, src)
            _check_complete(src, info, frames, last_time)
    except (av.error.FFmpegError, OSError) as e:
        raise UserError(f"{src}: video failed ({_why(e)}); nothing written to {dst}") from None
    finally:
        av.logging.set_level(level)
    return VideoResult(frames, (info.width, info.height), (width, height), timer() - start, model_seconds,
                       audio_packets, tuple(warned))


def _check_complete(src, info, frames, last_time):
    """UserError when clearly less of the video was decoded than its header promises. Lenient: a frame or two
    (2%) short, or a stream end time (Matroska's DURATION tag) that includes a start offset, are not damage."""
    if frames == 0:
        raise UserError(f"{src}: no decodable video frame")
    if info.frames and info.frames - frames > max(2, info.frames // 50):
        raise UserError(f"{src}: truncated: {frames} of {info.frames} frames decoded")
    if info.duration and last_time is not None:
        covered = last_time + 1 / float(info.fps)  # the end of the last frame, measured from t = 0
        if covered < info.duration - max(2 / float(info.fps), 0.02 * info.duration):
            raise UserError(f"{src}: truncated: {covered:.2f} s of {info.duration:.2f} s decoded")
