"""Export: the SavedModel serves PNG/JPEG bytes in a process without cxr_tf, as TF Serving would."""

import base64
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow.experimental.numpy as tnp
from PIL import Image

from cxr_tf import labels
from cxr_tf.data import image_header, images
from cxr_tf.runs import checkpoints, thresholds
from cxr_tf.serving import graph
from cxr_tf.testing import processes
from cxr_tf.testing.image_bytes import encode, insert_after_ihdr

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
SIZE = 32


def with_sbit(png, bits):
    """Inserts an sBIT chunk (significant bits of a gray image) right after IHDR."""
    return insert_after_ihdr(png, b"sBIT", bytes([bits]))


def sample_images():
    """{name: encoded bytes}: every input kind the signature accepts, none of them square."""
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (45, 60), dtype=np.uint8)
    rgb = rng.integers(0, 256, (60, 45, 3), dtype=np.uint8)
    return {
        "gray8.png": encode(gray),
        "gray16.png": encode(rng.integers(0, 65536, (50, 40), dtype=np.uint16)),
        "gray16_sbit12.png": with_sbit(
            encode(rng.integers(0, 1000, (50, 40), dtype=np.uint16)), 12),
        "rgb.png": encode(rgb),
        "rgba.png": encode(rng.integers(0, 256, (40, 70, 4), dtype=np.uint8)),
        "gray_alpha.png": encode(Image.fromarray(np.stack([gray, gray[::-1]], -1), "LA")),
        "palette.png": encode(Image.fromarray(rgb).convert("P")),
        "gray.jpg": encode(gray, "JPEG", quality=90),
        "rgb.jpg": encode(rgb, "JPEG", quality=90),
    }


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    """The session's trained run with tuned thresholds, exported in this process by the
    export app's own function (the app as a user runs it: test_export_app)."""
    from cxr_tf import export
    from cxr_tf.serving.config import ExportConfig

    root = tmp_path_factory.mktemp("export")
    run = shutil.copytree(trained_run[0], root / "run")
    tuned = np.linspace(0.3, 0.7, 14)
    thresholds.write_thresholds(str(run), tuned, "f1")
    export_dir = root / "models" / "cxr" / "1"
    summary = export.export_run(ExportConfig(model_dir=str(run), export_dir=str(export_dir)))
    return checkpoints.load_model(str(run)), tuned, export_dir, summary


@pytest.fixture(scope="module")
def loaded(exported):
    return tf.saved_model.load(str(exported[2]))


def test_export_summary(exported):
    _, tuned, export_dir, summary = exported
    assert summary["export_dir"] == str(export_dir)
    assert (export_dir / "saved_model.pb").is_file()
    assert (summary["arch"], summary["image_size"], summary["checkpoint"]) == \
        ("resnet18", SIZE, "best")
    assert summary["thresholds_from"].startswith("thresholds.json (f1")
    assert list(summary["thresholds"].values()) == pytest.approx(tuned.tolist())
    # A thresholds.json without provenance (as cxr_tf 0.2.0 wrote) is exported, and said.
    assert summary["thresholds_summary"].startswith("14 tuned (f1 on validation) by an older "
                                                    "cxr_tf that did not record")
    assert (summary["calibration"], summary["ood"]) == ("none", "none")
    card = json.loads((export_dir / "assets" / "model_card.json").read_text())
    assert summary["model_card"] == str(export_dir / "assets" / "model_card.json")
    assert card["model_parameters"]["out_of_distribution"]["method"] == "none"


def test_the_metadata_reaches_tf_serving_rest_through_describe(exported, loaded):
    # TF Serving's REST API refuses a signature without inputs, so `describe` takes a dummy
    # scalar. Columnar request {"inputs": {...}} -> reply {"outputs": {name: value}}.
    body = json.loads(json.dumps({"signature_name": "describe", "inputs": {"request": 0}}))
    signature = loaded.signatures[body["signature_name"]]
    assert list(signature.structured_input_signature[1]) == ["request"]
    out = signature(request=tf.constant(body["inputs"]["request"], tf.int32))
    reply = json.loads(json.dumps({"outputs": {
        name: (value.numpy().decode() if value.dtype == tf.string and value.shape == () else
               [v.decode() for v in value.numpy()] if value.dtype == tf.string else
               value.numpy().tolist())
        for name, value in out.items()}}))["outputs"]
    metadata = loaded.signatures["metadata"]()
    assert sorted(reply) == sorted(metadata)
    card = json.loads(reply["model_card"])
    assert card["model_parameters"]["label_names"] == list(labels.LABELS)
    assert reply["label_names"] == list(labels.LABELS)
    assert reply["threshold_methods"] == ["f1"] * 14 and reply["threshold_positives"] == [-1] * 14


