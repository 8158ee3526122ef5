"""cxr_tf.serving.run_dir: the run-dir layout and its readers and writers (milliseconds each,
except the two that build a small Keras model)."""

import io
import json
import os
import zipfile

import numpy as np
import pytest

from cxr_tf.serving import run_dir


def test_layout_paths(tmp_path):
    assert run_dir.config_path(tmp_path) == str(tmp_path / "config.json")
    assert run_dir.history_path(tmp_path) == str(tmp_path / "history.csv")
    assert run_dir.logs_dir(tmp_path) == str(tmp_path / "logs")
    assert run_dir.logs_dir(tmp_path, "validation") == str(tmp_path / "logs" / "validation")
    assert run_dir.checkpoint_path(tmp_path, "last", must_exist=False) == \
        str(tmp_path / "checkpoints" / "last.keras")
    assert run_dir.backup_path(tmp_path, 7) == str(tmp_path / "backup" / "epoch-0007.weights.h5")


def test_config_round_trip_and_errors(tmp_path):
    run_dir.write_config(tmp_path, {"seed": 3, "path": tmp_path})
    assert run_dir.read_config(tmp_path) == {"seed": 3, "path": str(tmp_path)}
    (tmp_path / "config.json").write_text('{"seed": 3')
    with pytest.raises(run_dir.RunDirError,
                       match=r"config.json: not valid JSON \(Expecting ',' delimiter"):
        run_dir.read_config(tmp_path)
    with pytest.raises(FileNotFoundError, match="must be a run dir written by"):
        run_dir.read_config(tmp_path / "nothing")


def test_read_history_rows(tmp_path):
    assert run_dir.read_history(tmp_path) == []
    (tmp_path / "history.csv").write_text("epoch,loss,val/auc_mean\n0,0.5,0.6\n1,0.4,nan\n")
    assert run_dir.read_history(tmp_path) == [
        {"epoch": "0", "loss": "0.5", "val/auc_mean": "0.6"},
        {"epoch": "1", "loss": "0.4", "val/auc_mean": "nan"}]


def test_checkpoint_path_errors(tmp_path):
    with pytest.raises(ValueError, match="checkpoint must be 'best' or 'last'; received 'mid'"):
        run_dir.checkpoint_path(tmp_path, "mid")
    with pytest.raises(FileNotFoundError, match=r"best.keras: not found \(has the run finished"):
        run_dir.checkpoint_path(tmp_path)


def test_verify_checkpoint_names_the_file_and_what_to_do(tmp_path):
    good = tmp_path / "last.keras"
    with zipfile.ZipFile(good, "w") as archive:
        archive.writestr("config.json", "{}" * 1000)
    assert run_dir.verify_checkpoint(good) == good
    torn = tmp_path / "best.keras"
    torn.write_bytes(good.read_bytes()[:100])
    with pytest.raises(run_dir.RunDirError) as info:
        run_dir.verify_checkpoint(torn)
    assert str(info.value) == (
        f"{torn}: not a readable .keras file (File is not a zip file); delete it: a resumed "
        "run writes it again at its next best epoch, or use --checkpoint=last; retrain with "
        "--overwrite to start afresh")
    flipped = bytearray(good.read_bytes())
    flipped[40] ^= 0xFF  # inside the stored member: the archive opens, its CRC fails
    good.write_bytes(bytes(flipped))
    with pytest.raises(run_dir.RunDirError, match=r"last.keras: not a readable .keras file "
                       r"\(member config.json is corrupt\); delete it \(the next epoch"):
        run_dir.verify_checkpoint(good)


