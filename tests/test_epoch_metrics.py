"""cxr_tf.training.epoch_metrics and summaries: what EpochMetrics logs and what it writes to
TensorBoard, read back with TensorBoard's own loader and plugins (cxr_tf.testing.board).

The model is an identity on 2x7 "images", so its logits are exactly the inputs: every figure
below is worked out from the arrays, with no training.
"""

import math
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from cxr_tf import labels
from cxr_tf.testing.board import Board
from cxr_tf.training import epoch_metrics, summaries

N = 24


def fixed_split():
    """(images, y_true): 24 examples. Findings 0-11 have 12 positives and 12 negatives (shown);
    Pleural_Thickening has 3 positives (withheld, though its AUC is defined); Hernia none
    (no AUC at all). Logits are +1 for a positive and -1 for a negative, except that one
    Atelectasis positive scores -2, below all 12 negatives: AUC = (11*12 + 0) / (12*12)."""
    y = np.zeros((N, 14), np.float32)
    y[::2, :12] = 1.0
    y[:3, 12] = 1.0
    logits = np.where(y > 0, 1.0, -1.0).astype(np.float32)
    logits[0, 0] = -2.0
    return logits.reshape(N, 2, 7, 1), y


def identity_model():
    inputs = keras.Input((2, 7, 1))
    flat = keras.layers.Reshape((14,))(inputs)
    logits = keras.layers.Dense(14, use_bias=False, kernel_initializer="identity",
                                name="logits")(flat)
    net = keras.Model(inputs, logits)
    net.compile(keras.optimizers.SGD(0.05), "binary_crossentropy")
    return net


def run_epochs(log_dir, losses, net=None, hparams=None):
    """EpochMetrics as fit() calls it, over len(losses) epochs; returns the logs of each."""
    images, y = fixed_split()
    dataset = tf.data.Dataset.from_tensor_slices((images, y)).batch(10)
    metric = epoch_metrics.EpochMetrics(dataset, y, [0.4, 0.5], labels.LABELS, str(log_dir),
                                        "val", hparams)
    metric.set_model(net or identity_model())
    metric.on_train_begin()
    all_logs = []
    for epoch, loss in enumerate(losses):
        logs = {"loss": loss, "auc": 0.7}
        metric.on_epoch_end(epoch, logs)
        all_logs.append(logs)
    metric.on_train_end()
    return all_logs


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("logs") / "metrics"
    logs = run_epochs(log_dir, [0.5, 0.4],
                      hparams={"learning_rate": 0.001, "thresholds": "0.4,0.5"})
    return Board(log_dir.parent), logs


def test_logs_keep_every_defined_auc(board):
    _, logs = board
    assert logs[0]["val/auc/Atelectasis"] == pytest.approx(132 / 144)
    assert logs[0]["val/auc/Cardiomegaly"] == 1.0
    assert logs[0]["val/auc/Pleural_Thickening"] == 1.0  # 3 positives: defined, kept in logs
    assert math.isnan(logs[0]["val/auc/Hernia"])
    # The mean over the 13 defined findings is the monitored value (history.csv, best.keras).
    assert logs[0]["val/auc_mean"] == pytest.approx((132 / 144 + 12) / 13)
    assert logs[0]["learning_rate"] == pytest.approx(0.05)


def test_layout_names_every_finding_and_the_paper_thresholds(board):
    layout = board[0].layout()
    categories = {c["title"]: c["chart"] for c in layout["category"]}
    assert list(categories) == ["AUC", "F1 at the paper's thresholds", "Loss", "Learning rate"]
    per_finding = categories["AUC"][1]["multiline"]["tag"]
    assert per_finding == [f"^val/auc/{name}$" for name in labels.LABELS]
    assert categories["AUC"][0]["multiline"]["tag"] == ["^train/auc_mean$", "^val/auc_mean$"]
    assert categories["F1 at the paper's thresholds"][0]["multiline"]["tag"] == \
        [r"^val/f1@0\.4/macro$", r"^val/f1@0\.5/macro$"]
    assert categories["Loss"][0]["multiline"]["tag"] == ["^train/loss$", "^val/loss$"]


