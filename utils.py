"""Shared helpers: image conversion and loading, transforms, MATLAB-compatible bicubic, metrics,
safe checkpoints, command-line flags, devices and the inference wrapper used by eval.py and test.py.

Nothing here picks a device or creates files at import time.
"""
import argparse
import functools
import json
import math
import os
import random
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

import models

# ----------------------------------------------------------------------------------------------
# Errors a user can cause: one line, exit code 2
# ----------------------------------------------------------------------------------------------


class UserError(Exception):
    """A problem the user can fix (bad path, bad image, wrong checkpoint...). Printed as one line."""


def run_cli(main):
    """Run ``main()``; turn UserError / missing VGG weights into 'error: ...' on stderr and exit code 2."""
    try:
        return main()
    except (UserError, models.VGGWeightsError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


# ----------------------------------------------------------------------------------------------
# Value ranges and colour (the tutorial's convert_image, device-agnostic)
# ----------------------------------------------------------------------------------------------

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RGB_TO_Y = (65.481, 128.553, 24.966)  # BT.601 luma weights for RGB in [0, 1], giving Y in [16, 235]
SOURCES = ('pil', '[0, 1]', '[-1, 1]', '[0, 255]', 'imagenet-norm')
TARGETS = ('pil', '[0, 255]', '[0, 1]', '[-1, 1]', 'imagenet-norm', 'y-channel')


def _channel_vector(values, like):
    """(3,) constants shaped to broadcast over the channel axis of ``like`` (3-D or 4-D), same device/dtype."""
    shape = (3, 1, 1) if like.dim() == 3 else (1, 3, 1, 1)
    return torch.tensor(values, device=like.device, dtype=like.dtype).view(shape)


def convert_image(img, source, target):
    """Convert an image between value ranges, as the tutorial does, for 3-D (3, H, W) or 4-D (N, 3, H, W) tensors.

    source: 'pil', '[0, 1]', '[-1, 1]' (the tutorial's), plus '[0, 255]' and 'imagenet-norm'.
    target: 'pil', '[0, 255]', '[0, 1]', '[-1, 1]', 'imagenet-norm' (ImageNet mean/std) or 'y-channel'.
    'y-channel' is the tutorial's: Y = 16 + (65.481 R + 128.553 G + 24.966 B) for RGB in [0, 1], unrounded, in
    [16, 235], with 4 pixels cropped from every border; returns (N, H - 8, W - 8) or (H - 8, W - 8).
    Works on any device; constants follow the input's device and dtype.
    """
    if source not in SOURCES:
        raise ValueError(f"cannot convert from {source!r}; sources are {SOURCES}")
    if target not in TARGETS:
        raise ValueError(f"cannot convert to {target!r}; targets are {TARGETS}")
    # One new tensor per conversion, then in place on it (fewer large allocations; same values as out of place)
    if source == 'pil':
        img = torch.from_numpy(np.asarray(img.convert('RGB'), dtype=np.float32) / 255.).permute(2, 0, 1)
    elif source == '[-1, 1]':
        img = img.add(1.).div_(2.)
    elif source == '[0, 255]':
        img = img / 255.
    elif source == 'imagenet-norm':
        img = img.mul(_channel_vector(IMAGENET_STD, img)).add_(_channel_vector(IMAGENET_MEAN, img))
    # img is now in [0, 1]
    if target == 'pil':
        arr = (img.detach().float().clamp(0, 1) * 255.).round().byte().permute(1, 2, 0).cpu().numpy()
        return Image.fromarray(arr, mode='RGB')
    if target == '[0, 255]':
        return 255. * img
    if target == '[-1, 1]':
        return img.mul(2.).sub_(1.)
    if target == 'imagenet-norm':
        return img.sub(_channel_vector(IMAGENET_MEAN, img)).div_(_channel_vector(IMAGENET_STD, img))
    if target == 'y-channel':
        weights = torch.tensor(RGB_TO_Y, device=img.device, dtype=img.dtype)
        channels_last = img.movedim(-3, -1)[..., 4:-4, 4:-4, :]  # (..., H - 8, W - 8, 3)
        return torch.matmul(255. * channels_last, weights) / 255. + 16.
    return img


# BT.601 studio swing for RGB in [0, 1]: YCbCr * 255 = _YCBCR_OFFSET + _YCBCR_MATRIX @ RGB (MATLAB's rgb2ycbcr).
_YCBCR_MATRIX = ((65.481, 128.553, 24.966),
                 (-37.797, -74.203, 112.0),
                 (112.0, -93.786, -18.214))
_YCBCR_OFFSET = (16., 128., 128.)


def _ycbcr_tensors(img):
    """The forward matrix in float64 (inverted exactly by ycbcr_to_rgb) and the (3, 1, 1) offset in img's dtype, both
    on img's device."""
    return (torch.tensor(_YCBCR_MATRIX, dtype=torch.float64, device=img.device),
            torch.tensor(_YCBCR_OFFSET, dtype=img.dtype, device=img.device).view(3, 1, 1))


def rgb_to_ycbcr(img):
    """BT.601 studio-swing YCbCr of RGB in [0, 1], (..., 3, H, W) -> (..., 3, H, W) with values in [0, 1]
    (Y in [16, 235] / 255, Cb/Cr in [16, 240] / 255), unrounded. MATLAB's rgb2ycbcr for doubles."""
    matrix, offset = _ycbcr_tensors(img)
    out = torch.einsum('ij,...jhw->...ihw', matrix.to(img.dtype), img)  # (..., 3, H, W), in [0, 255] - offset
    return (out + offset) / 255.


def ycbcr_to_rgb(img):
    """Exact inverse of rgb_to_ycbcr: (..., 3, H, W) YCbCr in [0, 1] -> RGB in [0, 1] (unclamped)."""
    matrix, offset = _ycbcr_tensors(img)
    inverse = torch.linalg.inv(matrix).to(img.dtype)  # inverted in float64, then cast
    return torch.einsum('ij,...jhw->...ihw', inverse, img * 255. - offset)


def gray_uint8(img):
    """Rounded grey value of a uint8-valued RGB image, (..., 3, H, W) -> float64 (..., H, W): round(0.299 R +
    0.587 G + 0.114 B), PIL's 'L' conversion. For a grey image stored as R = G = B it is that grey exactly."""
    img = img.to(torch.float64)
    r, g, b = img.unbind(-3)
    return torch.floor((299. * r + 587. * g + 114. * b) / 1000. + 0.5)


def rgb_to_y_uint8(img):
    """Rounded BT.601 luma of a uint8-valued RGB image, as MATLAB's rgb2ycbcr on uint8 (the papers' Y).

    img: (..., 3, H, W) with values in [0, 255] (uint8 or float). Returns float64 (..., H, W) with
    integer values in [16, 235]: round(16 + (65.481 R + 128.553 G + 24.966 B) / 255).
    """
    img = img.to(torch.float64)
    r, g, b = img.unbind(-3)
    y = 16. + (65.481 * r + 128.553 * g + 24.966 * b) / 255.
    return torch.floor(y + 0.5)  # MATLAB rounds halves away from zero; y > 0


# ----------------------------------------------------------------------------------------------
# Reading images: every mode, EXIF orientation, decompression bombs
# ----------------------------------------------------------------------------------------------

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp')


def _to_8bit(img):
    """16/32-bit integer and float images -> 8-bit 'L'. Integer images are taken as 16-bit and keep their high
    byte (v // 256, clipped to 65535 first), which is what Pillow itself does for 16-bit colour PNGs, so all
    16-bit inputs are treated alike; float images are taken as [0, 1]. (PIL's own convert('L') would clip
    every value above 255 to white instead.)"""
    arr = np.asarray(img)
    if img.mode == 'F':
        return Image.fromarray(np.floor(np.clip(arr, 0., 1.) * 255. + 0.5).astype(np.uint8), mode='L')
    return Image.fromarray((np.clip(arr.astype(np.int64), 0, 65535) >> 8).astype(np.uint8), mode='L')


def load_image(path, keep_alpha=False):
    """Open an image file as an 8-bit RGB PIL image (or RGBA with keep_alpha), fully decoded.

    Rules: EXIF orientation is applied; L/1/P/CMYK/YCbCr/... are converted to RGB; 16-bit images keep their
    high byte (v // 256); transparent images (RGBA, LA, PA, P with transparency) are composited onto white,
    unless keep_alpha, which returns RGBA. Decompression bombs (more pixels than PIL's MAX_IMAGE_PIXELS) are refused.
    Raises UserError with the path and the reason for anything that is not a readable image.
    """
    if os.path.isdir(path):
        raise UserError(f"{path} is a directory, not an image file")
    if not os.path.exists(path):
        raise UserError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('error', Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                img = ImageOps.exif_transpose(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UserError(f"{path}: decompression bomb (more than {Image.MAX_IMAGE_PIXELS} pixels), refused") from None
    except Exception as e:  # PIL raises many types for bad files: UnidentifiedImageError, OSError, SyntaxError...
        reason = 'not an image' if isinstance(e, Image.UnidentifiedImageError) else f"unreadable ({e})"
        if os.path.getsize(path) == 0:
            reason = 'empty file'
        raise UserError(f"{path}: {reason}") from None
    if img.mode in ('I', 'I;16', 'I;16B', 'I;16L', 'I;16N', 'F'):
        img = _to_8bit(img)
    has_alpha = img.mode in ('RGBA', 'LA', 'PA', 'La', 'RGBa') or (img.mode == 'P' and 'transparency' in img.info)
    if has_alpha:
        img = img.convert('RGBA')
        if keep_alpha:
            return img
        background = Image.new('RGBA', img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert('RGB')
    return img.convert('RGB')


GRAY_MODES = ('1', 'L', 'LA', 'La', 'I', 'I;16', 'I;16B', 'I;16L', 'I;16N', 'F')


def is_grayscale_file(path):
    """True when the file stores a single (grey) channel, with or without alpha; such images are their own Y."""
    with Image.open(path) as img:
        return img.mode in GRAY_MODES


def _image_problem(path, min_size):
    """None if ``path`` is a readable image with both sides >= min_size, else a short reason."""
    try:
        img = load_image(path)
    except UserError as e:
        return str(e).split(': ', 1)[-1]
    if img.width < min_size or img.height < min_size:
        return f"smaller than --min-size {min_size} ({img.width}x{img.height})"
    return None


def list_image_files(folder):
    """Sorted paths of files in ``folder`` whose extension is an image one, in any letter case."""
    if not os.path.isdir(folder):
        raise UserError(f"{folder}: not a folder")
    return [os.path.join(folder, f) for f in sorted(os.listdir(folder))
            if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, f))]


def dataset_name(folder):
    """A test set's name: the folder's base name, on any OS and with or without a trailing separator."""
    return os.path.basename(os.path.normpath(folder.replace('\\', '/')))


def _set_max_pixels(max_pixels):
    if max_pixels:
        Image.MAX_IMAGE_PIXELS = int(max_pixels)


def create_data_lists(train_folders, test_folders, min_size, output_folder, workers=None, log=print,
                      max_pixels=None):
    """Write ``train_images.json`` (all train folders merged) and ``<name>_test_images.json`` per test folder.

    Every candidate is fully decoded; unreadable, empty, truncated, non-image, too small and decompression-bomb
    files are skipped, counted by reason, and listed with their paths in ``create_data_lists.log``.
    Lists hold absolute paths. max_pixels: decompression-bomb limit (default: PIL's MAX_IMAGE_PIXELS).
    Returns {list name: (kept, skipped)}.
    """
    os.makedirs(output_folder, exist_ok=True)
    jobs = [('train', train_folders)] + [(dataset_name(d), [d]) for d in test_folders]
    log_lines, summary = [], {}
    workers = workers or min(8, os.cpu_count() or 1)
    with ProcessPoolExecutor(max_workers=workers, initializer=_set_max_pixels, initargs=(max_pixels,)) as pool:
        for name, folders in jobs:
            found = [p for d in folders for p in list_image_files(d)]
            problems = list(pool.map(functools.partial(_image_problem, min_size=min_size), found, chunksize=16))
            kept = [os.path.abspath(p) for p, why in zip(found, problems) if why is None]
            reasons = {}
            for p, why in zip(found, problems):
                if why is not None:
                    key = why.split(' (')[0]
                    reasons[key] = reasons.get(key, 0) + 1
                    log_lines.append(f"{name}\t{p}\t{why}")
            file_name = 'train_images.json' if name == 'train' else f"{name}_test_images.json"
            atomic_write_text(os.path.join(output_folder, file_name), json.dumps(kept, indent=0))
            skipped = ', '.join(f"{n} {why}" for why, n in sorted(reasons.items())) or 'none'
            log(f"{name}: found {len(found)}, kept {len(kept)}, skipped {len(found) - len(kept)} ({skipped})")
            summary[name] = (len(kept), len(found) - len(kept))
    atomic_write_text(os.path.join(output_folder, 'create_data_lists.log'), ''.join(l + '\n' for l in log_lines))
    if log_lines:
        log(f"skipped files and reasons: {os.path.join(output_folder, 'create_data_lists.log')}")
    return summary


# ----------------------------------------------------------------------------------------------
# MATLAB-compatible bicubic resize
# ----------------------------------------------------------------------------------------------


def _cubic(x):
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's 'bicubic')."""
    ax = x.abs()
    ax2, ax3 = ax * ax, ax * ax * ax
    return ((1.5 * ax3 - 2.5 * ax2 + 1.) * (ax <= 1.)
            + (-0.5 * ax3 + 2.5 * ax2 - 4. * ax + 2.) * ((ax > 1.) & (ax <= 2.)))


def _resize_taps(in_len, out_len, scale, antialias, device):
    """Indices (out_len, P) into the input and weights (out_len, P) for resizing one axis, as MATLAB does:
    kernel widened by 1/scale when downscaling, symmetric (mirror) border, weights normalised per output."""
    kernel_width = 4.
    if scale < 1 and antialias:
        kernel_width /= scale
    x = torch.arange(1, out_len + 1, dtype=torch.float64, device=device)
    u = x / scale + 0.5 * (1. - 1. / scale)  # output pixel centre in input coordinates (1-based)
    left = torch.floor(u - kernel_width / 2.)
    taps = int(math.ceil(kernel_width)) + 2
    idx = left.unsqueeze(1) + torch.arange(taps, dtype=torch.float64, device=device)  # (out_len, P), 1-based
    dist = u.unsqueeze(1) - idx
    weights = scale * _cubic(dist * scale) if (scale < 1 and antialias) else _cubic(dist)
    weights = weights / weights.sum(dim=1, keepdim=True)
    keep = (weights != 0).any(dim=0)  # drop tap columns that are zero for every output pixel
    weights, idx = weights[:, keep], idx[:, keep]
    # Symmetric padding: index i maps into [1, 2, ..., n, n, ..., 1] repeated.
    mirror = torch.cat([torch.arange(in_len, device=device), torch.arange(in_len - 1, -1, -1, device=device)])
    idx = mirror[torch.remainder(idx.long() - 1, 2 * in_len)]
    return idx, weights


def _small_cached(build):
    """Memoise ``build`` for small matrices only (training reuses a few patch sizes; big inference images
    must not pin hundreds of MB in a cache)."""
    cached = functools.lru_cache(maxsize=64)(build)

    @functools.wraps(build)
    def get(in_len, out_len, *args):
        return (cached if in_len * out_len <= 1 << 20 else build)(in_len, out_len, *args)
    return get


@_small_cached
def _imresize_matrix(in_len, out_len, scale, antialias, device, dtype):
    """One dense (out_len, in_len) matrix per axis makes each pass a single matmul; mirrored taps that land on
    the same input pixel add up, exactly as the per-tap sum does."""
    idx, w = _resize_taps(in_len, out_len, scale, antialias, device)
    matrix = torch.zeros(out_len, in_len, dtype=dtype, device=device)
    return matrix.scatter_add_(1, idx, w.to(dtype))


def imresize(x, scale=None, size=None, antialias=True):
    """Resize like MATLAB's ``imresize(x, scale, 'bicubic')``, batched and channels-first, on any device.

    x: (..., H, W) tensor, uint8 or float (any value range). scale: positive number (same for both axes),
    or size=(out_h, out_w). Output size per axis is ceil(scale * in). Each axis is resized in float64
    (float32 on devices without float64), the axis with the smaller scale first. A uint8 input gives a uint8
    output, clamped and rounded (half away from zero) after each axis, as MATLAB does for uint8 images; a float
    input gives an unrounded output of the same dtype. Scale 1 returns a copy.
    """
    if (scale is None) == (size is None):
        raise ValueError("give exactly one of scale or size")
    in_h, in_w = x.shape[-2:]
    if size is None:
        if not scale > 0:
            raise ValueError(f"scale must be positive, not {scale}")
        scales = (float(scale), float(scale))
        size = (int(math.ceil(in_h * scales[0] - 1e-9)), int(math.ceil(in_w * scales[1] - 1e-9)))
    else:
        size = (int(size[0]), int(size[1]))
        scales = (size[0] / in_h, size[1] / in_w)
    if min(size) < 1:
        raise ValueError(f"resizing {in_h}x{in_w} by {scale} leaves no pixels")
    is_uint8 = x.dtype == torch.uint8
    work_dtype = torch.float32 if x.device.type == 'mps' else torch.float64
    out = x.clone()
    # MATLAB resizes the axis with the smaller scale first (rows first on ties).
    order = (-2, -1) if scales[0] <= scales[1] else (-1, -2)
    for dim in order:
        axis = 0 if dim == -2 else 1
        in_len, out_len, s = out.shape[dim], size[axis], scales[axis]
        if in_len == out_len and s == 1:
            continue
        matrix = _imresize_matrix(in_len, out_len, s, antialias, x.device, work_dtype)
        out = out.to(work_dtype)
        if dim == -2:
            out = torch.matmul(matrix, out)  # (out_len, H) @ (..., H, W) -> (..., out_len, W)
        else:
            out = torch.matmul(out, matrix.T)  # (..., H, W) @ (W, out_len) -> (..., H, out_len)
        if is_uint8:
            out = torch.floor(out.clamp(0, 255) + 0.5).to(torch.uint8)
    return out.to(x.dtype) if x.dtype.is_floating_point else out


@_small_cached
def _pil_bicubic_matrix(in_len, out_len, device, dtype):
    """(out_len, in_len) weights of Pillow's bicubic resampling along one axis (a = -0.5, support widened by
    the scale when shrinking, clipped at the borders and renormalised), as Pillow's precompute_coeffs."""
    scale = in_len / out_len
    filterscale = max(scale, 1.)
    support = 2. * filterscale
    centers = (torch.arange(out_len, dtype=torch.float64) + 0.5) * scale  # (out_len,)
    xmin = torch.clamp((centers - support + 0.5).floor(), min=0)
    xmax = torch.clamp((centers + support + 0.5).floor(), max=in_len)
    x = torch.arange(in_len, dtype=torch.float64)  # (in_len,)
    weights = _cubic((x[None, :] - centers[:, None] + 0.5) / filterscale)  # (out_len, in_len)
    weights = weights * ((x[None, :] >= xmin[:, None]) & (x[None, :] < xmax[:, None]))
    weights = weights / weights.sum(dim=1, keepdim=True)
    return weights.to(device=device, dtype=dtype)


def pil_resize(x, size):
    """Pillow's bicubic resize (``Image.resize(size, BICUBIC)``) of uint8 images, batched, on any device.

    x: (..., H, W) uint8; size: (out_h, out_w). Horizontal pass first, each pass rounded to 8 bits, as Pillow
    does for 8-bit images; within 1 grey level of Pillow (which uses fixed-point weights).
    """
    out = x
    for dim, out_len in ((-1, size[1]), (-2, size[0])):
        in_len = out.shape[dim]
        if in_len == out_len:
            continue
        matrix = _pil_bicubic_matrix(in_len, out_len, x.device, torch.float32)
        out = out.to(torch.float32)
        out = torch.matmul(out, matrix.T) if dim == -1 else torch.matmul(matrix, out)
        out = torch.floor(out.clamp(0, 255) + 0.5).to(torch.uint8)
    return out


def modcrop(img, scale):
    """Top-left crop of (..., H, W) to multiples of ``scale``, as MATLAB's modcrop."""
    h, w = img.shape[-2:]
    return img[..., :h - h % scale, :w - w % scale]


# ----------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------


def _check_pair(a, b):
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.dim() not in (2, 3):
        raise ValueError(f"expected (H, W) or (N, H, W) luma, got shape {tuple(a.shape)}")


def shave(img, border):
    """Remove ``border`` pixels from every side of (..., H, W)."""
    return img[..., border:img.shape[-2] - border, border:img.shape[-1] - border] if border else img


def psnr(a, b, border=0, data_range=255.):
    """PSNR in dB of luma images with values in [0, data_range], after removing ``border`` pixels per side.

    a, b: (H, W) or (N, H, W); computed in float64 per image. Returns a float, or a (N,) tensor.
    Identical images give inf.
    """
    _check_pair(a, b)
    a, b = shave(a.to(torch.float64), border), shave(b.to(torch.float64), border)
    mse = ((a - b) ** 2).mean(dim=(-2, -1))
    out = 10. * torch.log10(data_range ** 2 / mse)
    return out.item() if out.dim() == 0 else out


def _gaussian_window(size=11, sigma=1.5, dtype=torch.float64, device='cpu'):
    g = torch.exp(-((torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2.) ** 2) / (2. * sigma ** 2))
    return g / g.sum()


def ssim(a, b, border=0, data_range=255.):
    """SSIM (Wang et al. 2004) of luma images in [0, data_range]: 11x11 Gaussian window, sigma 1.5,
    K1 = 0.01, K2 = 0.03, valid region only (no padding), after removing ``border`` pixels per side.

    a, b: (H, W) or (N, H, W); float64. Returns the mean SSIM map per image: a float, or a (N,) tensor.
    Equals scikit-image's structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=255).
    """
    _check_pair(a, b)
    a, b = shave(a.to(torch.float64), border), shave(b.to(torch.float64), border)
    if min(a.shape[-2:]) < 11:
        raise ValueError(f"SSIM needs at least 11x11 pixels after the border crop, got {tuple(a.shape[-2:])}")
    squeeze = a.dim() == 2
    a, b = a.reshape(-1, 1, *a.shape[-2:]), b.reshape(-1, 1, *b.shape[-2:])
    g = _gaussian_window(device=a.device)

    def blur(t):  # separable Gaussian, valid region: (N, 1, H, W) -> (N, 1, H - 10, W - 10)
        return F.conv2d(F.conv2d(t, g.view(1, 1, -1, 1)), g.view(1, 1, 1, -1))

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    out = ssim_map.mean(dim=(-3, -2, -1))
    return out.item() if squeeze else out


def tutorial_metrics(sr, hr):
    """The tutorial's eval.py computation: Y via convert_image (unrounded, 4-pixel border crop) of SR and HR in
    [-1, 1], then scikit-image's default PSNR and SSIM (7x7 uniform window) with data_range 255.

    sr, hr: (3, H, W) tensors in [-1, 1]. Returns (psnr, ssim) as floats.
    """
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity
    sr_y = convert_image(sr.unsqueeze(0).float(), source='[-1, 1]', target='y-channel')[0].cpu().numpy()
    hr_y = convert_image(hr.unsqueeze(0).float(), source='[-1, 1]', target='y-channel')[0].cpu().numpy()
    return (float(peak_signal_noise_ratio(hr_y, sr_y, data_range=255.)),
            float(structural_similarity(hr_y, sr_y, data_range=255.)))


# ----------------------------------------------------------------------------------------------
# Training-time transforms and small helpers from the tutorial
# ----------------------------------------------------------------------------------------------


def downscale(hr_img, scaling_factor, method='pil'):
    """LR version of a PIL image whose sides are multiples of the scale: 'pil' (the tutorial's PIL bicubic)
    or 'matlab' (imresize, the papers' degradation)."""
    w, h = hr_img.width // scaling_factor, hr_img.height // scaling_factor
    if method == 'pil':
        return hr_img.resize((w, h), Image.Resampling.BICUBIC)
    if method == 'matlab':
        arr = torch.from_numpy(np.asarray(hr_img, dtype=np.uint8).copy()).permute(2, 0, 1)
        return Image.fromarray(imresize(arr, 1. / scaling_factor).permute(1, 2, 0).numpy(), mode='RGB')
    raise ValueError(f"downsampling method is 'pil' or 'matlab', not {method!r}")


class ImageTransforms:
    """The tutorial's pipeline: crop the HR image, bicubic-downscale it to LR, convert both.

    train: a random crop_size x crop_size crop (any offset from 0 to size - crop, inclusive);
    test: the largest centre crop whose sides are multiples of the scale. ``rng`` (a random.Random)
    makes crops reproducible; default is the global ``random`` module, as in the tutorial.
    """

    def __init__(self, split, crop_size, scaling_factor, lr_img_type, hr_img_type, downsample='pil'):
        self.split = split.lower()
        if self.split not in {'train', 'test'}:
            raise ValueError(f"split must be 'train' or 'test', not {split!r}")
        self.crop_size = int(crop_size)
        self.scaling_factor = int(scaling_factor)
        self.lr_img_type = lr_img_type
        self.hr_img_type = hr_img_type
        self.downsample = downsample

    def __call__(self, img, rng=random):
        if self.split == 'train':
            if img.width < self.crop_size or img.height < self.crop_size:
                raise ValueError(f"image {img.width}x{img.height} is smaller than the crop size {self.crop_size}")
            # The tutorial draws from 1, so offset 0 never occurs and an image equal to the crop crashes.
            left = rng.randint(0, img.width - self.crop_size)
            top = rng.randint(0, img.height - self.crop_size)
            hr_img = img.crop((left, top, left + self.crop_size, top + self.crop_size))
        else:
            x_rem, y_rem = img.width % self.scaling_factor, img.height % self.scaling_factor
            left, top = x_rem // 2, y_rem // 2
            hr_img = img.crop((left, top, left + img.width - x_rem, top + img.height - y_rem))
        lr_img = downscale(hr_img, self.scaling_factor, self.downsample)
        assert hr_img.width == lr_img.width * self.scaling_factor
        assert hr_img.height == lr_img.height * self.scaling_factor
        lr = convert_image(lr_img, source='pil', target=self.lr_img_type)  # (3, h, w)
        hr = convert_image(hr_img, source='pil', target=self.hr_img_type)  # (3, h * s, w * s)
        return lr, hr


class AverageMeter:
    """Keeps the latest value, sum, count and average of a metric."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.val = self.avg = self.sum = 0.
        self.count = 0

    def update(self, val, n=1):
        self.val = val
        self.sum += val * n
        self.count += n
        self.avg = self.sum / self.count


def adjust_learning_rate(optimizer, shrink_factor):
    """Multiply every parameter group's learning rate by ``shrink_factor``."""
    for group in optimizer.param_groups:
        group['lr'] = group['lr'] * shrink_factor
    print(f"learning rate decayed to {optimizer.param_groups[0]['lr']:g}")


# ----------------------------------------------------------------------------------------------
# Devices, seeds, RNG state
# ----------------------------------------------------------------------------------------------


def pick_device(name='auto'):
    """'auto' -> cuda if available, else mps, else cpu; otherwise the named device (checked)."""
    if name == 'auto':
        if torch.cuda.is_available():
            return torch.device('cuda')
        if getattr(torch.backends, 'mps', None) is not None and torch.backends.mps.is_available():
            return torch.device('mps')
        return torch.device('cpu')
    device = torch.device(name)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    if device.type == 'mps' and not torch.backends.mps.is_available():
        raise UserError(f"--device {name}: MPS is not available on this machine; use --device cpu")
    return device


def seed_everything(seed):
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def get_rng_state():
    """RNG states of python, numpy, torch and CUDA as plain data (lists, ints, tensors)."""
    np_state = np.random.get_state(legacy=False)
    version, internal, gauss = random.getstate()
    return {
        'python': [version, list(internal), gauss],
        'numpy': {'key': np_state['state']['key'].tolist(), 'pos': int(np_state['state']['pos']),
                  'has_gauss': int(np_state['has_gauss']), 'gauss': float(np_state['gauss'])},
        'torch': torch.get_rng_state(),
        'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state):
    """Restore what get_rng_state saved."""
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    n = state['numpy']
    np.random.set_state({'bit_generator': 'MT19937', 'state': {'key': np.array(n['key'], dtype=np.uint32),
                                                                'pos': n['pos']},
                         'has_gauss': n['has_gauss'], 'gauss': n['gauss']})
    torch.set_rng_state(state['torch'])
    if state['cuda'] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'][:torch.cuda.device_count()])


# ----------------------------------------------------------------------------------------------
# Checkpoints: plain data only, atomic writes, safe loads
# ----------------------------------------------------------------------------------------------

FORMAT_VERSION = 1
WRAPPER_PREFIXES = ('module.', '_orig_mod.')


def unwrap_model(model):
    """The bare module inside DataParallel / DistributedDataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
            model = model.module
        elif hasattr(model, '_orig_mod'):
            model = model._orig_mod
        else:
            return model


def strip_prefixes(state_dict):
    """Remove DataParallel/DDP ``module.`` and torch.compile ``_orig_mod.`` prefixes from state_dict keys."""
    out = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        out[key] = value
    return out


def plain_args(args):
    """argparse Namespace -> dict of plain values (str/int/float/bool/None/lists), safe for weights_only loads."""
    def plain(v):
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return str(v)
    return {k: plain(v) for k, v in vars(args).items()}


def atomic_write(path, write_fn):
    """Write a file atomically: ``write_fn(file)`` into a temp file in the same folder, flush, fsync, os.replace.

    A crash at any moment leaves either the old file or the new one, never a torn one (a killed writer's temp
    file is removed by the next write). Failures (disk full, permission denied) raise UserError naming the
    path; the old file is kept and the temp file removed.
    """
    folder = os.path.dirname(os.path.abspath(path))
    prefix = '.' + os.path.basename(path) + '.'
    try:
        os.makedirs(folder, exist_ok=True)
        for stale in os.listdir(folder):  # left by a writer killed mid-write (kill -9, power loss)
            if stale.startswith(prefix) and stale.endswith('.tmp'):
                os.unlink(os.path.join(folder, stale))
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix='.tmp', dir=folder)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, 'wb') as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, (OSError, RuntimeError)):
            raise UserError(f"cannot write {path}: {getattr(e, 'strerror', None) or e}; "
                            f"the previous file, if any, is unchanged") from None
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def atomic_write_text(path, text):
    atomic_write(path, lambda f: f.write(text.encode('utf-8')))


def save_checkpoint(state, path):
    """torch.save ``state`` (state_dicts and plain data only) atomically."""
    atomic_write(path, lambda f: torch.save(state, f))


LEGACY_HELP = ("if it is the tutorial's old format (whole pickled models) and you trust its source, convert it "
               "once with: python eval.py --convert-legacy {path} NEW.pth")


def load_checkpoint(path, map_location='cpu'):
    """Load a checkpoint with ``weights_only=True``: tensors and plain data only, nothing is executed.

    A file that needs arbitrary unpickling (pickled modules, or a payload that would run code) is refused
    with UserError; so are missing files and files that are not checkpoints.
    """
    if not os.path.isfile(path):
        raise UserError(f"checkpoint {path}: no such file" + (" (it is a directory)" if os.path.isdir(path) else ""))
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        text = str(e)
        if 'GLOBAL' in text or 'Unsupported global' in text or 'Unsupported operand' in text:
            raise UserError(f"refusing to load {path}: it needs arbitrary unpickling, which can run code; "
                            + LEGACY_HELP.format(path=path)) from None
        raise UserError(f"{path} is not a readable checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:120]})") \
            from None
    if not isinstance(ckpt, dict):
        raise UserError(f"{path} is not a checkpoint of this suite (it holds a {type(ckpt).__name__})")
    return ckpt


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
        out['generator_config'] = infer_srresnet_config(out['generator'], prefix='net.')
    else:
        out['arch'] = 'srresnet'
        out['model_config'] = infer_srresnet_config(out['model'])
    save_checkpoint(out, dst)
    return out


def infer_srresnet_config(state_dict, prefix=''):
    """SRResNet constructor arguments recovered from a state_dict's shapes (for the seed's own checkpoints)."""
    sd = strip_prefixes(state_dict)
    try:
        w1 = sd[prefix + 'conv_block1.conv_block.0.weight']  # (n_channels, 3, k, k)
        w2 = sd[prefix + 'conv_block2.conv_block.0.weight']  # (n_channels, n_channels, k, k)
    except KeyError:
        raise UserError("the checkpoint's weights are not an SRResNet's (no conv_block1/conv_block2)") from None
    def count(block):  # distinct indices i in '<prefix><block>.<i>.*'
        return len({k[len(prefix):].split('.')[1] for k in sd if k.startswith(prefix + block + '.')})
    n_blocks, n_sub = count('residual_blocks'), count('subpixel_convolutional_blocks')
    return {'large_kernel_size': int(w1.shape[-1]), 'small_kernel_size': int(w2.shape[-1]),
            'n_channels': int(w1.shape[0]), 'n_blocks': n_blocks, 'scaling_factor': 2 ** n_sub}


def describe_checkpoint(ckpt, path):
    """(arch, model_config, state_dict) of the SR network in a checkpoint of any supported kind.

    Accepts this suite's checkpoints (any architecture; SRGAN gives its generator), and the seed's own
    SRResNet/SRGAN checkpoints, whose configuration is inferred from the weights. Refuses newer formats.
    """
    version = ckpt.get('format_version', 0)
    if version > FORMAT_VERSION:
        raise UserError(f"{path} has checkpoint format version {version}; this suite reads up to "
                        f"{FORMAT_VERSION}: update the suite")
    if 'generator' in ckpt:
        state = strip_prefixes(ckpt['generator'])
        config = ckpt.get('generator_config') or infer_srresnet_config(state, prefix='net.')
        return 'srgan', dict(config), {k[len('net.'):]: v for k, v in state.items() if k.startswith('net.')}
    if 'model' in ckpt:
        state = strip_prefixes(ckpt['model'])
        arch = ckpt.get('arch', 'srresnet')
        config = ckpt.get('model_config') or infer_srresnet_config(state)
        if arch not in models.ARCHS:
            raise UserError(f"{path}: unknown architecture {arch!r}")
        return arch, dict(config), state
    raise UserError(f"{path} holds no 'model' or 'generator' weights: not an SR checkpoint")


def load_sr_model(path, device='cpu', expect_scale=None):
    """Rebuild the SR network recorded in a checkpoint. Returns (model in eval mode, arch, config).

    arch is the model's architecture ('srresnet' also for an SRGAN generator, whose weights are an SRResNet's);
    ``expect_scale`` turns a scale mismatch into a UserError naming both scales.
    """
    ckpt = load_checkpoint(path)
    arch, config, state = describe_checkpoint(ckpt, path)
    net_arch = 'srresnet' if arch == 'srgan' else arch
    scale = int(config['scaling_factor'])
    if expect_scale is not None and int(expect_scale) != scale:
        raise UserError(f"{path} was trained for x{scale}, not x{expect_scale}: pass --scale {scale} "
                        f"or a x{expect_scale} checkpoint")
    try:
        model = models.build_model(net_arch, config)
        model.load_state_dict(state)
    except (RuntimeError, TypeError, ValueError) as e:
        raise UserError(f"{path}: weights do not match a {net_arch} with {config} "
                        f"({str(e).splitlines()[0][:160]})") from None
    return model.to(device).eval(), net_arch, config


# ----------------------------------------------------------------------------------------------
# Command-line flags shared by the scripts
# ----------------------------------------------------------------------------------------------


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Docstring kept as written; '(default: X)' after each flag, except for flags without a fixed default (None),
    whose help says in words what they default to."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


TUTORIAL_WORKERS = 4  # the tutorial's DataLoader worker count


def make_parser(doc, *, data=True, device=True, training=False):
    """An ArgumentParser whose description is the script's docstring, with the flags the scripts share:
    --data-folder (data), --device (device), --workers and --seed (training)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=HelpFormatter)
    if data:
        parser.add_argument('--data-folder', default='./data/', help='folder holding the JSON data lists')
    if device:
        parser.add_argument('--device', default='auto',
                            help="'auto' (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps")
    if training:
        parser.add_argument('--workers', type=int, default=None,
                            help="data-loading worker processes (default: 4, the tutorial's; 0 when training on a "
                                 "CPU from the RAM cache, where workers only compete with the model for the cores)")
        parser.add_argument('--seed', type=int, default=0, help='random seed (data order, crops, initialisation)')
    return parser


