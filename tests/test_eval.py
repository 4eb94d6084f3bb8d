"""eval.py: the bicubic baselines on the real Set5, and end to end through its command line on tiny models.

Expected metrics are computed here independently (scikit-image metrics, PIL, luma by formula, the tutorial's
pipeline written out); only utils.imresize is reused, and it has its own reference test (test_imresize.py).
"""
import csv
import json
import math
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

import checkpoints
import eval as eval_script
import models
from checkpoints import save_checkpoint
from conftest import REPO_ROOT, SHARED_DATA, doc_text, requires_shared_data, run_here, run_script
from utils import UserError, imresize, list_image_files

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(3, 1, 1)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(3, 1, 1)
SIZES = ((48, 48), (50, 45))  # (width, height): one not a multiple of the scale, cropped differently by each protocol


# ----------------------------------------------------------------------------------------------
# Independent computations
# ----------------------------------------------------------------------------------------------


def y_uint8(rgb):
    """(H, W, 3) RGB with values in [0, 255] -> rounded BT.601 luma, as MATLAB's rgb2ycbcr on uint8."""
    rgb = np.asarray(rgb, dtype=np.float64)
    return np.floor(16 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255 + 0.5)


def papers_metrics(sr_y, hr_y, border):
    a, b = hr_y[border:-border, border:-border], sr_y[border:-border, border:-border]
    return (peak_signal_noise_ratio(a, b, data_range=255),
            structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                  data_range=255))


def tutorial_y(img11):
    """(3, H, W) in [-1, 1] -> the tutorial's unrounded Y with 4 pixels removed per side."""
    rgb = (np.asarray(img11, dtype=np.float64) + 1) / 2 * 255
    return (16 + (65.481 * rgb[0] + 128.553 * rgb[1] + 24.966 * rgb[2]) / 255)[4:-4, 4:-4]


def read_rgb(path):
    return np.array(Image.open(path).convert('RGB'))  # (H, W, 3) uint8, writable


