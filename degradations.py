"""Real-world degradations for training and testing on photos: Real-ESRGAN's second-order model (Wang et al.,
"Real-ESRGAN: Training Real-World Blind Super-Resolution with Pure Synthetic Data", ICCVW 2021), per image, on
the CPU, with a real JPEG codec (Pillow) and an explicit random generator.

    import degradations
    settings = degradations.preset('realesrgan')              # the published ranges ('light': milder ones)
    rng = degradations.patch_rng(seed, epoch, index)          # one random stream per patch
    lr = degradations.degrade(hr, 4, settings, rng)           # (3, H, W) uint8 -> (3, H / 4, W / 4) uint8

An HR image goes through two stages, then the final step (each a function below, stating its ranges):

1. first stage: blur with a random kernel (random_blur_kernel), random resize up / down / not at all
   (random_resize), Gaussian or Poisson noise, colour or grey (random_noise), JPEG at a random quality
   (random_jpeg);
2. second stage: the same with its own ranges (blur only with probability blur_prob, resized relative to the LR
   size), without the JPEG, which the final step does;
3. final step (final_step): resize to H / scale x W / scale and filter with a sinc kernel (with probability
   final_sinc_prob), and JPEG, in one of the two orders at random; values rounded to 8 bits.

The published ranges are ``preset('realesrgan')`` (Real-ESRGAN's options files for RealESRNet / RealESRGAN x4plus);
every range is a field of StageSettings / DegradationSettings, set by ``with_overrides(settings,
['second.noise_range=1,15'])`` (what a --degradation-opt KEY=VALUE flag passes).

Determinism: every draw comes from the numpy Generator given to degrade (no global RNG), so the degradation of an
image is a pure function of the image and the generator's seed. Training derives one generator per patch from
(seed, epoch, index, crop) (patch_rng), as datasets.PatchDataset derives its crops: whichever loader worker or DDP
rank makes a patch, and however often a run is resumed, it gets the same degradation. The degraded test sets derive
one per image from (seed, file name) (image_rng). Same inputs, same bytes (on one platform: the FFT and the
resizes are float computations).
"""
import dataclasses
import hashlib
import io
import json
import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from utils import UserError, imresize, list_image_files, load_image, pil_to_tensor

# ----------------------------------------------------------------------------------------------
# Settings: the published ranges, presets, overrides
# ----------------------------------------------------------------------------------------------

KERNEL_TYPES = ('iso', 'aniso', 'generalized_iso', 'generalized_aniso', 'plateau_iso', 'plateau_aniso')
RESIZE_DIRECTIONS = ('up', 'down', 'keep')
RESIZE_MODES = ('area', 'bilinear', 'bicubic')


@dataclass(frozen=True)
class StageSettings:
    """The ranges of one degradation stage (Real-ESRGAN's options; the second stage's end in '2' there).

    blur_prob: probability that the stage blurs at all (first stage 1, second 0.8).
    kernel_sizes: (smallest, largest) odd kernel side, drawn uniformly among the odd sizes (7, 21).
    sinc_prob: probability that the blur kernel is a sinc (0.1); otherwise one of KERNEL_TYPES drawn with
      kernel_probs ((0.45, 0.25, 0.12, 0.03, 0.12, 0.03): iso, aniso, generalized iso / aniso, plateau iso / aniso).
    blur_sigma: (min, max) standard deviation of the kernels along each axis, px ((0.2, 3) first, (0.2, 1.5) second).
    betag_range, betap_range: shape exponent of the generalized Gaussian ((0.5, 4)) and plateau ((1, 2)) kernels.
    resize_probs: probabilities of resizing up, down, or not ((0.2, 0.7, 0.1) first, (0.3, 0.4, 0.3) second).
    resize_range: (min, max) resize factor ((0.15, 1.5) first, (0.3, 1.2) second); up draws from [1, max], down
      from [min, 1].
    gaussian_noise_prob: probability of Gaussian noise (0.5); Poisson noise otherwise.
    noise_range: (min, max) Gaussian noise sigma on the 0-255 scale ((1, 30) first, (1, 25) second).
    poisson_scale_range: (min, max) Poisson noise scale ((0.05, 3) first, (0.05, 2.5) second).
    gray_noise_prob: probability that the noise is grey (the same in the three channels) rather than colour (0.4).
    jpeg_range: (min, max) JPEG quality, integers ((30, 95) both; the second stage's is the final step's JPEG).
    """
    blur_prob: float
    kernel_sizes: tuple
    kernel_probs: tuple
    sinc_prob: float
    blur_sigma: tuple
    betag_range: tuple
    betap_range: tuple
    resize_probs: tuple
    resize_range: tuple
    gaussian_noise_prob: float
    noise_range: tuple
    poisson_scale_range: tuple
    gray_noise_prob: float
    jpeg_range: tuple

    def __post_init__(self):
        for name in ('blur_prob', 'sinc_prob', 'gaussian_noise_prob', 'gray_noise_prob'):
            _check(0 <= getattr(self, name) <= 1, f"{name} is a probability in [0, 1], not {getattr(self, name)}")
        for name in ('kernel_sizes', 'blur_sigma', 'betag_range', 'betap_range', 'resize_range', 'noise_range',
                     'poisson_scale_range', 'jpeg_range'):
            _check_range(name, getattr(self, name))
        lo, hi = self.kernel_sizes
        _check(lo % 2 == 1 and hi % 2 == 1 and 3 <= lo and int(lo) == lo and int(hi) == hi,
               f"kernel_sizes are odd integers >= 3, not {self.kernel_sizes}")
        _check_probs('kernel_probs', self.kernel_probs, len(KERNEL_TYPES))
        _check_probs('resize_probs', self.resize_probs, len(RESIZE_DIRECTIONS))
        for name in ('blur_sigma', 'betag_range', 'betap_range', 'resize_range'):
            _check(getattr(self, name)[0] > 0, f"{name} must be positive, not {getattr(self, name)}")
        _check(self.resize_range[0] <= 1 <= self.resize_range[1], f"resize_range must hold 1 (down from its "
               f"minimum, up to its maximum), not {self.resize_range}")
        _check(self.noise_range[0] >= 0 and self.poisson_scale_range[0] >= 0, "noise ranges must be >= 0")
        lo, hi = self.jpeg_range
        _check(1 <= lo and hi <= 100 and int(lo) == lo and int(hi) == hi,
               f"jpeg_range holds integer qualities from 1 to 100, not {self.jpeg_range}")


