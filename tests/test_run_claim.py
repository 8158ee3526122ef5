"""cxr_tf.runs.claim and cxr_tf.runs.status: the lock, fresh / resume / complete / stopped /
another run, the judgement of run dirs written before statuses, and what overwrite may delete
(milliseconds each). The train app's use of it runs end to end in tests/test_train.py."""

import json
import os

import pytest

from cxr_tf.runs import RunDirError, claim, record, status
from cxr_tf.runs.config import RunConfig

COMPLETE = record.Status(record.COMPLETE, 2, 2)


def write_run(model_dir, config, history="epoch,loss\n1,0.5\n2,0.4\n", backups=(),
              state=COMPLETE):
    """A run dir as training leaves it: the record (with `state`; None: as cxr_tf wrote it
    before statuses, record_version 2), history.csv and any backups."""
    os.makedirs(model_dir, exist_ok=True)
    written = record.RunRecord(config=config, resolved=record.Resolved(), status=state,
                               environment=record.Environment(package_versions={"cxr_tf": "0"}))
    record.write(model_dir, written)
    if state is None:
        content = json.loads((model_dir / "config.json").read_text())
        (model_dir / "config.json").write_text(json.dumps({**content, "record_version": 2}))
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
    write_run(model_dir, config, history="epoch,loss\n1,0.5\n", backups=[1],
              state=record.Status(record.RUNNING, 0, 2))
    with claim.claim(model_dir, config) as claimed:
        assert (claimed.state, claimed.initial_epoch) == (claim.RESUME, 1)
        assert claimed.found.config == config


@pytest.mark.parametrize("recorded, state", [
    (record.Status(record.RUNNING, 1, 2), claim.RESUME),  # killed: nothing said
    (record.Status(record.STOPPED, 1, 2, record.INTERRUPTED), claim.RESUME),
    (record.Status(record.STOPPED, 1, 2, record.ERROR, "No space left"), claim.RESUME),
    (record.Status(record.STOPPED, 2, 5, record.EARLY_STOP), claim.STOPPED),
    (record.Status(record.STOPPED, 2, 5, record.NAN_LOSS), claim.STOPPED),
    (record.Status(record.COMPLETE, 2, 2), claim.COMPLETE),
])
def test_the_recorded_status_decides_whatever_the_files_say(config, tmp_path, recorded, state):
    """Two history rows and no backup: the files 0.2.0 read as complete. Only the status
    decides now; a stop by the run's own rule is final, an interrupted or failed run resumes."""
    model_dir = tmp_path / "run"
    write_run(model_dir, config, state=recorded)
    with claim.claim(model_dir, config) as claimed:
        assert (claimed.state, claimed.status) == (state, recorded)


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
    del content["record_version"], content["given"], content["status"]
    content.update(data_dir="/resolved/tfds", steps_per_epoch=7)
    (model_dir / "config.json").write_text(json.dumps(content))
    with claim.claim(model_dir, config.replace(data_dir="tfds")) as claimed:
        assert claimed.state == claim.COMPLETE


def test_other_workers_only_read(config, tmp_path):
    model_dir = tmp_path / "run"
    with claim.claim(model_dir, config, chief=False) as claimed:
        assert claimed.state == claim.FRESH
    assert not model_dir.exists()  # no lock, nothing written
    write_run(model_dir, config, backups=[1], state=record.Status(record.RUNNING, 0, 2))
    with claim.claim(model_dir, config, chief=False) as claimed:
        # A worker trains into its own temporary dir, from epoch 0.
        assert (claimed.state, claimed.initial_epoch) == (claim.RESUME, 0)
    write_run(model_dir, config)
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


def test_complete_is_what_the_record_says(config, tmp_path):
    assert not claim.is_complete(tmp_path)
    write_run(tmp_path, config, state=record.Status(record.RUNNING, 0, 2))
    assert not claim.is_complete(tmp_path)
    write_run(tmp_path, config)
    assert claim.is_complete(tmp_path)
    write_run(tmp_path, config, backups=[2])  # killed while removing the backup: still done
    assert claim.is_complete(tmp_path)


THREE_EPOCHS = "epoch,loss,val/auc_mean\n0,0.5,0.60\n1,0.4,0.70\n2,0.3,0.65\n"