def expected_standard(path, scale, upscale):
    """upscale: LR (3, h, w) uint8 tensor -> SR (3, H, W) RGB array in [0, 1] (or ('y', (H, W) luma in [0, 1]))."""
    hr = read_rgb(path)
    hr = hr[:hr.shape[0] // scale * scale, :hr.shape[1] // scale * scale]  # top-left mod crop
    lr = imresize(torch.from_numpy(hr).permute(2, 0, 1).contiguous(), 1. / scale)  # uint8
    out = upscale(lr)
    if isinstance(out, tuple):  # a Y-channel model: its own luma, rounded
        sr_y = np.floor(np.clip(out[1], 0, 1) * 255 + 0.5)
    else:
        sr_y = y_uint8(np.floor(np.clip(out, 0, 1) * 255 + 0.5).transpose(1, 2, 0))
    return papers_metrics(sr_y, y_uint8(hr), scale)


def expected_tutorial(path, scale, upscale):
    """The tutorial's eval.py, written out. upscale: PIL LR image -> SR (3, H, W) array in [-1, 1]."""
    img = Image.open(path).convert('RGB')
    x_rem, y_rem = img.width % scale, img.height % scale
    left, top = x_rem // 2, y_rem // 2
    hr_img = img.crop((left, top, left + img.width - x_rem, top + img.height - y_rem))
    lr_img = hr_img.resize((hr_img.width // scale, hr_img.height // scale), Image.BICUBIC)
    hr = np.asarray(hr_img, dtype=np.float32).transpose(2, 0, 1) / 255 * 2 - 1
    hr_y, sr_y = tutorial_y(hr), tutorial_y(upscale(lr_img))
    return peak_signal_noise_ratio(hr_y, sr_y, data_range=255.), structural_similarity(hr_y, sr_y, data_range=255.)


def expected_means(paths, scale, standard_fn=None, tutorial_fn=None):
    out = {}
    if standard_fn:
        values = [expected_standard(p, scale, standard_fn) for p in paths]
        out['standard_psnr'], out['standard_ssim'] = np.mean([v[0] for v in values]), np.mean([v[1] for v in values])
    if tutorial_fn:
        values = [expected_tutorial(p, scale, tutorial_fn) for p in paths]
        out['tutorial_psnr'], out['tutorial_ssim'] = np.mean([v[0] for v in values]), np.mean([v[1] for v in values])
    return out


def bicubic_y_standard(path, scale):
    """The papers' bicubic row for one image: luma, imresize down and up in floating point, rounded once."""
    hr = read_rgb(path)
    hr_y = y_uint8(hr[:hr.shape[0] // scale * scale, :hr.shape[1] // scale * scale])
    sr = imresize(imresize(torch.from_numpy(hr_y), 1. / scale), scale).numpy()
    return papers_metrics(np.floor(np.clip(sr, 0, 255) + 0.5), hr_y, scale)


def pil_bicubic_tutorial(scale):
    def upscale(lr_img):
        sr = lr_img.resize((lr_img.width * scale, lr_img.height * scale), Image.BICUBIC)
        return np.asarray(sr, dtype=np.float32).transpose(2, 0, 1) / 255 * 2 - 1
    return upscale


def srresnet_functions(model):
    """(standard upscale, tutorial upscale) of an SRResNet: ImageNet-normalised input, [-1, 1] output."""
    @torch.no_grad()
    def run(lr01):  # (3, h, w) float32 in [0, 1] -> (3, H, W) in [-1, 1]
        x = (lr01 - IMAGENET_MEAN) / IMAGENET_STD
        return model(torch.from_numpy(x).unsqueeze(0))[0].numpy()

    def standard(lr_u8):
        return (run(lr_u8.numpy().astype(np.float32) / 255) + 1) / 2

    def tutorial(lr_img):
        return run(np.asarray(lr_img, dtype=np.float32).transpose(2, 0, 1) / 255)
    return standard, tutorial


# ----------------------------------------------------------------------------------------------
# Inputs: images, tiny checkpoints in every supported format
# ----------------------------------------------------------------------------------------------


def write_images(folder, sizes=SIZES, seed=0):
    """Smooth random RGB PNGs (low-frequency noise upscaled, plus a little grain)."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i, (w, h) in enumerate(sizes):
        base = Image.fromarray(rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
        arr = np.clip(np.asarray(base, dtype=np.int16) + rng.integers(-8, 9, size=(h, w, 3)), 0, 255)
        Image.fromarray(arr.astype(np.uint8)).save(os.path.join(folder, f"img_{i}.png"))
    return str(folder)


def tiny_srresnet(seed=0):
    torch.manual_seed(seed)
    model = models.SRResNet(n_blocks=2, n_channels=8, scaling_factor=4)
    for m in model.modules():  # non-trivial BatchNorm statistics, so eval mode matters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


TINY_CONFIG = models.model_config('srresnet', 4, n_blocks=2, n_channels=8)


def suite_checkpoint(model, path):
    """This suite's train_srresnet.py format."""
    save_checkpoint({'format_version': 1, 'arch': 'srresnet', 'model_config': TINY_CONFIG, 'epoch': 1,
                     'model': model.state_dict()}, path)
    return str(path)


def seed_checkpoint(model, path):
    """The tutorial's train_srresnet.py format, saved from a DataParallel model: 'module.' keys, no config."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    torch.save({'epoch': 1, 'model': {'module.' + k: v for k, v in model.state_dict().items()},
                'optimizer': optimizer.state_dict()}, path)
    return str(path)


def srgan_checkpoint(model, path, with_config=True):
    """An SRGAN checkpoint: the generator holds the SRResNet as .net (keys 'net.'), plus a discriminator.
    with_config: this suite's train_srgan.py format; without: the tutorial's (weights only)."""
    disc = models.Discriminator(n_channels=8, n_blocks=2, fc_size=16)
    state = {'epoch': 1, 'generator': {'net.' + k: v for k, v in model.state_dict().items()},
             'discriminator': disc.state_dict()}
    if with_config:
        state.update({'format_version': 1, 'arch': 'srgan', 'generator_config': TINY_CONFIG})
    torch.save(state, path)
    return str(path)


def files_under(folder):
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def read_reports(results_dir, name, scale):
    base = os.path.join(results_dir, f"eval_{name}_x{scale}")
    with open(base + '.md') as f:
        md = f.read()
    with open(base + '.json') as f:
        summary = json.load(f)
    with open(base + '_per_image.csv', newline='') as f:
        rows = list(csv.DictReader(f))
    return md, summary, rows


def check_report_metadata(md, summary, rows, protocols, scale, checkpoint=None):
    date = re.compile(r'\d{4}-\d{2}-\d{2}T\d{2}:\d{2}')
    for p in protocols:
        assert p in md
    assert f"x{scale}" in md and date.search(md)
    assert summary['protocols'] == list(protocols) and summary['scale'] == scale and date.match(summary['date'])
    assert {r['protocol'] for r in rows} == set(protocols)
    assert all(r['scale'] == str(scale) and date.match(r['date']) for r in rows)
    if checkpoint:
        assert checkpoint in md and summary['checkpoint'] == checkpoint
        assert all(r['checkpoint'] == checkpoint for r in rows)


def assert_close_to(summary_row, expected, psnr_tol=2e-3, ssim_tol=2e-4):
    for key, value in expected.items():
        tol = psnr_tol if key.endswith('psnr') else ssim_tol
        assert summary_row[key] == pytest.approx(value, abs=tol), key


# ----------------------------------------------------------------------------------------------
# The papers' bicubic rows on the real Set5 (in process)
# ----------------------------------------------------------------------------------------------

@requires_shared_data
@pytest.mark.parametrize('scale, psnr, ssim', [(2, 33.66, 0.9299), (3, 30.39, 0.8682)])  # x4: the CLI test
def test_bicubic_set5_matches_the_papers(scale, psnr, ssim):
    paths = list_image_files(str(SHARED_DATA / 'Set5'))
    result = eval_script.evaluate_dataset(eval_script.BicubicMethod('bicubic', scale, 'cpu'), 'Set5', paths,
                                          ('standard',))
    assert result['images'] == 5
    assert round(result['standard_psnr'], 2) == psnr
    assert round(result['standard_ssim'], 4) == ssim


def readme_row(prefix, page='README.md'):
    """The cells of the table row starting with ``prefix`` in README (the results table) or a docs ``page``."""
    text = doc_text(page)
    line = next(line for line in text.splitlines() if line.startswith(prefix))
    return [cell.strip() for cell in line.strip('|').split('|')]


# The shipped checkpoints' rows of README's x3 results table: dataset columns, and how long each takes on 2 cores here
# (SRCNN on Set14 takes 17 s and BSD100 takes 15 s / 90 s: left to benchmarks/bench_cpu_quality.py).
SHIPPED = {'espcn': ('| ESPCN, `results/espcn_x3_t91.pth`', ['Set5', 'Set14']),
           'srcnn': ('| SRCNN, `results/srcnn_x3_t91.pth`', ['Set5'])}


@requires_shared_data
@pytest.mark.parametrize('arch', sorted(SHIPPED))
def test_shipped_checkpoints_give_readmes_numbers(arch):
    """README's PSNR / SSIM of results/<arch>_x3_t91.pth (standard protocol, x3), to their printed precision,
    in README's results table and in the Architectures table of docs/architectures.md."""
    prefix, datasets = SHIPPED[arch]
    row = readme_row(prefix)
    assert row[0] == prefix.strip('| ')
    assert f"x3 {row[1]}" in readme_row(f"| `{arch}`", 'architectures.md')[5]  # the same Set5 pair
    model = checkpoints.load_sr_model(str(REPO_ROOT / 'results' / f"{arch}_x3_t91.pth"), 'cpu')
    method = eval_script.ModelMethod(model, 'cpu')
    for column, name in enumerate(datasets, start=1):
        psnr_text, ssim_text = row[column].split(' / ')
        result = eval_script.evaluate_dataset(method, name, list_image_files(str(SHARED_DATA / name)),
                                              ('standard',))
        assert abs(result['standard_psnr'] - float(psnr_text)) <= 0.005, (name, result['standard_psnr'])
        assert abs(result['standard_ssim'] - float(ssim_text)) <= 0.00005, (name, result['standard_ssim'])


def readme_bicubic(dataset, scale):
    """(PSNR, SSIM) text of the bicubic table of docs/evaluation.md, row '<dataset>, this suite', column x<scale>;
    for BSD100 (not in that table) the bicubic row of README's x3 results table."""
    if dataset == 'BSD100':
        assert scale == 3
        return tuple(readme_row('| bicubic (`--arch bicubic`)')[3].split(' / '))
    header = readme_row('| bicubic (standard) |', 'evaluation.md')
    return tuple(readme_row(f"| {dataset}, this suite |", 'evaluation.md')[header.index(f"x{scale}")].split(' / '))


def test_readme_bicubic_rows_agree():
    """The x3 column of the bicubic table (docs/evaluation.md) is the bicubic row of README's results table, and
    its Set5 row is what test_bicubic_set5_matches_the_papers asserts."""
    shipped = readme_row('| bicubic (`--arch bicubic`)')
    assert shipped[1] == ' / '.join(readme_bicubic('Set5', 3)) and shipped[2] == ' / '.join(readme_bicubic('Set14', 3))
    assert readme_bicubic('Set5', 2) == ('33.66', '0.9299') and readme_bicubic('Set5', 3) == ('30.39', '0.8682')
    assert readme_bicubic('Set5', 4) == ('28.42', '0.8104')  # test_cli_bicubic_set5_x4_prints_the_papers_row


@requires_shared_data
@pytest.mark.parametrize('dataset, scale', [('Set14', 2), ('Set14', 3), ('Set14', 4), ('BSD100', 3)])
def test_bicubic_matches_readme(dataset, scale):
    psnr_text, ssim_text = readme_bicubic(dataset, scale)
    paths = list_image_files(str(SHARED_DATA / dataset))
    result = eval_script.evaluate_dataset(eval_script.BicubicMethod('bicubic', scale, 'cpu'), dataset, paths,
                                          ('standard',))
    assert f"{result['standard_psnr']:.2f}" == psnr_text and f"{result['standard_ssim']:.4f}" == ssim_text


@requires_shared_data
def test_bicubic_rgb_is_a_little_below_the_luma_baseline_and_tutorial_bicubic_matches_readme():
    """docs/evaluation.md: bicubic-rgb is under 0.02 dB below bicubic; bicubic x4 under the tutorial protocol:
    Set5 28.43 / 0.8230."""
    paths = list_image_files(str(SHARED_DATA / 'Set5'))
    for scale in (2, 4):
        luma, rgb = (eval_script.evaluate_dataset(eval_script.BicubicMethod(arch, scale, 'cpu'), 'Set5', paths,
                                                  ('standard',))['standard_psnr'] for arch in ('bicubic', 'bicubic-rgb'))
        assert 0 < luma - rgb < 0.02, (scale, luma, rgb)
    tutorial = eval_script.evaluate_dataset(eval_script.BicubicMethod('bicubic', 4, 'cpu'), 'Set5', paths,
                                            ('tutorial',))
    claim = re.search(r"Under the tutorial protocol bicubic x4 gives Set5 (\d+\.\d+) / (\d+\.\d+)",
                      doc_text('evaluation.md')).groups()
    assert (f"{tutorial['tutorial_psnr']:.2f}", f"{tutorial['tutorial_ssim']:.4f}") == claim


# ----------------------------------------------------------------------------------------------
# A file that stores one grey channel is its own Y (standard protocol), as the papers' MATLAB scripts
# ----------------------------------------------------------------------------------------------


def psnr_by_hand(a, b, border):
    """PSNR with peak 255 between two (H, W) arrays, ``border`` pixels removed per side."""
    a = np.asarray(a, dtype=np.float64)[border:-border, border:-border]
    b = np.asarray(b, dtype=np.float64)[border:-border, border:-border]
    return 10 * math.log10(255 ** 2 / np.mean((a - b) ** 2))


@pytest.mark.parametrize('arch', ['bicubic', 'bicubic-rgb'])
def test_grey_file_is_its_own_y_and_the_same_pixels_stored_as_rgb_are_not(tmp_path, arch):
    from conftest import photo_crops
    scale = 3
    grey = np.asarray(Image.fromarray(photo_crops(51, 1)[0][:50]).convert('L'))  # (50, 51): mod-cropped to (48, 51)
    Image.fromarray(grey).save(tmp_path / 'grey.png')  # mode L: one channel
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(tmp_path / 'grey_as_rgb.png')  # the same pixels, RGB
    hr = grey[:48, :51]

    def bicubic(channel):  # (H, W) uint8-valued -> the baseline's SR of it, rounded
        if arch == 'bicubic':  # the luma baseline: float64 down and up, rounded once
            sr = imresize(imresize(torch.from_numpy(channel.astype(np.float64)), 1 / scale), scale)
            return np.floor(np.clip(sr.numpy(), 0, 255) + 0.5)
        lr = imresize(torch.from_numpy(channel.astype(np.uint8)), 1 / scale).double() / 255  # from the uint8 LR
        return np.floor(np.clip(imresize(lr, scale).numpy(), 0, 1) * 255 + 0.5)

    method = eval_script.BicubicMethod(arch, scale, 'cpu')
    as_grey = eval_script.evaluate_dataset(method, 'G', [str(tmp_path / 'grey.png')], ('standard',))
    assert as_grey['standard_psnr'] == pytest.approx(psnr_by_hand(bicubic(hr), hr, scale), abs=1e-9)
    # stored as RGB, the same pixels go through the BT.601 formula (Y in [16, 235]): another, higher PSNR
    as_rgb = eval_script.evaluate_dataset(method, 'G', [str(tmp_path / 'grey_as_rgb.png')], ('standard',))
    hr_y = y_uint8(np.stack([hr] * 3, axis=-1))
    sr_y = bicubic(hr_y) if arch == 'bicubic' else y_uint8(np.stack([bicubic(hr)] * 3, axis=-1))
    assert as_rgb['standard_psnr'] == pytest.approx(psnr_by_hand(sr_y, hr_y, scale), abs=1e-9)
    assert as_rgb['standard_psnr'] > as_grey['standard_psnr'] + 0.5


# ----------------------------------------------------------------------------------------------
# End to end through the command line. Every command line is run once by the `cli` fixture; the tests below check
# one run each.
# ----------------------------------------------------------------------------------------------


class World:
    """Inputs of the command-line runs, built once per module."""


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    w = World()
    w.root = root = tmp_path_factory.mktemp('eval_cli')
    w.synth = write_images(root / 'Synth', seed=0)
    w.sr_images = write_images(root / 'SRSynth', seed=1)
    w.model = tiny_srresnet()
    standard_fn, tutorial_fn = srresnet_functions(w.model)
    w.srresnet_expected = expected_means(list_image_files(w.sr_images), 4, standard_fn, tutorial_fn)
    w.checkpoints = {'suite': suite_checkpoint(w.model, root / 'checkpoint_srresnet.pth'),
                     'seed': seed_checkpoint(w.model, root / 'seed_srresnet.pth'),
                     'srgan': srgan_checkpoint(w.model, root / 'checkpoint_srgan.pth'),
                     'srgan_seed': srgan_checkpoint(w.model, root / 'seed_srgan.pth', with_config=False)}
    torch.manual_seed(0)
    w.espcn_config = models.model_config('espcn', 3, channels=[8, 4])
    w.espcn = models.build_model('espcn', w.espcn_config).eval()
    w.espcn_checkpoint = str(root / 'checkpoint_espcn.pth')
    save_checkpoint({'format_version': 1, 'arch': 'espcn', 'model_config': w.espcn_config, 'epoch': 1,
                     'model': w.espcn.state_dict()}, w.espcn_checkpoint)
    w.legacy = str(root / 'legacy.pth')
    torch.save({'epoch': 3, 'model': w.model}, w.legacy)  # the tutorial's old format: a pickled module
    w.converted = str(root / 'converted.pth')
    (root / 'empty').mkdir()
    w.bad = write_images(root / 'bad', sizes=((48, 48),))  # a good image first, then a bad one
    (root / 'bad' / 'zz_not_an_image.png').write_bytes(b'this is not a PNG file\n' * 10)
    w.small = write_images(root / 'small', sizes=((48, 48), (16, 16)))
    return w


def cli_cases(w):
    """name -> eval.py arguments (each run gets its own --results-dir)."""
    sr = w.sr_images
    cases = {
        'bicubic_folder': ['--arch', 'bicubic', '--test-folders', w.synth],
        'espcn': ['--checkpoint', w.espcn_checkpoint, '--test-folders', w.synth],  # scale from the checkpoint
        'scale_mismatch': ['--checkpoint', w.checkpoints['suite'], '--scale', 2, '--test-folders', sr],
        'missing_checkpoint': ['--checkpoint', w.root / 'nope.pth', '--test-folders', sr],
        'empty_folder': ['--arch', 'bicubic', '--test-folders', w.root / 'empty'],
        'not_an_image': ['--arch', 'bicubic', '--test-folders', w.bad],
    }
    for fmt in ('suite', 'seed', 'srgan'):
        cases[f"srresnet_{fmt}"] = ['--checkpoint', w.checkpoints[fmt], '--test-folders', sr]
    cases.update({
        'srresnet_srgan_seed': ['--checkpoint', w.checkpoints['srgan_seed'], '--test-folders', sr],
        'directory_checkpoint': ['--checkpoint', w.root, '--test-folders', sr],
        'too_small': ['--arch', 'bicubic', '--test-folders', w.small],
        'missing_data_list': ['--arch', 'bicubic', '--data-folder', w.root, '--datasets', 'Set5'],
        'legacy_checkpoint': ['--checkpoint', w.legacy, '--test-folders', sr],
        'convert_legacy': ['--convert-legacy', w.legacy, w.converted],
    })
    if (SHARED_DATA / 'Set5').is_dir():
        cases['set5_x4'] = ['--arch', 'bicubic', '--scale', 4, '--test-folders', SHARED_DATA / 'Set5',
                            '--protocol', 'standard']
    return cases


@pytest.fixture(scope='module')
def cli(world):
    """name -> (returncode, stdout, stderr, results dir) of `python eval.py ...` from the repository root: one
    command line in a process of its own (a refusal's exit code and line as a shell gets them), the others through
    eval.main under utils.run_cli in this process (conftest.run_here: no interpreter start-up each)."""
    runs = {}
    for name, args in cli_cases(world).items():
        results = world.root / f"results_{name}"
        run = run_script if name == 'missing_checkpoint' else run_here
        result = run('eval.py', *args, '--results-dir', results, '--device', 'cpu')
        runs[name] = (result.returncode, result.stdout, result.stderr, str(results))
    return runs


@requires_shared_data
def test_cli_bicubic_set5_x4_prints_the_papers_row(cli):
    returncode, stdout, stderr, _ = cli['set5_x4']
    assert returncode == 0, stderr
    row = next(line.split() for line in stdout.splitlines() if line.startswith('Set5'))
    assert row[1:4] == ['5', '28.42', '0.8104']


def test_cli_bicubic_on_a_folder(cli, world):
    returncode, stdout, stderr, results = cli['bicubic_folder']
    assert returncode == 0, stderr
    assert 'standard PSNR' in stdout and 'tutorial PSNR' in stdout and 'ms/image' in stdout
    md, summary, rows = read_reports(results, 'bicubic', 4)
    check_report_metadata(md, summary, rows, ('standard', 'tutorial'), 4)
    assert summary['model'] == 'bicubic' and summary['checkpoint'] is None
    paths = list_image_files(world.synth)
    standard = [bicubic_y_standard(p, 4) for p in paths]
    expected = {'standard_psnr': np.mean([v[0] for v in standard]), 'standard_ssim': np.mean([v[1] for v in standard])}
    expected.update(expected_means(paths, 4, tutorial_fn=pil_bicubic_tutorial(4)))
    (row,) = summary['datasets']
    assert row['name'] == 'Synth' and row['images'] == 2 and row['ms_per_image'] > 0
    assert_close_to(row, expected)
    assert len(rows) == 4  # 2 images x 2 protocols
    per_image = {(r['image'], r['protocol']): float(r['psnr']) for r in rows}
    assert per_image[('img_0.png', 'standard')] == pytest.approx(standard[0][0], abs=1e-5)


@pytest.mark.parametrize('fmt, report', [('suite', 'srresnet'), ('seed', 'seed_srresnet'), ('srgan', 'srgan'),
                                         ('srgan_seed', 'seed_srgan')])
def test_cli_srresnet_checkpoints_both_protocols(cli, world, fmt, report):
    returncode, stdout, stderr, results = cli[f"srresnet_{fmt}"]
    assert returncode == 0, stderr
    md, summary, rows = read_reports(results, report, 4)
    check_report_metadata(md, summary, rows, ('standard', 'tutorial'), 4, world.checkpoints[fmt])
    assert summary['model'] == 'srresnet'
    (row,) = summary['datasets']
    assert row['images'] == 2
    assert_close_to(row, world.srresnet_expected)
    # really two protocols
    assert world.srresnet_expected['standard_psnr'] != pytest.approx(world.srresnet_expected['tutorial_psnr'],
                                                                     abs=1e-3)


def test_cli_y_channel_model(cli, world):
    returncode, stdout, stderr, results = cli['espcn']
    assert returncode == 0, stderr
    md, summary, rows = read_reports(results, 'espcn', 3)
    check_report_metadata(md, summary, rows, ('standard', 'tutorial'), 3, world.espcn_checkpoint)

    @torch.no_grad()
    def own_y(lr_u8):  # the model sees the unrounded BT.601 Y of the LR, in [0, 1]; its output is the SR luma
        r, g, b = lr_u8.double() / 255
        y = (16 + 65.481 * r + 128.553 * g + 24.966 * b) / 255
        return 'y', world.espcn(y[None, None].float())[0, 0].double().numpy()
    (row,) = summary['datasets']
    assert_close_to(row, expected_means(list_image_files(world.synth), 3, standard_fn=own_y))
    assert math.isfinite(row['tutorial_psnr']) and -1 <= row['tutorial_ssim'] <= 1


@pytest.mark.parametrize('case, message', [
    ('scale_mismatch', 'not x2'),
    ('missing_checkpoint', 'no such file'),
    ('directory_checkpoint', 'directory'),
    ('empty_folder', 'no image files'),
    ('not_an_image', 'zz_not_an_image.png'),
    ('too_small', 'too small for x4'),
    ('missing_data_list', 'Set5_test_images.json'),
    ('legacy_checkpoint', '--convert-legacy'),
])
def test_cli_user_errors_exit_2_without_output(cli, case, message):
    returncode, stdout, stderr, results = cli[case]
    assert returncode == 2, stderr
    assert stderr.startswith('error:') and message in stderr
    assert len(stderr.strip().splitlines()) == 1, stderr  # one line, no traceback
    assert files_under(results) == []  # nothing written, not even for the images evaluated before the bad one


def test_cli_convert_legacy_then_evaluate(cli, world):
    returncode, stdout, stderr, _ = cli['convert_legacy']
    assert returncode == 0, stderr
    method = eval_script.load_method(eval_script.resolve_args(
        eval_script.build_parser(), ['--checkpoint', world.converted]), 'cpu')
    assert method.arch == 'srresnet' and method.scale == 4
    result = eval_script.evaluate_dataset(method, 'SRSynth', list_image_files(world.sr_images),
                                          ('standard', 'tutorial'))
    assert_close_to(result, world.srresnet_expected)


# ----------------------------------------------------------------------------------------------
# In-process: functions and flags
# ----------------------------------------------------------------------------------------------


def test_bicubic_rgb_is_bicubic_from_the_uint8_lr(tmp_path):
    folder = write_images(tmp_path / 'Synth', seed=3)
    paths = list_image_files(folder)
    result = eval_script.evaluate_dataset(eval_script.BicubicMethod('bicubic-rgb', 4, 'cpu'), 'Synth', paths,
                                          ('standard', 'tutorial'))

    def upscale(lr_u8):  # MATLAB bicubic of the rounded RGB LR, as for an RGB model
        return imresize(lr_u8.double() / 255, 4).numpy()
    expected = expected_means(paths, 4, upscale, pil_bicubic_tutorial(4))
    assert_close_to(result, {k: v for k, v in expected.items() if k.startswith('standard')}, 1e-6, 1e-7)
    assert_close_to(result, {k: v for k, v in expected.items() if k.startswith('tutorial')})
    luma = eval_script.evaluate_dataset(eval_script.BicubicMethod('bicubic', 4, 'cpu'), 'Synth', paths,
                                        ('standard',))
    assert luma['standard_psnr'] != result['standard_psnr']  # two different baselines


def test_data_list_mode_and_report_writing(tmp_path):
    folder = write_images(tmp_path / 'Synth', seed=4)
    data = tmp_path / 'data'
    data.mkdir()
    (data / 'Synth_test_images.json').write_text(json.dumps([os.path.abspath(p) for p in list_image_files(folder)]))
    results = tmp_path / 'results'
    args = ['--arch', 'bicubic', '--scale', '2', '--data-folder', str(data), '--datasets', 'Synth',
            '--protocol', 'tutorial', '--results-dir', str(results), '--device', 'cpu']
    assert eval_script.main(args) == 0
    md, summary, rows = read_reports(results, 'bicubic', 2)
    check_report_metadata(md, summary, rows, ('tutorial',), 2)
    assert 'standard PSNR' not in md
    (row,) = summary['datasets']
    assert row['source'].endswith('Synth_test_images.json') and 'standard_psnr' not in row
    assert_close_to(row, expected_means(list_image_files(folder), 2, tutorial_fn=pil_bicubic_tutorial(2)))


def test_flag_conflicts_are_usage_errors(capsys):
    parser = eval_script.build_parser()
    with pytest.raises(SystemExit) as e:
        eval_script.resolve_args(parser, ['--arch', 'bicubic', '--checkpoint', 'x.pth'])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        eval_script.resolve_args(parser, ['--datasets', 'Set5', '--test-folders', 'data/Set5'])
    with pytest.raises(SystemExit):
        eval_script.resolve_args(parser, ['--scale', '5'])
    args = eval_script.resolve_args(parser, [])
    assert args.checkpoint == checkpoints.default_checkpoint(log=lambda line: None) and args.scale is None
    assert args.protocols == ('standard', 'tutorial')
    assert eval_script.resolve_args(parser, ['--arch', 'bicubic-rgb']).scale == 4


def test_arch_flag_is_checked_against_the_checkpoint(tmp_path):
    checkpoint = suite_checkpoint(tiny_srresnet(), tmp_path / 'c.pth')
    parser = eval_script.build_parser()
    with pytest.raises(UserError, match='srresnet'):
        eval_script.load_method(eval_script.resolve_args(parser, ['--checkpoint', checkpoint, '--arch', 'edsr']),
                                'cpu')
    for arch in ('srresnet', 'srgan'):
        method = eval_script.load_method(eval_script.resolve_args(parser, ['--checkpoint', checkpoint, '--arch',
                                                                           arch]), 'cpu')
        assert method.arch == 'srresnet'


def test_report_names():
    assert eval_script.report_name(os.path.join('results', 'checkpoint_srresnet.pth'), 'srresnet') == 'srresnet'
    assert eval_script.report_name('checkpoint_srgan_best.pth', 'srresnet') == 'srgan_best'
    assert eval_script.report_name('my_model.pth', 'edsr') == 'my_model'
    assert eval_script.report_name(None, 'bicubic') == 'bicubic'


def test_minimum_sizes():
    # standard: SSIM's 11x11 window after removing `scale` pixels per side; tutorial: 7x7 after 4 per side
    assert eval_script.min_side(4, ('standard',)) == 11 + 2 * 4
    assert eval_script.min_side(8, ('standard', 'tutorial')) == 11 + 2 * 8
    assert eval_script.min_side(2, ('tutorial',)) == 7 + 2 * 4
    assert eval_script.min_side(4, ('tutorial',), min_lr_size=5) == 20
    eval_script.check_size('ok.png', Image.new('RGB', (23, 40)), 4, ('standard',))  # 20 after the mod crop
    with pytest.raises(UserError, match='too small'):
        eval_script.check_size('x.png', Image.new('RGB', (19, 40)), 4, ('standard',))  # 16 after the crop



# ----------------------------------------------------------------------------------------------
# All or nothing, inputs that are not files, diverged models, big images (issue 12)
# ----------------------------------------------------------------------------------------------


def run_main_here(argv):
    """(exit code, stdout, stderr) of eval.main(argv) under utils.run_cli, as the command line runs it."""
    result = run_here('eval.py', *argv, '--device', 'cpu')
    return result.returncode, result.stdout, result.stderr


@pytest.mark.parametrize('failing_file', [2, 3])
def test_report_set_is_complete_or_absent_when_a_write_fails(tmp_path, monkeypatch, failing_file):
    """Disk full while writing the 2nd or 3rd report: no new report at all (today the .md stayed without its
    .json), and an earlier set of the same name stays exactly as it was; no temp file is left."""
    from conftest import fail_nth_file_sync
    folder = write_images(tmp_path / 'Synth', seed=5)
    args = ['--arch', 'bicubic', '--test-folders', folder, '--protocol', 'standard']
    fresh, kept = tmp_path / 'fresh', tmp_path / 'kept'
    assert run_main_here(args + ['--results-dir', kept])[0] == 0
    old = {f: (kept / f).read_bytes() for f in files_under(kept)}
    assert len(old) == 3
    for results in (fresh, kept):
        with monkeypatch.context() as m:
            fail_nth_file_sync(m, failing_file)
            code, _, err = run_main_here(args + ['--results-dir', results])
        assert code == 2 and err.startswith('error: ') and err.count('\n') == 1, err
        assert 'No space left on device' in err
    assert files_under(fresh) == []
    assert {f: (kept / f).read_bytes() for f in files_under(kept)} == old


@pytest.mark.parametrize('protocol', ['both', 'tutorial'])
def test_nan_weights_stop_with_one_line_naming_the_checkpoint(tmp_path, protocol):
    """A model whose weights are NaN gave a report of black images with exit 0."""
    model = tiny_srresnet()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float('nan'))
    checkpoint = suite_checkpoint(model, tmp_path / 'diverged.pth')
    folder = write_images(tmp_path / 'Synth', seed=6)
    results = tmp_path / 'results'
    code, _, err = run_main_here(['--checkpoint', checkpoint, '--test-folders', folder, '--protocol', protocol,
                                  '--results-dir', results])
    assert code == 2 and err.count('\n') == 1 and checkpoint in err and 'NaN' in err, err
    assert files_under(results) == []


@pytest.mark.skipif(not hasattr(os, 'mkfifo'), reason='this OS has no FIFOs (os.mkfifo)')
def test_fifo_in_a_test_folder_is_named_and_never_blocks(tmp_path):
    from conftest import fifo_watchdog
    folder = write_images(tmp_path / 'Synth', sizes=((48, 48),), seed=7)
    fifo = os.path.join(folder, 'pipe.png')
    os.mkfifo(fifo)
    results = tmp_path / 'results'
    with fifo_watchdog(fifo) as watchdog:
        code, _, err = run_main_here(['--arch', 'bicubic', '--test-folders', folder, '--results-dir', results])
    assert not watchdog.fired, 'eval.py blocked on the FIFO'
    assert code == 2 and 'pipe.png' in err and 'not a regular file' in err and err.count('\n') == 1, err
    assert files_under(results) == []


def test_max_image_pixels_sets_the_decompression_bomb_limit(tmp_path):
    """Scaled down: images of 48x48 = 2304 and 50x45 = 2250 pixels; the default is PIL's limit."""
    assert eval_script.build_parser().get_default('max_image_pixels') == Image.MAX_IMAGE_PIXELS
    folder = write_images(tmp_path / 'Synth', seed=8)
    args = ['--arch', 'bicubic', '--test-folders', folder, '--protocol', 'standard']
    code, _, err = run_main_here(args + ['--results-dir', tmp_path / 'refused', '--max-image-pixels', 2303])
    assert code == 2 and 'img_0.png' in err and 'decompression bomb' in err and '--max-image-pixels' in err, err
    assert files_under(tmp_path / 'refused') == []
    code, _, err = run_main_here(args + ['--results-dir', tmp_path / 'results', '--max-image-pixels', 2304])
    assert code == 0, err
    assert read_reports(tmp_path / 'results', 'bicubic', 4)[1]['datasets'][0]['images'] == 2


def test_results_dir_naming_a_file_is_refused_before_any_work(tmp_path):
    folder = write_images(tmp_path / 'Synth', seed=9)
    (tmp_path / 'taken').write_text('a file')
    code, stdout, err = run_main_here(['--arch', 'bicubic', '--test-folders', folder, '--results-dir',
                                       tmp_path / 'taken'])
    assert code == 2 and '--results-dir' in err and 'not a folder' in err and err.count('\n') == 1, err
    assert 'evaluating' not in stdout
