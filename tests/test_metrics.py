"""Luma conversion, PSNR and SSIM against hand-computed values and scikit-image."""
import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from utils import psnr, rgb_to_y_uint8, ssim, tutorial_metrics


def skimage_ssim(a, b):
    """The papers' SSIM as scikit-image computes it (Gaussian 11x11 window, sigma 1.5, population covariance)."""
    return structural_similarity(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64),
                                 gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)


def random_pair(seed, shape=(40, 37)):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, size=shape).astype(np.float64)
    b = np.clip(a + rng.normal(0, 12, size=shape), 0, 255).round()
    return a, b


# ---- Y (BT.601 luma, rounded as MATLAB's rgb2ycbcr on uint8) ----

@pytest.mark.parametrize('rgb, y', [
    ((0, 0, 0), 16),  # 16
    ((255, 255, 255), 235),  # 16 + 65.481 + 128.553 + 24.966 = 235
    ((255, 0, 0), 81),  # 16 + 65.481 = 81.481
    ((0, 255, 0), 145),  # 16 + 128.553 = 144.553
    ((0, 0, 255), 41),  # 16 + 24.966 = 40.966
    ((128, 128, 128), 126),  # 16 + 219 * 128 / 255 = 125.929...
    ((10, 200, 30), 122),  # 16 + (654.81 + 25710.6 + 748.98) / 255 = 122.33
])
def test_y_of_known_colours(rgb, y):
    img = torch.tensor(rgb, dtype=torch.uint8).view(3, 1, 1).expand(3, 2, 3)
    out = rgb_to_y_uint8(img)
    assert out.shape == (2, 3) and out.dtype == torch.float64
    assert torch.all(out == y)


def test_y_is_batched_and_accepts_float_input():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(2, 3, 5, 4))
    r, g, b = img[:, 0], img[:, 1], img[:, 2]
    expected = np.floor(16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255 + 0.5)
    for t in (torch.from_numpy(img.astype(np.uint8)), torch.from_numpy(img.astype(np.float32))):
        np.testing.assert_array_equal(rgb_to_y_uint8(t).numpy(), expected)


# ---- PSNR ----

@pytest.mark.parametrize('diff', [1, 5, 16])
def test_psnr_of_a_constant_difference(diff):
    a = torch.full((20, 30), 100.)
    b = a + diff  # MSE = diff^2
    assert psnr(a, b) == pytest.approx(10 * math.log10(255 ** 2 / diff ** 2), abs=1e-10)
    assert psnr(a, b) == pytest.approx(20 * math.log10(255 / diff), abs=1e-10)


