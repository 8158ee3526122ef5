"""Every absl flag of every cxr_tf app, generated from the apps' config classes, and flagfile
lookup by bare name.

An app defines its flags when it runs, not when it is imported (tests import several apps
into one process), through `cxr_tf.cli`:

    if __name__ == "__main__":
        cli.run(main, flags.define_train_flags)

Each app's flags are the fields of its config class (`define_config`): train's RunConfig,
prepare's PrepareConfig, ... Name, type, default, help, bounds and choices come from the field
(`cxr_tf.schema.option`), and an option several apps take (`data_dir`, `seed`, `batch_size`,
...) is one factory in `cxr_tf.options`, so it has one default and one bound everywhere. The
app builds its config with `build_config`, the one check of every value: a bad value is a
usage error that names the flag. Only `--tf_logs`, `--json` and `--dry_run`, which change how
an app runs rather than what it does, are defined here directly. Library code never reads
FLAGS: apps hand it a config or plain arguments.

`python -m cxr_tf.train --flagfile=thr05.cfg` works from any directory because
`expand_flagfiles` resolves a bare flagfile name against the working directory, then the
including file's directory, then the packaged `cxr_tf/configs/`; a name with a folder in it is
read from that folder or refused (`resolve_flagfile`). absl alone would resolve nested
`--flagfile=paper.cfg` lines against the working directory only.
"""

import codecs
import dataclasses
import os
import sys

from absl import app, flags

from cxr_tf import errors, options, schema

FLAGS = flags.FLAGS
CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
_FLAGFILE_PREFIXES = ("--flagfile=", "-flagfile=")


class FlagfileError(errors.UserError, ValueError):
    """A --flagfile that cannot be found or that includes itself."""


def resolve_flagfile(name, including_dir=None):
    """Returns the path of flagfile `name`.

    A bare name (`thr05.cfg`) is looked for in the working directory, beside the including
    flagfile, then among the packaged configs. A name with a folder in it (`exp/v7.cfg`,
    `/home/u/v7.cfg`, `~/v7.cfg`) is read from that folder (a relative one: from the working
    directory, or beside the including flagfile) or refused: a mistyped path must never
    load the packaged file of the same name instead.
    """
    path = os.path.expanduser(name)
    candidates = [path]
    if including_dir and not os.path.isabs(path):
        candidates.append(os.path.join(including_dir, path))
    bare = not os.path.dirname(path)
    if bare:
        candidates.append(os.path.join(CONFIG_DIR, path))
    for candidate in candidates:
        if os.path.isfile(candidate):
            return os.path.abspath(candidate)
    hint = ""
    if not bare and os.path.isfile(os.path.join(CONFIG_DIR, os.path.basename(path))):
        hint = (f"; a path is read only from its folder: for the packaged "
                f"{os.path.basename(path)} give its bare name")
    raise FlagfileError(
        f"flagfile {name!r} not found (looked in {', '.join(dict.fromkeys(candidates))}){hint}"
    )


def _flagfile_lines(path, stack):
    if path in stack:
        raise FlagfileError(f"flagfile {path} includes itself via {' -> '.join(stack)}")
    lines = []
    with open(path, "rb") as f:
        data = f.read()
    # An editor's byte-order mark at the start is not part of the first flag.
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise FlagfileError(f"flagfile {path}, line {line}: not UTF-8 text (byte "
                            f"0x{data[e.start]:02x})") from None
    for line in text.splitlines():
        line = line.strip()
        # absl's rules: '#' or '//' at the start of a line is a comment.
        if not line or line.startswith(("#", "//")):
            continue
        if line.startswith(_FLAGFILE_PREFIXES):
            sub = resolve_flagfile(line.split("=", 1)[1].strip(), os.path.dirname(path))
            lines.extend(_flagfile_lines(sub, stack + [path]))
        else:
            lines.append(line)
    return lines


def expand_flagfiles(argv):
    """Inlines every `--flagfile=NAME` of argv (recursively); later flags still win.

    Raises:
        FlagfileError: a flagfile is missing or includes itself.
    """
    out = list(argv[:1])
    args = iter(argv[1:])
    for arg in args:
        if arg in ("--flagfile", "-flagfile"):
            arg = "--flagfile=" + next(args, "")
        if arg.startswith(_FLAGFILE_PREFIXES):
            out.extend(_flagfile_lines(resolve_flagfile(arg.split("=", 1)[1]), []))
        else:
            out.append(arg)
    return out


