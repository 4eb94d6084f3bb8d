"""degradations.py against independent computations: kernels against their closed forms (scipy's Gaussian window
and multivariate normal, the Bessel-function sinc and its frequency response), the blur against torch's direct
convolution, the JPEG step against Pillow, noise statistics over many samples, the published probabilities and
ranges, shapes, clipping and determinism per seed."""
import dataclasses
import io
import json
import math

import numpy as np
import pytest
import scipy.signal
import scipy.special
import scipy.stats
import torch
import torch.nn.functional as F
from PIL import Image

import degradations as d
from conftest import photo_crops


def hr_patch(size=96, k=0):
    """A real photo crop (3, size, size) uint8."""
    return np.ascontiguousarray(photo_crops(size, k + 1)[k].transpose(2, 0, 1))


# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------

def test_isotropic_gaussian_is_the_outer_product_of_scipys_gaussian_window():
    for size, sigma in ((7, 0.2), (13, 1.3), (21, 3.0)):
        w = scipy.signal.windows.gaussian(size, sigma)
        expected = np.outer(w, w) / np.outer(w, w).sum()
        np.testing.assert_allclose(d.gaussian_kernel(size, sigma), expected, rtol=1e-10, atol=1e-15)


def rotated_covariance(sigma_x, sigma_y, theta):
    r = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    return r @ np.diag([sigma_x ** 2, sigma_y ** 2]) @ r.T


def offsets(size):
    """(size * size, 2) offsets (column x, row y) from the centre, row-major."""
    ax = np.arange(size) - size // 2
    y, x = np.meshgrid(ax, ax, indexing='ij')
    return np.stack([x.ravel(), y.ravel()], axis=1)


@pytest.mark.parametrize('sigma_x, sigma_y, theta', [(2.5, 0.6, 0.4), (0.9, 2.0, -2.5), (3.0, 3.0, 1.0)])
def test_anisotropic_gaussian_is_scipys_bivariate_normal_density(sigma_x, sigma_y, theta):
    size = 15
    cov = rotated_covariance(sigma_x, sigma_y, theta)
    pdf = scipy.stats.multivariate_normal(mean=[0, 0], cov=cov).pdf(offsets(size)).reshape(size, size)
    np.testing.assert_allclose(d.gaussian_kernel(size, sigma_x, sigma_y, theta), pdf / pdf.sum(), rtol=1e-9,
                               atol=1e-15)


