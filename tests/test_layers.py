"""The package is layered: a module imports cxr_tf modules of its own layer or lower ones, and
no library module imports an app (ARCHITECTURE.md). Read from the source, so imports inside
functions count too."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cxr_tf"
APPS = {"train", "evaluate", "export", "predict", "prepare", "stats", "flags", "cli",
        "synthetic.__main__"}
# Lowest first. A module's layer is that of its longest listed prefix.
LAYERS = [
    {"labels", "atomic", "configs", "errors", "schema", "archs"},
    {"model", "model_resnet", "model_applications", "pretrained", "losses"},
    {"data"},
    {"datasets", "synthetic"},
    {"evaluation"},
    {"serving"},
    {"training"},
    APPS,
]


def layer_of(name):
    """'data.images' -> 2; apps -> the top layer."""
    if not name:
        return 0  # the package's own __init__
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        for level, members in enumerate(LAYERS):
            if prefix in members:
                return level
    raise AssertionError(f"cxr_tf.{name} is in no layer: add it to LAYERS")


def module_name(path):
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def cxr_imports(path):
    """cxr_tf module names imported by the file, e.g. {'data.images', 'labels'}."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name[len("cxr_tf."):] for a in node.names
                         if a.name.startswith("cxr_tf."))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "cxr_tf":
                found.update(a.name for a in node.names if a.name != "__version__")
            elif node.module.startswith("cxr_tf."):
                found.add(node.module[len("cxr_tf."):])
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "dummy_data" not in p.parts)


def test_layer_of():
    assert layer_of("data.images") == 2
    assert layer_of("serving.run_dir") == 5
    assert layer_of("synthetic.__main__") == len(LAYERS) - 1
    assert layer_of("synthetic.generator") == 3
    with pytest.raises(AssertionError, match="cxr_tf.nowhere is in no layer"):
        layer_of("nowhere")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p) or "__init__")
def test_imports_go_down_the_layers(path):
    name = module_name(path)
    level = layer_of(name)
    for imported in cxr_imports(path):
        if layer_of(imported) == len(LAYERS) - 1 and name not in APPS:
            pytest.fail(f"cxr_tf.{name} (library) imports the app cxr_tf.{imported}")
        assert layer_of(imported) <= level, (
            f"cxr_tf.{name} (layer {level}) imports cxr_tf.{imported} "
            f"(layer {layer_of(imported)})")


def test_apps_are_imported_by_no_module():
    for path in MODULES:
        name = module_name(path)
        if name in APPS:
            continue
        assert not {i for i in cxr_imports(path) if i in APPS}, name
