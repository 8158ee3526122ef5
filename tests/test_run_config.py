"""cxr_tf.runs.config.RunConfig: built once, frozen, checked with errors that name arguments,
and the train flags generated from its fields."""

import dataclasses
import json

import pytest
from absl import flags as absl_flags

from cxr_tf import errors, flags
from cxr_tf.runs.config import FIELDS, RunConfig


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


def test_paths_may_be_given_as_path_objects(tmp_path):
    assert RunConfig(model_dir=tmp_path, data_dir=tmp_path / "tfds").data_dir == \
        str(tmp_path / "tfds")


def test_frozen_and_replace_checks_again():
    config = RunConfig(model_dir="run")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.epochs = 3
    assert config.replace(epochs=3).epochs == 3 and config.epochs == 50
    with pytest.raises(errors.ConfigError, match=r"^epochs must be at least 1; received "
                                                 r"epochs=0$"):
        config.replace(epochs=0)


@pytest.mark.parametrize("changes, message", [
    ({"thresholds": ["1.5"]}, "thresholds must lie in (0, 1); received thresholds=(1.5,)"),
    ({"thresholds": [0.0]}, "thresholds must lie in (0, 1); received thresholds=(0.0,)"),
    ({"thresholds": ["high"]}, "thresholds must be numbers ('high' is not); received "
                               "thresholds=['high']"),
    ({"thresholds": []}, "thresholds must hold at least one value; received thresholds=[]"),
    ({"learning_rate": float("nan")}, "learning_rate must be a finite number; received "
                                      "learning_rate=nan"),
    ({"learning_rate": 0.0}, "learning_rate must be > 0; received learning_rate=0.0"),
    ({"image_size": 16}, "image_size must be at least 32; received image_size=16"),
    ({"image_size": 64.0}, "image_size must be an integer; received image_size=64.0"),
    ({"batch_size": 0}, "batch_size must be at least 1; received batch_size=0"),
    ({"val_fraction": 0.95}, "val_fraction must be at most 0.9; received val_fraction=0.95"),
    ({"val_fraction": -0.1}, "val_fraction must be at least 0.0; received val_fraction=-0.1"),
    ({"weight_decay": -1e-4}, "weight_decay must be at least 0.0; received "
                              "weight_decay=-0.0001"),
    ({"warmup_epochs": float("inf")}, "warmup_epochs must be a finite number; received "
                                      "warmup_epochs=inf"),
    ({"optimizer": "lamb"}, "optimizer must be one of adam, adamw, sgd; received "
                            "optimizer='lamb'"),
    ({"strategy": "tpu"}, "strategy must be one of auto, mirrored, multi_worker, one_device; "
                          "received strategy='tpu'"),
    ({"arch": "vgg16"}, "arch must be one of resnet18, resnet34, resnet50, resnet101, "
                        "resnet50_v1, resnet101_v1, densenet121, densenet169, efficientnetv2_s, "
                        "convnext_tiny; received arch='vgg16'"),
    ({"steps_per_epoch": 0}, "steps_per_epoch must be at least 1; received steps_per_epoch=0"),
    ({"early_stop_patience": -1}, "early_stop_patience must be at least 0; received "
                                  "early_stop_patience=-1"),
    ({"synthetic_num_images": 10}, "synthetic_num_images must be at least 20; received "
                                   "synthetic_num_images=10"),
    ({"synthetic_min_prevalence": 1.0}, "synthetic_min_prevalence must lie in [0, 1); "
                                        "received synthetic_min_prevalence=1.0"),
    ({"lr_schedule": "step"}, "lr_schedule must be one of cosine, constant, plateau; received "
                              "lr_schedule='step'"),
    ({"lr_plateau_factor": 1.0}, "lr_plateau_factor must lie in (0, 1); received "
                                 "lr_plateau_factor=1.0"),
    ({"lr_plateau_patience": 0}, "lr_plateau_patience must be at least 1; received "
                                 "lr_plateau_patience=0"),
    ({"lr_plateau_min": -1e-6}, "lr_plateau_min must be at least 0.0; received "
                                "lr_plateau_min=-1e-06"),
    ({"monitor": "val_auc"}, "monitor must be one of val_auc_mean, val_loss; received "
                             "monitor='val_auc'"),
    ({"augment_ops": "crop"}, "augment_ops must be one of mild, flip; received "
                              "augment_ops='crop'"),
])
def test_errors_name_the_argument_and_the_value(changes, message):
    with pytest.raises(errors.ConfigError) as error:
        RunConfig(**changes)
    assert str(error.value) == message
    assert error.value.field == next(iter(changes))
    assert "--" not in message  # a library error speaks of arguments, not flags


@pytest.mark.parametrize("changes, message", [
    ({"lr_schedule": "plateau", "warmup_epochs": 0.5},
     "lr_schedule does not combine with warmup (warmup_epochs=0.5): the plateau schedule sets "
     "the learning rate itself; set warmup_epochs to 0 or choose another schedule; received "
     "lr_schedule='plateau'"),
    ({"augment_ops": "flip"},
     "augment_ops is a random horizontal flip alone, so it needs augment and hflip on (hflip is "
     "off); received augment_ops='flip'"),
    ({"augment_ops": "flip", "augment": False},
     "augment_ops is a random horizontal flip alone, so it needs augment and hflip on (augment "
     "and hflip are off); received augment_ops='flip'"),
    ({"augment_ops": "flip", "augment": False, "hflip": True},
     "augment_ops is a random horizontal flip alone, so it needs augment and hflip on (augment "
     "is off); received augment_ops='flip'"),
])
def test_contradicting_values_name_both_arguments(changes, message):
    with pytest.raises(errors.ConfigError) as error:
        RunConfig(**changes)
    assert str(error.value) == message
    assert error.value.field == next(iter(changes))


def test_plateau_flip_and_monitor_values_that_agree_are_accepted():
    config = RunConfig(lr_schedule="plateau", monitor="val_loss", augment_ops="flip",
                       hflip=True)
    assert (config.lr_plateau_factor, config.lr_plateau_patience, config.lr_plateau_min) == \
        (0.1, 1, 0.0)
    # Every existing command means what it meant: mild augmentation, best on val/auc_mean.
    assert (RunConfig().augment_ops, RunConfig().monitor) == ("mild", "val_auc_mean")
    assert RunConfig(augment=False, hflip=True).augment_ops == "mild"


def test_the_weights_help_names_every_arch_with_imagenet_weights():
    from cxr_tf import archs, pretrained

    assert archs.IMAGENET_ARCHS == pretrained.IMAGENET_ARCHS
    values = absl_flags.FlagValues()
    flags.define_train_flags(values)
    for name in ("weights", "imagenet_weights"):
        assert all(arch in values[name].help for arch in archs.IMAGENET_ARCHS), name


def test_the_train_flags_are_the_fields():
    """The train app's flags are generated from RunConfig: one per field, plus the three
    that change how the app runs."""
    values = absl_flags.FlagValues()
    flags.define_train_flags(values)
    assert set(values) == set(FIELDS) | {"tf_logs", "json", "dry_run"}
    values(["train", "--epochs=3", "--thresholds=0.4,0.6", "--steps_per_epoch=5"])
    config = flags.build_config(RunConfig, values)
    assert config == RunConfig(epochs=3, thresholds=(0.4, 0.6), steps_per_epoch=5)
    defaults = absl_flags.FlagValues()
    flags.define_train_flags(defaults)
    defaults(["train"])
    assert flags.build_config(RunConfig, defaults) == RunConfig()