@dataclass(frozen=True)
class DegradationSettings:
    """Every range of the second-order degradation: the two stages and the final step.

    final_sinc_prob: probability that the final step filters with a sinc kernel (0.8).
    final_kernel_sizes: (smallest, largest) odd side of the final sinc kernel (7, 21).
    final_sinc_cutoff: (min, max) cutoff frequency of the final sinc kernel, radians ((pi/3, pi)).
    sinc_cutoff_small, sinc_cutoff_large: cutoff range of the stages' sinc kernels below 13 px ((pi/3, pi)) and
      from 13 px ((pi/5, pi)): a low cutoff on a small kernel would not be a sinc any more.
    resize_modes: the interpolations the resizes draw from, uniformly ('area', 'bilinear', 'bicubic': torch's,
      without antialiasing, as Real-ESRGAN resizes).
    clean_prob: probability that an image skips the degradations and its LR is MATLAB bicubic (utils.imresize, the
      papers' test LR) instead (0: Real-ESRGAN's; this suite's addition, so that a model trained for photos keeps
      clean inputs sharp; drawn only when above 0, so a setting of 0 leaves every random stream as it was).
    """
    first: StageSettings
    second: StageSettings
    final_sinc_prob: float = 0.8
    final_kernel_sizes: tuple = (7, 21)
    final_sinc_cutoff: tuple = (math.pi / 3, math.pi)
    sinc_cutoff_small: tuple = (math.pi / 3, math.pi)
    sinc_cutoff_large: tuple = (math.pi / 5, math.pi)
    resize_modes: tuple = RESIZE_MODES
    clean_prob: float = 0.

    def __post_init__(self):
        _check(0 <= self.clean_prob <= 1, f"clean_prob is a probability in [0, 1], not {self.clean_prob}")
        _check(0 <= self.final_sinc_prob <= 1, f"final_sinc_prob is a probability in [0, 1], not "
                                                f"{self.final_sinc_prob}")
        for name in ('final_kernel_sizes', 'final_sinc_cutoff', 'sinc_cutoff_small', 'sinc_cutoff_large'):
            _check_range(name, getattr(self, name))
        lo, hi = self.final_kernel_sizes
        _check(lo % 2 == 1 and hi % 2 == 1 and lo >= 3, f"final_kernel_sizes are odd integers >= 3, not "
                                                         f"{self.final_kernel_sizes}")
        for name in ('final_sinc_cutoff', 'sinc_cutoff_small', 'sinc_cutoff_large'):
            lo, hi = getattr(self, name)
            _check(0 < lo and hi <= math.pi + 1e-9, f"{name} holds frequencies in (0, pi], not {(lo, hi)}")
        _check(len(self.resize_modes) > 0 and set(self.resize_modes) <= set(RESIZE_MODES),
               f"resize_modes are some of {', '.join(RESIZE_MODES)}, not {self.resize_modes}")


