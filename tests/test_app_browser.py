"""The web page in a real browser: app.py served on a free port of 127.0.0.1 (its own process, with a socket audit
hook), driven by headless Chromium through selenium, the way a person uses it: upload, pick, run, read, download.

One server and one browser for the module (the server's start, mostly importing gradio and torch, is most of the
time); every test opens the page afresh, which is a new gradio session. Every wait is a WebDriverWait with a
timeout, so a hang fails a test instead of blocking the suite. Skipped, with the reason, where Chromium or its
driver is not installed (CI installs Debian's chromium and chromium-driver in .ci/run).
"""
import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from urllib.parse import urlparse

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, SHARED_DATA, requires_shared_data

CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')
CHROMEDRIVER = shutil.which('chromedriver')
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip("needs a Chromium browser and its chromedriver (Debian: apt-get install chromium chromium-driver)",
                allow_module_level=True)
pytest.importorskip('selenium', reason='needs selenium (requirements.txt)')

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

import checkpoints  # noqa: E402
import inference  # noqa: E402

pytestmark = pytest.mark.xdist_group('browser')  # one server and one browser, also under make test's -n auto

TIMEOUT = 60  # seconds for any one wait: generous for a loaded 2-core machine
MAX_PIXELS = 1_000_000  # the server's --max-pixels
MAX_FILE_MB = 2  # the server's --max-file-size
# Runs app.py with an audit hook that logs every socket connection and name lookup the server makes.
AUDITED_APP = r'''
import json, runpy, sys
log = open(sys.argv.pop(1), 'a', buffering=1)
def hook(event, args):
    if event == 'socket.connect':
        log.write(json.dumps([event, repr(args[1])]) + '\n')
    elif event in ('socket.getaddrinfo', 'socket.gethostbyname', 'socket.sendto'):
        log.write(json.dumps([event, repr(args[:2])]) + '\n')
sys.addaudithook(hook)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
'''


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def is_local(url):
    parsed = urlparse(url)
    return parsed.scheme in ('data', 'blob', 'about') or parsed.hostname in ('127.0.0.1', 'localhost')


class Server:
    """python app.py on a free port, in its own process group (so stop() ends it and anything it started)."""

    def __init__(self, folder):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.audit, self.log_path, self.tmp = folder / 'sockets.jsonl', folder / 'server.log', folder / 'tmp'
        self.tmp.mkdir()
        models = folder / 'models'  # the shipped x3 models only: ESPCN is the page's default (not the SRResNet x4)
        models.mkdir()
        for name in ('espcn_x3_t91.pth', 'srcnn_x3_t91.pth'):
            shutil.copy(os.path.join(REPO, 'results', name), models / name)
        env = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1', TMPDIR=str(self.tmp),
                   GRADIO_TEMP_DIR=str(folder / 'gradio'))
        self._log = open(self.log_path, 'w')
        self.proc = subprocess.Popen(
            [sys.executable, '-c', AUDITED_APP, str(self.audit), 'app.py', '--port', str(self.port), '--device',
             'cpu', '--max-pixels', str(MAX_PIXELS), '--max-file-size', f"{MAX_FILE_MB}MB", '--checkpoint-dir',
             str(models)],
            cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout=180):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app.py exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + 'config', timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.25)
        raise TimeoutError(f"app.py not serving after {timeout} s:\n{self.log()}")

    def log(self):
        self._log.flush()
        return self.log_path.read_text()

    def sockets(self):
        return [json.loads(line) for line in self.audit.read_text().splitlines()] if self.audit.exists() else []

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(20)
        self._log.close()


@pytest.fixture(scope='module')
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp('app_server'))
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()
    assert not list(srv.tmp.glob('sr_app_*')), "the server left its session folders behind"


@pytest.fixture(scope='module')
def browser(tmp_path_factory):
    profile = tmp_path_factory.mktemp('chromium')
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ('--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run',
                '--no-default-browser-check', '--disable-extensions', '--disable-background-networking',
                '--disable-component-update', '--disable-sync', '--disable-default-apps', '--disable-quic',
                '--window-size=1280,1400', f"--user-data-dir={profile / 'profile'}"):
        options.add_argument(arg)
    options.set_capability('goog:loggingPrefs', {'performance': 'ALL'})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER, log_output=str(profile / 'chromedriver.log')),
                              options=options)
    driver.set_page_load_timeout(TIMEOUT)
    try:
        yield driver
    finally:
        driver.quit()