@pytest.mark.slow
def test_export_app(trained_run, tmp_path):
    export_dir = tmp_path / "cxr" / "1"
    proc = subprocess.run(
        [sys.executable, "-m", "cxr_tf.export", f"--model_dir={trained_run[0]}",
         f"--export_dir={export_dir}", "--threshold=0.3", "--json"], capture_output=True,
        text=True, env=ENV, timeout=900)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["export_dir"] == str(export_dir) and (export_dir / "saved_model.pb").is_file()
    assert summary["thresholds_from"] == "--threshold=0.3"
    assert set(summary["thresholds"].values()) == {0.3}
    loaded = tf.saved_model.load(str(export_dir))
    assert loaded.signatures["metadata"]()["thresholds"].numpy().tolist() == \
        pytest.approx([0.3] * 14)


_NO_CXR_TF = processes.BLOCK_CXR_TF + r"""
try:
    import cxr_tf
    blocked = False
except ImportError:
    blocked = True
import tensorflow as tf

model = tf.saved_model.load(sys.argv[1])
data = [open(path, "rb").read() for path in sys.argv[2:]]
out = model.signatures["serving_default"](image_bytes=tf.constant(data))
meta = model.signatures["metadata"]()
print(json.dumps({
    "blocked": blocked,
    "cxr_tf_modules": sorted(m for m in sys.modules if m.split(".")[0] == "cxr_tf"),
    "probabilities": out["probabilities"].numpy().tolist(),
    "positive": out["positive"].numpy().tolist(),
    "label_names": [n.decode() for n in meta["label_names"].numpy()],
    "thresholds": meta["thresholds"].numpy().tolist(),
    "image_size": int(meta["image_size"]),
    "version": meta["version"].numpy().decode(),
}))
"""


@pytest.mark.slow
def test_serves_png_bytes_without_cxr_tf_and_matches_keras(exported, tmp_path):
    net, tuned, export_dir, _ = exported
    samples = sample_images()
    paths = []
    for name, data in samples.items():
        (tmp_path / name).write_bytes(data)
        paths.append(str(tmp_path / name))
    env = {k: v for k, v in ENV.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", _NO_CXR_TF, str(export_dir), *paths],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["blocked"] and out["cxr_tf_modules"] == []
    assert out["label_names"] == list(labels.LABELS)
    assert out["thresholds"] == pytest.approx(tuned.tolist())
    assert out["image_size"] == SIZE and out["version"] == "0.2.0"
    # The same images decoded by the same graph ops here, then the Keras model.
    pixels = graph.preprocess_bytes(list(samples.values()), SIZE).numpy()
    expected = tf.sigmoid(net.predict(pixels, verbose=0)).numpy()
    probs = np.array(out["probabilities"])
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    assert out["positive"] == (probs >= np.float32(tuned)).tolist()


def test_tf_serving_rest_json_round_trip(exported, loaded):
    net, _, _, _ = exported
    samples = list(sample_images().values())[:3]
    request = json.dumps({"signature_name": "serving_default",
                          "instances": [{"b64": base64.b64encode(d).decode()} for d in samples]})
    # What TF Serving's REST handler does with it: look up the signature; a signature with one
    # input takes each instance as that input's value; {"b64": ...} is base64 for DT_STRING;
    # instances are stacked on axis 0. The reply is {"predictions": [one dict per instance]}.
    body = json.loads(request)
    signature = loaded.signatures[body["signature_name"]]
    inputs = signature.structured_input_signature[1]
    assert list(inputs) == ["image_bytes"]
    assert inputs["image_bytes"].dtype == tf.string
    assert inputs["image_bytes"].shape.as_list() == [None]
    batch = tf.constant([base64.b64decode(inst["b64"]) for inst in body["instances"]])
    out = signature(image_bytes=batch)
    reply = json.loads(json.dumps({"predictions": [
        {name: value[i].numpy().tolist() for name, value in out.items()}
        for i in range(len(samples))]}))
    assert [sorted(p) for p in reply["predictions"]] == [
        ["in_distribution", "ood_score", "positive", "probabilities"]] * 3
    # Exported without an out-of-distribution detector: no score, nothing flagged.
    assert all(np.isnan(p["ood_score"]) and p["in_distribution"] for p in reply["predictions"])
    probs = np.array([p["probabilities"] for p in reply["predictions"]])
    expected = tf.sigmoid(net(graph.preprocess_bytes(samples, SIZE), training=False)).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-5)


