"""Bad input never crashes a run: corrupt files are skipped and reported, every image mode loads by a documented
rule, files that go bad after listing are skipped during training, and too many failures stop the run."""
import io
import json
import os
import socket
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import datasets
import utils
from conftest import fifo_watchdog, photo_crops, run_here


def png16(path, arr):
    """Write a 16-bit PNG (gray, gray+alpha, RGB or RGBA) by hand: Pillow cannot write 16-bit colour."""
    h, w, c = arr.shape
    raw = b''.join(b'\x00' + arr[y].astype('>u2').tobytes() for y in range(h))

    def chunk(kind, body):
        return struct.pack('>I', len(body)) + kind + body + struct.pack('>I', zlib.crc32(kind + body) & 0xffffffff)
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    header = struct.pack('>IIBBBBB', w, h, 16, color_type, 0, 0, 0)
    path.write_bytes(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IDAT', zlib.compress(raw))
                     + chunk(b'IEND', b''))


def good_png(path, size=48, seed=0):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)


def test_create_data_lists_skips_and_reports_every_kind_of_bad_file(tmp_path):
    folder = tmp_path / 'photos'
    folder.mkdir()
    good_png(folder / 'good.png')
    good_png(folder / 'also_good.PNG', seed=1)
    (folder / 'zero.png').write_bytes(b'')
    buf = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 128).save(buf, 'JPEG')
    (folder / 'truncated.jpg').write_bytes(buf.getvalue()[:len(buf.getvalue()) // 2])
    png = (folder / 'good.png').read_bytes()
    (folder / 'truncated.png').write_bytes(png[:len(png) - 40])
    (folder / 'corrupt.png').write_bytes(png[:60] + b'\x00' * 200 + png[260:])
    (folder / 'text.jpeg').write_text('definitely not a JPEG')
    good_png(folder / 'small.png', size=20)
    good_png(folder / 'bomb.png', size=120)  # refused below with a tiny --max-image-pixels
    out = tmp_path / 'lists'
    result = run_here('create_data_lists.py', '--train-folders', folder, '--min-size', 32, '--output-folder',
                      out, '--max-image-pixels', 5000, '--workers', 2)
    assert result.returncode == 0, result.stderr
    kept = sorted(p.rsplit('/', 1)[1] for p in json.loads((out / 'train_images.json').read_text()))
    assert kept == ['also_good.PNG', 'good.png']
    assert 'found 9, kept 2, skipped 7' in result.stdout
    for reason in ('empty file', 'not an image', 'unreadable', 'smaller than --min-size', 'decompression bomb'):
        assert reason in result.stdout
    log = (out / 'create_data_lists.log').read_text()
    for name in ('zero.png', 'truncated.jpg', 'truncated.png', 'corrupt.png', 'text.jpeg', 'small.png', 'bomb.png'):
        assert name in log


def test_decompression_bomb_refused_by_load_image(tmp_path, monkeypatch):
    good_png(tmp_path / 'big.png', size=100)
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 1000)
    with pytest.raises(utils.UserError, match='decompression bomb'):
        utils.load_image(str(tmp_path / 'big.png'))


@pytest.fixture
def base():
    return photo_crops(32, 1)[0]  # (32, 32, 3) uint8


def test_every_image_mode_loads_as_8bit_rgb_by_the_documented_rules(tmp_path, base):
    rgb = Image.fromarray(base)
    alpha = np.tile(np.linspace(0, 255, 32).astype(np.uint8), (32, 1))
    cases = {
        'L.png': (rgb.convert('L'), np.repeat(np.asarray(rgb.convert('L'))[..., None], 3, 2)),
        'P.png': (rgb.convert('P'), np.asarray(rgb.convert('P').convert('RGB'))),
        'CMYK.jpg': (rgb.convert('CMYK'), None),
        '1.png': (rgb.convert('1'), np.repeat(np.asarray(rgb.convert('1'), dtype=np.uint8)[..., None] * 255, 3, 2)),
    }
    for name, (img, expected) in cases.items():
        img.save(tmp_path / name)
        out = utils.load_image(str(tmp_path / name))
        assert out.mode == 'RGB' and out.size == (32, 32), name
        if expected is not None:
            assert np.array_equal(np.asarray(out), expected), name
    # Alpha: composited onto white; kept as RGBA on request.
    rgba = np.dstack([base, alpha])
    Image.fromarray(rgba, 'RGBA').save(tmp_path / 'RGBA.png')
    out = np.asarray(utils.load_image(str(tmp_path / 'RGBA.png'))).astype(float)
    a = alpha[..., None] / 255.
    assert np.abs(out - (base * a + 255 * (1 - a))).max() <= 1
    assert utils.load_image(str(tmp_path / 'RGBA.png'), keep_alpha=True).mode == 'RGBA'
    la = Image.fromarray(np.dstack([base[..., 0], alpha]), 'LA')
    la.save(tmp_path / 'LA.png')
    out = np.asarray(utils.load_image(str(tmp_path / 'LA.png'))).astype(float)
    assert np.abs(out[..., 0] - (base[..., 0] * a[..., 0] + 255 * (1 - a[..., 0]))).max() <= 1
    p = rgb.convert('P')
    p.info['transparency'] = 0
    p.save(tmp_path / 'P_transparent.png', transparency=0)
    assert utils.load_image(str(tmp_path / 'P_transparent.png'), keep_alpha=True).mode == 'RGBA'


def test_16bit_images_keep_their_high_byte(tmp_path):
    values = np.array([[0, 255, 256, 32896, 65280, 65535]], dtype=np.uint16)
    high = (values >> 8).astype(np.uint8)  # 0, 0, 1, 128, 255, 255
    png16(tmp_path / 'gray16.png', values[..., None])
    assert Image.open(tmp_path / 'gray16.png').mode.startswith('I')
    out = np.asarray(utils.load_image(str(tmp_path / 'gray16.png')))
    assert np.array_equal(out[..., 0], high) and np.array_equal(out[..., 2], high)
    png16(tmp_path / 'rgb16.png', np.dstack([values, values[:, ::-1], values]))
    out = np.asarray(utils.load_image(str(tmp_path / 'rgb16.png')))
    assert np.array_equal(out[..., 0], high) and np.array_equal(out[..., 1], high[:, ::-1])


# What each EXIF orientation tag asks a viewer to do to the stored pixels (TIFF/EXIF 2.3, tag 0x0112), written
# with numpy alone: 2 mirror, 3 half turn, 4 flip, 5 transpose, 6 quarter turn clockwise, 7 transverse, 8 quarter
# turn anticlockwise.
EXIF_ORIENTATIONS = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: np.rot90(a, 2),
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


@pytest.mark.parametrize('orientation', sorted(EXIF_ORIENTATIONS))
def test_exif_orientation_is_applied(tmp_path, base, orientation):
    stored = np.ascontiguousarray(base[:, :20])  # 20 wide, 32 high: a wrong quarter turn changes the size
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"orientation{orientation}.png"  # lossless, so the pixels can be compared exactly
    Image.fromarray(stored).save(path, exif=exif.tobytes())
    out = np.asarray(utils.load_image(str(path)))
    assert np.array_equal(out, EXIF_ORIENTATIONS[orientation](stored))


@pytest.mark.parametrize('cache', ['1', '0'], ids=['cached', 'streaming'])
def test_files_going_bad_after_listing_are_skipped_during_training(tmp_path, cache):
    folder = tmp_path / 'train'
    folder.mkdir()
    for i, img in enumerate(photo_crops(64, 6)):
        Image.fromarray(img).save(folder / f"{i}.png")
    lists = tmp_path / 'lists'
    datasets.create_data_lists([str(folder)], [], 32, str(lists), workers=1, log=lambda *_: None)
    (folder / '0.png').unlink()  # deleted after listing
    data = (folder / '1.png').read_bytes()
    (folder / '1.png').write_bytes(data[:len(data) // 3])  # truncated after listing
    common = ['--data-folder', lists, '--results-dir', tmp_path / 'r', '--runs-dir', tmp_path / 'runs',
              '--n-blocks', 2, '--n-channels', 8, '--crop-size', 32, '--batch-size', 2, '--workers', 0,
              '--epochs', 2, '--cache-gb', cache]
    result = run_here('train_srresnet.py', *common, '--max-bad-fraction', 0.5)
    assert result.returncode == 0, result.stderr
    assert 'warning: skipping training image' in result.stderr and '0.png: no such file' in result.stderr
    assert 'epoch 2/2' in result.stdout
    result = run_here('train_srresnet.py', *common, '--max-bad-fraction', 0.1, '--restart')
    assert result.returncode == 2
    assert 'training image loads failed' in result.stderr or 'no training image' in result.stderr


def test_dataset_with_only_bad_files_stops_with_one_error(tmp_path):
    lists = tmp_path / 'lists'
    lists.mkdir()
    (lists / 'train_images.json').write_text(json.dumps([str(tmp_path / 'gone1.png'), str(tmp_path / 'gone2.png')]))
    result = run_here('train_srresnet.py', '--data-folder', lists, '--results-dir', tmp_path / 'r', '--workers', 0,
                      '--epochs', 1, '--n-blocks', 2, '--n-channels', 8)
    assert result.returncode == 2 and 'error: no training image could be loaded' in result.stderr
    assert not (tmp_path / 'r' / 'checkpoint_srresnet.pth').exists()


def test_load_image_errors_name_the_path_and_reason(tmp_path):
    with pytest.raises(utils.UserError, match='no such file'):
        utils.load_image(str(tmp_path / 'absent.png'))
    with pytest.raises(utils.UserError, match='is a directory'):
        utils.load_image(str(tmp_path))
    (tmp_path / 'e.png').write_bytes(b'')
    with pytest.raises(utils.UserError, match='empty file'):
        utils.load_image(str(tmp_path / 'e.png'))
    torch.save({'x': 1}, tmp_path / 'model.png')
    with pytest.raises(utils.UserError, match='not an image'):
        utils.load_image(str(tmp_path / 'model.png'))


@pytest.mark.skipif(not hasattr(os, 'mkfifo'), reason='this OS has no FIFOs (os.mkfifo)')
def test_load_image_refuses_fifo_socket_and_device_without_blocking(tmp_path):
    """A FIFO named like an image blocked every reader forever; a socket or device is no image either."""
    fifo = tmp_path / 'pipe.png'
    os.mkfifo(fifo)
    with fifo_watchdog(fifo) as watchdog:
        with pytest.raises(utils.UserError, match=r'pipe\.png: not a regular file \(a FIFO\)'):
            utils.load_image(str(fifo))
    assert not watchdog.fired, 'load_image blocked on the FIFO'
    sock_path = tmp_path / 's.png'
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(sock_path))
        with pytest.raises(utils.UserError, match=r'not a regular file \(a socket\)'):
            utils.load_image(str(sock_path))
    finally:
        sock.close()
    if os.path.exists('/dev/zero'):
        with pytest.raises(utils.UserError, match=r'not a regular file \(a device file\)'):
            utils.load_image('/dev/zero')


@pytest.mark.skipif(not hasattr(os, 'mkfifo'), reason='this OS has no FIFOs (os.mkfifo)')
def test_create_data_lists_reports_fifos_and_broken_links_instead_of_dropping_them(tmp_path):
    folder = tmp_path / 'photos'
    folder.mkdir()
    good_png(folder / 'good.png')
    os.mkfifo(folder / 'pipe.png')
    os.symlink(tmp_path / 'gone.png', folder / 'dangling.jpg')
    (folder / 'sub.png').mkdir()  # a folder named like an image is not a candidate
    out = tmp_path / 'lists'
    with fifo_watchdog(folder / 'pipe.png') as watchdog:
        result = run_here('create_data_lists.py', '--train-folders', folder, '--min-size', 32, '--output-folder',
                          out, '--workers', 1)
    assert not watchdog.fired, 'create_data_lists blocked on the FIFO'
    assert result.returncode == 0, result.stderr
    assert 'found 3, kept 1, skipped 2' in result.stdout
    assert 'not a regular file' in result.stdout and 'no such file' in result.stdout
    log = (out / 'create_data_lists.log').read_text()
    assert 'pipe.png' in log and 'FIFO' in log and 'dangling.jpg' in log
