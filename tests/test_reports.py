"""What the suite draws: the papers' comparison figure (eval.py --figure), the HTML report (eval.py --report html;
its rendering in a browser: test_report_browser.py) and the training curves (<run>_curves.png), with the run
history kept in the checkpoint across --resume.

Expected values are computed here independently: windows' errors summed by brute force, crops zoomed with
np.kron, PSNR / SSIM with scikit-image, bicubic through eval.py's own baseline (tested against the papers in
test_eval.py)."""
import base64
import io
import math
import re
import shlex

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

import checkpoints
import eval as eval_script
import inference
import models
import reports
import training
from checkpoints import load_checkpoint, save_checkpoint
from conftest import REPO_ROOT, SHARED_DATA, doc_text, requires_shared_data, run_here, run_script
from utils import list_image_files, load_image, pil_to_tensor

TINY = {'espcn': dict(channels=[8, 4]), 'srcnn': dict(channels=[8, 4])}


def tiny_checkpoint(folder, arch, scale=3, seed=0):
    """A checkpoint of the suite with random weights, its luma lifted mid-range (a random Y-model's is near 0)."""
    torch.manual_seed(seed)
    config = models.model_config(arch, scale, **TINY[arch])
    model = models.build_model(arch, config)
    with torch.no_grad():
        (model.conv3 if arch == 'srcnn' else model.body[-1]).bias.fill_(0.5)
    path = folder / f"{arch}_tiny.pth"
    save_checkpoint({'format_version': 1, 'arch': arch, 'model_config': config, 'model': model.state_dict(),
                     'epoch': 1}, str(path))
    return path


def papers_metrics(sr_y, hr_y, border):
    a, b = (np.asarray(t, dtype=np.float64)[border:-border, border:-border] for t in (hr_y, sr_y))
    return (peak_signal_noise_ratio(a, b, data_range=255),
            structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                  data_range=255))


# ----------------------------------------------------------------------------------------------
# The box: where a model gains most over bicubic
# ----------------------------------------------------------------------------------------------


def test_best_gain_box_is_the_window_of_largest_psnr_gain_found_by_brute_force():
    rng = np.random.default_rng(0)
    h, w, side, border = 40, 52, 12, 3
    hr = rng.integers(0, 256, (h, w)).astype(np.float64)
    ref = np.clip(hr + rng.integers(-20, 21, (h, w)), 0, 255)
    sr = np.clip(hr + rng.integers(-20, 21, (h, w)), 0, 255)
    box = reports.best_gain_box(sr, ref, hr, side, border)
    stride = side // 8
    best, expected = -math.inf, None
    for y in range(border, h - border - side + 1, stride):
        for x in range(border, w - border - side + 1, stride):
            win = (slice(y, y + side), slice(x, x + side))
            gain = 10 * math.log10(((ref[win] - hr[win]) ** 2).sum() / ((sr[win] - hr[win]) ** 2).sum())
            if gain > best:
                best, expected = gain, (x, y, side, side)
    assert box == expected
    sr[20:32, 30:42] = hr[20:32, 30:42]  # a perfect patch: no window beats it
    x, y, _, _ = reports.best_gain_box(sr, ref, hr, side, border)
    assert abs(x - 30) <= stride and abs(y - 20) <= stride
    assert reports.best_gain_box(torch.tensor(sr), torch.tensor(ref), torch.tensor(hr), side, border) == (x, y, 12, 12)
    with pytest.raises(ValueError, match='one shape'):
        reports.best_gain_box(sr, ref[:-1], hr, side, border)


# ----------------------------------------------------------------------------------------------
# The figure: what is drawn where
# ----------------------------------------------------------------------------------------------


