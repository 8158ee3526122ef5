"""Tests for cxr_tf.synthetic: the exact Kaggle layout, patient-disjoint lists, determinism,
real label figures, and one file or row of every fault kind. The films themselves are tested in
test_synthetic_render.py."""

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr_tf import labels, synthetic
from cxr_tf.data import image_header, images, parallel_decode
from cxr_tf.synthetic import renderer
from cxr_tf.synthetic import rows as synthetic_rows

NUM_IMAGES = 120
FAULT_EXPECT = {
    "rgba": "converted:rgba", "rgb": "converted:rgb", "gray16": "converted:gray16",
    "palette": "converted:palette", "non_square": "converted:padded",
    "truncated_png": "skipped:undecodable", "zero_bytes": "skipped:undecodable",
    "not_png": "skipped:undecodable", "too_large": "skipped:too_large",
    "unknown_label": "skipped:unknown_label", "unparsable_age": "kept:age_unknown",
    "implausible_age": "kept:age_unknown", "missing_file": "skipped:missing_file",
    "not_in_split": "skipped:not_in_split", "path_traversal": "skipped:invalid_image_index",
    "absolute_path": "skipped:invalid_image_index", "duplicate_row": "skipped:duplicate_row",
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    summary = synthetic.generate(out, num_images=NUM_IMAGES, image_size=32, seed=0, faults=True,
                                 num_workers=1, progress=False)
    return out, summary


def read_csv(out):
    with open(out / "Data_Entry_2017.csv", newline="") as f:
        return list(csv.reader(f))


def read_list(out, split):
    return (out / f"{split}_list.txt").read_text().splitlines()


def test_kaggle_layout(dataset):
    out, summary = dataset
    per_folder = math.ceil(NUM_IMAGES / 12)  # 10
    folders = sorted(p.name for p in out.glob("images_*"))
    assert folders == [f"images_{i:03d}" for i in range(1, 13)]
    for i, folder in enumerate(folders[:-1]):
        names = sorted(os.listdir(out / folder / "images"))
        assert len(names) == per_folder
        assert all(n.endswith(".png") and len(n) == len("00000001_000.png") for n in names)
    # The last folder also holds the fault files (16 rows, 13 files: one missing, 2 paths).
    assert len(os.listdir(out / "images_012" / "images")) == per_folder + 13
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == [
        "Data_Entry_2017.csv", "faults.json", "test_list.txt", "train_val_list.txt"]
    first = next(out.glob("images_001/images/*.png"))
    with Image.open(first) as img:
        assert (img.format, img.mode, img.size) == ("PNG", "L", (32, 32))
    assert summary["images"] == NUM_IMAGES and summary["folders"] == 12


def test_csv_is_the_2017_kaggle_format(dataset):
    out, _ = dataset
    text = (out / "Data_Entry_2017.csv").read_text()
    lines = text.splitlines()
    assert lines[0] == ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,"
                        "Patient Gender,View Position,OriginalImage[Width,Height],"
                        "OriginalImagePixelSpacing[x,y],")
    assert all(line.endswith(",") for line in lines)  # the trailing empty column
    rows = read_csv(out)[1:]
    assert len(rows) == NUM_IMAGES + len(FAULT_EXPECT)
    assert all(len(row) == 12 and row[-1] == "" for row in rows)
    normal = rows[:NUM_IMAGES]
    for index, findings, follow_up, patient, age, sex, view, w, h, sx, sy, _ in normal:
        assert index == f"{int(patient):08d}_{int(follow_up):03d}.png"
        names = labels.parse_findings(findings)  # raises on anything unknown
        assert findings == "|".join(sorted(names)) or findings == "No Finding"
        assert 0 <= int(age) <= 95 and sex in "MF" and view in ("PA", "AP")
        assert int(w) >= 2000 and int(h) >= 2000 and sx == sy and 0.1 < float(sx) < 0.2
    pd = pytest.importorskip("pandas")
    frame = pd.read_csv(out / "Data_Entry_2017.csv")
    assert list(frame.columns)[7:] == ["OriginalImage[Width", "Height]",
                                       "OriginalImagePixelSpacing[x", "y]", "Unnamed: 11"]


def test_follow_ups_count_up_per_patient(dataset):
    out, summary = dataset
    rows = read_csv(out)[1:NUM_IMAGES + 1]
    by_patient = {}
    for row in rows:
        by_patient.setdefault(int(row[3]), []).append(int(row[2]))
    assert all(fus == list(range(len(fus))) for fus in by_patient.values())
    assert max(len(fus) for fus in by_patient.values()) > 1  # some patients have follow-ups
    assert summary["patients"] == len(by_patient)


