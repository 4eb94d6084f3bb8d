"""LPIPS (eval.py --metrics lpips): utils.lpips_distance on models.build_lpips, its backbone weights (a file, the
torch hub cache, neither: one line), and the LPIPS column of eval.py's three reports, for a model and for bicubic.

The backbone weights are explicitly random (a torchvision AlexNet initialised with a fixed seed, saved to a temp
file): no network. Expected values come from lpips.LPIPS itself, built and given those weights here by module
index (not through the suite's key mapping), on tensors prepared here; SR images by hand (the model's forward
pass, utils.imresize for the LR and for bicubic, as test_eval.py does).
"""
import csv
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

import eval as eval_script
import models
import utils
from conftest import photo_crops, run_here
from test_eval import (IMAGENET_MEAN, IMAGENET_STD, files_under, read_reports, run_main_here, suite_checkpoint,
                       tiny_srresnet, write_images)

# lpips builds torchvision's networks with the deprecated pretrained= argument (models.build_lpips silences it too)
pytestmark = pytest.mark.filterwarnings("ignore:.*(pretrained|weight enum).*:UserWarning")

SIZES = ((48, 48), (56, 52))  # (width, height): >= 31 px (AlexNet's smallest input) after the x4 border crop
ALEX_FILE = 'alexnet-owt-7be5be79.pth'  # torchvision's AlexNet ImageNet weights, as named in the torch hub cache


@pytest.fixture(scope='module')
def alex_state():
    """A randomly initialised torchvision AlexNet's ``features`` (seed 1234), as torchvision names them."""
    import torchvision
    torch.manual_seed(1234)
    return {f'features.{k}': v for k, v in torchvision.models.alexnet(weights=None).features.state_dict().items()}


@pytest.fixture(scope='module')
def alex_file(alex_state, tmp_path_factory):
    path = tmp_path_factory.mktemp('lpips') / 'random_alexnet.pth'
    torch.save(alex_state, path)
    return str(path)


@pytest.fixture(scope='module')
def metric(alex_file):
    return models.build_lpips('alex', alex_file)


@pytest.fixture(scope='module')
def reference(alex_state):
    """lpips.LPIPS with the package's own linear layers (its default loading) and the random AlexNet copied into
    its slices module by module. reference(sr, hr, border): sr, hr (H, W, 3) uint8 arrays -> float."""
    import lpips
    net = lpips.LPIPS(net='alex', pnet_rand=True, verbose=False).eval()
    for piece in net.net.children():  # slice1..slice5 hold torchvision's features under their own indices
        for index, module in piece.named_children():
            prefix = f'features.{index}.'
            if any(k.startswith(prefix) for k in alex_state):
                module.load_state_dict({k[len(prefix):]: v for k, v in alex_state.items() if k.startswith(prefix)})

    def run(sr, hr, border=0):
        h, w = sr.shape[:2]
        tensors = [torch.from_numpy(np.ascontiguousarray(a[border:h - border, border:w - border]))
                   .permute(2, 0, 1)[None].float() / 127.5 - 1 for a in (sr, hr)]  # (1, 3, h', w') in [-1, 1]
        with torch.no_grad():
            return net(*tensors).item()
    return run


def chw(arr):
    return torch.from_numpy(np.array(arr)).permute(2, 0, 1)  # (H, W, 3) -> (3, H, W), a writable copy


# ----------------------------------------------------------------------------------------------
# The metric
# ----------------------------------------------------------------------------------------------


def test_identical_images_give_zero_and_values_are_lpips_own(metric, reference):
    a, b, c = photo_crops(48, 3)
    assert utils.lpips_distance(metric, chw(a), chw(a)) == 0.
    assert utils.lpips_distance(metric, chw(a), chw(a), border=4) == 0.
    for border in (0, 4):
        assert utils.lpips_distance(metric, chw(a), chw(b), border) == pytest.approx(reference(a, b, border),
                                                                                     rel=1e-5, abs=1e-8)
    batch = utils.lpips_distance(metric, torch.stack([chw(a), chw(b)]), torch.stack([chw(c), chw(c)]), 4)
    assert batch.shape == (2,)  # one value per image
    assert batch.tolist() == pytest.approx([reference(a, c, 4), reference(b, c, 4)], rel=1e-5, abs=1e-8)
    assert reference(a, b) > 0.


def test_more_blur_or_noise_gives_a_larger_distance(metric):
    rng = np.random.default_rng(0)
    for img in photo_crops(64, 4):
        hr = chw(img)
        blurred = [np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(r))) for r in (0.5, 1, 2, 4)]
        grain = rng.normal(size=img.shape)
        noisy = [np.clip(img + s * grain, 0, 255).astype(np.uint8) for s in (4, 8, 16, 32)]
        for degraded in (blurred, noisy):
            values = [utils.lpips_distance(metric, chw(d), hr, border=4) for d in degraded]
            assert all(0 < v < w for v, w in zip(values, values[1:])), values


