"""convert_image and colour math against hand-computed values, the tutorial's transforms, small helpers."""
import os
import platform
import random
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from PIL import Image

import utils


def pil(rgb, size=(10, 10)):
    return Image.new('RGB', size, rgb)


def test_convert_image_from_pil_and_ranges_by_hand():
    img = pil((255, 0, 51))
    unit = utils.convert_image(img, 'pil', '[0, 1]')
    assert unit.shape == (3, 10, 10) and unit.dtype == torch.float32
    assert torch.allclose(unit[:, 0, 0], torch.tensor([1., 0., 0.2]))
    assert torch.allclose(utils.convert_image(img, 'pil', '[-1, 1]')[:, 3, 3], torch.tensor([1., -1., -0.6]))
    assert torch.allclose(utils.convert_image(img, 'pil', '[0, 255]')[:, 0, 0], torch.tensor([255., 0., 51.]))
    back = utils.convert_image(utils.convert_image(img, 'pil', '[-1, 1]'), '[-1, 1]', 'pil')
    assert back.getpixel((4, 4)) == (255, 0, 51)


def test_imagenet_norm_by_hand_for_3d_and_4d():
    x = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1).expand(3, 2, 2).clone()
    assert torch.allclose(utils.convert_image(x, '[0, 1]', 'imagenet-norm'), torch.zeros(3, 2, 2), atol=1e-7)
    ones = torch.ones(2, 3, 4, 4)
    normed = utils.convert_image(ones, '[0, 1]', 'imagenet-norm')
    expected = torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225])
    assert normed.shape == (2, 3, 4, 4) and torch.allclose(normed[1, :, 2, 2], expected)
    assert torch.allclose(utils.convert_image(normed, 'imagenet-norm', '[0, 1]'), ones, atol=1e-6)


def test_y_channel_by_hand_with_tutorial_border_crop():
    # Y = 16 + 65.481 R + 128.553 G + 24.966 B for RGB in [0, 1]
    colours = {(1., 1., 1.): 235., (0., 0., 0.): 16., (1., 0., 0.): 81.481, (0., 1., 0.): 144.553,
               (0., 0., 1.): 40.966, (0.5, 0.5, 0.5): 125.5}
    for rgb, y in colours.items():
        img = torch.tensor(rgb).view(1, 3, 1, 1).expand(2, 3, 12, 14)
        out = utils.convert_image(img, '[0, 1]', 'y-channel')
        assert out.shape == (2, 4, 6)  # 4 pixels removed on every side
        assert torch.allclose(out, torch.full_like(out, y), atol=1e-4)
    three_d = utils.convert_image(torch.ones(3, 10, 10), '[-1, 1]', 'y-channel')
    assert three_d.shape == (2, 2) and torch.allclose(three_d, torch.full((2, 2), 235.))


def test_convert_image_keeps_device_and_dtype_and_rejects_unknown_formats():
    x = torch.rand(1, 3, 9, 9, dtype=torch.float64, device='meta')
    assert utils.convert_image(x, '[0, 1]', 'imagenet-norm').device.type == 'meta'
    assert utils.convert_image(torch.rand(1, 3, 9, 9, dtype=torch.float64), '[0, 1]', 'y-channel').dtype == \
        torch.float64
    with pytest.raises(ValueError, match='cannot convert'):
        utils.convert_image(torch.rand(3, 4, 4), '[0, 2]', 'pil')
    with pytest.raises(ValueError, match='cannot convert'):
        utils.convert_image(torch.rand(3, 4, 4), '[0, 1]', 'hsv')


def test_ycbcr_round_trip_and_gray_has_neutral_chroma():
    x = torch.rand(2, 3, 5, 6, dtype=torch.float64)
    assert torch.allclose(utils.ycbcr_to_rgb(utils.rgb_to_ycbcr(x)), x, atol=1e-12)
    gray = torch.full((3, 2, 2), 0.3, dtype=torch.float64)
    ycc = utils.rgb_to_ycbcr(gray)
    assert torch.allclose(ycc[1:], torch.full((2, 2, 2), 128. / 255., dtype=torch.float64), atol=1e-9)


