"""The train app: its flags and flagfiles parsed in process, the run dir a run leaves (the
shared `trained_run`), and end to end in subprocesses as a user runs it (slow)."""

import csv
import json
import os
import signal
import socket
import subprocess
import sys

import pytest

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
    assert history_epochs(model_dir) == [0, 1]
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
    for tag in ("val/auc_mean", "val/auc/Atelectasis", "val/f1@0.5/macro", "val/f1@0.5/Hernia",
                "val/precision@0.4/macro", "val/recall@0.5/micro", "val/paper_auc@0.5",
                "val/loss", "train/loss", "train/learning_rate"):
        assert tag in tags, tag
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
        val_loss = {int(r["epoch"]): float(r["val_loss"]) for r in csv.DictReader(f)}
    assert validation == pytest.approx(val_loss, rel=1e-6)


# Runs `python -m cxr_tf.train ARGS` with one more callback, last in the list: it kills its own
# process with SIGKILL after the second step of the second epoch, so the kill lands at a known
# point (epoch 0 saved and backed up, epoch 1 under way) without the test watching the clock.
KILLED_IN_EPOCH_1 = """
import os, runpy, signal, sys
import keras
from cxr_tf.training import callbacks

class KillInEpoch1(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == 1 and batch == 1:
            os.kill(os.getpid(), signal.SIGKILL)

standard = callbacks.standard_callbacks
callbacks.standard_callbacks = lambda *a, **k: [*standard(*a, **k), KillInEpoch1()]
sys.argv = ["cxr_tf.train", *sys.argv[1:]]
runpy.run_module("cxr_tf.train", run_name="__main__", alter_sys=True)
"""


@pytest.mark.slow
def test_resume_after_sigkill_is_bitwise_identical(prepared_dir, tmp_path):
    args = [f"--data_dir={prepared_dir}", "--epochs=3", "--deterministic", "--seed=3", *TINY]
    reference = last_json(train(f"--model_dir={tmp_path / 'ref'}", *args).stdout)

    model_dir = tmp_path / "crash"
    killed = subprocess.run([sys.executable, "-c", KILLED_IN_EPOCH_1, f"--model_dir={model_dir}",
                             *args], capture_output=True, text=True, env=ENV, timeout=900)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert history_epochs(model_dir) == [0]
    assert [p.name for p in (model_dir / "backup").glob("epoch-*.weights.h5")] == \
        ["epoch-0001.weights.h5"]

    resumed = last_json(train(f"--model_dir={model_dir}", *args).stdout)
    assert resumed["resumed_from_epoch"] == 1
    assert resumed["weights_sha256"] == reference["weights_sha256"]
    assert history_epochs(model_dir) == [0, 1, 2]
    assert not (model_dir / "backup").exists()  # removed once training completed


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
    assert history_epochs(model_dir) == [0]


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
    record.write(model_dir, record.RunRecord(config=config, resolved=record.Resolved()))
    (model_dir / "history.csv").write_text("epoch,loss\n0,0.5\n")
    return run_files(model_dir)


def test_runner_run_claims_the_run_dir_itself(prepared_dir, tmp_path):
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
    # A mistyped data_dir fails before overwrite deletes anything.
    with pytest.raises(metadata.MetadataError, match=f"^{tmp_path / 'typo'}: no Data_Entry CSV"):
        runner.run(config.replace(data_dir=str(tmp_path / "typo"), overwrite=True))
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


@pytest.mark.slow
def test_nan_loss_stops_the_run_with_a_clear_message(prepared_dir, tmp_path):
    proc = train(f"--data_dir={prepared_dir}", f"--model_dir={tmp_path / 'nan'}", "--epochs=3",
                 "--arch=resnet18", "--image_size=32", "--batch_size=4", "--optimizer=sgd",
                 "--learning_rate=1e30", check=False)
    assert proc.returncode == 1, proc.stderr
    assert "Training stopped: the loss became NaN" in proc.stdout


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

    summary = {"val_auc": {"Atelectasis": float("nan"), "Hernia": 0.75}, "val_auc_mean": 0.75,
               "terminated_on_nan": True, "model_dir": "runs/a"}
    text = train.format_summary(summary)
    assert "Atelectasis               n/a" in text and "Hernia                  0.750" in text
    assert "Training stopped: the loss became NaN (TerminateOnNaN)." in text
    assert "Evaluate:     python -m cxr_tf.evaluate --model_dir=runs/a --split=validation" in text


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


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.slow
def test_two_workers_train_to_identical_weights(prepared_dir, tmp_path):
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
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
    assert history_epochs(model_dir) == [0]


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
