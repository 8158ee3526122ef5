"""cxr_tf.training.callbacks on a tiny Dense model: history rows on resume, best restored from
history, the NaN branch of EpochMetrics, the lean checkpoints, the recorded status, and the
epoch-end save of the first and a later epoch killed at every step: never complete early
through the rerun's claim, and resuming exactly."""

import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.metrics import f1_score, log_loss, roc_auc_score

from cxr_tf import errors, labels
from cxr_tf.runs import RunDirError, checkpoints, claim, history, layout, record
from cxr_tf.runs.config import RunConfig
from cxr_tf.training import callbacks, epoch_metrics, keras_compat

X = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
Y = (X[:, :1] > 0).astype(np.float32).repeat(3, axis=1)


def tiny_model(outputs=3):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    net = keras.Model(inputs, keras.layers.Dense(outputs, name="logits")(inputs), name="tiny")
    # Momentum: the optimizer has state, which a resume must restore too.
    net.compile(keras.optimizers.SGD(0.05, momentum=0.9), "binary_crossentropy")
    return net


def write_history(model_dir, rows):
    os.makedirs(model_dir, exist_ok=True)
    with open(layout.history_path(model_dir), "w") as f:
        f.write("\n".join(rows) + "\n")


def test_csv_logger_drops_rows_of_epochs_to_redo_and_counts_from_1(tmp_path):
    write_history(tmp_path, ["epoch,loss,val_loss", "1,0.5,0.55", "2,0.4,0.45", "3,0.3,0.4"])
    logger = callbacks.ResumableCSVLogger(layout.history_path(tmp_path), initial_epoch=2)
    logger.on_train_begin()
    logger.on_epoch_end(2, {"loss": 0.25, "val_loss": 0.35})  # Keras's third epoch
    logger.on_train_end()
    assert (tmp_path / "history.csv").read_text().splitlines() == \
        ["epoch,loss,val_loss", "1,0.5,0.55", "2,0.4,0.45", "3,0.25,0.35"]


def test_csv_logger_renumbers_an_older_history_and_drops_its_torn_row(tmp_path):
    """A 0-based history.csv (cxr_tf before 0.3) with a row cut short by a crash."""
    (tmp_path / "history.csv").write_bytes(b"epoch,loss,val_loss\r\n0,0.5,0.55\r\n"
                                           b"1,0.4,NA\r\n2,0.3")
    logger = callbacks.ResumableCSVLogger(layout.history_path(tmp_path), initial_epoch=2)
    logger.on_train_begin()
    logger.on_epoch_end(2, {"loss": 0.25, "val_loss": 0.35})
    logger.on_train_end()
    assert (tmp_path / "history.csv").read_text().splitlines() == \
        ["epoch,loss,val_loss", "1,0.5,0.55", "2,0.4,nan", "3,0.25,0.35"]


def test_csv_logger_on_a_fresh_start_keeps_one_header(tmp_path):
    write_history(tmp_path, ["epoch,loss", "1,0.5"])
    logger = callbacks.ResumableCSVLogger(layout.history_path(tmp_path), initial_epoch=0)
    logger.on_train_begin()
    logger.on_epoch_end(0, {"loss": 0.7, "val_loss": 0.8})
    logger.on_train_end()
    assert (tmp_path / "history.csv").read_text().splitlines() == \
        ["epoch,loss,val_loss", "1,0.7,0.8"]


def test_best_is_restored_from_history_and_only_a_better_epoch_replaces_it(tmp_path):
    net = tiny_model()
    checkpoints.save_model(net, tmp_path, "best")
    write_history(tmp_path, ["epoch,val/auc_mean", "1,0.6", "2,nan", "3,0.7", "4,"])
    checkpoint = callbacks.AtomicCheckpoint(str(tmp_path))
    checkpoint.set_model(net)
    checkpoint.on_train_begin()
    assert checkpoint.best == 0.7
    best = tmp_path / "checkpoints" / "best.keras"
    before = best.stat().st_ino
    checkpoint.on_epoch_end(4, {"val/auc_mean": 0.65})
    assert best.stat().st_ino == before
    checkpoint.on_epoch_end(5, {"val/auc_mean": float("nan")})
    assert best.stat().st_ino == before
    checkpoint.on_epoch_end(6, {"val/auc_mean": 0.75})
    # The best epoch's file is the last.keras just written, linked rather than saved twice.
    assert best.stat().st_ino == (tmp_path / "checkpoints" / "last.keras").stat().st_ino
    assert checkpoint.best == 0.75
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["best.keras", "last.keras"]


