"""app.py's functions without a browser: which checkpoints the page offers, input checks, jobs through the shipped
ESPCN and bicubic (pixels checked against inference.Upscaler and utils.imresize run here), progress, one job at a
time per model, per-session folders, page messages, and the offline launch settings. The page itself, in a real
browser: tests/test_app_browser.py.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import types
import urllib.request

import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, REPO_ROOT, run_script

import app  # noqa: E402
import checkpoints  # noqa: E402
import inference  # noqa: E402
import models  # noqa: E402
import utils  # noqa: E402
from test_test_script import run_main  # noqa: E402
from utils import UserError  # noqa: E402

ESPCN = os.path.join(REPO, 'results', 'espcn_x3_t91.pth')


def photo(path, w, h, mode='RGB', seed=0):
    """A photo-like image (colour waves plus noise) saved at ``path``; RGBA gets an alpha gradient."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    channels = [128 + 90 * np.sin(xx / (4. + c) + yy / 6.) for c in range(3)]
    if mode == 'RGBA':
        channels.append(np.broadcast_to(np.linspace(0, 255, w), (h, w)))
    img = np.clip(np.stack(channels, -1) + rng.normal(0, 10, (h, w, len(channels))), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(path)
    return str(path)


def read(path):
    with Image.open(path) as img:
        img.load()
        return img


@pytest.fixture
def service(tmp_path):
    work = tmp_path / 'work'
    work.mkdir()
    return app.SRService(app.Settings(torch.device('cpu'), os.path.join(REPO, 'results'), 100_000, True, str(work)))


def no_progress(fraction, text):
    pass


def no_progress_kw(fraction, desc=None):
    pass


# ----------------------------------------------------------------------------------------------
# What the page offers, and input checks
# ----------------------------------------------------------------------------------------------


def test_checkpoints_offered_shipped_first_then_sorted_then_bicubic(tmp_path):
    for name in ('zeta.pth', 'srcnn_x3_t91.pth', 'alpha.pth', 'espcn_x3_t91.pth', 'notes.txt', '.hidden.pth',
                 'sub/beta.pth', '.git/x.pth', 'srresnet_x4_291.pth', 'checkpoint_srresnet.pth'):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b'')
    found = app.find_checkpoints(str(tmp_path))
    assert [os.path.relpath(p, tmp_path) for p in found] == [
        'checkpoint_srresnet.pth', 'srresnet_x4_291.pth', 'espcn_x3_t91.pth', 'srcnn_x3_t91.pth', 'alpha.pth',
        os.path.join('sub', 'beta.pth'), 'zeta.pth']
    assert 'your own' in app.default_model_line(found[0]) and 'shipped' in app.default_model_line(found[1])
    assert app.model_choices(found, str(tmp_path))[-1] == ('bicubic (no model)', app.BICUBIC)
    assert app.find_checkpoints(str(tmp_path / 'missing')) == []
    shipped = app.find_checkpoints(os.path.join(REPO, 'results'))[:len(app.SHIPPED) - 1]
    assert [os.path.basename(p) for p in shipped] == list(app.SHIPPED[1:])  # the repository has no user checkpoint


def test_model_description_shows_the_checkpoints_scale(service):
    text, scale = service.describe(ESPCN)
    assert scale == 3 and text.startswith('espcn x3, 22,729 parameters, Y channel')
    text, scale = service.describe(os.path.join(REPO, 'results', 'srcnn_x3_t91.pth'))
    assert scale == 3 and '8,129 parameters' in text
    assert service.describe(app.BICUBIC)[1] is None
    assert service.load(ESPCN) is service.load(ESPCN)  # loaded once


def test_upload_names_give_distinct_output_stems():
    assert app.image_stems(['a.png', 'b.jpg']) == ['a', 'b']
    assert app.image_stems(['a.png', 'a.JPG', 'c.png']) == ['a_png', 'a_jpg', 'c']
    assert app.image_stems(['p.jpg', 'p.jpg', 'p.jpg']) == ['p_jpg', 'p_jpg_2', 'p_jpg_3']


