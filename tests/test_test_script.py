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
import models  # noqa: E402
import utils  # noqa: E402


CONFIG = models.model_config('srresnet', 4, n_blocks=2, n_channels=8)


def run_cli(*args):
    """python test.py ARGS in the repository root; returns the CompletedProcess."""
    env = dict(os.environ, OMP_NUM_THREADS='1')  # see conftest.one_thread
    return subprocess.run([sys.executable, 'test.py', *map(str, args)], cwd=REPO, capture_output=True, text=True,
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
    utils.save_checkpoint({'format_version': 1, 'arch': 'srresnet', 'model_config': CONFIG, 'epoch': 1,
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
    assert sorted(os.listdir(out)) == ['rgb_bicubic.png', 'rgb_compare.png', 'rgb_srresnet.png']
    lr = np.asarray(read(setup['inputs'] / 'rgb.png'))
    sr, bicubic, compare = (read(out / f"rgb_{k}.png") for k in ('srresnet', 'bicubic', 'compare'))
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
    assert sorted(os.listdir(out)) == sorted(f"{s}_{k}.png" for s in stems for k in ('bicubic', 'compare', 'srresnet'))
    assert res.stdout.count(' s\n') == 5 and 'notes.txt' not in res.stdout
    for stem in stems:
        expected_size = (48, 80) if stem == 'rotated' else (92, 68)  # EXIF orientation applied first
        assert read(out / f"{stem}_srresnet.png").size == expected_size
        assert read(out / f"{stem}_bicubic.png").size == expected_size


def test_folder_rgba_keeps_alpha(setup):
    out = setup['root'] / 'out_folder'
    src = np.asarray(read(setup['inputs'] / 'rgba.png'))
    sr, bicubic = read(out / 'rgba_srresnet.png'), read(out / 'rgba_bicubic.png')
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
    assert np.array_equal(np.asarray(read(out / 'gray_bicubic.png')), imresize_np(np.stack([gray] * 3, -1), 4))
    deep = np.asarray(read(setup['inputs'] / 'deep.png')).astype(np.float64)
    eight = (deep.astype(np.int64) >> 8).astype(np.uint8)  # the high byte, as Pillow does for 16-bit colour
    assert np.array_equal(np.asarray(read(out / 'deep_bicubic.png')), imresize_np(np.stack([eight] * 3, -1), 4))
    sr = np.asarray(read(out / 'deep_srresnet.png')).astype(np.float64)
    expected = expected_sr(setup['model'], np.stack([eight] * 3, -1)).astype(np.float64)
    assert 10 * np.log10(255. ** 2 / max(np.mean((sr - expected) ** 2), 1e-12)) >= 45.  # tiled run


def test_tiled_folder_run_matches_single_run(setup):
    a = np.asarray(read(setup['root'] / 'out_single' / 'rgb_srresnet.png')).astype(np.float64)
    b = np.asarray(read(setup['root'] / 'out_folder' / 'rgb_srresnet.png')).astype(np.float64)
    psnr = 10 * np.log10(255. ** 2 / max(np.mean((a - b) ** 2), 1e-12))
    assert psnr >= 45.


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


def run_main(script, monkeypatch, capsys, *args):
    """(exit code, stdout, stderr) of test.py's main() under utils.run_cli, as the CLI would run it."""
    monkeypatch.setattr(sys, 'argv', ['test.py', *map(str, args)])
    try:
        utils.run_cli(script.main)
        code = 0
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


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
def test_input_errors(script, setup, monkeypatch, capsys, tmp_path, case, message):
    image, out = make_case(tmp_path, case)
    code, _, err = run_main(script, monkeypatch, capsys, '--checkpoint', setup['ckpt'], '--image', image,
                            '--output-dir', out, '--device', 'cpu')
    assert code == 2 and err.startswith('error: ') and message in err and err.count('\n') == 1, err
    assert not out.exists() or not os.listdir(out)


def test_checkpoint_and_option_errors(script, setup, monkeypatch, capsys, tmp_path):
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
        code, _, err = run_main(script, monkeypatch, capsys, *args, '--image', image, '--output-dir', out,
                                '--device', 'cpu')
        assert code == 2 and message in err and err.count('\n') == 1, (args, err)
        assert not out.exists()


def test_compare_is_scaled_down_and_names_do_not_clash(script, setup, monkeypatch, capsys, tmp_path):
    src = tmp_path / 'src'
    src.mkdir()
    Image.fromarray(pattern(16, 30, 3, 7)).save(src / 'pic.png')
    Image.fromarray(pattern(16, 30, 3, 8)).save(src / 'pic.bmp')
    out = tmp_path / 'out'
    code, stdout, err = run_main(script, monkeypatch, capsys, '--checkpoint', setup['ckpt'], '--image', src,
                                 '--output-dir', out, '--device', 'cpu', '--compare-max-width', 100,
                                 '--max-memory', '1GB', '--fuse', '--channels-last')
    assert code == 0, err
    assert sorted(os.listdir(out)) == sorted(f"pic_{e}_{k}.png" for e in ('bmp', 'png')
                                             for k in ('bicubic', 'compare', 'srresnet'))
    compare = read(out / 'pic_png_compare.png')
    assert compare.width <= 100 and compare.size == (2 * 46 + 8, round(64 * 46 / 120))
    assert read(out / 'pic_png_srresnet.png').size == (120, 64)


def test_other_checkpoint_kinds(script, monkeypatch, capsys, tmp_path):
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
        utils.save_checkpoint(state, str(ckpt))
        code, stdout, err = run_main(script, monkeypatch, capsys, '--checkpoint', ckpt, '--image', image,
                                     '--output-dir', out, '--device', 'cpu', '--scale', scale)
        assert code == 0, (label, err)
        assert f"({label} x{scale})" in stdout
        assert read(out / f"in_{label}.png").size == (11 * scale, 9 * scale)
    # the SRGAN generator and the tutorial-format SRResNet hold the same weights: same picture
    assert np.array_equal(np.asarray(read(tmp_path / 'out_srgan' / 'in_srgan.png')),
                          np.asarray(read(tmp_path / 'out_srresnet' / 'in_srresnet.png')))