# ----------------------------------------------------------------------------------------------
# What a person does on the page
# ----------------------------------------------------------------------------------------------


def wait(driver, condition, what, timeout=TIMEOUT):
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition)
    except TimeoutException:
        raise AssertionError(f"timed out waiting for {what}; toasts: {toasts(driver)}") from None


def open_page(driver, url):
    driver.get(url)
    wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, '#run') and model_info(d), 'the page')
    return driver


def model_info(driver):
    return ''.join(e.text for e in driver.find_elements(By.CSS_SELECTOR, '#model-info'))


def field(driver, elem_id):
    return driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input, #{elem_id} textarea").get_attribute('value')


def set_text(driver, elem_id, text):
    box = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input, #{elem_id} textarea")
    box.clear()
    box.send_keys(text)


def upload(driver, *paths):
    """Through the drop zone's file input (what the file dialog fills); done when every file has its row."""
    driver.find_element(By.CSS_SELECTOR, '#inputs input[type=file]').send_keys('\n'.join(map(str, paths)))
    names = [os.path.basename(p) for p in paths]
    wait(driver, lambda d: all(d.find_elements(By.CSS_SELECTOR, f'#inputs td.filename[aria-label="{n}"]')
                               for n in names)
         and len(d.find_elements(By.CSS_SELECTOR, '#inputs a[data-testid=download-link]')) >= len(names),
         f"the upload of {names}")


def report(driver):
    return field(driver, 'report')


def run(driver, expect):
    """Press Upscale and wait for a report naming ``expect``."""
    driver.find_element(By.CSS_SELECTOR, '#run').click()
    return wait(driver, lambda d: expect in report(d) and report(d), f"a report with {expect!r}")


def toasts(driver):
    return driver.execute_script(
        "return [...document.querySelectorAll('[data-testid=toast-body]')].map(e => e.innerText)")


def wait_toast(driver, needle):
    seen = set()

    def found(d):
        seen.update(toasts(d))
        return [t for t in seen if needle in t]
    try:
        return WebDriverWait(driver, TIMEOUT, poll_frequency=0.05).until(found)
    except TimeoutException:
        raise AssertionError(f"no message with {needle!r}; messages shown: {sorted(seen)}") from None


def slider_sizes(driver):
    """(naturalWidth, naturalHeight) of the slider's images once loaded, as the browser decoded them."""
    return driver.execute_script(
        "return [...document.querySelectorAll('#slider img')].filter(i => i.complete && i.naturalWidth)"
        ".map(i => [i.naturalWidth, i.naturalHeight])")


def download(driver, name, folder):
    """The file behind the page's download link for ``name``, fetched from the server like the browser would."""
    link = wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, f'#downloads a[download="{name}"]'),
                f"a download link for {name}")[0]
    with urllib.request.urlopen(link.get_attribute('href'), timeout=TIMEOUT) as r:
        (folder / name).write_bytes(r.read())
    with Image.open(folder / name) as img:
        img.load()
        return img