def test_read_image_checks_before_decoding_and_names_the_upload(tmp_path):
    fake = tmp_path / 'x9' / 'fake.png'
    fake.parent.mkdir()
    fake.write_text('not an image')
    with pytest.raises(UserError) as e:
        app.read_image(str(fake), 'fake.png', 10_000)
    assert str(e.value) == 'fake.png: not an image'  # the upload's name, not the server's temp path
    Image.new('RGB', (101, 100)).save(tmp_path / 'big.png')
    with pytest.raises(UserError, match=r"big.png: 101x100 px is over this page's limit of 10,000 px"):
        app.read_image(str(tmp_path / 'big.png'), 'big.png', 10_000)
    Image.new('RGB', (100, 100)).save(tmp_path / 'edge.png')
    assert app.read_image(str(tmp_path / 'edge.png'), 'edge.png', 10_000).size == (100, 100)
    Image.new('RGB', (1, 5)).save(tmp_path / 'thin.png')
    with pytest.raises(UserError, match='too small'):
        app.read_image(str(tmp_path / 'thin.png'), 'thin.png', 10_000)
    assert app.read_image(photo(tmp_path / 'a.png', 8, 6, 'RGBA'), 'a.png', 10_000).mode == 'RGBA'


def test_loopback_hosts():
    assert app.is_loopback('127.0.0.1') and app.is_loopback('localhost') and app.is_loopback('::1')
    assert not app.is_loopback('0.0.0.0') and not app.is_loopback('192.168.1.5') and not app.is_loopback('example')


# ----------------------------------------------------------------------------------------------
# Jobs
# ----------------------------------------------------------------------------------------------


def test_job_with_the_shipped_espcn_gives_upscalers_pixels(service, tmp_path):
    src = photo(tmp_path / 'cat.png', 40, 30)
    results, text = service.job([src], ESPCN, '', 4, False, 'fp32', 'auto', 'session-a', no_progress)
    (r,) = results
    assert r.in_size == (40, 30) and r.out_size == (120, 90) and os.path.basename(r.png) == 'cat_x3_espcn.png'
    assert 'with espcn x3, fp32 on cpu' in text and 'cat.png: 40x30 -> 120x90 in ' in text
    loaded = checkpoints.load_sr_model(ESPCN)
    upscaler = inference.Upscaler(loaded.network, loaded.spec, 3, 'cpu', fuse=True, channels_last=True)
    lr = torch.from_numpy(np.array(read(src))).permute(2, 0, 1)[None].float() / 255.
    expected = upscaler.upscale_uint8(lr)[0].permute(1, 2, 0).numpy()
    assert np.array_equal(np.asarray(read(r.png)), expected)
    bicubic = utils.imresize(torch.from_numpy(np.array(read(src))).permute(2, 0, 1), 3).permute(1, 2, 0).numpy()
    assert np.abs(expected.astype(int) - bicubic).mean() > 1  # the model did something bicubic does not
    before, after = read(r.before), read(r.after)
    assert before.size == after.size == (120, 90) and r.after == r.png
    assert np.abs(np.asarray(before).astype(int) - bicubic).max() <= 8  # Pillow's bicubic: close to MATLAB's


def tiny_esrgan_rrdbnet(path):
    """A tiny random ESRGAN x4 (16 filters, 1 block) saved as a bare state_dict in RRDBNet's key layout (BasicSR,
    Real-ESRGAN: conv_first, body.0.rdb1.conv1, ...): a checkpoint only spandrel recognises."""
    from spandrel.architectures.ESRGAN import ESRGAN
    torch.manual_seed(0)
    old = ESRGAN(in_nc=3, out_nc=3, num_filters=16, num_blocks=1, scale=4).state_dict()  # spandrel's model.N names
    old['model.10.weight'].mul_(10)  # the random init's output is about -0.05 +- 0.02: centred on grey, spread
    old['model.10.bias'].fill_(0.5)
    names = [(r'model\.0\.', 'conv_first.'), (r'model\.1\.sub\.0\.RDB(\d)\.conv(\d)\.0\.', r'body.0.rdb\1.conv\2.'),
             (r'model\.1\.sub\.1\.', 'conv_body.'), (r'model\.3\.', 'conv_up1.'), (r'model\.6\.', 'conv_up2.'),
             (r'model\.8\.', 'conv_hr.'), (r'model\.10\.', 'conv_last.')]
    state = {}
    for key, value in old.items():
        for pattern, new in names:
            if re.match(pattern, key):
                state[re.sub(pattern, new, key)] = value
                break
    assert len(state) == len(old) and 'body.0.rdb3.conv5.weight' in state
    torch.save(state, path)
    return str(path)


