"""The docs: README is the front page and links every reference page under docs/; every relative link of README and
docs/ resolves (file and heading); each script's page documents every command-line flag of the script (the flag
tables are written from the parsers); every test the Reliability table cites exists; and the promise that the tests
needing the benchmark images all run in CI holds: without them those tests fail there and skip elsewhere."""
import re
import shlex
import shutil
from urllib.parse import unquote

import pytest
from PIL import Image

from conftest import REPO_ROOT, SHARED_DATA, doc_text, photo_crops, run_here, run_script, shared_data_or_skip

# The page(s) documenting each script's flags (train_srgan.py: its own and the training flags it shares).
FLAG_PAGES = {'create_data_lists.py': ['data.md', 'real-photos.md'], 'train_srresnet.py': ['training.md'],
              'train_srgan.py': ['srgan.md', 'training.md'], 'eval.py': ['evaluation.md'], 'test.py': ['upscaling.md'],
              'export.py': ['export.md'], 'app.py': ['web-page.md']}
DOC_PAGES = sorted(p.name for p in (REPO_ROOT / 'docs').glob('*.md'))


def flag_cells(page):
    """The first cells of the flag tables (rows under a '| flag | default | meaning |' heading) of a docs page."""
    cells, in_table = [], False
    for line in doc_text(page).splitlines():
        if line.startswith('| flag | default | meaning |'):
            in_table = True
        elif in_table and line.startswith('|'):
            cells.append(line.split('|')[1])
        else:
            in_table = False
    return cells


@pytest.mark.parametrize('script', sorted(FLAG_PAGES))
def test_every_flag_of_every_script_is_in_its_docs_page(script):
    result = run_here(script, '--help')
    assert result.returncode == 0, result.stderr
    # past the docstring's example command lines ('optional arguments:' before Python 3.10)
    options = re.split(r'\n(?:options|optional arguments):', result.stdout, maxsplit=1)[1]
    flags = set(re.findall(r'^\s+(--[a-z][a-z0-9-]+)', options, flags=re.M)) - {'--help'}
    assert len(flags) >= 5  # the parse found the options
    cells = ' '.join(cell for page in FLAG_PAGES[script] for cell in flag_cells(page))
    missing = sorted(f for f in flags if not re.search(rf"`{re.escape(f)}(?![a-z0-9-])", cells))
    assert not missing, f"{script}: flags missing from the flag tables of docs/{FLAG_PAGES[script]}: {missing}"


def slug(heading):
    """GitHub's anchor of a markdown heading: lower case, punctuation other than '-' dropped, spaces to '-'."""
    return re.sub(r'[^\w\- ]', '', heading.strip().lower()).replace(' ', '-')


def anchors(text):
    return {slug(m) for m in re.findall(r'^#+ (.+)$', re.sub(r'```.*?```', '', text, flags=re.S), flags=re.M)}


def relative_links(text):
    """(target, anchor) of every markdown link and image that is not a URL, outside code blocks."""
    text = re.sub(r'```.*?```', '', text, flags=re.S)
    for target in re.findall(r'\]\(([^)\s]+)\)', text):
        if not re.match(r'[a-z]+:', target):
            path, _, anchor = target.partition('#')
            yield unquote(path), anchor


def test_readme_links_every_docs_page_and_every_relative_link_resolves():
    readme = doc_text('README.md')
    linked = {path for path, _ in relative_links(readme)}
    assert len(DOC_PAGES) >= 14
    assert not [p for p in DOC_PAGES if f"docs/{p}" not in linked], "docs pages README does not link"
    checked = 0
    for source in [REPO_ROOT / 'README.md'] + [REPO_ROOT / 'docs' / p for p in DOC_PAGES]:
        text = source.read_text(encoding='utf-8')
        for path, anchor in relative_links(text):
            target = (source.parent / path).resolve() if path else source
            assert target.is_file(), f"{source.name}: link to {path} (no such file)"
            if anchor:
                assert target.suffix == '.md' and anchor in anchors(target.read_text(encoding='utf-8')), \
                    f"{source.name}: link to {path}#{anchor} (no such heading)"
            checked += 1
    assert checked >= 30


