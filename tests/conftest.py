"""Shared test settings and fixtures: the repository root on sys.path, where the benchmark images live, tiny
image folders made from scikit-image's photos, and a runner for the scripts' command lines.

The benchmark images are never copied into the repository; tests that need them use ``requires_shared_data``
(or call ``shared_data_or_skip``): when ``../shared/data`` (next to the repository) is absent they are skipped,
with the reason, except in CI (``CI=true``), where they fail, since CI promises to run them all.
"""
import contextlib
import errno
import importlib
import importlib.util
import io
import os
import random
import stat
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
REPO = str(REPO_ROOT)
SHARED_DATA = REPO_ROOT.parent / 'shared' / 'data'
if REPO not in sys.path:  # the suite's modules live at the top level
    sys.path.insert(0, REPO)
import utils  # noqa: E402  (a module of the repository, found through the line above)


def shared_data_or_skip(folder=None, environ=None):
    """The benchmark images' folder (``SHARED_DATA`` unless ``folder``), for a test that needs them. When it holds
    no Set5 the test is skipped with the reason, or failed where ``CI`` is ``true`` (the environment variable CI
    services set; ``environ`` defaults to os.environ): there a missing folder is a broken setup, not a reason to
    pass quietly."""
    folder = SHARED_DATA if folder is None else Path(folder)
    environ = os.environ if environ is None else environ
    if (folder / 'Set5').is_dir():
        return folder
    reason = f"benchmark images not found: expected Set5 under ../shared/data next to the repository ({folder})"
    if environ.get('CI', '').strip().lower() in ('true', '1', 'yes'):
        pytest.fail(f"{reason} (CI=true: the tests that need them must run, not skip)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def shared_data():
    """The benchmark images' folder; skips (fails under CI=true) without it, see shared_data_or_skip."""
    return shared_data_or_skip()


requires_shared_data = pytest.mark.usefixtures('shared_data')


def pytest_configure(config):
    config.addinivalue_line('markers', 'cuda: needs a CUDA GPU (run by benchmarks/gpu_check.py where one is lent)')


@pytest.fixture(autouse=True)
def fixed_seed():
    """Every test draws the same random numbers on every run and under any xdist split: a failure reproduces."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope='session')
def one_thread():
    """Tests run tiny models: one thread is as fast, and two OpenMP threads spin badly when other jobs (another
    pytest worker, another process) share a 2-core machine (70 s -> 6 s measured on one test module)."""
    torch.set_num_threads(1)


def doc_text(page):
    """The text of README.md (``page`` 'README.md') or of a reference page under docs/ ('evaluation.md')."""
    path = REPO_ROOT / page if page == 'README.md' else REPO_ROOT / 'docs' / page
    return path.read_text(encoding='utf-8')


def run_script(script, *args, cwd=REPO, timeout=300, env_extra=None):
    """Run one of the suite's scripts through its command line (one OpenMP thread, see one_thread)."""
    env = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1', **(env_extra or {}))
    return subprocess.run([sys.executable, os.path.join(REPO, script), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@contextlib.contextmanager
def working_directory(path):
    """The current directory is ``path`` inside the block (contextlib.chdir from Python 3.11 on)."""
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def script_module(script):
    """The module of one of the suite's scripts ('train_srresnet.py'), imported once; test.py as 'sr_test_script'
    (Python's own regression tests are the package 'test')."""
    if script != 'test.py':
        return importlib.import_module(os.path.splitext(script)[0])
    if 'sr_test_script' not in sys.modules:
        spec = importlib.util.spec_from_file_location('sr_test_script', os.path.join(REPO, script))
        sys.modules['sr_test_script'] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules['sr_test_script'])
    return sys.modules['sr_test_script']


def run_here(script, *args, cwd=REPO, env_extra=None):
    """What run_script(script, *args) returns (returncode, stdout, stderr), for the same command line run in this
    process: the script's main(argv) under utils.run_cli, as its last line runs it, without the seconds a new
    interpreter spends importing torch. For tests of what a run does; what needs a process of its own (signals,
    a closed pipe, locks between two writers, a loader worker's death) stays with run_script."""
    module = script_module(script)
    argv = [str(a) for a in args]
    determinism = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    out, err = io.StringIO(), io.StringIO()
    # sys.argv as the script's process has it: argparse names the script, a printed resume command repeats it
    with working_directory(cwd), mock.patch.dict(os.environ, env_extra or {}), contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err), mock.patch.object(sys, 'argv', [os.path.join(REPO, script), *argv]):
        try:
            code = utils.run_cli(lambda: module.main(argv))
        except SystemExit as e:
            code = e.code
        finally:
            torch.use_deterministic_algorithms(determinism[0], warn_only=determinism[1])  # --deterministic's
    if isinstance(code, str):  # sys.exit('message'): the interpreter prints it and exits with 1
        err.write(code + '\n')
        code = 1
    return subprocess.CompletedProcess([script, *argv], code or 0, out.getvalue(), err.getvalue())


def photo_crops(size=64, count=6):
    """Real photos bundled with scikit-image, centre-cropped to size x size, as uint8 (H, W, 3) arrays."""
    from skimage import data
    out = []
    for name in ('astronaut', 'coffee', 'chelsea', 'rocket', 'immunohistochemistry', 'cat')[:count]:
        img = getattr(data, name)()
        h, w = img.shape[:2]
        top, left = (h - size) // 2, (w - size) // 2
        out.append(np.ascontiguousarray(img[top:top + size, left:left + size, :3]))
    return out


@pytest.fixture(scope='session')
def tiny_dataset(tmp_path_factory):
    """A train folder and a test folder of 64x64 real photo crops, with data lists. Returns a dict of paths."""
    root = tmp_path_factory.mktemp('tiny_dataset')
    train, test, data = root / 'train', root / 'Tiny', root / 'data'
    train.mkdir()
    test.mkdir()
    for i, img in enumerate(photo_crops()):
        Image.fromarray(img).save(train / f"img{i}.png")
        if i < 2:
            Image.fromarray(img).save(test / f"img{i}.png")
    from datasets import create_data_lists
    create_data_lists([str(train)], [str(test)], 32, str(data), workers=1, log=lambda *_: None)
    return {'root': root, 'train': train, 'test': test, 'data': data}


def fail_nth_file_sync(monkeypatch, n, error=errno.ENOSPC):
    """Make the n-th fsync of a regular file raise OSError(error), as a full disk does (filesystems with delayed
    allocation, and NFS, report ENOSPC at fsync). Counts through utils and the scripts (they call os.fsync)."""
    real = os.fsync
    count = [0]

    def fsync(fd):
        if stat.S_ISREG(os.fstat(fd).st_mode):
            count[0] += 1
            if count[0] == n:
                raise OSError(error, os.strerror(error))
        return real(fd)
    monkeypatch.setattr(os, 'fsync', fsync)
    return count


@pytest.fixture
def unlistable(monkeypatch):
    """make(folder): a folder that exists but cannot be listed. chmod 000 where that blocks reads; as root (or
    wherever permissions do not stop a listing) os.listdir raises PermissionError for it instead."""
    made = []

    def make(folder):
        folder = str(folder)
        os.chmod(folder, 0)
        made.append(folder)
        try:
            os.listdir(folder)
        except PermissionError:
            return folder
        real = os.listdir

        def listdir(path='.'):
            if os.path.abspath(os.fspath(path)) == os.path.abspath(folder):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
            return real(path)
        monkeypatch.setattr(os, 'listdir', listdir)
        return folder
    yield make
    for folder in made:
        os.chmod(folder, 0o755)


requires_fifo = pytest.mark.skipif(not hasattr(os, 'mkfifo'), reason='this OS has no FIFOs (os.mkfifo)')


class fifo_watchdog:
    """with fifo_watchdog(path): ... — if something is still blocked opening the FIFO ``path`` for reading after
    ``seconds``, open it for writing once (which lets that reader go on to an empty read) and set ``fired``: a test
    then fails on its assertions instead of hanging the suite."""

    def __init__(self, path, seconds=30):
        import threading
        self.path, self.fired = str(path), False
        self._timer = threading.Timer(seconds, self._release)
        self._timer.daemon = True

    def _release(self):
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)  # fails (ENXIO) unless a reader is waiting
        except OSError:
            return
        self.fired = True
        os.close(fd)

    def __enter__(self):
        self._timer.start()
        return self

    def __exit__(self, *exc):
        self._timer.cancel()
        return False
