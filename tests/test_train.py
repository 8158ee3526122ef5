"""The train app: its flags and flagfiles parsed in process, the run dir a run leaves (the
shared `trained_run`), and end to end in subprocesses as a user runs it (slow)."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from cxr_tf.testing import processes

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
TINY = ["--arch=resnet18", "--image_size=32", "--batch_size=4", "--learning_rate=0.001",
        "--thresholds=0.4,0.5", "--json"]


def train(*args, cwd=None, env=None, check=True, timeout=900):
    proc = subprocess.run([sys.executable, "-m", "cxr_tf.train", *args], capture_output=True,
                          text=True, cwd=cwd, env=env or ENV, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"train failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def last_json(stdout):
    return json.loads(stdout.strip().splitlines()[-1])


def history_epochs(model_dir):
    with open(os.path.join(model_dir, "history.csv"), newline="") as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def train_config(*args):
    """The RunConfig `python -m cxr_tf.train ARGS` would run, parsed in this process with the
    app's own flag definitions in a fresh FlagValues (the dry-run subprocess test is in
    test_cli.py)."""
    from absl import flags as absl_flags

    from cxr_tf import flags
    from cxr_tf.runs.config import RunConfig

    values = absl_flags.FlagValues()
    flags.define_train_flags(values)
    values(flags.expand_flagfiles(["train", *args]))
    return flags.build_config(RunConfig, values)


@pytest.mark.parametrize("name,threshold", [("thr04", "0.4"), ("thr05", "0.5"),
                                            ("thr06", "0.6")])
def test_paper_flagfiles_from_any_directory(tmp_path, monkeypatch, name, threshold):
    monkeypatch.chdir(tmp_path)  # found among the packaged configs, not in the working dir
    config = json.loads(json.dumps(train_config(f"--flagfile={name}.cfg").to_dict()))
    assert config["thresholds"] == [threshold]
    assert (config["learning_rate"], config["batch_size"], config["epochs"]) == (0.01, 64, 50)
    assert (config["optimizer"], config["lr_schedule"], config["image_size"]) == \
        ("adam", "cosine", 224)
    assert config["pos_weight"] == "none" and config["arch"] == "resnet50"


def test_dry_run_prints_the_config_and_the_paper_models_size(tmp_path, monkeypatch, capsys):
    from cxr_tf import train

    monkeypatch.chdir(tmp_path)
    config = train_config("--flagfile=thr05.cfg", "--dry_run")
    assert train.dry_run(config) == 0
    out = capsys.readouterr().out
    assert json.loads(out.splitlines()[0]) == json.loads(json.dumps(config.to_dict()))
    assert "parameters: 23,583,566" in out  # ResNet-50, 224 px, 14 outputs
def test_chexnet_flagfile_resolves_to_the_papers_recipe(tmp_path, monkeypatch):
    """In process, as the train app parses it: CheXNet's recipe (arXiv:1711.05225), and its
    weights arguments pass the check a dry run makes (nothing is downloaded)."""
    from absl import flags as absl_flags

    from cxr_tf import flags, pretrained
    from cxr_tf.runs.config import RunConfig

    monkeypatch.chdir(tmp_path)  # found among the packaged configs, from any directory
    values = absl_flags.FlagValues()
    flags.define_train_flags(values)
    values(flags.expand_flagfiles(["train", "--flagfile=chexnet.cfg", "--dry_run"]))
    config = flags.build_config(RunConfig, values)
    assert values.dry_run
    assert (config.arch, config.weights, config.image_size, config.batch_size) == \
        ("densenet121", "imagenet", 224, 16)
    assert (config.optimizer, config.learning_rate, config.weight_decay) == ("adam", 0.001, 0.0)
    assert (config.lr_schedule, config.lr_plateau_factor, config.lr_plateau_patience,
            config.warmup_epochs, config.monitor) == ("plateau", 0.1, 1, 0.0, "val_loss")
    assert (config.augment, config.hflip, config.augment_ops) == (True, True, "flip")
    assert (config.pos_weight, config.thresholds, config.epochs) == ("none", (0.5,), 20)
    pretrained.check_weights(config.arch, config.weights, config.imagenet_weights)
    shrunk = absl_flags.FlagValues()
    flags.define_train_flags(shrunk)
    shrunk(flags.expand_flagfiles(["train", "--flagfile=chexnet.cfg", "--weights=",
                                   "--image_size=64", "--epochs=2", "--steps_per_epoch=20"]))
    assert flags.build_config(RunConfig, shrunk) == config.replace(
        weights="", image_size=64, epochs=2, steps_per_epoch=20)


def test_a_rerun_of_an_early_stopped_run_names_what_early_stopping_followed():
    from cxr_tf import train as train_app

    summary = {"stopped": "early_stop", "model_dir": "runs/x", "epochs_done": 3, "epochs": 9}
    assert train_app.stopped_message(summary, "val_loss") == (
        "runs/x: the run stopped after epoch 3 of 9 (early stopping: no val_loss decrease for "
        "--early_stop_patience epochs); nothing to do (--overwrite trains it again)")
    assert "(early stopping: no val/auc_mean gain for" in train_app.stopped_message(summary)


def test_later_flags_override_the_flagfile(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert train_config("--flagfile=thr05.cfg", "--learning_rate=0.002").learning_rate == 0.002
    assert train_config("--learning_rate=0.002", "--flagfile=thr05.cfg").learning_rate == 0.01


def test_run_dir_contract_and_tensorboard_tags(trained_run):
    model_dir, summary = trained_run  # 2 epochs, thresholds 0.4 and 0.5 (conftest.TRAINED)
    assert summary["epochs_run"] == 2 and summary["model_dir"] == str(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    assert config["num_replicas_in_sync"] == 1 and config["package_versions"]["keras"]
    assert (model_dir / "checkpoints" / "best.keras").stat().st_size > 0
    assert (model_dir / "checkpoints" / "last.keras").stat().st_size > 0
    assert not list((model_dir / "checkpoints").glob(".*tmp*"))
    assert history_epochs(model_dir) == [1, 2]  # as the progress bar and the backups count
    with open(model_dir / "history.csv", newline="") as f:
        columns = next(csv.reader(f))
    for key in ("loss", "val_loss", "val/auc_mean", "val/auc/Hernia", "val/f1@0.4/macro",
                "val/f1@0.5/micro", "val/precision@0.5/Effusion", "val/recall@0.4/macro",
                "val/paper_auc@0.5"):
        assert key in columns

    import tensorflow as tf
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(str(model_dir / "logs" / "metrics"),
                                             size_guidance={"tensors": 0, "images": 0})
    acc.Reload()
    tags = set(acc.Tags()["tensors"])
    for tag in ("val/auc_mean", "val/f1@0.5/macro", "val/precision@0.4/macro",
                "val/recall@0.5/micro", "val/paper_auc@0.5", "val/loss", "train/loss",
                "train/learning_rate", "val/class_counts"):
        assert tag in tags, tag
    # This validation split is a handful of images: per-finding figures are in history.csv,
    # withheld from TensorBoard (test_epoch_metrics.py shows them drawn when there are enough).
    assert not [tag for tag in tags if tag.startswith(("val/auc/", "val/pr/"))]
    assert [e.step for e in acc.Tensors("val/auc_mean")] == [0, 1]
    assert "inputs/val" in acc.Tags()["tensors"]
    assert any(p.endswith(".v2") or "events" in p for p in os.listdir(model_dir / "logs" / "train"))
    # Keras's epoch_loss / epoch_auc charts overlay train and validation: both runs have them.
    for run in ("train", "validation"):
        acc = event_accumulator.EventAccumulator(str(model_dir / "logs" / run),
                                                 size_guidance={"tensors": 0})
        acc.Reload()
        for tag in ("epoch_loss", "epoch_auc"):
            assert [e.step for e in acc.Tensors(tag)] == [0, 1], (run, tag)
    validation = {e.step: float(tf.make_ndarray(e.tensor_proto))
                  for e in acc.Tensors("epoch_loss")}
    with open(model_dir / "history.csv", newline="") as f:
        val_loss = {int(r["epoch"]) - 1: float(r["val_loss"]) for r in csv.DictReader(f)}
    assert validation == pytest.approx(val_loss, rel=1e-6)


@pytest.fixture(scope="module")
def resume_args(prepared_dir):
    return [f"--data_dir={prepared_dir}", "--epochs=3", "--deterministic", "--seed=3", *TINY]


@pytest.fixture(scope="module")
def uninterrupted(resume_args, tmp_path_factory):
    """The summary of the run the interrupted ones must end identical to."""
    return last_json(train(f"--model_dir={tmp_path_factory.mktemp('ref') / 'run'}",
                           *resume_args).stdout)


def wait_for(proc, predicate, what):
    """Polls until `predicate()` (a file the run writes: a deterministic point of its
    progress, not a time); fails if the process ended first."""
    deadline = time.time() + 900  # a hang guard, as the subprocess timeouts are
    while time.time() < deadline and proc.poll() is None and not predicate():
        time.sleep(0.02)
    assert proc.poll() is None, f"training ended before {what}:\n{proc.communicate()[1]}"


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM],
                         ids=lambda signum: signum.name)
def test_a_run_stopped_mid_epoch_resumes_bitwise_identical(resume_args, uninterrupted, tmp_path,
                                                           signum):
    """SIGKILL (a preemption, the OOM killer) leaves the files as they were; Ctrl-C and SIGTERM
    say in one line what is saved, record it, and exit 128 + the signal."""
    model_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "cxr_tf.train", f"--model_dir={model_dir}", *resume_args]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    # The first epoch is backed up: the process is now in the second one.
    wait_for(proc, lambda: list((model_dir / "backup").glob("epoch-*.weights.h5")),
             "its first backup")
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    if signum == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
        assert history_epochs(model_dir) in ([1], [1, 2])
    else:
        assert proc.returncode == 128 + signum and "Traceback" not in err, err
        # The signal lands in the second epoch, or just before it begins.
        assert re.fullmatch(f"interrupted in epoch [12]; the state after epoch 1 is saved in "
                            f"{model_dir / 'backup'}; rerun the same command to resume",
                            err.splitlines()[-1]), err
        status = json.loads((model_dir / "config.json").read_text())["status"]
        assert status == {"state": "stopped", "epochs_done": 1, "epochs": 3,
                          "reason": "interrupted", "detail": f"signal {int(signum)}"}
        assert history_epochs(model_dir) == [1]
    assert not [p for p in model_dir.rglob(".*tmp-*")]  # nothing half-written

    rerun = train(f"--model_dir={model_dir}", *resume_args)
    resumed = last_json(rerun.stdout)
    assert (f"resuming {model_dir} from backup/epoch-0001.weights.h5 at epoch 2 of 3 (the "
            "first step compiles the model)") in rerun.stderr.splitlines()
    assert resumed["resumed_from_epoch"] == 1
    assert resumed["weights_sha256"] == uninterrupted["weights_sha256"]
    assert history_epochs(model_dir) == [1, 2, 3]
    assert not (model_dir / "backup").exists()  # removed once training completed
    assert json.loads((model_dir / "config.json").read_text())["status"] == {
        "state": "complete", "epochs_done": 3, "epochs": 3, "reason": None, "detail": None}


# Runs the train app with a callback that SIGKILLs the process at a fixed step: the second
# step of the third epoch (argv[1], counted from 1), after the learning rate dropped.
KILL_IN_EPOCH = """
import os, runpy, signal, sys
import keras
from cxr_tf.training import runner

