"""cxr_tf.runs.record: config.json written and read in one place, every record version
(milliseconds each). tests/data/run_dir_0_2_0/config.json is what cxr_tf 0.2.0 wrote."""

import json
from pathlib import Path

import pytest

from cxr_tf.runs import RunDirError, record
from cxr_tf.runs.config import FIELDS, RunConfig

OLD_RUN = Path(__file__).resolve().parent / "data" / "run_dir_0_2_0"


def old_config(data_dir="/data/tfds", model_dir="/runs/old"):
    """0.2.0's config.json as a dict, its absolute paths put back."""
    text = (OLD_RUN / "config.json").read_text()
    for placeholder, value in (("@DATA_DIR@", data_dir), ("@MODEL_DIR@", model_dir),
                               ("@PACKAGE_DIR@", "/site-packages/cxr_tf")):
        text = text.replace(placeholder, value)
    return json.loads(text)


def synthetic_record(model_dir="run"):
    """A synthetic run's record: data_dir and steps_per_epoch resolved from None."""
    config = RunConfig(model_dir=model_dir, synthetic=True, image_size=64, epochs=4,
                       thresholds=["0.4", "0.5"])
    resolved = record.Resolved(
        data_dir="/cache/synthetic/tfds", model_dir="/abs/run", steps_per_epoch=42,
        label_names=("Atelectasis",), num_outputs=14, num_replicas_in_sync=1, num_workers=1,
        dtype_policy="float32", train_examples=1400, validation_examples=150,
        dataset=record.Dataset(dir="/cache/synthetic/tfds/nih_chest_xray14/64/1.1.0",
                               prepared=True, source={"Data_Entry_2017.csv": "ab12"}))
    environment = record.Environment(package_versions={"cxr_tf": "0.3.0"},
                                     command_line="train --synthetic", argv=("train",))
    return record.RunRecord(config=config, resolved=resolved, environment=environment)


def test_round_trip_keeps_every_value(tmp_path):
    written = synthetic_record()
    record.write(tmp_path, written)
    assert record.read(tmp_path) == written


# RunConfig fields added after 0.2.0: a record written before them does not know their values.
ADDED_SINCE_0_2_0 = {"verify_data", "cluster_timeout", "lr_plateau_factor",
                     "lr_plateau_patience", "lr_plateau_min_delta", "lr_plateau_min", "monitor",
                     "augment_ops"}


def test_the_file_is_flat_with_the_given_values_apart(tmp_path):
    record.write(tmp_path, synthetic_record())
    content = json.loads((tmp_path / "config.json").read_text())
    # The flat keys hold what the run resolved; "given" only what differs from them.
    assert (content["data_dir"], content["steps_per_epoch"], content["model_dir"]) == \
        ("/cache/synthetic/tfds", 42, "/abs/run")
    assert content["given"] == {"data_dir": None, "steps_per_epoch": None, "model_dir": "run"}
    assert content["record_version"] == 3 and "flags" not in content
    assert content["thresholds"] == ["0.4", "0.5"] and content["epochs"] == 4
    assert content["dataset"] == {"dir": "/cache/synthetic/tfds/nih_chest_xray14/64/1.1.0",
                                  "prepared": True, "source": {"Data_Entry_2017.csv": "ab12"}}
    # Every key 0.2.0 wrote is still there (users' scripts read them), less its "flags" copy.
    assert set(old_config()) - {"flags"} <= set(content)
    # ... and the fields added since.
    assert set(content) - set(old_config()) == {"record_version", "given", "dataset",
                                                *ADDED_SINCE_0_2_0}


def test_0_2_0_record_with_its_flags_copy():
    run = record.from_json(old_config())
    # The fields that came later are unknown, so never a difference.
    assert run.version == 1 and run.recorded == frozenset(FIELDS) - ADDED_SINCE_0_2_0
    config = run.config
    assert (config.arch, config.image_size, config.batch_size, config.epochs) == \
        ("resnet18", 32, 8, 1)
    assert (config.thresholds, config.steps_per_epoch, config.learning_rate) == \
        ((0.4, 0.5), 2, 0.01)
    assert (config.data_dir, config.model_dir) == ("/data/tfds", "/runs/old")
    resolved = run.resolved
    assert (resolved.train_examples, resolved.validation_examples) == (41, 5)
    assert (resolved.num_replicas_in_sync, resolved.dtype_policy) == (1, "float32")
    assert resolved.label_names[0] == "Atelectasis" and resolved.dataset is None
    assert run.environment.package_versions["cxr_tf"] == "0.2.0"