def positive_int(text):
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


# ----------------------------------------------------------------------------------------------
# Inference: one wrapper for every architecture
# ----------------------------------------------------------------------------------------------


def pil_to_tensor(img):
    """PIL RGB -> (3, H, W) uint8 tensor."""
    return torch.from_numpy(np.asarray(img.convert('RGB'), dtype=np.uint8).copy()).permute(2, 0, 1)


def tensor_to_pil(img):
    """(3, H, W) uint8 tensor -> PIL RGB."""
    return Image.fromarray(img.permute(1, 2, 0).cpu().numpy(), mode='RGB')


def to_uint8(img01):
    """Float image in [0, 1] -> uint8 values (clamped, rounded half up)."""
    return torch.floor(img01.clamp(0, 1) * 255. + 0.5).to(torch.uint8)


def parse_memory(value):
    """A byte count from 2000000000, '2GB', '1.5 GiB', '512M' or '800k'; None stays None.

    Units are powers of 1024, with or without 'i' and 'B' (1GB = 1GiB = 2**30 bytes). ValueError otherwise.
    """
    import re
    if value is None:
        return None
    text = str(value).strip().lower().replace(' ', '')
    match = re.fullmatch(r'([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)([kmgt]?)(i?b)?', text)
    if not match or (match.group(3) == 'ib' and not match.group(2)):
        raise ValueError(f"{value!r} is not a memory size (examples: 2GB, 512MB, 1.5GiB, 2000000000)")
    size = float(match.group(1)) * 1024 ** ' kmgt'.index(match.group(2) or ' ')
    if size < 1:
        raise ValueError(f"a memory size must be at least 1 byte, not {value!r}")
    return int(size)


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


