"""Every use of a private Keras name in cxr_tf, in one place, checked against the Keras version
it was tested with.

Everything else in the package uses public Keras API. The workarounds here reach into
`keras.src` and private Model methods, which change between Keras releases without notice,
so each public function first checks `keras.__version__` against TESTED_KERAS and stops with
a message naming both versions on any other release (`weights_file_bytes` falls back to the
public writer instead). A run that needs no workaround (one device, MirroredStrategy) works on
any Keras 3.

To support a new Keras release: rerun tests/test_train.py::test_two_workers_train_to_identical_weights
on it, check the private names below against its source, and update TESTED_KERAS.
"""

import io

import keras
import numpy as np
import tensorflow as tf

from cxr_tf import errors

TESTED_KERAS = "3.15"  # major.minor: any 3.15.x patch release


class KerasVersionError(errors.UserError, RuntimeError):
    """The installed Keras is not the one keras_compat's private names were checked against."""


def check_keras_version(version=None):
    """Raises KerasVersionError unless `version` (default: the installed Keras) is
    TESTED_KERAS.x."""
    version = version or keras.__version__
    if version.split(".")[:2] != TESTED_KERAS.split("."):
        raise KerasVersionError(
            f"cxr_tf.training.keras_compat was tested with Keras {TESTED_KERAS}.x, found Keras "
            f"{version}: its workarounds use private Keras names (Model._symbolic_build, "
            "Model._maybe_symbolic_build, keras.src.backend.tensorflow.trainer."
            "reduce_per_replica; saving_lib.H5IOStore and _save_state, skipped on other "
            "releases). Install keras~=" + TESTED_KERAS + ".0, or check them "
            "against the new version and update TESTED_KERAS.")


def weights_file_bytes(model, attributes=None):
    """The bytes `model.save_weights(PATH.weights.h5)` writes (weights and optimizer state),
    made in memory, with `attributes` ({name: str}) on the file's root; None on a Keras
    release other than TESTED_KERAS (save to a file then).

    Keras's writer (`saving_lib.H5IOStore`) takes an io.BytesIO, as it does for the weights
    inside a .keras archive, but `save_weights` accepts only a file name. Writing the bytes is
    then plain file I/O: a full disk is one OSError, with no h5py file object left to fail
    again when the interpreter exits (h5py 3.14 crashes the process then).
    """
    if keras.__version__.split(".")[:2] != TESTED_KERAS.split("."):
        return None
    from keras.src.saving import saving_lib

    buffer = io.BytesIO()
    store = saving_lib.H5IOStore(buffer, mode="w")
    try:
        saving_lib._save_state(model, weights_store=store, assets_store=None, inner_path="",
                               visited_saveables=set())
        store.h5_file.attrs.update(attributes or {})
    finally:
        store.close()
    return buffer.getvalue()


def prepare_for_multi_worker(net, strategy, image_size, num_outputs):
    """Works around two Keras 3.15 bugs that stop `fit()` under MultiWorkerMirroredStrategy
    (tensorflow/tensorflow#72388, closed unfixed; its only suggested workaround was Keras 2):

    1. fit() builds the model by `strategy.reduce("MEAN", (images, labels))` on a tuple, which
       the strategy cannot reduce. We build optimizer and metric variables from a local zero
       batch instead and skip that step.
    2. The per-step logs (scalar loss and metrics) are reduced with `axis=0`, which fails on
       scalars. We reduce scalars with `axis=None` (the mean over replicas).

    Covered by tests/test_train.py::test_two_workers_train_to_identical_weights.
    """
    check_keras_version()
    batch = (np.zeros((1, image_size, image_size, 1), np.uint8),
             np.zeros((1, num_outputs), np.float32))
    with strategy.scope():
        net._symbolic_build(data_batch=batch)
    net._maybe_symbolic_build = lambda *args, **kwargs: None
    _patch_scalar_reduction()


def _patch_scalar_reduction():
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer

    original = trainer.reduce_per_replica
    if getattr(original, "cxr_tf_patched", False):
        return

    def reduce_per_replica(values, strategy, reduction):
        if reduction not in ("auto", "mean") or not isinstance(
                strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return original(values, strategy, reduction)

        def reduce(value):
            if not isinstance(value, tf.distribute.DistributedValues):
                return value
            rank = strategy.experimental_local_results(value)[0].shape.rank
            return strategy.reduce("MEAN", value, axis=None if rank == 0 else 0)

        return tree.map_structure(reduce, values)

    reduce_per_replica.cxr_tf_patched = True
    trainer.reduce_per_replica = reduce_per_replica