def test_without_best_keras_the_first_epoch_becomes_best(tmp_path):
    write_history(tmp_path, ["epoch,val/auc_mean", "1,0.9"])
    checkpoint = callbacks.AtomicCheckpoint(str(tmp_path))
    checkpoint.set_model(tiny_model())
    checkpoint.on_train_begin()
    checkpoint.on_epoch_end(1, {"val/auc_mean": 0.5})
    assert (tmp_path / "checkpoints" / "best.keras").exists()


def test_a_torn_best_keras_stops_the_resume_naming_it(tmp_path):
    net = tiny_model()
    path = checkpoints.save_model(net, tmp_path, "best")
    with open(path, "r+b") as f:
        f.truncate(300)
    checkpoint = callbacks.AtomicCheckpoint(str(tmp_path))
    checkpoint.set_model(net)
    with pytest.raises(RunDirError, match=f"^{path}: not a readable .keras file "
                       r"\(File is not a zip file\); delete it: a resumed run writes it again"):
        checkpoint.on_train_begin()


EPOCH_X = np.linspace(-1, 1, 6 * 4, dtype=np.float32).reshape(6, 4)
EPOCH_Y = np.zeros((6, 14), np.float32)
EPOCH_Y[::2, :] = 1.0


def _epoch_metrics(net, prefix="val"):
    y_true = EPOCH_Y
    dataset = tf.data.Dataset.from_tensor_slices((EPOCH_X, y_true)).batch(4)
    metric = epoch_metrics.EpochMetrics(dataset, y_true, [0.5], labels.LABELS, prefix=prefix)
    metric.set_model(net)
    metric.on_train_begin()
    logs = {"loss": 0.3}
    metric.on_epoch_end(0, logs)
    return logs


def test_epoch_metrics_logs_loss_auc_and_learning_rate():
    net = tiny_model(14)
    logs = _epoch_metrics(net)
    assert logs["learning_rate"] == pytest.approx(0.05) and logs["loss"] == 0.3
    # The figures of the model's own predictions, worked out here with scikit-learn.
    logits = net.predict(EPOCH_X, verbose=0).astype(np.float64)
    probs = 1 / (1 + np.exp(-logits))
    aucs = [roc_auc_score(EPOCH_Y[:, c], probs[:, c]) for c in range(14)]
    assert logs["val/auc/Hernia"] == pytest.approx(aucs[13], abs=1e-6)
    assert logs["val/auc_mean"] == pytest.approx(np.mean(aucs), abs=1e-6)
    assert len(set(np.round(aucs, 6))) > 1  # the findings differ: a mean of one value proves less
    assert logs["val_loss"] == pytest.approx(log_loss(EPOCH_Y.ravel(), probs.ravel()), rel=1e-5)
    assert logs["val/f1@0.5/macro"] == pytest.approx(
        f1_score(EPOCH_Y, probs >= 0.5, average="macro", zero_division=0))


def test_epoch_metrics_of_a_diverged_model_are_nan_not_a_crash():
    net = tiny_model(14)
    net.get_layer("logits").set_weights([np.full((4, 14), np.nan, np.float32),
                                         np.zeros(14, np.float32)])
    logs = _epoch_metrics(net, prefix="test")
    metric_keys = [k for k in logs if k.startswith("test")]
    assert {"test_loss", "test/auc_mean", "test/auc/Hernia", "test/f1@0.5/macro",
            "test/paper_auc@0.5"} <= set(metric_keys)
    assert all(np.isnan(logs[k]) for k in metric_keys)
    assert "learning_rate" not in logs  # only the validation pass logs it


EPOCHS = 3


def run_config(model_dir, epochs=EPOCHS):
    return RunConfig(model_dir=str(model_dir), epochs=epochs)


def fit(model_dir, epochs=EPOCHS, snapshot=None, on_step=None):
    """Trains the tiny model as a run does (the record, history, checkpoints, the status and
    the backup last); returns it. `snapshot` is placed before, between and after the savers."""
    net = tiny_model()
    os.makedirs(model_dir, exist_ok=True)
    initial = layout.resume_epoch(model_dir)
    if initial == 0 or not record.exists(model_dir):  # as runner.train writes it
        record.write(model_dir, record.RunRecord(
            config=run_config(model_dir, epochs), resolved=record.Resolved(),
            environment=record.Environment(package_versions={"cxr_tf": "test"}),
            status=record.Status(record.RUNNING, 0, epochs)))
    snap = [snapshot] if snapshot else []
    hook = on_step or snapshot
    cbs = [*snap, callbacks.ResumableCSVLogger(layout.history_path(model_dir), initial), *snap,
           callbacks.AtomicCheckpoint(str(model_dir), monitor="loss", mode="min"), *snap,
           callbacks.RunStatus(str(model_dir), epochs, initial, on_step=hook),
           callbacks.EpochBackup(str(model_dir), initial, on_step=hook)]
    net.fit(X, Y, batch_size=4, epochs=epochs, initial_epoch=initial, shuffle=False,
            verbose=0, callbacks=cbs)
    return net


