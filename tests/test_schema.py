"""cxr_tf.schema and the flags generated from it (cxr_tf.flags.define_config/build_config)."""

import dataclasses

import pytest
from absl import app
from absl import flags as absl_flags

from cxr_tf import flags, schema
from cxr_tf.errors import ConfigError, UserError


@dataclasses.dataclass(frozen=True)
class Example:
    name: str | None = schema.option(None, "A name.")
    size: int = schema.option(224, "Side.", lower=32)
    rate: float = schema.option(0.01, "Rate.", check=schema.positive)
    kind: str = schema.option("adam", "Kind.", choices=("adam", "sgd"))
    cuts: tuple = schema.option((0.5,), "Cuts.", convert=schema.floats,
                                check=schema.in_open_unit_interval)
    fast: bool = schema.option(False, "Fast.")
    hidden: int = schema.option(3, "Set by code.", flag=False)

    def __post_init__(self):
        schema.check(self)


def test_values_are_checked_and_normalized():
    config = Example(size=64, rate=1, cuts=["0.4", "0.6"])
    assert (config.size, config.rate, config.cuts) == (64, 1.0, (0.4, 0.6))
    assert isinstance(config.rate, float)


@pytest.mark.parametrize("kwargs,message", [
    ({"size": 31}, "size must be at least 32; received size=31"),
    ({"size": True}, "size must be an integer; received size=True"),
    ({"rate": 0.0}, "rate must be > 0; received rate=0.0"),
    ({"rate": float("nan")}, "rate must be a finite number; received rate=nan"),
    ({"kind": "rmsprop"}, "kind must be one of adam, sgd; received kind='rmsprop'"),
    ({"cuts": "0.5,1.5"}, "cuts must lie in (0, 1); received cuts=(0.5, 1.5)"),
    ({"cuts": ["x"]}, "cuts must be numbers ('x' is not); received cuts=['x']"),
    ({"kind": None}, "kind is required; received kind=None"),
])
def test_a_bad_value_is_a_config_error_naming_the_field(kwargs, message):
    with pytest.raises(ConfigError) as raised:
        Example(**kwargs)
    assert str(raised.value) == message
    assert raised.value.field == next(iter(kwargs))
    assert isinstance(raised.value, UserError) and isinstance(raised.value, ValueError)


def test_flags_are_generated_from_the_fields():
    values = absl_flags.FlagValues()
    flags.define_config(values, Example)
    assert "hidden" not in values
    values(["prog", "--size=64", "--kind=sgd", "--cuts=0.4,0.5", "--fast"])
    config = flags.build_config(Example, values)
    assert config == Example(size=64, kind="sgd", cuts=(0.4, 0.5), fast=True)
    assert values["size"].help == "Side. (>= 32)"
    assert values["cuts"].default == ["0.5"]


def test_a_bad_flag_value_is_a_usage_error_naming_the_flag():
    values = absl_flags.FlagValues()
    flags.define_config(values, Example)
    values(["prog", "--rate=-1"])
    with pytest.raises(app.UsageError, match=r"^flag --rate=-1.0: must be > 0$"):
        flags.build_config(Example, values)