def bicubic_upscale(img, scale, chunk_bytes=64 * 2 ** 20):
    """``imresize(img, scale)`` for an integer ``scale`` computed a band of output rows at a time, so a large
    image needs about ``chunk_bytes`` of float64 work space instead of 8 bytes x the whole output x taps.

    img: (..., H, W) uint8 or float. Same values as imresize (same taps, same order of operations).
    """
    scale = int(scale)
    in_h, in_w = img.shape[-2:]
    out_h, out_w = in_h * scale, in_w * scale
    if scale == 1:
        return img.clone()
    work_dtype = torch.float32 if img.device.type == 'mps' else torch.float64
    row_idx, row_w = _resize_taps(in_h, out_h, float(scale), True, img.device)
    col_idx, col_w = _resize_taps(in_w, out_w, float(scale), True, img.device)
    row_w, col_w = row_w.to(work_dtype), col_w.to(work_dtype)
    channels = int(np.prod(img.shape[:-2])) if img.dim() > 2 else 1
    rows = max(1, int(chunk_bytes // (8 * channels * out_w * (col_w.shape[1] + 2))))
    out = torch.empty(*img.shape[:-2], out_h, out_w, dtype=img.dtype, device=img.device)
    src = img.to(work_dtype) if img.dtype != work_dtype else img
    for r0 in range(0, out_h, rows):
        r1 = min(out_h, r0 + rows)
        band = (src[..., row_idx[r0:r1], :] * row_w[r0:r1, :, None]).sum(dim=-2)  # (..., r, W), rows first
        if img.dtype == torch.uint8:  # uint8 stays on the 8-bit grid between the passes, as in imresize
            band = torch.floor(band.clamp(0, 255) + 0.5)
        band = (band[..., col_idx] * col_w).sum(dim=-1)  # (..., r, out_w)
        if img.dtype == torch.uint8:
            out[..., r0:r1, :] = torch.floor(band.clamp(0, 255) + 0.5).to(torch.uint8)
        else:
            out[..., r0:r1, :] = band.to(img.dtype)
    return out


def subpixel_conv(conv, r):
    """A convolution on the grid before PixelShuffle(r) equal to ``conv`` applied after it (a frozen copy of
    models.conv_before_shuffle): ``conv(pixel_shuffle(z, r)) == pixel_shuffle(subpixel_conv(conv, r)(z), r)`` up to
    float rounding. Returns None when conv does not qualify (models.before_shuffle_qualifies)."""
    if not models.before_shuffle_qualifies(conv):
        return None
    with torch.no_grad():
        index, padding = models.before_shuffle_index(conv, r)
        weight, bias = models.conv_before_shuffle(conv, r, index)
        new = torch.nn.Conv2d(weight.shape[1], weight.shape[0], weight.shape[-1], padding=padding,
                              bias=bias is not None, device=weight.device, dtype=weight.dtype)
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new


def fuse_for_inference(model):
    """A copy of ``model`` for inference with the same outputs up to float rounding: BatchNorm (eval statistics)
    folded into the convolution before it, and the final convolution after the last pixel shuffle moved before
    it (models.conv_before_shuffle) for SRResNet/SRGAN, EDSR and RCAN. The given model is not changed."""
    import copy
    from torch.nn.utils.fusion import fuse_conv_bn_eval
    model = copy.deepcopy(model).eval()
    for seq in [m for m in model.modules() if isinstance(m, torch.nn.Sequential)]:
        for i in range(len(seq) - 1):
            if isinstance(seq[i], torch.nn.Conv2d) and isinstance(seq[i + 1], torch.nn.BatchNorm2d):
                seq[i], seq[i + 1] = fuse_conv_bn_eval(seq[i], seq[i + 1]), torch.nn.Identity()
    if isinstance(model, models.SRResNet):
        model.use_tail_before_shuffle()
    elif isinstance(model, (models.EDSR, models.RCAN)):
        upsampler, last = model.tail[0], model.tail[1]
        r = upsampler[-1].upscale_factor
        tail_conv = subpixel_conv(last, r)
        if tail_conv is not None:
            model.tail = torch.nn.Sequential(*list(upsampler)[:-1], tail_conv, torch.nn.PixelShuffle(r))
    return model


PRECISIONS = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}


class Upscaler:
    """Runs any architecture of the suite on RGB images, hiding its input/output conventions.

    ``upscale(lr)`` takes (N, 3, h, w) RGB in [0, 1] on any device and returns (sr_rgb, sr_y):
    sr_rgb (N, 3, s*h, s*w) in [0, 1] (float32, unclamped), and for Y-channel models the model's own luma
    (N, s*h, s*w) in [0, 1] (None for RGB models). Y-channel models upscale Cb/Cr with MATLAB bicubic.
    ``upscale_uint8(lr)`` returns the rounded RGB image (N, 3, s*h, s*w) uint8 on the CPU, built tile by tile
    without a full-size float copy.

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
      fuse: run a copy made by fuse_for_inference (BatchNorm folded, the last conv on the sub-pixel grid): same
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
        self.precision = precision
        self._check_precision()
        self.self_ensemble, self.channels_last, self.fuse = bool(self_ensemble), bool(channels_last), bool(fuse)
        if self.fuse:
            self.model = fuse_for_inference(self.model)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self._per_pixel = None

    def _check_precision(self):
        kind, p = self.device.type, self.precision
        if p not in PRECISIONS:
            raise UserError(f"precision {p!r}: choose fp32, bf16 or fp16")
        if p == 'fp16' and kind not in ('cuda', 'mps'):
            raise UserError(f"precision fp16 needs a CUDA (or MPS) device, not {kind}: use bf16 on the CPU")
        if p == 'bf16' and kind == 'mps':
            raise UserError("precision bf16 is not supported on MPS: use fp16")
        if p == 'bf16' and kind == 'cuda' and not torch.cuda.is_bf16_supported():
            raise UserError("this GPU does not support bf16: use fp16")

    def min_input_size(self):
        """Smallest LR side the model accepts (the Discriminator-free models accept 1 px; keep 2 for bicubic)."""
        return 2

    # -- the network and its conventions --------------------------------------------------------

    def _autocast(self):
        if PRECISIONS[self.precision] is None:
            import contextlib
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=PRECISIONS[self.precision])

    def _net(self, x):
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._autocast():
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
        spec = self.spec
        if spec.color == 'rgb':
            x = convert_image(lr, source='[0, 1]', target=spec.in_type)
            out = self._body(x)  # (N, 3, s*h, s*w), in out_type
            return convert_image(out.float(), source=spec.out_type, target='[0, 1]'), None
        ycbcr = rgb_to_ycbcr(lr)  # (N, 3, h, w), in [0, 1]
        y = ycbcr[:, :1]
        if spec.pre_upsample:
            y = imresize(y, self.scale)  # (N, 1, s*h, s*w)
        sr_y = self._body(y).float()  # (N, 1, s*h, s*w), in [0, 1]
        cbcr = imresize(ycbcr[:, 1:], self.scale).float()  # (N, 2, s*h, s*w)
        sr = ycbcr_to_rgb(torch.cat([sr_y, cbcr], dim=1))
        return sr, sr_y[:, 0]

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

    def _tiled(self, lr, tile, sink):
        """Run the model over overlapping windows of lr (N, 3, h, w) and blend them. Finished output rows go to
        ``sink(row0, rows)`` with rows (N, C, r, s*w) float32 (C = 3, or 4 with the Y-model's luma last); only one
        band of output rows (one window high) is held in float32 at a time."""
        n, _, h, w = lr.shape
        s, c, overlap = self.scale, 3 if self.spec.color == 'rgb' else 4, self.tile_overlap
        th, tw = fit_tile(h, tile, overlap), fit_tile(w, tile, overlap)
        ys, xs = tile_starts(h, th, overlap), tile_starts(w, tw, overlap)
        wx = [_blend_ramp(xs, j, tw, w, s, self.device) for j in range(len(xs))]
        band_top, band, weights = 0, None, None
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
            done = ys[i + 1] * s if i + 1 < len(ys) else h * s  # rows above the next window row are final
            k = done - band_top
            sink(band_top, band[:, :, :k].div_(weights[:k]))
            band, weights, band_top = band[:, :, k:].clone(), weights[k:].clone(), done

    # -- public API --------------------------------------------------------------------------------

    @torch.no_grad()
    def upscale(self, lr):
        n, _, h, w = lr.shape
        tile = self.plan_tile(n, h, w)
        if tile is None:
            return self._sr(lr)
        s, c = self.scale, 3 if self.spec.color == 'rgb' else 4
        out = torch.empty(n, c, h * s, w * s, device=self.device)

        def sink(row, rows):
            out[:, :, row:row + rows.shape[2]] = rows

        self._tiled(lr, tile, sink)
        return (out, None) if c == 3 else (out[:, :3], out[:, 3])

    @torch.no_grad()
    def upscale_uint8(self, lr):
        """lr (N, 3, h, w) RGB in [0, 1] -> (N, 3, s*h, s*w) uint8 RGB on the CPU (clamped, rounded half up)."""
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
        else:
            self._tiled(lr, tile, sink)
        return out


def timer():
    """perf_counter that first waits for queued GPU work."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()


# ----------------------------------------------------------------------------------------------
# Training machinery shared by train_srresnet.py and train_srgan.py
# ----------------------------------------------------------------------------------------------


def model_io(spec, lr, hr, scale):
    """Training pairs in the model's own spaces. lr (N, 3, h, w), hr (N, 3, s*h, s*w): RGB in [0, 1].

    RGB models: (lr in spec.in_type, hr in spec.out_type). Y-channel models: (Y of lr, bicubic-upscaled when
    spec.pre_upsample, Y of hr), each (N, 1, ., .) in [0, 1]. The loss is computed in the target's space.
    """
    if spec.color == 'rgb':
        return convert_image(lr, '[0, 1]', spec.in_type), convert_image(hr, '[0, 1]', spec.out_type)
    lr_y = rgb_to_ycbcr(lr)[:, :1]  # (N, 1, h, w)
    if spec.pre_upsample:
        lr_y = imresize(lr_y, scale)  # (N, 1, s*h, s*w)
    return lr_y, rgb_to_ycbcr(hr)[:, :1]


def to_display(img, kind):
    """(N, C, H, W) in ``kind`` -> [0, 1] for image grids (Y images stay single-channel)."""
    if img.shape[1] == 1:
        return img.float().clamp(0, 1)
    return convert_image(img.float(), kind, '[0, 1]').clamp(0, 1)


class Dist:
    """Process-group facts for this process: rank, world size, local rank, device; is_main for rank 0."""

    def __init__(self, rank=0, world_size=1, local_rank=0, device=torch.device('cpu')):
        self.rank, self.world_size, self.local_rank, self.device = rank, world_size, local_rank, device

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def enabled(self):
        return self.world_size > 1 or torch.distributed.is_initialized()

    def all_mean(self, value):
        """Mean of a float across ranks (the value itself when not distributed)."""
        if not self.enabled:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return t.item() / self.world_size

    def barrier(self):
        if self.enabled:
            torch.distributed.barrier()


def init_distributed(device_name, ngpu=1, timeout_s=600):
    """Join the torchrun process group when launched by torchrun (RANK/WORLD_SIZE set), else a single process.

    nccl on CUDA (one GPU per process, cuda:LOCAL_RANK), gloo on CPU. --ngpu > 1 with torchrun is refused.
    """
    import datetime
    if 'RANK' not in os.environ or 'WORLD_SIZE' not in os.environ:
        return Dist(device=pick_device(device_name))
    if ngpu > 1:
        raise UserError("--ngpu (DataParallel) and torchrun (DDP) cannot be combined: drop --ngpu under torchrun")
    rank, world = int(os.environ['RANK']), int(os.environ['WORLD_SIZE'])
    local_rank = int(os.environ.get('LOCAL_RANK', 0))
    device = pick_device(device_name)
    if device.type == 'cuda':
        device = torch.device('cuda', local_rank)
        torch.cuda.set_device(device)
    backend = 'nccl' if device.type == 'cuda' else 'gloo'
    torch.distributed.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return Dist(rank, world, local_rank, device)


def close_distributed():
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def wrap_model(model, dist, ngpu=1, sync_bn=False):
    """DDP under torchrun (SyncBatchNorm with sync_bn on CUDA), DataParallel for --ngpu N on CUDA, else as is."""
    if dist.enabled:
        if sync_bn and dist.device.type == 'cuda':
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ids = [dist.device.index] if dist.device.type == 'cuda' else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if ngpu > 1 and dist.device.type == 'cuda' and torch.cuda.device_count() > 1:
        return torch.nn.DataParallel(model, device_ids=list(range(min(ngpu, torch.cuda.device_count()))))
    return model


def per_rank_batch_size(batch_size, dist):
    """--batch-size is global: split evenly across processes (UserError if it does not divide)."""
    if batch_size % dist.world_size:
        raise UserError(f"--batch-size {batch_size} (global) does not divide across {dist.world_size} processes")
    return batch_size // dist.world_size


def make_train_loader(dataset, batch_size, dist, workers, seed, pin_memory=False, collate_fn=None):
    """DataLoader over an EpochSampler: the global batch (in patches) is split across ranks; datasets whose items
    hold several crops (PatchDataset) are batched by visits; ``workers`` None picks loader_workers' default.
    Returns (loader, sampler)."""
    from datasets import EpochSampler
    workers = loader_workers(workers, dist.device, dataset)
    per_rank = per_rank_batch_size(batch_size, dist)
    crops = getattr(dataset, 'crops_per_visit', 1)
    if per_rank % crops and getattr(dataset, 'auto_crops', False):
        crops = math.gcd(per_rank, crops)
        dataset.set_crops_per_visit(crops)
    if per_rank % crops:
        raise UserError(f"--batch-size {batch_size} ({per_rank} per process) is not a multiple of "
                        f"--crops-per-visit {crops}")
    sampler = EpochSampler(len(dataset), seed=seed, shuffle=True, rank=dist.rank, world_size=dist.world_size)
    loader = torch.utils.data.DataLoader(dataset, batch_size=per_rank // crops, sampler=sampler,
                                         num_workers=workers, pin_memory=pin_memory, persistent_workers=workers > 0,
                                         collate_fn=collate_fn)
    return loader, sampler


def autocast(device, amp):
    """Autocast context for --amp off|bf16|fp16 on this device."""
    if amp == 'off':
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == 'bf16' else torch.float16)


class StopRequest:
    """Turns Ctrl-C / SIGTERM into a flag the training loop checks after each step (a second Ctrl-C aborts)."""

    def __init__(self):
        import signal
        self.requested = False
        self._previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. called from a test thread)
                pass

    def _handle(self, signum, frame):
        import signal
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\n{signal.Signals(signum).name} received: finishing this step, then saving", file=sys.stderr)

    def restore(self):
        import signal
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def check_finite(loss_value, epoch, step, checkpoint_path):
    """Stop (UserError) when a loss is NaN or inf, naming the step; the last good checkpoint stays as it is."""
    if not math.isfinite(loss_value):
        raise UserError(f"loss became {loss_value} at epoch {epoch}, step {step}; stopped without saving, "
                        f"so {checkpoint_path} still holds the last good state (try a lower --lr or --amp off)")


