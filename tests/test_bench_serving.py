"""tools/bench_serving.py runs end to end on a tiny model and ends with one JSON line."""

import json
import os
import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "tools" / "bench_serving.py"
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


def test_bench_serving_small(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(TOOL), "--arch=resnet18", "--image_size=32", "--source_size=96",
         "--batch_size=4", "--iters=3", "--batches=1", "--warmup=0"],
        capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=600)
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
    assert result["preprocess_overhead_pct_best"] > -100  # a ratio of two positive times
    assert result["cpu_ms_per_image_bytes"] > 0 and result["cpu_ms_per_image_preprocess"] > 0
    assert 0 < result["decode_only_ms_per_image"] and 0 < result["decode_floor_pct"]
    assert "floor: PNG decode alone" in proc.stdout


def test_bad_flag_is_refused():
    proc = subprocess.run([sys.executable, str(TOOL), "--batch_size=0"], capture_output=True,
                          text=True, env=ENV, timeout=120)
    assert proc.returncode == 2 and "--batch_size must be >= 1; received 0" in proc.stderr
