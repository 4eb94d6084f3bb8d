"""eval.py on paired test sets (a folder with LR/ and HR/, or the lists of --paired-test-folders / --degrade-test):
the LR given is what the model sees, never one made from the HR; the standard protocol only."""
import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

import eval as eval_script
import inference
import models
from checkpoints import save_checkpoint
from conftest import photo_crops, run_here
from utils import imresize, psnr, rgb_to_y_uint8, ssim

SCALE = 2


def make_pair_folder(folder, hr_size=(48, 40), extra=(0, 1)):
    """LR/ and HR/: photo crops as HR (``extra`` px more than 2 x the LR per side, cut off when read) and, as LR, a
    box-filtered shrink with noise, nothing like the protocol's own bicubic LR. Returns {name: (lr, hr)} uint8 CHW."""
    (folder / 'LR').mkdir(parents=True)
    (folder / 'HR').mkdir()
    rng, out = np.random.default_rng(1), {}
    w, h = hr_size
    for i, photo in enumerate(photo_crops(64, 3)):
        hr = np.ascontiguousarray(photo[:h + extra[1], :w + extra[0]])
        small = Image.fromarray(hr[:h, :w]).resize((w // SCALE, h // SCALE), Image.Resampling.BOX)
        lr = np.clip(np.asarray(small).astype(int) + rng.integers(-20, 21, (h // SCALE, w // SCALE, 3)), 0, 255)
        lr = lr.astype(np.uint8)
        Image.fromarray(hr).save(folder / 'HR' / f"p{i}.png")
        Image.fromarray(lr).save(folder / 'LR' / f"p{i}x{SCALE}.png")  # DIV2K's naming
        out[f"p{i}.png"] = (torch.from_numpy(lr).permute(2, 0, 1), torch.from_numpy(hr).permute(2, 0, 1))
    return out


def expected_row(upscale, lr, hr):
    """PSNR / SSIM computed here: SR of the given LR, rounded, against the HR cut to 2 x the LR, on luma (a Y-channel
    model's own Y). upscale: (1, 3, h, w) in [0, 1] -> (SR RGB, SR Y or None)."""
    h, w = lr.shape[1:]
    sr, y = upscale(lr.unsqueeze(0).double() / 255.)  # (1, 3, 2h, 2w), (1, 1, 2h, 2w) or None, in [0, 1]
    if y is None:
        sr_y = rgb_to_y_uint8(torch.floor(sr[0].clamp(0, 1) * 255 + 0.5).to(torch.uint8))
    else:
        sr_y = torch.floor(y[0].double().clamp(0, 1) * 255 + 0.5)
    hr_y = rgb_to_y_uint8(hr[:, :SCALE * h, :SCALE * w])
    return psnr(sr_y, hr_y, border=SCALE), ssim(sr_y, hr_y, border=SCALE)


def run_eval(tmp_path, *args):
    return run_here('eval.py', '--results-dir', tmp_path / 'out', '--device', 'cpu', *args)


def report(tmp_path, name):
    with open(tmp_path / 'out' / f"eval_{name}_x{SCALE}.json") as f:
        return json.load(f)


def per_image(tmp_path, name):
    """{image: {'psnr': ..., 'ssim': ...}} of the per-image CSV (6 decimals)."""
    with open(tmp_path / 'out' / f"eval_{name}_x{SCALE}_per_image.csv") as f:
        return {r['image']: {m: float(r[m]) for m in ('psnr', 'ssim')} for r in csv.DictReader(f)
                if r['protocol'] == 'standard'}


def test_bicubic_on_a_paired_folder_upscales_the_lr_given(tmp_path):
    pairs = make_pair_folder(tmp_path / 'Phones')
    result = run_eval(tmp_path, '--arch', 'bicubic', '--scale', SCALE, '--test-folders', tmp_path / 'Phones')
    assert result.returncode == 0, result.stderr
    assert 'measured in the standard protocol only' in result.stdout
    data = report(tmp_path, 'bicubic')
    assert data['protocols'] == ['standard'] and any('LR images given' in n for n in data['notes'])
    assert len(data['datasets']) == 1
    rows = per_image(tmp_path, 'bicubic')
    assert set(rows) == set(pairs)
    for name, (lr, hr) in pairs.items():
        want = expected_row(lambda x: (imresize(x, SCALE), None), lr, hr)
        assert rows[name]['psnr'] == pytest.approx(want[0], abs=1e-6)
        assert rows[name]['ssim'] == pytest.approx(want[1], abs=1e-6)
        made = expected_row(lambda x: (imresize(x, SCALE), None), imresize(hr[:, :40, :48], 1 / SCALE), hr)
        assert abs(made[0] - want[0]) > 1  # the protocol's own LR would give another number


def test_a_model_on_a_paired_list_sees_the_lr_given(tmp_path):
    pairs = make_pair_folder(tmp_path / 'Phones')
    result = run_here('create_data_lists.py', '--paired-test-folders', tmp_path / 'Phones', '--scale', SCALE,
                      '--output-folder', tmp_path / 'lists')
    assert result.returncode == 0, result.stderr
    torch.manual_seed(0)
    config = models.model_config('espcn', SCALE)
    net = models.build_model('espcn', config).double().eval()
    save_checkpoint({'arch': 'espcn', 'model_config': config, 'model': net.float().state_dict()},
                    tmp_path / 'espcn.pth')
    net = net.double()
    result = run_eval(tmp_path, '--checkpoint', tmp_path / 'espcn.pth', '--datasets', 'Phones', '--data-folder',
                      tmp_path / 'lists', '--protocol', 'standard')
    assert result.returncode == 0, result.stderr
    rows = per_image(tmp_path, 'espcn')
    upscaler = inference.Upscaler(net, models.arch_spec('espcn', config), SCALE, 'cpu')
    assert set(rows) == set(pairs)
    for name, (lr, hr) in pairs.items():
        want = expected_row(upscaler.upscale, lr, hr)
        assert rows[name]['psnr'] == pytest.approx(want[0], abs=0.05)  # the model ran in fp32 there


@pytest.mark.parametrize('args, message', [
    (['--protocol', 'tutorial'], '--protocol tutorial makes the LR from the HR image'),
    (['--scale', 3], 'is not 1/3 of its HR image'),
])
def test_what_a_paired_set_cannot_be_is_refused_in_one_line(tmp_path, args, message):
    make_pair_folder(tmp_path / 'Phones', extra=(0, 0))
    for i in range(3):  # plain names, which match at any scale
        (tmp_path / 'Phones' / 'LR' / f"p{i}x2.png").rename(tmp_path / 'Phones' / 'LR' / f"p{i}.png")
    result = run_eval(tmp_path, '--arch', 'bicubic-rgb', '--test-folders', tmp_path / 'Phones', '--scale', SCALE,
                      *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / 'out').exists()


def test_the_figure_of_a_paired_set_draws_every_panel_from_the_lr_given(tmp_path, capsys):
    pairs = make_pair_folder(tmp_path / 'Phones')
    torch.manual_seed(0)
    config = models.model_config('espcn', SCALE)
    save_checkpoint({'arch': 'espcn', 'model_config': config,
                     'model': models.build_model('espcn', config).state_dict()}, tmp_path / 'espcn.pth')
    assert eval_script.main(['--checkpoint', str(tmp_path / 'espcn.pth'), '--figure', '--figure-images', 'p1',
                             '--test-folders', str(tmp_path / 'Phones'), '--results-dir', str(tmp_path / 'out')]) == 0
    out = capsys.readouterr().out
    lr, hr = pairs['p1.png']
    bicubic = expected_row(lambda x: (imresize(x, SCALE), None), lr, hr)
    assert "Phones/p1: box " in out and f"bicubic {bicubic[0]:.2f} dB / {bicubic[1]:.4f}" in out, out
    assert (tmp_path / 'out' / f"figure_espcn_x{SCALE}.png").is_file()
