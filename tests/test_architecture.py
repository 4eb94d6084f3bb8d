"""The layers of the suite (README, "Architecture"): imports go one way, no script imports another, no project module
is imported inside a function, and the design card's names stay where it put them.

    python tests/test_architecture.py      # prints the project's import graph, layer by layer
"""
import ast
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

# Each library module and the project modules it may import.
LAYERS = {
    'utils': set(),
    'models': set(),
    'degradations': {'utils'},
    'datasets': {'utils', 'degradations'},
    'inference': {'utils', 'models'},
    'training': {'utils', 'models', 'datasets', 'inference'},
}
LIBRARY = set(LAYERS)


def project_modules():
    return sorted(p.stem for p in REPO_ROOT.glob('*.py'))


def imports_of(name):
    """{(imported project module, inside a function?)} for the top-level module ``name``."""
    tree = ast.parse((REPO_ROOT / f"{name}.py").read_text())
    project = set(project_modules())
    found = set()

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.update((a.name.split('.')[0], nested) for a in child.names if a.name.split('.')[0] in project)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                if child.module.split('.')[0] in project:
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
