"""The run dir (`model_dir`): its layout, and every reader and writer of it.

    config.json          resolved config, package versions, num_replicas_in_sync
    history.csv          one row per epoch (loss, val/auc_mean, val/auc/<Label>, f1@T, ...)
    logs/                TensorBoard runs: train (Keras), validation (epoch_loss, epoch_auc),
                         metrics (the stable val/... tags, hparams, input images)
    checkpoints/         best.keras (best val/auc_mean) and last.keras: the model, without
                         optimizer state (what evaluate, export and predict load)
    backup/              epoch-NNNN.weights.h5: the full training state (weights and optimizer)
                         after epoch NNNN, while a run is in progress
    thresholds.json      decision thresholds tuned by `evaluate --tune_thresholds`
    .lock                held by the train process using the dir

Training, evaluate, export, predict and tools/plot_history.py find these files here only.
Keras is imported only by the functions that load or save a model, so reading a run dir's
config or history (tools/plot_history.py) does not start TensorFlow.
"""

import contextlib
import csv
import errno
import fcntl
import json
import os
import re
import shutil
import zipfile

import numpy as np

from cxr_tf import atomic, labels

CONFIG_FILE = "config.json"
HISTORY_FILE = "history.csv"
THRESHOLDS_FILE = "thresholds.json"
LOGS_DIR = "logs"
CHECKPOINTS_DIR = "checkpoints"
BACKUP_DIR = "backup"
LOCK_FILE = ".lock"
CHECKPOINTS = ("best", "last")
_BACKUP_NAME = re.compile(r"^epoch-(\d{4,})\.weights\.h5$")


class RunDirError(ValueError):
    """The run dir cannot be used as asked (in use, a different run, a corrupt file)."""


def config_path(model_dir):
    return os.path.join(model_dir, CONFIG_FILE)


def history_path(model_dir):
    return os.path.join(model_dir, HISTORY_FILE)


def logs_dir(model_dir, run=None):
    """logs/, or the TensorBoard run `run` under it ("train", "validation", "metrics")."""
    return os.path.join(model_dir, LOGS_DIR, *([run] if run else []))


def checkpoints_dir(model_dir):
    return os.path.join(model_dir, CHECKPOINTS_DIR)


def backup_dir(model_dir):
    return os.path.join(model_dir, BACKUP_DIR)


def read_config(model_dir):
    """RUN/config.json as a dict; the error says what a run dir is when it is missing."""
    path = config_path(model_dir)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: not found; --model_dir must be a run dir written by "
                                "`python -m cxr_tf.train` (config.json, checkpoints/)")
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise RunDirError(f"{path}: not valid JSON ({e})") from e


def write_config(model_dir, config):
    """RUN/config.json, whole or not at all; values JSON cannot hold are written as str."""
    return atomic.write_json(config_path(model_dir), config, indent=2, sort_keys=True,
                             default=str)


def read_history(model_dir):
    """history.csv's rows as dicts of strings, oldest epoch first ([] when there is none)."""
    path = history_path(model_dir)
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def checkpoint_path(model_dir, checkpoint="best", must_exist=True):
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"checkpoint must be 'best' or 'last'; received {checkpoint!r}")
    path = os.path.join(checkpoints_dir(model_dir), f"{checkpoint}.keras")
    if must_exist and not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: not found (has the run finished an epoch?)")
    return path


def verify_checkpoint(path):
    """Raises RunDirError, naming `path` and what to do, unless it is a whole .keras file
    (a zip archive whose every member passes its CRC check: a torn or truncated copy fails)."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
        if bad is None:
            return path
        cause = f"member {bad} is corrupt"
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        cause = str(e)
    raise RunDirError(f"{path}: not a readable .keras file ({cause}); {what_to_do(path)}")


def what_to_do(path):
    name = os.path.basename(path)
    if name == "best.keras":
        return ("delete it: a resumed run writes it again at its next best epoch, or use "
                "--checkpoint=last; retrain with --overwrite to start afresh")
    if name == "last.keras":
        return "delete it (the next epoch writes it again) or use --checkpoint=best"
    return ("delete backup/ to restart the unfinished run from epoch 0, or train with "
            "--overwrite to start afresh")


def load_model(model_dir, checkpoint="best", *, float32=True):
    """The run's Keras model (plain layers, so no custom objects and no compile needed).

    A run trained under mixed precision saves bfloat16/float16 layers; with float32=True
    (export, predict, evaluate) the saved architecture is rebuilt from the file's own config
    with every layer in float32 and given the saved weights (kept in float32 by Keras
    anyway), so CPUs without 16-bit kernels serve it at full speed and the figures do not
    depend on the training hardware. Rebuilding from the file rather than from config.json's
    `arch` keeps the network the run trained: `resnet50` meant v1 before cxr_tf 0.2.
    """
    import keras

    path = verify_checkpoint(checkpoint_path(model_dir, checkpoint))
    net = keras.models.load_model(path, compile=False)
    if not float32 or all(layer.compute_dtype == "float32" for layer in net.layers):
        return net
    full = net.__class__.from_config(_in_float32(net.get_config()))
    full.set_weights(net.get_weights())
    return full


def _in_float32(config):
    """A serialized model config with every dtype policy (mixed_bfloat16, ...) as float32."""
    if isinstance(config, dict):
        if config.get("class_name") == "DTypePolicy":
            return "float32"
        return {key: _in_float32(value) for key, value in config.items()}
    if isinstance(config, list):
        return [_in_float32(value) for value in config]
    return config


def save_model(net, model_dir, checkpoint):
    """checkpoints/{best,last}.keras: the model without optimizer state, written atomically.

    An uncompiled functional model over the same layers shares the weights (no copy) but
    holds no optimizer, so the file is about a third of a compiled Adam model's."""
    import keras

    path = checkpoint_path(model_dir, checkpoint, must_exist=False)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    lean = keras.Model(net.input, net.output, name=net.name)
    with atomic.replacing(path) as tmp:
        lean.save(tmp)
    return path


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


