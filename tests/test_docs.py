"""README documents every command-line flag of every script (the flag tables are written from the parsers)."""
import re

import pytest

from conftest import REPO_ROOT, run_script


@pytest.mark.parametrize('script', ['create_data_lists.py', 'train_srresnet.py', 'train_srgan.py', 'eval.py',
                                    'test.py', 'export.py', 'app.py'])
def test_every_flag_of_every_script_is_in_readme(script):
    result = run_script(script, '--help')
    assert result.returncode == 0, result.stderr
    # past the docstring's example command lines ('optional arguments:' before Python 3.10)
    options = re.split(r'\n(?:options|optional arguments):', result.stdout, maxsplit=1)[1]
    flags = set(re.findall(r'^\s+(--[a-z][a-z0-9-]+)', options, flags=re.M)) - {'--help'}
    assert len(flags) >= 5  # the parse found the options
    readme = (REPO_ROOT / 'README.md').read_text(encoding='utf-8')
    missing = sorted(f for f in flags if f"`{f}" not in readme)
    assert not missing, f"{script}: flags missing from README: {missing}"