def test_shapes_are_checked(metric):
    a = torch.zeros(3, 40, 40, dtype=torch.uint8)
    with pytest.raises(ValueError, match='differ in shape'):
        utils.lpips_distance(metric, a, torch.zeros(3, 40, 41, dtype=torch.uint8))
    with pytest.raises(ValueError, match='RGB'):
        utils.lpips_distance(metric, a[:1], a[:1])


def test_smallest_sides_of_each_backbone():
    import lpips
    for net, side in models.LPIPS_MIN_SIDE.items():
        network = lpips.LPIPS(net=net, pnet_rand=True, pretrained=False, verbose=False).eval()
        with torch.no_grad():
            assert network(torch.zeros(1, 3, side, side), torch.ones(1, 3, side, side)).shape == (1, 1, 1, 1)
            with pytest.raises(RuntimeError):
                network(torch.zeros(1, 3, side - 1, side + 5), torch.ones(1, 3, side - 1, side + 5))
    # eval.py refuses smaller images first: the backbone's side after the scale-pixel border
    assert eval_script.min_side(4, ('standard',), metrics=('psnr', 'ssim', 'lpips')) == 31 + 2 * 4
    assert eval_script.min_side(2, ('standard',), metrics=('lpips',), lpips_net='vgg') == 16 + 2 * 2


# ----------------------------------------------------------------------------------------------
# Backbone weights: a file, the torch hub cache, neither
# ----------------------------------------------------------------------------------------------


def test_backbone_weights_are_read_from_the_torch_hub_cache(alex_state, metric, tmp_path, monkeypatch):
    cache = tmp_path / 'torch' / 'hub' / 'checkpoints'
    cache.mkdir(parents=True)
    torch.save(alex_state, cache / ALEX_FILE)
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))

    def no_download(*args, **kwargs):
        raise AssertionError('the cached file should have been read, not downloaded')
    monkeypatch.setattr(torch.hub, 'download_url_to_file', no_download)
    cached = models.build_lpips('alex')
    a, b = photo_crops(48, 2)
    assert utils.lpips_distance(cached, chw(a), chw(b)) == utils.lpips_distance(metric, chw(a), chw(b))


def test_bad_backbone_files_are_one_line_errors(tmp_path):
    garbage, foreign = tmp_path / 'garbage.pth', tmp_path / 'foreign.pth'
    garbage.write_bytes(b'not a checkpoint at all')
    torch.save({'features.0.weight': torch.zeros(2, 3, 3, 3)}, foreign)
    for path, message in ((tmp_path / 'absent.pth', 'no such file'), (garbage, 'not a loadable state_dict'),
                          (foreign, r"not a state_dict of torchvision's alexnet \(no 0\.bias\)")):
        with pytest.raises(models.BackboneWeightsError, match=message) as err:
            models.build_lpips('alex', str(path))
        assert '\n' not in str(err.value) and '--lpips-backbone-weights' in str(err.value)


def test_cli_without_backbone_weights_is_one_line_naming_both_ways(tmp_path, monkeypatch):
    """Offline (a proxy that refuses every connection: torch.hub's real download fails) with an empty torch hub
    cache: exit 2, one line on stderr naming the cache file and the flag, no report."""
    folder = write_images(tmp_path / 'Synth', sizes=SIZES)
    home, results = tmp_path / 'torch', tmp_path / 'results'
    for name, value in (('TORCH_HOME', str(home)), ('https_proxy', 'http://127.0.0.1:9'),
                        ('HTTPS_PROXY', 'http://127.0.0.1:9'), ('no_proxy', ''), ('NO_PROXY', '')):
        monkeypatch.setenv(name, value)
    code, out, err = run_main_here(['--arch', 'bicubic', '--test-folders', folder, '--metrics', 'psnr', 'ssim',
                                    'lpips', '--results-dir', results])
    assert code == 2, err
    assert err.startswith('error: ') and err.count('\n') == 1, err
    assert os.path.join(str(home), 'hub', 'checkpoints', ALEX_FILE) in err
    assert 'torch hub cache' in err and '--lpips-backbone-weights PATH' in err
    assert files_under(results) == []