def make_writer(log_dir, dist):
    """A TensorBoard SummaryWriter on rank 0, None elsewhere."""
    if not dist.is_main:
        return None
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(log_dir=log_dir)


def log_image_grids(writer, tag, epoch, lr, sr, hr, lr_kind, out_kind):
    """TensorBoard grids of the first 4 LR / SR / HR images of a batch, each mapped to [0, 1]."""
    from torchvision.utils import make_grid
    if writer is None:
        return
    for name, img, kind in (('1_lr', lr, lr_kind), ('2_sr', sr, out_kind), ('3_hr', hr, out_kind)):
        writer.add_image(f"{tag}/{name}", make_grid(to_display(img[:4].detach().cpu(), kind), nrow=4), epoch)


def progress(iterable, total, dist, desc):
    """A tqdm bar on rank 0 when stderr is a terminal; the bare iterable otherwise."""
    from tqdm import tqdm
    return tqdm(iterable, total=total, desc=desc, disable=None if dist.is_main else True, dynamic_ncols=True,
                leave=False)


def resume_command():
    """The command line that resumes this run (argv with --resume added when missing)."""
    argv = [a for a in sys.argv]
    if '--resume' not in argv and not any(a.startswith('--resume=') for a in argv):
        argv.append('--resume')
    launcher = 'torchrun ...' if 'RANK' in os.environ else 'python'
    return f"{launcher} {' '.join(argv)}"