def test_save_model_writes_no_optimizer_state_and_loads_back(tmp_path):
    import h5py
    import keras

    inputs = keras.Input((4,))
    net = keras.Model(inputs, keras.layers.Dense(3, name="logits")(inputs), name="tiny")
    net.compile(keras.optimizers.Adam(), "mse")
    net.fit(np.ones((8, 4)), np.zeros((8, 3)), verbose=0)
    path = run_dir.save_model(net, tmp_path, "best")
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
    loaded = run_dir.load_model(tmp_path, "best")
    assert loaded.name == "tiny"
    for a, b in zip(loaded.get_weights(), net.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_backups_are_found_by_epoch_and_temporaries_are_ignored(tmp_path):
    assert run_dir.resume_epoch(tmp_path) == 0
    backup = tmp_path / "backup"
    backup.mkdir()
    for name in ("epoch-0002.weights.h5", "epoch-0003.weights.h5",
                 f".epoch-0004.tmp-{os.getpid()}.weights.h5", "notes.txt"):
        (backup / name).write_bytes(b"")
    assert run_dir.backup_files(tmp_path) == {2: str(backup / "epoch-0002.weights.h5"),
                                              3: str(backup / "epoch-0003.weights.h5")}
    assert run_dir.resume_epoch(tmp_path) == 3


def test_thresholds_round_trip(tmp_path):
    assert run_dir.decision_thresholds(tmp_path, 0.4) == ([0.4] * 14, "--threshold=0.4")
    values = np.linspace(0.1, 0.9, 14)
    run_dir.write_thresholds(tmp_path, values, "f1", examples=12)
    read, content = run_dir.read_thresholds(tmp_path)
    np.testing.assert_array_equal(read, values)
    assert content["examples"] == 12 and content["split"] == "validation"
    assert run_dir.decision_thresholds(tmp_path)[1] == \
        "thresholds.json (f1, tuned on validation)"
    del content["thresholds"]["Hernia"]
    (tmp_path / "thresholds.json").write_text(json.dumps(content))
    with pytest.raises(ValueError, match="thresholds.json: no threshold for Hernia"):
        run_dir.read_thresholds(tmp_path)


def test_a_second_lock_names_the_holder(tmp_path):
    model_dir = tmp_path / "run"
    with run_dir.locked(model_dir):
        assert (model_dir / ".lock").read_text() == f"{os.getpid()}\n"
        with pytest.raises(run_dir.RunDirError) as info:
            with run_dir.locked(model_dir):
                pass
    assert str(info.value) == (f"{model_dir}: in use by another training process (pid "
                               f"{os.getpid()}); wait for it to end or use another --model_dir")
    with run_dir.locked(model_dir):  # released when the block ended
        pass


def _write_run(model_dir, flags, history="epoch,loss\n0,0.5\n"):
    model_dir.mkdir(parents=True, exist_ok=True)
    run_dir.write_config(model_dir, {"seed": 0, "flags": flags})
    (model_dir / "history.csv").write_text(history)


def test_complete_means_config_history_and_no_backup(tmp_path):
    assert not run_dir.is_complete(tmp_path)
    _write_run(tmp_path, {}, history="epoch,loss\n")
    assert not run_dir.is_complete(tmp_path)  # killed before the first epoch ended
    _write_run(tmp_path, {})
    assert run_dir.is_complete(tmp_path)
    (tmp_path / "backup").mkdir()
    (tmp_path / "backup" / "epoch-0001.weights.h5").write_bytes(b"")
    assert not run_dir.is_complete(tmp_path)  # killed mid-run


def test_differing_flags_lists_each_change(tmp_path):
    flags = {"model_dir": "a", "learning_rate": 0.01, "thresholds": ["0.4", "0.5"],
             "epochs": 3, "overwrite": False, "steps_per_epoch": None}
    _write_run(tmp_path, flags)
    assert run_dir.differing_flags(tmp_path, {**flags, "model_dir": "b",
                                              "overwrite": True}) == []
    changed = {**flags, "learning_rate": 0.002, "thresholds": ["0.5"], "new_flag": 1}
    assert run_dir.differing_flags(tmp_path, changed) == [
        "--learning_rate: 0.01 (run) != 0.002 (now)",
        "--thresholds: 0.4,0.5 (run) != 0.5 (now)"]


def test_clear_deletes_the_run_and_nothing_else(tmp_path):
    _write_run(tmp_path, {})
    for sub in ("logs/train", "checkpoints", "backup", "eval_test", "plots"):
        (tmp_path / sub).mkdir(parents=True)
    (tmp_path / "thresholds.json").write_text("{}")
    (tmp_path / ".config.tmp-99.json").write_text("{")
    (tmp_path / "notes.md").write_text("mine")
    (tmp_path / ".lock").write_text("1\n")
    run_dir.clear(tmp_path)
    assert sorted(os.listdir(tmp_path)) == [".lock", "notes.md"]
