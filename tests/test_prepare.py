"""prepare / the TFDS builder on the synthetic Kaggle layout, with every kind of bad input."""

import collections
import glob
import json
import os
import subprocess
import sys
import textwrap

import pytest

from cxr_tf import prepare
from cxr_tf.data import metadata
from cxr_tf.datasets.nih_chest_xray14 import build

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


@pytest.fixture(scope="module")
def faults_report(faults_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("faults_tfds")
    return build.prepare(str(faults_dir), str(out), 32, num_workers=0), out


def _expected(faults_dir, key="expect"):
    with open(os.path.join(faults_dir, "faults.json")) as f:
        faults = json.load(f)
    return collections.Counter(fault.get(key, fault["expect"]) for fault in faults), faults


def test_every_row_is_accounted_for(faults_report):
    report, _ = faults_report
    assert report["rows"] == sum(report["written"].values()) + sum(report["skipped"].values())
    assert report["written"]["train"] > 0 and report["written"]["test"] > 0


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
    report = build.prepare(str(faults_dir), str(tmp_path), 32, drop_rgba=True, num_workers=0)
    expected, _ = _expected(faults_dir, "expect_drop_rgba")
    assert report["skipped"]["dropped_rgba"] == expected["skipped:dropped_rgba"] == 2
    assert report["converted"].get("rgba", 0) == 0 and report["converted"].get("rgb", 0) == 0
    assert "_droprgba" in report["dataset_dir"]


def test_strict_fails_on_the_unknown_label(faults_dir, tmp_path):
    with pytest.raises(metadata.MetadataError, match="Pleural_Thickning"):
        build.prepare(str(faults_dir), str(tmp_path), 32, strict=True, num_workers=0)


def test_output_does_not_depend_on_worker_count(kaggle_dir, prepared_dir, tmp_path):
    build.prepare(str(kaggle_dir), str(tmp_path), 32, num_workers=2)

    def records(root):
        files = sorted(glob.glob(os.path.join(root, "nih_chest_xray14/32/1.1.0/*.tfrecord*")))
        return [open(f, "rb").read() for f in files]

    assert records(tmp_path) == records(prepared_dir)


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
        path = glob.glob("{prepared_dir}/nih_chest_xray14/32/1.1.0")[0]
        builder = tfds.builder_from_directory(path)
        ex = next(iter(tfds.as_numpy(builder.as_dataset(split="train", shuffle_files=False))))
        print(ex["image"].shape, ex["image"].dtype, ex["labels"].shape,
              builder.info.splits["train"].num_examples)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=ENV, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("(32, 32, 1) uint8 (14,)")


def test_tfds_build_cli(kaggle_dir, tmp_path):
    builder_dir = os.path.dirname(build.__file__)
    proc = subprocess.run(
        [sys.executable, "-m", "tensorflow_datasets.scripts.cli.main", "build", builder_dir,
         "--config=224", f"--manual_dir={kaggle_dir}", f"--data_dir={tmp_path}"],
        capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    version_dir = tmp_path / "nih_chest_xray14" / "224" / "1.1.0"
    with open(version_dir / "prepare_report.json") as f:
        report = json.load(f)
    assert sum(report["written"].values()) + sum(report["skipped"].values()) == report["rows"]
    assert json.loads((version_dir / "features.json").read_text())


def test_prepare_from_stdin_falls_back_to_one_process(kaggle_dir, tmp_path):
    # Spawned workers cannot re-import a __main__ read from stdin: without the fallback the
    # pool restarts dying workers for ever and prepare hangs.
    script = f"from cxr_tf.datasets.nih_chest_xray14 import build\n" \
             f"r = build.prepare({str(kaggle_dir)!r}, {str(tmp_path)!r}, 32, num_workers=2)\n" \
             f"print('written', sum(r['written'].values()))\n"
    proc = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True,
                          env=ENV, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("written 60")
    assert "decoding in this process: spawned workers must re-import __main__" in proc.stderr


def test_bad_flag_value_is_a_usage_error_not_a_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "cxr_tf.prepare", f"--data_dir={tmp_path}",
         f"--output_dir={tmp_path}", "--image_encoding=gif"],
        capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.startswith("FATAL Flags parsing error: flag --image_encoding=gif: value "
                                  "should be one of <raw|png>\n")
    assert "Traceback" not in proc.stderr
