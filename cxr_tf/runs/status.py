"""Where a run stands: complete, stopped (and why) or to be resumed.

    now = status.of(model_dir, record.read(model_dir))
    if now.state == record.COMPLETE: ...

Since record version 3 the run record says so itself (`record.Status`, written by training at
each change), and that is the answer: completion is recorded, never inferred. A run dir written
before (cxr_tf 0.2.0, record versions 1 and 2) has no status and is judged from what it holds,
the configured epochs and history.csv, never from a missing backup alone:

- as many history rows as epochs, and no backup of an earlier epoch: complete;
- fewer rows, no backup, and a last loss that is not finite: stopped by the NaN loss;
- fewer rows, no backup, early stopping on, and the last `patience` epochs no better than
  the ones before: stopped early;
- anything else: not finished, so it resumes (from its backup, or from the start: a kill in
  the first epoch's save left a history row and no backup, which 0.2.0 mistook for complete).
"""

import math

from cxr_tf.runs import RunDirError, history, layout, record


def of(model_dir, found):
    """The Status of the run in `model_dir`, whose record.RunRecord is `found`."""
    if found.status is not None:
        return found.status
    if found.version >= 3:  # written by a cxr_tf that records statuses, without one: not done
        return record.Status(record.RUNNING, 0, found.config.epochs)
    return inferred(model_dir, found.config)


def inferred(model_dir, config):
    """The Status of a run dir written before statuses (see the module docstring)."""
    rows = history.read_history(model_dir)
    saved = layout.resume_epoch(model_dir)
    done, epochs = len(rows), config.epochs
    if done >= epochs and (not saved or saved >= epochs):
        return record.Status(record.COMPLETE, done, epochs)
    if saved or not rows:
        return record.Status(record.RUNNING, saved, epochs)
    if not math.isfinite(rows[-1].get("loss", 0.0)):
        return record.Status(record.STOPPED, done, epochs, record.NAN_LOSS)
    if config.early_stop_patience and stopped_early(rows, config.early_stop_patience):
        return record.Status(record.STOPPED, done, epochs, record.EARLY_STOP)
    return record.Status(record.RUNNING, 0, epochs)


def stopped_early(rows, patience, monitor=history.MONITOR):
    """Whether Keras's EarlyStopping (mode max, min_delta 0) would have stopped after the last
    of `rows`: none of the last `patience` values beats the best before them (NaN never does)."""
    values = [row.get(monitor, math.nan) for row in rows]
    if len(values) <= patience:
        return False
    best = max((v for v in values[:-patience] if not math.isnan(v)), default=-math.inf)
    return not any(v > best for v in values[-patience:])


def stop(model_dir, reason, detail=None):
    """Records that the run in `model_dir` stopped for `reason` (record.INTERRUPTED, ERROR),
    with the epochs its backup holds, unless its status already says how it ended (a signal
    can arrive after training recorded completion). Returns the status now recorded, or None
    when it could not be written (a full disk): the record then still says running, which
    resumes too."""
    try:
        found = record.read(model_dir)
        if found.status is not None and found.status.state != record.RUNNING:
            return found.status
        stopped = record.Status(record.STOPPED, layout.resume_epoch(model_dir),
                                found.config.epochs, reason, detail)
        record.write_status(model_dir, stopped)
        return stopped
    except (OSError, RunDirError):
        return None
