"""--weights ema|raw: checkpoints holding an exponential moving average of their weights ('model_ema' /
'generator_ema' next to 'model' / 'generator', plus 'ema_decay', as the trainers write them with --ema-decay; and
BasicSR's 'params_ema' next to 'params') are read with the average by default and with the trained weights on
request, through checkpoints.describe_checkpoint and eval.py, test.py and export.py.

The checkpoints are built here by hand: two tiny SRResNets with different random weights, one stored as the raw
weights and one as the average. Expected metrics and pixels come from those networks' own forward passes, run
here (test_eval.py's and test_test_script.py's independent computations).
"""
import os

import numpy as np
import pytest
import torch
from PIL import Image

import checkpoints
import export as export_script
import models
from test_eval import (TINY_CONFIG, expected_standard, read_reports, run_main_here, srresnet_functions, tiny_srresnet,
                       write_images)
from test_test_script import expected_sr, read, run_main
from checkpoints import load_checkpoint, save_checkpoint
from utils import UserError, list_image_files

SIZES = ((40, 36), (44, 48))  # (width, height)


@pytest.fixture(scope='module')
def nets():
    """(raw, ema): tiny SRResNets with different weights, so their outputs tell them apart."""
    return tiny_srresnet(seed=0), tiny_srresnet(seed=1)


def srresnet_checkpoint(path, raw, ema=None, decay=0.999):
    """As train_srresnet.py writes it, plus 'model_ema' and 'ema_decay' when ``ema`` is given."""
    ckpt = {'format_version': 1, 'arch': 'srresnet', 'model_config': TINY_CONFIG, 'epoch': 1,
            'model': raw.state_dict()}
    if ema is not None:
        ckpt.update(model_ema=ema.state_dict(), ema_decay=decay)
    save_checkpoint(ckpt, str(path))
    return str(path)


def srgan_checkpoint(path, raw, ema):
    """As train_srgan.py writes it: the generator's SRResNet under 'net.', and its average likewise."""
    disc = models.Discriminator(n_channels=8, n_blocks=2, fc_size=16)
    save_checkpoint({'format_version': 1, 'arch': 'srgan', 'generator_config': TINY_CONFIG, 'epoch': 1,
                     'generator': {'net.' + k: v for k, v in raw.state_dict().items()},
                     'generator_ema': {'net.' + k: v for k, v in ema.state_dict().items()}, 'ema_decay': 0.99,
                     'discriminator': disc.state_dict()}, str(path))
    return str(path)


def same_weights(state, net):
    reference = net.state_dict()
    return state.keys() == reference.keys() and all(torch.equal(state[k], reference[k]) for k in state)


def test_describe_checkpoint_takes_the_average_by_default_and_the_raw_weights_on_request(tmp_path, nets):
    raw, ema = nets
    for path, key, decay in ((srresnet_checkpoint(tmp_path / 'r.pth', raw, ema), 'model_ema', '0.999'),
                             (srgan_checkpoint(tmp_path / 'g.pth', raw, ema), 'generator_ema', '0.99')):
        default, chosen, plain = (checkpoints.load_sr_model(path, weights=w) for w in (None, 'ema', 'raw'))
        assert same_weights(default.state, ema) and same_weights(chosen.state, ema) and same_weights(plain.state, raw)
        assert (default.selected, chosen.selected, plain.selected) == ('ema', 'ema', 'raw')
        assert any(f"EMA weights ('{key}', decay {decay})" in n for n in default.notes), default.notes
        assert any(n.startswith('raw weights') and key in n for n in plain.notes), plain.notes
    only = srresnet_checkpoint(tmp_path / 'plain.pth', raw)
    info = checkpoints.load_sr_model(only)
    assert same_weights(info.state, raw) and info.selected is None and info.notes == ()
    assert same_weights(checkpoints.load_sr_model(only, weights='raw').state, raw)
    with pytest.raises(UserError, match="--weights ema: .* holds no EMA weights") as err:
        checkpoints.load_sr_model(only, weights='ema')
    assert '\n' not in str(err.value)


def test_basicsr_params_ema_or_params_on_request():
    config = models.model_config('msrresnet', 2, n_channels=8, n_blocks=2)
    torch.manual_seed(0)
    plain, average = (models.build_model('msrresnet', config).state_dict() for _ in range(2))
    both = {'params': plain, 'params_ema': average}
    assert checkpoints.describe_checkpoint(both, 'b.pth').selected == 'ema'
    assert torch.equal(checkpoints.describe_checkpoint(both, 'b.pth').state['conv_first.weight'],
                       average['conv_first.weight'])
    raw = checkpoints.describe_checkpoint(both, 'b.pth', weights='raw')
    assert raw.selected == 'raw' and torch.equal(raw.state['conv_first.weight'], plain['conv_first.weight'])
    assert "weights from 'params' (also in the file: params_ema)" in raw.notes
    assert checkpoints.describe_checkpoint({'params': plain}, 'p.pth').selected is None
    with pytest.raises(UserError, match='--weights ema: p.pth holds no EMA weights'):
        checkpoints.describe_checkpoint({'params': plain}, 'p.pth', weights='ema')
    with pytest.raises(UserError, match='--weights raw: e.pth holds only EMA weights'):
        checkpoints.describe_checkpoint({'params_ema': average}, 'e.pth', weights='raw')