def _check(condition, message):
    if not condition:
        raise ValueError(message)


def _check_range(name, value):
    _check(isinstance(value, tuple) and len(value) == 2 and value[0] <= value[1],
           f"{name} is a (min, max) pair with min <= max, not {value}")


def _check_probs(name, probs, n):
    _check(isinstance(probs, tuple) and len(probs) == n and min(probs) >= 0 and sum(probs) > 0,
           f"{name} holds {n} probabilities >= 0, not {probs}")


REALESRGAN = DegradationSettings(
    first=StageSettings(blur_prob=1.0, kernel_sizes=(7, 21), kernel_probs=(0.45, 0.25, 0.12, 0.03, 0.12, 0.03),
                        sinc_prob=0.1, blur_sigma=(0.2, 3.0), betag_range=(0.5, 4.0), betap_range=(1.0, 2.0),
                        resize_probs=(0.2, 0.7, 0.1), resize_range=(0.15, 1.5), gaussian_noise_prob=0.5,
                        noise_range=(1.0, 30.0), poisson_scale_range=(0.05, 3.0), gray_noise_prob=0.4,
                        jpeg_range=(30, 95)),
    second=StageSettings(blur_prob=0.8, kernel_sizes=(7, 21), kernel_probs=(0.45, 0.25, 0.12, 0.03, 0.12, 0.03),
                         sinc_prob=0.1, blur_sigma=(0.2, 1.5), betag_range=(0.5, 4.0), betap_range=(1.0, 2.0),
                         resize_probs=(0.3, 0.4, 0.3), resize_range=(0.3, 1.2), gaussian_noise_prob=0.5,
                         noise_range=(1.0, 25.0), poisson_scale_range=(0.05, 2.5), gray_noise_prob=0.4,
                         jpeg_range=(30, 95)))

# Milder than the published ranges (this suite's choice, not a paper's): phone photos and web JPEGs rather than
# images shared many times over; less blur, half the noise, JPEG from quality 60, resizes within [0.5, 1.2].
LIGHT = dataclasses.replace(
    REALESRGAN,
    first=dataclasses.replace(REALESRGAN.first, sinc_prob=0.05, blur_sigma=(0.2, 1.5), resize_range=(0.5, 1.2),
                              noise_range=(1.0, 15.0), poisson_scale_range=(0.05, 1.5), jpeg_range=(60, 95)),
    second=dataclasses.replace(REALESRGAN.second, blur_prob=0.5, sinc_prob=0.05, blur_sigma=(0.2, 1.0),
                               resize_range=(0.5, 1.2), noise_range=(1.0, 10.0), poisson_scale_range=(0.05, 1.0),
                               jpeg_range=(60, 95)),
    final_sinc_prob=0.5)

PRESETS = {'realesrgan': REALESRGAN, 'light': LIGHT}


def preset(name):
    """The DegradationSettings of a preset: 'realesrgan' (the published ranges) or 'light' (milder)."""
    if name not in PRESETS:
        raise ValueError(f"unknown degradation preset {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name]


def settings_dict(settings):
    """DegradationSettings as plain data (nested dicts, lists), for JSON files and checkpoints."""
    return json.loads(json.dumps(dataclasses.asdict(settings)))


def settings_from_dict(data):
    """The DegradationSettings recorded by settings_dict. ValueError when ``data`` is not such a record."""
    def tuples(d):
        return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    try:
        stages = {k: StageSettings(**tuples(data[k])) for k in ('first', 'second')}
        return DegradationSettings(**stages, **tuples({k: v for k, v in data.items() if k not in stages}))
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"not a record of degradation settings ({type(e).__name__}: {e})") from None


def setting_names(settings=REALESRGAN):
    """Every key with_overrides takes: 'first.<field>', 'second.<field>' and the final step's fields."""
    names = []
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if isinstance(value, StageSettings):
            names += [f"{f.name}.{g.name}" for g in dataclasses.fields(value)]
        else:
            names.append(f.name)
    return names


def _parse_value(text, like, key):
    """``text`` read as the current value ``like`` of ``key`` is: comma-separated names for a tuple of names,
    comma-separated numbers for a tuple of numbers, a number otherwise (integers stay integers)."""
    parts = [p.strip() for p in text.split(',')]
    if isinstance(like, tuple) and like and isinstance(like[0], str):
        return tuple(parts)
    old = like if isinstance(like, tuple) else (like,)
    if len(parts) != len(old):
        raise ValueError(f"{key} takes {len(old)} comma-separated number(s), got {text!r}")
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"{key}={text}: not a number") from None
    numbers = [int(n) if isinstance(o, int) and n.is_integer() else n for n, o in zip(numbers, old)]
    return tuple(numbers) if isinstance(like, tuple) else numbers[0]