def edsr_at_rgb_range_1(path):
    """A tiny random EDSR x2 as EDSR-PyTorch saves it (a bare state_dict, its own key names) after training with
    --rgb_range 1: its sub_mean / add_mean hold the DIV2K mean in [0, 1], which is how the file says so."""
    torch.manual_seed(0)
    model = models.build_model('edsr', models.model_config('edsr', 2, n_resblocks=2, n_feats=8, rgb_range=1))
    with torch.no_grad():
        model.tail[-1].weight.mul_(0.2)  # keep the output mostly inside [0, 1]: clipped pixels compare nothing
    torch.save(model.state_dict(), path)
    return str(path)


@pytest.mark.parametrize('kind', ['spandrel-esrgan', 'edsr-rgb-range-1'])
def test_published_weights_on_the_page_give_test_pys_pixels(service, tmp_path, kind):
    """The page describes and upscales with a checkpoint spandrel recognises, and feeds EDSR weights trained at
    rgb_range 1 in [0, 1]: its PNG (the alpha channel too) is test.py's, pixel for pixel."""
    if kind == 'spandrel-esrgan':
        pytest.importorskip('spandrel')
        path, label, scale = tiny_esrgan_rrdbnet(tmp_path / 'RealESRGAN_tiny.pth'), 'ESRGAN', 4
    else:
        path, label, scale = edsr_at_rgb_range_1(tmp_path / 'edsr_tiny_x2.pt'), 'edsr', 2
    text, shown = service.describe(path)
    loaded = checkpoints.load_sr_model(path)
    assert shown == scale and text.startswith(f"{label} x{scale}, {models.count_parameters(loaded.network):,} "
                                              f"parameters, RGB, on cpu")
    src = photo(tmp_path / 'glass.png', 20, 14, 'RGBA', seed=2)
    (r,), report = service.job([src], None, path, None, False, 'fp32', 'auto', 'session-a', no_progress)
    assert f"with {label} x{scale}, fp32 on cpu" in report
    code, _, err = run_main('--checkpoint', path, '--image', src, '--output-dir',
                            tmp_path / 'cli', '--device', 'cpu', '--precision', 'fp32')
    assert code == 0, err
    page, cli = np.asarray(read(r.png)), np.asarray(read(tmp_path / 'cli' / f"glass_x{scale}_{label}.png"))
    assert page.shape == cli.shape == (14 * scale, 20 * scale, 4) and np.array_equal(page, cli)
    rgba = torch.from_numpy(np.array(read(src))).permute(2, 0, 1)  # (4, h, w) uint8
    assert np.array_equal(page[..., 3], utils.imresize(rgba[3:], scale)[0].numpy())  # the alpha: MATLAB bicubic
    assert ((page[..., :3] > 0) & (page[..., :3] < 255)).mean() > 0.5 and page[..., :3].std() > 10  # not clipped
    if kind == 'edsr-rgb-range-1':  # fed [0, 255] (the registry's EDSR spec, as the page did), it is another image
        lr = rgba[None, :3].float() / 255.
        wrong = inference.Upscaler(loaded.network, models.ARCHS['edsr'], scale, 'cpu').upscale_uint8(lr)[0]
        assert np.abs(wrong.permute(1, 2, 0).numpy().astype(int) - page[..., :3]).mean() > 20


def test_bicubic_job_keeps_alpha_and_equals_imresize(service, tmp_path):
    src = photo(tmp_path / 'glass.png', 12, 10, 'RGBA', seed=1)
    (r,), text = service.job([src], app.BICUBIC, '', 2, True, 'fp32', 'auto', 'session-a', no_progress)
    out = read(r.png)
    assert out.mode == 'RGBA' and out.size == (24, 20) and os.path.basename(r.png) == 'glass_x2_bicubic.png'
    expected = utils.imresize(torch.from_numpy(np.array(read(src))).permute(2, 0, 1), 2).permute(1, 2, 0).numpy()
    assert np.array_equal(np.asarray(out), expected)
    assert 'with bicubic x2 on cpu' in text


def test_several_images_same_stem_and_large_output_previews(service, tmp_path, monkeypatch):
    monkeypatch.setattr(app, 'PREVIEW_MAX_SIDE', 64)
    (tmp_path / 'd').mkdir()
    files = [photo(tmp_path / 'p.png', 30, 20), photo(tmp_path / 'p.jpg', 16, 16), photo(tmp_path / 'd' / 'p.png', 8, 8)]
    results, text = service.job(files, app.BICUBIC, '', 3, False, 'fp32', 'auto', 's', no_progress)
    assert [os.path.basename(r.png) for r in results] == ['p_png_x3_bicubic.png', 'p_jpg_x3_bicubic.png',
                                                          'p_png_2_x3_bicubic.png']
    assert text.count(' -> ') == 3 and 'p.jpg: 16x16 -> 48x48' in text
    big = results[0]
    assert read(big.png).size == (90, 60) and read(big.after).size == read(big.before).size == (64, 43)
    assert results[1].after == results[1].png  # small enough: the download itself