def test_figure_shows_each_boxed_crop_zoomed_pixel_for_pixel_and_the_box_on_the_hr():
    rng = np.random.default_rng(1)
    hr = rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)
    others = [rng.integers(0, 256, (60, 90, 3), dtype=np.uint8) for _ in range(2)]
    box = (20, 10, 30, 24)
    panels = [(('bicubic', '20.00 dB / 0.5000'), others[0]), (('model', '25.00 dB / 0.7000'), others[1]),
              (('HR', 'ground truth'), hr)]
    image, layout = reports.render_figure([reports.FigureRow(('img (Set)', 'x3'), hr, box, panels)])
    pixels = np.asarray(image)
    zoom = reports.PANEL // 30  # the largest integer zoom within PANEL px
    crops = [cell for cell in layout if cell['kind'] == 'crop']
    assert [cell['label'][0] for cell in crops] == ['bicubic', 'model', 'HR']
    for cell, (_, source) in zip(crops, panels):
        x, y, w, h = cell['rect']
        assert (w, h) == (30 * zoom, 24 * zoom) and cell['zoom'] == zoom
        expected = np.kron(source[10:34, 20:50], np.ones((zoom, zoom, 1), dtype=np.uint8))
        assert np.array_equal(pixels[y:y + h, x:x + w], expected)
    (over,) = [cell for cell in layout if cell['kind'] == 'overview']
    x, y, w, h = over['rect']
    assert (w, h) == (90, 60) and over['reduce'] == 1  # small enough to be shown as it is
    shown = pixels[y:y + h, x:x + w]
    outline = np.zeros((60, 90), dtype=bool)
    outline[10:34, 20:50] = True
    outline[12:32, 22:48] = False  # the 2-px red outline of the box
    assert (shown[outline] == reports.BOX_COLOUR).all()
    assert np.array_equal(shown[~outline], hr[~outline])
    assert [c['rect'][0] for c in layout] == sorted(c['rect'][0] for c in layout)  # left to right, no overlap
    assert all(a['rect'][0] + a['rect'][2] <= b['rect'][0] for a, b in zip(layout, layout[1:]))
    again, _ = reports.render_figure([reports.FigureRow(('img (Set)', 'x3'), hr, box, panels)])
    assert reports.png_bytes(again) == reports.png_bytes(image)  # the same input, the same bytes
    with pytest.raises(ValueError, match='not inside'):
        reports.render_figure([reports.FigureRow(('t',), hr, (80, 10, 30, 24), panels)])


