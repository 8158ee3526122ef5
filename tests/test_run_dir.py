"""cxr_tf.runs: the run-dir layout, history, checkpoints and thresholds (milliseconds each,
except the two that build a small Keras model). The record and the claim have their own test
modules (test_run_record.py, test_run_claim.py)."""

import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cxr_tf.runs import RunDirError, checkpoints, history, layout, thresholds


def test_layout_paths(tmp_path):
    assert layout.config_path(tmp_path) == str(tmp_path / "config.json")
    assert layout.history_path(tmp_path) == str(tmp_path / "history.csv")
    assert layout.thresholds_path(tmp_path) == str(tmp_path / "thresholds.json")
    assert layout.logs_dir(tmp_path) == str(tmp_path / "logs")
    assert layout.logs_dir(tmp_path, "validation") == str(tmp_path / "logs" / "validation")
    assert layout.eval_dir(tmp_path, "test") == str(tmp_path / "eval_test")
    assert checkpoints.checkpoint_path(tmp_path, "last", must_exist=False) == \
        str(tmp_path / "checkpoints" / "last.keras")
    assert layout.backup_path(tmp_path, 7) == str(tmp_path / "backup" / "epoch-0007.weights.h5")


def rows_of(values):
    """read_history's rows, NaN written as None so that lists compare."""
    return [{k: None if v != v else v for k, v in row.items()} for row in values]


def test_read_history_rows_counting_epochs_from_1(tmp_path):
    assert history.read_history(tmp_path) == []
    (tmp_path / "history.csv").write_text("epoch,loss,val/auc_mean\r\n1,0.5,0.6\r\n"
                                          "2,0.4,nan\r\n3,0.3,NA\r\n4,0.2,\r\n")
    assert rows_of(history.read_history(tmp_path)) == [
        {"epoch": 1, "loss": 0.5, "val/auc_mean": 0.6},
        {"epoch": 2, "loss": 0.4, "val/auc_mean": None},
        {"epoch": 3, "loss": 0.3, "val/auc_mean": None},
        {"epoch": 4, "loss": 0.2, "val/auc_mean": None}]


def test_a_history_written_from_epoch_0_reads_from_epoch_1(tmp_path):
    """cxr_tf 0.2.0 counted history.csv's epochs from 0 (tests/data/run_dir_0_2_0)."""
    (tmp_path / "history.csv").write_text("epoch,loss\n0,0.5\n1,0.4\n")
    assert [row["epoch"] for row in history.read_history(tmp_path)] == [1, 2]
    old = Path(__file__).resolve().parent / "data" / "run_dir_0_2_0" / "history.csv"
    assert [row["epoch"] for row in history.read_file(old)] == [1]


@pytest.mark.parametrize("tail, dropped", [
    (b"3,0.3,0.7", 9),  # an append cut short: no newline
    (b"\0" * 4096, 4096),  # ext4 after a power loss: the size grew, the data did not
    (b"3,0.3,0.\0\0\0\0", 12),
])
def test_a_torn_tail_is_dropped_with_one_warning(tmp_path, caplog, tail, dropped):
    good = b"epoch,loss,val/auc_mean\r\n1,0.5,0.6\r\n2,0.4,0.65\r\n"
    (tmp_path / "history.csv").write_bytes(good + tail)
    with caplog.at_level("WARNING"):
        rows = history.read_history(tmp_path)
    assert [row["epoch"] for row in rows] == [1, 2]
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path / 'history.csv'}: dropped its last {dropped} bytes (a row cut short by a "
        "crash or a power loss); that epoch counts as not finished"]


@pytest.mark.parametrize("text, what", [
    ("epoch,loss,val/auc_mean\n1,0.5,0.6\n2,0.4,good\n",
     "line 3: val/auc_mean is 'good', not a number"),
    ("epoch,loss,val/auc_mean\n1,0.5,0.6\n#%$garbage\n2,0.4,0.7\n",
     "line 3 has 1 fields, the header 3"),
    ("epoch,loss\n1,0.5\n\0\0\n2,0.4\n3,0.3\n", "line 3 has 1 fields, the header 2"),
    ("epoch,loss\n1.5,0.5\n", "line 2: epoch is '1.5', not an epoch number"),
    ("loss,epoch\n0.5,1\n", "line 1 is not a history header (epoch, loss, ...): "
                              "['loss', 'epoch']"),
])
def test_other_damage_names_the_file_the_line_and_what_to_do(tmp_path, text, what):
    (tmp_path / "history.csv").write_text(text)
    with pytest.raises(history.HistoryError) as info:
        history.read_history(tmp_path)
    assert str(info.value) == (
        f"{tmp_path / 'history.csv'}: {what}. It is training's per-epoch log: restore it from "
        "a copy, or delete the damaged line (that epoch's figures are lost; the run still "
        "resumes from backup/)")
    assert isinstance(info.value, RunDirError)


