"""tools/bench_serving.py runs end to end on a tiny model and ends with one JSON line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "bench_serving.py"
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


@pytest.mark.slow
def test_bench_serving_small(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(TOOL), "--arch=resnet18", "--image_size=32", "--source_size=96",
         "--batch_size=4", "--iters=3", "--batches=1", "--warmup=0"],
        capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert "in-graph decode+resize overhead" in proc.stdout
    result = json.loads(lines[-1])
    assert (result["arch"], result["image_size"], result["source_size"]) == ("resnet18", 32, 96)
    assert result["batch_size"] == 4 and result["device"] == "CPU"
    assert 0 < result["latency_ms_p50"] <= result["latency_ms_p95"]
    assert result["throughput_images_per_s"] > 0 and result["png_kib_mean"] > 1
    assert result["batch_ms_bytes"] > 0 and result["batch_ms_tensors"] > 0
    assert result["preprocess_ms_per_image"] > 0 and result["preprocess_share_pct"] > 0
    assert 0 < result["batch_ms_bytes_best"] <= result["batch_ms_bytes"]
    assert 0 < result["batch_ms_tensors_best"] <= result["batch_ms_tensors"]
    assert result["cpu_ms_per_image_bytes"] > 0 and result["cpu_ms_per_image_preprocess"] > 0
    assert 0 < result["decode_only_ms_per_image"] and 0 < result["decode_floor_pct"]
    assert "floor: PNG decode alone" in proc.stdout


def test_bad_flag_is_refused():
    proc = subprocess.run([sys.executable, str(TOOL), "--batch_size=0"], capture_output=True,
                          text=True, env=ENV, timeout=900)
    assert proc.returncode == 2 and "--batch_size must be >= 1; received 0" in proc.stderr


def test_summarize_by_hand():
    from tools import bench_serving as tool
    # Three rounds of (bytes, tensors, preprocessing alone, decode alone), (wall, CPU) seconds.
    timed = [((0.12, 0.24), (0.10, 0.20), (0.02, 0.04), (0.01, 0.02)),
             ((0.11, 0.22), (0.10, 0.20), (0.02, 0.04), (0.01, 0.02)),
             ((0.15, 0.30), (0.12, 0.24), (0.03, 0.06), (0.02, 0.04))]
    got = tool.summarize([0.05, 0.01, 0.03, 0.02, 0.04], timed, batch_size=4)
    assert got == pytest.approx({
        "latency_ms_p50": 30.0, "latency_ms_p95": 48.0,  # 0.04 + 0.8 * (0.05 - 0.04)
        "batch_size": 4,
        "batch_ms_bytes": 120.0, "batch_ms_tensors": 100.0,  # medians
        "batch_ms_bytes_best": 110.0, "batch_ms_tensors_best": 100.0,
        "throughput_images_per_s": 4 / 0.12,
        "preprocess_overhead_pct": 20.0,  # median of the rounds' 20 %, 10 %, 25 %
        "preprocess_overhead_pct_best": 10.0,  # 110 ms against 100 ms
        "preprocess_ms_per_image": 5.0, "preprocess_share_pct": 20.0,  # 20 ms of 100 ms
        "cpu_ms_per_image_bytes": 60.0, "cpu_ms_per_image_tensors": 50.0,
        "cpu_ms_per_image_preprocess": 10.0, "preprocess_overhead_pct_cpu": 20.0,
        "decode_only_ms_per_image": 2.5, "cpu_ms_per_image_decode_only": 5.0,
        "decode_floor_pct": 10.0,  # median of 10 %, 10 %, 16.7 %
        "decode_floor_pct_cpu": 10.0,
    })
