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


@pytest.mark.slow  # a TensorFlow process compiles resnet18 and ResNet50 (about 40 s)
def test_bench_model_prints_one_json_line():
    """Under TensorFlow; JAX, the GPU machine's backend, runs it in the gpu_check smoke test."""
    backend = "tensorflow"
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
    assert result["tensorflow_imported"]
    assert result["flops"] is None
    assert result["flops_method"] == (
        "XLA FLOP counts need KERAS_BACKEND=jax: not counted under tensorflow")


@pytest.mark.parametrize("flag, message", [
    ("--arch=vgg16", "argument --arch: invalid choice: 'vgg16'"),
    ("--batch_size=0", "--batch_size must be >= 1; received 0"),
], ids=["unknown_arch", "bad_batch_size"])
def test_a_bad_flag_is_rejected_with_its_value(flag, message):
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "bench_model.py"), flag],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert message in proc.stderr


@pytest.mark.slow  # about a minute here: resnet18 and ResNet50 compiled under XLA
@pytest.mark.skipif(importlib.util.find_spec("jax") is None,
                    reason="jax is not installed (pip install 'jax[cpu]', the bench extra)")
def test_gpu_check_script_cpu_smoke(tmp_path):
    # The device run's script, end to end at 32 px on this CPU, with resnet18 as the smoke arch:
    # installs nothing (Keras is here), runs bench_model under JAX, writes the JSON line and
    # prints the table. BENCH_TIMEOUT=0: no limit per configuration (this CPU's speed is not
    # the test).
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(tmp_path), JAX_PLATFORMS="cpu",
               BENCH_TIMEOUT="0")
    proc = subprocess.run(["bash", str(REPO / "tools" / "gpu_check.sh"), "--cpu-smoke"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = [json.loads(line)
                 for line in (tmp_path / "bench_model.jsonl").read_text().splitlines()]
    assert (result["arch"], result["image_size"], result["batch_size"], result["backend"],
            result["precision"]) == ("resnet18", 32, 4, "jax", "bfloat16")
    assert result["ratio_train"] > 0 and result["ratio_infer"] > 0
    # The GPU machine has no TensorFlow: under JAX the benchmark must not import it.
    assert result["tensorflow_imported"] is False
    assert "size/batch" in proc.stdout and "resnet18        32/4" in proc.stdout
    assert result["ours"]["params"] == 11_187_022  # resnet18, one channel, 14 logits
    assert (result["reference"], result["reference_channels"]) == (
        "keras.applications.ResNet50", 1)
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
    log = (tmp_path / "bench_resnet18_32_b4.log").read_text().strip().splitlines()
    assert log[-6].startswith("XLA GFLOP per image (inference): resnet50 (v1.5) 0.")
    assert f"(ratio {result['flops_ratio_v1_5_v1']:.3f})" in log[-6]


@pytest.mark.slow  # builds DenseNet-121 twice (about 10 s)
def test_an_application_arch_is_compared_with_its_own_three_channel_application():
    """bench_model's reference for an application arch: keras.applications' own network on
    three channels. One stem channel and a 14-way head against three channels: torchvision's
    count less the 1000-class head and two stem channels, and the application's 14-way head.
    (XLA counts 2.8 % more work for the reference at 224 px: docs/BENCHMARKS.md.)"""
    import keras

    from cxr_tf.model import build_model
    from tools import bench_model

    assert bench_model.REFERENCES["densenet121"] == ("DenseNet121", 3)
    assert build_model("densenet121", 32, 14).count_params() == 7_045_582
    reference = keras.applications.DenseNet121(weights=None, input_shape=(32, 32, 3),
                                                classes=14, classifier_activation=None)
    assert reference.count_params() == 7_045_582 + 2 * 7 * 7 * 64
