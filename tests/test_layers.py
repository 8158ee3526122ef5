"""The package is layered: a module imports cxr_tf modules of its own layer or lower ones, and
no library module imports an app (docs/ARCHITECTURE.md); no module imports itself through
others (no import cycle). Read from the source, so imports inside functions count too."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cxr_tf"
APPS = {"train", "evaluate", "export", "predict", "prepare", "stats", "flags", "cli",
        "synthetic.__main__"}
# Lowest first. A module's layer is that of its longest listed prefix.
LAYERS = [
    {"labels", "atomic", "configs", "errors", "schema", "archs", "options", "locks", "tf_logs",
     "console"},
    {"model", "model_resnet", "model_applications", "pretrained", "losses"},
    {"data"},
    {"datasets", "synthetic"},
    {"runs"},
    {"evaluation"},
    {"serving"},
    {"training"},
    {"testing"},  # builders of test inputs, shared by tests and tools
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
    assert layer_of("runs.record") == 4
    assert layer_of("serving.predictor") == 6
    assert layer_of("synthetic.__main__") == len(LAYERS) - 1
    assert layer_of("synthetic.generator") == 3
    assert layer_of("testing.image_bytes") == len(LAYERS) - 2
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


def test_the_package_never_imports_the_tools():
    """tools/ import cxr_tf (cxr_tf.testing's builders among it); never the other way."""
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not [n for n in names if n.split(".")[0] == "tools"], module_name(path)


def imported_modules(path):
    """The cxr_tf modules (by `module_name`) the file imports, at module level or inside a
    function: `from cxr_tf.data import images` is data.images, `from cxr_tf.synthetic import
    render` (a name, not a module) is the package synthetic."""
    known = {module_name(p) for p in MODULES}

    def resolve(dotted):
        name = dotted.removeprefix("cxr_tf").removeprefix(".")
        return name if dotted.split(".")[0] == "cxr_tf" and name in known else None

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(resolve(a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.update(resolve(f"{node.module}.{a.name}") or resolve(node.module)
                         for a in node.names)
    return found - {None}


def find_cycle(graph):
    """One import cycle of `graph` ({module: imported modules}) as a list of modules, its first
    one repeated at the end; None when there is none (depth-first search)."""
    state, trail = {}, []  # state: 1 on the trail, 2 done

    def visit(module):
        state[module] = 1
        trail.append(module)
        for imported in sorted(graph.get(module, ())):
            if state.get(imported) == 1:
                return trail[trail.index(imported):] + [imported]
            if imported not in state and (cycle := visit(imported)):
                return cycle
        state[module] = 2
        trail.pop()
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_find_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"b"}}) == ["b", "c", "b"]
    assert find_cycle({"x": {"x"}}) == ["x", "x"]


def test_imported_modules_resolves_submodules_and_names():
    assert {"data.image_header", "data.dicom"} <= imported_modules(PACKAGE / "data" / "images.py")
    assert "synthetic.renderer" in imported_modules(PACKAGE / "synthetic" / "__init__.py")


def test_no_import_cycle():
    graph = {module_name(p): imported_modules(p) for p in MODULES}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(f"cxr_tf.{m}" for m in cycle)
