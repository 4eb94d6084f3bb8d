"""The layers of the suite (docs/architecture.md, "Architecture"): imports go one way, no script imports another, no
project module is imported inside a function, PyAV is video.py's alone, the design card's names stay where it put
them, and the documented table of layers is the one enforced here.

    python tests/test_architecture.py      # prints the project's import graph, layer by layer
"""
import ast
import re
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

# Each library module and the project modules it may import.
LAYERS = {
    'utils': set(),
    'models': set(),
    'reports': set(),
    'degradations': {'utils'},
    'datasets': {'utils', 'degradations'},
    'checkpoints': {'utils', 'models'},
    'inference': {'utils', 'models', 'checkpoints'},
    'video': {'utils'},
    'training': {'utils', 'models', 'datasets', 'degradations', 'checkpoints', 'inference', 'reports'},
}
LIBRARY = set(LAYERS)


def project_modules():
    return sorted(p.stem for p in REPO_ROOT.glob('*.py'))


def imports_of(name, modules=None):
    """{(imported module, inside a function?)} for the top-level module ``name``: the project's modules, or the
    top-level packages named in ``modules``."""
    tree = ast.parse((REPO_ROOT / f"{name}.py").read_text())
    wanted = set(project_modules()) if modules is None else set(modules)
    found = set()

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.update((a.name.split('.')[0], nested) for a in child.names if a.name.split('.')[0] in wanted)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                if child.module.split('.')[0] in wanted:
                    found.add((child.module.split('.')[0], nested))
            visit(child, nested)
    visit(tree, False)
    return found


def graph():
    return {name: sorted({m for m, _ in imports_of(name)}) for name in project_modules()}


def test_library_imports_go_one_way():
    for name, allowed in LAYERS.items():
        imported = {m for m, _ in imports_of(name)}
        assert imported <= allowed, f"{name}.py imports {sorted(imported - allowed)}; it may import {sorted(allowed)}"


def test_no_script_imports_another_script():
    scripts = set(project_modules()) - LIBRARY
    assert {'create_data_lists', 'train_srresnet', 'train_srgan', 'eval', 'test'} <= scripts
    for name in scripts:
        imported = {m for m, _ in imports_of(name)}
        assert not imported & scripts, f"{name}.py imports the script(s) {sorted(imported & scripts)}"


def test_no_project_module_is_imported_inside_a_function():
    for name in project_modules():
        nested = sorted(m for m, inside in imports_of(name) if inside)
        assert not nested, f"{name}.py imports {nested} inside a function"


def test_the_documented_layers_are_the_enforced_ones():
    """docs/architecture.md's table of layers names every library module with exactly what LAYERS lets it import."""
    text = (REPO_ROOT / 'docs' / 'architecture.md').read_text(encoding='utf-8')
    table = text.split('| layer | may import from the project |', 1)[1].split('\n\n', 1)[0].splitlines()[2:]
    documented = {}
    for row in table:
        modules, allowed = (cell.strip() for cell in row.strip('|').split('|'))
        if modules.startswith('the scripts'):
            continue
        for module in re.findall(r'`(\w+)\.py`', modules):
            documented[module] = set() if allowed == 'nothing' else {m.strip() for m in allowed.split(',')}
    assert documented == LAYERS


def test_pyav_is_the_video_modules_and_only_test_py_and_app_py_import_it():
    assert {name for name in project_modules() if imports_of(name, ['av'])} == {'video'}
    assert {name for name in project_modules() if imports_of(name, ['video'])} <= {'test', 'app'}


def test_the_loaders_names_stay_importable_from_inference():
    sys.path.insert(0, str(REPO_ROOT))
    import checkpoints
    import inference
    for name in ('load_sr_model', 'describe_checkpoint', 'suite_checkpoint', 'convert_legacy_checkpoint',
                 'add_assumption_args', 'add_weights_arg', 'ModelDescription'):
        assert getattr(inference, name) is getattr(checkpoints, name), name


def test_the_design_cards_names_stay_where_it_put_them():
    sys.path.insert(0, str(REPO_ROOT))
    import models
    import utils
    for name in ('SRResNet', 'Generator', 'Discriminator', 'TruncatedVGG19'):
        assert isinstance(getattr(models, name), type), name
    assert isinstance(utils.ImageTransforms, type) and callable(utils.convert_image)


if __name__ == '__main__':
    order = list(LAYERS) + [n for n in project_modules() if n not in LAYERS]
    for name in order:
        print(f"{name:18s} -> {', '.join(graph()[name]) or '(nothing from the project)'}")