def add_training_args(parser, archs=None):
    """Flags shared by both trainers; defaults None mean 'the architecture's own recipe'.

    archs: choices for --arch (train_srresnet.py); None for a fixed architecture (train_srgan.py).
    """
    g = parser.add_argument_group('training')
    if archs:
        g.add_argument('--arch', default='srresnet', choices=archs, help='architecture to train')
    g.add_argument('--scale', type=int, help='upscaling factor (scaling_factor); default 4')
    g.add_argument('--crop-size', type=positive_int, help='HR patch size; default: the arch recipe (srresnet 96)')
    g.add_argument('--batch-size', type=positive_int, help='GLOBAL batch size (split across torchrun processes); '
                   'default: the arch recipe (srresnet 400, srgan 128)')
    g.add_argument('--epochs', type=positive_int, help='last epoch; default: the arch recipe (srresnet 130)')
    g.add_argument('--lr', type=float, help='learning rate; default: the arch recipe (srresnet 1e-4)')
    g.add_argument('--downsample', choices=('pil', 'matlab'),
                   help="how LR patches are made: 'pil' bicubic (the tutorial) or 'matlab' imresize; "
                        "default: the arch recipe")
    g.add_argument('--patches-per-image', type=positive_int,
                   help='random crops taken from each image per epoch; default: the arch recipe (srresnet 1, as '
                        'the tutorial)')
    g.add_argument('--resume', nargs='?', const='auto', metavar='CHECKPOINT',
                   help='continue from CHECKPOINT (default when given without a value: the output checkpoint)')
    g.add_argument('--results-dir', default='results', help='where checkpoints go')
    g.add_argument('--runs-dir', default='runs', help='TensorBoard log folder')
    g.add_argument('--ngpu', type=positive_int, default=1, help='GPUs for the tutorial\'s DataParallel (CUDA only)')
    g.add_argument('--sync-bn', action='store_true', help='SyncBatchNorm under torchrun on CUDA')
    g = parser.add_argument_group('speed (defaults: the fastest settings that keep accuracy)')
    g.add_argument('--faithful', action='store_true',
                   help="the tutorial's exact loop: fp32, NCHW, eager, one PIL decode + PIL bicubic per patch")
    g.add_argument('--amp', choices=('auto', 'off', 'bf16', 'fp16'), default='auto',
                   help='mixed precision; auto: bf16 on CUDA GPUs and CPUs with native bf16 (AMX/AVX512-BF16), '
                        'else off')
    g.add_argument('--channels-last', action=argparse.BooleanOptionalAction, default=None,
                   help='channels_last memory format (default: on, off with --faithful)')
    g.add_argument('--compile', action='store_true', help='torch.compile the model(s)')
    g.add_argument('--tail-before-shuffle', action=argparse.BooleanOptionalAction, default=None,
                   help="SRResNet/SRGAN: run the last 9x9 conv before the last pixel shuffle, the same function "
                        "(default: on, off with --faithful)")
    g.add_argument('--fast-prelu', action=argparse.BooleanOptionalAction, default=None,
                   help="PReLU's CPU backward as two vectorised passes, the same gradients up to summation order "
                        "(default: on, off with --faithful)")
    g.add_argument('--cache-gb', type=float,
                   help='decode the training images once into RAM when they fit in this many GiB '
                        '(default: a quarter of RAM); otherwise decode on each visit')
    g.add_argument('--crops-per-visit', type=positive_int,
                   help='random crops per image decode (default: 1 with the RAM cache, 4 when streaming)')
    g.add_argument('--hflip', action=argparse.BooleanOptionalAction, default=None,
                   help='random horizontal flips (default: the arch recipe)')
    g.add_argument('--vflip', action=argparse.BooleanOptionalAction, default=None,
                   help='random vertical flips (default: the arch recipe)')
    g.add_argument('--rot90', action=argparse.BooleanOptionalAction, default=None,
                   help='random 90-degree rotations (default: the arch recipe)')
    g.add_argument('--max-bad-fraction', type=float, default=0.05,
                   help='stop when more than this share of training image loads fail')
    g.add_argument('--val-folder', help='image folder (e.g. Set5) for validation PSNR, standard protocol')
    g.add_argument('--val-every', type=positive_int, default=1, help='validate every N epochs (with --val-folder)')
    g.add_argument('--keep-best', action='store_true',
                   help='also keep results/checkpoint_<arch>_best.pth, best by validation PSNR (needs --val-folder)')
    g.add_argument('--dist-timeout', type=positive_int, default=600, help='seconds before a stuck collective fails')
    g.add_argument('--max-steps', type=positive_int,
                   help='stop after this many optimizer steps in total, save and exit 0 (as Ctrl-C does)')
    g.add_argument('--deterministic', action='store_true',
                   help='deterministic algorithms (bit-exact resume on CPU; slower on GPU)')
    return g


