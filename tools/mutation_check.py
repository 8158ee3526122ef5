"""Plants known bugs in a copy of the tree, one at a time, and shows a fast test catches each.

    python tools/mutation_check.py [--only=NAME,NAME] [--keep]

Each mutation below is a realistic bug that the suite once let through: the learning-rate
schedule replaced by a constant (or its length counted in epochs instead of steps), the
SavedModel deciding without the No Finding rule, the label parser taking a variant spelling.
For each, the tracked and untracked (not ignored) files are copied to a temporary folder, the
one edit is made there (its text must occur exactly once, so a refactor that moves the code
fails loudly here instead of mutating nothing), and the mutation's fast test files run there
(`pytest -m "not slow" -n 0`): the mutation is caught when they fail. An unmutated copy runs
the same files first and must pass.

Prints a line per mutation, then one JSON line: {"baseline": "passed", "mutations":
{name: "caught" | "missed" | "error"}}. Exits 1 unless the baseline passes and every mutation
is caught. docs/ARCHITECTURE.md says when to run it.
"""

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Mutation:
    name: str
    path: str  # relative to the repository root
    find: str
    replace: str
    tests: tuple  # test files (or file::test ids) that must fail


MUTATIONS = (
    Mutation(
        "constant_learning_rate", "cxr_tf/training/runner.py",
        'if lr_schedule == "cosine":', 'if lr_schedule == "never":',
        ("tests/test_lr_schedule.py",)),
    Mutation(
        "decay_counted_in_epochs", "cxr_tf/training/runner.py",
        "total_steps=steps_per_epoch * config.epochs,", "total_steps=config.epochs,",
        ("tests/test_lr_schedule.py",)),
    Mutation(
        "serving_without_the_no_finding_rule", "cxr_tf/serving/graph.py",
        "labels.decide(findings, thresholds, no_finding, xp=tnp)",
        "labels.decide(findings, thresholds, None, xp=tnp)",
        ("tests/test_export.py::test_served_decisions_with_a_no_finding_output_are_labels_decide",
         "tests/test_export.py::test_no_finding_constraint_in_the_decision")),
    Mutation(
        "label_alias", "cxr_tf/labels.py",
        'names = [part.strip() for part in text.split("|")]',
        'names = [{"Pleural_thickening": "Pleural_Thickening"}.get(part.strip(), part.strip())'
        ' for part in text.split("|")]',
        ("tests/test_labels.py",)),
)


def files_to_copy(root=ROOT):
    """The working tree's tracked and untracked files that git does not ignore."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root,
                         capture_output=True, check=True).stdout
    return [name for name in out.decode().split("\0") if name]


def copy_tree(dest, root=ROOT):
    for name in files_to_copy(root):
        source = os.path.join(root, name)
        if os.path.isfile(source):
            os.makedirs(os.path.dirname(os.path.join(dest, name)), exist_ok=True)
            shutil.copy2(source, os.path.join(dest, name))


def apply(mutation, tree):
    """Makes the one edit in `tree`; ValueError unless its text occurs exactly once."""
    path = os.path.join(tree, mutation.path)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if text.count(mutation.find) != 1:
        raise ValueError(f"{mutation.name}: {mutation.find!r} occurs "
                         f"{text.count(mutation.find)} times in {mutation.path}, not once")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text.replace(mutation.find, mutation.replace))


def run_tests(tree, tests):
    """pytest's exit code on `tests` in `tree`, fast tests only, with the tree's own code."""
    env = {**os.environ, "PYTHONPATH": tree, "TF_CPP_MIN_LOG_LEVEL": "2",
           "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "0", "-x",
                           "-m", "not slow", "-p", "no:cacheprovider", *tests],
                          cwd=tree, env=env, capture_output=True, text=True)
    return proc.returncode, proc.stdout[-2000:]


def check(mutation, keep=False):
    """"caught" (the tests fail), "missed" (they pass) or "error" (pytest could not run)."""
    tree = tempfile.mkdtemp(prefix=f"mutant_{mutation.name}_")
    try:
        copy_tree(tree)
        apply(mutation, tree)
        code, _ = run_tests(tree, mutation.tests)
    finally:
        if not keep:
            shutil.rmtree(tree, ignore_errors=True)
    return {0: "missed", 1: "caught"}.get(code, "error")


def baseline(mutations):
    """The unmutated copy must pass every test file the mutations use."""
    tree = tempfile.mkdtemp(prefix="mutant_baseline_")
    try:
        copy_tree(tree)
        tests = sorted({t for m in mutations for t in m.tests})
        code, tail = run_tests(tree, tests)
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    return "passed" if code == 0 else f"failed ({code}): {tail.strip().splitlines()[-1:]}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="", help="comma-separated mutation names")
    parser.add_argument("--keep", action="store_true", help="keep the mutated copies")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only.split(",")]
    result = {"baseline": baseline(chosen), "mutations": {}}
    print(f"baseline: {result['baseline']}", flush=True)
    for mutation in chosen:
        start = time.monotonic()
        outcome = check(mutation, args.keep)
        result["mutations"][mutation.name] = outcome
        print(f"{mutation.name}: {outcome} ({time.monotonic() - start:.0f} s, "
              f"{', '.join(mutation.tests)})", flush=True)
    print(json.dumps(result))
    ok = result["baseline"] == "passed" and all(
        outcome == "caught" for outcome in result["mutations"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