@pytest.mark.parametrize("name,data,message", [
    ("text", b"hello, not an image", r"image 1: not a PNG or JPEG image \(19 bytes, starting "
     r"with 68 65 6c 6c 6f 2c 20 6e\)"),
    ("empty", b"", r"image 1: not a PNG or JPEG image \(0 bytes, starting with \)"),
    # Issue 10: these raised a Python UnicodeDecodeError (raw bytes went into the message).
    ("GIF", b"GIF89a\x01\x00\x01\x00\x80\xff", r"image 1: not a PNG or JPEG image \(12 bytes, "
     r"starting with 47 49 46 38 39 61 01 00\)"),
    ("random", bytes(range(255, 0, -1)), r"image 1: not a PNG or JPEG image \(255 bytes, "
     r"starting with ff fe fd fc fb fa f9 f8\)"),
    ("cut PNG", "cut_png", r"image 1: PNG truncated \(read \d+ of at least \d+ bytes\)"),
    ("no IEND", "no_iend", r"image 1: PNG truncated \(read \d+ bytes, no IEND chunk\)"),
    ("PNG header", "png_head", r"image 1: PNG header truncated \(20 bytes, fewer than 33\)"),
    ("cut JPEG", "cut_jpeg", r"image 1: JPEG pixel data undecodable"),
])
def test_bad_bytes_are_a_clear_error_and_serving_goes_on(loaded, name, data, message):
    good = sample_images()["gray8.png"]
    jpeg = sample_images()["gray.jpg"]
    data = {"cut_png": good[:len(good) // 2], "png_head": good[:20], "no_iend": good[:-12],
            "cut_jpeg": jpeg[:len(jpeg) // 2]}.get(data, data)
    serve = loaded.signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        serve(image_bytes=tf.constant([good, data]))
    again = serve(image_bytes=tf.constant([good]))["probabilities"].numpy()
    assert again.shape == (1, 14) and np.isfinite(again).all()


def test_the_first_bad_image_is_named_and_pixel_errors_name_theirs(loaded):
    good = sample_images()["gray8.png"]
    jpeg = sample_images()["gray.jpg"]
    serve = loaded.signatures["serving_default"]
    # Two bad images: the header checks run first, in order, so image 2's is reported.
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"image 2: not a PNG or JPEG"):
        serve(image_bytes=tf.constant([good, jpeg[:len(jpeg) // 2], b"GIF89a", good]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"image 3: JPEG pixel data"):
        serve(image_bytes=tf.constant([good, good, jpeg, jpeg[:len(jpeg) // 2]]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"image 0: JPEG pixel data"):
        serve(image_bytes=tf.constant([jpeg[:len(jpeg) // 2]]))


def test_metadata_reports_max_pixels_and_serving_applies_it(exported, loaded, tmp_path):
    assert int(loaded.signatures["metadata"]()["max_pixels"]) == image_header.MAX_PIXELS
    assert exported[3]["max_pixels"] == image_header.MAX_PIXELS
    net = exported[0]
    archive_dir = tmp_path / "small"
    graph.export(net, archive_dir, [0.5] * 14, max_pixels=3599)  # a 60x60 square is 3,600
    small = tf.saved_model.load(str(archive_dir))
    assert int(small.signatures["metadata"]()["max_pixels"]) == 3599
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"image 0: PNG declares 60x45, "
                       r"padded to 60x60 pixels, over the 3,599 limit"):
        small.signatures["serving_default"](image_bytes=tf.constant([sample_images()["gray8.png"]]))
    with pytest.raises(ValueError, match=r"max_pixels must be in 1..2\*\*40; received 0"):
        graph.build_archive(net, [0.5] * 14, max_pixels=0)


def test_a_keras_file_with_a_lambda_layer_is_refused(tmp_path):
    """A .keras file can carry Python code in a Lambda layer; run dirs are loaded with Keras's
    safe_mode, which refuses to deserialise it (README, Security)."""
    import keras

    inputs = keras.Input((SIZE, SIZE, 1))
    outputs = keras.layers.Lambda(lambda x: x * 2)(inputs)
    (tmp_path / "checkpoints").mkdir()
    keras.Model(inputs, outputs).save(tmp_path / "checkpoints" / "best.keras")
    (tmp_path / "config.json").write_text(json.dumps({"arch": "resnet18", "image_size": SIZE}))
    with pytest.raises(ValueError, match=r"Requested the deserialization of a `Lambda` layer"):
        checkpoints.load_model(str(tmp_path))


def test_predict_images_signature_equals_keras(exported, loaded):
    net, _, _, _ = exported
    pixels = np.random.default_rng(1).integers(0, 256, (3, SIZE, SIZE, 1), dtype=np.uint8)
    out = loaded.signatures["predict_images"](images=tf.constant(pixels))["probabilities"]
    np.testing.assert_allclose(out.numpy(), tf.sigmoid(net(pixels, training=False)).numpy(),
                               atol=1e-5)


def test_graph_decoding_is_bit_exact_with_pil_and_resize_within_one_level():
    """The in-graph preprocessing against cxr_tf.data.images (PIL): the measured parity."""
    for name, data in sample_images().items():
        reference, _ = images.decode_any(data, name)
        decoded = graph.decode_gray(tf.constant(data)).numpy()
        np.testing.assert_array_equal(decoded, reference, err_msg=name)
        expected, _ = images.preprocess(data, name, SIZE)
        got = graph.preprocess_bytes([data], SIZE).numpy()[0]
        diff = np.abs(got.astype(int) - expected.astype(int))
        assert diff.max() <= 1 and diff.mean() < 0.15, (name, diff.max(), diff.mean())


def test_preprocessing_is_the_same_inside_tf_data():
    samples = list(sample_images().values())
    eager = graph.preprocess_bytes(samples, SIZE).numpy()
    ds = tf.data.Dataset.from_tensor_slices(samples).map(
        lambda b: graph.preprocess_bytes(b[None], SIZE)[0])
    np.testing.assert_array_equal(np.stack(list(ds.as_numpy_iterator())), eager)


def test_sbit_and_16_bit_scaling_match_pil():
    values = np.array([[0, 500, 1000, 4095]], np.uint16)
    # No sBIT: the smallest of 8/10/12/14/16 bits holding 4095 is 12 -> 4095 maps to 255.
    assert graph.decode_gray(encode(values)).numpy().tolist() == [[0, 31, 62, 255]]
    # sBIT 14 says the data use 14 bits: 4095 is only a quarter of the range.
    assert graph.decode_gray(with_sbit(encode(values), 14)).numpy().tolist() == [[0, 8, 16, 64]]
    assert images.decode_any(with_sbit(encode(values), 14), "x")[0].tolist() == [[0, 8, 16, 64]]


def test_no_finding_constraint_in_the_decision():
    probs = tf.constant([[0.9, 0.6], [0.7, 0.2]])
    no_finding = tf.constant([0.95, 0.5])  # beats every finding on the first image only
    positive = labels.decide(probs, [0.5, 0.5], no_finding, xp=tnp).numpy()
    assert positive.tolist() == [[False, False], [True, False]]
    # The same rule in numpy (predict, the report) gives the same decisions.
    assert labels.decide(probs.numpy(), [0.5, 0.5], no_finding.numpy()).tolist() == \
        positive.tolist()


def test_model_with_the_wrong_number_of_outputs_is_refused():
    from cxr_tf import model

    net = model.build_model("resnet18", SIZE, 13)
    with pytest.raises(ValueError, match="model has 13 outputs; expected 14 findings, or 15"):
        graph.build_archive(net, [0.5] * 14)


def test_mixed_precision_checkpoint_is_served_in_float32(tmp_path):
    import keras

    from cxr_tf import model

    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        keras.utils.set_random_seed(0)
        mixed = model.build_model("resnet50_v1", SIZE)
    finally:
        keras.config.set_dtype_policy("float32")
    (tmp_path / "checkpoints").mkdir()
    mixed.save(tmp_path / "checkpoints" / "best.keras")
    # A run from before v1.5 says "resnet50" for this same v1 network: the file decides.
    (tmp_path / "config.json").write_text(json.dumps({"arch": "resnet50", "image_size": SIZE}))
    assert mixed.get_layer("conv1_conv").compute_dtype == "bfloat16"
    loaded = checkpoints.load_model(str(tmp_path))
    assert {layer.compute_dtype for layer in loaded.layers} == {"float32"}
    for name in ("conv3_block1_1_conv", "conv3_block1_2_conv"):  # v1: the 1x1 strides
        assert loaded.get_layer(name).strides == mixed.get_layer(name).strides
    assert keras.config.dtype_policy().name == "float32"  # the global policy is left alone
    for a, b in zip(loaded.get_weights(), mixed.get_weights()):
        np.testing.assert_array_equal(a, b)
    pixels = np.random.default_rng(0).integers(0, 256, (2, SIZE, SIZE, 1), dtype=np.uint8)
    np.testing.assert_allclose(loaded(pixels), mixed(pixels), atol=0.1)  # bf16 vs f32 rounding


def test_empty_request_gives_an_empty_answer(loaded):
    out = loaded.signatures["serving_default"](image_bytes=tf.constant([], tf.string))
    assert out["probabilities"].shape == (0, 14) and out["positive"].shape == (0, 14)
    empty = tf.zeros((0, SIZE, SIZE, 1), tf.uint8)
    assert loaded.signatures["predict_images"](images=empty)["probabilities"].shape == (0, 14)


def test_served_decisions_with_a_no_finding_output_are_labels_decide(tmp_path):
    """Issue 23: a SavedModel calling `decide` without the No Finding rule passed every test.

    A 15-output model whose logits follow the image's mean brightness m (0..1): Atelectasis
    logit 1 (probability 0.731) on every image, the other findings -3 (0.047), No Finding
    6 m - 2. At m = 0 No Finding is 0.119: Atelectasis is positive. At m = 0.4 No Finding is
    0.599, above the threshold too, but below Atelectasis: Atelectasis is still positive. At
    m = 1 No Finding is 0.982 and beats every finding: nothing is positive, though Atelectasis
    is above its threshold."""
    import keras

    pixels = keras.Input((SIZE, SIZE, 1))
    mean = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(pixels))
    dense = keras.layers.Dense(15, name="logits")
    net = keras.Model(pixels, dense(mean))
    weights = np.zeros((1, 15), np.float32)
    weights[0, 14] = 6.0
    bias = np.full(15, -3.0, np.float32)
    bias[0], bias[14] = 1.0, -2.0
    dense.set_weights([weights, bias])
    thresholds_used = np.full(14, 0.5)
    thresholds_used[1] = 0.04  # Cardiomegaly (0.047) too is above its own threshold
    served = tf.saved_model.load(graph.export(net, tmp_path / "1", thresholds_used))
    assert bool(served.signatures["metadata"]()["no_finding_output"].numpy())
    films = [encode(np.full((48, 48), value, np.uint8)) for value in (0, 102, 255)]  # square
    out = served.signatures["serving_default"](image_bytes=tf.constant(films))
    probs, no_finding = out["probabilities"].numpy(), out["no_finding"].numpy()
    np.testing.assert_allclose(no_finding, 1 / (1 + np.exp(-(6 * np.array([0, 0.4, 1]) - 2))),
                               atol=1e-5)
    assert (probs[:, [0, 1]] >= thresholds_used[[0, 1]]).all()  # above threshold in every row
    assert no_finding[1] > 0.5 and no_finding[2] > probs[2].max() > no_finding[1]
    expected = labels.decide(probs, thresholds_used, no_finding)
    np.testing.assert_array_equal(out["positive"].numpy(), expected)
    assert expected.tolist() == [[i in (0, 1) for i in range(14)]] * 2 + [[False] * 14]