def with_overrides(settings, overrides):
    """``settings`` with ``overrides`` applied: 'KEY=VALUE' strings, KEY one of setting_names() ('second.jpeg_range',
    'final_sinc_prob'), VALUE a number or comma-separated numbers ('50,95'). ValueError naming the problem (an
    unknown key lists the known ones; a value out of its range says why)."""
    for item in overrides:
        key, sep, text = item.partition('=')
        key = key.strip()
        if not sep or key not in setting_names(settings):
            raise ValueError(f"{item!r} is not KEY=VALUE with KEY one of: {', '.join(setting_names(settings))}")
        stage, _, field = key.rpartition('.')
        if stage:
            old = getattr(settings, stage)
            value = _parse_value(text, getattr(old, field), key)
            settings = dataclasses.replace(settings, **{stage: dataclasses.replace(old, **{field: value})})
        else:
            settings = dataclasses.replace(settings, **{field: _parse_value(text, getattr(settings, field), key)})
    return settings


# ----------------------------------------------------------------------------------------------
# Random streams
# ----------------------------------------------------------------------------------------------

_STREAM = 0x5EA1DE6  # keeps these streams apart from any other use of the same seed
_MASK = 2 ** 64 - 1


def patch_rng(seed, epoch, index, crop=0):
    """The generator of one training patch: a pure function of (seed, epoch, index, crop), where (epoch, index)
    is an item of datasets.EpochSampler and crop its crop number within the visit (any int seed, negative too)."""
    return np.random.default_rng([_STREAM, seed & _MASK, epoch & _MASK, index & _MASK, crop & _MASK])


def image_rng(seed, name):
    """The generator of one test image: a pure function of (seed, file name), so that adding or removing other
    images of the set changes nothing of this one's degradation."""
    digest = int.from_bytes(hashlib.sha256(name.encode('utf-8')).digest()[:16], 'little')
    return np.random.default_rng([_STREAM, seed & _MASK, 1, digest])


def _uniform(rng, value_range):
    return float(rng.uniform(value_range[0], value_range[1]))


# ----------------------------------------------------------------------------------------------
# Blur kernels
# ----------------------------------------------------------------------------------------------


def kernel_grid(size):
    """(x, y): (size, size) float64 arrays of column and row offsets from the kernel's centre (size odd)."""
    if size % 2 != 1:
        raise ValueError(f"kernel size must be odd, not {size}")
    ax = np.arange(size, dtype=np.float64) - size // 2
    return np.meshgrid(ax, ax)


def _quadratic_form(size, sigma_x, sigma_y, theta):
    """C^T Sigma^-1 C at every offset C = (x, y) of the kernel, Sigma = R diag(sigma_x^2, sigma_y^2) R^T with R the
    rotation by theta: the squared Mahalanobis distance from the centre."""
    x, y = kernel_grid(size)
    u = math.cos(theta) * x + math.sin(theta) * y  # C in the rotated frame: R^T C
    v = -math.sin(theta) * x + math.cos(theta) * y
    return (u / sigma_x) ** 2 + (v / sigma_y) ** 2


def gaussian_kernel(size, sigma_x, sigma_y=None, theta=0.):
    """The (size, size) Gaussian kernel exp(-C^T Sigma^-1 C / 2), normalised to sum 1 (isotropic when sigma_y is
    None or equal to sigma_x; anisotropic, rotated by theta radians, otherwise)."""
    q = _quadratic_form(size, sigma_x, sigma_x if sigma_y is None else sigma_y, theta)
    k = np.exp(-0.5 * q)
    return k / k.sum()


def generalized_gaussian_kernel(size, sigma_x, sigma_y, theta, beta):
    """The generalized Gaussian kernel exp(-(C^T Sigma^-1 C)^beta / 2), normalised to sum 1 (beta 1: the
    Gaussian; beta < 1 heavier tails, beta > 1 a flatter top)."""
    k = np.exp(-0.5 * _quadratic_form(size, sigma_x, sigma_y, theta) ** beta)
    return k / k.sum()


def plateau_kernel(size, sigma_x, sigma_y, theta, beta):
    """The plateau kernel 1 / (1 + (C^T Sigma^-1 C)^beta), normalised to sum 1."""
    k = 1. / (1. + _quadratic_form(size, sigma_x, sigma_y, theta) ** beta)
    return k / k.sum()


