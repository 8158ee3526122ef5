"""A damaged prepared dataset is refused when it is opened, naming the file and the remedy, and
a shard damaged while a run reads it is one error naming it (cxr_tf.data.verify, source).

Each case damages a copy of the session's tiny prepared dataset (41 train, 5 validation, 14
test images at 32 px, one shard per split) as a failed copy, a full disk or an editor would."""

import json
import os
import shutil
import struct
import subprocess
import sys

import pytest
import tensorflow as tf

from cxr_tf.data import input_pipeline, source, verify

REMEDY = "the prepared dataset is damaged: rebuild it with prepare --overwrite (or tfds build " \
         "--overwrite)"


@pytest.fixture
def copy(prepared_dir, tmp_path):
    """(TFDS dir, version dir) of a fresh copy of the prepared dataset, to damage."""
    root = shutil.copytree(prepared_dir, tmp_path / "tfds")
    return root, source.find_prepared(str(root))


def shard(version_dir, split="train"):
    return os.path.join(version_dir, f"nih_chest_xray14-{split}.tfrecord-00000-of-00001")


def report_of(version_dir):
    with open(os.path.join(version_dir, verify.REPORT_FILE)) as f:
        return json.load(f)


def record_ends(path):
    """Byte offsets at which each TFRecord record of a file ends."""
    data, ends, at = open(path, "rb").read(), [], 0
    while at < len(data):
        (length,) = struct.unpack("<Q", data[at:at + 8])
        at += verify.FRAMING + length
        ends.append(at)
    return ends


def refused(root, **kwargs):
    with pytest.raises(verify.DamagedDataError) as info:
        source.open_source(root, **kwargs)
    return str(info.value)


def edit_json(path, change):
    with open(path) as f:
        value = json.load(f)
    change(value)
    with open(path, "w") as f:
        json.dump(value, f)


# --- what prepare records -------------------------------------------------------------------

def test_prepare_records_each_shard_and_a_whole_dataset_opens(copy):
    root, version_dir = copy
    recorded = report_of(version_dir)["shards"]
    counts = {split: [s["records"] for s in entries] for split, entries in recorded.items()}
    assert counts == {"train": [41], "validation": [5], "test": [14]}
    for split, entries in recorded.items():
        (entry,) = entries
        assert entry["file"] == os.path.basename(shard(version_dir, split))
        assert entry["bytes"] == os.path.getsize(shard(version_dir, split))
        assert entry["crc32"] == verify.crc32(shard(version_dir, split))
    # The root copy (where the README points) is the same report.
    with open(os.path.join(root, verify.REPORT_FILE)) as f:
        assert json.load(f)["shards"] == recorded
    opened = source.open_source(root, verify_data=True)
    assert opened.split_sizes == {"train": 41, "validation": 5, "test": 14}
    assert verify.locate(version_dir) is None


# --- refused when opened --------------------------------------------------------------------

def test_an_emptied_train_shard_is_refused(copy):
    root, version_dir = copy
    wrote = os.path.getsize(shard(version_dir))
    open(shard(version_dir), "wb").close()
    assert refused(root) == (f"{shard(version_dir)}: 0 bytes, prepare wrote {wrote:,} (train "
                             f"shard 1 of 1, 41 records); {REMEDY}")


def test_a_shard_cut_at_a_record_boundary_is_refused(copy):
    root, version_dir = copy
    path = shard(version_dir)
    wrote, cut = os.path.getsize(path), record_ends(path)[20]  # 21 of 41 records left
    os.truncate(path, cut)
    assert refused(root) == (f"{path}: {cut:,} bytes, prepare wrote {wrote:,} (train shard 1 "
                             f"of 1, 41 records); {REMEDY}")


def test_a_deleted_shard_is_refused(copy):
    root, version_dir = copy
    os.remove(shard(version_dir, "validation"))
    assert refused(root) == (f"{shard(version_dir, 'validation')}: missing (validation shard 1 "
                             f"of 1, 5 records); {REMEDY}")