def test_progress_counts_tiles_and_ends_at_one(service, tmp_path):
    events = []
    files = [photo(tmp_path / 'a.png', 96, 64), photo(tmp_path / 'b.png', 20, 20)]
    service.job(files, ESPCN, '', 3, False, 'fp32', '8MB', 's', lambda f, text: events.append((f, text)))
    fractions = [f for f, _ in events]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    a_tiles = [t for _, t in events if t.startswith('a.png: tile ')]
    total = int(a_tiles[0].split('/')[1])
    assert total > 1 and a_tiles == [f"a.png: tile {k}/{total}" for k in range(1, total + 1)]
    assert fractions[len(a_tiles) - 1] == pytest.approx(0.5)  # the first of two images done: half way


def test_bad_options_and_checkpoints_are_one_line_errors(service, tmp_path):
    src = photo(tmp_path / 'a.png', 8, 8)
    text_file = tmp_path / 'notes.pth'
    torch.save({'epoch': 1}, text_file)
    cases = [
        (([], ESPCN, ''), {}, 'upload at least one image first'),
        (([src], ESPCN, str(text_file)), {}, "notes.pth holds no model weights: not an SR checkpoint"),
        (([src], ESPCN, str(tmp_path / 'missing.pth')), {}, 'missing.pth: no such file'),
        (([src], os.path.join(REPO, 'results', 'other.pth'), ''), {}, 'not one of this server'),
        (([src], ESPCN, ''), {'precision': 'fp16'}, 'fp16 needs a CUDA GPU'),
        (([src], ESPCN, ''), {'memory': 'lots'}, "memory budget: 'lots' is not a memory size"),
        (([src], app.BICUBIC, ''), {'scale': 5}, 'scale 5: choose 2, 3, 4, 8'),
    ]
    for (files, choice, path), options, message in cases:
        kw = {'scale': 3, 'self_ensemble': False, 'precision': 'fp32', 'memory': 'auto', **options}
        with pytest.raises(UserError, match=message):
            service.job(files, choice, path, kw['scale'], kw['self_ensemble'], kw['precision'], kw['memory'], 's',
                        no_progress)
    assert os.listdir(service.settings.work_root) == []  # nothing was started
    closed = app.SRService(service.settings._replace(allow_paths=False))
    with pytest.raises(UserError, match='checkpoint paths are off on this server'):
        closed.job([src], ESPCN, ESPCN, 3, False, 'fp32', 'auto', 's', no_progress)


def test_one_job_at_a_time_per_model_others_alongside(service, tmp_path, monkeypatch):
    """Three sessions at once: two on ESPCN must not overlap (the second says it waits), bicubic runs alongside."""
    spans, lock = {}, threading.Lock()
    real = app.upscale_image

    def slow(upscaler, img, scale, name, out_stem, progress):
        start = time.monotonic()
        time.sleep(0.4)
        result = real(upscaler, img, scale, name, out_stem, progress)
        with lock:
            spans[name] = (start, time.monotonic())
        return result

    monkeypatch.setattr(app, 'upscale_image', slow)
    messages = {}

    def job(name, model):
        src = photo(tmp_path / name, 10, 10)
        service.job([src], model, '', 2, False, 'fp32', 'auto', name,
                    lambda f, text: messages.setdefault(name, []).append(text))

    threads = [threading.Thread(target=job, args=('one.png', ESPCN))]
    threads[0].start()
    time.sleep(0.1)
    threads += [threading.Thread(target=job, args=('two.png', ESPCN)),
                threading.Thread(target=job, args=('three.png', app.BICUBIC))]
    for t in threads[1:]:
        t.start()
    for t in threads:
        t.join(60)
    one, two, three = spans['one.png'], spans['two.png'], spans['three.png']
    assert one[1] <= two[0], f"two ESPCN jobs overlapped: {one} {two}"
    assert messages['two.png'][0] == 'waiting: espcn is busy with another job'
    assert three[0] < one[1], "bicubic waited for ESPCN"


