"""The floor every other module stands on: user errors and command-line helpers, colour and luma, image loading,
MATLAB- and Pillow-compatible bicubic resizing, the metrics, the tutorial's ImageTransforms / convert_image /
AverageMeter, devices, precision and RNG state, and atomic files (the checkpoint file format is checkpoints.py's).

It imports nothing from the project (models, datasets, checkpoints, inference, video and training build on it), and
nothing here picks a device or creates files at import time.
"""
import argparse
import contextlib
import ctypes
import functools
import gc
import hashlib
import math
import os
import random
import re
import secrets
import select
import signal
import stat
import sys
import threading
import time
import types
import warnings

try:
    import fcntl
except ImportError:  # Windows: no advisory locks (RunLock then locks nothing)
    fcntl = None

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps


# ----------------------------------------------------------------------------------------------
# Errors a user can cause (one line, exit code 2) and the command-line helpers the scripts share
# ----------------------------------------------------------------------------------------------


class UserError(Exception):
    """A problem the user can fix (bad path, bad image, wrong checkpoint...). Printed as one line."""


class Interrupted(UserError):
    """Ctrl-C where nothing can be saved (a trainer before its first step): one line, exit code 130 (as SIGINT)."""

    exit_code = 130


def run_cli(main):
    """Run ``main()``; a UserError becomes 'error: ...' on stderr and exit code 2, as does a DataLoader worker's death
    (worker_death) wherever PyTorch raises it, even while this function cleans up; an exception that ends another
    thread is one line (thread_failure_line).

    Garbage left in reference cycles is collected before returning, while the interpreter is whole: a DDP wrapper
    lives in such a cycle, and freed only during interpreter shutdown its process group's C++ threads would be torn
    down by a half-finalised interpreter (the reported 'terminate called without an active exception' at exit)."""
    try:
        return _run_main(main)
    except RuntimeError as e:  # PyTorch raises a loader worker's death from its SIGCHLD handler, anywhere
        died = worker_death(e)
        if died is None:
            raise
        print(f"error: {died}", file=sys.stderr)
        sys.exit(2)


def silence_closed_stdout():
    """After a BrokenPipeError: when stdout is a pipe whose reader went away (`| head` done, a parent process that
    died), point its file descriptor at os.devnull, so that further output and the flush at exit go nowhere instead
    of raising again, and return True; False when stdout is fine (the error came from elsewhere)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        if not any(events & select.POLLERR for _, events in poller.poll(0)):
            return False
    except (AttributeError, OSError, ValueError):  # no poll (Windows), or no real stdout
        return False
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)
    return True


def _run_main(main):
    """run_cli's body: main() with the stop signals caught and the thread hook set, both restored after."""
    previous, previous_hook = catch_stop_signals(), threading.excepthook
    threading.excepthook = thread_failure_line
    try:
        return main()
    except BrokenPipeError:
        if not silence_closed_stdout():
            raise
        with contextlib.suppress(OSError):
            print("error: stopped: the reader of the output went away (a closed pipe)", file=sys.stderr)
        sys.exit(1)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(getattr(e, 'exit_code', 2))
    except KeyboardInterrupt as e:
        signum = e.signum if isinstance(e, StopSignal) else signal.SIGINT
        name = 'Ctrl-C' if signum == signal.SIGINT else signal.Signals(signum).name
        print(f"error: interrupted ({name}); files being written were discarded", file=sys.stderr)
        sys.exit(128 + signum)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        threading.excepthook = previous_hook
        gc.collect()


def worker_death(error, in_loader=False):
    """The UserError that says, in one line with the fix, that a DataLoader worker process died (PyTorch's
    'DataLoader worker (pid ...) is killed by signal: Killed.' / '... exited unexpectedly'; the system kills one most
    often for memory), or None for any other error (an exception of the dataset's own code, re-raised as 'Caught ...
    in DataLoader worker process N', stays what it is). ``in_loader``: ``error`` came out of fetching a batch from
    worker processes, where a worker killed while it hands a batch over shows as a closed connection (EOFError,
    ConnectionError) before PyTorch notices the death."""
    if in_loader and isinstance(error, (EOFError, ConnectionError)):
        cause = f"its connection closed while it handed a batch over: {type(error).__name__}"
    elif isinstance(error, RuntimeError) and str(error).startswith('DataLoader worker (pid'):
        cause = str(error).splitlines()[0].rstrip(' .')
    else:
        return None
    return UserError(f"a data loader worker process died ({cause}; the system kills one most often for memory): run "
                     f"again with fewer --workers (0: none) and --resume, which continues from the checkpoint saved "
                     f"last")