@pytest.mark.parametrize('shape', [(16, 3, 17, 17), (16, 3, 51, 51), (2, 3, 120, 77), (3, 9, 5)])
def test_rgb_to_y_is_the_y_of_rgb_to_ycbcr_bit_for_bit(shape):
    x = torch.randint(0, 256, shape).float() / 255.
    y = utils.rgb_to_y(x)
    assert y.shape == (*shape[:-3], 1, *shape[-2:])
    assert torch.equal(y, utils.rgb_to_ycbcr(x)[..., :1, :, :])
    r, g, b = (x[..., i, :, :].double() for i in range(3))  # MATLAB's rgb2ycbcr formula for doubles
    torch.testing.assert_close(y[..., 0, :, :].double(), (16. + 65.481 * r + 128.553 * g + 24.966 * b) / 255.,
                               rtol=0, atol=1e-6)


def test_rgb_to_y_uint8_rounds_like_matlab():
    img = torch.tensor([[[255]], [[255]], [[255]]], dtype=torch.uint8)
    assert utils.rgb_to_y_uint8(img).item() == 235.
    # R=100, G=50, B=200: 16 + (6548.1 + 6427.65 + 4993.2) / 255 = 86.466... -> 86
    img = torch.tensor([100, 50, 200], dtype=torch.uint8).view(3, 1, 1)
    assert utils.rgb_to_y_uint8(img).item() == 86.


# ---- the tutorial's ImageTransforms ----------------------------------------------------------------------

def gradient_image(w, h):
    x = np.arange(w * h * 3, dtype=np.uint32).reshape(h, w, 3) % 251
    return Image.fromarray(x.astype(np.uint8))


def test_train_crop_reaches_both_borders_and_accepts_crop_equal_to_image():
    t = utils.ImageTransforms('train', 8, 4, '[0, 1]', '[0, 1]')
    img = gradient_image(11, 9)
    rng = random.Random(0)
    seen_left = set()
    full = utils.convert_image(img, 'pil', '[0, 1]')
    for _ in range(300):
        state = rng.getstate()
        _, hr = t(img, rng)
        probe = random.Random()
        probe.setstate(state)
        left, top = probe.randint(0, 3), probe.randint(0, 1)
        assert torch.equal(hr, full[:, top:top + 8, left:left + 8])
        seen_left.add(left)
    assert seen_left == {0, 1, 2, 3}  # offset 0 (never drawn by the tutorial) and the last offset both occur
    lr, hr = t(gradient_image(8, 8), rng)  # the tutorial crashes here (randint(1, 0))
    assert hr.shape == (3, 8, 8) and lr.shape == (3, 2, 2)


def test_train_crop_larger_than_image_is_a_clear_error():
    with pytest.raises(ValueError, match='smaller than the crop size'):
        utils.ImageTransforms('train', 96, 4, '[0, 1]', '[0, 1]')(gradient_image(95, 200))


def test_test_split_centre_crops_to_multiple_of_scale_and_lr_is_pil_bicubic():
    img = gradient_image(27, 22)
    lr, hr = utils.ImageTransforms('test', 0, 4, '[0, 1]', '[-1, 1]')(img)
    assert hr.shape == (3, 20, 24) and lr.shape == (3, 5, 6)
    crop = img.crop((1, 1, 25, 21))  # remainders 3 and 2 -> offsets 1 and 1
    assert torch.allclose(hr, utils.convert_image(crop, 'pil', '[-1, 1]'))
    expected_lr = crop.resize((6, 5), Image.Resampling.BICUBIC)
    assert torch.allclose(lr, utils.convert_image(expected_lr, 'pil', '[0, 1]'))


def test_matlab_downsampling_option_uses_imresize():
    img = gradient_image(24, 16)
    lr, _ = utils.ImageTransforms('test', 0, 4, '[0, 255]', '[0, 255]', downsample='matlab')(img)
    expected = utils.imresize(utils.pil_to_tensor(img), 0.25).float()
    assert torch.equal(lr.round(), expected)


def test_average_meter_and_adjust_learning_rate():
    meter = utils.AverageMeter()
    meter.update(2.0, n=3)
    meter.update(6.0, n=1)
    assert (meter.val, meter.sum, meter.count, meter.avg) == (6.0, 12.0, 4, 3.0)
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
    utils.adjust_learning_rate(opt, 0.1)
    assert opt.param_groups[0]['lr'] == pytest.approx(1e-5)