def pattern_png(path, w, h, seed=0):
    """A photo-like test image (smooth colour waves plus noise), so SR and bicubic differ."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([128 + 90 * np.sin(xx / (5. + c) + yy / 7.) for c in range(3)], axis=-1)
    Image.fromarray(np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)).save(path)
    return path


def network_requests(driver):
    """URLs the page requested since the last call (Chromium's performance log)."""
    urls = []
    for entry in driver.get_log('performance'):
        message = json.loads(entry['message'])['message']
        if message.get('method') == 'Network.requestWillBeSent':
            urls.append(message['params']['request']['url'])
    return urls


# ----------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------


@requires_shared_data
def test_set5_image_with_the_shipped_espcn_and_nothing_leaves_this_machine(browser, server, tmp_path):
    browser.get('about:blank')
    network_requests(browser)  # drop what the browser did on its own before the page (its start page)
    open_page(browser, server.url)
    assert field(browser, 'model') == 'espcn_x3_t91.pth' and field(browser, 'scale') == '3'
    assert 'espcn x3, 22,729 parameters' in model_info(browser)
    upload(browser, SHARED_DATA / 'Set5' / 'butterfly.png')
    text = run(browser, 'butterfly.png')
    assert 'with espcn x3' in text and 'butterfly.png: 256x256 -> 768x768' in text, text
    wait(browser, lambda d: len(slider_sizes(d)) == 2, 'the slider images')
    assert slider_sizes(browser) == [[768, 768], [768, 768]]  # bicubic and SR, as the browser shows them
    sr = download(browser, 'butterfly_x3_espcn.png', tmp_path)
    assert sr.size == (768, 768) and sr.mode == 'RGB'
    loaded = checkpoints.load_sr_model(os.path.join(REPO, 'results', 'espcn_x3_t91.pth'))
    # the page's default precision is auto: the same pick as here, on the same machine (and said in the page)
    upscaler = inference.Upscaler(loaded.network, loaded.spec, 3, 'cpu', fuse=True, channels_last=True,
                                  precision='auto')
    assert f"with espcn x3, {upscaler.precision} on cpu" in text, text
    with Image.open(SHARED_DATA / 'Set5' / 'butterfly.png') as img:
        lr = torch.from_numpy(np.asarray(img.convert('RGB')).copy()).permute(2, 0, 1)[None].float() / 255.
    expected = upscaler.upscale_uint8(lr)[0].permute(1, 2, 0).numpy().astype(int)
    assert np.abs(np.asarray(sr).astype(int) - expected).max() <= 1  # the shipped ESPCN's own output
    browser.save_screenshot(str(tmp_path / 'page.png'))
    with Image.open(tmp_path / 'page.png') as shot:
        assert shot.size[0] >= 1000
    requests = network_requests(browser)
    assert any(u.startswith(server.url) for u in requests)
    assert [u for u in requests if not is_local(u)] == []
    sockets = server.sockets()
    assert sockets and all('127.0.0.1' in detail or 'localhost' in detail for _, detail in sockets), sockets


def test_bad_inputs_get_one_line_in_the_page(browser, server, tmp_path):
    open_page(browser, server.url)
    fake = tmp_path / 'fake.png'
    fake.write_text('this is text, not a PNG')
    upload(browser, fake)
    browser.find_element(By.CSS_SELECTOR, '#run').click()
    wait_toast(browser, 'fake.png: not an image')

    open_page(browser, server.url)
    big = tmp_path / 'wide.png'
    Image.new('RGB', (1100, 1000), (10, 200, 30)).save(big)  # a small file of 1.1 million pixels
    upload(browser, big)
    browser.find_element(By.CSS_SELECTOR, '#run').click()
    wait_toast(browser, f"wide.png: 1100x1000 px is over this page's limit of {MAX_PIXELS:,} px")

    open_page(browser, server.url)
    upload(browser, pattern_png(tmp_path / 'ok.png', 20, 16))
    broken = tmp_path / 'broken.pth'
    torch.save({'epoch': 3}, broken)  # a torch file, but no weights in it
    set_text(browser, 'path', str(broken))
    browser.find_element(By.CSS_SELECTOR, '#run').click()
    wait_toast(browser, f"{broken} holds no model weights: not an SR checkpoint")

    open_page(browser, server.url)
    huge = tmp_path / 'huge.png'
    with open(huge, 'wb') as f:
        f.truncate((MAX_FILE_MB + 1) * 2 ** 20)
    browser.find_element(By.CSS_SELECTOR, '#inputs input[type=file]').send_keys(str(huge))
    wait_toast(browser, 'exceed the maximum allowed size')
    assert 'Traceback' not in browser.page_source
    # the server refuses it too, whatever the browser does
    boundary = 'x' * 16
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"huge.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + huge.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(server.url + 'gradio_api/upload', data=body, method='POST',
                                     headers={'Content-Type': f"multipart/form-data; boundary={boundary}"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=TIMEOUT)
    assert refused.value.code == 413
    assert 'Traceback' not in browser.page_source


def test_progress_while_tiles_run_and_two_users_at_once(browser, server, tmp_path):
    """A memory budget that cuts the image into tiles: the progress bar counts them. Meanwhile a second tab (another
    session) starts a job on the same model: it waits for the first (and says so), then each tab shows and offers
    only its own image."""
    # The second tab is ready (page open, image uploaded) before the first job starts, so that between the first
    # job's first tile and the second job's request there is only a tab switch and a click: the first job (many
    # tiles, 8 self-ensemble passes each) is then still running on any machine.
    first = browser.current_window_handle
    open_page(browser, server.url)
    upload(browser, pattern_png(tmp_path / 'first.png', 600, 500, seed=1))
    set_text(browser, 'memory', '48MB')  # the Upscaler then runs tiles of about 100 px
    browser.find_element(By.CSS_SELECTOR, '#ensemble input[type=checkbox]').click()
    browser.switch_to.new_window('tab')
    second = browser.current_window_handle
    try:
        open_page(browser, server.url)
        upload(browser, pattern_png(tmp_path / 'second.png', 30, 20, seed=2))
        browser.switch_to.window(first)
        browser.find_element(By.CSS_SELECTOR, '#run').click()
        tiles = wait(browser, lambda d: [t for t in progress_texts(d) if re.search(r'first\.png: tile \d+/\d+', t)],
                     'the progress of the first job')
        assert int(re.search(r'tile \d+/(\d+)', tiles[0]).group(1)) > 4, tiles
        browser.switch_to.window(second)
        browser.find_element(By.CSS_SELECTOR, '#run').click()
        busy = wait(browser, lambda d: [t for t in progress_texts(d) if 'busy with another job' in t],
                    'the second job to wait')
        text = wait(browser, lambda d: 'second.png' in report(d) and report(d), 'the second result')
        downloads = [a.get_attribute('download') for a in browser.find_elements(By.CSS_SELECTOR,
                                                                                 '#downloads a[download]')]
        browser.close()
    finally:
        browser.switch_to.window(first)
    assert 'waiting: espcn is busy with another job' in busy[0], busy
    assert 'second.png: 30x20 -> 90x60' in text and 'first.png' not in text, text
    assert downloads == ['second_x3_espcn.png'], downloads
    first_text = wait(browser, lambda d: 'first.png' in report(d) and report(d), 'the first result')
    assert 'first.png: 600x500 -> 1800x1500' in first_text and 'second' not in first_text, first_text
    assert 'self-ensemble' in first_text, first_text
    assert [a.get_attribute('download') for a in browser.find_elements(By.CSS_SELECTOR, '#downloads a[download]')] \
        == ['first_x3_espcn.png']


def progress_texts(driver):
    return driver.execute_script(
        "return [...document.querySelectorAll('.progress-text, .progress-level')].map(e => e.innerText)")


def test_drag_and_drop_and_two_images_at_once(browser, server, tmp_path):
    """A drop on the drop zone (a DragEvent carrying the files, as the browser makes for a real drag), then bicubic
    at x2 on both: two reports, two downloads, the picker switches the slider."""
    open_page(browser, server.url)
    files = [pattern_png(tmp_path / 'a.png', 24, 18, seed=3), pattern_png(tmp_path / 'b.png', 16, 30, seed=4)]
    browser.execute_script("""
        const dt = new DataTransfer();
        for (const [name, data] of arguments[0])
            dt.items.add(new File([Uint8Array.from(atob(data), c => c.charCodeAt(0))], name, {type: 'image/png'}));
        const zone = document.querySelector('#inputs button.upload-container');
        for (const type of ['dragenter', 'dragover', 'drop'])
            zone.dispatchEvent(new DragEvent(type, {dataTransfer: dt, bubbles: true, cancelable: true}));
    """, [[os.path.basename(f), base64.b64encode(open(f, 'rb').read()).decode()] for f in files])
    wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, '#inputs a[data-testid=download-link]')) == 2,
         'the dropped files')
    browser.find_element(By.CSS_SELECTOR, '#model input').click()
    browser.find_element(By.CSS_SELECTOR, '#model li[data-testid=dropdown-option][aria-label="bicubic (no model)"]') \
        .click()
    wait(browser, lambda d: 'bicubic' in model_info(d), 'the bicubic description')
    browser.find_element(By.CSS_SELECTOR, '#scale input').click()
    browser.find_element(By.CSS_SELECTOR, '#scale li[data-testid=dropdown-option][aria-label="2"]').click()
    text = run(browser, 'b.png')
    assert 'a.png: 24x18 -> 48x36' in text and 'b.png: 16x30 -> 32x60' in text, text
    assert download(browser, 'a_x2_bicubic.png', tmp_path).size == (48, 36)
    assert download(browser, 'b_x2_bicubic.png', tmp_path).size == (32, 60)
    wait(browser, lambda d: slider_sizes(d) == [[48, 36], [48, 36]], 'the first image in the slider')
    browser.find_element(By.CSS_SELECTOR, '#picker input').click()
    browser.find_element(By.CSS_SELECTOR, '#picker li[data-testid=dropdown-option][aria-label="b.png"]').click()
    wait(browser, lambda d: slider_sizes(d) == [[32, 60], [32, 60]], 'the second image in the slider')
