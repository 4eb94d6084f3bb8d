"""test.py end to end: a tiny SRResNet checkpoint made here, images of every kind, the CLI in a subprocess;
error paths (exit code 2, one line, no output files) in-process for speed, one of them also through the CLI.

Expected pixels are computed here independently: the SR image by running the model by hand on the decoded
input, the bicubic image with utils.imresize on the whole image.
"""
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import checkpoints  # noqa: E402
from conftest import fail_nth_file_sync, fifo_watchdog, requires_fifo, run_here  # noqa: E402
import models  # noqa: E402
import utils  # noqa: E402


CONFIG = models.model_config('srresnet', 4, n_blocks=2, n_channels=8)


def pinned(args):
    """ARGS as strings, with --precision fp32 unless they name one: --precision auto is bf16 on CPUs with native
    bf16, and these tests compare pixels."""
    args = [str(a) for a in args]
    return args if '--precision' in args else [*args, '--precision', 'fp32']


def run_cli(*args):
    """python test.py ARGS in the repository root, fp32 unless ARGS name a precision; the CompletedProcess."""
    env = dict(os.environ, OMP_NUM_THREADS='1')  # see conftest.one_thread
    return subprocess.run([sys.executable, 'test.py', *pinned(args)], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=env)


def pattern(h, w, channels, seed):
    """(h, w, channels) uint8: smooth colours plus noise, so bicubic and the model have something to do."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([128 + 100 * np.sin(xx / 3. + c) * np.cos(yy / 4. - c) for c in range(channels)], axis=-1)
    return np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp('test_script')
    torch.manual_seed(0)
    model = models.build_model('srresnet', CONFIG).eval()
    ckpt = root / 'tiny.pth'
    checkpoints.save_checkpoint({'format_version': 1, 'arch': 'srresnet', 'model_config': CONFIG, 'epoch': 1,
                                 'model': model.state_dict()}, str(ckpt))
    inputs = root / 'inputs'
    inputs.mkdir()
    Image.fromarray(pattern(17, 23, 3, 0)).save(inputs / 'rgb.png')
    rgba = pattern(17, 23, 4, 1)
    rgba[..., 3] = np.linspace(0, 255, 23, dtype=np.uint8)[None, :]  # a transparency gradient
    Image.fromarray(rgba).save(inputs / 'rgba.png')
    Image.fromarray(pattern(17, 23, 1, 2)[..., 0]).save(inputs / 'gray.png')
    deep = (np.linspace(0, 65535, 17 * 23).reshape(17, 23)).astype(np.uint16)
    Image.fromarray(deep).save(inputs / 'deep.png')  # 16-bit grayscale PNG
    rotated = Image.fromarray(pattern(12, 20, 3, 3))  # stored 20 wide x 12 high, EXIF: rotate to 12 x 20
    exif = rotated.getexif()
    exif[0x0112] = 6
    rotated.save(inputs / 'rotated.jpg', exif=exif, quality=95)
    (inputs / 'notes.txt').write_text('not an image')
    single = run_cli('--checkpoint', ckpt, '--image', inputs / 'rgb.png', '--output-dir', root / 'out_single',
                     '--device', 'cpu')
    folder = run_cli('--checkpoint', ckpt, '--image', inputs, '--output-dir', root / 'out_folder', '--device', 'cpu',
                     '--batch-size', 2, '--tile', 16, '--tile-overlap', 6, '--max-memory', '64MB')
    return {'root': root, 'ckpt': ckpt, 'inputs': inputs, 'model': model, 'single': single, 'folder': folder}


def read(path):
    with Image.open(path) as img:
        img.load()
        return img


def expected_sr(model, rgb_u8):
    """The model by hand: imagenet-normalised input, [-1, 1] output, rounded to uint8. (H, W, 3) numpy."""
    x = torch.from_numpy(np.array(rgb_u8)).permute(2, 0, 1)[None].double() / 255.
    mean = torch.tensor(utils.IMAGENET_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(utils.IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1)
    with torch.no_grad():
        out = model.double()((x - mean) / std).float()
        model.float()
    return torch.floor(((out[0] + 1) / 2).clamp(0, 1) * 255 + 0.5).byte().permute(1, 2, 0).numpy()


def imresize_np(arr, scale):
    """utils.imresize of an (H, W, C) uint8 array, whole image at once."""
    t = torch.from_numpy(np.array(arr)).permute(2, 0, 1)
    return utils.imresize(t, scale).permute(1, 2, 0).numpy()


def test_single_image_outputs(setup):
    res = setup['single']
    assert res.returncode == 0, res.stderr
    out = setup['root'] / 'out_single'
    assert sorted(os.listdir(out)) == ['rgb_x4_bicubic.png', 'rgb_x4_srresnet.png', 'rgb_x4_srresnet_compare.png']
    lr = np.asarray(read(setup['inputs'] / 'rgb.png'))
    sr, bicubic, compare = (read(out / f"rgb_x4_{k}.png") for k in ('srresnet', 'bicubic', 'srresnet_compare'))
    assert sr.size == bicubic.size == (92, 68) and sr.mode == bicubic.mode == 'RGB'
    assert compare.size == (2 * 92 + 8, 68)
    diff = np.abs(np.asarray(sr).astype(int) - expected_sr(setup['model'], lr).astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01
    assert np.array_equal(np.asarray(bicubic), imresize_np(lr, 4))
    assert 'rgb.png: 23x17 -> 92x68 (srresnet x4) in ' in res.stdout and ' s' in res.stdout


def test_folder_all_modes(setup):
    res = setup['folder']
    assert res.returncode == 0, res.stderr
    out = setup['root'] / 'out_folder'
    stems = ['deep', 'gray', 'rgb', 'rgba', 'rotated']
    assert sorted(os.listdir(out)) == sorted(f"{s}_x4_{k}.png" for s in stems
                                             for k in ('bicubic', 'srresnet_compare', 'srresnet'))
    assert res.stdout.count(' s\n') == 5 and 'notes.txt' not in res.stdout
    for stem in stems:
        expected_size = (48, 80) if stem == 'rotated' else (92, 68)  # EXIF orientation applied first
        assert read(out / f"{stem}_x4_srresnet.png").size == expected_size
        assert read(out / f"{stem}_x4_bicubic.png").size == expected_size


def test_folder_rgba_keeps_alpha(setup):
    out = setup['root'] / 'out_folder'
    src = np.asarray(read(setup['inputs'] / 'rgba.png'))
    sr, bicubic = read(out / 'rgba_x4_srresnet.png'), read(out / 'rgba_x4_bicubic.png')
    assert sr.mode == bicubic.mode == 'RGBA'
    alpha = imresize_np(src[..., 3:], 4)[..., 0]
    assert np.array_equal(np.asarray(sr)[..., 3], alpha)
    assert np.array_equal(np.asarray(bicubic), imresize_np(src, 4))
    # the colours come from the model on the raw RGB values (tiled here, so up to blend rounding)
    diff = np.abs(np.asarray(sr)[..., :3].astype(int) - expected_sr(setup['model'], src[..., :3]).astype(int))
    assert diff.mean() < 0.5


def test_folder_gray_and_16bit(setup):
    out = setup['root'] / 'out_folder'
    gray = np.asarray(read(setup['inputs'] / 'gray.png'))
    assert np.array_equal(np.asarray(read(out / 'gray_x4_bicubic.png')), imresize_np(np.stack([gray] * 3, -1), 4))
    deep = np.asarray(read(setup['inputs'] / 'deep.png')).astype(np.float64)
    eight = (deep.astype(np.int64) >> 8).astype(np.uint8)  # the high byte, as Pillow does for 16-bit colour
    assert np.array_equal(np.asarray(read(out / 'deep_x4_bicubic.png')), imresize_np(np.stack([eight] * 3, -1), 4))
    sr = np.asarray(read(out / 'deep_x4_srresnet.png')).astype(np.float64)
    expected = expected_sr(setup['model'], np.stack([eight] * 3, -1)).astype(np.float64)
    # tiled with a 6-px overlap, in 8 bits: measured 50.5 dB (the default overlap: test_upscaler.py)
    assert 10 * np.log10(255. ** 2 / max(np.mean((sr - expected) ** 2), 1e-12)) >= 48.


def test_tiled_folder_run_matches_single_run(setup):
    a = np.asarray(read(setup['root'] / 'out_single' / 'rgb_x4_srresnet.png')).astype(np.float64)
    b = np.asarray(read(setup['root'] / 'out_folder' / 'rgb_x4_srresnet.png')).astype(np.float64)
    psnr = 10 * np.log10(255. ** 2 / max(np.mean((a - b) ** 2), 1e-12))
    assert psnr >= 48.  # 16-px tiles, 6-px overlap, 8-bit output: measured 51.1 dB


def test_error_through_cli_exit_2_one_line_no_files(setup):
    out = setup['root'] / 'out_missing'
    res = run_cli('--checkpoint', setup['ckpt'], '--image', setup['inputs'] / 'nope.png', '--output-dir', out)
    assert res.returncode == 2
    assert res.stderr.startswith('error: ') and res.stderr.count('\n') == 1 and 'nope.png' in res.stderr
    assert not out.exists()


# ----------------------------------------------------------------------------------------------
# Error paths, in-process (same main() and run_cli; no interpreter start-up per case)
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def script():
    spec = importlib.util.spec_from_file_location('sr_test_script', os.path.join(REPO, 'test.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_main(*args):
    """(exit code, stdout, stderr) of test.py's command line in this process (conftest.run_here), fp32 unless told."""
    result = run_here('test.py', *pinned(args))
    return result.returncode, result.stdout, result.stderr