def thread_failure_line(hook_args):
    """threading.excepthook of the scripts: an exception that ends a library's thread is one line on stderr, not
    Python's traceback. A thread that keeps its exception for its owner (TensorBoard's event writer thread stores it
    as ``.exception`` and raises it again on the next write, where the suite says its own line) prints nothing."""
    thread, exc = hook_args.thread, hook_args.exc_value
    if hook_args.exc_type is SystemExit or (thread is not None and getattr(thread, 'exception', None) is exc):
        return
    name = thread.name if thread is not None else 'a background thread'
    print(f"warning: {name} stopped: {hook_args.exc_type.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
          .rstrip(': '), file=sys.stderr)


class StopSignal(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised as Ctrl-C is (catch_stop_signals): every writer's clean-up (temp files removed,
    nothing half-written left) runs for them as it does for Ctrl-C."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def raise_stop_signal(signum, frame):
    raise StopSignal(signum)


def catch_stop_signals():
    """Turn SIGTERM (a scheduler, ``kill``) and SIGHUP (the terminal closed) into StopSignal in the main thread, so
    that they end a script as Ctrl-C does rather than killing it mid-write. Returns the previous handlers ({} off
    the main thread, where signals cannot be handled)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, raise_stop_signal) for sig in (signal.SIGTERM, signal.SIGHUP)}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Docstring kept as written; '(default: X)' after each flag, except for flags without a fixed default (None),
    whose help says in words what they default to."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def make_parser(doc, *, data=True, device=True, training=False):
    """An ArgumentParser whose description is the script's docstring, with the flags the scripts share:
    --data-folder (data), --device (device), --workers and --seed (training)."""
    parser = argparse.ArgumentParser(allow_abbrev=False, description=doc, formatter_class=HelpFormatter)
    if data:
        parser.add_argument('--data-folder', default='./data/', help='folder holding the JSON data lists')
    if device:
        parser.add_argument('--device', default='auto', type=device_name,
                            help="'auto' (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps")
    if training:
        parser.add_argument('--workers', type=non_negative_int, default=None,
                            help="data-loading worker processes (default: 4, the tutorial's, at most one per core; 0 "
                                 "when training on a CPU from the RAM cache, where workers only compete with the "
                                 "model for the cores)")
        parser.add_argument('--seed', type=int, default=0, help='random seed (data order, crops, initialisation)')
    return parser


def given_flags(parser, argv=None):
    """The dest names of the flags given on the command line ``argv`` (default sys.argv[1:]), defaults left out:
    what a user asked for, told apart from what a default filled in. Parses ``argv`` again with every default
    suppressed (call it after parser.parse_args(argv), which reported any error)."""
    saved = [(action, action.default) for action in parser._actions]
    try:
        for action, _ in saved:
            action.default = argparse.SUPPRESS
        return set(vars(parser.parse_args(argv)))
    finally:
        for action, default in saved:
            action.default = default


class Settings(types.SimpleNamespace):
    """A script's settings, made once from its flags (its resolve_settings): every flag under its argparse name, with
    what the flags leave open decided (a recipe's defaults, a resumed run's recorded values, ...), plus what the
    script derives from them. A frozen value: setting or deleting an attribute raises AttributeError; vars() gives
    them as a dict (plain_args records them)."""

    def __setattr__(self, name, value):
        raise AttributeError(f"settings are made once from the flags: {name!r} cannot be set")

    def __delattr__(self, name):
        raise AttributeError(f"settings are made once from the flags: {name!r} cannot be deleted")


def parse_number(text, kind=float):
    """``text`` as ``kind`` (int or float) for an argparse type, or argparse's error saying what it is not."""
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None


def positive_int(text):
    """argparse type: an integer >= 1."""
    value = parse_number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text):
    """argparse type: an integer >= 0."""
    value = parse_number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def odd_positive_int(text):
    """argparse type: an odd integer >= 1 (a kernel size that keeps the image size with padding k // 2)."""
    value = positive_int(text)
    if value % 2 == 0:
        raise argparse.ArgumentTypeError(f"must be odd (an even kernel shifts the image by half a pixel and changes "
                                         f"its size), got {value}")
    return value


def non_negative_float(text):
    """argparse type: a finite number >= 0 (a learning rate; 0 keeps the initial weights)."""
    value = parse_number(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


DEVICE_TYPES = ('cpu', 'cuda', 'mps')


def device_name(text):
    """argparse type of --device: 'auto', cpu, cuda, cuda:N, mps (whether it is there is checked by pick_device)."""
    name = text.strip().lower()
    if name == 'auto':
        return name
    kind, sep, index = name.partition(':')
    if kind not in DEVICE_TYPES or (sep and not (index.isdigit() and kind != 'cpu')):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device this suite runs on: auto, cpu, cuda, cuda:N or "
                                         f"mps")
    return name


def parse_memory(value):
    """A byte count from 2000000000, '2GB', '1.5 GiB', '512M' or '800k'; None stays None.

    Units are powers of 1024, with or without 'i' and 'B' (1GB = 1GiB = 2**30 bytes). ValueError otherwise.
    """
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
_YCBCR_MATRIX = (RGB_TO_Y,
                 (-37.797, -74.203, 112.0),
                 (112.0, -93.786, -18.214))
