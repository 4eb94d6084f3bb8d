"""README (or a page of docs/) documents every command-line flag of every script (the flag tables are written from
the parsers), and its promise that the tests needing the benchmark images all run in CI holds: without them those
tests fail there and skip elsewhere."""
import re

import pytest

from conftest import REPO_ROOT, SHARED_DATA, run_script, shared_data_or_skip


@pytest.mark.parametrize('script', ['create_data_lists.py', 'train_srresnet.py', 'train_srgan.py', 'eval.py',
                                    'test.py', 'export.py', 'app.py'])
def test_every_flag_of_every_script_is_in_readme(script):
    result = run_script(script, '--help')
    assert result.returncode == 0, result.stderr
    # past the docstring's example command lines ('optional arguments:' before Python 3.10)
    options = re.split(r'\n(?:options|optional arguments):', result.stdout, maxsplit=1)[1]
    flags = set(re.findall(r'^\s+(--[a-z][a-z0-9-]+)', options, flags=re.M)) - {'--help'}
    assert len(flags) >= 5  # the parse found the options
    pages = [REPO_ROOT / 'README.md'] + sorted((REPO_ROOT / 'docs').glob('*.md'))
    documented = ''.join(page.read_text(encoding='utf-8') for page in pages)
    missing = sorted(f for f in flags if f"`{f}" not in documented)
    assert not missing, f"{script}: flags missing from README and docs/: {missing}"


def outcome(folder, environ):
    """(pytest's Failed or Skipped exception type, its message) raised by shared_data_or_skip, or (None, '')
    (caught here, so that a skip where a failure is due cannot itself skip the test)."""
    try:
        shared_data_or_skip(folder, environ=environ)
    except (pytest.fail.Exception, pytest.skip.Exception) as e:
        return type(e), str(e)
    return None, ''


@pytest.mark.parametrize('ci', ['true', 'TRUE', '1'])
def test_missing_benchmark_images_fail_in_ci(tmp_path, ci):
    kind, message = outcome(tmp_path / 'data', {'CI': ci})
    assert kind is pytest.fail.Exception
    assert 'benchmark images not found' in message and 'CI=true' in message


@pytest.mark.parametrize('environ', [{}, {'CI': 'false'}, {'CI': ''}], ids=['unset', 'false', 'empty'])
def test_missing_benchmark_images_skip_with_the_reason_elsewhere(tmp_path, environ):
    kind, message = outcome(tmp_path / 'data', environ)
    assert kind is pytest.skip.Exception
    assert 'benchmark images not found: expected Set5 under ../shared/data' in message


def test_present_benchmark_images_are_returned_in_and_out_of_ci(tmp_path):
    (tmp_path / 'data' / 'Set5').mkdir(parents=True)
    for environ in ({}, {'CI': 'true'}):
        assert shared_data_or_skip(tmp_path / 'data', environ=environ) == tmp_path / 'data'


def test_every_test_needing_the_benchmark_images_goes_through_the_one_helper():
    """A test that reads SHARED_DATA guards itself with requires_shared_data (or the shared_data fixture), never
    with its own skipif, which would skip in CI too."""
    for path in sorted((REPO_ROOT / 'tests').glob('test_*.py')):
        text = path.read_text(encoding='utf-8')
        if 'SHARED_DATA' in text or 'shared_data' in text:
            assert not re.search(r"skipif\([^)]*SHARED_DATA", text), path.name
            assert 'requires_shared_data' in text or 'shared_data_or_skip' in text, path.name
    assert SHARED_DATA.name == 'data' and SHARED_DATA.parent.name == 'shared'


def test_every_test_the_reliability_table_names_exists():
    """Each test README's Reliability table cites is a test function of its file: `file.py::test_name`; `...::name`
    or `::name` for the file named last before it in the row or, first in a row, for the file the row above starts
    with. A whole file cited must exist."""
    readme = (REPO_ROOT / 'README.md').read_text(encoding='utf-8')
    table = readme.split('| guarantee | proved by |', 1)[1].split('\n\n', 1)[0].splitlines()[2:]
    assert len(table) >= 30
    cited, primary = 0, None
    for row in table:
        proof = row.rstrip('|').rsplit('|', 1)[1]
        current, first = primary, None
        for ref in re.findall(r"`([^`]+)`", proof):
            file, _, name = ref.partition('::')
            if file.endswith('.py'):
                current = file
            elif file not in ('...', ''):
                continue  # not a test reference
            assert current is not None, row
            first = first or current
            text = (REPO_ROOT / 'tests' / current).read_text(encoding='utf-8')
            if name:
                assert re.search(rf"^def {re.escape(name)}\(", text, flags=re.M), f"{current}::{name} (row: {row[:60]})"
                cited += 1
        primary = first or primary
    assert cited >= 50
