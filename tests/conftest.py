"""Shared fixtures: repo paths, the optional ../shared/data benchmark images, tiny image folders, a CLI runner."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # the suite's modules live at the top level
    sys.path.insert(0, REPO)
SHARED_DATA = os.path.join(os.path.dirname(REPO), 'shared', 'data')

requires_shared_data = pytest.mark.skipif(
    not os.path.isdir(os.path.join(SHARED_DATA, 'Set5')),
    reason=f"benchmark images not found at {SHARED_DATA} (a clone without ../shared/data)")


def run_script(script, *args, cwd=REPO, timeout=300, env_extra=None):
    """Run one of the suite's scripts through its command line; returns the CompletedProcess."""
    env = dict(os.environ, PYTHONUNBUFFERED='1', **(env_extra or {}))
    return subprocess.run([sys.executable, os.path.join(REPO, script), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


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
    from utils import create_data_lists
    create_data_lists([str(train)], [str(test)], 32, str(data), workers=1, log=lambda *_: None)
    return {'root': root, 'train': train, 'test': test, 'data': data}