def test_checkpoint_path_errors(tmp_path):
    with pytest.raises(ValueError, match="checkpoint must be 'best' or 'last'; received 'mid'"):
        checkpoints.checkpoint_path(tmp_path, "mid")
    with pytest.raises(RunDirError, match=r"best.keras: not found \(has the run finished"):
        checkpoints.checkpoint_path(tmp_path)


def test_verify_checkpoint_names_the_file_and_what_to_do(tmp_path):
    good = tmp_path / "last.keras"
    with zipfile.ZipFile(good, "w") as archive:
        archive.writestr("config.json", "{}" * 1000)
    assert checkpoints.verify_checkpoint(good) == good
    torn = tmp_path / "best.keras"
    torn.write_bytes(good.read_bytes()[:100])
    with pytest.raises(RunDirError) as info:
        checkpoints.verify_checkpoint(torn)
    assert str(info.value) == (
        f"{torn}: not a readable .keras file (File is not a zip file); delete it: a resumed "
        "run writes it again at its next best epoch, or load the last checkpoint instead; "
        "retrain with overwrite to start afresh")
    flipped = bytearray(good.read_bytes())
    flipped[40] ^= 0xFF  # inside the stored member: the archive opens, its CRC fails
    good.write_bytes(bytes(flipped))
    with pytest.raises(RunDirError, match=r"last.keras: not a readable .keras file "
                       r"\(member config.json is corrupt\); delete it \(the next epoch"):
        checkpoints.verify_checkpoint(good)


def test_save_model_writes_no_optimizer_state_and_loads_back(tmp_path):
    import h5py
    import keras

    inputs = keras.Input((4,))
    net = keras.Model(inputs, keras.layers.Dense(3, name="logits")(inputs), name="tiny")
    net.compile(keras.optimizers.Adam(), "mse")
    net.fit(np.ones((8, 4)), np.zeros((8, 3)), verbose=0)
    path = checkpoints.save_model(net, tmp_path, "best")
    assert path == str(tmp_path / "checkpoints" / "best.keras")
    assert os.listdir(tmp_path / "checkpoints") == ["best.keras"]
    net.save(tmp_path / "full.keras")  # what Keras writes for a compiled model
    groups = {}
    for name in ("full.keras", "checkpoints/best.keras"):
        with zipfile.ZipFile(tmp_path / name) as archive:
            with h5py.File(io.BytesIO(archive.read("model.weights.h5"))) as weights:
                groups[name] = sorted(weights.keys())
    assert "optimizer" in groups["full.keras"]
    assert "optimizer" not in groups["checkpoints/best.keras"]
    loaded = checkpoints.load_model(tmp_path, "best")
    assert loaded.name == "tiny"
    for a, b in zip(loaded.get_weights(), net.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_backups_are_found_by_epoch_and_temporaries_are_ignored(tmp_path):
    assert layout.resume_epoch(tmp_path) == 0
    backup = tmp_path / "backup"
    backup.mkdir()
    for name in ("epoch-0002.weights.h5", "epoch-0003.weights.h5",
                 f".epoch-0004.tmp-{os.getpid()}.weights.h5", "notes.txt"):
        (backup / name).write_bytes(b"")
    assert layout.backup_files(tmp_path) == {2: str(backup / "epoch-0002.weights.h5"),
                                             3: str(backup / "epoch-0003.weights.h5")}
    assert layout.resume_epoch(tmp_path) == 3


def test_thresholds_round_trip(tmp_path):
    # No thresholds.json: the default for every finding, and no source (the caller names it).
    assert thresholds.decision_thresholds(tmp_path, 0.4) == ([0.4] * 14, None)
    values = np.linspace(0.1, 0.9, 14)
    thresholds.write_thresholds(tmp_path, values, "f1", examples=12)
    read, content = thresholds.read_thresholds(tmp_path)
    np.testing.assert_array_equal(read, values)
    assert content["examples"] == 12 and content["split"] == "validation"
    assert thresholds.decision_thresholds(tmp_path, 0.4) == (
        values.tolist(), "thresholds.json (f1, tuned on validation)")
    del content["thresholds"]["Hernia"]
    (tmp_path / "thresholds.json").write_text(json.dumps(content))
    with pytest.raises(RunDirError, match="thresholds.json: no threshold for Hernia"):
        thresholds.read_thresholds(tmp_path)
    (tmp_path / "thresholds.json").write_text("{")
    with pytest.raises(RunDirError, match=r"thresholds.json: not valid JSON \(Expecting"):
        thresholds.read_thresholds(tmp_path)