def test_psnr_matches_skimage_and_is_symmetric():
    a, b = random_pair(1)
    expected = peak_signal_noise_ratio(a, b, data_range=255)
    assert psnr(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(expected, abs=1e-10)
    assert psnr(torch.from_numpy(b), torch.from_numpy(a)) == pytest.approx(expected, abs=1e-10)


def test_psnr_identical_is_inf():
    a = torch.rand(12, 12) * 255
    assert psnr(a, a.clone()) == math.inf


def test_psnr_border_crop():
    a = torch.full((20, 24), 50.)
    b = a.clone()
    b[:3, :] += 40  # differences in a 3-pixel frame only
    b[:, -3:] -= 40
    assert psnr(a, b, border=3) == math.inf
    b[3:-3, 3:-3] += 4  # and 4 inside
    assert psnr(a, b, border=3) == pytest.approx(20 * math.log10(255 / 4), abs=1e-10)
    # border 2 keeps one ring of the frame: compare with scikit-image on the same crop
    a2, b2 = a[2:-2, 2:-2].numpy(), b[2:-2, 2:-2].numpy()
    assert psnr(a, b, border=2) == pytest.approx(peak_signal_noise_ratio(a2, b2, data_range=255), abs=1e-10)


def test_psnr_batched():
    pairs = [random_pair(s, (16, 18)) for s in (2, 3, 4)]
    a = torch.from_numpy(np.stack([p[0] for p in pairs]))
    b = torch.from_numpy(np.stack([p[1] for p in pairs]))
    out = psnr(a, b, border=1)
    assert out.shape == (3,)
    for i, (x, y) in enumerate(pairs):
        assert out[i].item() == pytest.approx(peak_signal_noise_ratio(x[1:-1, 1:-1], y[1:-1, 1:-1], data_range=255))


# ---- SSIM ----

@pytest.mark.parametrize('seed, shape', [(5, (40, 37)), (6, (11, 11)), (7, (64, 23))])
def test_ssim_matches_skimage_gaussian(seed, shape):
    a, b = random_pair(seed, shape)
    assert ssim(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(skimage_ssim(a, b), abs=1e-10)


def test_ssim_of_a_smooth_image_and_a_shift():
    yy, xx = np.mgrid[0:48, 0:48]
    a = 128 + 60 * np.sin(xx / 5.) * np.cos(yy / 7.)
    b = np.roll(a, 1, axis=1)
    value = ssim(torch.from_numpy(a), torch.from_numpy(b))
    assert value == pytest.approx(skimage_ssim(a, b), abs=1e-10)
    assert 0.5 < value < 1


def test_ssim_identical_is_one_and_constant_offset_known():
    a = torch.rand(30, 30, dtype=torch.float64) * 255
    assert ssim(a, a.clone()) == pytest.approx(1.0, abs=1e-12)
    # Two constant images c and d: the variance terms vanish, SSIM = (2cd + C1) / (c^2 + d^2 + C1).
    c, d, c1 = 100., 120., (0.01 * 255) ** 2
    value = ssim(torch.full((15, 15), c, dtype=torch.float64), torch.full((15, 15), d, dtype=torch.float64))
    assert value == pytest.approx((2 * c * d + c1) / (c * c + d * d + c1), abs=1e-12)


def test_ssim_border_crop_and_batch():
    pairs = [random_pair(s, (30, 33)) for s in (8, 9)]
    a = torch.from_numpy(np.stack([p[0] for p in pairs]))
    b = torch.from_numpy(np.stack([p[1] for p in pairs]))
    out = ssim(a, b, border=4)
    assert out.shape == (2,)
    for i, (x, y) in enumerate(pairs):
        assert out[i].item() == pytest.approx(skimage_ssim(x[4:-4, 4:-4], y[4:-4, 4:-4]), abs=1e-10)


# ---- shape validation ----

def test_shape_errors():
    a = torch.zeros(20, 20)
    with pytest.raises(ValueError, match='shape'):
        psnr(a, torch.zeros(20, 21))
    with pytest.raises(ValueError, match='shape'):
        ssim(a, torch.zeros(21, 20))
    with pytest.raises(ValueError):
        psnr(torch.zeros(1, 1, 20, 20), torch.zeros(1, 1, 20, 20))  # 4-D is not luma
    with pytest.raises(ValueError):
        psnr(torch.zeros(20), torch.zeros(20))
    with pytest.raises(ValueError, match='11x11'):
        ssim(torch.zeros(20, 20), torch.zeros(20, 20), border=5)  # 10x10 left


# ---- the tutorial's metrics ----

def tutorial_y(img11):
    """The tutorial's convert_image(img, '[-1, 1]', 'y-channel'), written out: unrounded Y, 4-px border removed."""
    rgb = (np.asarray(img11, dtype=np.float64) + 1) / 2 * 255  # (3, H, W) in [0, 255]
    y = 16 + (65.481 * rgb[0] + 128.553 * rgb[1] + 24.966 * rgb[2]) / 255
    return y[4:-4, 4:-4]


def test_tutorial_metrics_follow_the_tutorial():
    rng = np.random.default_rng(10)
    hr = rng.uniform(-1, 1, size=(3, 30, 26)).astype(np.float32)
    sr = np.clip(hr + rng.normal(0, 0.1, size=hr.shape), -1.05, 1.05).astype(np.float32)
    got_psnr, got_ssim = tutorial_metrics(torch.from_numpy(sr), torch.from_numpy(hr))
    hr_y, sr_y = tutorial_y(hr), tutorial_y(sr)
    assert hr_y.shape == (22, 18)
    assert got_psnr == pytest.approx(peak_signal_noise_ratio(hr_y, sr_y, data_range=255.), abs=1e-4)
    # scikit-image's default SSIM: 7x7 uniform window, sample covariance
    assert got_ssim == pytest.approx(structural_similarity(hr_y, sr_y, data_range=255.), abs=1e-5)
    # and it is not the papers' SSIM
    assert abs(got_ssim - skimage_ssim(hr_y, sr_y)) > 1e-3


@pytest.mark.filterwarnings('ignore:divide by zero:RuntimeWarning')
def test_tutorial_metrics_ignore_the_4px_border():
    hr = torch.zeros(3, 24, 24)
    sr = hr.clone()
    sr[:, :4, :] = 0.5
    sr[:, :, -4:] = -0.5
    p, s = tutorial_metrics(sr, hr)
    assert p == math.inf and s == pytest.approx(1.0)