def test_oldest_record_without_flags_leaves_the_resolved_fields_unknown():
    content = old_config()
    del content["flags"], content["imagenet_weights"]  # and a field added since
    content.update(data_dir="/cache/synthetic/tfds", steps_per_epoch=11)
    run = record.from_json(content)
    # The given data_dir and steps_per_epoch are unknown: RunConfig's defaults, not compared.
    assert run.recorded == frozenset(FIELDS) - {"data_dir", "steps_per_epoch",
                                                "imagenet_weights", *ADDED_SINCE_0_2_0}
    assert (run.config.data_dir, run.config.steps_per_epoch) == (None, None)
    assert run.config.imagenet_weights is None and run.config.seed == 0
    assert (run.resolved.data_dir, run.resolved.steps_per_epoch) == ("/cache/synthetic/tfds", 11)


def test_a_record_written_now_reads_back_the_given_config_of_a_relative_model_dir(tmp_path):
    written = synthetic_record(model_dir="runs/demo")
    record.write(tmp_path, written)
    assert record.read(tmp_path).config.model_dir == "runs/demo"


def test_missing_record_says_what_a_run_dir_is(tmp_path):
    with pytest.raises(RunDirError) as info:
        record.read(tmp_path)
    assert str(info.value) == (f"{tmp_path}: not a run dir (no config.json); a run dir is "
                               "what training writes: config.json, history.csv, checkpoints/")
    assert not record.exists(tmp_path)


@pytest.mark.parametrize("text, message", [
    ('{"seed": 3', r"config.json: not valid JSON \(Expecting ',' delimiter"),
    ("[1, 2]", r"config.json: not a cxr_tf run record \(a JSON object with record_version or "
               r"package_versions.cxr_tf\); this folder belongs to something else$"),
    ('{"model": "bert", "epochs": 3}', r"config.json: not a cxr_tf run record"),
    ('{"record_version": 4}', r"config.json: record_version 4 is newer than this cxr_tf "
                              r"reads \(3\); upgrade cxr_tf$"),
    ('{"record_version": 3, "status": {"state": "done"}}',
     r"config.json: its status is not one cxr_tf writes \(\{'state': 'done'\}\)$"),
    ('{"record_version": 2, "epochs": 0}', r"config.json: epochs must be at least 1; "
                                           r"received epochs=0$"),
])
def test_a_bad_record_names_the_file_and_the_reason(tmp_path, text, message):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(RunDirError, match=message):
        record.read(tmp_path)


def test_the_status_is_written_whole_and_alone(tmp_path):
    """write_status changes only "status": a 0.2.0 record keeps its shape (its "flags")."""
    assert record.from_json(old_config()).status is None
    content = old_config()
    (tmp_path / "config.json").write_text(json.dumps(content))
    stopped = record.Status(record.STOPPED, 2, 5, record.INTERRUPTED, "signal 15")
    record.write_status(tmp_path, stopped)
    after = json.loads((tmp_path / "config.json").read_text())
    assert after == {**content, "status": {"state": "stopped", "epochs_done": 2, "epochs": 5,
                                           "reason": "interrupted", "detail": "signal 15"}}
    run = record.read(tmp_path)
    assert (run.version, run.status) == (1, stopped)
    assert not run.status.final  # an interrupted run resumes
    assert record.Status(record.STOPPED, 2, 5, record.EARLY_STOP).final
    assert record.Status(record.COMPLETE, 5, 5).final
    assert not record.Status(record.RUNNING, 2, 5).final
    with pytest.raises(ValueError, match="not a run status"):
        record.Status("paused")


def test_a_record_with_its_status_round_trips(tmp_path):
    import dataclasses

    written = dataclasses.replace(synthetic_record(),
                                  status=record.Status(record.COMPLETE, 4, 4))
    record.write(tmp_path, written)
    assert record.read(tmp_path) == written
    assert json.loads((tmp_path / "config.json").read_text())["status"]["state"] == "complete"