_YCBCR_OFFSET = (16., 128., 128.)


def _ycbcr_tensors(img):
    """The forward matrix in float64 (inverted exactly by ycbcr_to_rgb) and the (3, 1, 1) offset in img's dtype, both
    on img's device."""
    return (torch.tensor(_YCBCR_MATRIX, dtype=torch.float64, device=img.device),
            torch.tensor(_YCBCR_OFFSET, dtype=img.dtype, device=img.device).view(3, 1, 1))


def _mix_channels(matrix, img):
    """``matrix`` (k, 3) applied to the channels of ``img`` (..., 3, H, W) -> (..., k, H, W), in img's dtype, as
    m0 * c0 + m1 * c1 + m2 * c2 from left to right: einsum's sums bit for bit, without its permuted copies (~1.6x
    faster on a batch of 51-px patches), and with no shapes to freeze into an exported ONNX graph."""
    m = matrix.to(img.dtype)[..., None, None]  # (k, 3, 1, 1)
    c = img.unsqueeze(-4)  # (..., 1, 3, H, W)
    return c[..., 0, :, :] * m[:, 0] + c[..., 1, :, :] * m[:, 1] + c[..., 2, :, :] * m[:, 2]


def rgb_to_ycbcr(img):
    """BT.601 studio-swing YCbCr of RGB in [0, 1], (..., 3, H, W) -> (..., 3, H, W) with values in [0, 1]
    (Y in [16, 235] / 255, Cb/Cr in [16, 240] / 255), unrounded. MATLAB's rgb2ycbcr for doubles."""
    matrix, offset = _ycbcr_tensors(img)
    out = _mix_channels(matrix, img)  # (..., 3, H, W), in [0, 255] - offset
    return (out + offset) / 255.


def rgb_to_y(img):
    """The Y row of rgb_to_ycbcr alone, bit for bit: (..., 3, H, W) RGB in [0, 1] -> (..., 1, H, W) BT.601 luma
    in [16, 235] / 255, unrounded (a third of the work, for the Y-channel networks' inputs and targets)."""
    matrix, offset = _ycbcr_tensors(img)
    out = _mix_channels(matrix[:1], img)  # (..., 1, H, W), in [0, 255] - 16
    return (out + offset[:1]) / 255.


def ycbcr_to_rgb(img):
    """Exact inverse of rgb_to_ycbcr: (..., 3, H, W) YCbCr in [0, 1] -> RGB in [0, 1] (unclamped)."""
    matrix, offset = _ycbcr_tensors(img)
    return _mix_channels(torch.linalg.inv(matrix), img * 255. - offset)  # inverted in float64, then cast


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
    wr, wg, wb = RGB_TO_Y
    y = 16. + (wr * r + wg * g + wb * b) / 255.
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


def _file_kind(mode):
    """What a non-regular file is, in words."""
    if stat.S_ISDIR(mode):
        return 'a directory'
    if stat.S_ISFIFO(mode):
        return 'a FIFO'
    if stat.S_ISSOCK(mode):
        return 'a socket'
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return 'a device file'
    return 'not a file'


def _not_regular(path, mode):
    return f"{path}: not a regular file ({_file_kind(mode)}), refused: reading it could block or never end"