def test_lists_are_patient_disjoint_and_about_77_23(dataset):
    out, summary = dataset
    train_val, test = read_list(out, "train_val"), read_list(out, "test")
    assert train_val == sorted(train_val) and test == sorted(test)
    normal = {row[0] for row in read_csv(out)[1:NUM_IMAGES + 1]}
    assert normal <= set(train_val) | set(test)
    assert not set(train_val) & set(test)
    patient = lambda name: name.split("_")[0]  # noqa: E731
    assert not {patient(n) for n in train_val} & {patient(n) for n in test}
    test_share = len(set(test) & normal) / NUM_IMAGES
    assert abs(test_share - 0.228) < 0.05
    assert summary["splits"]["test"]["images"] == len(test)
    assert summary["splits"]["train_val"]["images"] + len(test) == NUM_IMAGES


def test_label_figures_close_to_the_real_data_on_a_few_hundred_images(tmp_path):
    n = 400
    s = synthetic.generate(tmp_path, num_images=n, image_size=16, seed=3, num_workers=1,
                           progress=False)
    for name, count in s["labels"].items():
        p = synthetic_rows.REAL_PREVALENCE[name]
        assert abs(count / n - p) <= 4 * math.sqrt(p * (1 - p) / n) + 0.005, name
    assert abs(s["no_finding"] / n - synthetic_rows.REAL_NO_FINDING) < 4 * math.sqrt(0.25 / n)
    assert abs(s["multi_label"] / n - synthetic_rows.REAL_MULTI_LABEL) < 4 * math.sqrt(0.15 / n)
    written = read_csv(tmp_path)[1:]
    assert sum("Effusion" in row[1] for row in written) == s["labels"]["Effusion"]


def test_label_sampler_matches_the_embedded_figures_closely():
    n = 40_000
    rows = synthetic_rows.sample_rows(n, seed=1)
    for name in labels.LABELS:
        share = sum(name in r["findings"] for r in rows) / n
        p = synthetic_rows.REAL_PREVALENCE[name]
        # sampling noise plus the sampler's own bias (at most +10%, Hernia; see LabelSampler)
        assert abs(share - p) <= 4 * math.sqrt(p * (1 - p) / n) + 0.1 * p, name
    assert abs(sum(not r["findings"] for r in rows) / len(rows) - 0.538) < 0.01
    combos = [r["findings"] for r in rows]
    assert abs(combos.count(("Atelectasis", "Infiltration")) / len(rows) - 1350 / 112_120) < 0.003


def test_min_prevalence_raises_rare_findings_only():
    rows = synthetic_rows.sample_rows(20_000, seed=2, min_prevalence=0.1)
    share = {n: sum(n in r["findings"] for r in rows) / len(rows) for n in labels.LABELS}
    assert all(share[n] > 0.09 for n in labels.LABELS)
    assert abs(share["Hernia"] - 0.1) < 0.01
    assert abs(share["Infiltration"] - synthetic_rows.REAL_PREVALENCE["Infiltration"]) < 0.015
    assert sum(not r["findings"] for r in rows) / len(rows) < 0.3  # No Finding falls


def test_same_seed_same_bytes_whatever_the_workers(tmp_path, monkeypatch):
    def files(out):
        return {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}

    pools, real_executor = [], parallel_decode._executor
    monkeypatch.setattr(parallel_decode, "_executor",
                        lambda workers: pools.append(workers) or real_executor(workers))

    runs = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        synthetic.generate(out, num_images=40, image_size=32, seed=5, faults=True,
                           num_workers=workers, progress=False)
        runs.append(files(out))
    assert pools == [2]  # the second run really went through worker processes
    assert runs[0] == runs[1]
    other = tmp_path / "seed6"
    synthetic.generate(other, num_images=40, image_size=32, seed=6, num_workers=1, progress=False)
    assert files(other)[Path("images_001/images/00000001_000.png")] != \
        runs[0][Path("images_001/images/00000001_000.png")]