@pytest.mark.parametrize("history, backups, patience, expected", [
    (THREE_EPOCHS, [], 0, (record.COMPLETE, 3, None)),
    (THREE_EPOCHS, [3], 0, (record.COMPLETE, 3, None)),  # killed removing the backup
    (THREE_EPOCHS, [2], 0, (record.RUNNING, 2, None)),  # killed in the last epoch's save
    # The first epoch's save killed between its history row and its backup: 0.2.0 read this
    # as complete after 1 of 3 epochs.
    ("epoch,loss,val/auc_mean\n0,0.5,0.60\n", [], 0, (record.RUNNING, 0, None)),
    ("epoch,loss,val/auc_mean\n0,0.5,0.60\n1,0.4,0.70\n", [1], 0, (record.RUNNING, 1, None)),
    ("epoch,loss,val/auc_mean\n0,0.5,0.60\n", [1], 0, (record.RUNNING, 1, None)),
    ("epoch,loss\n", [], 0, (record.RUNNING, 0, None)),
    ("epoch,loss,val/auc_mean\n0,0.5,0.60\n1,nan,nan\n", [], 0,
     (record.STOPPED, 2, record.NAN_LOSS)),
    ("epoch,loss,val/auc_mean\n0,0.5,0.70\n1,0.4,0.70\n", [], 1,
     (record.STOPPED, 2, record.EARLY_STOP)),
    # Two epochs, no backup, but the second improved: not an early stop, so not finished.
    ("epoch,loss,val/auc_mean\n0,0.5,0.60\n1,0.4,0.70\n", [], 1, (record.RUNNING, 0, None)),
])
def test_a_run_dir_from_before_statuses_is_judged_from_its_history(
        config, tmp_path, history, backups, patience, expected):
    config = config.replace(epochs=3, early_stop_patience=patience)
    write_run(tmp_path, config, history=history, backups=backups, state=None)
    judged = status.of(tmp_path, record.read(tmp_path))
    assert (judged.state, judged.epochs_done, judged.reason) == expected
    assert judged.epochs == 3


def test_early_stopping_as_keras_decides_it():
    rows = [{"val/auc_mean": v} for v in (0.6, 0.7, 0.65, 0.7)]
    assert status.stopped_early(rows, 2)  # 0.65 and 0.70 do not beat 0.70
    assert not status.stopped_early(rows, 3)  # 0.70 beats 0.60
    assert not status.stopped_early(rows[:2], 2)  # too few epochs to have stopped
    assert status.stopped_early([{"val/auc_mean": 0.6}, {"val/auc_mean": float("nan")}], 1)


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


def test_overwrite_refuses_a_folder_that_is_not_a_run_dir(config, tmp_path):
    """Each refusal names what it found, deletes nothing, and leaves no lock file behind."""
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ("notes.md", "data.csv"):
        (mine / name).write_text("keep")
    (mine / "plots").mkdir()
    again = config.replace(overwrite=True)
    with pytest.raises(RunDirError) as info:
        with claim.claim(mine, again):
            pass
    assert str(info.value) == (
        f"{mine}: not a cxr_tf run dir (no config.json; it holds data.csv, notes.md, plots); "
        "overwrite deletes only a run dir: use another model_dir")
    (mine / "config.json").write_text('{"model": "bert", "layers": 12}')
    with pytest.raises(RunDirError, match=f"^{mine / 'config.json'}: not a cxr_tf run record"):
        with claim.claim(mine, again):
            pass
    assert sorted(os.listdir(mine)) == ["config.json", "data.csv", "notes.md", "plots"]
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(RunDirError, match="a_file: not a folder; overwrite deletes only"):
        with claim.claim(a_file, again):
            pass


def test_overwrite_refuses_the_working_and_home_folders(config, tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text("keep")
    monkeypatch.setenv("HOME", str(home))
    with pytest.raises(RunDirError) as info:
        with claim.claim(os.path.expanduser("~"), config.replace(overwrite=True)):
            pass
    assert str(info.value) == (f"{home}: is the home folder; overwrite deletes only a run dir: "
                               "give the run's own folder as model_dir")
    monkeypatch.chdir(home)
    with pytest.raises(RunDirError, match=r"^\.: is the home folder"):
        with claim.claim(".", config.replace(overwrite=True)):
            pass
    work = tmp_path / "work"
    work.mkdir()
    (work / "train.py").write_text("keep")
    monkeypatch.chdir(work)
    with pytest.raises(RunDirError, match=r"^\.: not a cxr_tf run dir \(no config.json; it "
                                          r"holds train.py\)"):
        with claim.claim(".", config.replace(overwrite=True)):
            pass
    assert os.listdir(home) == [".bashrc"] and os.listdir(work) == ["train.py"]


def test_overwrite_of_an_empty_folder_or_a_run_dir_with_the_users_files(config, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with claim.claim(empty, config.replace(overwrite=True)) as claimed:
        assert claimed.state == claim.FRESH
    run = tmp_path / "run"
    write_run(run, config, backups=[1])
    (run / "notes.md").write_text("mine")
    with claim.claim(run, config.replace(overwrite=True)) as claimed:
        assert claimed.state == claim.FRESH
    assert sorted(os.listdir(run)) == [".lock", "notes.md"]


def test_a_start_that_fails_before_an_epoch_leaves_no_run_dir_it_made(config, tmp_path):
    made = tmp_path / "new"
    with pytest.raises(RuntimeError, match="no GPU memory"):
        with claim.claim(made, config):
            (made / "config.json").write_text("{}")
            (made / "logs").mkdir()
            raise RuntimeError("no GPU memory")
    assert not made.exists()
    # A folder that was there before stays, and so does a run that finished an epoch.
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(KeyboardInterrupt):
        with claim.claim(existing, config):
            raise KeyboardInterrupt
    assert os.listdir(existing) == [".lock"]
    trained = tmp_path / "trained"
    with pytest.raises(KeyboardInterrupt):
        with claim.claim(trained, config):
            (trained / "history.csv").write_text("epoch,loss\n1,0.5\n")
            raise KeyboardInterrupt
    assert sorted(os.listdir(trained)) == [".lock", "history.csv"]
