"""The run dir's layout: where each file lives, and the backups' names.

    config.json          the run record (cxr_tf.runs.record)
    history.csv          one row per epoch (loss, val/auc_mean, val/auc/<Label>, f1@T, ...)
    logs/                TensorBoard runs: train (Keras), validation (epoch_loss, epoch_auc),
                         metrics (the stable val/... tags, hparams, input images)
    checkpoints/         best.keras (best val/auc_mean) and last.keras: the model, without
                         optimizer state (what evaluate, export and predict load)
    backup/              epoch-NNNN.weights.h5: the full training state (weights and optimizer)
                         after epoch NNNN, while a run is in progress
    thresholds.json      decision thresholds tuned by evaluate, with their provenance
    calibration.json     per-finding probability calibration fitted by evaluate
    ood.npz              the out-of-distribution detector fitted by evaluate
    eval_<split>/        evaluate's reports
    .lock                held by the training process using the dir
"""

import os
import re

CONFIG_FILE = "config.json"
HISTORY_FILE = "history.csv"
THRESHOLDS_FILE = "thresholds.json"
CALIBRATION_FILE = "calibration.json"
OOD_FILE = "ood.npz"
LOGS_DIR = "logs"
CHECKPOINTS_DIR = "checkpoints"
BACKUP_DIR = "backup"
LOCK_FILE = ".lock"
EVAL_PREFIX = "eval_"
# What a run writes (evaluate's eval_<split>/ reports aside): what starting afresh deletes.
RUN_FILES = (CONFIG_FILE, HISTORY_FILE, THRESHOLDS_FILE, CALIBRATION_FILE, OOD_FILE, LOGS_DIR,
             CHECKPOINTS_DIR, BACKUP_DIR)
_BACKUP_NAME = re.compile(r"^epoch-(\d{4,})\.weights\.h5$")


def config_path(model_dir):
    return os.path.join(model_dir, CONFIG_FILE)


def history_path(model_dir):
    return os.path.join(model_dir, HISTORY_FILE)


def thresholds_path(model_dir):
    return os.path.join(model_dir, THRESHOLDS_FILE)


def lock_path(model_dir):
    return os.path.join(model_dir, LOCK_FILE)


def logs_dir(model_dir, run=None):
    """logs/, or the TensorBoard run `run` under it ("train", "validation", "metrics")."""
    return os.path.join(model_dir, LOGS_DIR, *([run] if run else []))


def checkpoints_dir(model_dir):
    return os.path.join(model_dir, CHECKPOINTS_DIR)


def eval_dir(model_dir, name):
    """eval_<name>/: evaluate's report on one split (or dataset)."""
    return os.path.join(model_dir, f"{EVAL_PREFIX}{name}")


def backup_dir(model_dir):
    return os.path.join(model_dir, BACKUP_DIR)


def backup_path(model_dir, epoch):
    """backup/epoch-NNNN.weights.h5: the state after `epoch` epochs. The epoch is part of the
    name, so the weights and the epoch they belong to are replaced as one unit."""
    return os.path.join(backup_dir(model_dir), f"epoch-{epoch:04d}.weights.h5")


def backup_files(model_dir):
    """{epoch: path} of the complete backups in backup/ (temporary files are not listed)."""
    directory = backup_dir(model_dir)
    if not os.path.isdir(directory):
        return {}
    found = {}
    for name in os.listdir(directory):
        match = _BACKUP_NAME.match(name)
        if match:
            found[int(match.group(1))] = os.path.join(directory, name)
    return found


def resume_epoch(model_dir):
    """The number of epochs the latest complete backup holds (0 for a fresh run)."""
    return max(backup_files(model_dir), default=0)
