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

import torch

import models
from utils import (FORMAT_VERSION, UserError, autocast, check_precision, convert_image, gray_uint8, imresize,
                   load_checkpoint, modcrop, parse_memory, psnr, rgb_to_y_uint8, rgb_to_ycbcr, save_checkpoint,
                   strip_prefixes, to_uint8, ycbcr_to_rgb)

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
