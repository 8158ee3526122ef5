"""The run dir (`model_dir`): the storage contract between training, which writes it, and
evaluate, export, predict and the tools, which read it.

    layout        where each file lives; backup names; resume_epoch
    config        RunConfig: what one training run does (the train app's flags)
    record        config.json: the typed, versioned run record, read and written in one place
    claim         the lock, and whether a run dir is fresh, resumable, complete or another run's
    checkpoints   checkpoints/{best,last}.keras: save, verify, load
    history       history.csv: one row per epoch
    thresholds    thresholds.json: tuned decision thresholds, with their provenance
    calibration   calibration.json: the per-finding calibration of the probabilities
    ood           ood.npz: the out-of-distribution detector

Nothing here speaks of command-line flags: errors name arguments ("overwrite", "the last
checkpoint"), and the apps translate. Keras is imported only by the functions that load or
save a model, so reading a run's record or history does not start TensorFlow.
"""

from cxr_tf import errors


class RunDirError(errors.UserError, ValueError):
    """The run dir cannot be used as asked (in use, another run, a corrupt file)."""