def make_case(root, name):
    """Inputs for an error case: returns (path to pass as --image, path of the output folder)."""
    d = root / name
    d.mkdir()
    if name == 'empty_dir':
        (d / 'readme.txt').write_text('no images here')
        return d, root / f"{name}_out"
    if name == 'not_image':
        (d / 'fake.png').write_text('this is text, not a PNG')
        return d / 'fake.png', root / f"{name}_out"
    if name == 'tiny_image':
        Image.new('RGB', (1, 1)).save(d / 'dot.png')
        return d / 'dot.png', root / f"{name}_out"
    if name == 'bad_in_folder':  # good images first: still nothing may be written
        Image.fromarray(pattern(10, 10, 3, 5)).save(d / 'a_good.png')
        Image.fromarray(pattern(10, 10, 3, 6)).save(d / 'b_good.png')
        (d / 'c_broken.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'\x00' * 20)
        return d, root / f"{name}_out"
    raise ValueError(name)


@pytest.mark.parametrize('case,message', [('empty_dir', 'no images'), ('not_image', 'not an image'),
                                          ('tiny_image', 'at least 2x2'), ('bad_in_folder', 'c_broken.png')])
def test_input_errors(setup, tmp_path, case, message):
    image, out = make_case(tmp_path, case)
    code, _, err = run_main('--checkpoint', setup['ckpt'], '--image', image,
                            '--output-dir', out, '--device', 'cpu')
    assert code == 2 and err.startswith('error: ') and message in err and err.count('\n') == 1, err
    assert not out.exists() or not os.listdir(out)


def test_checkpoint_and_option_errors(setup, tmp_path):
    image, out = setup['inputs'] / 'rgb.png', tmp_path / 'out'
    bad = tmp_path / 'bad.pth'
    bad.write_text('not a checkpoint')
    cases = [
        (['--checkpoint', bad], 'bad.pth'),
        (['--checkpoint', tmp_path / 'missing.pth'], 'no such file'),
        (['--checkpoint', setup['ckpt'], '--scale', 2], 'x4, not x2'),
        (['--checkpoint', setup['ckpt'], '--precision', 'fp16'], 'fp16 needs a CUDA'),
        (['--checkpoint', setup['ckpt'], '--max-memory', 'lots'], '--max-memory'),
        (['--checkpoint', setup['ckpt'], '--tile', 8, '--tile-overlap', 8], 'overlap'),
    ]
    for args, message in cases:
        code, _, err = run_main(*args, '--image', image, '--output-dir', out,
                                '--device', 'cpu')
        assert code == 2 and message in err and err.count('\n') == 1, (args, err)
        assert not out.exists()


def test_compare_is_scaled_down_and_names_do_not_clash(setup, tmp_path):
    src = tmp_path / 'src'
    src.mkdir()
    Image.fromarray(pattern(16, 30, 3, 7)).save(src / 'pic.png')
    Image.fromarray(pattern(16, 30, 3, 8)).save(src / 'pic.bmp')
    out = tmp_path / 'out'
    code, stdout, err = run_main('--checkpoint', setup['ckpt'], '--image', src,
                                 '--output-dir', out, '--device', 'cpu', '--compare-max-width', 100,
                                 '--max-memory', '1GB', '--fuse', '--channels-last')
    assert code == 0, err
    assert sorted(os.listdir(out)) == sorted(f"pic_{e}_x4_{k}.png" for e in ('bmp', 'png')
                                             for k in ('bicubic', 'srresnet_compare', 'srresnet'))
    compare = read(out / 'pic_png_x4_srresnet_compare.png')
    assert compare.width <= 100 and compare.size == (2 * 46 + 8, round(64 * 46 / 120))
    assert read(out / 'pic_png_x4_srresnet.png').size == (120, 64)


def test_other_checkpoint_kinds(tmp_path):
    """SRGAN (generator weights, file label 'srgan'), the tutorial's own format (no config: inferred from the
    weights; module. prefixes from DataParallel), and a Y-channel ESPCN x3."""
    torch.manual_seed(3)
    gen = models.Generator(**CONFIG)
    espcn_config = models.model_config('espcn', 3, channels=[8, 8])
    espcn = models.build_model('espcn', espcn_config)
    kinds = {
        'srgan': ({'format_version': 1, 'arch': 'srgan', 'generator_config': CONFIG, 'epoch': 1,
                   'generator': gen.state_dict()}, 4),
        'srresnet': ({'epoch': 3, 'model': {f"module.{k}": v for k, v in gen.net.state_dict().items()}}, 4),
        'espcn': ({'format_version': 1, 'arch': 'espcn', 'model_config': espcn_config, 'epoch': 1,
                   'model': espcn.state_dict()}, 3),
    }
    image = tmp_path / 'in.png'
    Image.fromarray(pattern(9, 11, 3, 9)).save(image)
    for label, (state, scale) in kinds.items():
        ckpt, out = tmp_path / f"{label}.pth", tmp_path / f"out_{label}"
        checkpoints.save_checkpoint(state, str(ckpt))
        code, stdout, err = run_main('--checkpoint', ckpt, '--image', image,
                                     '--output-dir', out, '--device', 'cpu', '--scale', scale)
        assert code == 0, (label, err)
        assert f"({label} x{scale})" in stdout
        assert read(out / f"in_x{scale}_{label}.png").size == (11 * scale, 9 * scale)
    # the SRGAN generator and the tutorial-format SRResNet hold the same weights: same picture
    assert np.array_equal(np.asarray(read(tmp_path / 'out_srgan' / 'in_x4_srgan.png')),
                          np.asarray(read(tmp_path / 'out_srresnet' / 'in_x4_srresnet.png')))


def skimage_y_model_sr(model, rgb_u8, scale, pre_upsample):
    """A Y-channel model's RGB output by hand, in float64: BT.601 YCbCr by scikit-image (MATLAB's rgb2ycbcr), the
    model on Y (bicubic-upscaled first for SRCNN), Cb/Cr upscaled with MATLAB bicubic, back to RGB by scikit-image,
    rounded to uint8. (H, W, 3) numpy."""
    from skimage.color import rgb2ycbcr, ycbcr2rgb
    ycbcr = torch.from_numpy(rgb2ycbcr(rgb_u8 / 255.)).permute(2, 0, 1)[None] / 255.  # (1, 3, h, w) in [0, 1]
    y = utils.imresize(ycbcr[:, :1], scale) if pre_upsample else ycbcr[:, :1]
    with torch.no_grad():
        sr_y = model.double()(y)  # (1, 1, s*h, s*w)
        model.float()
    cbcr = utils.imresize(ycbcr[:, 1:], scale)  # (1, 2, s*h, s*w)
    out = torch.cat([sr_y, cbcr], dim=1)[0].permute(1, 2, 0).numpy() * 255.  # (s*h, s*w, 3), YCbCr in [0, 255]
    return np.floor(np.clip(ycbcr2rgb(out), 0, 1) * 255 + 0.5).astype(np.uint8)


@pytest.mark.parametrize('arch', ['espcn', 'srcnn'])
def test_y_channel_models_give_their_y_with_bicubic_cb_cr(tmp_path, arch):
    """docs/architectures.md: Y-channel models see the BT.601 luma; test.py upscales Cb/Cr with bicubic and the Y
    with the model. Saturated colours, so that Cb and Cr swapped (or left out) change the picture by far more than rounding."""
    torch.manual_seed(5)
    config = models.model_config(arch, 3, channels=[8, 4])
    model = models.build_model(arch, config).eval()
    ckpt, image, out = tmp_path / f"{arch}.pth", tmp_path / 'in.png', tmp_path / 'out'
    checkpoints.save_checkpoint({'format_version': 1, 'arch': arch, 'model_config': config, 'epoch': 1,
                                 'model': model.state_dict()}, str(ckpt))
    lr = pattern(13, 15, 3, 4)
    Image.fromarray(lr).save(image)
    code, _, err = run_main('--checkpoint', ckpt, '--image', image, '--output-dir', out,
                            '--device', 'cpu')
    assert code == 0, err
    sr = np.asarray(read(out / f"in_x3_{arch}.png")).astype(int)
    expected = skimage_y_model_sr(model, lr, 3, pre_upsample=arch == 'srcnn').astype(int)
    assert sr.shape == expected.shape == (39, 45, 3)
    diff = np.abs(sr - expected)
    assert diff.max() <= 1 and (diff > 0).mean() < 0.02  # float32 and fused convolutions against float64


# ----------------------------------------------------------------------------------------------
# All or nothing, names, earlier outputs, inputs that are not files (issue 12, sections 3 and 4)
# ----------------------------------------------------------------------------------------------


def save_pattern(path, h, w, seed, fmt=None):
    Image.fromarray(pattern(h, w, 3, seed)).save(path, format=fmt)


def case_insensitive_fs(folder):
    probe = folder / 'CaseProbe.tmp'
    probe.write_text('')
    try:
        return (folder / 'caseprobe.tmp').exists()
    finally:
        probe.unlink()


@pytest.mark.parametrize('where', ['png-encode', 'fsync'])
def test_write_error_mid_image_leaves_that_image_absent_and_earlier_ones_complete(setup, monkeypatch, tmp_path, where):
    """Disk full while writing the 2nd of an image's 3 files: that image has no file at all (today its bicubic
    PNG stayed), the image before it is complete, and no temp file is left."""
    src, out = tmp_path / 'src', tmp_path / 'out'
    src.mkdir()
    save_pattern(src / 'a.png', 10, 12, 1)
    save_pattern(src / 'b.png', 10, 12, 2)
    if where == 'fsync':
        fail_nth_file_sync(monkeypatch, 5)  # a: 3 files; b: bicubic, then the SR image fails
    else:
        real_save, calls = Image.Image.save, [0]

        def save(self, fp, *args, **kwargs):
            calls[0] += 1
            if calls[0] == 5:
                raise OSError(28, 'No space left on device')
            return real_save(self, fp, *args, **kwargs)
        monkeypatch.setattr(Image.Image, 'save', save)
    code, stdout, err = run_main('--checkpoint', setup['ckpt'], '--image', src,
                                 '--output-dir', out, '--device', 'cpu')
    assert code == 2 and err.startswith('error: ') and err.count('\n') == 1, err
    assert 'No space left on device' in err and 'b_' in err
    assert sorted(os.listdir(out)) == ['a_x4_bicubic.png', 'a_x4_srresnet.png', 'a_x4_srresnet_compare.png']
    assert read(out / 'a_x4_srresnet.png').size == (48, 40)


def run_folder(setup, src, out, *extra):
    code, stdout, err = run_main('--checkpoint', setup['ckpt'], '--image', src,
                                 '--output-dir', out, '--device', 'cpu', *extra)
    return code, stdout, err


def test_every_input_gets_its_own_outputs_whatever_the_names(setup, tmp_path):
    """a.png + a.jpg + a_png.png (+ a.PNG where the filesystem tells case apart) + B.png + b.bmp: every input gets
    3 outputs of its own size, no two output names equal even with letter case ignored (as macOS and Windows
    compare them). Each input has its own size here, so every output can be traced to its input."""
    src, out = tmp_path / 'src', tmp_path / 'out'
    src.mkdir()
    names = ['a.png', 'a.jpg', 'a_png.png', 'B.png', 'b.bmp'] + ([] if case_insensitive_fs(src) else ['a.PNG'])
    for i, name in enumerate(names):
        save_pattern(src / name, 8 + i, 9 + i, i, fmt={'png': 'PNG', 'jpg': 'JPEG', 'bmp': 'BMP'}[
            name.rsplit('.', 1)[1].lower()])
    code, stdout, err = run_folder(setup, src, out)
    assert code == 0, err
    files = os.listdir(out)
    assert len(files) == 3 * len(names) and len({f.casefold() for f in files}) == len(files)
    by_size = {}
    for f in files:
        by_size.setdefault(read(out / f).size if not f.endswith('_compare.png') else None, []).append(f)
    for i, name in enumerate(names):  # the bicubic and SR images of input i are (4 * (9 + i), 4 * (8 + i))
        own = sorted(by_size[(4 * (9 + i), 4 * (8 + i))])
        assert len(own) == 2, (name, own)
        stem = own[0][:-len('_x4_bicubic.png')]
        assert own == [f"{stem}_x4_bicubic.png", f"{stem}_x4_srresnet.png"], (name, own)
        assert f"{stem}_x4_srresnet_compare.png" in files, (name, files)
    # the documented rule: a stem of one's own is kept; clashing stems add the extension, then a number
    assert {'a_png_x4_bicubic.png', 'a_jpg_x4_bicubic.png', 'b_png_x4_bicubic.png', 'b_bmp_x4_bicubic.png'} <= set(
        f.casefold() for f in files)


def test_output_folder_equal_to_input_folder_never_overwrites_an_input(setup, tmp_path):
    src = tmp_path / 'photos'
    src.mkdir()
    save_pattern(src / 'photo.png', 10, 12, 1)
    save_pattern(src / 'photo_x4_bicubic.png', 11, 13, 2)  # the user's own file, named like an output
    own = (src / 'photo_x4_bicubic.png').read_bytes()
    code, stdout, err = run_folder(setup, src, src)
    assert code == 0, err
    assert (src / 'photo_x4_bicubic.png').read_bytes() == own
    files = sorted(os.listdir(src))
    assert len(files) == 2 + 6, files
    assert 'photo_png_x4_srresnet.png' in files  # photo.png's outputs stepped aside from the user's file
    sizes = {f: read(src / f).size for f in files if f.endswith('_srresnet.png')}
    assert sorted(sizes.values()) == [(48, 40), (52, 44)]  # one SR image per input
    # a second run takes neither its own outputs nor anything else as new inputs, and replaces nothing unasked
    code, stdout, err = run_folder(setup, src, src)
    assert code == 2 and '--overwrite' in err and err.count('\n') == 1, err
    code, stdout, err = run_folder(setup, src, src, '--overwrite')
    assert code == 0, err
    assert sorted(os.listdir(src)) == files and (src / 'photo_x4_bicubic.png').read_bytes() == own
    assert stdout.count(' -> ') == 2


def test_earlier_outputs_are_replaced_only_with_overwrite_and_other_files_never(setup, tmp_path):
    image, out = tmp_path / 'pic.png', tmp_path / 'out'
    save_pattern(image, 10, 30, 3)
    code, _, err = run_folder(setup, image, out)
    assert code == 0, err
    before = {f: (out / f).read_bytes() for f in os.listdir(out)}
    code, _, err = run_folder(setup, image, out, '--compare-max-width', 60)
    assert code == 2 and err.startswith('error: ') and err.count('\n') == 1, err
    assert '--overwrite' in err and 'pic_' in err
    assert {f: (out / f).read_bytes() for f in os.listdir(out)} == before  # nothing written
    code, _, err = run_folder(setup, image, out, '--compare-max-width', 60,
                              '--overwrite')
    assert code == 0, err
    assert sorted(os.listdir(out)) == sorted(before) and read(out / 'pic_x4_srresnet_compare.png').width <= 60
    # a file test.py did not write, where an output would go: kept, even with --overwrite
    (out / 'pic_x4_srresnet.png').unlink()
    save_pattern(out / 'pic_x4_srresnet.png', 5, 5, 4)
    foreign = (out / 'pic_x4_srresnet.png').read_bytes()
    compare = (out / 'pic_x4_srresnet_compare.png').read_bytes()
    code, _, err = run_folder(setup, image, out, '--overwrite')
    assert code == 2 and 'not written by test.py' in err and 'pic_x4_srresnet.png' in err, err
    assert (out / 'pic_x4_srresnet.png').read_bytes() == foreign
    assert (out / 'pic_x4_srresnet_compare.png').read_bytes() == compare


def y_model_checkpoint(path, arch, scale, seed):
    """A tiny random-weight Y-channel model (SRCNN or ESPCN, channels 8, 4) saved at ``path``; returns path."""
    torch.manual_seed(seed)
    config = models.model_config(arch, scale, channels=[8, 4])
    checkpoints.save_checkpoint({'format_version': 1, 'arch': arch, 'model_config': config, 'epoch': 1,
                                 'model': models.build_model(arch, config).state_dict()}, str(path))
    return path


def folder_bytes(folder):
    return {f: (folder / f).read_bytes() for f in os.listdir(folder)}


def test_outputs_of_different_models_or_scales_never_share_a_name(script, tmp_path):
    """<stem>_x<scale>_bicubic.png, <stem>_x<scale>_<label>.png, <stem>_x<scale>_<label>_compare.png: ESPCN x3, SRCNN
    x2, then SRCNN x3 on one photo into one folder, none with --overwrite, all succeed; each run adds its own files
    and leaves the earlier ones byte for byte (SRCNN x3 keeps ESPCN x3's bicubic, the same input's at the same
    scale). Another photo under the same name gets no stale bicubic: without --overwrite it is refused."""
    image, out = tmp_path / 'photo.png', tmp_path / 'out'
    save_pattern(image, 9, 11, 1)
    runs = [('espcn', 3), ('srcnn', 2), ('srcnn', 3)]
    for arch, scale in runs:
        ckpt = y_model_checkpoint(tmp_path / f"{arch}_x{scale}.pth", arch, scale, seed=scale)
        before = folder_bytes(out) if out.exists() else {}
        code, stdout, err = run_main('--checkpoint', ckpt, '--image', image,
                                     '--output-dir', out, '--device', 'cpu')
        assert code == 0, (arch, scale, err)
        assert f"({arch} x{scale})" in stdout
        names = {f"photo_x{scale}_bicubic.png", f"photo_x{scale}_{arch}.png", f"photo_x{scale}_{arch}_compare.png"}
        after = folder_bytes(out)
        assert set(after) == set(before) | names, (arch, scale, sorted(after))
        assert {f: after[f] for f in before} == before, (arch, scale)  # nothing of the earlier runs changed
        for kind in ('bicubic', arch):
            assert read(out / f"photo_x{scale}_{kind}.png").size == (11 * scale, 9 * scale)
    assert sorted(os.listdir(out)) == [
        'photo_x2_bicubic.png', 'photo_x2_srcnn.png', 'photo_x2_srcnn_compare.png',
        'photo_x3_bicubic.png', 'photo_x3_espcn.png', 'photo_x3_espcn_compare.png',
        'photo_x3_srcnn.png', 'photo_x3_srcnn_compare.png']
    lr = np.asarray(read(image))
    for scale in (2, 3):
        assert np.array_equal(np.asarray(read(out / f"photo_x{scale}_bicubic.png")), imresize_np(lr, scale))
    # the bicubic names the input it was made from; another photo.png does not inherit it
    assert script.png_text(out / 'photo_x3_bicubic.png')[script.INPUT_DIGEST] == script.file_digest(image)
    other = tmp_path / 'other'
    other.mkdir()
    save_pattern(other / 'photo.png', 9, 11, 2)
    before = folder_bytes(out)
    ckpt = y_model_checkpoint(tmp_path / 'espcn_x2.pth', 'espcn', 2, seed=7)
    code, _, err = run_main('--checkpoint', ckpt, '--image', other / 'photo.png',
                            '--output-dir', out, '--device', 'cpu')
    assert code == 2 and err.count('\n') == 1 and 'photo_x2_bicubic.png' in err and '--overwrite' in err, err
    assert folder_bytes(out) == before


def test_the_same_model_and_scale_again_needs_overwrite(tmp_path):
    """The unchanged rule, with the new names: ESPCN x3 twice on one photo into one folder: the second run stops with
    one line naming an output and --overwrite (exit code 2) and changes nothing; with --overwrite it replaces them."""
    image, out = tmp_path / 'photo.png', tmp_path / 'out'
    save_pattern(image, 9, 11, 3)
    ckpt = y_model_checkpoint(tmp_path / 'espcn.pth', 'espcn', 3, seed=3)
    args = ('--checkpoint', ckpt, '--image', image, '--output-dir', out, '--device', 'cpu')
    code, _, err = run_main(*args)
    assert code == 0, err
    first = folder_bytes(out)
    assert sorted(first) == ['photo_x3_bicubic.png', 'photo_x3_espcn.png', 'photo_x3_espcn_compare.png']
    code, _, err = run_main(*args, '--compare-max-width', 40)
    assert code == 2 and err.startswith('error: ') and err.count('\n') == 1, err
    assert 'photo_x3_espcn' in err and '--overwrite' in err, err
    assert folder_bytes(out) == first
    code, _, err = run_main(*args, '--compare-max-width', 40, '--overwrite')
    assert code == 0, err
    assert sorted(os.listdir(out)) == sorted(first) and read(out / 'photo_x3_espcn_compare.png').width <= 40
    assert (out / 'photo_x3_espcn_compare.png').read_bytes() != first['photo_x3_espcn_compare.png']


@requires_fifo
def test_fifo_and_device_as_image_are_refused_without_blocking(setup, tmp_path):
    """A FIFO given as --image used to block test.py forever; a FIFO inside a folder is named too."""
    fifo = tmp_path / 'pipe.png'
    os.mkfifo(fifo)
    for image in (fifo, '/dev/zero'):
        try:
            res = subprocess.run([sys.executable, 'test.py', '--checkpoint', str(setup['ckpt']), '--image',
                                  str(image), '--output-dir', str(tmp_path / 'out'), '--device', 'cpu'], cwd=REPO,
                                 capture_output=True, text=True, timeout=60, env=dict(os.environ,
                                                                                      OMP_NUM_THREADS='1'))
        except subprocess.TimeoutExpired:
            pytest.fail(f"test.py --image {image} blocked")
        assert res.returncode == 2 and res.stderr.count('\n') == 1, res.stderr
        assert 'not a regular file' in res.stderr and str(image) in res.stderr
    assert not (tmp_path / 'out').exists()


@requires_fifo
def test_fifo_in_an_input_folder_is_named_and_nothing_is_written(setup, tmp_path):
    src, out = tmp_path / 'src', tmp_path / 'out'
    src.mkdir()
    save_pattern(src / 'a.png', 10, 10, 1)
    os.mkfifo(src / 'b.png')
    with fifo_watchdog(src / 'b.png') as watchdog:
        code, _, err = run_folder(setup, src, out)
    assert not watchdog.fired, 'test.py blocked on the FIFO'
    assert code == 2 and 'b.png' in err and 'FIFO' in err and err.count('\n') == 1, err
    assert not out.exists()


def test_folder_that_cannot_be_listed_is_one_line(setup, tmp_path, unlistable):
    src = tmp_path / 'locked'
    src.mkdir()
    save_pattern(src / 'a.png', 10, 10, 1)
    unlistable(src)
    code, _, err = run_folder(setup, src, tmp_path / 'out')
    assert code == 2 and err.startswith('error: ') and 'cannot list' in err and err.count('\n') == 1, err


def test_nan_weights_stop_with_one_line_naming_the_checkpoint(setup, tmp_path):
    """A model whose weights are NaN wrote black images with exit 0."""
    state = {k: torch.full_like(v, float('nan')) if v.is_floating_point() else v
             for k, v in setup['model'].state_dict().items()}
    ckpt = tmp_path / 'diverged.pth'
    checkpoints.save_checkpoint({'format_version': 1, 'arch': 'srresnet', 'model_config': CONFIG, 'epoch': 1,
                                 'model': state}, str(ckpt))
    out = tmp_path / 'out'
    for extra in ([], ['--tile', 8, '--tile-overlap', 2]):
        code, _, err = run_main('--checkpoint', ckpt, '--image',
                                setup['inputs'] / 'rgb.png', '--output-dir', out, '--device', 'cpu', *extra)
        assert code == 2 and err.count('\n') == 1 and str(ckpt) in err and 'NaN' in err, err
        assert not out.exists()


def test_max_image_pixels_allows_a_big_photo_and_refuses_above_it(script, setup, tmp_path):
    """PIL's decompression-bomb limit refused big photos with no way to allow them (a 90-megapixel photo is over
    PIL's default of 89478485): --max-image-pixels sets it, default PIL's. Scaled down here: a 12x10 image."""
    assert script.build_parser().get_default('max_image_pixels') == Image.MAX_IMAGE_PIXELS
    image, out = tmp_path / 'big.png', tmp_path / 'out'
    save_pattern(image, 10, 12, 1)
    code, _, err = run_folder(setup, image, out, '--max-image-pixels', 119)
    assert code == 2 and 'decompression bomb' in err and '--max-image-pixels' in err, err
    assert err.count('\n') == 1 and not out.exists()
    code, _, err = run_folder(setup, image, out, '--max-image-pixels', 120)
    assert code == 0, err
    assert read(out / 'big_x4_srresnet.png').size == (48, 40)


def test_precision_auto_is_the_default_and_says_what_it_picked(setup, tmp_path):
    """test.py's default --precision auto runs what utils.auto_precision picks here (bf16 on native-bf16 CPUs) and
    says so; the output is that precision's, pixel for pixel."""
    picked, reason = utils.auto_precision('cpu')
    image = setup['inputs'] / 'rgb.png'
    env = dict(os.environ, OMP_NUM_THREADS='1')
    auto = subprocess.run([sys.executable, 'test.py', '--checkpoint', str(setup['ckpt']), '--image', str(image),
                           '--output-dir', str(tmp_path / 'auto'), '--device', 'cpu'], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env=env)  # no --precision: the default
    assert auto.returncode == 0, auto.stderr
    assert f"precision: {picked} ({reason}; --precision picks another)" in auto.stdout
    explicit = run_cli('--checkpoint', setup['ckpt'], '--image', image, '--output-dir', tmp_path / 'explicit',
                       '--device', 'cpu', '--precision', picked)
    assert explicit.returncode == 0, explicit.stderr
    assert 'precision:' not in explicit.stdout  # a precision asked for is not announced
    with Image.open(tmp_path / 'auto' / 'rgb_x4_srresnet.png') as a, \
            Image.open(tmp_path / 'explicit' / 'rgb_x4_srresnet.png') as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_a_checkpoint_with_its_own_label_names_its_outputs_and_a_bad_label_is_refused(setup, tmp_path):
    """A shipped model's 'label' (srresnet_real next to the shipped srresnet) names its outputs, so the two x4
    SRResNets never share a name; a label that is not a plain name is refused in one line."""
    ckpt = checkpoints.load_checkpoint(setup['ckpt'])
    image = setup['inputs'] / 'rgb.png'
    for label, expect in (('srresnet_real', 0), ('../x', 2)):
        path = tmp_path / f"labelled_{expect}.pth"
        checkpoints.save_checkpoint({**ckpt, 'label': label}, path)
        code, out, err = run_main('--checkpoint', path, '--image', image,
                                  '--output-dir', tmp_path / 'out', '--device', 'cpu')
        assert code == expect, err
    assert sorted(os.listdir(tmp_path / 'out')) == ['rgb_x4_bicubic.png', 'rgb_x4_srresnet_real.png',
                                                    'rgb_x4_srresnet_real_compare.png']
    assert "its label '../x' is not a name" in err and len(err.strip().splitlines()) == 1


def test_model_picks_a_shipped_model_by_what_the_image_is(monkeypatch, tmp_path):
    image = tmp_path / 'in.png'
    Image.fromarray(pattern(12, 14, 3, 5)).save(image)
    code, out, err = run_main('--model', 'photo', '--checkpoint', 'x.pth', '--image',
                              image, '--output-dir', tmp_path / 'out')
    assert code == 2 and 'give one of them' in err and len(err.strip().splitlines()) == 1
    code, out, err = run_main('--model', 'clean', '--image', image, '--output-dir',
                              tmp_path / 'out', '--device', 'cpu')
    assert code == 0, err
    assert sorted(os.listdir(tmp_path / 'out')) == ['in_x4_bicubic.png', 'in_x4_srresnet.png',
                                                    'in_x4_srresnet_compare.png']
    monkeypatch.setattr(checkpoints, 'SHIPPED_MODELS', {**checkpoints.SHIPPED_MODELS,
                                                        'photo': ('missing.pth', 'nothing')})
    code, out, err = run_main('--model', 'photo', '--image', image, '--output-dir',
                              tmp_path / 'out2', '--device', 'cpu')
    assert code == 2 and 'results/missing.pth is missing' in err and not (tmp_path / 'out2').exists()
