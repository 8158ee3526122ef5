"""No function in cxr_tf/ is over 60 lines or takes more than 8 parameters: past that it does
two jobs, or its arguments are a group that wants a name (a config, a value object). Read from
the source, so nested functions and methods count too; `self`/`cls` are not counted,
keyword-only parameters, *args and **kwargs are. Each exception is listed with its reason."""

import ast
from pathlib import Path


PACKAGE = Path(__file__).resolve().parents[1] / "cxr_tf"
MAX_LINES = 60
MAX_PARAMETERS = 8
# {"module:qualified.name": reason}: none today. An exception names its reason, and one
# that is no longer needed fails too.
EXCEPTIONS = {}


def module_name(path):
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def functions(path):
    """(qualified name, lines, parameters) of every function and method in the file."""
    found = []

    def walk(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = prefix + child.name
                found.append((name, child.end_lineno - child.lineno + 1, parameters(child)))
                walk(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                walk(child, prefix + child.name + ".")

    walk(ast.parse(path.read_text()), "")
    return found


def parameters(function):
    args = function.args
    names = [a.arg for a in args.posonlyargs + args.args]
    if names and names[0] in ("self", "cls"):
        names = names[1:]
    return len(names) + len(args.kwonlyargs) + bool(args.vararg) + bool(args.kwarg)


def oversized():
    """{"module:name": "N lines, M parameters"} of every function over either limit."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if "dummy_data" in path.parts:
            continue
        for name, lines, count in functions(path):
            if lines > MAX_LINES or count > MAX_PARAMETERS:
                found[f"{module_name(path)}:{name}"] = f"{lines} lines, {count} parameters"
    return found


def test_parameters_are_counted_as_documented():
    tree = ast.parse("class A:\n    def f(self, a, /, b, *c, d, **e): pass\n"
                     "def g(cls, x=1): pass\n")
    method, function = tree.body[0].body[0], tree.body[1]
    assert (parameters(method), parameters(function)) == (5, 1)


def test_no_function_is_over_60_lines_or_8_parameters():
    found = oversized()
    unlisted = {name: size for name, size in found.items() if name not in EXCEPTIONS}
    assert unlisted == {}, "split them, group their arguments, or list them with a reason"


def test_each_exception_is_still_needed():
    # One test rather than one per entry: with EXCEPTIONS empty a parametrized test would be
    # a permanent skip.
    stale = sorted(set(EXCEPTIONS) - set(oversized()))
    assert stale == [], "within the limits now: remove them from EXCEPTIONS"