def test_positive_int_and_dataset_name():
    import argparse
    assert utils.positive_int('3') == 3
    for bad in ('0', '-2', 'x'):
        with pytest.raises(argparse.ArgumentTypeError):
            utils.positive_int(bad)
    assert utils.dataset_name('data/Set5/') == 'Set5'
    assert utils.dataset_name('C:\\data\\BSD100') == 'BSD100'
    assert utils.dataset_name('Set14') == 'Set14'


def test_model_input_and_target_for_rgb_and_y_models():
    import inference
    import models
    lr, hr = torch.rand(2, 3, 4, 5), torch.rand(2, 3, 12, 15)
    srresnet, srcnn, espcn = models.ARCHS['srresnet'], models.ARCHS['srcnn'], models.ARCHS['espcn']
    assert torch.allclose(inference.model_input(srresnet, lr, 3), utils.convert_image(lr, '[0, 1]', 'imagenet-norm'))
    assert torch.allclose(inference.model_target(srresnet, hr), hr * 2 - 1)
    x, target = inference.model_input(srcnn, lr, 3), inference.model_target(srcnn, hr)
    assert x.shape == (2, 1, 12, 15) and target.shape == (2, 1, 12, 15)
    y = (16 + 65.481 * hr[:, 0] + 128.553 * hr[:, 1] + 24.966 * hr[:, 2]) / 255
    assert torch.allclose(target[:, 0], y, atol=1e-6)
    assert inference.model_input(espcn, lr, 3).shape == (2, 1, 4, 5)


KEEP_FREED_PROBE = """
import sys, torch, utils
def rss_mib():
    with open('/proc/self/status') as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith('VmRSS:'))
applied = utils.keep_freed_memory() if sys.argv[1] == 'keep' else None
x = torch.ones(64, 2 ** 20)  # 256 MiB, every page touched
before = rss_mib()
del x
print(applied, before - rss_mib())
"""


@pytest.mark.skipif(not sys.platform.startswith('linux') or platform.libc_ver()[0] != 'glibc',
                    reason='keep_freed_memory tunes glibc malloc; a no-op elsewhere')
def test_keep_freed_memory_keeps_a_freed_large_tensor_for_reuse():
    """Default glibc returns a freed 256 MiB tensor to the OS at once; after keep_freed_memory the process keeps it
    (so the next large tensor reuses those pages instead of faulting in fresh ones)."""
    def run(mode):
        out = subprocess.run([sys.executable, '-c', KEEP_FREED_PROBE, mode], capture_output=True, text=True,
                             cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), check=True)
        applied, released = out.stdout.split()
        return applied, float(released)
    assert run('default')[1] > 200  # MiB given back by free()
    applied, released = run('keep')
    assert applied == 'True' and released < 20


# ----------------------------------------------------------------------------------------------
# AtomicFileSet: a set of files all or nothing (test.py's outputs of one image, eval.py's reports)
# ----------------------------------------------------------------------------------------------


def listing(folder):
    return {name: (folder / name).read_bytes() for name in os.listdir(folder)}


def test_file_set_failing_write_leaves_none_of_the_set_and_old_files_unchanged(tmp_path):
    (tmp_path / 'a.txt').write_bytes(b'old a')
    before = listing(tmp_path)

    def disk_full(f):
        f.write(b'partial')
        raise OSError(28, 'No space left on device')
    files = utils.AtomicFileSet()
    files.write(str(tmp_path / 'a.txt'), lambda f: f.write(b'new a'))
    files.write_text(str(tmp_path / 'n.txt'), 'new n')
    with pytest.raises(utils.UserError, match=r'cannot write .*b\.txt: No space left on device; nothing'):
        files.write(str(tmp_path / 'b.txt'), disk_full)
    assert listing(tmp_path) == before  # no temp file either
    with pytest.raises(KeyError):  # any exception inside the block: nothing of the set appears
        with utils.AtomicFileSet() as files:
            files.write_text(str(tmp_path / 'a.txt'), 'newer a')
            raise KeyError('bug')
    assert listing(tmp_path) == before
    with utils.AtomicFileSet() as files:
        files.write_text(str(tmp_path / 'a.txt'), 'new a')
        files.write_text(str(tmp_path / 'sub' / 'b.txt'), 'new b')
        assert (tmp_path / 'a.txt').read_bytes() == b'old a'  # nothing in place before the commit
    assert (tmp_path / 'a.txt').read_text() == 'new a' and (tmp_path / 'sub' / 'b.txt').read_text() == 'new b'
    umask = os.umask(0)
    os.umask(umask)
    assert (os.stat(tmp_path / 'sub' / 'b.txt').st_mode & 0o777) == 0o666 & ~umask