def sinc_kernel(size, cutoff):
    """The circularly symmetric low-pass (2-D sinc) kernel of cutoff frequency ``cutoff`` radians (pi: Nyquist):
    cutoff * J1(cutoff * r) / (2 pi r) at distance r from the centre, cutoff^2 / (4 pi) at the centre (its limit),
    truncated to (size, size) and normalised to sum 1."""
    import scipy.special  # here, not at the top: SciPy's import costs every run, only degradations use it
    x, y = kernel_grid(size)
    r = np.hypot(x, y)
    with np.errstate(divide='ignore', invalid='ignore'):
        k = cutoff * scipy.special.j1(cutoff * r) / (2 * math.pi * r)
    k[size // 2, size // 2] = cutoff ** 2 / (4 * math.pi)
    return k / k.sum()


def _draw_beta(rng, beta_range):
    """Half the draws from [lo, 1], half from [1, hi] (as BasicSR draws; a range starting at 1, plateau's (1, 2),
    gives beta 1 for half the draws); a range on one side of 1 is drawn uniformly."""
    lo, hi = beta_range
    if lo <= 1 <= hi:
        return _uniform(rng, (lo, 1.) if rng.random() < 0.5 else (1., hi))
    return _uniform(rng, beta_range)


def random_blur_kernel(stage, settings, rng, record=None):
    """A random blur kernel of one stage, normalised to sum 1.

    Side: an odd size drawn uniformly from stage.kernel_sizes (7 to 21). With probability stage.sinc_prob (0.1) a
    sinc kernel, cutoff uniform in settings.sinc_cutoff_small ([pi/3, pi]) below 13 px or sinc_cutoff_large
    ([pi/5, pi]) from 13 px; otherwise a kind of KERNEL_TYPES drawn with stage.kernel_probs, sigma_x uniform in
    stage.blur_sigma ((0.2, 3) first stage, (0.2, 1.5) second); isotropic kinds: sigma_y = sigma_x, no rotation;
    anisotropic: sigma_y uniform in blur_sigma too and a rotation uniform in [-pi, pi]; generalized Gaussian shape
    beta from stage.betag_range ((0.5, 4)), plateau from stage.betap_range ((1, 2)), see _draw_beta.
    ``record`` (a dict) receives what was drawn.
    """
    sizes = np.arange(stage.kernel_sizes[0], stage.kernel_sizes[1] + 1, 2)
    size = int(rng.choice(sizes))
    if rng.random() < stage.sinc_prob:
        cutoff = _uniform(rng, settings.sinc_cutoff_small if size < 13 else settings.sinc_cutoff_large)
        if record is not None:
            record.update(type='sinc', size=size, cutoff=cutoff)
        return sinc_kernel(size, cutoff)
    probs = np.asarray(stage.kernel_probs, dtype=np.float64)
    kind = KERNEL_TYPES[int(rng.choice(len(KERNEL_TYPES), p=probs / probs.sum()))]
    sigma_x = _uniform(rng, stage.blur_sigma)
    if kind.endswith('iso') and not kind.endswith('aniso'):
        sigma_y, theta = sigma_x, 0.
    else:
        sigma_y, theta = _uniform(rng, stage.blur_sigma), _uniform(rng, (-math.pi, math.pi))
    drawn = dict(type=kind, size=size, sigma_x=sigma_x, sigma_y=sigma_y, theta=theta)
    if kind.startswith('generalized'):
        drawn['beta'] = _draw_beta(rng, stage.betag_range)
        kernel = generalized_gaussian_kernel(size, sigma_x, sigma_y, theta, drawn['beta'])
    elif kind.startswith('plateau'):
        drawn['beta'] = _draw_beta(rng, stage.betap_range)
        kernel = plateau_kernel(size, sigma_x, sigma_y, theta, drawn['beta'])
    else:
        kernel = gaussian_kernel(size, sigma_x, sigma_y, theta)
    if record is not None:
        record.update(drawn)
    return kernel


def blur(img, kernel):
    """``img`` (3, H, W) float32 filtered with ``kernel`` (k, k), k odd: the borders reflected (torch's 'reflect'
    padding: the edge pixel not repeated), the same size out. The kernels here are point-symmetric, so convolution
    and correlation agree. Through the FFT: a 21 px kernel costs about what a 7 px one does."""
    import scipy.signal  # here, not at the top: about a second to import, which every run would pay
    p = kernel.shape[0] // 2
    padded = np.pad(img, ((0, 0), (p, p), (p, p)), mode='reflect')  # (3, H + 2p, W + 2p)
    out = scipy.signal.fftconvolve(padded, kernel[None].astype(np.float32), mode='valid', axes=(1, 2))
    return out.astype(np.float32, copy=False)  # (3, H, W)


# ----------------------------------------------------------------------------------------------
# Resizing
# ----------------------------------------------------------------------------------------------


def resize(img, size, mode):
    """``img`` (3, H, W) float32 resized to ``size`` (h, w) by torch's interpolation ``mode`` ('area', 'bilinear'
    or 'bicubic'; align_corners False, no antialiasing, as Real-ESRGAN resizes; bicubic may overshoot [0, 1])."""
    if tuple(img.shape[1:]) == tuple(size):
        return img
    kwargs = {} if mode == 'area' else {'align_corners': False}
    out = F.interpolate(torch.from_numpy(np.ascontiguousarray(img))[None], size=tuple(size), mode=mode, **kwargs)
    return out[0].numpy()  # (3, h, w)


def random_resize(img, stage, settings, rng, base_size, record=None):
    """A random resize of one stage: up, down or kept with stage.resize_probs ((0.2, 0.7, 0.1) first stage, (0.3,
    0.4, 0.3) second), the factor uniform in [1, max] up or [min, 1] down of stage.resize_range ((0.15, 1.5) first,
    (0.3, 1.2) second), the mode uniform among settings.resize_modes. The output is the factor times ``base_size``
    (h, w): the input's size in the first stage, the LR size in the second (as Real-ESRGAN), at least 1 px."""
    probs = np.asarray(stage.resize_probs, dtype=np.float64)
    direction = RESIZE_DIRECTIONS[int(rng.choice(3, p=probs / probs.sum()))]
    lo, hi = stage.resize_range
    factor = _uniform(rng, (1., hi)) if direction == 'up' else _uniform(rng, (lo, 1.)) if direction == 'down' else 1.
    mode = settings.resize_modes[int(rng.integers(len(settings.resize_modes)))]
    size = (max(1, int(base_size[0] * factor)), max(1, int(base_size[1] * factor)))
    if record is not None:
        record.update(direction=direction, factor=factor, mode=mode, size=list(size))
    return resize(img, size, mode)


# ----------------------------------------------------------------------------------------------
# Noise
# ----------------------------------------------------------------------------------------------

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # RGB -> grey, as torchvision's rgb_to_grayscale


def gaussian_noise(shape, sigma, gray, rng):
    """Noise of ``shape`` (3, H, W), float32, normal with mean 0 and standard deviation sigma / 255 (sigma on the
    0-255 scale); grey: one plane repeated in the three channels."""
    c, h, w = shape
    noise = rng.standard_normal((1 if gray else c, h, w), dtype=np.float32) * np.float32(sigma / 255.)
    return np.broadcast_to(noise, shape) if gray else noise


def poisson_noise(img, scale, gray, rng):
    """Shot noise of ``img`` (3, H, W) in [0, 1], float32: the image (grey with GRAY_WEIGHTS when ``gray``) rounded to
    8 bits, v; the number of its distinct levels rounded up to a power of two, n; noise = scale * (Poisson(v n) / n -
    v): mean 0, variance scale^2 v / n at each pixel. Grey: the same plane in the three channels."""
    plane = np.tensordot(np.asarray(GRAY_WEIGHTS, np.float32), img, axes=1)[None] if gray else img  # (1 or 3, H, W)
    levels = np.clip(np.rint(plane * 255.), 0, 255).astype(np.uint8)
    distinct = np.count_nonzero(np.bincount(levels.ravel(), minlength=256))
    n = float(2 ** math.ceil(math.log2(distinct)))
    v = levels.astype(np.float64) / 255.
    noise = ((rng.poisson(v * n) / n - v) * scale).astype(np.float32)
    return np.broadcast_to(noise, img.shape) if gray else noise


def random_noise(img, stage, rng, record=None):
    """Noise of one stage added and the result clipped to [0, 1]: Gaussian with probability
    stage.gaussian_noise_prob (0.5), sigma uniform in stage.noise_range ((1, 30) first stage, (1, 25) second, on
    the 0-255 scale); otherwise Poisson, scale uniform in stage.poisson_scale_range ((0.05, 3) first, (0.05, 2.5)
    second); grey with probability stage.gray_noise_prob (0.4), colour otherwise."""
    gaussian = rng.random() < stage.gaussian_noise_prob
    gray = bool(rng.random() < stage.gray_noise_prob)
    if gaussian:
        sigma = _uniform(rng, stage.noise_range)
        noise = gaussian_noise(img.shape, sigma, gray, rng)
        drawn = dict(type='gaussian', sigma=sigma, gray=gray)
    else:
        scale = _uniform(rng, stage.poisson_scale_range)
        noise = poisson_noise(img, scale, gray, rng)
        drawn = dict(type='poisson', scale=scale, gray=gray)
    if record is not None:
        record.update(drawn)
    return np.clip(img + noise, 0., 1.)


# ----------------------------------------------------------------------------------------------
# JPEG
# ----------------------------------------------------------------------------------------------


def to_uint8(img):
    """(3, H, W) float in [0, 1] -> (3, H, W) uint8: clipped, rounded to the nearest level (halves to even)."""
    return np.clip(np.rint(img * 255.), 0, 255).astype(np.uint8)


def jpeg(img, quality):
    """``img`` (3, H, W) float32 in [0, 1] through a real JPEG codec: rounded to 8 bits, encoded by Pillow (libjpeg)
    at ``quality`` (1-100) with 4:2:0 chroma subsampling (Pillow's default, and Real-ESRGAN's), decoded; float32 in
    [0, 1] out."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(to_uint8(img).transpose(1, 2, 0))).save(
        buffer, format='JPEG', quality=int(quality), subsampling='4:2:0')
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        out = np.asarray(decoded.convert('RGB'))  # (H, W, 3) uint8
    return out.transpose(2, 0, 1).astype(np.float32) / np.float32(255.)


def random_jpeg(img, stage, rng, record=None):
    """JPEG at a quality drawn uniformly among the integers of stage.jpeg_range ((30, 95) both stages)."""
    quality = int(rng.integers(stage.jpeg_range[0], stage.jpeg_range[1] + 1))
    if record is not None:
        record['quality'] = quality
    return jpeg(img, quality)


# ----------------------------------------------------------------------------------------------
# The pipeline
# ----------------------------------------------------------------------------------------------


def _as_float(hr):
    """(3, H, W) uint8 or float in [0, 1], numpy or torch -> a (3, H, W) float32 numpy array of its own."""
    arr = hr.detach().cpu().numpy() if isinstance(hr, torch.Tensor) else np.asarray(hr)
    if arr.ndim != 3 or arr.shape[0] != 3:
        raise ValueError(f"expected an RGB image (3, H, W), got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / np.float32(255.)
    return np.clip(arr.astype(np.float32), 0., 1.)


def _stage(img, stage, settings, rng, base_size, record):
    """Blur (with probability stage.blur_prob), random resize to a factor of ``base_size``, noise: one stage
    without its JPEG."""
    record['blur'] = None
    if rng.random() < stage.blur_prob:
        record['blur'] = {}
        img = blur(img, random_blur_kernel(stage, settings, rng, record['blur']))
    record['resize'] = {}
    img = random_resize(img, stage, settings, rng, base_size, record['resize'])
    record['noise'] = {}
    return random_noise(img, stage, rng, record['noise'])


def final_step(img, lr_size, settings, rng, record=None):
    """The final step: [resize to ``lr_size`` (h, w), mode uniform among settings.resize_modes, then the sinc
    filter] and the JPEG (quality from the second stage's jpeg_range, (30, 95)), in either order with probability
    1/2 each (Real-ESRGAN's two orders; others gave twisted lines there). The sinc filter comes with probability
    settings.final_sinc_prob (0.8): side odd in settings.final_kernel_sizes (7 to 21), cutoff uniform in
    settings.final_sinc_cutoff ([pi/3, pi]); otherwise none."""
    record = {} if record is None else record
    sinc = None
    if rng.random() < settings.final_sinc_prob:
        sizes = np.arange(settings.final_kernel_sizes[0], settings.final_kernel_sizes[1] + 1, 2)
        size, cutoff = int(rng.choice(sizes)), _uniform(rng, settings.final_sinc_cutoff)
        sinc = sinc_kernel(size, cutoff)
        record['sinc'] = dict(size=size, cutoff=cutoff)
    else:
        record['sinc'] = None
    mode = settings.resize_modes[int(rng.integers(len(settings.resize_modes)))]
    jpeg_first = bool(rng.random() < 0.5)
    record.update(order='jpeg, resize + sinc' if jpeg_first else 'resize + sinc, jpeg', resize_mode=mode, jpeg={})

    def resize_and_filter(x):
        x = resize(x, lr_size, mode)
        return blur(x, sinc) if sinc is not None else x

    if jpeg_first:
        return resize_and_filter(random_jpeg(img, settings.second, rng, record['jpeg']))
    return random_jpeg(resize_and_filter(img), settings.second, rng, record['jpeg'])


def degrade(hr, scale, settings, rng, record=None):
    """Real-ESRGAN's second-order degradation of one HR image: (3, H, W) uint8 (or float in [0, 1]), numpy or
    torch, H and W multiples of ``scale`` -> the LR image (3, H / scale, W / scale) uint8 (numpy).

    First stage on the HR image (blur, resize, noise, JPEG), second stage on the result (blur with its
    probability, resize relative to the LR size, noise), final step (resize to the LR size + sinc, and JPEG, in
    random order); values clipped to [0, 1] after each noise and before each JPEG, rounded to 8 bits at the end.
    Every draw comes from ``rng`` (a numpy Generator: patch_rng, image_rng). ``record``, a dict, receives every
    drawn parameter ('first', 'second', 'final'), or 'clean': True when the image drew settings.clean_prob's plain
    MATLAB bicubic LR instead."""
    img = _as_float(hr)  # (3, H, W) float32 in [0, 1]
    h, w = img.shape[1:]
    if h % scale or w % scale:
        raise ValueError(f"the HR image is {w}x{h}: both sides must be multiples of the scale {scale}")
    lr_size = (h // scale, w // scale)
    record = {} if record is None else record
    if settings.clean_prob > 0 and rng.random() < settings.clean_prob:
        record['clean'] = True
        return to_uint8(imresize(torch.from_numpy(img).double(), 1. / scale).numpy())  # (3, H / s, W / s) bicubic
    record['first'], record['second'], record['final'] = {}, {}, {}
    img = _stage(img, settings.first, settings, rng, (h, w), record['first'])
    record['first']['jpeg'] = {}
    img = random_jpeg(img, settings.first, rng, record['first']['jpeg'])
    img = _stage(img, settings.second, settings, rng, lr_size, record['second'])
    img = final_step(img, lr_size, settings, rng, record['final'])
    return to_uint8(img)  # (3, H / scale, W / scale)


# ----------------------------------------------------------------------------------------------
# Degraded test sets: paired LR / HR folders and a record of how they were made
# ----------------------------------------------------------------------------------------------

RECORD_NAME = 'degradation.json'


def degraded_set_folder(output_folder, test_folder, scale, preset_name):
    """Where degrade_test_set writes a test set: <output_folder>/<set name>_x<scale>_<preset>, holding LR/, HR/ and
    degradation.json."""
    name = os.path.basename(os.path.normpath(test_folder))
    return os.path.join(output_folder, f"{name}_x{scale}_{preset_name}")


def degrade_test_set(test_folder, folder, scale, settings, seed, preset_name, files, log=print):
    """Write the degraded version of the test images in ``test_folder`` into ``folder``: HR/<name>.png (each image
    cut to multiples of ``scale``, as the papers' protocol does) and LR/<name>.png (degrade of that HR with
    image_rng(seed, file name)), and degradation.json (seed, preset, scale, every range, and per image its source
    file, its HR size [width, height] and every drawn parameter). ``files``: the utils.AtomicFileSet that writes
    them (all or nothing with the caller's other files). Returns the record."""
    paths = list_image_files(test_folder)
    if not paths:
        raise UserError(f"{test_folder}: no images to degrade")
    images = {}
    for path in paths:
        name = os.path.splitext(os.path.basename(path))[0] + '.png'
        if name in images:
            raise UserError(f"{test_folder}: two images would both be written as {name} (same name, other "
                            f"extensions): rename one")
        hr = pil_to_tensor(load_image(path)).numpy()  # (3, H, W) uint8
        hr = np.ascontiguousarray(hr[:, :hr.shape[1] // scale * scale, :hr.shape[2] // scale * scale])
        if min(hr.shape[1:]) < scale:
            raise UserError(f"{path}: smaller than the scale {scale}")
        drawn = {}
        lr = degrade(hr, scale, settings, image_rng(seed, name), drawn)
        images[name] = dict(source=os.path.basename(path), hr_size=[hr.shape[2], hr.shape[1]], **drawn)
        for sub, img in (('HR', hr), ('LR', lr)):
            pil = Image.fromarray(np.ascontiguousarray(img.transpose(1, 2, 0)))
            files.write(os.path.join(folder, sub, name), lambda f, pil=pil: pil.save(f, format='PNG'))
    record = {'source': os.path.basename(os.path.normpath(test_folder)), 'scale': scale, 'seed': seed,
              'preset': preset_name, 'settings': settings_dict(settings), 'images': images}
    files.write_text(os.path.join(folder, RECORD_NAME), json.dumps(record, indent=1) + '\n')
    log(f"{record['source']}: {len(images)} images degraded x{scale} ({preset_name}, seed {seed}) -> {folder}")
    return record
