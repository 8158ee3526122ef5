"""tools/bench_input.py, bench_prepare.py and bench_epoch.py run end to end at tiny sizes and
end with one JSON line (bench_model and bench_serving have their own test modules)."""

import json
import os
import statistics
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_bench_prepare_times_both_and_drops_the_warmup(tmp_path):
    result = _run("bench_prepare.py", "--num_images=24", "--source_size=64", "--image_size=32",
                  "--repeats=2", "--warmup=1", f"--work_dir={tmp_path}", cwd=tmp_path)
    assert result["images"] == 24 and result["image_encoding"] == "raw"
    assert len(result["bare_all"]) == len(result["prepare_all"]) == 2
    assert result["target_ratio"] == 0.9
    # The figures are the medians of the timed runs, the warm-up left out.
    assert result["bare_images_per_sec"] == pytest.approx(
        statistics.median(result["bare_all"]), abs=0.1)
    assert result["prepare_images_per_sec"] == pytest.approx(
        statistics.median(result["prepare_all"]), abs=0.1)
    assert result["ratio"] == pytest.approx(
        result["prepare_images_per_sec"] / result["bare_images_per_sec"], rel=0.01)


@pytest.mark.slow
def test_bench_epoch_reports_both_shares(tmp_path):
    result = _run("bench_epoch.py", "--image_size=32", "--num_images=120", "--batch_size=8",
                  "--repeats=1", f"--work_dir={tmp_path}", cwd=tmp_path)
    assert result["arch"] == "resnet18" and result["batch_size"] == 8
    assert result["train_images"] + result["validation_images"] <= 120
    assert result["validation_images"] > 0 and result["epoch_s"] > 0
    # The shares are what the docstring says they are, of the times reported beside them
    # (rounded to 1 ms: a share can be off by 1 ms / epoch_s).
    epoch_s, tolerance = result["epoch_s"], 1e-3 / result["epoch_s"] + 1e-4
    assert result["input_wait_share"] == pytest.approx(
        max(epoch_s - result["compute_s"], 0) / epoch_s, abs=tolerance)
    assert result["eval_share"] == pytest.approx(result["eval_s"] / epoch_s, abs=tolerance)
    assert result["save_share"] == pytest.approx(result["save_s"] / epoch_s, abs=tolerance)
