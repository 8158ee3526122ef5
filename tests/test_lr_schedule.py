"""The learning-rate schedule the paper configs train with, step by step, and the learning rate
a run records in history.csv (issue 23: replacing cosine decay with a constant learning rate,
or counting its length in epochs instead of steps, passed every test).

Keras's CosineDecay over D steps after W warmup steps (warmup from 0, linear):
    lr(s) = peak · s / W                              for s <= W
    lr(s) = peak · (1 + cos(π (s - W) / D)) / 2       after, so lr/2 halfway and 0 at the end.
"""

import csv
import math

import keras
import pytest
from absl import flags as absl_flags

from cxr_tf import flags
from cxr_tf.runs.config import RunConfig
from cxr_tf.training import runner

# NIH's train split at the default val_fraction 0.1 and seed 0 (86,524 train_val images less
# 8,378 of the validation patients); test_the_train_split_size_is_nihs checks it.
NIH_TRAIN_IMAGES = 78_146


def config_of(flagfile, *args):
    values = absl_flags.FlagValues()
    flags.define_train_flags(values)
    values(flags.expand_flagfiles(["prog", f"--flagfile={flagfile}", *args]))
    return flags.build_config(RunConfig, values)


def lr_at(optimizer, step):
    """The learning rate the optimizer applies at `step` (its iteration counter)."""
    optimizer.iterations.assign(step)
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


@pytest.mark.parametrize("flagfile, peak, epochs, warmup_epochs", [
    ("thr05.cfg", 0.01, 50, 0),
    ("recommended.cfg", 0.001, 30, 1),
])
def test_the_paper_schedules_step_by_step(flagfile, peak, epochs, warmup_epochs):
    config = config_of(flagfile)
    assert (config.learning_rate, config.epochs, config.warmup_epochs) == (
        peak, epochs, warmup_epochs)
    steps = runner.steps_in_epoch(config, NIH_TRAIN_IMAGES)
    assert steps == 1_221  # 78,146 // 64
    optimizer = runner.optimizer_for(config, steps)
    warmup, total = warmup_epochs * steps, epochs * steps
    assert lr_at(optimizer, 0) == (pytest.approx(peak, rel=1e-6) if not warmup else 0.0)
    if warmup:
        # Linear from 0: 610 of 1,221 steps in, 610/1,221 of the peak.
        assert lr_at(optimizer, warmup // 2) == pytest.approx(peak * (warmup // 2) / warmup,
                                                              rel=1e-5)
    assert lr_at(optimizer, warmup) == pytest.approx(peak, rel=1e-6)  # the end of warm-up
    half = (total - warmup) // 2  # cosine decay halfway: half the peak (to 1e-4: odd lengths)
    assert lr_at(optimizer, warmup + half) == pytest.approx(peak / 2, rel=1e-4)
    assert lr_at(optimizer, total - 1) == pytest.approx(0.0, abs=peak * 1e-5)  # the last step
    assert lr_at(optimizer, total) == pytest.approx(0.0, abs=1e-12)
    # Every epoch ends lower than the one before, after warm-up, by the cosine.
    ends = [lr_at(optimizer, (e + 1) * steps) for e in range(warmup_epochs, epochs)]
    assert all(a > b for a, b in zip(ends, ends[1:]))
    decay = total - warmup
    for e in (warmup_epochs, epochs // 3, epochs - 2):
        expected = peak * (1 + math.cos(math.pi * ((e + 1) * steps - warmup) / decay)) / 2
        assert ends[e - warmup_epochs] == pytest.approx(expected, rel=1e-4, abs=1e-9)


def test_a_constant_schedule_stays_at_the_peak():
    optimizer = runner.optimizer_for(config_of("thr05.cfg", "--lr_schedule=constant"), 1_221)
    assert [lr_at(optimizer, s) for s in (0, 30_000, 61_050)] == pytest.approx([0.01] * 3)


def test_the_train_split_size_is_nihs(real_nih_dir):
    from cxr_tf.data import metadata

    frame = metadata.build_index(real_nih_dir, require_files=False).frame
    assert int((frame["split"] == "train").sum()) == NIH_TRAIN_IMAGES


@pytest.mark.slow
def test_history_records_the_learning_rate_the_schedule_gives(prepared_dir, tmp_path):
    """Three epochs of two steps: the learning rate at each epoch's end (after 2, 4 and 6 of
    6 steps) is peak · (1 + cos(π k / 6)) / 2: 0.75, 0.25 and 0 of the peak."""
    config = RunConfig(data_dir=str(prepared_dir), model_dir=str(tmp_path / "run"),
                       arch="resnet18", image_size=32, batch_size=4, epochs=3,
                       steps_per_epoch=2, learning_rate=0.004, thresholds=(0.5,))
    runner.run(config, verbose=0)
    with open(tmp_path / "run" / "history.csv", newline="") as f:
        recorded = [float(row["learning_rate"]) for row in csv.DictReader(f)]
    assert recorded == pytest.approx([0.003, 0.001, 0.0], abs=1e-9)
