"""utils.imresize against a slow, explicit re-implementation of MATLAB's imresize(..., 'bicubic') written here.

The reference follows MATLAB's imresize.m (contributions / resizeAlongDim) pixel by pixel with plain Python
loops: Keys' cubic kernel (a = -0.5), kernel widened by 1/scale when shrinking (antialiasing), symmetric
border, weights normalised per output pixel, the dimension with the smaller scale resized first, output size
ceil(scale * input), and uint8 results clamped and rounded after each axis (MATLAB keeps uint8 images in uint8
between its two one-axis passes; the port verified against MATLAB, fatheral/matlab_imresize, does the same).
"""
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from utils import imresize, imresize_up


def cubic(x):
    ax = abs(x)
    if ax <= 1:
        return 1.5 * ax ** 3 - 2.5 * ax ** 2 + 1.
    if ax <= 2:
        return -0.5 * ax ** 3 + 2.5 * ax ** 2 - 4. * ax + 2.
    return 0.


def mirror(j, n):
    """0-based index j into the signal extended as [0 .. n-1, n-1 .. 0] repeated (MATLAB's 'symmetric')."""
    j %= 2 * n
    return j if j < n else 2 * n - 1 - j


def resize_1d(signal, out_len, scale):
    """One axis, one output pixel at a time."""
    n = len(signal)
    shrink = scale < 1
    width = 4. / scale if shrink else 4.
    out = []
    for x in range(1, out_len + 1):  # 1-based output pixel
        u = x / scale + 0.5 * (1. - 1. / scale)  # its centre in 1-based input coordinates
        left = math.floor(u - width / 2.)
        total = weight_sum = 0.
        for k in range(int(math.ceil(width)) + 2):
            j = left + k  # 1-based input pixel
            w = scale * cubic(scale * (u - j)) if shrink else cubic(u - j)
            total += w * signal[mirror(j - 1, n)]
            weight_sum += w
        out.append(total / weight_sum)
    return out


def reference_resize(img, scale_h, scale_w, out_h, out_w, quantize=None):
    """(H, W) float64 array -> (out_h, out_w), rows first unless the column scale is smaller; ``quantize`` is
    applied after each axis (uint8 images)."""
    img = np.asarray(img, dtype=np.float64)
    quantize = quantize or (lambda a: a)

    def along_rows(a):  # resize the H axis: every column separately
        return quantize(np.array([resize_1d(a[:, c], out_h, scale_h) for c in range(a.shape[1])]).T)

    def along_cols(a):  # resize the W axis: every row separately
        return quantize(np.array([resize_1d(a[r, :], out_w, scale_w) for r in range(a.shape[0])]))

    if scale_h <= scale_w:
        return along_cols(along_rows(img))
    return along_rows(along_cols(img))


def to_uint8(a):
    return np.floor(np.clip(a, 0, 255) + 0.5).astype(np.uint8)


def reference_scale(img, scale, uint8=False):
    h, w = img.shape
    out_h, out_w = math.ceil(Fraction(scale) * h), math.ceil(Fraction(scale) * w)
    return reference_resize(img, float(scale), float(scale), out_h, out_w, quantize=to_uint8 if uint8 else None)


SCALES = [2, 3, 4, Fraction(1, 2), Fraction(1, 3), Fraction(1, 4), Fraction('0.37'), Fraction('1.7')]


@pytest.mark.parametrize('scale', SCALES, ids=str)
def test_float64_matches_reference(scale):
    rng = np.random.default_rng(1)
    img = rng.uniform(0, 255, size=(13, 17))  # odd sizes
    out = imresize(torch.from_numpy(img), float(scale)).numpy()
    expected = reference_scale(img, scale)
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize('scale', [2, 3, 4, Fraction(1, 3), Fraction('0.37'), Fraction('1.7')], ids=str)
def test_uint8_matches_reference_rounded_after_each_axis(scale):
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, size=(3, 11, 14), dtype=np.uint8)
    out = imresize(torch.from_numpy(img), float(scale))
    assert out.dtype == torch.uint8
    expected = np.stack([reference_scale(img[c], scale, uint8=True) for c in range(3)])
    assert out.shape == expected.shape
    # An overshooting cubic kernel on random noise: values beyond [0, 255] must be clamped, not wrapped.
    unclamped = np.stack([reference_scale(img[c], scale) for c in range(3)])
    if float(scale) > 1:
        assert unclamped.max() > 255 or unclamped.min() < 0
    np.testing.assert_array_equal(out.numpy(), expected)