def test_eval_scores_the_average_by_default_and_the_raw_weights_with_the_flag(tmp_path, nets):
    raw, ema = nets
    folder = write_images(tmp_path / 'Synth', sizes=SIZES, seed=7)
    checkpoint = srresnet_checkpoint(tmp_path / 'checkpoint_avg.pth', raw, ema)
    expected = {}
    for name, net in (('ema', ema), ('raw', raw)):
        standard_fn, _ = srresnet_functions(net)
        expected[name] = {os.path.basename(p): expected_standard(p, 4, standard_fn) for p in list_image_files(folder)}
    for flag, used in (([], 'ema'), (['--weights', 'raw'], 'raw'), (['--weights', 'ema'], 'ema')):
        results = tmp_path / f"results_{used}_{len(flag)}"
        code, out, err = run_main_here(['--checkpoint', checkpoint, '--test-folders', folder, '--protocol', 'standard',
                                        '--results-dir', results, *flag])
        assert code == 0, err
        md, summary, rows = read_reports(results, 'avg', 4)
        for row in rows:
            psnr, ssim = expected[used][row['image']]
            other = expected['raw' if used == 'ema' else 'ema'][row['image']][0]
            assert float(row['psnr']) == pytest.approx(psnr, abs=2e-3) and float(row['ssim']) == pytest.approx(
                ssim, abs=2e-4)
            assert abs(other - psnr) > 10 * 2e-3  # the other weights score beyond the tolerance: told apart
        assert summary['weights_selected'] == used and f"({used} weights)" in md
        assert f"note: {'EMA' if used == 'ema' else 'raw'} weights (" in out
    # the raw weights' report does not replace the EMA's of the same name unless told to
    code, _, err = run_main_here(['--checkpoint', checkpoint, '--test-folders', folder, '--protocol', 'standard',
                                  '--results-dir', tmp_path / 'results_ema_0', '--weights', 'raw'])
    assert code == 2 and f"is the report of {checkpoint} (ema weights) on Synth: pass --overwrite" in err


def test_test_py_upscales_with_the_average_by_default_and_raw_with_the_flag(tmp_path, nets):
    raw, ema = nets
    checkpoint = srresnet_checkpoint(tmp_path / 'avg.pth', raw, ema)
    image = tmp_path / 'photo.png'
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, size=(14, 18, 3), dtype=np.uint8)).save(image)
    lr = np.asarray(read(image))
    for flag, used, other in (([], ema, raw), (['--weights', 'raw'], raw, ema)):
        out_dir = tmp_path / f"out_{len(flag)}"
        code, out, err = run_main('--checkpoint', checkpoint, '--image', image,
                                  '--output-dir', out_dir, '--device', 'cpu', *flag)
        assert code == 0, err
        sr = np.asarray(read(out_dir / 'photo_x4_srresnet.png')).astype(int)
        assert np.abs(sr - expected_sr(used, lr).astype(int)).max() <= 1  # fused + channels_last: float rounding
        assert np.abs(sr - expected_sr(other, lr).astype(int)).max() > 10
        assert ('note: EMA weights' if used is ema else 'note: raw weights') in out


def test_weights_ema_without_an_average_is_one_line(tmp_path, nets):
    checkpoint = srresnet_checkpoint(tmp_path / 'plain.pth', nets[0])
    folder = write_images(tmp_path / 'Synth', sizes=SIZES)
    code, _, err = run_main_here(['--checkpoint', checkpoint, '--test-folders', folder, '--weights', 'ema',
                                  '--results-dir', tmp_path / 'results'])
    assert code == 2 and err.startswith('error: --weights ema: ') and err.count('\n') == 1, err
    assert not (tmp_path / 'results').exists() or os.listdir(tmp_path / 'results') == []
    code, _, err = run_main('--checkpoint', checkpoint, '--image',
                            list_image_files(folder)[0], '--output-dir', tmp_path / 'out', '--device', 'cpu',
                            '--weights', 'ema')
    assert code == 2 and err.startswith('error: --weights ema: ') and err.count('\n') == 1, err
    assert not (tmp_path / 'out').exists() or os.listdir(tmp_path / 'out') == []
    code, _, err = run_main_here(['--arch', 'bicubic', '--test-folders', folder, '--weights', 'raw'])
    assert code == 2 and '--weights' in err  # a baseline has no weights to pick


def test_export_writes_the_average_by_default(tmp_path, nets, capsys):
    raw, ema = nets
    checkpoint = srresnet_checkpoint(tmp_path / 'avg.pth', raw, ema)
    for flag, used in (([], ema), (['--weights', 'raw'], raw)):
        out = tmp_path / f"exported_{len(flag)}.pth"
        assert export_script.main(['--checkpoint', checkpoint, '--format', 'pth', '--output', str(out), *flag]) == 0
        exported = load_checkpoint(str(out))
        assert same_weights(exported['model'], used) and 'model_ema' not in exported
        assert same_weights(checkpoints.load_sr_model(str(out)).state, used)
    assert 'note: EMA weights' in capsys.readouterr().out