def test_cli_figure_compares_several_checkpoints_with_bicubic_labelled_with_their_metrics(tmp_path, tiny_dataset):
    espcn, srcnn = tiny_checkpoint(tmp_path, 'espcn'), tiny_checkpoint(tmp_path, 'srcnn')
    result = run_here('eval.py', '--checkpoint', espcn, '--checkpoint', srcnn, '--test-folders',
                      tiny_dataset['test'], '--figure', '--results-dir', tmp_path / 'out')
    assert result.returncode == 0, result.stderr
    out = tmp_path / 'out' / 'figure_espcn_tiny_srcnn_tiny_x3.png'
    assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == [out.name]  # the figure only, no tables
    paths = list_image_files(str(tiny_dataset['test']))
    lines = [line for line in result.stdout.splitlines() if line.startswith('Tiny/')]
    assert len(lines) == len(paths) == 2
    for path, line in zip(paths, lines):
        hr = pil_to_tensor(load_image(path))
        # the labels: the standard protocol's metrics of each on this image (models in fp32 here, float64 there)
        expected = {'bicubic': eval_script.BicubicMethod('bicubic', 3).standard(hr)[:2]}
        for name, ckpt in (('espcn_tiny', espcn), ('srcnn_tiny', srcnn)):
            loaded = checkpoints.load_sr_model(str(ckpt))
            upscaler = inference.Upscaler(loaded.network, loaded.spec, 3, 'cpu')
            expected[name] = inference.standard_protocol(upscaler, hr, 3)[:2]
        for name, (sr_y, hr_y) in expected.items():
            p, s = papers_metrics(sr_y.numpy(), hr_y.numpy(), 3)
            shown = re.search(rf"{name} (\d+\.\d\d) dB / (\d\.\d{{4}})", line).groups()
            assert abs(float(shown[0]) - p) <= 0.0051 and abs(float(shown[1]) - s) <= 0.00006, (name, shown, p, s)
        box = tuple(map(int, re.search(r"box (\d+),(\d+),(\d+),(\d+)", line).groups()))
        sr_y, hr_y = expected['espcn_tiny']
        assert box == reports.best_gain_box(sr_y, expected['bicubic'][0], hr_y, 63 // 4, border=3)
    with Image.open(out) as img:
        assert img.format == 'PNG' and img.width > 5 * 63 and img.height > 2 * 63
    again = run_here('eval.py', '--checkpoint', espcn, '--checkpoint', srcnn, '--test-folders',
                     tiny_dataset['test'], '--figure', '--results-dir', tmp_path / 'again')
    assert again.returncode == 0 and (tmp_path / 'again' / out.name).read_bytes() == out.read_bytes()


@requires_shared_data
def test_readme_picture_is_what_its_command_makes(tmp_path):
    """README's picture is committed byte for byte as the command under it makes it (run here on the benchmark
    images, into another folder). After changing a shipped model or the figure: run that command again."""
    readme = doc_text('README.md')
    picture = re.search(r'!\[[^]]*\]\((docs/images/[^)]+\.png)\)', readme).group(1)
    command = next(c for c in re.findall(r'`([^`]+)`', readme) if c.startswith('python eval.py') and '--figure' in c)
    argv = shlex.split(command)
    assert argv[argv.index('--results-dir') + 1] == 'docs/images'
    argv[argv.index('--results-dir') + 1] = str(tmp_path)
    argv = [a.replace('../shared/data', str(SHARED_DATA)) for a in argv]
    result = run_script(*argv[1:])
    assert result.returncode == 0, result.stderr
    made = tmp_path / picture.rsplit('/', 1)[1]
    assert made.is_file(), f"the command wrote {sorted(p.name for p in tmp_path.iterdir())}, README shows {picture}"
    committed = (REPO_ROOT / picture).read_bytes()
    assert len(committed) <= 300 * 1024  # small enough for the repository
    with Image.open(io.BytesIO(committed)) as old, Image.open(made) as new:
        assert np.array_equal(np.asarray(old), np.asarray(new)), f"{picture} is not what `{command}` makes"
    assert made.read_bytes() == committed, f"{picture}: same pixels, other PNG bytes (another Pillow / zlib?)"


def test_cli_figure_box_and_images_flags(tmp_path, tiny_dataset):
    espcn = tiny_checkpoint(tmp_path, 'espcn')
    result = run_here('eval.py', '--checkpoint', espcn, '--test-folders', tiny_dataset['test'], '--figure',
                      '--figure-images', 'img1', '--figure-box', '6,9,30,21', '--results-dir', tmp_path / 'out')
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stdout.splitlines() if line.startswith('Tiny/')]
    assert line.startswith('Tiny/img1: box 6,9,30,21;')
    for args, message in (
            (['--figure-images', 'nothing'], 'no such image'),
            (['--figure-box', '50,50,30,30'], 'not inside'),
            (['--figure-box', '1,2,3'], 'expected X,Y,W,H'),
            (['--figure-images', 'img0', 'img1', '--figure-box', '0,0,8,8', '--figure-box', '0,0,8,8',
              '--figure-box', '0,0,8,8'], 'one per --figure-images'),
            (['--report', 'html'], 'drop --report')):
        bad = run_here('eval.py', '--checkpoint', espcn, '--test-folders', tiny_dataset['test'], '--figure', *args,
                       '--results-dir', tmp_path / 'bad')
        assert bad.returncode == 2 and message in bad.stderr and 'Traceback' not in bad.stderr, (args, bad.stderr)
        assert not (tmp_path / 'bad').exists() or not list((tmp_path / 'bad').iterdir())
    for args, message in ((['--checkpoint', espcn], 'compared by --figure'),
                          (['--figure-box', '0,0,8,8'], 'are for --figure'),
                          (['--report', 'html', '--protocol', 'tutorial'], 'standard protocol')):
        bad = run_here('eval.py', '--checkpoint', espcn, '--test-folders', tiny_dataset['test'], *args)
        assert bad.returncode == 2 and message in bad.stderr, (args, bad.stderr)


# ----------------------------------------------------------------------------------------------
# The HTML report
# ----------------------------------------------------------------------------------------------


def image_cells(page):
    """[(image name, {column: data-value})] of the HTML report's per-image table, in page order."""
    body = page.split('<table id="images">', 1)[1].split('</table>', 1)[0]
    rows = []
    for row in re.findall(r'<tr>(.*?)</tr>', body.split('<tbody>', 1)[1], flags=re.S):
        name = re.search(r'<td class="name">[^/<]+/ ([^<]+)<br>', row).group(1)
        values = [float(v) for v in re.findall(r'data-value="([^"]+)"', row)]
        rows.append((name, dict(zip(('order', 'psnr', 'ssim', 'bicubic_psnr', 'bicubic_ssim', 'gain'), values))))
    return rows


