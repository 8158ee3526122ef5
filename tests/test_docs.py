"""The README and docs/ say what the code does, and a newcomer reads the README in five minutes.

README.md: at most 1,000 words (counted as `wc -w` counts: whitespace-separated words of the
Markdown text) and no paragraph (a block between blank lines: a list or a table is one) over
200; its first two code blocks are the fresh-machine commands, and `.ci/run` runs the second;
its command list names every app, and each app's module docstring starts with that command;
it links every page of docs/. README and docs/*.md: every relative link resolves (its #anchor
too); every `cxr_tf.<module>[.<name>]`, path (`cxr_tf/…`, `tools/…`, `tests/…`, `docs/…`,
`configs/…`) and `test_x.py::test_y` they name exists; every flag of a `python -m cxr_tf.<app>`
command is one that app defines; no page speaks of the project's issues. So a renamed module,
test or flag fails here instead of misleading a reader. Read from the files; only the apps'
flag definitions (pure Python, no TensorFlow) are imported.
"""

import ast
import glob
import re
from pathlib import Path

import pytest
from absl import flags as absl_flags

from cxr_tf import flags as cxr_flags

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cxr_tf"
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
MAX_WORDS = 1000
MAX_PARAGRAPH_WORDS = 200
INSTALL = "python3 -m venv .venv && . .venv/bin/activate && "
DEMO_COMMAND = INSTALL + "pip install -e . && python -m cxr_tf.train --flagfile=demo.cfg"
TEST_COMMAND = INSTALL + "pip install -q -e '.[test]' && python -m pytest -q"
COMMANDS_HEADING = "## Commands"
# absl's own flags, which every app accepts.
ABSL_FLAGS = {"flagfile", "help", "helpfull", "helpshort", "helpxml", "undefok"}


def page_id(path):
    return str(path.relative_to(ROOT))


def text(path):
    return path.read_text(encoding="utf-8")


def words(markdown):
    return len(markdown.split())


def paragraphs(markdown):
    return [block for block in re.split(r"\n[ \t]*\n", markdown) if block.strip()]


def code_blocks(markdown):
    """The fenced code blocks' contents, in order."""
    return re.findall(r"^```[^\n]*\n(.*?)^```", markdown, flags=re.M | re.S)


def without_code_blocks(markdown):
    return re.sub(r"^```[^\n]*\n.*?^```", "", markdown, flags=re.M | re.S)


def section(markdown, heading):
    """The text under `heading` up to the next heading of the same or a higher level."""
    level = heading.split()[0]
    match = re.search(rf"^{re.escape(heading)}[ \t]*\n(.*?)(?=^#{{1,{len(level)}}} |\Z)",
                      markdown, flags=re.M | re.S)
    return match.group(1) if match else ""


# --- README: length and the first two commands ---

def test_word_and_paragraph_counting():
    # As `wc -w` counts, markup included: '#' and each '|' are words.
    assert words("# Title\n\nOne `two` three-four.\n| a | b |\n") == 10
    assert paragraphs("a b\nc\n\n\n  \nd\n") == ["a b\nc", "d\n"]
    assert code_blocks("x\n```bash\nls -l\n```\ny\n```\npwd\n```\n") == ["ls -l\n", "pwd\n"]
    assert section("## A\na\n### B\nb\n## C\nc\n", "## A") == "a\n### B\nb\n"


def test_readme_is_read_in_five_minutes():
    readme = text(README)
    assert words(readme) <= MAX_WORDS, f"README.md has {words(readme)} words (at most {MAX_WORDS})"
    long = [(words(p), p[:60]) for p in paragraphs(readme) if words(p) > MAX_PARAGRAPH_WORDS]
    assert not long, f"README.md paragraphs over {MAX_PARAGRAPH_WORDS} words: {long}"


def test_readme_starts_with_the_two_fresh_machine_commands():
    first, second = [block.strip() for block in code_blocks(text(README))[:2]]
    assert (first, second) == (DEMO_COMMAND, TEST_COMMAND)
    assert (PACKAGE / "configs" / "demo.cfg").is_file()


def test_ci_runs_exactly_the_readmes_test_command():
    """`.ci/run` is what CI runs: its one command is README's second, word for word."""
    second = code_blocks(text(README))[1].strip()
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    commands = [line for line in lines if line and not line.startswith(("#", "set ", "cd "))]
    assert commands == [second]


# --- README: the command list and the apps' docstrings ---

