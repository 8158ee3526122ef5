"""tools/bench_input.py, bench_prepare.py and bench_epoch.py run end to end at tiny sizes and
end with one JSON line (bench_model and bench_serving have their own test modules)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[1] / "tools"
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


def _run(tool, *flags, cwd):
    proc = subprocess.run([sys.executable, str(TOOLS / tool), *flags], capture_output=True,
                          text=True, env=ENV, cwd=cwd, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_bench_input_with_and_without_augmentation(tmp_path):
    flags = ["--image_size=32", "--num_images=60", "--batch_size=8", "--repeats=2",
             f"--work_dir={tmp_path}"]
    augmented = _run("bench_input.py", *flags, cwd=tmp_path)
    plain = _run("bench_input.py", *flags, "--no-augment", cwd=tmp_path)
    assert (augmented["augment"], plain["augment"]) == (True, False)
    for result in (augmented, plain):
        assert result["image_size"] == 32 and len(result["all_images_per_sec"]) == 2
        assert result["per_core"] * result["cores"] == pytest.approx(result["images_per_sec"],
                                                                     rel=0.01)


def test_bench_prepare_times_both_and_drops_the_warmup(tmp_path):
    result = _run("bench_prepare.py", "--num_images=24", "--source_size=64", "--image_size=32",
                  "--repeats=2", "--warmup=1", f"--work_dir={tmp_path}", cwd=tmp_path)
    assert result["images"] == 24 and result["image_encoding"] == "raw"
    assert len(result["bare_all"]) == len(result["prepare_all"]) == 2
    assert result["ratio"] > 0 and result["target_ratio"] == 0.9


def test_bench_epoch_reports_both_shares(tmp_path):
    result = _run("bench_epoch.py", "--image_size=32", "--num_images=120", "--batch_size=8",
                  "--repeats=1", f"--work_dir={tmp_path}", cwd=tmp_path)
    assert result["arch"] == "resnet18" and result["validation_images"] > 0
    assert 0 <= result["input_wait_share"] < 1 and 0 < result["eval_share"]
    assert result["epoch_s"] > 0 and result["compute_s"] > 0
