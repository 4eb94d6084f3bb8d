"""The primary model, results/srresnet_x4_291.pth (the tutorial's SRResNet x4 trained on T91 + BSD200 with --recipe
cpu-291): the tutorial's network unchanged, the default of test.py, eval.py, app.py and train_srgan.py's warm start
when the user has trained none of their own (one line says which), and the numbers docs/architectures.md prints
for it."""
import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image

import checkpoints
import eval as eval_script
import models
from conftest import REPO_ROOT, SHARED_DATA, doc_text, photo_crops, requires_shared_data, run_here
from utils import list_image_files

SHIPPED = REPO_ROOT / 'results' / 'srresnet_x4_291.pth'


def test_the_shipped_file_is_the_tutorials_network_with_its_recipe_recorded():
    ckpt = checkpoints.load_checkpoint(str(SHIPPED))
    assert ckpt['arch'] == 'srresnet' and ckpt['model_config'] == models.model_config('srresnet', 4)
    model = models.SRResNet()  # the tutorial's constants: 16 blocks, 64 channels, x4
    assert sum(p.numel() for p in model.parameters()) == 1_549_462
    assert ckpt['model'].keys() == model.state_dict().keys()  # the EMA weights, shipped as the model
    assert 'EMA' in ckpt['notes'][0] and ckpt['ema_decay'] == 0.999 and ckpt['ema_warmup'] is True
    assert not {'optimizer', 'model_ema', 'rng'} & set(ckpt)  # nothing resume-only: ~6 MB
    args = ckpt['args']
    assert args['recipe'] == 'cpu-291' and args['data_folder'] == 'data/291' and args['results_dir'] == 'results'
    assert not any('/work' in str(v) or '/tmp' in str(v) for v in args.values())  # no machine paths shipped
    assert SHIPPED.stat().st_size < 7 * 2 ** 20


def photo(path, size=32):
    Image.fromarray(photo_crops(size, 1)[0]).save(path)