_ABSL_KINDS = {bool: "bool", int: "integer", float: "float", str: "string", tuple: "list"}


def define_config(flag_values, cls, *, only=None, exclude=(), helps=None):
    """Defines one flag per option field of the config dataclass `cls` (cxr_tf.schema): its
    name, type, default, help and choices come from the field, so they are written once.

    No validators are registered: the config checks every value when the app builds it
    (`build_config`), which is the one place a value is checked. only/exclude pick fields;
    helps: {name: help} where an app means something narrower by a field.
    """
    for field, spec, kind in schema.specs(cls):
        if not spec.flag or (only is not None and field.name not in only) \
                or field.name in exclude:
            continue
        kind_name = "enum" if spec.choices and kind is str else _ABSL_KINDS[kind]
        default = field.default
        if kind is tuple and default is not None:
            default = [f"{v:g}" if isinstance(v, float) else str(v) for v in default]
        extra = {"enum_values": list(spec.choices)} if kind_name == "enum" else {}
        help_text = (helps or {}).get(field.name, spec.help) + _bounds_note(spec)
        _define(kind_name, field.name, default, help_text, flag_values, **extra)


def _define(kind, name, default, help, flag_values, **extra):
    # absl's --help lists the flags of the module named like sys.argv[0]: the app's.
    getattr(flags, f"DEFINE_{kind}")(name=name, default=default, help=help,
                                     flag_values=flag_values, module_name=sys.argv[0], **extra)


def _bounds_note(spec):
    if spec.lower is not None and spec.upper is not None:
        return f" [{spec.lower}, {spec.upper}]"
    if spec.lower is not None:
        return f" (>= {spec.lower})"
    if spec.upper is not None:
        return f" (<= {spec.upper})"
    return ""


def build_config(cls, flag_values=FLAGS, **values):
    """cls(**the flag values of its fields, **values); a bad value is a usage error naming the
    flag: `flag --learning_rate=-1.0: must be > 0`."""
    names = [f.name for f, _, _ in schema.specs(cls) if f.name in flag_values]
    try:
        return cls(**{name: flag_values[name].value for name in names}, **values)
    except errors.ConfigError as e:
        shown = flag_values[e.field].serialize() if e.field in flag_values else \
            f"{e.field}={e.value!r}"
        raise app.UsageError(f"flag {shown}: {e.reason}") from None


def _define_app_flags(flag_values, json=True):
    """The flags that change how an app runs, not what it does."""
    _define("bool", "tf_logs", False, "Show TensorFlow's C++ start-up lines (oneDNN, CUDA "
            "probing) and INFO lines, hidden by default; other warnings and errors always "
            "show.", flag_values)
    if json:
        _define("bool", "json", False, "Print one JSON object instead of the human summary.",
                flag_values)


# Each define_*_flags imports its config class when it is called, so an app loads only its own
# (the synthetic package brings numpy and PIL; no config module imports TensorFlow).
def define_synthetic_flags(flag_values=FLAGS):
    from cxr_tf.synthetic.config import SyntheticConfig

    _define_app_flags(flag_values, json=False)
    define_config(flag_values, SyntheticConfig)


def define_prepare_flags(flag_values=FLAGS):
    from cxr_tf.datasets.config import PrepareConfig

    _define_app_flags(flag_values)
    define_config(flag_values, PrepareConfig)


def define_stats_flags(flag_values=FLAGS):
    from cxr_tf.datasets.config import StatsConfig

    _define_app_flags(flag_values)
    define_config(flag_values, StatsConfig)


def define_train_flags(flag_values=FLAGS):
    from cxr_tf.runs.config import RunConfig

    _define_app_flags(flag_values)
    define_config(flag_values, RunConfig)
    _define("bool", "dry_run", False, "Print the resolved config and model summary, then "
            "exit.", flag_values)


def define_export_flags(flag_values=FLAGS):
    from cxr_tf.serving.config import ExportConfig

    _define_app_flags(flag_values)
    define_config(flag_values, ExportConfig)


def define_predict_flags(flag_values=FLAGS):
    from cxr_tf.serving.config import PredictConfig

    _define_app_flags(flag_values)
    define_config(flag_values, PredictConfig)


def define_evaluate_flags(flag_values=FLAGS):
    from cxr_tf.evaluation.config import EvalConfig

    _define_app_flags(flag_values)
    define_config(flag_values, EvalConfig)
