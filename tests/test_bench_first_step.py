"""tools/bench_first_step.py: each variant in its own process, and one JSON line."""

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "bench_first_step.py"
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


@pytest.mark.slow  # two TensorFlow processes build and step resnet18
def test_bench_first_step_small():
    proc = subprocess.run(
        [sys.executable, str(TOOL), "--arch=resnet18", "--image_size=32", "--repeats=1"],
        capture_output=True, text=True, env=ENV, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-2].startswith("ratio cxr_tf/keras_default: first fit ")
    result = json.loads(lines[-1])
    assert (result["arch"], result["image_size"], result["batch_size"]) == ("resnet18", 32, 2)
    # The runner's model traces its step once; Keras's default, twice.
    assert result["cxr_tf"]["traces"] == [1] and result["keras_default"]["traces"] == [2]
    assert result["ratio_first_fit"] == pytest.approx(
        result["cxr_tf"]["first_fit_s"] / result["keras_default"]["first_fit_s"])


def test_a_bad_flag_is_refused():
    proc = subprocess.run([sys.executable, str(TOOL), "--repeats=0"], capture_output=True,
                          text=True, env=ENV, timeout=120)
    assert proc.returncode == 2 and "--repeats must be >= 1; received 0" in proc.stderr


def test_summarize_takes_medians_and_their_ratio():
    from tools import bench_first_step as tool

    def runs(*pairs):
        return [{"first_fit_s": wall, "cpu_s": cpu, "traces": traces}
                for wall, cpu, traces in pairs]

    args = types.SimpleNamespace(arch="resnet50", image_size=224, batch_size=2, repeats=3)
    result = tool.summarize({"cxr_tf": runs((7, 7.5, 1), (6, 6.5, 1), (9, 9.5, 1)),
                             "keras_default": runs((12, 13, 2), (14, 15, 2), (13, 14, 2))},
                            args)
    assert result["cxr_tf"] == {"first_fit_s": 7, "cpu_s": 7.5, "traces": [1],
                                "first_fit_s_all": [7, 6, 9]}
    assert result["keras_default"]["first_fit_s"] == 13 and result["keras_default"]["cpu_s"] == 14
    assert result["ratio_first_fit"] == pytest.approx(7 / 13)
    assert result["ratio_cpu"] == pytest.approx(7.5 / 14)