def test_sessions_have_their_own_folders(service, tmp_path, monkeypatch):
    src = photo(tmp_path / 'a.png', 8, 8)
    (a1,), _ = service.job([src], app.BICUBIC, '', 2, False, 'fp32', 'auto', 'A', no_progress)
    (b1,), _ = service.job([src], app.BICUBIC, '', 2, False, 'fp32', 'auto', 'B', no_progress)
    assert os.path.dirname(a1.png) != os.path.dirname(b1.png)
    (a2,), _ = service.job([src], app.BICUBIC, '', 2, False, 'fp32', 'auto', 'A', no_progress)
    assert not os.path.exists(a1.png) and os.path.exists(a2.png) and os.path.exists(b1.png)

    def broken(*args):
        raise RuntimeError('disk on fire')
    monkeypatch.setattr(app, 'upscale_image', broken)
    with pytest.raises(RuntimeError):
        service.job([src], app.BICUBIC, '', 2, False, 'fp32', 'auto', 'A', no_progress)
    assert os.listdir(service.session_folder('A')) == [os.path.basename(os.path.dirname(a2.png))]  # kept
    assert not service.lock(app.BICUBIC).locked()
    service.cleanup('A')
    assert not os.path.exists(service.session_folder('A')) and os.path.exists(b1.png)
    assert service.session_folder('../../etc') == os.path.join(service.settings.work_root, 'etc')


def test_each_tab_of_the_page_keeps_its_own_session_folder(service, tmp_path):
    """The page's own handlers, called as Gradio calls them (one gr.Request per browser tab): each tab's results
    live in the folder of its session; a tab's next job or its closing never removes another tab's files."""
    demo = app.build_app(service, ESPCN)
    handlers = {f.fn.__name__: f.fn for f in demo.fns.values() if getattr(f, 'fn', None) is not None}
    upscale, cleanup = handlers['upscale'], handlers['cleanup']
    src = photo(tmp_path / 'a.png', 8, 8)
    tab_a, tab_b = types.SimpleNamespace(session_hash='tabA'), types.SimpleNamespace(session_hash='tabB')

    def run(tab):
        (png,) = upscale([src], app.BICUBIC, '', 2, False, 'fp32', 'auto', tab, progress=no_progress_kw)[2]
        return png
    a1, b1 = run(tab_a), run(tab_b)
    assert a1.startswith(os.path.join(service.settings.work_root, 'tabA') + os.sep)
    assert b1.startswith(os.path.join(service.settings.work_root, 'tabB') + os.sep)
    a2 = run(tab_a)  # tab A's next job replaces tab A's results only
    assert not os.path.exists(a1) and os.path.exists(a2) and os.path.exists(b1)
    cleanup(tab_a)  # tab A closed
    assert not os.path.exists(a2) and os.path.exists(b1)


# ----------------------------------------------------------------------------------------------
# The page's messages and the offline settings
# ----------------------------------------------------------------------------------------------


def test_page_errors_show_user_errors_and_hide_internal_ones(capsys):
    with pytest.raises(gr.Error) as e:
        with app.page_errors('upscaling'):
            raise UserError('cat.png: not an image')
    assert e.value.message == 'cat.png: not an image'
    with pytest.raises(gr.Error) as e:
        with app.page_errors('upscaling'):
            raise KeyError('secret detail /etc/passwd')
    assert e.value.message == "upscaling failed (KeyError); the server's log has the details"
    assert 'secret detail' not in e.value.message and 'secret detail' in capsys.readouterr().err


def test_launch_settings_are_local_and_offline(monkeypatch):
    args = app.build_parser().parse_args([])
    options = app.launch_options(args, utils.parse_memory(args.max_file_size))
    assert options['server_name'] == '127.0.0.1' and options['server_port'] == 7860
    assert options['share'] is False and options['show_error'] is False
    assert options['max_file_size'] == 20 * 2 ** 20
    assert options['footer_links'] == [] and options['run_history'] is False
    assert not options['enable_monitoring'] and not options['ssr_mode'] and not options['mcp_server']
    fonts = options['theme']._font + options['theme']._font_mono
    assert fonts and not [f for f in fonts if isinstance(f, (gr.themes.GoogleFont, gr.themes.LocalFont))]
    assert app.launch_options(app.build_parser().parse_args(['--share']), 1)['share'] is True
    monkeypatch.setenv('NO_PROXY', 'corp.example')
    monkeypatch.setenv('GRADIO_ANALYTICS_ENABLED', 'True')
    app.offline_environment()
    assert os.environ['GRADIO_ANALYTICS_ENABLED'] == 'False' and os.environ['HF_HUB_OFFLINE'] == '1'
    assert os.environ['NO_PROXY'] == 'corp.example,127.0.0.1,localhost'