def package_apps():
    """`python -m cxr_tf.<app>` for every module of the package that runs as a program."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(text(path))
        if not any(isinstance(node, ast.If) and "__name__" in ast.unparse(node.test)
                   for node in tree.body):
            continue
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__main__" else parts)
        found[f"python -m cxr_tf.{name}"] = path
    return found


def program(command):
    """The program part of a command and the file whose docstring documents it."""
    if match := re.match(r"python -m cxr_tf\.([\w.]+)", command):
        name = match.group(1)
        module = PACKAGE.joinpath(*name.split("."))
        path = module / "__main__.py" if module.is_dir() else module.with_suffix(".py")
        return match.group(0), path
    if match := re.match(r"python (tools/\w+\.py)", command):
        return match.group(0), ROOT / match.group(1)
    if match := re.match(r"tfds build \w+ --imports=(cxr_tf\.datasets\.\w+)", command):
        folder = ROOT.joinpath(*match.group(1).split("."))
        builders = sorted(folder.glob("*_dataset_builder.py"))
        return match.group(0), builders[0] if builders else folder
    raise AssertionError(f"README's command list: {command!r} is no known kind of command")


def listed_commands():
    """The lines of the command list's code block, comments dropped."""
    blocks = code_blocks(section(text(README), COMMANDS_HEADING))
    lines = [line.split(" #")[0].strip() for line in (blocks[0] if blocks else "").splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def test_the_command_list_names_every_app():
    assert listed_commands(), f"README.md has no {COMMANDS_HEADING!r} section with a code block"
    listed = {program(command)[0] for command in listed_commands()}
    missing = set(package_apps()) - listed
    assert not missing, f"README's {COMMANDS_HEADING} lacks {sorted(missing)}"
    assert {"python tools/plot_history.py",
            "tfds build nih_chest_xray14 --imports=cxr_tf.datasets.nih_chest_xray14"} <= listed


def command_id(command):
    """A command's program, as its test id: `python -m cxr_tf.train`."""
    match = re.match(r"python -m \S+|python \S+|tfds build \S+ --imports=\S+|tfds build \S+",
                     command)
    return match.group(0) if match else command


@pytest.mark.parametrize("command", listed_commands(), ids=command_id)
def test_each_apps_docstring_starts_with_its_command(command):
    """PEP 257's summary line, a blank line, then the command as a user types it."""
    name, path = program(command)
    assert path.is_file(), f"{command}: {path} not found"
    docstring = ast.get_docstring(ast.parse(text(path))) or ""
    usage = docstring.split("\n\n")[1].strip() if "\n\n" in docstring else ""
    assert usage.startswith(name + " "), (
        f"{path.relative_to(ROOT)}: the docstring's first paragraph after the summary is "
        f"{usage[:80]!r}, not the command {name!r}")


def test_readme_links_every_docs_page():
    linked = {target.resolve() for target, _ in links(README)}
    unlinked = [page_id(page) for page in PAGES[1:] if page.resolve() not in linked]
    assert not unlinked, f"README.md links no {unlinked}"


# --- README and docs: links, names, flags ---

def links(page):
    """(target path, anchor) of every relative link of a Markdown page."""
    body = without_code_blocks(text(page))
    targets = re.findall(r"!?\[[^\]]*\]\(<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\)", body)
    targets += re.findall(r"^\s*\[[^\]]+\]:\s*(\S+)", body, flags=re.M)
    found = []
    for target in targets:
        if re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        found.append((page.parent / path if path else page, anchor))
    return found


def slug(heading):
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page):
    headings = re.findall(r"^#{1,6}[ \t]+(.+?)[ \t]*#*$", without_code_blocks(text(page)),
                          flags=re.M)
    return {slug(heading) for heading in headings}


def test_link_and_anchor_helpers():
    assert slug("What a run writes (`--model_dir`)") == "what-a-run-writes---model_dir"
    assert slug("NIH boxes: `BBox_List_2017.csv`") == "nih-boxes-bbox_list_2017csv"
    assert "the-real-data" in anchors(README)
    assert (README.parent / "docs" / "DATA.md", "split") in links(README.parent / "docs" /
                                                                   "TRAINING.md")


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_relative_link_resolves(page):
    broken = []
    for target, anchor in links(page):
        if not target.exists():
            broken.append(str(target.relative_to(ROOT)))
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            broken.append(f"{target.relative_to(ROOT)}#{anchor}")
    assert not broken, f"{page_id(page)}: broken links {broken}"