def open_regular_file(path):
    """Open ``path`` for reading in binary mode, only if it is a regular file (after following symlinks).

    A FIFO, socket or device would block a reader forever or stream without end: they are refused with a
    UserError naming what they are, before anything reads from them (O_NONBLOCK makes even opening a FIFO
    return at once; the kind is checked again on the opened descriptor, so a swap in between is caught too).
    """
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            raise UserError(f"{path} is a directory, not an image file")
        if not stat.S_ISREG(mode):
            raise UserError(_not_regular(path, mode))
        fd = os.open(path, os.O_RDONLY | getattr(os, 'O_NONBLOCK', 0) | getattr(os, 'O_BINARY', 0))
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except OSError as e:
        raise UserError(f"{path}: unreadable ({e.strerror or e})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise UserError(_not_regular(path, mode))
    return os.fdopen(fd, 'rb')


@contextlib.contextmanager
def _pixel_limit(max_pixels):
    """PIL's decompression-bomb limit set to ``max_pixels`` (None: no limit) inside the block, restored after."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def png_text(path, limit=1 << 20):
    """The tEXt chunks of a PNG before its image data ({key: value}); {} for anything else. Reads the chunk
    headers only (no decoding, so no decompression-bomb limit applies), at most ``limit`` bytes."""
    try:
        with open_regular_file(path) as f:
            if f.read(8) != b'\x89PNG\r\n\x1a\n':
                return {}
            text, read = {}, 8
            while read < limit:
                head = f.read(8)
                if len(head) < 8:
                    break
                length, kind = int.from_bytes(head[:4], 'big'), head[4:]
                if kind in (b'IDAT', b'IEND'):
                    break
                body = f.read(length + 4)[:length]  # + CRC
                if kind == b'tEXt' and b'\0' in body:
                    key, value = body.split(b'\0', 1)
                    text[key.decode('latin-1')] = value.decode('latin-1')
                read += 12 + length
            return text
    except (UserError, OSError):
        return {}


def file_digest(path):
    """SHA-256 of the file's bytes (hex)."""
    digest = hashlib.sha256()
    with open_regular_file(path) as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def load_image(path, keep_alpha=False, max_pixels=None):
    """Open an image file as an 8-bit RGB PIL image (or RGBA with keep_alpha), fully decoded.

    Rules: EXIF orientation is applied; L/1/P/CMYK/YCbCr/... are converted to RGB; 16-bit images keep their
    high byte (v // 256); transparent images (RGBA, LA, PA, P with transparency) are composited onto white,
    unless keep_alpha, which returns RGBA. Decompression bombs (more than ``max_pixels`` pixels, default PIL's
    MAX_IMAGE_PIXELS; the scripts' --max-image-pixels) are refused; so is anything that is not a regular file (a
    FIFO, socket or device would block the reader, see open_regular_file).
    Raises UserError with the path and the reason for anything that is not a readable image.
    """
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else int(max_pixels)
    with open_regular_file(path) as f:
        try:
            with warnings.catch_warnings(), _pixel_limit(limit):
                warnings.simplefilter('error', Image.DecompressionBombWarning)
                with Image.open(f) as img:
                    img.load()
                    img = ImageOps.exif_transpose(img)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise UserError(f"{path}: decompression bomb (more than {limit} pixels), refused; "
                            f"if you trust the file, raise --max-image-pixels") from None
        except Exception as e:  # PIL raises many types for bad files: UnidentifiedImageError, OSError, SyntaxError...
            reason = 'not an image' if isinstance(e, Image.UnidentifiedImageError) else f"unreadable ({e})"
            if os.fstat(f.fileno()).st_size == 0:
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
    """True when the file stores a single (grey) channel, with or without alpha; such images are their own Y.
    Reads the header only (so no decompression-bomb limit: load_image applies it where pixels are decoded)."""
    with open_regular_file(path) as f, _pixel_limit(None), Image.open(f) as img:
        return img.mode in GRAY_MODES



def list_image_files(folder):
    """Sorted paths of the entries of ``folder`` whose name has an image extension (any letter case), except
    sub-folders. Entries that are not regular files (a FIFO, socket, device or broken link named like an image)
    are listed too, so that whoever reads them reports them (load_image refuses them without blocking) instead of
    dropping them in silence. UserError when ``folder`` is not a folder or cannot be listed."""
    if not os.path.isdir(folder):
        raise UserError(f"{folder}: not a folder")
    try:
        names = sorted(os.listdir(folder))
    except OSError as e:
        raise UserError(f"{folder}: cannot list this folder ({e.strerror or e})") from None
    return [os.path.join(folder, f) for f in names
            if f.lower().endswith(IMAGE_EXTENSIONS) and not os.path.isdir(os.path.join(folder, f))]


def check_output_folder(folder, flag):
    """UserError, before any work, when ``folder`` cannot be a folder to write into: it (or the nearest part of
    the path that exists) is a file, or it exists and cannot be written. Creates nothing."""
    path = os.path.abspath(folder)
    while not os.path.lexists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        what = f"{folder} is" if path == os.path.abspath(folder) else f"{folder}: {path} is"
        raise UserError(f"{flag} {what} a file, not a folder: name a folder")
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {folder}: {path} is not writable")


def dataset_name(folder):
    """A test set's name: the folder's base name, on any OS and with or without a trailing separator."""
    return os.path.basename(os.path.normpath(folder.replace('\\', '/')))


def pil_to_tensor(img):
    """PIL image -> (C, H, W) uint8 tensor of its own channels (RGB: 3, RGBA: 4, L: 1)."""
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def to_uint8(img01):
    """Float image in [0, 1] -> uint8 values (clamped, rounded half up)."""
    return torch.floor(img01.clamp(0, 1) * 255. + 0.5).to(torch.uint8)


# ----------------------------------------------------------------------------------------------
# Resizing: MATLAB-compatible bicubic (the papers' degradation) and Pillow's bicubic (the tutorial's)
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


@functools.lru_cache(maxsize=16)
def _upscale_kernel(scale):
    """(5 * scale,) float64 taps of MATLAB's bicubic upscaling by an integer ``scale`` as one transposed convolution
    of stride ``scale``: output pixel s*j + p is sum_k w[p, k] x[j + k], k = -2..2, with w[p, k] the normalised cubic
    weight at distance (p + 0.5) / s - 0.5 - k (_resize_taps' u for integer scales); tap q = p + s * (2 - k)."""
    d = (torch.arange(scale, dtype=torch.float64) + 0.5) / scale - 0.5  # (s,) phase offsets
    w = _cubic(d[:, None] - torch.arange(-2, 3, dtype=torch.float64)[None, :])  # (s, 5): phase p, tap k = -2..2
    w = w / w.sum(dim=1, keepdim=True)
    q = torch.arange(5 * scale)
    return w[q % scale, 4 - q // scale]  # column k + 2


def imresize_up(x, scale):
    """``imresize(x, scale)`` for an integer scale >= 1 and a float x (N, C, H, W) with H, W >= 2, built only from
    ops that torch.onnx exports with dynamic sizes: along each axis (rows first, as MATLAB), a 2-px symmetric pad
    and one depthwise transposed convolution of stride ``scale`` with MATLAB's fixed cubic taps. Equal to imresize
    up to float rounding; computed in x's dtype (imresize works in float64)."""
    scale = int(scale)
    if scale == 1:
        return x.clone()
    n, c, h, w = x.shape
    taps = _upscale_kernel(scale).to(device=x.device, dtype=x.dtype)
    pad = 4 * scale  # the stride-s transposed conv of the padded axis starts 4s px before the first output pixel
    y = x.reshape(-1, 1, h, w)  # (N*C, 1, H, W): one constant kernel for every channel
    y = torch.cat([y[:, :, [1, 0]], y, y[:, :, [-1, -2]]], dim=2)  # (N*C, 1, H + 4, W), symmetric border
    y = F.conv_transpose2d(y, taps.view(1, 1, -1, 1), stride=(scale, 1), padding=(pad, 0))  # (N*C, 1, s*H, W)
    y = torch.cat([y[..., [1, 0]], y, y[..., [-1, -2]]], dim=3)  # (N*C, 1, s*H, W + 4)
    y = F.conv_transpose2d(y, taps.view(1, 1, 1, -1), stride=(1, scale), padding=(0, pad))  # (N*C, 1, s*H, s*W)
    return y.reshape(n, c, y.shape[-2], y.shape[-1])  # (N, C, s*H, s*W)


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


def lpips_distance(metric, sr, hr, border=0, data_range=255.):
    """LPIPS (Zhang et al. 2018, lower is better, 0 for identical images) of RGB images with values in
    [0, data_range], after removing ``border`` pixels per side; ``metric`` is the network (models.build_lpips),
    fed the RGB in [-1, 1] it expects, in float32 on its own device.

    sr, hr: (3, H, W) or (N, 3, H, W), any dtype (eval.py gives uint8). Returns a float, or a (N,) tensor: one
    distance per image (lpips averages over the image's positions).
    """
    if sr.shape != hr.shape:
        raise ValueError(f"images differ in shape: {tuple(sr.shape)} vs {tuple(hr.shape)}")
    if sr.dim() not in (3, 4) or sr.shape[-3] != 3:
        raise ValueError(f"expected RGB (3, H, W) or (N, 3, H, W), got shape {tuple(sr.shape)}")
    device = next(metric.parameters()).device
    squeeze = sr.dim() == 3
    sr, hr = (shave(t.reshape(-1, *t.shape[-3:]), border).to(device, torch.float32) for t in (sr, hr))
    with torch.no_grad():
        out = metric(sr / data_range * 2 - 1, hr / data_range * 2 - 1).flatten().double().cpu()  # (N,)
    return out.item() if squeeze else out


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
        lr = imresize(pil_to_tensor(hr_img), 1. / scaling_factor)  # (3, h, w) uint8
        return Image.fromarray(lr.permute(1, 2, 0).numpy(), mode='RGB')
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
# Devices, precision, seeds and RNG state, process settings
# ----------------------------------------------------------------------------------------------


def pick_device(name='auto'):
    """'auto' -> cuda if available, else mps, else cpu; otherwise the named device (checked)."""
    if name == 'auto':
        if torch.cuda.is_available():
            return torch.device('cuda')
        if getattr(torch.backends, 'mps', None) is not None and torch.backends.mps.is_available():
            return torch.device('mps')
        return torch.device('cpu')
    try:
        device = torch.device(device_name(name))
    except argparse.ArgumentTypeError as e:
        raise UserError(f"--device {e}") from None
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    if device.type == 'cuda' and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                        f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
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


def native_bf16(device):
    """True when ``device`` runs bf16 matrix math natively (CUDA with bf16, or a CPU with AMX / AVX512-BF16)."""
    if device.type == 'cuda':
        return torch.cuda.is_bf16_supported()
    if device.type == 'cpu':
        cpu = torch.cpu
        return any(getattr(cpu, f, lambda: False)() for f in ('_is_amx_tile_supported', '_is_avx512_bf16_supported'))
    return False


# One vocabulary and one set of rules for the precision of a network's forward pass, in training (--amp, where
# 'off' means fp32) and in inference (--precision).
PRECISIONS = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}


def check_precision(precision, device, flag='--precision'):
    """Raise UserError unless ``precision`` (fp32, bf16, fp16) can run on ``device``: fp16 needs CUDA or MPS,
    bf16 a CPU or a CUDA GPU that supports it. Returns ``precision``."""
    kind = torch.device(device).type
    if precision not in PRECISIONS:
        raise UserError(f"{flag} {precision!r}: choose fp32, bf16 or fp16")
    if precision == 'fp16' and kind not in ('cuda', 'mps'):
        raise UserError(f"{flag} fp16 needs a CUDA GPU (or Apple MPS), not {kind}: use bf16 or fp32 on the CPU")
    if precision == 'bf16' and kind == 'mps':
        raise UserError(f"{flag} bf16 is not supported on MPS: use fp16")
    if precision == 'bf16' and kind == 'cuda' and not torch.cuda.is_bf16_supported():
        raise UserError(f"{flag} bf16: this GPU does not support bf16: use fp16")
    return precision


def auto_precision(device, supported=('fp32', 'bf16'), cpu_bf16_pays=True):
    """What ``--precision auto`` runs inference in on ``device``: bf16 on a CPU that runs it natively (AMX or
    AVX512-BF16, where bf16 inference measured up to 2.6x fp32's speed and its 8-bit output stayed above 50 dB PSNR
    of fp32's: docs/speed.md), when the network supports it and bf16 measured faster for it there
    (``cpu_bf16_pays``); fp32 elsewhere (emulated bf16 is slower; on CUDA the speed-up is not measured yet).
    Returns (precision, reason)."""
    kind = torch.device(device).type
    if kind != 'cpu':
        return 'fp32', f"bf16 on {kind} is not measured yet"
    if 'bf16' not in supported:
        return 'fp32', 'the network runs in fp32 only'
    if not native_bf16(torch.device(device)):
        return 'fp32', 'this CPU has no native bf16'
    if not cpu_bf16_pays:
        return 'fp32', 'bf16 measured no faster than fp32 for this network on a CPU with native bf16'
    return 'bf16', 'this CPU runs bf16 natively'


def precision_caveat(precision, device):
    """Why a precision asked for explicitly runs slower than expected on ``device`` (bf16 on a CPU without native
    bf16: emulated, slower than fp32), else None."""
    device = torch.device(device)
    if precision == 'bf16' and device.type == 'cpu' and not native_bf16(device):
        return "asked for, but this CPU has no native bf16 (AVX512-BF16 or AMX): it runs emulated, slower than fp32"
    return None


def autocast(device, precision):
    """Autocast context for a network's forward pass: fp32 runs without one, bf16 / fp16 under torch.autocast."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def set_determinism(enabled):
    """Deterministic kernels (and no cuDNN autotuning) when ``enabled``; cuDNN benchmark mode otherwise."""
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = not enabled
    if enabled:
        os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')


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
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    for threshold in (2 ** 30, 2 ** 25):  # older glibc caps the threshold at 32 MiB
        if mallopt(_GLIBC_M_MMAP_THRESHOLD, threshold):
            return bool(mallopt(_GLIBC_M_TRIM_THRESHOLD, 2 ** 31 - 1))
    return False


def is_out_of_memory(error):
    """True for an allocation failure: torch.OutOfMemoryError on accelerators, and on the CPU the RuntimeError of
    torch's default allocator, which has no type of its own (its message names DefaultCPUAllocator)."""
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and 'DefaultCPUAllocator' in str(error))