def test_float32_batched_nchw():
    rng = np.random.default_rng(3)
    img = rng.uniform(0, 1, size=(2, 3, 9, 10)).astype(np.float32)
    out = imresize(torch.from_numpy(img), 1.7)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 16, 17)
    for n in range(2):
        for c in range(3):
            expected = reference_scale(img[n, c].astype(np.float64), Fraction('1.7'))
            np.testing.assert_allclose(out[n, c].numpy(), expected, rtol=0, atol=1e-5)


def test_explicit_size_uses_per_axis_scales_and_order():
    rng = np.random.default_rng(4)
    img = rng.uniform(0, 255, size=(13, 9))
    out = imresize(torch.from_numpy(img), size=(7, 20)).numpy()  # shrink rows, enlarge columns
    np.testing.assert_allclose(out, reference_resize(img, 7 / 13, 20 / 9, 7, 20), rtol=0, atol=1e-9)
    out = imresize(torch.from_numpy(img), size=(30, 4)).numpy()  # columns have the smaller scale: done first
    np.testing.assert_allclose(out, reference_resize(img, 30 / 13, 4 / 9, 30, 4), rtol=0, atol=1e-9)


@pytest.mark.parametrize('size, scale', [
    ((9, 10), Fraction(1, 3)), ((300, 301), Fraction(1, 3)), ((100, 7), Fraction('0.37')),
    ((11, 13), Fraction('1.7')), ((10, 20), Fraction('0.3')), ((5, 6), Fraction(4)), ((7, 9), Fraction(1, 4)),
], ids=str)
def test_output_size_is_ceil_of_scale_times_input(size, scale):
    out = imresize(torch.zeros(size, dtype=torch.float64), float(scale))
    assert tuple(out.shape) == (math.ceil(scale * size[0]), math.ceil(scale * size[1]))


@pytest.mark.parametrize('dtype', [torch.uint8, torch.float32, torch.float64])
def test_scale_one_is_an_identity_copy(dtype):
    x = (torch.rand(2, 3, 7, 5) * 255).to(dtype)
    out = imresize(x, 1)
    assert out.dtype == dtype and torch.equal(out, x)
    out[...] = 0
    assert x.abs().sum() > 0  # a copy, not a view


@pytest.mark.parametrize('scale', [0.37, 0.5, 2, 3.3])
def test_constant_image_stays_constant(scale):
    out = imresize(torch.full((1, 3, 12, 15), 97.25, dtype=torch.float64), scale)
    torch.testing.assert_close(out, torch.full_like(out, 97.25), rtol=0, atol=1e-10)


def test_linear_ramp_is_reproduced_in_the_interior():
    # Keys' cubic (a = -0.5) reproduces linear functions exactly: away from the borders, upscaling the ramp
    # f(j) = j (1-based) by 2 gives the output pixel centres u = x / 2 + 1/4 themselves.
    ramp = torch.arange(1, 21, dtype=torch.float64).repeat(5, 1)  # (5, 20), value = column index (1-based)
    out = imresize(ramp, 2)  # (10, 40)
    x = torch.arange(1, 41, dtype=torch.float64)
    u = x / 2 + 0.25
    torch.testing.assert_close(out[2, 4:-4], u[4:-4], rtol=0, atol=1e-12)


def test_bad_arguments():
    x = torch.zeros(4, 4)
    with pytest.raises(ValueError):
        imresize(x)
    with pytest.raises(ValueError):
        imresize(x, 2, size=(8, 8))
    with pytest.raises(ValueError):
        imresize(x, 0)
    with pytest.raises(ValueError):
        imresize(x, -2)


# ---- imresize_up: integer upscaling as convolutions (inside the ONNX graphs of export.py) ------------------------

@pytest.mark.parametrize('scale', [2, 3, 4, 8])
@pytest.mark.parametrize('size', [(2, 2), (2, 5), (13, 17)])
def test_imresize_up_matches_reference(scale, size):
    rng = np.random.default_rng(scale)
    img = rng.uniform(0, 1, size=(2, 3) + size)  # (N, C, H, W), 2-px sides reach the mirror twice
    out = imresize_up(torch.from_numpy(img), scale).numpy()
    for n in range(2):
        for c in range(3):
            np.testing.assert_allclose(out[n, c], reference_scale(img[n, c], scale), rtol=0, atol=1e-12)
    torch.testing.assert_close(imresize_up(torch.from_numpy(img).float(), scale),
                               imresize(torch.from_numpy(img).float(), scale), rtol=0, atol=1e-6)  # float32 too
    assert torch.equal(imresize_up(torch.from_numpy(img), 1), torch.from_numpy(img))
