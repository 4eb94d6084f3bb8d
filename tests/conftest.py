"""Shared test settings: the repository root on sys.path, and where the benchmark images live.

The benchmark images are never copied into the repository; tests that need them use ``requires_shared_data``
and are skipped, with the reason, when ``../shared/data`` (next to the repository) is absent.
"""
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / 'shared' / 'data'

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

requires_shared_data = pytest.mark.skipif(
    not (SHARED_DATA / 'Set5').is_dir(),
    reason="benchmark images not found: expected Set5 under ../shared/data next to the repository")