def test_lpips_flag_conflicts_are_usage_errors(capsys):
    parser = eval_script.build_parser()
    for argv, message in ((['--arch', 'bicubic', '--metrics', 'lpips', '--protocol', 'tutorial'], 'standard'),
                          (['--arch', 'bicubic', '--lpips-net', 'vgg'], '--metrics'),
                          (['--arch', 'bicubic', '--lpips-backbone-weights', 'x.pth'], '--metrics')):
        with pytest.raises(SystemExit) as exit_info:
            eval_script.resolve_args(parser, argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    args = eval_script.resolve_args(parser, ['--arch', 'bicubic', '--metrics', 'lpips'])
    assert args.protocols == ('standard',) and args.metrics == ('lpips',)  # the tutorial protocol has no LPIPS


# ----------------------------------------------------------------------------------------------
# eval.py's reports: the LPIPS column next to PSNR and SSIM
# ----------------------------------------------------------------------------------------------


def modcropped(path, scale):
    hr = np.array(Image.open(path).convert('RGB'))
    return hr[:hr.shape[0] // scale * scale, :hr.shape[1] // scale * scale]


def srresnet_sr(model, hr, scale=4):
    """The standard protocol's SR image by hand: MATLAB-bicubic uint8 LR, the model on its ImageNet-normalised
    [0, 1] values, its [-1, 1] output rounded to uint8. (H, W, 3) uint8."""
    lr = utils.imresize(chw(hr), 1. / scale).numpy().astype(np.float32) / 255  # (3, h, w)
    with torch.no_grad():
        out = model(torch.from_numpy((lr - IMAGENET_MEAN) / IMAGENET_STD)[None])[0]  # (3, H, W) in [-1, 1]
    return torch.floor(((out + 1) / 2).clamp(0, 1) * 255 + 0.5).byte().permute(1, 2, 0).numpy()


def bicubic_sr(hr, scale=4):
    """--arch bicubic's RGB image by hand: imresize down and up in float64, rounded once."""
    x = chw(hr).double()
    out = utils.imresize(utils.imresize(x, 1. / scale), scale)
    return torch.floor(out.clamp(0, 255) + 0.5).byte().permute(1, 2, 0).numpy()


def check_lpips_reports(results, name, expected):
    """The LPIPS column in the .md, .json and .csv, next to PSNR and SSIM; expected: {image: LPIPS}."""
    md, summary, rows = read_reports(results, name, 4)
    header = next(line for line in md.splitlines() if line.startswith('| dataset'))
    assert '| standard PSNR | standard SSIM | standard LPIPS (lower is better) |' in header
    assert 'LPIPS v0.1 (alex; lower is better) on RGB in [-1, 1]' in md
    assert summary['metrics'] == ['psnr', 'ssim', 'lpips'] and summary['lpips']['better'] == 'lower'
    assert summary['datasets'][0]['standard_lpips'] == pytest.approx(np.mean(list(expected.values())), rel=1e-5)
    assert 'standard_psnr' in summary['datasets'][0] and 'standard_ssim' in summary['datasets'][0]
    standard = [r for r in rows if r['protocol'] == 'standard']
    assert {r['image']: float(r['lpips']) for r in standard} == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert all(r['psnr'] and r['ssim'] for r in standard)
    assert all(r['lpips'] == '' for r in rows if r['protocol'] == 'tutorial')  # LPIPS: standard protocol only


def test_cli_writes_the_lpips_column_in_all_three_reports(tmp_path, alex_file, reference):
    folder = write_images(tmp_path / 'Synth', sizes=SIZES, seed=3)
    model = tiny_srresnet()
    checkpoint = suite_checkpoint(model, tmp_path / 'checkpoint_tiny.pth')
    res = run_here('eval.py', '--checkpoint', checkpoint, '--test-folders', folder, '--metrics', 'psnr', 'ssim',
                   'lpips', '--lpips-backbone-weights', alex_file, '--results-dir', tmp_path / 'results',
                   '--device', 'cpu')
    assert res.returncode == 0, res.stderr
    assert 'standard LPIPS (lower is better)' in res.stdout
    expected = {}
    for path in utils.list_image_files(folder):
        hr = modcropped(path, 4)
        expected[os.path.basename(path)] = reference(srresnet_sr(model, hr), hr, border=4)
    check_lpips_reports(tmp_path / 'results', 'tiny', expected)


def test_bicubic_gets_lpips_too(tmp_path, alex_file, reference):
    folder = write_images(tmp_path / 'Synth', sizes=SIZES, seed=4)
    results = tmp_path / 'results'
    code, out, err = run_main_here(['--arch', 'bicubic', '--test-folders', folder, '--metrics', 'psnr', 'ssim',
                                    'lpips', '--lpips-backbone-weights', alex_file, '--results-dir', results])
    assert code == 0, err
    expected = {}
    for path in utils.list_image_files(folder):
        hr = modcropped(path, 4)
        expected[os.path.basename(path)] = reference(bicubic_sr(hr), hr, border=4)
    check_lpips_reports(results, 'bicubic', expected)
    with open(results / 'eval_bicubic_x4.json') as f:
        assert 'same float64 bicubic on RGB' in json.load(f)['lpips']['definition']
    with open(results / 'eval_bicubic_x4_per_image.csv', newline='') as f:
        assert 'lpips' in next(csv.reader(f))