def test_per_finding_figures_below_the_rule_are_withheld_and_explained(board):
    scalars = board[0].scalars()["metrics"]
    assert scalars["val/auc/Atelectasis"] == pytest.approx({0: 132 / 144, 1: 132 / 144})
    assert scalars["val/f1@0.5/Cardiomegaly"] == {0: 1.0, 1: 1.0}
    for name in ("Pleural_Thickening", "Hernia"):
        assert not [tag for tag in scalars if tag.endswith(f"/{name}")], name
    assert scalars["val/auc_mean"][0] == pytest.approx((132 / 144 + 12) / 13)
    table = board[0].texts()["metrics"]["val/class_counts"][0]
    assert "| Atelectasis | 12 | 12 | drawn |" in table
    assert "| Pleural_Thickening | 3 | 21 | withheld: 3 positives (fewer than 10) |" in table
    assert "| Hernia | 0 | 24 | withheld: 0 positives (fewer than 10) |" in table


def test_pr_curves_for_each_shown_finding_each_epoch(board):
    curves = board[0].pr_curves()["metrics"]
    assert sorted(curves) == sorted(f"val/pr/{name}/pr_curves" for name in labels.LABELS[:12])
    assert curves["val/pr/Atelectasis/pr_curves"] == {
        "display_name": "Atelectasis (12 positives, 12 negatives)", "steps": [0, 1]}


def test_no_nan_or_infinite_scalar_anywhere(board):
    for tags in board[0].scalars().values():
        for tag, points in tags.items():
            assert all(math.isfinite(v) for v in points.values()), tag


def test_hparams_declare_their_metrics_mean_auc_first(board):
    experiment = board[0].experiment()
    assert [m.name.tag for m in experiment.metric_infos] == [
        "val/auc_mean", "val/loss", "val/f1@0.4/macro", "val/f1@0.5/macro", "train/loss"]
    assert {h.name for h in experiment.hparam_infos} == {"learning_rate", "thresholds"}


def test_input_images_carry_their_labels(board):
    description = board[0].descriptions("images")["metrics"]["inputs/val"]
    # Example 1 is positive for the first 12 findings and Pleural_Thickening, example 2 for
    # Pleural_Thickening only, example 4 for none.
    assert "\n1. " + ", ".join(labels.LABELS[:13]) + "\n" in description
    assert "\n2. Pleural_Thickening\n" in description
    assert "\n4. no finding\n" in description
    assert "8. " in description and "9. " not in description  # the 8 images shown


def test_a_loss_jump_warns_on_the_console_and_in_tensorboard(tmp_path, capsys):
    run_epochs(tmp_path / "metrics", [0.5, 0.45, 6.0])
    assert capsys.readouterr().err.splitlines() == [
        "warning: epoch 3: the training loss rose 13x, from 0.45 to 6. Training may be "
        "diverging; a lower learning rate usually helps"]
    texts = Board(tmp_path).texts()["metrics"]
    assert list(texts["warnings/divergence"]) == [2]


def test_a_diverged_model_writes_no_nan_and_says_so(tmp_path, capsys):
    net = identity_model()
    net.get_layer("logits").set_weights([np.full((14, 14), np.nan, np.float32)])
    logs = run_epochs(tmp_path / "metrics", [float("nan")], net=net)
    assert math.isnan(logs[0]["val_loss"]) and math.isnan(logs[0]["val/auc_mean"])
    assert capsys.readouterr().err.strip() == (
        "warning: epoch 1: the training loss is nan; the validation loss is nan. Training may "
        "be diverging; a lower learning rate usually helps")
    board = Board(tmp_path)
    scalars = board.scalars()["metrics"]
    assert set(scalars) == {"train/auc_mean", "train/learning_rate"}  # all else was NaN
    assert board.pr_curves() == {}
    assert "warnings/divergence" in board.texts()["metrics"]