def defined_names(path):
    """Top-level names a module defines or imports, with each class's attributes."""
    names = {}
    for node in ast.parse(text(path)).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names[node.name] = set()
        elif isinstance(node, ast.ClassDef):
            names[node.name] = {n.name for n in node.body if hasattr(n, "name")} | {
                n.target.id for n in node.body
                if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update({n.id: set() for t in targets for n in ast.walk(t)
                          if isinstance(n, ast.Name)})
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update({(a.asname or a.name).split(".")[0]: set() for a in node.names})
    return names


def module_file(parts):
    """The file of module cxr_tf.<parts> (its __init__.py for a package), or None."""
    base = PACKAGE.joinpath(*parts)
    for candidate in (base.with_suffix(".py") if parts else None, base / "__init__.py"):
        if candidate and candidate.is_file():
            return candidate
    return None


def dotted_name_exists(dotted):
    """`cxr_tf.a.b.c`: the longest prefix that is a module exists, the next part is a name
    it defines and, when that is a class, the part after it one of the class's."""
    parts = dotted.split(".")[1:]
    for end in range(len(parts), -1, -1):
        path = module_file(parts[:end])
        if path is None:
            continue
        rest = parts[end:]
        if not rest:
            return True
        names = defined_names(path)
        return rest[0] in names and (len(rest) == 1 or rest[1] in names[rest[0]]
                                     or not names[rest[0]])
    return False


def stale_names(markdown):
    """Every module, path and test the text names that does not exist."""
    stale = [name for name in re.findall(r"\bcxr_tf(?:\.[A-Za-z_]\w*)+", markdown)
             if not dotted_name_exists(name)]
    for path in re.findall(r"(?<![\w/.~-])((?:cxr_tf|tools|tests|docs|configs)/[\w./*-]*)",
                           markdown):
        path = path.rstrip(".")
        if not glob.glob(str(ROOT / path)):
            stale.append(path)
    for file, test in re.findall(r"\b(test_\w+\.py)(?:::(\w+))?", markdown):
        module = ROOT / "tests" / file
        if not module.is_file():
            stale.append(file)
        elif test and not re.search(rf"^\s*def {test}\(", text(module), flags=re.M):
            stale.append(f"{file}::{test}")
    return stale


def test_stale_names_are_found():
    assert stale_names("`cxr_tf.metadata.build_index(DIR)` and cxr_tf.data.metadata.nowhere") \
        == ["cxr_tf.metadata.build_index", "cxr_tf.data.metadata.nowhere"]
    assert stale_names("`cxr_tf.data.metadata.build_index`, `cxr_tf.runs.record.RunRecord`, "
                       "`python -m cxr_tf.synthetic`, cxr_tf.labels.LABELS.") == []
    assert stale_names("cxr_tf/serving/run_dir.py, tools/bench_*.py, tools/nope_*.py, "
                       "cxr_tf/configs/, ~/tests/x, RUN/docs/y") \
        == ["cxr_tf/serving/run_dir.py", "tools/nope_*.py"]
    assert stale_names("test_layers.py::test_no_import_cycle, test_layers.py::test_gone, "
                       "test_gone.py") == ["test_layers.py::test_gone", "test_gone.py"]


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_module_path_and_test_named_exists(page):
    stale = stale_names(text(page))
    assert not stale, f"{page_id(page)} names what does not exist: {stale}"


def command_texts(markdown):
    """Inline code spans, and the lines of code blocks (fenced, or indented four spaces),
    joined across `\\` continuations."""
    prose = without_code_blocks(markdown).replace("\\\n", " ")
    spans = re.findall(r"`([^`\n]+)`", prose)
    spans += re.findall(r"^(?: {4,}|\t)([^`\n]+)$", prose, flags=re.M)
    for block in code_blocks(markdown):
        spans += block.replace("\\\n", " ").splitlines()
    return spans


def defined_flags():
    """{app: {flag: is boolean}}, from each app's `cli.run(main, flags.define_…)` call."""
    found = {}
    for command, path in package_apps().items():
        calls = [n for n in ast.walk(ast.parse(text(path))) if isinstance(n, ast.Call)
                 and ast.unparse(n.func) == "cli.run"]
        assert calls, f"{path}: no cli.run(main, flags.define_...) call"
        define = getattr(cxr_flags, ast.unparse(calls[0].args[1]).removeprefix("flags."))
        values = absl_flags.FlagValues()
        define(values)
        found[command.removeprefix("python -m ")] = {
            name: isinstance(values[name], absl_flags.BooleanFlag) for name in values}
    return found


@pytest.fixture(scope="module")
def app_flags():
    return defined_flags()


def unknown_flags(markdown, defined):
    unknown = []
    for span in command_texts(markdown):
        for match in re.finditer(r"python -m (cxr_tf\.[\w.]+)([^`#|;&]*)", span):
            app, args = match.groups()
            if app not in defined:
                continue  # the name itself is checked by stale_names
            for name in re.findall(r"(?<![\w-])--([a-z]\w*)", args):
                negated = name.startswith("no") and defined[app].get(name[2:])
                if name not in defined[app] and not negated and name not in ABSL_FLAGS:
                    unknown.append(f"{app} --{name}")
    return unknown


def test_unknown_flags_are_found():
    defined = {"cxr_tf.train": {"augment": True, "epochs": False}}
    assert unknown_flags("`python -m cxr_tf.train --epochs=2 --noaugment --flagfile=x "
                         "--epoch=3 --noepochs` and `--elsewhere`", defined) \
        == ["cxr_tf.train --epoch", "cxr_tf.train --noepochs"]
    indented = "Run\n\n    python -m cxr_tf.train --epochs=1 \\\n        --augmnet\n\nthen\n"
    fenced = "```\npython -m cxr_tf.train --epochs=1 \\\n  --epohcs=2\n```\n"
    assert unknown_flags(indented + fenced, defined) \
        == ["cxr_tf.train --augmnet", "cxr_tf.train --epohcs"]


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_flag_of_an_app_command_exists(page, app_flags):
    unknown = unknown_flags(text(page), app_flags)
    assert not unknown, f"{page_id(page)}: flags no app defines: {unknown}"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_pages_speak_to_users_not_of_the_projects_issues(page):
    found = re.findall(r"\bissues? #?\d+", text(page), flags=re.I)
    assert not found, f"{page_id(page)}: {found}"