def test_page_builds_without_analytics(service):
    demo = app.build_app(service, ESPCN)
    assert demo.analytics_enabled is False
    ids = {getattr(block, 'elem_id', None) for block in demo.blocks.values()}
    assert {'inputs', 'model', 'path', 'scale', 'precision', 'memory', 'ensemble', 'run', 'slider', 'report',
            'downloads'} <= ids


def test_bad_flag_is_one_line_before_serving(monkeypatch, capsys):
    monkeypatch.setattr(sys, 'argv', ['app.py', '--max-file-size', 'lots'])
    with pytest.raises(SystemExit) as e:
        utils.run_cli(app.main)
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == "error: --max-file-size: 'lots' is not a memory size (examples: " \
        "2GB, 512MB, 1.5GiB, 2000000000)"


def test_docstring_names_make_app():
    assert 'python app.py' in app.__doc__ and 'make app' in app.__doc__
    assert 'app:' in (REPO_ROOT / 'Makefile').read_text()


# ----------------------------------------------------------------------------------------------
# Flags and start-up errors: one line, exit code 2
# ----------------------------------------------------------------------------------------------


def test_a_port_out_of_range_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as e:
        app.build_parser().parse_args(['--port', '70000'])
    assert e.value.code == 2 and 'not a port number (1-65535)' in capsys.readouterr().err


def test_a_taken_port_is_one_line_and_exit_2(tmp_path):
    with socket.socket() as taken:
        taken.bind(('127.0.0.1', 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_script('app.py', '--port', port, '--checkpoint-dir', tmp_path, '--device', 'cpu', timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [f"error: --port {port}: cannot serve on 127.0.0.1:{port} (Address "
                                                  f"already in use); pick another --port"]


def test_checkpoint_preselects_a_file_the_page_offers(tmp_path):
    for name in ('a.pth', 'sub/b.pth'):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b'')
    offered = app.find_checkpoints(str(tmp_path))
    assert app.preselected(offered, str(tmp_path / 'sub' / 'b.pth'), str(tmp_path)) == offered[1]
    outside = tmp_path.parent / f"{tmp_path.name}_other.pth"
    outside.write_bytes(b'')
    with pytest.raises(UserError, match='under --checkpoint-dir'):
        app.preselected(offered, str(outside), str(tmp_path))
    with pytest.raises(UserError, match='no such file'):
        app.preselected(offered, str(tmp_path / 'missing.pth'), str(tmp_path))


@pytest.mark.parametrize('stop', [signal.SIGINT, signal.SIGTERM])
def test_uploads_live_in_the_servers_work_folder_and_go_when_it_stops(tmp_path, stop):
    """Gradio's copy of an upload is under the server's own work folder (not Gradio's shared temporary folder, even
    when GRADIO_TEMP_DIR names one), and Ctrl-C or SIGTERM removes it with the rest; the log names --share."""
    system_tmp, elsewhere = tmp_path / 'tmp', tmp_path / 'gradio_shared'
    system_tmp.mkdir()
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONUNBUFFERED='1', TMPDIR=str(system_tmp), GRADIO_TEMP_DIR=str(elsewhere))
    log = open(tmp_path / 'server.log', 'w+')
    proc = subprocess.Popen([sys.executable, 'app.py', '--port', str(port), '--device', 'cpu', '--checkpoint-dir',
                             str(tmp_path / 'none')], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while 'serving on' not in (tmp_path / 'server.log').read_text():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / 'server.log').read_text()
            time.sleep(0.25)
        body = (b'--B\r\nContent-Disposition: form-data; name="files"; filename="private.png"\r\n'
                b'Content-Type: image/png\r\n\r\n' + b'not really a png' + b'\r\n--B--\r\n')
        request = urllib.request.Request(f"http://127.0.0.1:{port}/gradio_api/upload", data=body, method='POST',
                                         headers={'Content-Type': 'multipart/form-data; boundary=B'})
        with urllib.request.urlopen(request, timeout=60) as r:
            (uploaded,) = json.loads(r.read())
        (work,) = system_tmp.glob('sr_app_*')
        assert os.path.commonpath([uploaded, str(work)]) == str(work) and os.path.isfile(uploaded)
        assert not elsewhere.exists()
        proc.send_signal(stop)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    text = (tmp_path / 'server.log').read_text()
    assert not os.path.exists(uploaded) and not list(system_tmp.glob('sr_app_*')), text
    assert '--share' in text and 'share=True' not in text and 'Traceback' not in text, text