def test_dataset_info_claiming_twice_the_examples_is_refused(copy):
    root, version_dir = copy
    info = os.path.join(version_dir, verify.INFO_FILE)
    edit_json(info, lambda v: v["splits"][0].update(shardLengths=["82"]))
    assert refused(root) == (f"{info}: declares 82 records in {os.path.basename(shard(version_dir))}"
                             f", prepare wrote 41; {REMEDY}")


def test_dataset_info_that_is_not_json_is_refused(copy):
    root, version_dir = copy
    info = os.path.join(version_dir, verify.INFO_FILE)
    with open(info, "w") as f:
        f.write('{"name": "nih_chest_xray14", "splits": [')  # a copy cut short
    assert refused(root).startswith(f"{info}: not a TFDS dataset description (Failed to load "
                                    "JSON: ")
    with open(info, "w") as f:
        f.write("[]")
    assert refused(root) == f"{info}: declares no dataset name or no split; {REMEDY}"


def test_a_report_that_is_not_json_or_lists_other_shards_is_refused(copy):
    root, version_dir = copy
    report = os.path.join(version_dir, verify.REPORT_FILE)
    text = open(report).read()
    with open(report, "w") as f:
        f.write(text[:100])
    assert refused(root).startswith(f"{report}: not JSON (")
    with open(report, "w") as f:
        f.write(text)
    edit_json(report, lambda v: v["shards"]["test"][0].update(crc32="not hex"))
    assert refused(root).startswith(f"{report}: shards: 'test': malformed entry {{")
    with open(report, "w") as f:
        f.write(text)
    extra = "nih_chest_xray14-train.tfrecord-00001-of-00002"
    edit_json(report, lambda v: v["shards"]["train"].append(
        {"file": extra, "records": 3, "bytes": 99, "crc32": "00000000"}))
    assert refused(root) == (f"{os.path.join(version_dir, verify.INFO_FILE)}: does not list "
                             f"{extra}, which prepare wrote (train, 3 records); {REMEDY}")


def test_without_recorded_shards_the_split_sizes_still_catch_damage(copy):
    """A dataset prepared before shards were recorded: dataset_info.json's numBytes plus the
    TFRecord framing must equal the shards' size."""
    root, version_dir = copy
    edit_json(os.path.join(version_dir, verify.REPORT_FILE), lambda v: v.pop("shards"))
    info = os.path.join(version_dir, verify.INFO_FILE)
    with open(info) as f:
        declared = {s["name"]: int(s["numBytes"]) for s in json.load(f)["splits"]}
    edit_json(info, lambda v: v["splits"][0].update(shardLengths=["82"]))
    assert refused(root) == (f"{shard(version_dir)}: train: the shards hold "
                             f"{os.path.getsize(shard(version_dir)):,} bytes, dataset_info.json "
                             f"declares 82 records in {declared['train'] + 16 * 82:,}; {REMEDY}")
    edit_json(info, lambda v: v["splits"][0].update(shardLengths=["41"]))
    open(shard(version_dir, "test"), "wb").close()
    assert refused(root) == (f"{shard(version_dir, 'test')}: test: the shards hold 0 bytes, "
                             f"dataset_info.json declares 14 records in "
                             f"{declared['test'] + 16 * 14:,}; {REMEDY}")


def flip_a_byte(path):
    """Changes one image byte in the middle of a record: the size stays right."""
    data = bytearray(open(path, "rb").read())
    data[record_ends(path)[10] + 100] ^= 0xFF
    open(path, "wb").write(bytes(data))


def test_changed_bytes_are_found_by_the_checksum(copy):
    root, version_dir = copy
    path = shard(version_dir)
    recorded = report_of(version_dir)["shards"]["train"][0]["crc32"]
    flip_a_byte(path)
    assert source.open_source(root).split_sizes["train"] == 41  # sizes and counts are right
    assert refused(root, verify_data=True) == (
        f"{path}: CRC-32 {verify.crc32(path)}, prepare recorded {recorded}: its bytes changed; "
        f"{REMEDY}")
    # Without a recorded checksum, verify_data reads every record (TFRecord's own CRCs).
    edit_json(os.path.join(version_dir, verify.REPORT_FILE), lambda v: v.pop("shards"))
    message = refused(root, verify_data=True)
    assert message.startswith(f"{path}: corrupted record at ") and message.endswith(REMEDY)