def backup_path(model_dir, epoch):
    """backup/epoch-NNNN.weights.h5: the state after `epoch` epochs. The epoch is part of the
    name, so the weights and the epoch they belong to are replaced as one unit."""
    return os.path.join(backup_dir(model_dir), f"epoch-{epoch:04d}.weights.h5")


def resume_epoch(model_dir):
    """The number of epochs the latest complete backup holds (0 for a fresh run)."""
    return max(backup_files(model_dir), default=0)


def read_thresholds(model_dir, label_names=labels.LABELS):
    """(per-class thresholds as a float array, the file's dict), or (None, None) if none."""
    path = os.path.join(model_dir, THRESHOLDS_FILE)
    if not os.path.isfile(path):
        return None, None
    with open(path) as f:
        content = json.load(f)
    by_label = content.get("thresholds") or {}
    missing = [name for name in label_names if name not in by_label]
    if missing:
        raise ValueError(f"{path}: no threshold for {', '.join(missing)}")
    return np.array([float(by_label[name]) for name in label_names]), content


def write_thresholds(model_dir, thresholds, method, label_names=labels.LABELS, **details):
    """RUN/thresholds.json: {"method", "thresholds": {label: t}, "split": "validation", ...}."""
    content = {"method": method, "split": "validation",
               "thresholds": {name: float(t) for name, t in zip(label_names, thresholds)},
               **details}
    return atomic.write_json(os.path.join(model_dir, THRESHOLDS_FILE), content, indent=1)


def decision_thresholds(model_dir, default=0.5, label_names=labels.LABELS):
    """(one threshold per finding, where they came from): the run's tuned thresholds when
    thresholds.json exists, else `default` for every finding."""
    tuned, content = read_thresholds(model_dir, label_names)
    if tuned is not None:
        return tuned.tolist(), f"{THRESHOLDS_FILE} ({content.get('method')}, tuned on " \
                               f"{content.get('split')})"
    return [float(default)] * len(label_names), f"--threshold={default:g}"


@contextlib.contextmanager
def locked(model_dir):
    """Holds model_dir/.lock (an flock, released by the kernel however the process ends)
    for the life of the block. A second holder gets RunDirError naming the first one's pid."""
    os.makedirs(model_dir, exist_ok=True)
    fd = os.open(os.path.join(model_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise RunDirError(f"{model_dir}: in use by another training process (pid "
                              f"{holder}); wait for it to end or use another --model_dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


# Flags that may change between a run and its rerun without making it another run.
_NOT_THE_RUN = ("model_dir", "overwrite")
# Keys config.json (before it recorded "flags") resolved from the flags it was given.
_RESOLVED = ("data_dir", "steps_per_epoch")
# What --overwrite deletes: the layout above, evaluate's reports and plot_history's default.
_LAYOUT = (CONFIG_FILE, HISTORY_FILE, THRESHOLDS_FILE, LOGS_DIR, CHECKPOINTS_DIR, BACKUP_DIR,
           "plots")


def is_complete(model_dir):
    """True when training finished: config.json and a history row exist and no backup is
    left (training removes backup/ only once fit() has returned)."""
    return (os.path.isfile(config_path(model_dir)) and bool(read_history(model_dir))
            and not backup_files(model_dir))


def differing_flags(model_dir, flags):
    """["--name: X (run) != Y (now)", ...] for each training flag whose value differs from
    the one config.json recorded (model_dir and overwrite are not compared)."""
    config = read_config(model_dir)
    recorded = config.get("flags")
    if recorded is None:  # a run dir from before config.json recorded its flags
        recorded = {k: v for k, v in config.items() if k not in _RESOLVED}
    found = []
    for name in sorted(flags):
        if name in _NOT_THE_RUN or name not in recorded:
            continue
        was, now = recorded[name], json.loads(json.dumps(flags[name], default=str))
        if was != now:
            found.append(f"--{name}: {_show(was)} (run) != {_show(now)} (now)")
    return found


def _show(value):
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def clear(model_dir):
    """Deletes what a run wrote (the layout above and eval_* reports); other files stay."""
    for name in os.listdir(model_dir):
        path = os.path.join(model_dir, name)
        if name in _LAYOUT or (name.startswith("eval_") and os.path.isdir(path)) \
                or atomic.is_temporary(name):
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