def timer():
    """perf_counter that first waits for queued GPU work."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()


# ----------------------------------------------------------------------------------------------
# Wrapped models, run records as plain data, atomic files (one, or a set all or nothing), the run lock
# ----------------------------------------------------------------------------------------------


def unwrap_model(model):
    """The bare module inside DataParallel / DistributedDataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
            model = model.module
        elif hasattr(model, '_orig_mod'):
            model = model._orig_mod
        else:
            return model


def plain_args(args):
    """argparse Namespace or Settings -> dict of plain values (str/int/float/bool/None, lists and str-keyed dicts of
    them), safe for weights_only loads; anything else (a Path, a device) as its str."""
    def plain(v):
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        return str(v)
    return {k: plain(v) for k, v in vars(args).items()}


def _fsync_path(path):
    """fsync the file or folder at ``path`` (OSError as it comes)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder):
    """Make renames in ``folder`` durable (a no-op where folders cannot be opened, e.g. on Windows)."""
    try:
        _fsync_path(folder)
    except OSError:
        pass


def _writer_alive(pid):
    """False only when no process ``pid`` exists (a temp file of a live writer is never removed)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, ValueError, OverflowError):  # PermissionError: alive, someone else's
        return True
    return True


def _unlink_quietly(path):
    try:
        os.unlink(path)
    except OSError:
        pass