def native_bf16(device):
    """True when ``device`` runs bf16 matrix math natively (CUDA with bf16, or a CPU with AMX / AVX512-BF16)."""
    if device.type == 'cuda':
        return torch.cuda.is_bf16_supported()
    if device.type == 'cpu':
        cpu = torch.cpu
        return any(getattr(cpu, f, lambda: False)() for f in ('_is_amx_tile_supported', '_is_avx512_bf16_supported'))
    return False


_GLIBC_M_TRIM_THRESHOLD, _GLIBC_M_MMAP_THRESHOLD = -1, -3  # mallopt parameter numbers, from glibc's malloc.h


def keep_freed_memory():
    """Make glibc's malloc keep freed blocks for reuse instead of returning them to the OS. Returns True if set.

    By default every CPU tensor over a few MB is a fresh mmap: its pages are faulted in (and zeroed by the kernel)
    on first touch and unmapped when it is freed, so each large elementwise op pays for that again. With the
    mmap threshold at 1 GiB and no heap trimming, a training step reuses the previous step's memory; the process
    keeps its peak footprint (and on varied shapes some fragmentation: the inference scripts do not call this).
    Measured here: a 38 MB clone 3x faster, the cached data pipeline 1.6x faster (benchmarks/bench_data.py,
    suite_cached against suite_cached_default_allocator). No effect on results; a no-op away from glibc (macOS,
    Windows, musl).
    """
    try:
        import ctypes
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    for threshold in (2 ** 30, 2 ** 25):  # older glibc caps the threshold at 32 MiB
        if mallopt(_GLIBC_M_MMAP_THRESHOLD, threshold):
            return bool(mallopt(_GLIBC_M_TRIM_THRESHOLD, 2 ** 31 - 1))
    return False