class Snapshot(keras.callbacks.Callback):
    """Copies the run dir at each point of the first and second epochs' end-of-epoch save,
    and of the end of training: exactly what a SIGKILL at that point would leave on disk.
    Placed between the callbacks that write, and called by RunStatus and EpochBackup as
    their on_step hook at each step of their own writes."""

    def __init__(self, model_dir, out):
        super().__init__()
        self.model_dir, self.out, self.epoch = model_dir, out, None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        self("between")

    def __call__(self, step):
        if self.epoch in (0, 1) or step in ("recorded", "removed"):
            name = f"{len(os.listdir(self.out)):02d}-epoch{self.epoch + 1}-{step}"
            shutil.copytree(self.model_dir, self.out / name)


# Each snapshot, and what rerunning the same command finds there: before the history row,
# before the checkpoints, before the backup, and inside the backup's save (the new file
# written, not yet renamed; renamed, the old one still there; the old one removed); then the
# end of training (the status recorded; the backup removed).
EXPECTED_CLAIMS = {
    "00-epoch1-between": (claim.RESUME, 0), "01-epoch1-between": (claim.RESUME, 0),
    "02-epoch1-between": (claim.RESUME, 0), "03-epoch1-written": (claim.RESUME, 0),
    "04-epoch1-renamed": (claim.RESUME, 1), "05-epoch1-pruned": (claim.RESUME, 1),
    "06-epoch2-between": (claim.RESUME, 1), "07-epoch2-between": (claim.RESUME, 1),
    "08-epoch2-between": (claim.RESUME, 1), "09-epoch2-written": (claim.RESUME, 1),
    "10-epoch2-renamed": (claim.RESUME, 2), "11-epoch2-pruned": (claim.RESUME, 2),
    "12-epoch3-recorded": (claim.COMPLETE, 3), "13-epoch3-removed": (claim.COMPLETE, 0),
}


@pytest.mark.slow
def test_a_kill_at_any_step_of_an_epoch_end_save_is_never_complete_and_resumes_exactly(
        tmp_path):
    reference = fit(tmp_path / "reference").get_weights()
    model_dir, snapshots = tmp_path / "run", tmp_path / "snapshots"
    snapshots.mkdir()
    fit(model_dir, snapshot=Snapshot(model_dir, snapshots))
    assert sorted(os.listdir(snapshots)) == sorted(EXPECTED_CLAIMS)
    for label, expected in EXPECTED_CLAIMS.items():
        resumed_dir = snapshots / label
        # The rerun's path: the claim decides whether there is anything left to train.
        with claim.claim(resumed_dir, run_config(resumed_dir)) as claimed:
            assert (claimed.state, claimed.initial_epoch) == expected, label
        if claimed.state == claim.RESUME:
            resumed = fit(resumed_dir)
            for a, b in zip(resumed.get_weights(), reference):
                np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=label)
        with claim.claim(resumed_dir, run_config(resumed_dir)) as claimed:
            assert claimed.state == claim.COMPLETE, label
        assert record.read(resumed_dir).status == record.Status(record.COMPLETE, 3, 3), label
        assert [r["epoch"] for r in history.read_history(resumed_dir)] == [1, 2, 3], label
        if label != "12-epoch3-recorded":  # killed before removing it: a complete run
            assert not (resumed_dir / "backup").exists(), label
        assert not [n for n in os.listdir(resumed_dir / "checkpoints") if n.startswith(".")]


class InterruptAt(Snapshot):
    """Raises a Ctrl-C's errors.Interrupted at one point of the second epoch's end-of-epoch
    save (the points Snapshot copies the run dir at), as the signal handler would there."""

    def __init__(self, point):
        keras.callbacks.Callback.__init__(self)
        self.point, self.seen, self.epoch = point, 0, None

    def __call__(self, step):
        if self.epoch == 1:
            self.seen += 1
            if self.seen == self.point:
                raise errors.Interrupted(2)