# --- found while reading ----------------------------------------------------------------------

def test_a_corrupt_record_met_mid_run_is_one_error_naming_the_shard(copy):
    root, version_dir = copy
    opened = source.open_source(root)
    flip_a_byte(shard(version_dir))
    batches = input_pipeline.make_for_train(opened, batch_size=8, epochs=1)
    with pytest.raises(verify.DamagedDataError) as info:
        with opened.reading():
            for _ in batches:
                pass
    # TFRecord names the offset of the record's data, after its 12-byte header.
    assert str(info.value) == (f"{shard(version_dir)}: corrupted record at "
                               f"{record_ends(shard(version_dir))[10] + 12}; {REMEDY}")
    assert isinstance(info.value.__cause__, tf.errors.DataLossError)


@pytest.mark.parametrize("distributed", [False, True], ids=["one_pipeline", "input_context"])
def test_a_split_that_ends_early_mid_run_is_an_error_never_a_short_epoch(copy, distributed):
    """Cut after the dataset was opened: the stream must still end where the split says. With
    an input context TFDS asserts no count (it reads a share of the files); the pipeline
    asserts its own share."""
    root, version_dir = copy
    opened = source.open_source(root)
    path = shard(version_dir)
    wrote, cut = os.path.getsize(path), record_ends(path)[20]
    os.truncate(path, cut)
    context = tf.distribute.InputContext(1, 0, 1) if distributed else None
    batches = input_pipeline.make_for_train(opened, batch_size=8, epochs=1,
                                            input_context=context)
    with pytest.raises(verify.DamagedDataError) as info:
        with opened.reading():
            for _ in batches:
                pass
    assert str(info.value) == (f"{path}: {cut:,} bytes, prepare wrote {wrote:,} (train shard 1 "
                               f"of 1, 41 records); {REMEDY}")
    assert isinstance(info.value.__cause__, tf.errors.FailedPreconditionError)


def test_other_errors_pass_through_reading(copy):
    root, _ = copy
    opened = source.open_source(root)
    with pytest.raises(tf.errors.FailedPreconditionError, match="something else"):
        with opened.reading():
            raise tf.errors.FailedPreconditionError(None, None, "something else")


# --- the apps ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_train_on_a_damaged_dataset_is_one_line_before_the_model_is_built(copy, tmp_path):
    root, version_dir = copy
    wrote = os.path.getsize(shard(version_dir))
    open(shard(version_dir), "wb").close()
    proc = subprocess.run(
        [sys.executable, "-m", "cxr_tf.train", f"--data_dir={root}", "--image_size=32",
         "--arch=resnet18", "--epochs=1", f"--model_dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.splitlines()[-1] == (
        f"error: {shard(version_dir)}: 0 bytes, prepare wrote {wrote:,} (train shard 1 of 1, "
        f"41 records); {REMEDY}")
    assert "Traceback" not in proc.stderr
    assert not os.path.exists(tmp_path / "run" / "config.json")  # refused before the run


def test_evaluate_refuses_a_damaged_dataset_before_loading_the_model(copy, tmp_path,
                                                                     make_run_dir):
    from cxr_tf.evaluation import runner
    from cxr_tf.evaluation.config import EvalConfig

    root, version_dir = copy
    run_dir = tmp_path / "run"
    make_run_dir(run_dir, data_dir=root)
    os.remove(run_dir / "checkpoints" / "best.keras")  # loading it would fail: it is not reached
    os.remove(shard(version_dir, "test"))
    with pytest.raises(verify.DamagedDataError, match="missing .test shard 1 of 1, 14 records"):
        runner.evaluate(EvalConfig(model_dir=str(run_dir), split="test", bootstrap=0),
                        progress=False)