def resolve_speed_args(args, device):
    """Fill 'auto' speed flags for this device; --faithful forces the tutorial's fp32 NCHW eager loop."""
    if args.faithful:
        if (args.amp not in ('auto', 'off') or args.channels_last or args.compile or args.tail_before_shuffle
                or args.fast_prelu):
            raise UserError("--faithful runs the tutorial's fp32 NCHW eager loop: drop --amp/--channels-last/--compile/"
                            "--tail-before-shuffle/--fast-prelu")
        args.amp, args.channels_last, args.tail_before_shuffle, args.fast_prelu = 'off', False, False, False
        return args
    if args.tail_before_shuffle is None:
        args.tail_before_shuffle = True
    if args.fast_prelu is None:
        args.fast_prelu = True
    if args.amp == 'auto':
        args.amp = 'bf16' if native_bf16(device) else 'off'
    if args.amp == 'fp16' and device.type != 'cuda':
        raise UserError("--amp fp16 needs a CUDA GPU; use --amp bf16 or off")
    if args.amp == 'bf16' and device.type == 'mps':
        raise UserError("--amp bf16 is not supported on MPS; use --amp off")
    if args.channels_last is None:
        args.channels_last = device.type in ('cuda', 'cpu')
    return args


def apply_training_rewrites(model, args):
    """The resolved --tail-before-shuffle and --fast-prelu (resolve_speed_args) on ``model``: every SRResNet inside
    it (an SRGAN Generator's .net too) and every models.PReLU. Same function and state_dict, a faster step."""
    for m in model.modules():
        if isinstance(m, models.SRResNet):
            m.use_tail_before_shuffle(args.tail_before_shuffle)
    models.use_fast_prelu(model, args.fast_prelu)