# Each point of epoch 2's save (before the history row, before the checkpoints, before the
# backup, then inside the backup's save) and the epochs saved there.
SAVED_AT = {1: 1, 2: 1, 3: 1, 4: 1, 5: 2, 6: 2}


@pytest.mark.parametrize("point", sorted(SAVED_AT))
def test_an_interrupt_anywhere_in_an_epoch_end_save_leaves_history_status_and_line_agreeing(
        tmp_path, point):
    from cxr_tf.training import runner

    model_dir = tmp_path / "run"
    with pytest.raises(errors.Interrupted) as info:
        fit(model_dir, snapshot=InterruptAt(point))
    in_epoch = callbacks.RunStatus(str(model_dir), EPOCHS)
    in_epoch.epoch = 2
    # What runner.train does with the interrupt.
    error = runner.interrupted(info.value, run_config(model_dir), str(model_dir), [in_epoch])
    saved = SAVED_AT[point]
    assert error.message == (f"interrupted in epoch 2; the state after epoch {saved} is saved "
                             f"in {model_dir / 'backup'}; rerun the same command to resume")
    assert record.read(model_dir).status == record.Status(
        record.STOPPED, saved, EPOCHS, record.INTERRUPTED, "signal 2")
    assert [r["epoch"] for r in history.read_history(model_dir)] == list(range(1, saved + 1))


@pytest.mark.parametrize("logs, epochs, expected", [
    ([{"loss": 0.5}, {"loss": 0.4}], 2, record.Status(record.COMPLETE, 2, 2)),
    ([{"loss": 0.5}, {"loss": float("nan")}], 2,
     record.Status(record.STOPPED, 2, 2, record.NAN_LOSS)),
    ([{"loss": 0.5}, {"loss": 0.4}], 5, record.Status(record.STOPPED, 2, 5, record.EARLY_STOP)),
])
def test_run_status_records_how_training_ended(tmp_path, logs, epochs, expected):
    fit(tmp_path, epochs=1)  # a record to write into
    status = callbacks.RunStatus(str(tmp_path), epochs)
    status.on_train_begin()
    assert record.read(tmp_path).status == record.Status(record.RUNNING, 0, epochs)
    for epoch, epoch_logs in enumerate(logs):
        status.on_epoch_begin(epoch)
        assert status.epoch == epoch + 1
        status.on_epoch_end(epoch, epoch_logs)
    status.on_train_end()
    assert record.read(tmp_path).status == expected


