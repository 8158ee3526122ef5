"""cxr_tf.runs.claim: the lock, and fresh / resume / complete / another run (milliseconds
each). The train app's use of it runs end to end in tests/test_train.py."""

import json
import os

import pytest

from cxr_tf.runs import RunDirError, claim, record
from cxr_tf.runs.config import RunConfig


def write_run(model_dir, config, history="epoch,loss\n0,0.5\n1,0.4\n", backups=()):
    """A run dir as training leaves it: the record, history.csv and any backups."""
    os.makedirs(model_dir, exist_ok=True)
    record.write(model_dir, record.RunRecord(config=config, resolved=record.Resolved()))
    (model_dir / "history.csv").write_text(history)
    for epoch in backups:
        (model_dir / "backup").mkdir(exist_ok=True)
        (model_dir / "backup" / f"epoch-{epoch:04d}.weights.h5").write_bytes(b"")


@pytest.fixture
def config(tmp_path):
    return RunConfig(model_dir=str(tmp_path / "run"), learning_rate=0.01, epochs=2,
                     thresholds=["0.4", "0.5"])


def test_a_new_run_dir_is_fresh_and_locked(config, tmp_path):
    model_dir = tmp_path / "run"
    with claim.claim(model_dir, config) as claimed:
        assert (claimed.state, claimed.initial_epoch, claimed.found) == (claim.FRESH, 0, None)
        assert (model_dir / ".lock").read_text() == f"{os.getpid()}\n"


def test_an_unfinished_run_resumes_from_its_latest_backup(config, tmp_path):
    model_dir = tmp_path / "run"
    write_run(model_dir, config, history="epoch,loss\n0,0.5\n", backups=[1])
    with claim.claim(model_dir, config) as claimed:
        assert (claimed.state, claimed.initial_epoch) == (claim.RESUME, 1)
        assert claimed.found.config == config


def test_a_complete_run_is_found_complete_and_untouched(config, tmp_path):
    model_dir = tmp_path / "run"
    write_run(model_dir, config)
    before = sorted(os.listdir(model_dir))
    # model_dir and overwrite may differ between a run and its rerun.
    with claim.claim(model_dir, config.replace(model_dir="elsewhere")) as claimed:
        assert claimed.state == claim.COMPLETE
    assert sorted(os.listdir(model_dir)) == sorted(before + [".lock"])


def test_another_runs_dir_is_refused_listing_each_difference(config, tmp_path):
    model_dir = tmp_path / "run"
    write_run(model_dir, config)
    now = config.replace(learning_rate=0.002, thresholds=[0.5], epochs=3)
    with pytest.raises(claim.DifferingRunError) as info:
        with claim.claim(model_dir, now):
            pass
    assert info.value.differences == [("epochs", 2, 3), ("learning_rate", 0.01, 0.002),
                                      ("thresholds", ["0.4", "0.5"], ["0.5"])]
    assert info.value.model_dir == model_dir
    assert str(info.value) == (
        f"{model_dir} holds a run with other values: epochs: 2 (run) != 3 (now); "
        "learning_rate: 0.01 (run) != 0.002 (now); thresholds: 0.4,0.5 (run) != 0.5 (now). "
        "Rerun with the run's values to resume it, start afresh with overwrite, or use "
        "another run dir")
    assert isinstance(info.value, RunDirError) and isinstance(info.value, ValueError)


def test_overwrite_deletes_the_previous_run(config, tmp_path):
    model_dir = tmp_path / "run"
    write_run(model_dir, config, backups=[1])
    with claim.claim(model_dir, config.replace(learning_rate=0.02, overwrite=True)) as claimed:
        assert (claimed.state, claimed.initial_epoch) == (claim.FRESH, 0)
        assert os.listdir(model_dir) == [".lock"]


def test_a_field_the_record_does_not_know_is_not_compared(config, tmp_path):
    """The oldest config.json (before its "flags" copy) holds data_dir and steps_per_epoch
    resolved only: a rerun giving them otherwise is the same run."""
    model_dir = tmp_path / "run"
    write_run(model_dir, config)
    content = record.read(model_dir).to_json()
    del content["record_version"], content["given"]
    content.update(data_dir="/resolved/tfds", steps_per_epoch=7)
    (model_dir / "config.json").write_text(json.dumps(content))
    with claim.claim(model_dir, config.replace(data_dir="tfds")) as claimed:
        assert claimed.state == claim.COMPLETE


def test_other_workers_only_read(config, tmp_path):
    model_dir = tmp_path / "run"
    with claim.claim(model_dir, config, chief=False) as claimed:
        assert claimed.state == claim.FRESH
    assert not model_dir.exists()  # no lock, nothing written
    write_run(model_dir, config, backups=[1])
    with claim.claim(model_dir, config, chief=False) as claimed:
        # A worker trains into its own temporary dir, from epoch 0.
        assert (claimed.state, claimed.initial_epoch) == (claim.RESUME, 0)
    (model_dir / "backup" / "epoch-0001.weights.h5").unlink()
    # The chief finds the run complete and stops: this worker stops too, not waiting for it.
    with claim.claim(model_dir, config, chief=False) as claimed:
        assert claimed.state == claim.COMPLETE
    with pytest.raises(claim.DifferingRunError, match="holds a run with other values: seed"):
        with claim.claim(model_dir, config.replace(seed=5), chief=False):
            pass
    with claim.claim(model_dir, config.replace(overwrite=True), chief=False) as claimed:
        assert claimed.state == claim.FRESH  # the chief deletes the previous run
    assert sorted(os.listdir(model_dir)) == ["backup", "config.json", "history.csv"]


def test_a_second_lock_names_the_holder(tmp_path):
    model_dir = tmp_path / "run"
    with claim.locked(model_dir):
        assert (model_dir / ".lock").read_text() == f"{os.getpid()}\n"
        with pytest.raises(RunDirError) as info:
            with claim.locked(model_dir):
                pass
    assert str(info.value) == (f"{model_dir}: in use by another training process (pid "
                               f"{os.getpid()}); wait for it to end or use another run dir")
    with claim.locked(model_dir):  # released when the block ended
        pass


def test_complete_means_record_history_and_no_backup(config, tmp_path):
    assert not claim.is_complete(tmp_path)
    write_run(tmp_path, config, history="epoch,loss\n")
    assert not claim.is_complete(tmp_path)  # killed before the first epoch ended
    write_run(tmp_path, config)
    assert claim.is_complete(tmp_path)
    write_run(tmp_path, config, backups=[1])
    assert not claim.is_complete(tmp_path)  # killed mid-run


def test_clear_deletes_the_run_and_nothing_else(config, tmp_path):
    write_run(tmp_path, config)
    for sub in ("logs/train", "checkpoints", "backup", "eval_test", "plots"):
        (tmp_path / sub).mkdir(parents=True)
    (tmp_path / "thresholds.json").write_text("{}")
    (tmp_path / ".config.tmp-99.json").write_text("{")
    (tmp_path / "notes.md").write_text("mine")
    (tmp_path / ".lock").write_text("1\n")
    claim.clear(tmp_path)
    # plots/ is tools/plot_history.py's, not the run's: the user's figures stay.
    assert sorted(os.listdir(tmp_path)) == [".lock", "notes.md", "plots"]
