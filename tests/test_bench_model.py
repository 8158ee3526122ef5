"""tools/bench_model.py runs under each installed backend and ends with one JSON line."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The smallest run that still compiles and times both models: 32 px, batch 2, one step.
TINY = ["--image_size=32", "--batch_size=2", "--steps=1", "--warmup=0", "--repeats=1",
        "--arch=resnet18", "--precision=float32"]


@pytest.mark.slow  # a TensorFlow or JAX process compiles resnet18 twice (about 30 s)
@pytest.mark.parametrize(
    "backend",
    [
        "tensorflow",
        pytest.param(
            "jax",
            marks=pytest.mark.skipif(
                importlib.util.find_spec("jax") is None,
                reason="jax is not installed (pip install 'jax[cpu]', the bench extra)",
            ),
        ),
    ],
)
def test_bench_model_prints_one_json_line(backend):
    env = dict(os.environ, KERAS_BACKEND=backend, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "bench_model.py"), *TINY],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert lines[-2].startswith("ratio ours/reference")  # the human table comes first
    assert result["backend"] == backend
    assert (result["reference"], result["reference_channels"]) == (
        "keras.applications.ResNet50", 1)
    assert (result["image_size"], result["batch_size"], result["precision"]) == (32, 2, "float32")
    assert result["device"].startswith("cpu")
    for name in ("ours", "keras_applications"):
        assert result[name]["train_img_s"] > 0 and result[name]["infer_img_s"] > 0
        assert len(result[name]["train_img_s_all"]) == 1
    assert result["ours"]["params"] == 11_187_022  # resnet18, one channel, 14 logits
    assert result["keras_applications"]["params"] == 23_610_126  # keras ResNet50, conv biases
    assert result["ratio_train"] == pytest.approx(
        result["ours"]["train_img_s"] / result["keras_applications"]["train_img_s"]
    )
    assert result["ratio_infer"] == pytest.approx(
        result["ours"]["infer_img_s"] / result["keras_applications"]["infer_img_s"]
    )
    # The GPU machine has no TensorFlow: under JAX the benchmark must not import it.
    assert result["tensorflow_imported"] is (backend == "tensorflow")
    if backend == "tensorflow":
        assert result["flops"] is None
        assert result["flops_method"] == (
            "XLA FLOP counts need KERAS_BACKEND=jax: not counted under tensorflow")
        return
    flops = result["flops"]
    # v1.5's first 1x1 of stages 3-5 reads every pixel, not one in four: +6.9 % at 224 px
    # (7.816 against 7.311 GFLOP); at 32 px XLA also counts the padded taps of the strided
    # 3x3 on 2x2 maps, measured 1.108.
    assert 1.04 < result["flops_ratio_v1_5_v1"] < 1.12
    assert result["flops_ratio_v1_5_v1"] == pytest.approx(flops["resnet50"] / flops["resnet50_v1"])
    # Same geometry as keras.applications: only its conv biases add (0.4 % at 32 px).
    assert flops["keras_applications"] == pytest.approx(flops["resnet50_v1"], rel=0.01)
    assert flops["keras_applications"] > flops["resnet50_v1"]
    assert flops["ours"] < flops["resnet50_v1"] / 2  # resnet18
    assert result["flops_ratio_ours_reference"] == pytest.approx(
        flops["ours"] / flops["keras_applications"])
    assert lines[-6].startswith("XLA GFLOP per image (inference): resnet50 (v1.5) 0.13")


def test_an_unknown_arch_is_rejected():
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "bench_model.py"), "--arch=vgg16"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "argument --arch: invalid choice: 'vgg16'" in proc.stderr


def test_bad_flag_is_rejected_with_its_value():
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "bench_model.py"), "--batch_size=0"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "--batch_size must be >= 1; received 0" in proc.stderr


@pytest.mark.slow  # 2-4 min here: DenseNet-121 and its reference compiled under XLA
@pytest.mark.skipif(importlib.util.find_spec("jax") is None,
                    reason="jax is not installed (pip install 'jax[cpu]', the bench extra)")
def test_gpu_check_script_cpu_smoke(tmp_path):
    # The device run's script, end to end at 32 px on this CPU: installs nothing (Keras is
    # here), runs bench_model under JAX for each arch, writes the JSON lines and prints the
    # table. BENCH_TIMEOUT=0: no limit per configuration (this CPU's speed is not the test).
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(tmp_path), JAX_PLATFORMS="cpu",
               BENCH_TIMEOUT="0")
    proc = subprocess.run(["bash", str(REPO / "tools" / "gpu_check.sh"), "--cpu-smoke"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "bench_model.jsonl").read_text().splitlines()]
    assert [(r["arch"], r["image_size"], r["batch_size"], r["backend"]) for r in rows] == [
        ("densenet121", 32, 4, "jax")]
    assert all(r["precision"] == "bfloat16" and r["ratio_train"] > 0 for r in rows)
    assert not any(r["tensorflow_imported"] for r in rows)  # the GPU machine has none
    assert "size/batch" in proc.stdout and "densenet121        32/4" in proc.stdout
    # An application arch against its own three-channel keras.applications network: one stem
    # channel and a 14-way head against three channels: torchvision's count less the
    # 1000-class head and two stem channels, and the application's 14-way head.
    densenet = rows[0]
    assert (densenet["reference"], densenet["reference_channels"]) == (
        "keras.applications.DenseNet121", 3)
    assert densenet["ours"]["params"] == 7_045_582
    assert densenet["keras_applications"]["params"] == 7_045_582 + 2 * 7 * 7 * 64
    assert set(densenet["flops"]) == {"ours", "keras_applications"}
    # Only the stem's two extra input channels differ: 2.8 % of the work at 32 px.
    assert 0.96 < densenet["flops_ratio_ours_reference"] < 0.99