@pytest.mark.parametrize("previous,current,expected", [
    ({}, {"loss": 5.0, "val_loss": 9.0}, None),  # the first epoch: nothing to compare
    ({"loss": 1.0, "val_loss": 1.0}, {"loss": 10.0, "val_loss": 0.5}, None),  # 10x: not more
    ({"loss": 1.0, "val_loss": 0.8}, {"loss": 0.9, "val_loss": 7220.0},
     "the validation loss rose 9,025x, from 0.8 to 7,220"),
    ({"loss": 1.0}, {"loss": float("inf")}, "the training loss is inf"),
])
def test_divergence_warning(previous, current, expected):
    warning = epoch_metrics.divergence_warning(1, previous, current)
    if expected is None:
        assert warning is None
    else:
        assert warning == (f"warning: epoch 2: {expected}. Training may be diverging; a lower "
                           "learning rate usually helps")


def test_keras_tensorboard_gets_finite_values_only(tmp_path):
    board = epoch_metrics.TensorBoard(str(tmp_path))
    board.set_model(identity_model())
    board.on_train_begin()
    board.on_epoch_end(0, {"loss": float("nan"), "val_loss": 0.7, "val/auc_mean": 0.8,
                           "val/auc/Hernia": 0.9})
    board.on_train_end()
    scalars = Board(tmp_path).scalars()
    assert scalars["validation"] == {"epoch_loss": {0: pytest.approx(0.7)},
                                     "epoch_auc": {0: pytest.approx(0.8)}}
    assert "epoch_loss" not in scalars["train"]


def test_layout_titles_do_not_depend_on_the_run():
    # TensorBoard merges the layouts of all runs in a logdir and drops identical charts.
    a = summaries.layout(labels.LABELS, [0.5])
    b = summaries.layout(labels.LABELS, [0.5])
    assert a == b


@pytest.mark.slow
def test_a_trained_run_tells_the_per_finding_story(tmp_path):
    """The train app end to end (2 epochs of 2 steps), on a synthetic set whose validation
    split has enough of every finding: the logs as TensorBoard serves them."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "",
           "CXR_TF_CACHE": str(tmp_path / "cache")}
    model_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "cxr_tf.train", "--synthetic", "--synthetic_num_images=600",
         "--synthetic_min_prevalence=0.4", "--arch=resnet18", "--image_size=32",
         "--batch_size=8", "--epochs=2", "--steps_per_epoch=2", "--learning_rate=0.001",
         "--thresholds=0.4,0.5", f"--model_dir={model_dir}"],
        capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    board = Board(model_dir / "logs")
    charts = {c["title"]: c["chart"] for c in board.layout()["category"]}
    assert charts["AUC"][1]["multiline"]["tag"] == [f"^val/auc/{n}$" for n in labels.LABELS]
    curves = board.pr_curves()["metrics"]
    assert {tag: c["steps"] for tag, c in curves.items()} == {
        f"val/pr/{name}/pr_curves": [0, 1] for name in labels.LABELS}
    scalars = board.scalars()
    assert set(scalars) == {"metrics", "train", "validation"}
    for run, tags in scalars.items():
        for tag, points in tags.items():
            assert all(math.isfinite(v) for v in points.values()), (run, tag)
    for tag in [f"val/auc/{name}" for name in labels.LABELS] + ["train/auc_mean"]:
        assert sorted(scalars["metrics"][tag]) == [0, 1], tag
    assert [m.name.tag for m in board.experiment().metric_infos][0] == "val/auc_mean"
    description = board.descriptions("images")["metrics"]["inputs/val"]
    samples = description.splitlines()[2:]
    assert [line.split(". ")[0] for line in samples] == [str(i) for i in range(1, 9)]
    for line in samples:
        names = line.split(". ", 1)[1]
        assert names == "no finding" or set(names.split(", ")) <= set(labels.LABELS), line
    # The table after training: every finding with its counts, the mean says what it averages.
    table = proc.stdout[proc.stdout.index("finding "):]
    for name in labels.LABELS:
        assert re.search(rf"^{name} +0\.\d{{3}} +\d+ +\d+$", table, re.M), name
    assert re.search(r"^mean of 14 findings +0\.\d{3}$", table, re.M)