def test_file_set_failing_rename_rolls_back_the_renames_done(tmp_path, monkeypatch):
    (tmp_path / 'a.txt').write_bytes(b'old a')
    (tmp_path / 'c.txt').write_bytes(b'old c')
    before = listing(tmp_path)
    real, calls = os.replace, [0]

    def replace(src, dst):
        calls[0] += 1
        if calls[0] == 3:
            raise OSError(5, 'Input/output error')
        return real(src, dst)
    monkeypatch.setattr(os, 'replace', replace)
    with pytest.raises(utils.UserError, match=r'c\.txt: Input/output error'):
        utils.atomic_write_many({str(tmp_path / 'a.txt'): 'new a', str(tmp_path / 'b.txt'): 'new b',
                                 str(tmp_path / 'c.txt'): 'new c'})
    assert listing(tmp_path) == before  # a restored, b removed, c untouched, no temp or backup file left


def test_file_set_removes_temp_files_of_dead_writers_only(tmp_path):
    done = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True)
    dead = int(done.stdout)
    stale = tmp_path / f".x.png.{dead}.0badf00d.tmp"
    live = tmp_path / f".x.png.{os.getppid()}.cafebabe.tmp"  # a running writer's (here: the parent process)
    other = tmp_path / f".y.png.{dead}.0badf00d.tmp"  # another file's: not this set's business
    for path in (stale, live, other):
        path.write_bytes(b'half')
    utils.atomic_write_many({str(tmp_path / 'x.png'): 'x'})
    assert sorted(os.listdir(tmp_path)) == sorted([live.name, other.name, 'x.png'])


@pytest.mark.skipif(utils.fcntl is None, reason='RunLock locks nothing without fcntl (Windows)')
def test_run_lock_refuses_a_second_owner_and_leaves_no_file(tmp_path):
    target = str(tmp_path / 'checkpoint_srresnet.pth')
    lock_file = tmp_path / '.checkpoint_srresnet.pth.lock'
    with utils.RunLock(target):
        assert lock_file.read_text().strip() == str(os.getpid())
        with pytest.raises(utils.UserError, match=f"in use by another training run \\(pid {os.getpid()}\\)"):
            utils.RunLock(target).acquire()  # flock: another open file description, refused like another process
    assert not lock_file.exists()  # a run that ends removes its lock file
    lock_file.write_text('999999999\n')  # left by a killed run: its lock died with it
    with utils.RunLock(target):
        assert lock_file.read_text().strip() == str(os.getpid())


@pytest.mark.skipif(utils.fcntl is None, reason='RunLock locks nothing without fcntl (Windows)')
def test_run_lock_won_on_a_removed_file_is_taken_again_on_the_current_one(tmp_path):
    """A process that opened the lock file just before its owner removed it and let go gets the lock on a file no
    one else can see: acquire must notice and lock the file now at the path instead."""
    target = str(tmp_path / 'checkpoint_srresnet.pth')
    lock = utils.RunLock(target)
    stale = tmp_path / 'removed.lock'
    stale.write_text('')
    opened = [os.open(stale, os.O_RDWR)]
    os.unlink(stale)  # what the previous owner's release did after this process had opened the file
    real_open = lock._open
    lock._open = lambda: opened.pop() if opened else real_open()
    with lock:
        assert os.path.samestat(os.fstat(lock._fd), os.stat(tmp_path / '.checkpoint_srresnet.pth.lock'))
        with pytest.raises(utils.UserError, match='in use by another training run'):
            utils.RunLock(target).acquire()


def test_an_exception_ending_another_thread_is_one_line_under_run_cli(capsys):
    def main():
        def boom():
            raise ValueError("the library's own failure\nwith a second line")
        worker = threading.Thread(target=boom, name='library-writer')
        worker.start()
        worker.join()
        return 0
    assert utils.run_cli(main) == 0
    err = capsys.readouterr().err
    assert err == "warning: library-writer stopped: ValueError: the library's own failure\n"
    assert threading.excepthook is not utils.thread_failure_line  # restored after the script