@pytest.mark.parametrize('beta', [0.5, 1.0, 2.7])
def test_generalized_gaussian_and_plateau_kernels_match_their_closed_forms(beta):
    size, sigma_x, sigma_y, theta = 17, 2.2, 1.1, 0.7
    inv = np.linalg.inv(rotated_covariance(sigma_x, sigma_y, theta))
    c = offsets(size)
    q = np.einsum('ni,ij,nj->n', c, inv, c).reshape(size, size)  # C^T Sigma^-1 C
    general = np.exp(-0.5 * q ** beta)
    plateau = 1 / (1 + q ** beta)
    np.testing.assert_allclose(d.generalized_gaussian_kernel(size, sigma_x, sigma_y, theta, beta),
                               general / general.sum(), rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(d.plateau_kernel(size, sigma_x, sigma_y, theta, beta), plateau / plateau.sum(),
                               rtol=1e-9, atol=1e-15)
    if beta == 1.0:  # the generalized Gaussian of beta 1 is the Gaussian
        np.testing.assert_allclose(d.generalized_gaussian_kernel(size, sigma_x, sigma_y, theta, 1.0),
                                   d.gaussian_kernel(size, sigma_x, sigma_y, theta), rtol=1e-12)


def test_sinc_kernel_is_the_bessel_closed_form():
    size, cutoff = 13, 1.9
    r = np.hypot(*offsets(size).T.astype(float)).reshape(size, size)
    with np.errstate(divide='ignore', invalid='ignore'):
        expected = cutoff * scipy.special.j1(cutoff * r) / (2 * np.pi * r)
    expected[6, 6] = cutoff ** 2 / (4 * np.pi)  # lim r->0 of J1(w r) / r = w / 2
    np.testing.assert_allclose(d.sinc_kernel(size, cutoff), expected / expected.sum(), rtol=1e-10, atol=1e-15)
    assert abs(scipy.special.j1(1e-6 * cutoff) * cutoff / (2 * np.pi * 1e-6) - cutoff ** 2 / (4 * np.pi)) < 1e-9


@pytest.mark.parametrize('size, cutoff', [(21, math.pi / 2), (21, math.pi / 3), (15, 2.0)])
def test_sinc_kernel_is_a_circular_low_pass_with_its_cutoff(size, cutoff):
    """Its frequency response (the kernel's DFT, finely sampled) falls to half at the cutoff frequency, along an
    axis and along the diagonal alike (circular), and is ~0 well above it."""
    n = 2048
    response = np.abs(np.fft.fft2(d.sinc_kernel(size, cutoff), s=(n, n)))
    freqs = np.fft.fftfreq(n)[:n // 2] * 2 * np.pi
    axis, diagonal = response[0, :n // 2], response[np.arange(n // 2), np.arange(n // 2)]
    for profile, radius in ((axis, freqs), (diagonal, freqs * math.sqrt(2))):
        half = radius[np.argmax(profile < 0.5)]
        assert abs(half / cutoff - 1) < 0.03
    fx, fy = np.meshgrid(np.fft.fftfreq(n) * 2 * np.pi, np.fft.fftfreq(n) * 2 * np.pi)
    radius = np.hypot(fx, fy)
    assert response[(radius > 1.5 * cutoff) & (radius < np.pi)].mean() < 0.05  # the stop band, all directions


def test_every_drawn_kernel_sums_to_one_with_its_published_kind_frequencies_and_ranges():
    """2000 first-stage kernels: each odd-sized in [7, 21] and summing to 1; sinc 10% of them, the others iso 45%,
    aniso 25%, generalized 12% + 3%, plateau 12% + 3% (within 5 binomial standard errors); sigmas in [0.2, 3],
    betas in their ranges, isotropic kinds unrotated with equal sigmas."""
    rng = np.random.default_rng(0)
    stage, n = d.REALESRGAN.first, 2000
    kinds, sizes = [], set()
    for _ in range(n):
        record = {}
        kernel = d.random_blur_kernel(stage, d.REALESRGAN, rng, record)
        assert kernel.shape == (record['size'],) * 2 and abs(kernel.sum() - 1) < 1e-12
        sizes.add(record['size'])
        kinds.append(record['type'])
        if record['type'] == 'sinc':
            lo = math.pi / 3 if record['size'] < 13 else math.pi / 5
            assert lo <= record['cutoff'] <= math.pi
            continue
        assert 0.2 <= record['sigma_x'] <= 3 and 0.2 <= record['sigma_y'] <= 3
        if record['type'] in ('iso', 'generalized_iso', 'plateau_iso'):
            assert record['sigma_x'] == record['sigma_y'] and record['theta'] == 0
        if record['type'].startswith('generalized'):
            assert 0.5 <= record['beta'] <= 4
        if record['type'].startswith('plateau'):
            assert 1 <= record['beta'] <= 2
    assert sizes == set(range(7, 22, 2))
    expected = {'sinc': 0.1, **{k: 0.9 * p for k, p in zip(d.KERNEL_TYPES, stage.kernel_probs)}}
    for kind, p in expected.items():
        share = kinds.count(kind) / n
        assert abs(share - p) < 5 * math.sqrt(p * (1 - p) / n), (kind, share, p)


def test_blur_is_torchs_direct_convolution_with_reflected_borders():
    """The FFT blur equals Real-ESRGAN's way (reflect padding, then a direct 2-D convolution, torch) to float
    rounding, for small and large kernels on an image smaller than the kernel's reach too."""
    img = hr_patch(48).astype(np.float32) / 255
    rng = np.random.default_rng(1)
    for size in (7, 21):
        kernel = d.gaussian_kernel(size, 2.0, 0.7, 0.3) * (1 + 0.1 * rng.random((size, size)))  # not symmetric
        kernel = (kernel + kernel[::-1, ::-1]) / 2  # point-symmetric, as every kernel of the pipeline
        p = size // 2
        x = F.pad(torch.from_numpy(img)[None].double(), (p, p, p, p), mode='reflect')
        w = torch.from_numpy(kernel)[None, None].expand(3, 1, size, size)
        expected = F.conv2d(x, w, groups=3)[0].numpy()
        np.testing.assert_allclose(d.blur(img, kernel.astype(np.float32)), expected, rtol=0, atol=2e-6)
    tiny = img[:, :5, :6].copy()  # 5 x 6 px, a 21 px kernel: numpy reflects again where torch cannot
    out = d.blur(tiny, d.gaussian_kernel(21, 3.0).astype(np.float32))
    assert out.shape == tiny.shape and tiny.min() - 1e-6 <= out.min() and out.max() <= tiny.max() + 1e-6


# ----------------------------------------------------------------------------------------------
# Resizing, noise, JPEG
# ----------------------------------------------------------------------------------------------

def test_resize_draws_directions_and_factors_in_the_published_ranges():
    rng = np.random.default_rng(2)
    img = np.zeros((3, 40, 40), np.float32)
    for stage, probs, (lo, hi) in ((d.REALESRGAN.first, (0.2, 0.7, 0.1), (0.15, 1.5)),
                                   (d.REALESRGAN.second, (0.3, 0.4, 0.3), (0.3, 1.2))):
        records, n = [], 600
        for _ in range(n):
            record = {}
            out = d.random_resize(img, stage, d.REALESRGAN, rng, (40, 40), record)
            assert out.shape == (3, *record['size']) and record['mode'] in d.RESIZE_MODES
            assert record['size'] == [int(40 * record['factor'])] * 2
            records.append(record)
        for direction, p in zip(d.RESIZE_DIRECTIONS, probs):
            share = sum(r['direction'] == direction for r in records) / n
            assert abs(share - p) < 5 * math.sqrt(p * (1 - p) / n)
        assert all(1 <= r['factor'] <= hi for r in records if r['direction'] == 'up')
        assert all(lo <= r['factor'] <= 1 for r in records if r['direction'] == 'down')
        assert all(r['factor'] == 1 for r in records if r['direction'] == 'keep')
        assert {r['mode'] for r in records} == set(d.RESIZE_MODES)


def test_gaussian_noise_has_mean_zero_and_the_drawn_sigma_colour_or_grey():
    rng = np.random.default_rng(3)
    shape, sigma = (3, 256, 256), 17.0
    for gray in (False, True):
        noise = d.gaussian_noise(shape, sigma, gray, rng)
        assert noise.shape == shape and noise.dtype == np.float32
        samples = noise[0] if gray else noise  # grey: one plane, three times
        n, std = samples.size, sigma / 255
        assert abs(samples.mean()) < 5 * std / math.sqrt(n)
        assert abs(samples.std() / std - 1) < 5 * math.sqrt(1 / (2 * n))
        channels_equal = np.array_equal(noise[0], noise[1]) and np.array_equal(noise[1], noise[2])
        assert channels_equal is gray


def test_poisson_noise_variance_is_the_level_over_the_power_of_two_of_distinct_levels():
    """On an image of all 256 levels (rows), n = 256: at level v the noise has mean 0 and variance scale^2 v / 256.
    On a two-level image n = 2: variance scale^2 v / 2 (the count of distinct levels sets the photon count)."""
    rng = np.random.default_rng(4)
    scale = 1.7
    ramp = np.broadcast_to((np.arange(256, dtype=np.float32) / 255)[None, :, None], (3, 256, 2048)).copy()
    noise = d.poisson_noise(ramp, scale, False, rng)
    for level in (16, 64, 128, 240):
        v, samples = level / 255, noise[:, level].ravel()  # 6144 samples
        var = scale ** 2 * v / 256
        assert abs(samples.mean()) < 5 * math.sqrt(var / samples.size)
        assert abs(samples.var() / var - 1) < 5 * math.sqrt(2 / samples.size)
    two = np.full((3, 128, 256), 51 / 255, np.float32)
    two[:, :, 128:] = 153 / 255
    noise = d.poisson_noise(two, scale, False, rng)
    for v, samples in ((51 / 255, noise[:, :, :128]), (153 / 255, noise[:, :, 128:])):
        var = scale ** 2 * v / 2
        assert abs(samples.var() / var - 1) < 5 * math.sqrt(2 / samples.size)


def test_grey_poisson_noise_is_one_plane_from_the_grey_image():
    rng = np.random.default_rng(5)
    img = np.empty((3, 200, 200), np.float32)
    img[0], img[1], img[2] = 0.9, 0.5, 0.1  # grey: 0.2989 * 0.9 + 0.587 * 0.5 + 0.114 * 0.1 = 0.5725 -> level 146
    noise = d.poisson_noise(img, 1.0, True, rng)
    assert np.array_equal(noise[0], noise[1]) and np.array_equal(noise[1], noise[2])
    v = 146 / 255  # one distinct level: n = 1
    assert abs(noise[0].mean()) < 5 * math.sqrt(v / noise[0].size)
    assert abs(noise[0].var() / v - 1) < 5 * math.sqrt(2 / noise[0].size)


def test_noise_step_clips_to_zero_one():
    rng = np.random.default_rng(6)
    img = np.zeros((3, 32, 32), np.float32)
    img[:, :16] = 1.0
    stage = d.with_overrides(d.REALESRGAN, ['first.gaussian_noise_prob=1', 'first.noise_range=30,30']).first
    out = d.random_noise(img, stage, rng)
    assert out.min() == 0 and out.max() == 1 and 0 < out[:, 16:].mean() < 0.1 and 0.9 < out[:, :16].mean() < 1


def pillow_round_trip(arr_hwc, quality):
    buffer = io.BytesIO()
    Image.fromarray(arr_hwc).save(buffer, format='JPEG', quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert('RGB'))


def test_jpeg_step_is_pillows_round_trip():
    hr = hr_patch(64, 1)
    for quality in (30, 75, 95):
        out = d.jpeg(hr.astype(np.float32) / 255, quality)
        expected = pillow_round_trip(np.ascontiguousarray(hr.transpose(1, 2, 0)), quality).transpose(2, 0, 1)
        assert np.array_equal(d.to_uint8(out), expected)
        assert not np.array_equal(expected, hr)
    errors = [np.abs(d.to_uint8(d.jpeg(hr.astype(np.float32) / 255, q)).astype(int) - hr).mean() for q in (30, 95)]
    assert errors[0] > errors[1]


def test_jpeg_qualities_are_integers_over_the_whole_range():
    rng = np.random.default_rng(7)
    img = np.full((3, 8, 8), 0.5, np.float32)
    qualities = []
    for _ in range(500):
        record = {}
        d.random_jpeg(img, d.REALESRGAN.first, rng, record)
        qualities.append(record['quality'])
    assert min(qualities) == 30 and max(qualities) == 95 and all(isinstance(q, int) for q in qualities)


# ----------------------------------------------------------------------------------------------
# The pipeline
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize('scale, size', [(4, (96, 96)), (2, (40, 56)), (3, (48, 33)), (4, (24, 24))])
def test_output_is_the_hr_size_over_the_scale_in_uint8(scale, size):
    hr = np.ascontiguousarray(photo_crops(max(size), 1)[0][:size[0], :size[1]].transpose(2, 0, 1))
    for seed in range(3):
        record = {}
        lr = d.degrade(hr, scale, d.REALESRGAN, d.patch_rng(seed, 0, 0), record)
        assert lr.shape == (3, size[0] // scale, size[1] // scale) and lr.dtype == np.uint8
        json.dumps(record)  # plain data
        assert record['final']['order'] in ('jpeg, resize + sinc', 'resize + sinc, jpeg')
    with pytest.raises(ValueError, match='multiples of the scale'):
        d.degrade(hr[:, :size[0] - 1], scale, d.REALESRGAN, d.patch_rng(0, 0, 0))


def test_float_and_torch_inputs_give_what_uint8_gives_and_values_are_clipped():
    hr = hr_patch(48)
    lr = d.degrade(hr, 4, d.REALESRGAN, d.patch_rng(1, 2, 3))
    assert np.array_equal(d.degrade(torch.from_numpy(hr), 4, d.REALESRGAN, d.patch_rng(1, 2, 3)), lr)
    assert np.array_equal(d.degrade(hr.astype(np.float32) / 255, 4, d.REALESRGAN, d.patch_rng(1, 2, 3)), lr)
    assert np.array_equal(d.to_uint8(np.array([-0.3, 0.5 / 255, 1.5 / 255, 1.2])), [0, 0, 2, 255])  # no wrap


def test_same_seed_same_bytes_other_seed_epoch_index_or_crop_other_bytes():
    hr = hr_patch(96)
    first_record, again_record = {}, {}
    first = d.degrade(hr, 4, d.REALESRGAN, d.patch_rng(7, 3, 11, 1), first_record)
    again = d.degrade(hr.copy(), 4, d.REALESRGAN, d.patch_rng(7, 3, 11, 1), again_record)
    assert first.tobytes() == again.tobytes() and first_record == again_record
    for other in ((8, 3, 11, 1), (7, 4, 11, 1), (7, 3, 12, 1), (7, 3, 11, 0), (-7, 3, 11, 1)):
        assert d.degrade(hr, 4, d.REALESRGAN, d.patch_rng(*other)).tobytes() != first.tobytes(), other
    assert d.image_rng(0, 'a.png').random() == d.image_rng(0, 'a.png').random() != d.image_rng(0, 'b.png').random()


def test_light_preset_degrades_less_than_the_published_ranges():
    """Mean distance from the clean bicubic LR over 24 patches: 'light' below 'realesrgan'."""
    from utils import imresize
    distance, patches = {}, [np.ascontiguousarray(p.transpose(2, 0, 1)) for p in photo_crops(96, 6)]
    for name in ('light', 'realesrgan'):
        total = 0.
        for k in range(24):
            hr = patches[k % 6]
            clean = imresize(torch.from_numpy(hr), 1 / 4).numpy().astype(float)
            total += np.abs(d.degrade(hr, 4, d.preset(name), d.patch_rng(0, 0, k)) - clean).mean()
        distance[name] = total / 24
    assert distance['light'] < 0.8 * distance['realesrgan']


def test_published_defaults_every_range_settable_and_recorded():
    s = d.preset('realesrgan')
    assert (s.first.noise_range, s.second.noise_range, s.first.jpeg_range, s.second.blur_prob,
            s.final_sinc_prob) == ((1, 30), (1, 25), (30, 95), 0.8, 0.8)
    names = d.setting_names()
    assert 'first.blur_sigma' in names and 'second.resize_range' in names and 'final_sinc_prob' in names
    changed = d.with_overrides(s, ['second.jpeg_range=50,90', 'final_sinc_prob=0.25', 'first.kernel_sizes=7,13',
                                   'resize_modes=bicubic'])
    assert changed.second.jpeg_range == (50, 90) and isinstance(changed.second.jpeg_range[0], int)
    assert changed.final_sinc_prob == 0.25 and changed.first.kernel_sizes == (7, 13)
    assert changed.resize_modes == ('bicubic',)
    assert changed.first == dataclasses.replace(s.first, kernel_sizes=(7, 13)) and changed.second != s.second
    assert d.settings_from_dict(json.loads(json.dumps(d.settings_dict(changed)))) == changed
    for bad, match in (('nope=1', 'KEY=VALUE'), ('first.jpeg_range=0,90', 'jpeg_range'),
                       ('first.kernel_sizes=6,20', 'odd'), ('second.noise_range=5', '2 comma-separated'),
                       ('final_sinc_prob=x', 'not a number'), ('resize_modes=nearest', 'resize_modes'),
                       ('first.resize_range=1.1,1.5', 'must hold 1')):
        with pytest.raises(ValueError, match=match):
            d.with_overrides(s, [bad])
    with pytest.raises(ValueError, match='realesrgan, light'):
        d.preset('heavy')


def test_every_setting_is_in_the_docs_page():
    from conftest import REPO_ROOT
    page = (REPO_ROOT / 'docs' / 'real-photos.md').read_text(encoding='utf-8')
    assert [k for k in d.setting_names() if f"`{k}`" not in page] == []


def test_clean_prob_gives_the_papers_bicubic_lr_that_often_and_leaves_the_streams_alone_at_zero():
    from utils import imresize
    hr = hr_patch(96)
    # MATLAB bicubic of the image in [0, 1], rounded once to 8 bits
    clean = np.clip(np.rint(imresize(torch.from_numpy(hr).double() / 255, 1 / 4).numpy() * 255), 0, 255)
    always = d.with_overrides(d.LIGHT, ['clean_prob=1'])
    record = {}
    lr = d.degrade(hr, 4, always, d.patch_rng(0, 0, 5), record)
    assert record == {'clean': True} and lr.dtype == np.uint8 and np.array_equal(lr, clean)
    half = d.with_overrides(d.LIGHT, ['clean_prob=0.5'])
    drawn = [d.degrade(hr, 4, half, d.patch_rng(0, 0, k)) for k in range(200)]
    n_clean = sum(np.array_equal(x, clean) for x in drawn)
    assert 70 <= n_clean <= 130  # binomial(200, 1/2): 4.2 standard deviations either side
    # 0 draws nothing: the published model's streams (and the degraded test sets' bytes) stay as they were. A tiny
    # clean_prob draws one number (never below it) and so shifts every later draw: if 0 drew too, they would agree.
    tiny = d.with_overrides(d.LIGHT, ['clean_prob=1e-300'])
    assert d.degrade(hr, 4, tiny, d.patch_rng(1, 2, 3)).tobytes() != \
        d.degrade(hr, 4, d.LIGHT, d.patch_rng(1, 2, 3)).tobytes()
    with pytest.raises(ValueError, match='clean_prob is a probability'):
        d.with_overrides(d.LIGHT, ['clean_prob=1.5'])