EPOCH = int(sys.argv[1])

class KillInEpoch(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == EPOCH and batch == 1:
            os.kill(os.getpid(), signal.SIGKILL)

make_callbacks = runner.make_callbacks
runner.make_callbacks = lambda *args: [KillInEpoch(), *make_callbacks(*args)]
sys.argv = ["train", *sys.argv[2:]]
runpy.run_module("cxr_tf.train", run_name="__main__")
"""


def learning_rates(model_dir):
    with open(os.path.join(model_dir, "history.csv"), newline="") as f:
        return [float(row["learning_rate"]) for row in csv.DictReader(f)]


@pytest.mark.slow
def test_a_plateau_run_killed_after_its_learning_rate_dropped_resumes_bitwise_identical(
        prepared_dir, tmp_path):
    """ReduceLROnPlateau's counters and best value are in the backup: without them the resumed
    run would count the third epoch as a first best and not drop the rate after it."""
    # No epoch improves by 1e9 (min_delta), so with patience 1 the rate drops after epochs 2
    # and 3; the monitored val_loss makes best.keras the lowest-loss epoch.
    args = [f"--data_dir={prepared_dir}", "--epochs=4", "--steps_per_epoch=3", "--deterministic",
            "--seed=3", "--lr_schedule=plateau", "--lr_plateau_patience=1",
            "--lr_plateau_min_delta=1e9", "--monitor=val_loss", *TINY]
    reference_dir, model_dir = tmp_path / "reference", tmp_path / "run"
    reference = last_json(train(f"--model_dir={reference_dir}", *args).stdout)
    assert learning_rates(reference_dir) == pytest.approx([1e-3, 1e-3, 1e-4, 1e-5], rel=1e-6)
    killed = subprocess.run([sys.executable, "-c", KILL_IN_EPOCH, "3",
                             f"--model_dir={model_dir}", *args], env=ENV, capture_output=True,
                            text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert [p.name for p in (model_dir / "backup").iterdir()] == ["epoch-0002.weights.h5"]
    assert history_epochs(model_dir) == [1, 2]

    rerun = train(f"--model_dir={model_dir}", *args)
    resumed = last_json(rerun.stdout)
    assert resumed["resumed_from_epoch"] == 2
    assert resumed["weights_sha256"] == reference["weights_sha256"]
    assert learning_rates(model_dir) == learning_rates(reference_dir)  # exactly
    assert (model_dir / "checkpoints" / "best.keras").read_bytes() != b""


@pytest.mark.slow
def test_interrupted_before_an_epoch_finished_a_new_run_dir_is_removed(resume_args, tmp_path):
    model_dir = tmp_path / "new"
    proc = subprocess.Popen([sys.executable, "-m", "cxr_tf.train", f"--model_dir={model_dir}",
                             *resume_args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for(proc, lambda: (model_dir / "config.json").exists(), "its run record")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert re.fullmatch("interrupted (in epoch 1|before its first epoch); no epoch had finished, "
                        "so there is nothing to resume; rerun the same command to start again",
                        err.splitlines()[-1]), err
    assert not model_dir.exists()


def run_files(model_dir):
    """{path: (size, mtime_ns)} of every file in the run dir but the lock."""
    return {str(p.relative_to(model_dir)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in model_dir.rglob("*") if p.is_file() and p.name != ".lock"}


@pytest.mark.slow
def test_a_complete_run_is_not_retrained_and_overwrite_starts_afresh(prepared_dir, tmp_path):
    model_dir = tmp_path / "run"
    args = [f"--data_dir={prepared_dir}", f"--model_dir={model_dir}", "--epochs=1",
            "--steps_per_epoch=2", *TINY]
    train(*args)
    before = run_files(model_dir)

    again = train(*args)
    assert last_json(again.stdout) == {"model_dir": str(model_dir), "complete": True}
    assert run_files(model_dir) == before

    other = train(*args, "--learning_rate=0.002", "--epochs=2", check=False)
    assert other.returncode == 1 and "Traceback" not in other.stderr
    assert (f"error: {model_dir} holds a run with other flags: --epochs: 1 (run) != 2 (now); "
            "--learning_rate: 0.001 (run) != 0.002 (now). Rerun with the run's flags to resume "
            "it, --overwrite to start afresh, or use another --model_dir") in other.stderr
    assert run_files(model_dir) == before

    fresh = last_json(train(*args, "--learning_rate=0.002", "--overwrite").stdout)
    assert (fresh["epochs_run"], fresh["resumed_from_epoch"]) == (1, 0)
    assert json.loads((model_dir / "config.json").read_text())["learning_rate"] == 0.002
    assert history_epochs(model_dir) == [1]


@pytest.mark.slow
def test_a_second_train_on_a_locked_run_dir_exits_at_once(prepared_dir, tmp_path):
    from cxr_tf.runs import claim

    model_dir = tmp_path / "busy"
    with claim.locked(model_dir):  # as the train process using it holds it
        proc = train(f"--data_dir={prepared_dir}", f"--model_dir={model_dir}", *TINY,
                     check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert (f"error: {model_dir}: in use by another training process (pid {os.getpid()}); "
            "wait for it to end or use another run dir") in proc.stderr
    assert os.listdir(model_dir) == [".lock"]


def complete_run(model_dir, config):
    """A run dir holding `config`'s run complete (record and history, no backup)."""
    from cxr_tf.runs import record

    os.makedirs(model_dir)
    record.write(model_dir, record.RunRecord(
        config=config, resolved=record.Resolved(),
        status=record.Status(record.COMPLETE, config.epochs, config.epochs)))
    (model_dir / "history.csv").write_text("epoch,loss\n1,0.5\n")
    return run_files(model_dir)


def test_runner_run_claims_the_run_dir_itself(prepared_dir, tmp_path):
    from cxr_tf import pretrained
    from cxr_tf.data import metadata
    from cxr_tf.runs import claim
    from cxr_tf.runs.config import RunConfig
    from cxr_tf.training import runner

    model_dir = tmp_path / "run"
    config = RunConfig(data_dir=str(prepared_dir), model_dir=str(model_dir), arch="resnet18",
                       image_size=32, epochs=1)
    before = complete_run(model_dir, config)
    assert runner.run(config) == {"model_dir": str(model_dir), "complete": True}
    with pytest.raises(claim.DifferingRunError) as info:
        runner.run(config.replace(epochs=2))
    assert info.value.differences == [("epochs", 1, 2)]
    # A mistyped data_dir or weights file fails before overwrite deletes anything.
    with pytest.raises(metadata.MetadataError, match=f"^{tmp_path / 'typo'}: no Data_Entry CSV"):
        runner.run(config.replace(data_dir=str(tmp_path / "typo"), overwrite=True))
    with pytest.raises(pretrained.WeightsError, match="typo.weights.h5'?: no such file"):
        runner.run(config.replace(weights=str(tmp_path / "typo.weights.h5"), overwrite=True))
    assert run_files(model_dir) == before


def test_other_flags_are_named_as_flags():
    from cxr_tf import train
    from cxr_tf.runs import claim

    error = claim.DifferingRunError("runs/a", [("epochs", 1, 2), ("thresholds", ["0.4"],
                                                                  ["0.4", "0.5"])])
    assert train.other_run_message(error) == (
        "runs/a holds a run with other flags: --epochs: 1 (run) != 2 (now); --thresholds: 0.4 "
        "(run) != 0.4,0.5 (now). Rerun with the run's flags to resume it, --overwrite to start "
        "afresh, or use another --model_dir")


def test_the_end_of_training_table_says_what_each_auc_rests_on():
    from cxr_tf import labels, train

    aucs = {name: 0.8 for name in labels.LABELS}
    aucs.update(Pneumonia=0.25, Mass=0.9, Hernia=float("nan"))
    positives = {name: 20 for name in labels.LABELS}
    positives.update(Pneumonia=1, Fibrosis=3, Hernia=0)
    negatives = {name: 180 for name in labels.LABELS}
    negatives["Effusion"] = 9
    lines = train.auc_table({"val_auc": aucs, "val_positives": positives,
                             "val_negatives": negatives, "val_auc_mean": 0.76})
    assert lines[1] == "finding                         val AUC  positives  negatives"
    rows = {line.split()[0]: line for line in lines[3:17]}
    assert rows["Mass"] == "Mass                              0.900         20        180"
    assert rows["Pneumonia"] == "Pneumonia              n/a (1 positive)          1        180"
    assert rows["Fibrosis"] == "Fibrosis              n/a (3 positives)          3        180"
    assert rows["Effusion"] == "Effusion              n/a (9 negatives)         20          9"
    assert rows["Hernia"] == "Hernia                n/a (0 positives)          0        180"
    # The mean of the 10 findings shown: nine at 0.8 and Mass at 0.9.
    assert lines[18:] == [
        "mean of 10 findings               0.810",
        "n/a: fewer than 10 positives or negatives in validation, too few for an AUC.",
        "val/auc_mean (history.csv; picks best.keras) = 0.760, over the 13 findings with both "
        "labels.", ""]


@pytest.mark.slow
def test_nan_loss_stops_the_run_with_a_clear_message(prepared_dir, tmp_path):
    args = [f"--data_dir={prepared_dir}", f"--model_dir={tmp_path / 'nan'}", "--epochs=3",
            "--arch=resnet18", "--image_size=32", "--batch_size=4", "--optimizer=sgd",
            "--learning_rate=1e30"]
    proc = train(*args, check=False)
    assert proc.returncode == 1, proc.stderr
    assert "Training stopped: the loss became NaN" in proc.stdout
    assert ("warning: epoch 1: the training loss is nan; the validation loss is nan. Training "
            "may be diverging; a lower learning rate usually helps") in proc.stderr.splitlines()
    from cxr_tf.testing.board import Board

    board = Board(tmp_path / "nan" / "logs")
    assert list(board.texts()["metrics"]["warnings/divergence"]) == [0]
    for run, tags in board.scalars().items():  # a NaN is drawn as 0: none is written
        assert all(v == v for points in tags.values() for v in points.values()), run
    status = json.loads((tmp_path / "nan" / "config.json").read_text())["status"]
    assert (status["state"], status["reason"]) == ("stopped", "nan_loss")
    again = train(*args, check=False)  # resuming would only stop again
    assert again.returncode == 1, again.stderr
    assert again.stdout == (f"{tmp_path / 'nan'}: the run stopped after epoch "
                            f"{status['epochs_done']} of 3 (the loss became NaN); nothing to do "
                            "(--overwrite trains it again)\n")


@pytest.mark.slow
def test_a_full_disk_while_the_backup_is_written_ends_the_run_in_one_line(prepared_dir,
                                                                         small_disk):
    """A 100 MB tmpfs (or a 100 MB file-size limit) holds the first epoch's last.keras (45 MB)
    but not its backup (weights and Adam's state, 135 MB)."""
    disk, limit = small_disk(100 << 20)
    model_dir = disk / "run"
    proc = subprocess.run([sys.executable, "-m", "cxr_tf.train", f"--data_dir={prepared_dir}",
                           f"--model_dir={model_dir}", "--epochs=2", *TINY],
                          capture_output=True, text=True, env=ENV, preexec_fn=limit,
                          timeout=600)
    cause = "No space left on device" if limit is None else "File too large"
    assert proc.returncode == 1, proc.stderr[-3000:]
    for crash in ("Traceback", "Exception ignored", "Segmentation"):
        assert crash not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.splitlines()[-1] == (
        f"error: {model_dir / 'backup' / 'epoch-0001.weights.h5'}: not written ({cause})")
    status = json.loads((model_dir / "config.json").read_text())["status"]
    assert (status["state"], status["reason"], status["epochs_done"]) == ("stopped", "error", 0)
    assert status["detail"].startswith("NotWrittenError: ")
    assert not list(model_dir.rglob(".*tmp-*")) and history_epochs(model_dir) == [1]


@pytest.mark.slow
def test_overwrite_refuses_a_folder_that_is_not_a_run_dir(prepared_dir, tmp_path):
    mine = tmp_path / "mine"
    (mine / "logs").mkdir(parents=True)
    (mine / "config.json").write_text('{"model": "bert", "layers": 12}')
    (mine / "history.csv").write_text("step,loss\n1,0.5\n")
    before = run_files(mine)
    proc = train(f"--data_dir={prepared_dir}", f"--model_dir={mine}", "--overwrite", *TINY,
                 check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.splitlines()[-1] == (
        f"error: {mine / 'config.json'}: not a cxr_tf run record (a JSON object with "
        "record_version or package_versions.cxr_tf); this folder belongs to something else")
    assert run_files(mine) == before and sorted(os.listdir(mine)) == [
        "config.json", "history.csv", "logs"]


@pytest.mark.slow
def test_a_dataset_at_another_size_names_the_prepare_command(prepared_dir, tmp_path):
    proc = train(f"--data_dir={prepared_dir}", f"--model_dir={tmp_path / 'run'}", *TINY,
                 "--image_size=64", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.splitlines()[-1] == (
        f"error: {prepared_dir}: no prepared dataset at --image_size=64; prepare it: python -m "
        f"cxr_tf.prepare --data_dir=KAGGLE_DIR --output_dir={prepared_dir} --image_size=64")
    assert not (tmp_path / "run").exists()  # a run that never started leaves no run dir


@pytest.mark.slow
def test_an_empty_validation_split_stops_training_with_a_clear_error(kaggle_dir, tmp_path):
    proc = train(f"--data_dir={kaggle_dir}", f"--model_dir={tmp_path / 'run'}",
                 "--val_fraction=0", *TINY, check=False)
    assert proc.returncode == 1, proc.stderr
    assert (f"error: {kaggle_dir}: the validation split is empty; training needs examples in "
            "train and validation (val_fraction > 0)") in proc.stderr


def test_an_empty_validation_split_is_a_no_data_error(kaggle_dir, tmp_path):
    from cxr_tf import errors
    from cxr_tf.runs.config import RunConfig
    from cxr_tf.training import runner

    config = RunConfig(data_dir=str(kaggle_dir), model_dir=str(tmp_path / "run"),
                       val_fraction=0, arch="resnet18", image_size=32)
    with pytest.raises(runner.NoDataError) as raised:
        runner.run(config)
    assert str(raised.value) == (f"{kaggle_dir}: the validation split is empty; training needs "
                                 "examples in train and validation (val_fraction > 0)")
    assert isinstance(raised.value, errors.UserError)
    assert not (tmp_path / "run").exists()  # refused before the run dir was claimed


def test_the_summary_says_a_nan_loss_stopped_the_run():
    from cxr_tf import train

    summary = {"val_auc": {"Atelectasis": float("nan"), "Hernia": 0.75},
               "val_positives": {"Atelectasis": 20, "Hernia": 12},
               "val_negatives": {"Atelectasis": 180, "Hernia": 188}, "val_auc_mean": 0.75,
               "terminated_on_nan": True, "model_dir": "runs/a"}
    lines = train.format_summary(summary).splitlines()
    assert lines[3:] == [
        "Atelectasis             n/a (no scores)         20        180",
        "Hernia                            0.750         12        188",
        "-" * 60,
        "mean of 1 finding                 0.750",
        "n/a (no scores): the model's outputs were NaN.",
        "",
        "Training stopped: the loss became NaN (TerminateOnNaN).",
        "Run dir:      runs/a",
        "TensorBoard:  tensorboard --logdir runs/a/logs",
        "Evaluate:     python -m cxr_tf.evaluate --model_dir=runs/a --split=validation"]


def _train_steps_traced(net):
    """How many times Keras traces `net`'s train step over two steps of 4 images."""
    import numpy as np

    traced = []
    step = net.train_step
    net.train_step = lambda data: traced.append(1) or step(data)
    images = np.random.default_rng(0).integers(0, 256, (8, *net.input_shape[1:]), np.uint8)
    labels = np.eye(net.output_shape[-1], dtype=np.float32)[np.arange(8)]
    net.fit(images, labels, batch_size=4, epochs=1, verbose=0)
    return len(traced)


def test_the_train_step_is_traced_once():
    """A variable created while tracing makes TensorFlow trace the step again (2-3 s more
    start-up for ResNet-18 here): the runner builds the optimizer's slots before fit."""
    import keras
    import tensorflow as tf

    from cxr_tf.runs.config import RunConfig
    from cxr_tf.training import runner

    config = RunConfig(data_dir="unused", model_dir="unused", arch="resnet18", image_size=32)
    net, _ = runner.build_compiled_model(config, None, tf.distribute.get_strategy(), 2)
    assert _train_steps_traced(net) == 1
    # What it prevents, on a small model compiled as the runner compiles (Adam, its AUC).
    inputs = keras.Input((8, 8, 1), dtype="uint8")
    small = keras.Model(inputs, keras.layers.Dense(14)(keras.layers.Flatten()(inputs)))
    small.compile(optimizer=keras.optimizers.Adam(1e-3), loss=net.loss, metrics=[
        keras.metrics.AUC(multi_label=True, from_logits=True, num_labels=14)])
    assert _train_steps_traced(small) == 2


def test_runner_steps():
    from cxr_tf.runs.config import RunConfig
    from cxr_tf.training import runner

    # 41 training images: 10 full batches of 4; at least one step; capped by steps_per_epoch.
    assert runner.steps_in_epoch(RunConfig(batch_size=4), 41) == 10
    assert runner.steps_in_epoch(RunConfig(batch_size=64), 41) == 1
    assert runner.steps_in_epoch(RunConfig(batch_size=4, steps_per_epoch=3), 41) == 3
    with pytest.raises(ValueError, match=r"^no data: give data_dir \(a prepared TFDS dir or a "
                                         r"Kaggle folder\) or synthetic=True$"):
        runner.open_data(RunConfig(model_dir="run"))


@pytest.mark.slow
def test_two_workers_train_to_identical_weights(prepared_dir, tmp_path):
    workers = [f"127.0.0.1:{p}" for p in processes.free_ports(2)]
    model_dir = tmp_path / "mw"
    procs = []
    for task in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": task}}
        env = {**ENV, "TF_CONFIG": json.dumps(tf_config)}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "cxr_tf.train", f"--data_dir={prepared_dir}",
             f"--model_dir={model_dir}", "--strategy=multi_worker", "--epochs=1",
             "--steps_per_epoch=3", "--deterministic", *TINY],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    digests = [last_json(out)["weights_sha256"] for out, _ in outs]
    assert digests[0] == digests[1]
    config = json.loads((model_dir / "config.json").read_text())
    assert config["num_replicas_in_sync"] == 2 and config["num_workers"] == 2
    assert history_epochs(model_dir) == [1]


@pytest.mark.slow
def test_demo_learns_the_synthetic_findings(tmp_path):
    """The README's first command, end to end: generate, prepare, train ResNet-50 at 64 px."""
    env = {**ENV, "CXR_TF_CACHE": str(tmp_path / "cache")}
    proc = train("--flagfile=demo.cfg", f"--model_dir={tmp_path / 'demo'}", "--json", env=env,
                 timeout=900)
    summary = last_json(proc.stdout)
    assert summary["epochs_run"] == 4
    assert summary["val_auc_mean"] >= 0.85, summary["val_auc"]
    # Every finding with validation positives is learned, not just the common ones.
    assert sum(auc >= 0.7 for auc in summary["val_auc"].values() if auc == auc) >= 12