# The one temp-file rule of every atomic writer here (atomic_path, AtomicFileSet): ``.<name>.<pid>.<random>.tmp``
# next to the target (``.old.tmp`` for AtomicFileSet's rollback links), so a leftover names the process that made it.
_STALE_TEMP = re.compile(r'\.(.+)\.(\d+)\.[0-9a-f]{8}(?:\.old)?\.tmp')


def _temp_name(path, suffix='.tmp'):
    """A temp file name next to ``path``, unique to this process (pid) and call (random)."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}.{os.getpid()}.{secrets.token_hex(4)}{suffix}")


def _remove_stale_temps(path, entries=None):
    """Remove the temp files of ``path`` left by writers that no longer run (killed mid-write); those of live
    writers stay. ``entries``: the folder's (name, _STALE_TEMP match) pairs when already listed."""
    folder, name = os.path.split(os.path.abspath(path))
    if entries is None:
        entries = [(e, _STALE_TEMP.fullmatch(e)) for e in os.listdir(folder) if e.endswith('.tmp')]
    for entry, match in entries:
        if match and match.group(1) == name and not _writer_alive(int(match.group(2))):
            _unlink_quietly(os.path.join(folder, entry))


@contextlib.contextmanager
def atomic_path(path):
    """A temp file name in ``path``'s folder to write ``path`` through, for writers that need a name (a muxer):
    on a clean exit the temp file is fsynced and renamed onto ``path`` (atomic), and the folder fsynced; on any
    exception it is removed and the old file, if any, kept. The temp name follows the one rule of this module's
    writers (``.<name>.<pid>.<random>.tmp``, see AtomicFileSet): temp files of writers that no longer run (kill -9,
    power loss) are removed first, those of a live writer (another process writing the same file) never. Errors
    of its own file operations raise UserError naming the path; exceptions from the body pass through unchanged.
    """
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        _remove_stale_temps(path)
        tmp = _temp_name(path)
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # 0o666 minus the umask: the usual
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        yield tmp
    except BaseException:
        _unlink_quietly(tmp)
        raise
    try:
        _fsync_path(tmp)
        os.replace(tmp, path)
    except OSError as e:
        _unlink_quietly(tmp)
        raise UserError(f"cannot write {path}: {e.strerror or e}; the previous file, if any, is unchanged") from None
    _fsync_folder(folder)  # make the rename itself durable