def test_the_backup_is_the_file_keras_writes(tmp_path):
    """EpochBackup makes the .weights.h5 in memory: the same groups as Keras's save_weights,
    and loading it restores weights and optimizer state alike."""
    import h5py

    net = tiny_model()
    net.fit(X, Y, batch_size=4, epochs=1, verbose=0)
    net.save_weights(tmp_path / "keras.weights.h5")
    (tmp_path / "ours.weights.h5").write_bytes(keras_compat.weights_file_bytes(net))

    def names(path):
        with h5py.File(path) as f:
            found = []
            f.visit(found.append)
            return found

    assert names(tmp_path / "ours.weights.h5") == names(tmp_path / "keras.weights.h5")
    restored = tiny_model()
    restored.optimizer.build(restored.trainable_variables)
    restored.load_weights(tmp_path / "ours.weights.h5")
    for a, b in zip(restored.variables + restored.optimizer.variables,
                    net.variables + net.optimizer.variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


def test_a_corrupt_backup_names_the_file_and_what_to_do(tmp_path):
    model_dir = tmp_path / "run"
    fit(model_dir, epochs=1, on_step=lambda step: step == "pruned" and shutil.copytree(
        model_dir / "backup", tmp_path / "kept"))
    shutil.copytree(tmp_path / "kept", model_dir / "backup")  # as if killed after epoch 1
    path = model_dir / "backup" / "epoch-0001.weights.h5"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(RunDirError) as info:
        fit(model_dir, epochs=2)
    message = str(info.value)
    assert message.startswith(f"{path}: cannot restore the training state (")
    assert message.endswith("); delete backup/ to restart the unfinished run from epoch 0, or "
                            "train with overwrite to start afresh")


def test_the_backup_holds_the_plateau_and_early_stopping_state(tmp_path):
    """The counters and best values of ReduceLROnPlateau and EarlyStopping travel inside the
    backup file and come back after their on_train_begin reset them, exactly and as ints;
    the reduced learning rate comes back as an optimizer variable."""
    net = tiny_model()
    net.fit(X, Y, batch_size=4, epochs=1, verbose=0)  # the optimizer built, with state
    net.optimizer.learning_rate = 0.005  # as ReduceLROnPlateau sets it
    plateau = keras.callbacks.ReduceLROnPlateau(monitor="loss")
    stop = keras.callbacks.EarlyStopping(monitor="loss")
    plateau.wait, plateau.best, plateau.cooldown_counter = np.int64(2), 0.1234567890123, 1
    stop.wait, stop.best, stop.best_epoch = 1, np.float32(0.25), 4
    saver = callbacks.EpochBackup(str(tmp_path), stateful=[plateau, stop])
    saver.set_model(net)
    saver.on_epoch_end(4)

    restored = tiny_model()
    fresh = [keras.callbacks.ReduceLROnPlateau(monitor="loss"),
             keras.callbacks.EarlyStopping(monitor="loss")]
    backup = callbacks.EpochBackup(str(tmp_path), initial_epoch=5, stateful=fresh)
    for callback in (*fresh, backup):  # in the order of a run's callback list
        callback.set_model(restored)
        callback.on_train_begin()
    assert (fresh[0].wait, fresh[0].best, fresh[0].cooldown_counter) == (2, 0.1234567890123, 1)
    assert (fresh[1].wait, fresh[1].best, fresh[1].best_epoch) == (1, 0.25, 4)
    assert all(type(value) is int for value in (fresh[0].wait, fresh[1].best_epoch))
    assert float(keras.ops.convert_to_numpy(restored.optimizer.learning_rate)) == \
        pytest.approx(0.005)


def test_a_backup_without_callback_state_restores_the_weights_and_resets_the_state(tmp_path):
    """A backup written before the state was kept (a plain save_weights file) still resumes."""
    net = tiny_model()
    net.fit(X, Y, batch_size=4, epochs=1, verbose=0)
    os.makedirs(layout.backup_dir(str(tmp_path)))
    net.save_weights(layout.backup_path(str(tmp_path), 1))
    plateau = keras.callbacks.ReduceLROnPlateau(monitor="loss")
    backup = callbacks.EpochBackup(str(tmp_path), initial_epoch=1, stateful=[plateau])
    restored = tiny_model()
    for callback in (plateau, backup):
        callback.set_model(restored)
        callback.on_train_begin()
    assert (plateau.wait, plateau.best, plateau.cooldown_counter) == (0, None, 0)
    for a, b in zip(restored.get_weights(), net.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("state, reason", [
    ("{not json", "JSONDecodeError: Expecting property name enclosed in double quotes: line 1 "
                  "column 2 (char 1)"),
    ('{"ReduceLROnPlateau": {"model": null}}',
     "ValueError: cxr_tf_callback_state: ReduceLROnPlateau.model=None is not a saved counter "
     "or best value"),
    ('{"ReduceLROnPlateau": {"wait": "2"}}',
     "ValueError: cxr_tf_callback_state: ReduceLROnPlateau.wait='2' is not a saved counter or "
     "best value"),
    ('{"os": {"wait": 1}}', "ValueError: cxr_tf_callback_state: 'os' is not a saved callback "
                            "state"),
], ids=["not_json", "other_attribute", "not_a_number", "other_owner"])
def test_a_damaged_callback_state_is_one_error_and_sets_nothing(tmp_path, state, reason):
    """The state read from a backup sets only the counters and best values it names, each a
    number or None; anything else is the damaged-backup error, before any callback changes."""
    import h5py

    net = tiny_model()
    net.fit(X, Y, batch_size=4, epochs=1, verbose=0)
    os.makedirs(layout.backup_dir(str(tmp_path)))
    path = layout.backup_path(str(tmp_path), 1)
    net.save_weights(path)
    with h5py.File(path, "r+") as f:
        f.attrs[callbacks.STATE_ATTRIBUTE] = state
    plateau = keras.callbacks.ReduceLROnPlateau(monitor="loss")
    backup = callbacks.EpochBackup(str(tmp_path), initial_epoch=1, stateful=[plateau])
    restored = tiny_model()
    plateau.set_model(restored)
    plateau.on_train_begin()
    backup.set_model(restored)
    with pytest.raises(RunDirError) as info:
        backup.on_train_begin()
    assert str(info.value) == (
        f"{path}: cannot restore the training state ({reason}); delete backup/ to restart the "
        "unfinished run from epoch 0, or train with overwrite to start afresh")
    assert (plateau.wait, plateau.best, plateau.cooldown_counter) == (0, None, 0)
