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
                             ({"max_pixels": 2**41}, "max_pixels must lie in [1, "),
                             ({"data_dir": 3}, "data_dir must be text")]:
        with pytest.raises(errors.ConfigError, match="^" + re.escape(message)):
            Shared(**changes)
