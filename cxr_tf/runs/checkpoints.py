"""checkpoints/{best,last}.keras: the model without optimizer state, as evaluate, export and
predict load it. Saved whole or not at all; checked whole (every member's CRC) before loading.

Keras is imported by `load_model` and `save_model` only: the rest of the run dir reads without
TensorFlow.
"""

import os
import zipfile

from cxr_tf import atomic, options
from cxr_tf.runs import RunDirError, layout

CHECKPOINTS = options.CHECKPOINTS  # ("best", "last")


def checkpoint_path(model_dir, checkpoint="best", must_exist=True):
    """checkpoints/<checkpoint>.keras; RunDirError when it must exist and does not."""
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"checkpoint must be 'best' or 'last'; received {checkpoint!r}")
    path = os.path.join(layout.checkpoints_dir(model_dir), f"{checkpoint}.keras")
    if must_exist and not os.path.isfile(path):
        raise RunDirError(f"{path}: not found (has the run finished an epoch?)")
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
    """The remedy for a damaged checkpoint or backup file at `path`."""
    name = os.path.basename(path)
    if name == "best.keras":
        return ("delete it: a resumed run writes it again at its next best epoch, or load the "
                "last checkpoint instead; retrain with overwrite to start afresh")
    if name == "last.keras":
        return "delete it (the next epoch writes it again) or load the best checkpoint instead"
    return ("delete backup/ to restart the unfinished run from epoch 0, or train with "
            "overwrite to start afresh")


def load_model(model_dir, checkpoint="best", *, float32=True):
    """The run's Keras model (plain layers, so no custom objects and no compile needed).

    A run trained under mixed precision saves bfloat16/float16 layers; with float32=True
    (export, predict, evaluate) the saved architecture is rebuilt from the file's own config
    with every layer in float32 and given the saved weights (kept in float32 by Keras
    anyway), so CPUs without 16-bit kernels serve it at full speed and the figures do not
    depend on the training hardware. Rebuilding from the file rather than from the record's
    `arch` keeps the network the run trained: `resnet50` meant v1 before cxr_tf 0.2.
    """
    import keras

    path = verify_checkpoint(checkpoint_path(model_dir, checkpoint))
    try:
        net = keras.models.load_model(path, compile=False)
    except ValueError as e:  # a layer Keras refuses (a Lambda: safe_mode) or does not know
        raise RunDirError(f"{path}: Keras cannot load it ({e})") from e
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
