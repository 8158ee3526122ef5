"""tools/mutation_check.py: every planted bug still finds its code (a refactor that moves it
fails here, in milliseconds, not silently in the mutation run) and names tests that exist.
The mutation run itself (a few minutes) is in docs/ARCHITECTURE.md."""

import ast
import os

import pytest

from tools import mutation_check


@pytest.mark.parametrize("mutation", mutation_check.MUTATIONS, ids=lambda m: m.name)
def test_each_mutation_applies_once_and_names_real_tests(mutation, tmp_path):
    source = os.path.join(mutation_check.ROOT, mutation.path)
    copy = tmp_path / mutation.path
    copy.parent.mkdir(parents=True)
    copy.write_text(open(source, encoding="utf-8").read(), encoding="utf-8")
    mutation_check.apply(mutation, str(tmp_path))
    mutated = copy.read_text(encoding="utf-8")
    assert mutation.replace in mutated and mutation.find not in mutated
    ast.parse(mutated)  # the planted bug is still Python: it fails tests, not the import
    for test in mutation.tests:
        path, _, name = test.partition("::")
        tree = ast.parse(open(os.path.join(mutation_check.ROOT, path), encoding="utf-8").read())
        if name:
            assert name in {node.name for node in tree.body
                            if isinstance(node, ast.FunctionDef)}, test


def test_a_mutation_whose_code_moved_is_an_error_not_a_silent_pass(tmp_path):
    moved = mutation_check.Mutation("moved", "x.py", "old text", "new text", ())
    (tmp_path / "x.py").write_text("nothing to find\n")
    with pytest.raises(ValueError, match=r"moved: 'old text' occurs 0 times in x.py, not once"):
        mutation_check.apply(moved, str(tmp_path))