def atomic_write(path, write_fn):
    """Write a file atomically: ``write_fn(file)`` into a temp file in the same folder, flush, fsync, os.replace
    (through atomic_path).

    A crash at any moment leaves either the old file or the new one, never a torn one (a killed writer's temp
    file is removed by the next write). Failures (disk full, permission denied) raise UserError naming the
    path; the old file is kept and the temp file removed.
    """
    try:
        with atomic_path(path) as tmp:
            with open(tmp, 'wb') as f:
                write_fn(f)
                f.flush()
    except (OSError, RuntimeError) as e:
        raise UserError(f"cannot write {path}: {getattr(e, 'strerror', None) or e}; "
                        f"the previous file, if any, is unchanged") from None


class AtomicFileSet:
    """Writes a set of files all or nothing (a commit group): each file goes to a temp file in its own folder as
    it comes (so a big set never sits in memory at once), and only when every one is written and fsync'ed are
    they renamed into place; an error while writing any of them removes all the temp files, so none of the set
    appears and the files already there are unchanged.

        with AtomicFileSet() as files:          # commit() when the block ends without an exception
            files.write('a.png', lambda f: img.save(f, format='PNG'))
            files.write_text('a.json', text)

    write() and commit() raise UserError naming the file and the reason (disk full, permission denied...).
    commit() renames in order; if a rename fails, the ones already done are rolled back: files that existed are
    restored from hard links taken just before (where the filesystem has them), new ones are removed. Temp files
    are named ``.<name>.<pid>.<random>.tmp``: a writer killed with SIGKILL leaves each target either old or new,
    and its temp files are removed by the next set written to the same names once that pid is gone (never while
    it runs, so two writers in one folder do not delete each other's files).
    """

    def __init__(self):
        self._pending = []  # (temp path, final path)
        self._listed = {}  # folder -> its entries, listed once per set to find stale temp files

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.commit()
        else:
            self.discard()
        return False

    def _remove_stale(self, path):
        """Remove the temp files of ``path`` left by writers that no longer run (the folder listed once per set)."""
        folder = os.path.dirname(os.path.abspath(path))
        if folder not in self._listed:
            self._listed[folder] = [(e, _STALE_TEMP.fullmatch(e)) for e in os.listdir(folder) if e.endswith('.tmp')]
        _remove_stale_temps(path, self._listed[folder])

    def write(self, path, write_fn):
        """Write ``write_fn(file)`` into a temp file next to ``path`` (renamed into place by commit())."""
        tmp = None
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self._remove_stale(path)
            tmp = _temp_name(path)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, 'O_BINARY', 0), 0o666)
            with os.fdopen(fd, 'wb') as f:  # 0o666 minus the umask: the usual permissions
                write_fn(f)
                f.flush()
                os.fsync(f.fileno())
        except BaseException as e:
            if tmp is not None:
                _unlink_quietly(tmp)
            self.discard()
            if isinstance(e, (OSError, RuntimeError)):
                raise UserError(f"cannot write {path}: {getattr(e, 'strerror', None) or e}; nothing of this set "
                                f"of files was written (files already there are unchanged)") from None
            raise
        self._pending.append((tmp, path))

    def write_text(self, path, text):
        self.write(path, lambda f: f.write(text.encode('utf-8')))

    def discard(self):
        """Remove the temp files written so far; nothing of the set appears."""
        for tmp, _ in self._pending:
            _unlink_quietly(tmp)
        self._pending = []

    @classmethod
    def _link_backup(cls, path):
        """A hard link to the file at ``path`` (to restore it on rollback), or None (none there, or no links)."""
        if not os.path.lexists(path) or os.path.isdir(path):
            return None
        backup = _temp_name(path, '.old.tmp')
        try:
            os.link(path, backup, follow_symlinks=False)
        except (OSError, NotImplementedError):  # no hard links on this filesystem (FAT, some network shares)
            return None
        return backup

    def commit(self):
        """Rename every temp file into place (all or nothing, see the class docstring)."""
        pending, self._pending = self._pending, []
        done, backups = [], []  # done: (final path, hard link to the file it replaced or None)
        try:
            for tmp, path in pending:
                backup = self._link_backup(path)
                backups.append(backup)
                os.replace(tmp, path)
                done.append((path, backup))
        except BaseException as e:  # a failed rename, or Ctrl-C in the middle: undo the renames done
            for restored, backup in reversed(done):
                try:
                    if backup is not None:
                        os.replace(backup, restored)
                    else:
                        os.unlink(restored)
                except OSError:
                    pass
            for tmp, _ in pending:
                _unlink_quietly(tmp)
            if not isinstance(e, OSError):
                raise
            raise UserError(f"cannot write {path}: {e.strerror or e}; nothing of this set of files was written "
                            f"(files already there are unchanged)") from None
        finally:
            for backup in backups:
                if backup is not None:
                    _unlink_quietly(backup)
        for folder in {os.path.dirname(os.path.abspath(path)) for _, path in pending}:
            _fsync_folder(folder)