def test_cli_report_html_holds_every_image_with_its_gain_over_bicubic(tmp_path, tiny_dataset):
    espcn = tiny_checkpoint(tmp_path, 'espcn')
    result = run_here('eval.py', '--checkpoint', espcn, '--test-folders', tiny_dataset['test'], '--report', 'html',
                      '--results-dir', tmp_path)
    assert result.returncode == 0, result.stderr
    page = (tmp_path / 'eval_espcn_tiny_x3.html').read_text(encoding='utf-8')
    assert 'eval_espcn_tiny_x3.html' in result.stdout
    assert '<table id="summary">' in page and re.search(r'<td class="name">Tiny</td><td>2</td>', page)
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing but data URIs: readable offline
    rows = image_cells(page)
    paths = list_image_files(str(tiny_dataset['test']))
    assert [name for name, _ in rows] == [p.rsplit('/', 1)[1] for p in paths]
    loaded = checkpoints.load_sr_model(str(espcn))
    upscaler = inference.Upscaler(loaded.network, loaded.spec, 3, 'cpu')
    for path, (_, cells) in zip(paths, rows):
        hr = pil_to_tensor(load_image(path))
        p, s = papers_metrics(*(t.numpy() for t in inference.standard_protocol(upscaler, hr, 3)[:2]), 3)
        bp, bs = papers_metrics(*(t.numpy() for t in eval_script.BicubicMethod('bicubic', 3).standard(hr)[:2]), 3)
        assert cells['psnr'] == pytest.approx(p, abs=1e-9) and cells['ssim'] == pytest.approx(s, abs=1e-9)
        assert cells['bicubic_psnr'] == pytest.approx(bp, abs=1e-9)
        assert cells['bicubic_ssim'] == pytest.approx(bs, abs=1e-9)
        assert cells['gain'] == pytest.approx(p - bp, abs=1e-9)
    images = re.findall(r'<img src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 2 * 4  # per image: the thumbnail and 3 crops (bicubic, the model, HR)
    for data in images:
        with Image.open(io.BytesIO(base64.b64decode(data))) as img:
            assert img.format == 'PNG' and min(img.size) >= 15
    csv_rows = (tmp_path / 'eval_espcn_tiny_x3_per_image.csv').read_text().splitlines()
    assert len(csv_rows) == 1 + 2 * 2  # the report set as before, html added
    without = run_here('eval.py', '--checkpoint', espcn, '--test-folders', tiny_dataset['test'], '--results-dir',
                       tmp_path / 'plain')
    assert without.returncode == 0 and not list((tmp_path / 'plain').glob('*.html'))


def test_html_report_escapes_text_and_embeds_what_it_is_given():
    png = reports.png_bytes(Image.new('RGB', (4, 3), (1, 2, 3)))
    item = reports.ReportImage('Set<5>', 'a&b.png', '4x3 px', 30.5, 0.9, 28.25, 0.8, (0, 0, 2, 2), png,
                               [('bicubic', png), ('<model>', png), ('HR', png)])
    page = reports.html_report('T <x>', ['fact & more'], (['dataset', 'images'], [['Set<5>', '1']]), [item])
    assert '<title>T &lt;x&gt;</title>' in page and 'fact &amp; more' in page and 'a&amp;b.png' in page
    assert '&lt;model&gt;' in page and '<model>' not in page
    assert page.count(reports.data_uri(png)) == 4
    assert re.search(r'data-value="2\.25">2\.25</td></tr>', page)  # the gain, 30.5 - 28.25


# ----------------------------------------------------------------------------------------------
# Training curves and the history they are drawn from
# ----------------------------------------------------------------------------------------------


def test_curves_figure_plots_the_history_against_steps_and_minutes():
    history = [{'epoch': 1, 'step': 10, 'seconds': 30., 'losses': {'loss': 0.5}, 'val_psnr_ema': 20.,
                'bicubic_psnr': 22.},
               {'epoch': 2, 'step': 20, 'seconds': 90., 'losses': {}, 'val_psnr_ema': 23., 'bicubic_psnr': 22.},
               {'epoch': 3, 'step': 30, 'seconds': 150., 'losses': {'loss': 0.25}}]
    fig = reports.curves_figure(history, 'run')
    (loss_steps, loss_minutes), (psnr_steps, psnr_minutes) = np.array(fig.axes).reshape(2, 2)
    (line,) = loss_steps.get_lines()
    assert list(line.get_xdata()) == [10, 30] and list(line.get_ydata()) == [0.5, 0.25]
    assert list(loss_minutes.get_lines()[0].get_xdata()) == [0.5, 2.5]
    ema, bicubic = psnr_steps.get_lines()
    assert ema.get_label() == 'validation PSNR, EMA weights' and list(ema.get_ydata()) == [20., 23.]
    assert bicubic.get_label() == 'bicubic' and list(bicubic.get_ydata()) == [22., 22.]
    assert list(psnr_minutes.get_lines()[0].get_xdata()) == [0.5, 1.5]
    assert len(reports.curves_figure(history[2:], 'no validation').axes) == 2  # the loss row only
    with Image.open(io.BytesIO(reports.curves_png(history, 'run'))) as img:
        assert img.format == 'PNG' and img.size == (1100, 720)


def train(tmp_path, tiny_dataset, *extra):
    return run_here('train_srresnet.py', '--n-blocks', 2, '--n-channels', 8, '--data-folder', tiny_dataset['data'],
                    '--results-dir', tmp_path, '--runs-dir', tmp_path / 'runs', '--crop-size', 24,
                    '--batch-size', 3, '--patches-per-image', 2, '--workers', 0, '--device', 'cpu',
                    '--val-folder', tiny_dataset['test'], *extra)


def test_trainer_writes_curves_when_stopped_and_at_the_end_and_the_history_survives_resume(tmp_path, tiny_dataset):
    stopped = train(tmp_path, tiny_dataset, '--epochs', 3, '--max-steps', 6)  # 4 steps per epoch: stops in epoch 2
    assert stopped.returncode == 0, stopped.stderr
    curves = tmp_path / 'srresnet_curves.png'
    assert f"curves: {curves}" in stopped.stdout and curves.is_file()
    first = load_checkpoint(tmp_path / 'checkpoint_srresnet.pth')
    assert [e['epoch'] for e in first['history']] == [1] and first['history'][0]['step'] == 4
    assert first['train_seconds'] >= first['history'][0]['seconds'] > 0
    resumed = train(tmp_path, tiny_dataset, '--epochs', 3, '--resume')
    assert resumed.returncode == 0, resumed.stderr
    assert f"curves: {curves}" in resumed.stdout
    ckpt = load_checkpoint(tmp_path / 'checkpoint_srresnet.pth')
    history = ckpt['history']
    assert history[0] == first['history'][0]  # kept as it was
    assert [e['epoch'] for e in history] == [1, 2, 3] and [e['step'] for e in history] == [4, 8, 12]
    seconds = [e['seconds'] for e in history]
    assert seconds == sorted(seconds) and seconds[1] > first['train_seconds']  # wall time goes on across the resume
    assert all(set(e['losses']) == {'loss'} and e['losses']['loss'] > 0 for e in history)
    assert ckpt['best_psnr'] == max(e['val_psnr'] for e in history)
    hr_images = [pil_to_tensor(load_image(p)) for p in list_image_files(str(tiny_dataset['test']))]
    bicubic = np.mean([papers_metrics(*(t.numpy() for t in eval_script.bicubic_y(hr, 4)), 4)[0] for hr in hr_images])
    assert all(e['bicubic_psnr'] == pytest.approx(bicubic, abs=1e-9) for e in history)  # x4, the default scale
    assert training.bicubic_psnr(hr_images, 3) != pytest.approx(bicubic, abs=0.1)
    with Image.open(curves) as img:
        assert img.format == 'PNG' and img.size == (1100, 720)


def test_srgan_curves_record_its_losses_and_the_ema_validation(tmp_path, tiny_dataset):
    result = run_here('train_srgan.py', '--srresnet-checkpoint', 'none', '--vgg-weights', 'random', '--n-blocks', 1,
                      '--n-channels', 8, '--n-blocks-d', 2, '--n-channels-d', 8, '--fc-size-d', 16,
                      '--data-folder', tiny_dataset['data'], '--results-dir', tmp_path, '--runs-dir',
                      tmp_path / 'runs', '--crop-size', 24, '--batch-size', 3, '--epochs', 1, '--workers', 0,
                      '--device', 'cpu', '--val-folder', tiny_dataset['test'], '--ema-decay', 0.9)
    assert result.returncode == 0, result.stderr
    (entry,) = load_checkpoint(tmp_path / 'checkpoint_srgan.pth')['history']
    assert set(entry['losses']) == {'content', 'adversarial', 'discriminator'}
    assert entry['val_psnr_ema'] > 0 and entry['bicubic_psnr'] > 0
    assert entry['val_psnr'] > 0 and entry['val_psnr'] != entry['val_psnr_ema']  # the raw weights, measured too
    assert (tmp_path / 'srgan_curves.png').is_file() and f"curves: {tmp_path / 'srgan_curves.png'}" in result.stdout


def test_curves_path_is_named_after_the_run():
    assert training.curves_path('results/checkpoint_espcn.pth') == 'results/espcn_curves.png'
    assert training.curves_path('runs/mine.pth') == 'runs/mine_curves.png'