def build_train_dataset(args, log=print):
    """--faithful: the tutorial's SRDataset (PIL per patch); else the cached PatchDataset.

    Returns (dataset, collate_fn)."""
    from datasets import PatchDataset, SRDataset, collate_patches
    if args.faithful:
        return SRDataset(args.data_folder, 'train', args.crop_size, args.scale, '[0, 1]', '[0, 1]',
                         downsample=args.downsample, seed=args.seed, max_bad_fraction=args.max_bad_fraction,
                         repeat=args.patches_per_image), None
    cache = None if args.cache_gb is None else int(args.cache_gb * 2 ** 30)
    dataset = PatchDataset(args.data_folder, args.crop_size, args.scale, seed=args.seed,
                           patches_per_image=args.patches_per_image, crops_per_visit=args.crops_per_visit,
                           hflip=bool(args.hflip), vflip=bool(args.vflip), rot90=bool(args.rot90),
                           cache_bytes=cache, max_bad_fraction=args.max_bad_fraction,
                           workers=TUTORIAL_WORKERS if args.workers is None else args.workers, log=log)
    return dataset, collate_patches


def loader_workers(workers, device, dataset):
    """--workers, or its default when None: 0 on a CPU when the patches come from the RAM cache (cropping is cheap,
    and worker processes would take cores from the model: ESPCN on T91 trained 1.4x faster with 0 than with 4 on 2
    cores), else the tutorial's 4."""
    if workers is not None:
        return workers
    return 0 if device.type == 'cpu' and getattr(dataset, 'buffer', None) is not None else TUTORIAL_WORKERS


def batch_to_device(batch, device, scale, downsample):
    """A loader batch -> (lr, hr) float RGB in [0, 1] on ``device``: SRDataset pairs are moved as they are;
    PatchDataset uint8 HR batches are moved (4x fewer bytes than float) and downscaled there, batched."""
    from datasets import make_lr
    if isinstance(batch, (list, tuple)):
        lr, hr = batch
        return lr.to(device, non_blocking=True), hr.to(device, non_blocking=True)
    hr = batch.to(device, non_blocking=True)  # (N, 3, H, W) uint8
    lr = make_lr(hr, scale, downsample)  # (N, 3, H / s, W / s) uint8
    return lr.float().div_(255.), hr.float().div_(255.)


def set_determinism(enabled):
    """Deterministic kernels (and no cuDNN autotuning) when ``enabled``; cuDNN benchmark mode otherwise."""
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = not enabled
    if enabled:
        os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')


class TrainContext:
    """What the training loop needs besides the model: device/process group, arch spec, AMP, logging, stop flag."""

    def __init__(self, args, dist, dataset, arch, tag):
        self.dist, self.dataset, self.spec, self.scale, self.tag = dist, dataset, models.ARCHS[arch], args.scale, tag
        self.loader = None
        self.amp, self.channels_last, self.downsample = args.amp, args.channels_last, args.downsample
        self.scaler = torch.amp.GradScaler(dist.device.type, enabled=args.amp == 'fp16')
        self.writer = make_writer(os.path.join(args.runs_dir, tag), dist)
        self.stop = StopRequest()
        self.checkpoint_path = args.checkpoint_path
        self.max_steps = args.max_steps
        self.global_step = 0

    def close(self):
        self.stop.restore()
        if self.writer is not None:
            self.writer.close()

    def should_stop(self):
        """Ctrl-C / SIGTERM received (on any rank) or --max-steps reached."""
        stop = self.stop.requested or (self.max_steps is not None and self.global_step >= self.max_steps)
        if self.dist.enabled:  # every rank must stop at the same step
            flag = torch.tensor([float(stop)], device=self.dist.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            stop = bool(flag.item())
        return stop


def restore_training_state(ckpt, ctx):
    """Restore the GradScaler, RNG states (single process) and counters from a checkpoint.

    Returns (start_epoch, start_step, best_psnr); the caller restores models and optimizers."""
    if ckpt.get('scaler'):
        ctx.scaler.load_state_dict(ckpt['scaler'])
    if ckpt.get('rng') and ctx.dist.world_size == 1:
        set_rng_state(ckpt['rng'])
    ctx.global_step = ckpt.get('step', 0)
    return ckpt['epoch'] + 1, ckpt.get('resume_step', 0), ckpt.get('best_psnr')


def run_epochs(ctx, args, sampler, train_epoch, make_state, *, start_epoch, start_step, best_psnr,
               validate=None, before_epoch=None, after_epoch=None):
    """The epoch loop both trainers share.

    train_epoch(epoch, start_step) -> ({name: mean loss}, next_step, stopped); make_state(epoch, resume_step,
    best_psnr) -> checkpoint dict; validate() -> PSNR (rank 0, every --val-every epochs, with --val-folder);
    before_epoch(epoch, start_step) and after_epoch(epoch) are hooks (learning-rate schedules).
    Saves atomically every epoch (and the best one with --keep-best); on Ctrl-C / SIGTERM / --max-steps
    saves the position inside the epoch and prints the command that resumes.
    """
    dist, path = ctx.dist, args.checkpoint_path
    for epoch in range(start_epoch, args.epochs + 1):
        if before_epoch is not None:
            before_epoch(epoch, start_step)
        sampler.set_epoch(epoch, start_step * ctx.loader.batch_size)
        losses, next_step, stopped = train_epoch(epoch, start_step)
        start_step = 0
        if stopped:
            if dist.is_main:
                save_checkpoint(make_state(epoch - 1, next_step, best_psnr), path)
                print(f"stopped at epoch {epoch}, step {next_step}; saved {path}. Resume with:\n  {resume_command()}")
            return
        if after_epoch is not None:
            after_epoch(epoch)
        line = f"epoch {epoch}/{args.epochs}: " + ', '.join(f"{k} {v:.5g}" for k, v in losses.items())
        if dist.is_main:
            improved = False
            if validate is not None and (epoch % args.val_every == 0 or epoch == args.epochs):
                val_psnr = validate()
                improved = best_psnr is None or val_psnr > best_psnr
                best_psnr = max(val_psnr, best_psnr or val_psnr)
                line += f", val PSNR {val_psnr:.3f} dB (best {best_psnr:.3f})"
                ctx.writer.add_scalar(f"{ctx.tag}/val_psnr", val_psnr, epoch)
            for k, v in losses.items():
                ctx.writer.add_scalar(f"{ctx.tag}/{k}", v, epoch)
            state = make_state(epoch, 0, best_psnr)
            save_checkpoint(state, path)
            if args.keep_best and improved:
                save_checkpoint(state, path.replace('.pth', '_best.pth'))
            print(line, flush=True)
        dist.barrier()
    if dist.is_main:
        print(f"done: {path}")


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