def test_test_py_without_a_checkpoint_uses_the_shipped_model_then_your_own(tmp_path):
    """A fresh clone: no results/checkpoint_srresnet.pth, so the shipped x4 model upscales (and says so); once the
    user has trained one, theirs is used (and said)."""
    photo(tmp_path / 'photo.png')
    result = run_here('test.py', '--image', 'photo.png', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert re.search(r"checkpoint: .*srresnet_x4_291\.pth \(the shipped SRResNet x4", result.stdout), result.stdout
    out = Image.open(tmp_path / 'results' / 'photo_x4_srresnet.png')
    assert out.size == (128, 128)
    own = models.SRResNet(n_blocks=2, n_channels=8)  # a user's SRResNet x4 (tiny here)
    (tmp_path / 'results' / 'checkpoint_srresnet.pth').parent.mkdir(exist_ok=True)
    checkpoints.save_checkpoint({'format_version': checkpoints.FORMAT_VERSION, 'arch': 'srresnet',
                                 'model_config': models.model_config('srresnet', 4, n_blocks=2, n_channels=8),
                                 'model': own.state_dict()}, str(tmp_path / 'results' / 'checkpoint_srresnet.pth'))
    result = run_here('test.py', '--image', 'photo.png', '--output-dir', 'mine', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert 'checkpoint: results/checkpoint_srresnet.pth (your own SRResNet' in result.stdout, result.stdout
    shipped_pixels = np.asarray(out)
    assert not np.array_equal(np.asarray(Image.open(tmp_path / 'mine' / 'photo_x4_srresnet.png')), shipped_pixels)


def test_eval_py_defaults_to_your_own_then_the_shipped_model(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    settings = eval_script.resolve_args(eval_script.build_parser(), [])
    assert os.path.samefile(settings.checkpoint, SHIPPED) and 'the shipped SRResNet x4' in capsys.readouterr().out
    (tmp_path / 'results').mkdir()
    shutil.copy(SHIPPED, tmp_path / 'results' / 'checkpoint_srresnet.pth')
    settings = eval_script.resolve_args(eval_script.build_parser(), [])
    assert settings.checkpoint == os.path.join('results', 'checkpoint_srresnet.pth')
    assert 'your own SRResNet' in capsys.readouterr().out
    assert eval_script.resolve_args(eval_script.build_parser(), ['--arch', 'bicubic']).checkpoint is None


def test_no_checkpoint_at_all_is_one_line_naming_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoints, 'shipped_checkpoint', lambda name=None: str(tmp_path / 'gone.pth'))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(checkpoints.UserError, match='pass --checkpoint FILE'):
        checkpoints.default_checkpoint()


def test_train_srgan_warm_starts_from_the_shipped_srresnet(tmp_path, tiny_dataset):
    """No SRResNet of the user's: the GAN's generator starts from the shipped one (said in one line) and trains
    a few steps (random VGG19 weights here: the real ones cannot be downloaded in tests)."""
    result = run_here('train_srgan.py', '--data-folder', tiny_dataset['data'], '--results-dir', tmp_path / 'results',
                      '--runs-dir', tmp_path / 'runs', '--vgg-weights', 'random', '--crop-size', 24,
                      '--batch-size', 2, '--epochs', 1, '--max-steps', 2, '--device', 'cpu', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert 'warm start: the shipped SRResNet x4' in result.stdout, result.stdout
    ckpt = checkpoints.load_checkpoint(str(tmp_path / 'results' / 'checkpoint_srgan.pth'))
    assert ckpt['generator_config'] == models.model_config('srresnet', 4)
    assert ckpt['step'] == 2


def documented_scores():
    """docs/architectures.md's row of the shipped SRResNet x4: {(protocol, set): (PSNR, SSIM)}."""
    text = doc_text('architectures.md')
    out = {}
    for protocol in ('standard', 'tutorial'):
        line = next(line for line in text.splitlines() if line.startswith(f"| this suite's SRResNet, {protocol}"))
        cells = [c.strip() for c in line.strip('|').split('|')][1:4]
        for name, cell in zip(('Set5', 'Set14', 'BSD100'), cells):
            psnr, ssim = cell.split(' / ')
            out[protocol, name] = (psnr, ssim)
    return out


@requires_shared_data
def test_the_shipped_model_scores_what_the_docs_say_on_set5():
    """docs/architectures.md's Set5 x4 figures of the shipped file, in both protocols, to their printed precision
    (Set14 and BSD100 take minutes on 2 cores: benchmarks/bench_cpu_quality.py)."""
    model = checkpoints.load_sr_model(str(SHIPPED), 'cpu')
    method = eval_script.ModelMethod(model, 'cpu')
    result = eval_script.evaluate_dataset(method, 'Set5', list_image_files(str(SHARED_DATA / 'Set5')),
                                          ('standard', 'tutorial'))
    documented = documented_scores()
    for protocol in ('standard', 'tutorial'):
        psnr, ssim = documented[protocol, 'Set5']
        assert abs(result[f'{protocol}_psnr'] - float(psnr)) <= 0.005, (protocol, result[f'{protocol}_psnr'])
        assert abs(result[f'{protocol}_ssim'] - float(ssim)) <= 0.00005, (protocol, result[f'{protocol}_ssim'])
    assert float(documented['standard', 'Set5'][0]) > 28.42 + 2  # far above bicubic's 28.42


REAL = REPO_ROOT / 'results' / 'srresnet_x4_real.pth'


def documented_real_row(model):
    """docs/real-photos.md's row of ``model`` (a shipped file name): {column: (PSNR, SSIM)}."""
    line = next(line for line in doc_text('real-photos.md').splitlines()
                if line.startswith('| ') and f"`results/{model}`" in line)
    cells = [c.strip() for c in line.strip('|').split('|')][1:]
    columns = ('degraded Set5', 'degraded Set14', 'degraded BSD100', 'Set5', 'Set14', 'BSD100')
    return {name: tuple(float(v) for v in cell.split(' / ')) for name, cell in zip(columns, cells)}


def test_the_real_photo_model_is_the_same_network_fine_tuned_on_degradations_with_its_own_name():
    ckpt = checkpoints.load_checkpoint(str(REAL))
    assert ckpt['arch'] == 'srresnet' and ckpt['model_config'] == models.model_config('srresnet', 4)
    assert ckpt['model'].keys() == models.SRResNet().state_dict().keys() and ckpt['label'] == 'srresnet_real'
    args = ckpt['args']
    assert args['degradation'] == 'light' and args['degradation_opt'] == ['clean_prob=0.3']
    assert args['init_from'] == 'results/srresnet_x4_291.pth' and args['data_folder'] == 'data/291'
    assert not any('/work' in str(v) or '/tmp' in str(v) for v in args.values())  # no machine paths shipped
    assert not {'optimizer', 'model_ema', 'rng'} & set(ckpt) and REAL.stat().st_size < 7 * 2 ** 20
    assert checkpoints.load_sr_model(str(REAL)).label == 'srresnet_real'  # its outputs: <stem>_x4_srresnet_real.png
    assert checkpoints.shipped_model('photo') == str(REAL) and checkpoints.shipped_model('clean') == str(SHIPPED)


@requires_shared_data
def test_the_real_photo_model_scores_what_the_docs_say_on_clean_set5():
    method = eval_script.ModelMethod(checkpoints.load_sr_model(str(REAL), 'cpu'), 'cpu')
    result = eval_script.evaluate_dataset(method, 'Set5', list_image_files(str(SHARED_DATA / 'Set5')),
                                          ('standard',))
    psnr, ssim = documented_real_row('srresnet_x4_real.pth')['Set5']
    assert abs(result['standard_psnr'] - psnr) <= 0.005 and abs(result['standard_ssim'] - ssim) <= 0.00005, result
    clean = documented_real_row('srresnet_x4_291.pth')['Set5']
    assert clean == (31.28, 0.8815) and clean[0] - psnr <= 1.5  # within 1.5 dB of the bicubic-trained model
