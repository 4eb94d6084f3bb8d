"""eval.py --report html in a real browser: the page eval.py writes, opened from disk in headless Chromium through
selenium, offline. It renders (a screenshot), holds its tables, every image decodes (naturalWidth > 0), and the
per-image rows sort by PSNR gain over bicubic when the heading is clicked. Skipped, with the reason, where Chromium
or its driver is not installed (CI installs Debian's chromium and chromium-driver in .ci/run)."""
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import photo_crops, run_script
from test_reports import tiny_checkpoint

CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')
CHROMEDRIVER = shutil.which('chromedriver')
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip("needs a Chromium browser and its chromedriver (Debian: apt-get install chromium chromium-driver)",
                allow_module_level=True)
pytest.importorskip('selenium', reason='needs selenium (requirements.txt)')

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

TIMEOUT = 60


@pytest.fixture(scope='module')
def browser(tmp_path_factory):
    profile = tmp_path_factory.mktemp('chromium_report')
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ('--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run',
                '--no-default-browser-check', '--disable-extensions', '--disable-background-networking',
                '--disable-component-update', '--disable-sync', '--disable-default-apps', '--window-size=1280,1000',
                f"--user-data-dir={profile / 'profile'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER, log_output=str(profile / 'chromedriver.log')),
                              options=options)
    driver.set_page_load_timeout(TIMEOUT)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope='module')
def report(tmp_path_factory):
    """An HTML report of a tiny ESPCN x3 on four 48-px photo crops."""
    root = tmp_path_factory.mktemp('report')
    folder = root / 'Photos'
    folder.mkdir()
    for k, img in enumerate(photo_crops(size=48, count=4)):
        Image.fromarray(img).save(folder / f"p{k}.png")
    result = run_script('eval.py', '--checkpoint', tiny_checkpoint(root, 'espcn'), '--test-folders', folder,
                        '--report', 'html', '--protocol', 'standard', '--results-dir', root)
    assert result.returncode == 0, result.stderr
    return root / 'eval_espcn_tiny_x3.html'


def column(driver, index):
    """The data-value of column ``index`` of every per-image row, in page order."""
    return [float(row.find_elements(By.TAG_NAME, 'td')[index].get_attribute('data-value'))
            for row in driver.find_elements(By.CSS_SELECTOR, '#images tbody tr')]


def test_report_renders_offline_with_every_image_and_sorts_by_gain(browser, report, tmp_path):
    browser.get(report.as_uri())
    assert browser.title == 'Evaluation: espcn_tiny x3'
    summary = browser.find_elements(By.CSS_SELECTOR, '#summary tbody tr')
    assert [tr.find_element(By.TAG_NAME, 'td').text for tr in summary] == ['Photos']
    assert len(browser.find_elements(By.CSS_SELECTOR, '#images tbody tr')) == 4
    images = browser.find_elements(By.TAG_NAME, 'img')
    assert len(images) == 4 * 4  # each row: the thumbnail and three crops
    sizes = [browser.execute_script('return [arguments[0].complete, arguments[0].naturalWidth];', img)
             for img in images]
    assert all(complete and width > 0 for complete, width in sizes), sizes  # no broken image
    assert browser.save_screenshot(str(tmp_path / 'report.png'))
    with Image.open(tmp_path / 'report.png') as shot:
        assert shot.size[0] > 600 and len(np.unique(np.asarray(shot.convert('L')))) > 50  # drawn, not blank

    headings = browser.find_elements(By.CSS_SELECTOR, '#images th')
    gain_col = [h.text for h in headings].index('gain over bicubic (dB)')
    order_col = [h.text for h in headings].index('#')
    assert column(browser, order_col) == [1, 2, 3, 4]
    gains = column(browser, gain_col)
    assert len(set(gains)) == 4
    headings[gain_col].click()
    assert column(browser, gain_col) == sorted(gains, reverse=True)  # largest gain first
    headings[gain_col].click()
    assert column(browser, gain_col) == sorted(gains)
    headings[order_col].click()
    headings[order_col].click()
    assert column(browser, order_col) == [1, 2, 3, 4] and column(browser, gain_col) == gains  # back in order
