"""prepare / the TFDS builder on the synthetic Kaggle layout, with every kind of bad input."""

import collections
import glob
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tensorflow_datasets as tfds

from cxr_tf import errors, locks, prepare
from cxr_tf.data import images, metadata, verify
from cxr_tf.datasets import nih_chest_xray14
from cxr_tf.datasets.config import PrepareConfig
from cxr_tf.datasets.nih_chest_xray14 import build, nih_chest_xray14_dataset_builder

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
VERSION = str(nih_chest_xray14.Builder.VERSION)  # the version folder prepare writes


def prepare_32(data_dir, output_dir, **changes):
    """build.prepare at 32 px, decoding in this process unless num_workers says otherwise."""
    return build.prepare(PrepareConfig(**{"data_dir": data_dir, "output_dir": output_dir,
                                          "image_size": 32, "num_workers": 0, **changes}))


@pytest.fixture(scope="module")
def faults_report(faults_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("faults_tfds")
    return prepare_32(faults_dir, out), out


def _expected(faults_dir, key="expect"):
    with open(os.path.join(faults_dir, "faults.json")) as f:
        faults = json.load(f)
    return collections.Counter(fault.get(key, fault["expect"]) for fault in faults), faults


def test_every_row_is_accounted_for(faults_report):
    from cxr_tf.data import source

    report, out = faults_report
    assert report["rows"] == sum(report["written"].values()) + sum(report["skipped"].values())
    # What the report says was written is what the dataset holds, split by split.
    assert report["written"] == source.open_source(out).split_sizes
    assert min(report["written"].values()) > 0


def test_each_fault_has_its_outcome(faults_dir, faults_report):
    report, _ = faults_report
    expected, faults = _expected(faults_dir)
    for outcome, n in expected.items():
        kind, name = outcome.split(":")
        if kind == "skipped":
            assert report["skipped"][name] == n, outcome
        elif kind == "converted" and name != "padded":
            assert report["converted"][name] == n, outcome
        elif kind == "kept":
            assert report["converted"][name] == n, outcome
    # Synthetic images are square: only the one non-square fault is padded.
    assert report["converted"]["padded"] == expected["converted:padded"] == 1
    # Bad files are named in the report with the reason.
    undecodable = " ".join(report["skipped_files"]["undecodable"])
    for fault in faults:
        if fault["expect"] == "skipped:undecodable":
            assert fault["image_id"] in undecodable


def test_report_file_and_table(faults_report):
    report, out = faults_report
    with open(out / "prepare_report.json") as f:
        on_disk = json.load(f)
    assert on_disk["rows"] == report["rows"] and on_disk["skipped"] == report["skipped"]
    table = prepare.format_report(report)
    assert "skipped undecodable" in table and "converted rgba" in table


def test_drop_rgba_skips_instead_of_converting(faults_dir, tmp_path):
    report = prepare_32(faults_dir, tmp_path, drop_rgba=True)
    expected, _ = _expected(faults_dir, "expect_drop_rgba")
    assert report["skipped"]["dropped_rgba"] == expected["skipped:dropped_rgba"] == 2
    assert report["converted"].get("rgba", 0) == 0 and report["converted"].get("rgb", 0) == 0
    assert "_droprgba" in report["dataset_dir"]


def test_strict_fails_on_the_unknown_label(faults_dir, tmp_path):
    with pytest.raises(metadata.MetadataError, match="Pleural_Thickning"):
        prepare_32(faults_dir, tmp_path, strict=True)


def test_output_does_not_depend_on_worker_count(kaggle_dir, prepared_dir, tmp_path):
    prepare_32(kaggle_dir, tmp_path, num_workers=2)

    def records(root):
        pattern = os.path.join(root, "nih_chest_xray14", "32", VERSION, "*.tfrecord*")
        files = sorted(glob.glob(pattern))
        return [open(f, "rb").read() for f in files]

    assert records(tmp_path) == records(prepared_dir)


@pytest.mark.slow
def test_prepared_dir_reads_without_cxr_tf(prepared_dir, tmp_path):
    # A process that cannot import cxr_tf still reads the dataset with plain TFDS.
    script = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "cxr_tf" or name.startswith("cxr_tf."):
                    raise ImportError("cxr_tf is blocked in this test")
        sys.meta_path.insert(0, Block())
        import tensorflow_datasets as tfds
        import glob
        path = glob.glob("{prepared_dir}/nih_chest_xray14/32/{VERSION}")[0]
        builder = tfds.builder_from_directory(path)
        ex = next(iter(tfds.as_numpy(builder.as_dataset(split="train", shuffle_files=False))))
        print(ex["image"].shape, ex["image"].dtype, ex["labels"].shape,
              builder.info.splits["train"].num_examples)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=ENV, cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("(32, 32, 1) uint8 (14,)")


def readme_tfds_build():
    """The `tfds build` command the README shows (inline or in a code block; one command
    wherever it appears), as written."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (command,) = {match.strip() for match in
                  re.findall(r"(tfds build nih_chest_xray14[^`#\n]*)", text)}
    return command


@pytest.mark.slow
def test_tfds_build_as_the_readme_writes_it(kaggle_dir, tmp_path):
    """From a folder that is not the repository, as written (the placeholders filled in):
    the same dataset, accounting and report as prepare, and no TensorFlow line of its own."""
    tfds_dir = tmp_path / "tfds"
    command = shlex.split(readme_tfds_build().replace("KAGGLE_DIR", str(kaggle_dir))
                         .replace("TFDS_DIR", str(tfds_dir)))
    assert command[:2] == ["tfds", "build"]
    anywhere = tmp_path / "anywhere"
    anywhere.mkdir()
    tfds_cli = os.path.join(os.path.dirname(sys.executable), "tfds")
    proc = subprocess.run([tfds_cli, *command[1:]], capture_output=True, text=True,
                          cwd=anywhere, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tfds_dir / "prepare_report.json") as f:  # where the README says
        report = json.load(f)
    version_dir = tfds_dir / "nih_chest_xray14" / "224" / VERSION
    assert json.loads((version_dir / "prepare_report.json").read_text()) == report
    assert report["written"] == {"train": 41, "validation": 5, "test": 14}
    assert sum(report["skipped"].values()) == 0 and report["rows"] == 60
    assert {s: len(e) for s, e in report["shards"].items()} == {"train": 1, "validation": 1,
                                                                "test": 1}
    # The accounting is printed, as prepare prints it.
    assert prepare.format_report({**report, "dataset_dir": str(version_dir)}) in proc.stdout
    # TensorFlow's start-up lines come from the tfds command line before it imports the
    # builder; from the builder on, nothing but our line.
    ours = proc.stderr.split("preparing nih_chest_xray14/224/")[1].splitlines()[1:]
    assert ours == [], ours


@pytest.mark.slow
def test_prepare_from_stdin_falls_back_to_one_process(kaggle_dir, tmp_path):
    # Spawned workers cannot re-import a __main__ read from stdin: without the fallback the
    # pool restarts dying workers for ever and prepare hangs.
    script = f"from cxr_tf.datasets.nih_chest_xray14 import build\n" \
             f"from cxr_tf.datasets.config import PrepareConfig\n" \
             f"r = build.prepare(PrepareConfig(data_dir={str(kaggle_dir)!r}, " \
             f"output_dir={str(tmp_path)!r}, image_size=32, num_workers=2))\n" \
             f"print('written', sum(r['written'].values()))\n"
    proc = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True,
                          env=ENV, cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("written 60")
    assert "decoding in this process: spawned workers must re-import __main__" in proc.stderr


def test_bad_flag_value_is_a_usage_error_not_a_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "cxr_tf.prepare", f"--data_dir={tmp_path}",
         f"--output_dir={tmp_path}", "--image_encoding=gif"],
        capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=900)
    assert proc.returncode == 2  # a usage error (cxr_tf.cli)
    assert proc.stderr == "error: flag --image_encoding=gif: value should be one of <raw|png>\n"


def test_a_folder_without_metadata_is_one_line_naming_it(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "cxr_tf.prepare", f"--data_dir={tmp_path / 'nih'}",
         f"--output_dir={tmp_path / 'out'}"],
        capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=900)
    assert proc.returncode == 1
    assert proc.stderr == (
        f"error: {tmp_path / 'nih'}: no Data_Entry CSV found; looked for "
        "Data_Entry_2017_v2020.csv, Data_Entry_2017_v2020.csv.gz, Data_Entry_2017.csv, "
        "Data_Entry_2017.csv.gz\n")
    assert not (tmp_path / "out").exists()  # nothing started


# --- empty splits, a changed source, one unexpected error -------------------------------------
# A 12-image source: 9 train_val images of 9 patients (round(0.1 * 9) = 1 held out for
# validation) and 3 test images (00000001, 00000002, 00000011).
TEST_IDS = ["00000001_000.png", "00000002_000.png", "00000011_000.png"]
HTML = b"<!DOCTYPE html><html><body><h1>403 Forbidden</h1></body></html>\n"


@pytest.fixture(scope="module")
def small_template(tmp_path_factory):
    from cxr_tf import synthetic

    out = tmp_path_factory.mktemp("small")
    synthetic.generate(out, num_images=12, image_size=32, seed=0, num_workers=1, progress=False)
    return out


@pytest.fixture
def small(small_template, tmp_path):
    """A fresh copy of the 12-image source, to spoil."""
    return shutil.copytree(small_template, tmp_path / "kaggle")


def _image(source, image_id):
    return next(source.glob(f"images_*/images/{image_id}"))


def test_val_fraction_0_leaves_validation_empty_not_fatal(small, tmp_path):
    report = prepare_32(small, tmp_path / "out", val_fraction=0)
    assert report["written"] == {"train": 9, "validation": 0, "test": 3}
    assert report["empty_splits"] == {
        "validation": "val_fraction is 0: no patient is held out for validation"}
    builder = tfds.builder_from_directory(report["dataset_dir"])
    assert sorted(builder.info.splits) == ["test", "train"]
    assert builder.info.splits["train"].num_examples == 9
    with open(tmp_path / "out" / "prepare_report.json") as f:
        assert json.load(f)["empty_splits"] == report["empty_splits"]
    assert ("empty   validation   val_fraction is 0: no patient is held out for validation"
            in prepare.format_report(report).splitlines())


def test_one_train_val_patient_leaves_validation_empty(small, tmp_path):
    (small / "train_val_list.txt").write_text("00000003_000.png\n")
    report = prepare_32(small, tmp_path / "out")
    assert report["written"] == {"train": 1, "validation": 0, "test": 3}
    assert report["skipped"]["not_in_split"] == 8
    assert report["empty_splits"] == {
        "validation": "fewer than 2 train_val patients: none can be held out for validation"}


def test_split_whose_files_all_fail_is_reported_and_the_others_written(small, tmp_path):
    for image_id in TEST_IDS:
        _image(small, image_id).write_bytes(HTML)
    report = prepare_32(small, tmp_path / "out")
    assert report["written"] == {"train": 8, "validation": 1, "test": 0}
    assert report["skipped"]["undecodable"] == 3
    assert report["empty_splits"] == {
        "test": "all 3 image(s) skipped when decoding (3 undecodable)"}
    assert [name.split(":")[0] for name in report["skipped_files"]["undecodable"]] == TEST_IDS
    assert sorted(tfds.builder_from_directory(report["dataset_dir"]).info.splits) == [
        "train", "validation"]


def test_empty_test_list_and_no_image_at_all(small, tmp_path):
    (small / "test_list.txt").write_text("")
    report = prepare_32(small, tmp_path / "out")
    assert report["written"] == {"train": 8, "validation": 1, "test": 0}
    assert report["empty_splits"] == {"test": "no row of test_list.txt was kept for test "
                                               "(see 'skipped')"}
    for path in small.glob("images_*/images/*.png"):
        path.write_bytes(b"")
    with pytest.raises(metadata.MetadataError) as info:
        prepare_32(small, tmp_path / "out2")
    assert str(info.value) == (
        f"{small}: no image to prepare: train: all 8 image(s) skipped when decoding "
        "(8 undecodable); validation: all 1 image(s) skipped when decoding (1 undecodable); "
        "test: no row of test_list.txt was kept for test (see 'skipped')")


def test_an_unexpected_decoder_error_skips_only_that_file(small, tmp_path, monkeypatch):
    real = images.preprocess

    def preprocess(data, image_id, *args, **kwargs):
        if image_id == "00000005_000.png":  # as pydicom's errors did before they were caught
            raise NotImplementedError("no decoder for JPEG 2000")
        return real(data, image_id, *args, **kwargs)

    monkeypatch.setattr(images, "preprocess", preprocess)  # num_workers=0: in this process
    report = prepare_32(small, tmp_path / "out")
    assert sum(report["written"].values()) == 11 and report["skipped"]["undecodable"] == 1
    assert report["skipped_files"]["undecodable"] == [
        "00000005_000.png: NotImplementedError: no decoder for JPEG 2000"]


def test_a_changed_source_is_never_reused_silently(small, tmp_path, caplog):
    out = tmp_path / "out"
    first = prepare_32(small, out)
    assert set(first["source"]) == {"Data_Entry_2017.csv", "train_val_list.txt", "test_list.txt"}
    assert first["source"]["test_list.txt"] == hashlib.sha256(
        (small / "test_list.txt").read_bytes()).hexdigest()
    shards = sorted(glob.glob(os.path.join(first["dataset_dir"], "*.tfrecord*")))
    stamps = [os.stat(p).st_mtime_ns for p in shards]
    assert prepare_32(small, out) == first  # same source: reused
    assert [os.stat(p).st_mtime_ns for p in shards] == stamps

    csv = small / "Data_Entry_2017.csv"
    csv.write_text(csv.read_text().replace("00000003_000.png,Nodule,", "00000003_000.png,Mass,"))
    with pytest.raises(nih_chest_xray14.SourceChangedError) as info:
        prepare_32(small, out)
    assert str(info.value) == (
        f"{first['dataset_dir']}: prepared from other metadata than {small} holds now: "
        "Data_Entry_2017.csv (changed); prepare into a new output_dir, or rebuild it "
        "(prepare --overwrite, `tfds build --overwrite`)")
    (small / "Data_Entry_2017_v2020.csv").write_bytes(csv.read_bytes())  # now preferred
    with pytest.raises(nih_chest_xray14.SourceChangedError, match=r"holds now: Data_Entry_2017.csv "
                       r"\(gone\), Data_Entry_2017_v2020.csv \(new\); prepare into"):
        prepare_32(small, out)
    assert [os.stat(p).st_mtime_ns for p in shards] == stamps  # the old dataset is untouched
    fresh = prepare_32(small, tmp_path / "new")
    assert fresh["source"]["Data_Entry_2017_v2020.csv"] != first["source"]["Data_Entry_2017.csv"]
    rebuilt = prepare_32(small, out, overwrite=True)
    assert rebuilt["source"] == fresh["source"]

    # A dataset prepared before fingerprints existed is reused with a warning.
    report_path = os.path.join(rebuilt["dataset_dir"], "prepare_report.json")
    with open(report_path) as f:
        old = json.load(f)
    del old["source"]
    with open(report_path, "w") as f:
        json.dump(old, f)
    with caplog.at_level(logging.WARNING):
        assert "source" not in prepare_32(small, out)
    assert [r.getMessage() for r in caplog.records if r.name == "root"] == [
        f"{first['dataset_dir']}: no source fingerprint recorded; reusing it without checking "
        f"that {small} still holds the same metadata"]


@pytest.mark.slow
def test_prepare_app_refuses_a_changed_source_until_overwrite(small, tmp_path):
    out = tmp_path / "out"
    first = prepare_32(small, out)
    csv = small / "Data_Entry_2017.csv"
    csv.write_text(csv.read_text().replace("00000003_000.png,Nodule,", "00000003_000.png,Mass,"))
    command = [sys.executable, "-m", "cxr_tf.prepare", f"--data_dir={small}",
               f"--output_dir={out}", "--image_size=32", "--num_workers=0", "--json"]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1] == (
        f"error: {first['dataset_dir']}: prepared from other metadata than {small} holds now: "
        "Data_Entry_2017.csv (changed); prepare into a new output_dir, or rebuild it "
        "(prepare --overwrite, `tfds build --overwrite`)")
    rebuilt = subprocess.run(command + ["--overwrite"], capture_output=True, text=True,
                             timeout=900)
    assert rebuilt.returncode == 0, rebuilt.stderr[-2000:]
    report = json.loads(rebuilt.stdout.strip().splitlines()[-1])
    assert report["source"]["Data_Entry_2017.csv"] == hashlib.sha256(csv.read_bytes()).hexdigest()
    assert report["source"]["Data_Entry_2017.csv"] != first["source"]["Data_Entry_2017.csv"]


# --- a second prepare, sizes a user types, a damaged dataset, --help, noise --------------------

def test_a_second_prepare_into_one_output_dir_is_refused_at_once(small, tmp_path):
    out = tmp_path / "out"
    lock = str(out / nih_chest_xray14_dataset_builder.LOCK_FILE)
    with locks.held(lock, lambda pid: AssertionError("the test holds it")):  # "the first"
        with pytest.raises(nih_chest_xray14_dataset_builder.PrepareInUseError) as info:
            prepare_32(small, out)
        assert str(info.value) == (f"{out}: in use by another prepare (pid {os.getpid()}); "
                                   "wait for it to end or prepare into another output_dir")
        assert not (out / "nih_chest_xray14").exists()  # nothing started
    assert sum(prepare_32(small, out)["written"].values()) == 12  # once it is released


@pytest.mark.slow
def test_the_prepare_app_refuses_a_held_output_dir_in_one_line(small, tmp_path):
    out = tmp_path / "out"
    with locks.held(str(out / nih_chest_xray14_dataset_builder.LOCK_FILE), RuntimeError):
        proc = subprocess.run(
            [sys.executable, "-m", "cxr_tf.prepare", f"--data_dir={small}",
             f"--output_dir={out}", "--image_size=32"],
            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"error: {out}: in use by another prepare (pid {os.getpid()}); wait for it to end or "
        "prepare into another output_dir"]


@pytest.mark.parametrize("args, message", [
    (["--image_size=40000"],
     "flag --image_size=40000: makes 1,600,000,000-pixel images, over max_pixels "
     "(50,000,000): image_size² must fit"),
    (["--image_size=1000", "--max_pixels=999999"],
     "flag --image_size=1000: makes 1,000,000-pixel images, over max_pixels (999,999): "
     "image_size² must fit"),
])
def test_an_image_size_over_max_pixels_is_refused_before_any_work(tmp_path, args, message):
    proc = subprocess.run(
        [sys.executable, "-m", "cxr_tf.prepare", f"--data_dir={tmp_path}",
         f"--output_dir={tmp_path / 'out'}", *args],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert (proc.returncode, proc.stderr) == (2, f"error: {message}\n")
    assert not (tmp_path / "out").exists()
    with pytest.raises(errors.ConfigError, match="image_size makes 49,000,000-pixel images"):
        PrepareConfig(image_size=7000, max_pixels=48_999_999)
    assert PrepareConfig(image_size=7000, max_pixels=49_000_000).image_size == 7000


def test_a_damaged_dataset_is_never_reused_and_overwrite_rebuilds_it(small, tmp_path):
    out = tmp_path / "out"
    first = prepare_32(small, out)
    (train,) = glob.glob(os.path.join(first["dataset_dir"], "*-train.tfrecord*"))
    os.truncate(train, 100)
    with pytest.raises(verify.DamagedDataError) as info:
        prepare_32(small, out)
    assert str(info.value).startswith(f"{train}: 100 bytes, prepare wrote ")
    rebuilt = prepare_32(small, out, overwrite=True)
    assert os.path.getsize(train) == rebuilt["shards"]["train"][0]["bytes"] > 100
    assert rebuilt["written"] == first["written"]
    verify.check(rebuilt["dataset_dir"], checksums=True)


def test_tfds_configs_are_made_on_demand_from_their_names(tmp_path, caplog):
    builder = nih_chest_xray14.Builder
    with caplog.at_level(logging.INFO):
        config = builder(config="64", data_dir=tmp_path).builder_config
        png = builder(config="48_val0.2_seed1_png", data_dir=tmp_path).builder_config
    assert (config.name, config.image_size, config.image_encoding) == ("64", 64, "raw")
    assert (png.image_size, png.val_fraction, png.seed, png.image_encoding) == (48, 0.2, 1, "png")
    assert not [r for r in caplog.records if "custom data configuration" in r.getMessage()]
    assert builder(config="224", data_dir=tmp_path).builder_config is \
        builder.builder_configs["224"]
    for name, message in [
            ("64px", "'64px' is not a nih_chest_xray14 config name: SIZE[_valFRACTION][_seedN]"
                     "[_droprgba][_png][_maxpxN], e.g. 224, 64_png"),
            ("224_val0.1", "config '224_val0.1' is spelled '224' (SIZE[_valFRACTION][_seedN]"
                           "[_droprgba][_png][_maxpxN], e.g. 224, 64_png)"),
            ("40000", "config '40000': image_size 40000 makes 1,600,000,000-pixel images, over "
                      "max_pixels (50,000,000): image_size² must fit")]:
        with pytest.raises(ValueError) as info:
            builder(config=name, data_dir=tmp_path)
        assert str(info.value) == message


def test_help_shows_the_usage_line_as_written(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cxr_tf.prepare", "--help"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert "Traceback" not in proc.stderr, proc.stderr
    usage = prepare.__doc__.split("\n\n")[1]
    assert usage.endswith("[--overwrite] [--json]") and usage.count(" \\\n") == 2
    assert usage in proc.stdout


@pytest.mark.slow
def test_prepare_prints_no_tensorflow_or_tfds_line(kaggle_dir, tmp_path):
    """Spawned decode workers included (--num_workers=2), with --json: stdout is the one JSON
    object, stderr our one line."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "cxr_tf.prepare", f"--data_dir={kaggle_dir}",
         f"--output_dir={out}", "--image_size=48", "--num_workers=2", "--json"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sum(json.loads(proc.stdout)["written"].values()) == 60
    assert proc.stderr.splitlines() == [
        f"preparing nih_chest_xray14/48/{VERSION} from the Kaggle folder into "
        f"{out / 'nih_chest_xray14' / '48' / VERSION}"]
