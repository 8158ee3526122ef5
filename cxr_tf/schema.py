"""Configuration fields that describe themselves: default, help, bounds and choices, written once.

A config is a frozen dataclass whose fields are made with `option(...)` and whose
`__post_init__` calls `check(self)`. The apps generate their absl flags from the same fields
(`cxr_tf.flags.define_config`), so each default, bound and list of choices exists in one
place, and a value is checked in one place, when the config is built, whether by an app, a
test or a tool. Errors are `ConfigError`s naming the field (the apps add the `--`).

    @dataclasses.dataclass(frozen=True)
    class ExportConfig:
        model_dir: str | None = option(None, "Run dir written by cxr_tf.train.")
        threshold: float = option(0.5, "Decision threshold.", check=in_open_unit_interval)

        def __post_init__(self):
            schema.check(self)

Field types: bool, int, float, str (with `choices`: an enum), tuple (a comma-separated list
on the command line), each optionally `| None` when the default is None.
"""

import dataclasses
import math
import types
import typing

from cxr_tf.errors import ConfigError

_KEY = "cxr_tf.schema"


@dataclasses.dataclass(frozen=True)
class Spec:
    """What `option` records about a field.

    convert: value -> value, applied first (e.g. threshold text to floats); raises ValueError
        whose message is the reason. check: value -> None, applied last, likewise.
    flag: False keeps a field off the command line (set by code only).
    """

    help: str
    choices: tuple | None = None
    lower: float | None = None
    upper: float | None = None
    convert: typing.Callable | None = None
    check: typing.Callable | None = None
    flag: bool = True


def option(default, help, *, choices=None, lower=None, upper=None, convert=None, check=None,
           flag=True):
    """A dataclass field with its help, bounds (inclusive) and choices."""
    spec = Spec(help, None if choices is None else tuple(choices), lower, upper, convert, check,
                flag)
    return dataclasses.field(default=default, metadata={_KEY: spec})


def specs(cls):
    """[(dataclasses.Field, Spec, base type)] of a config class's option fields, in order."""
    hints = typing.get_type_hints(cls)
    return [(f, f.metadata[_KEY], base_type(hints[f.name]))
            for f in dataclasses.fields(cls) if _KEY in f.metadata]


def base_type(annotation):
    """`int | None` -> int; `tuple` -> tuple."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        kinds = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(kinds) != 1:
            raise TypeError(f"a config field has one type (or it | None), not {annotation}")
        annotation = kinds[0]
    return typing.get_origin(annotation) or annotation


def check(config):
    """Checks (and normalizes, e.g. "0.4" -> 0.4) every option field of a frozen config in
    place. Raises ConfigError for the first bad value."""
    for field, spec, kind in specs(type(config)):
        value = getattr(config, field.name)
        checked = _checked(field.name, value, kind, spec, optional=field.default is None)
        if checked is not value:
            object.__setattr__(config, field.name, checked)


def _checked(name, value, kind, spec, optional):
    if value is None:
        if optional:
            return None
        raise ConfigError(name, value, "is required")
    try:
        if spec.convert is not None:
            value = spec.convert(value)
        value = _typed(value, kind)
        if spec.choices is not None:
            _check_choices(value, spec.choices)
        _check_bounds(value, spec.lower, spec.upper)
        if spec.check is not None:
            spec.check(value)
    except ValueError as e:
        raise ConfigError(name, value, str(e)) from None
    return value


def _typed(value, kind):
    if kind is bool and not isinstance(value, bool):
        raise ValueError("must be true or false")
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError("must be an integer")
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError("must be a number")
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return float(value)
    if kind is str and not isinstance(value, str):
        raise ValueError("must be text")
    if kind is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ValueError("must be a list")
        return tuple(value)
    return value


def _check_choices(value, choices):
    for item in value if isinstance(value, tuple) else (value,):
        if item not in choices:
            raise ValueError(f"must be one of {', '.join(map(str, choices))}")


def _check_bounds(value, lower, upper):
    # The side that was crossed: "must be at least 1" says more about batch_size=0 than
    # "must lie in [1, 2147483647]" (--help shows both bounds).
    for item in value if isinstance(value, tuple) else (value,):
        if lower is not None and item < lower:
            raise ValueError(f"must be at least {lower}")
        if upper is not None and item > upper:
            raise ValueError(f"must be at most {upper}")


# --- checks several configs use (each raises ValueError(reason)) -------------------------------

def positive(value):
    if not value > 0:
        raise ValueError("must be > 0")


def in_open_unit_interval(value):
    for item in value if isinstance(value, tuple) else (value,):
        if not 0.0 < item < 1.0:
            raise ValueError("must lie in (0, 1)")


def fraction_below_one(value):
    if not 0.0 <= value < 1.0:
        raise ValueError("must lie in [0, 1)")


def floats(values):
    """convert= for a tuple of numbers given as numbers or text ("0.4,0.5" on the command
    line arrives as ["0.4", "0.5"])."""
    if isinstance(values, (str, int, float)) and not isinstance(values, bool):
        values = str(values).split(",") if isinstance(values, str) else [values]
    out = []
    for value in values:
        try:
            out.append(float(value))
        except (TypeError, ValueError):
            raise ValueError(f"must be numbers ({value!r} is not)") from None
    if not out:
        raise ValueError("must hold at least one value")
    return tuple(out)