def atomic_write_many(writers):
    """Write several files all or nothing: ``writers`` maps path -> write_fn(file) or text (see AtomicFileSet)."""
    with AtomicFileSet() as files:
        for path, what in writers.items():
            if isinstance(what, str):
                files.write_text(path, what)
            else:
                files.write(path, what)


class RunLock:
    """An advisory lock (fcntl.flock, non-blocking) on the file ``path`` for as long as a process writes it: a run's
    checkpoint, so that a second trainer on the same file refuses instead of overwriting the first one's saves.

    The lock is taken on ``.<name>.lock`` next to ``path`` (the checkpoint itself is replaced by each atomic save,
    a lock on it would go with the old file), which holds the owner's pid for the message; the kernel drops the
    lock when its process ends, however it ends, so a killed run never blocks the next (its file stays, holding a
    dead pid; a run that ends normally removes it). Used as a context manager;
    acquire() raises UserError naming the other process. Where fcntl is missing (Windows) it locks nothing.
    """

    def __init__(self, path):
        folder, name = os.path.split(os.path.abspath(path))
        self.path, self.lock_path, self._fd = path, os.path.join(folder, f".{name}.lock"), None

    def acquire(self):
        if fcntl is None:
            return self
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                owner = os.pread(fd, 32, 0).decode('ascii', 'replace').strip() or 'unknown'
                os.close(fd)
                raise UserError(f"{self.path} is in use by another training run (pid {owner}): wait for it to end, "
                                f"or give this run another --results-dir") from None
            # The previous owner removes the file when it releases (below): a lock won on a file that is no longer
            # the one at lock_path guards nothing, so try again on the one that is.
            try:
                current = os.path.samestat(os.fstat(fd), os.stat(self.lock_path))
            except FileNotFoundError:
                current = False
            if current:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode('ascii'), 0)
        self._fd = fd
        return self

    def _open(self):
        try:
            os.makedirs(os.path.dirname(self.lock_path), exist_ok=True)
            return os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise UserError(f"cannot write {self.lock_path} (the lock of {self.path}): {e.strerror or e}") from None

    def release(self):
        """Remove the lock file, then drop the lock: nothing is left behind, and a process that opened the old file
        meanwhile sees that it is gone once it gets the lock (acquire)."""
        if self._fd is not None:
            try:
                os.unlink(self.lock_path)
            except OSError:
                pass
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False
