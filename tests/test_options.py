"""cxr_tf.options: the shared options, one default and one bound each, agree with the layers
above that use the same numbers (milliseconds)."""

import dataclasses
import re
from pathlib import Path

import pytest

from cxr_tf import errors, options, schema


@dataclasses.dataclass(frozen=True)
class Shared:
    data_dir: str | None = options.data_dir()
    image_size: int = options.image_size()
    stats_size: int | None = options.image_size("Which size.", default=None)
    max_pixels: int = options.max_pixels()
    threshold: float = options.threshold()
    checkpoint: str = options.checkpoint()

    def __post_init__(self):
        schema.check(self)


def test_the_limits_are_the_data_layers():
    from cxr_tf.data import images

    assert options.MAX_PIXELS == images.MAX_PIXELS
    assert Shared().max_pixels == images.MAX_PIXELS


def test_paths_become_text_and_values_are_checked_once():
    assert Shared(data_dir=Path("/data/tfds")).data_dir == "/data/tfds"
    assert Shared().stats_size is None and Shared().image_size == 224
    for changes, message in [({"image_size": 31}, "image_size must be at least 32"),
                             ({"threshold": 1.0}, "threshold must lie in (0, 1)"),
                             ({"checkpoint": "mid"}, "checkpoint must be one of best, last"),
                             ({"max_pixels": 2**41},
                              "max_pixels must be at most 1099511627776"),
                             ({"data_dir": 3}, "data_dir must be text")]:
        with pytest.raises(errors.ConfigError, match="^" + re.escape(message)):
            Shared(**changes)


def test_every_count_a_user_types_is_bounded_by_what_its_consumers_take():
    """Every integer option of every app has an upper bound (issue: --seed=4294967296 and
    --batch_size=2**63 were tracebacks), and the shared ones are the documented limits."""
    from cxr_tf.datasets.config import PrepareConfig, StatsConfig
    from cxr_tf.evaluation.config import EvalConfig
    from cxr_tf.runs.config import RunConfig
    from cxr_tf.serving.config import ExportConfig, PredictConfig
    from cxr_tf.synthetic.config import SyntheticConfig

    for config in (RunConfig, PrepareConfig, StatsConfig, EvalConfig, ExportConfig,
                   PredictConfig, SyntheticConfig):
        for field, spec, kind in schema.specs(config):
            if kind is int:
                assert spec.lower is not None and spec.upper is not None, \
                    f"{config.__name__}.{field.name}"
    assert options.MAX_SEED == 2**32 - 1 and options.MAX_COUNT == 2**31 - 1
    assert options.MAX_IMAGE_SIZE ** 2 == options.MAX_PIXELS_LIMIT
    # The consumers: numpy's legacy seeding stops at 2**32 - 1; two counts multiply within
    # int64 (epochs × steps per epoch: the optimizer's iteration counter).
    import numpy as np

    np.random.seed(options.MAX_SEED)
    with pytest.raises(ValueError):
        np.random.seed(options.MAX_SEED + 1)
    assert options.MAX_COUNT * options.MAX_COUNT < 2**63