def test_readme_is_a_front_page():
    readme = doc_text('README.md')
    assert len(readme.splitlines()) <= 250
    assert '(docs/images/' in readme and '| x3 | Set5 | Set14 | BSD100 |' in readme
    for command in ('make demo', 'make test', 'python test.py', 'python eval.py', 'python train_srresnet.py'):
        assert f"\n{command}" in readme, command


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
    """Each test the Reliability table (docs/reliability.md) cites is a test function of its file: `file.py::name`;
    `...::name` or `::name` for the file named last before it in the row or, first in a row, for the file the row
    above starts with. A whole file cited must exist."""
    table = doc_text('reliability.md').split('| guarantee | proved by |', 1)[1].split('\n\n', 1)[0].splitlines()[2:]
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


def readme_block(heading):
    """The command lines of the first ```bash block under README's ``## heading`` (comments dropped)."""
    section = doc_text('README.md').split(f"\n## {heading}\n", 1)[1].split('\n## ', 1)[0]
    block = re.search(r'```bash\n(.*?)```', section, flags=re.S).group(1)
    return [shlex.split(line.split('#', 1)[0]) for line in block.splitlines() if line.split('#', 1)[0].strip()]


def test_the_first_screen_commands_run_as_written_on_a_fresh_clone(tmp_path):
    """README's 'Upscale a photo', 'Evaluate' and 'Train' blocks run as written, in a folder holding only what a fresh
    clone ships (results/*.pth) and the inputs they name (a photo, image folders made of scikit-image's photos);
    training gets --epochs 1 appended (the last flag wins), so that it ends in seconds."""
    shutil.copytree(REPO_ROOT / 'results', tmp_path / 'results', ignore=shutil.ignore_patterns('*.md'))
    shipped = sorted(p.name for p in (tmp_path / 'results').iterdir())
    photos = photo_crops(size=64)
    Image.fromarray(photos[0]).save(tmp_path / 'photo.jpg', quality=95)
    blocks = {name: readme_block(name) for name in ('Upscale a photo', 'Evaluate', 'Train')}
    for argv in (a for lines in blocks.values() for a in lines):
        for flag in ('--test-folders', '--val-folder', '--train-folders'):
            for folder in argv[argv.index(flag) + 1:] if flag in argv else []:
                if folder.startswith('-'):
                    break
                (tmp_path / folder).mkdir(parents=True, exist_ok=True)
                for k, img in enumerate(photos[:2] if flag != '--train-folders' else photos):
                    Image.fromarray(img).save(tmp_path / folder / f"img{k}.png")
    for name, lines in blocks.items():
        for argv in lines:
            assert argv[0] == 'python', argv
            extra = ['--epochs', '1'] if argv[1].startswith('train_') else []
            result = run_script(*argv[1:], *extra, cwd=tmp_path, timeout=600)
            assert result.returncode == 0, (name, argv, result.stderr[-2000:])
    made = sorted(p.name for p in (tmp_path / 'results').iterdir() if p.name not in shipped)
    promised = 0
    for name in blocks:  # every results/... file the three sections name is there (braces: one file each)
        section = doc_text('README.md').split(f"\n## {name}\n", 1)[1].split('\n## ', 1)[0]
        for path in re.findall(r'results/([\w.{},-]+)', section):
            stem, _, rest = path.partition('{')
            names = [stem + alt + rest.split('}', 1)[1] for alt in rest.split('}', 1)[0].split(',')] if rest else [path]
            for file in (n.rstrip('.,') for n in names):
                assert file in made + shipped if '.' in file else any(m.startswith(file) for m in made), (file, made)
                promised += 1
    assert promised >= 6
