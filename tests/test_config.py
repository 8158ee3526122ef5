"""cxr_tf.training.config.RunConfig: built once, frozen, checked with errors that name arguments."""

import dataclasses
import json

import pytest

from cxr_tf import flags
from cxr_tf.training.config import RunConfig


def test_defaults_are_the_papers_experiment():
    config = RunConfig()
    assert (config.learning_rate, config.batch_size, config.epochs) == (0.01, 64, 50)
    assert (config.optimizer, config.lr_schedule, config.image_size) == ("adam", "cosine", 224)
    assert config.thresholds == (0.5,) and config.num_outputs == 14
    assert RunConfig(no_finding_output=True).num_outputs == 15


def test_flag_text_thresholds_become_floats_and_are_recorded_as_text():
    config = RunConfig(thresholds=["0.4", "0.5", "0.60"])
    assert config.thresholds == (0.4, 0.5, 0.6)
    record = config.to_dict()
    assert record["thresholds"] == ["0.4", "0.5", "0.6"]
    assert json.loads(json.dumps(record)) == record  # config.json takes it as it is
    # ... named as the metrics name them (history.csv's f1@0.4 columns).
    from cxr_tf.evaluation import metrics

    odd = RunConfig(thresholds=[0.1234567, "0.3"]).to_dict()["thresholds"]
    assert odd == [metrics.format_threshold(0.1234567), metrics.format_threshold(0.3)]


def test_frozen_and_replace_checks_again():
    config = RunConfig(model_dir="run")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.epochs = 3
    assert config.replace(epochs=3).epochs == 3 and config.epochs == 50
    with pytest.raises(ValueError, match=r"^epochs must be at least 1, got 0$"):
        config.replace(epochs=0)


@pytest.mark.parametrize("changes, message", [
    ({"thresholds": ["1.5"]}, "thresholds must lie in (0, 1), got 1.5"),
    ({"thresholds": [0.0]}, "thresholds must lie in (0, 1), got 0.0"),
    ({"thresholds": ["high"]}, "thresholds must be numbers, got 'high'"),
    ({"thresholds": []}, "thresholds must hold at least one threshold, got none"),
    ({"learning_rate": float("nan")}, "learning_rate must be finite and > 0, got nan"),
    ({"learning_rate": 0.0}, "learning_rate must be finite and > 0, got 0.0"),
    ({"image_size": 16}, "image_size must be at least 32, got 16"),
    ({"image_size": 64.0}, "image_size must be an integer, got 64.0"),
    ({"batch_size": 0}, "batch_size must be at least 1, got 0"),
    ({"val_fraction": 0.95}, "val_fraction must lie in [0, 0.9], got 0.95"),
    ({"val_fraction": -0.1}, "val_fraction must lie in [0, 0.9], got -0.1"),
    ({"weight_decay": -1e-4}, "weight_decay must be finite and >= 0, got -0.0001"),
    ({"warmup_epochs": float("inf")}, "warmup_epochs must be finite and >= 0, got inf"),
    ({"optimizer": "lamb"}, "optimizer must be one of adam, adamw, sgd, got 'lamb'"),
    ({"strategy": "tpu"},
     "strategy must be one of auto, mirrored, multi_worker, one_device, got 'tpu'"),
    ({"steps_per_epoch": 0}, "steps_per_epoch must be None or at least 1, got 0"),
    ({"early_stop_patience": -1}, "early_stop_patience must be >= 0 (0: off), got -1"),
    ({"synthetic_num_images": 10}, "synthetic_num_images must be at least 20, got 10"),
    ({"synthetic_min_prevalence": 1.0}, "synthetic_min_prevalence must lie in [0, 1), got 1.0"),
])
def test_errors_name_the_argument_and_the_value(changes, message):
    with pytest.raises(ValueError) as error:
        RunConfig(**changes)
    assert str(error.value) == message
    assert "--" not in message  # a library error speaks of arguments, not flags


def test_every_train_flag_is_a_field():
    """The app builds RunConfig(**train flags): each flag needs a field of the same name."""
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    assert set(flags.TRAIN_FLAG_NAMES) <= fields, set(flags.TRAIN_FLAG_NAMES) - fields