def test_faults_json_lists_every_kind_and_each_behaves_as_expected(dataset):
    out, summary = dataset
    faults = json.loads((out / "faults.json").read_text())
    assert {f["kind"]: f["expect"] for f in faults} == FAULT_EXPECT
    assert summary["faults"] == len(FAULT_EXPECT)
    rows = read_csv(out)[1:]
    listed = set(read_list(out, "train_val")) | set(read_list(out, "test"))
    folder = out / "images_012" / "images"
    for fault in faults:
        kind, image_id, expect = fault["kind"], fault["image_id"], fault["expect"]
        matching = [row for row in rows if row[0] == image_id]
        assert len(matching) == (2 if kind == "duplicate_row" else 1), kind
        path = folder / image_id
        if kind in ("path_traversal", "absolute_path"):
            assert image_id in ("../../etc/passwd", "/etc/passwd") and image_id not in listed
            continue
        assert (image_id in listed) == (kind != "not_in_split"), kind
        if kind == "duplicate_row":
            assert matching[0] == matching[1]
            continue
        if kind == "missing_file":
            assert not path.exists()
            continue
        data = path.read_bytes()
        if expect in ("skipped:undecodable", "skipped:too_large"):
            with pytest.raises(image_header.ImageError) as info:
                images.preprocess(data, image_id, 16)
            assert info.value.reason == expect.split(":")[1], kind
            continue
        gray, conversions = images.preprocess(data, image_id, 32)
        assert gray.shape == (32, 32, 1)
        if expect.startswith("converted:"):
            assert conversions == [expect.split(":")[1]], kind
            if kind in ("rgb", "rgba"):
                assert fault["expect_drop_rgba"] == "skipped:dropped_rgba"
                with pytest.raises(image_header.ImageError, match="dropped"):
                    images.decode_any(data, image_id, drop_rgba=True)
        else:
            assert conversions == [], kind
    by_kind = {f["kind"]: f["image_id"] for f in faults}
    fault_rows = {row[0]: row for row in rows[NUM_IMAGES:]}
    with pytest.raises(labels.UnknownLabelError):
        labels.parse_findings(fault_rows[by_kind["unknown_label"]][1])
    assert fault_rows[by_kind["unparsable_age"]][4] == "abc"
    assert fault_rows[by_kind["implausible_age"]][4] == "412"
    # The fault files hold one film in several encodings: each decodes to the same pixels.
    films = [images.decode_any((folder / by_kind[k]).read_bytes(), k)[0]
             for k in ("not_in_split", "rgb", "rgba", "gray16", "palette")]
    for film in films[1:]:
        np.testing.assert_array_equal(film, films[0])
    padded = images.decode_any((folder / by_kind["non_square"]).read_bytes(), "x")[0]
    assert padded.shape == (32, 26)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="min_prevalence"):
        synthetic_rows.sample_rows(10, min_prevalence=1.5)


def test_render_is_reexported_for_tools_and_tests():
    # tools/bench_serving.py and tests/test_images.py call synthetic.render.
    assert synthetic.render is renderer.render


def test_generate_from_stdin_runs_in_one_process(tmp_path):
    # Spawned workers cannot re-import a __main__ read from stdin; generate must not try.
    script = ("from cxr_tf import synthetic\n"
              f"synthetic.generate({str(tmp_path / 'out')!r}, num_images=12, image_size=32, "
              "num_workers=2, progress=False)\n")
    proc = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(list((tmp_path / "out").glob("images_*/images/*.png"))) == 12


def test_the_training_cache_is_generated_and_prepared_once(tmp_path, monkeypatch):
    """What `train --synthetic` and the benchmarks read: made under $CXR_TF_CACHE, at twice
    the training size, then reused as it is."""
    from cxr_tf.data import source
    from cxr_tf.synthetic.dataset import synthetic_data_dir

    monkeypatch.setenv("CXR_TF_CACHE", str(tmp_path))
    tfds_dir = synthetic_data_dir(32, num_images=20)
    root = tmp_path / "synthetic_n20_s64_p0_seed0"
    assert tfds_dir == str(root / "tfds")
    with Image.open(next((root / "kaggle").glob("images_*/images/*.png"))) as film:
        assert film.size == (64, 64)
    prepared = source.open_source(tfds_dir, image_size=32)
    assert sum(prepared.split_sizes.values()) == 20

    def stamps():  # the images, the metadata and the prepared dataset (not the call's report)
        return {p: p.stat().st_mtime_ns for folder in (root / "kaggle",
                                                       root / "tfds" / "nih_chest_xray14")
                for p in folder.rglob("*") if p.is_file()}

    written = stamps()
    assert synthetic_data_dir(32, num_images=20) == tfds_dir
    assert stamps() == written and len(written) > 20
