"""Grad-CAM: the map on a model whose answer is known, and the NIH bounding-box hit rate tool
(a thin wrapper over cxr_tf.evaluation.runner.pointing_game; the box list reader is tested in
test_localization)."""

import json

import keras
import numpy as np
import pytest
from PIL import Image

from cxr_tf import labels, model
from cxr_tf.data import images
from cxr_tf.evaluation import gradcam

from tools import gradcam_bbox


def linear_model():
    """8×8 image -> feature map = the image (1×1 conv, weight 1) -> mean -> logits (+1, -1).

    d logit_0 / d feature = +1/64 everywhere, so Grad-CAM for class 0 is relu(image): the image
    itself. For class 1 the weights are negative and the map is relu(-image) = 0.
    """
    image = keras.Input((8, 8, 1), name="image")
    features = keras.layers.Conv2D(1, 1, use_bias=False, kernel_initializer="ones",
                                   name="features")(image)
    pooled = keras.layers.GlobalAveragePooling2D(name="avg_pool")(features)
    logits = keras.layers.Dense(2, kernel_initializer=keras.initializers.Constant([[1.0, -1.0]]),
                                name="logits")(pooled)
    return keras.Model(image, logits)


def test_gradcam_of_a_linear_model_is_the_image():
    net = linear_model()
    assert gradcam.feature_layer_name(net) == "features"
    image = np.zeros((1, 8, 8, 1), np.uint8)
    image[0, 2, 5, 0], image[0, 6, 1, 0] = 200, 50
    cam = gradcam.GradCam(net)
    heat = cam(image, 0)[0]
    np.testing.assert_allclose(heat, image[0, :, :, 0] / 200.0, atol=1e-6)
    assert gradcam.peak(heat) == (2, 5)  # a unique maximum is itself
    assert not cam(image, 1).any()  # negative evidence only: an empty map, not NaN


def test_feature_layer_is_the_last_conv_stage():
    assert gradcam.feature_layer_name(model.build_model("resnet50", 32)) == "conv5_block3_out"
    net = model.build_model("resnet18", 64)
    assert gradcam.feature_layer_name(net) == "conv5_block2_out"
    pixels = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 1), dtype=np.uint8)
    heat = gradcam.GradCam(net)(pixels, [0, 5, 13])
    assert heat.shape == (3, 64, 64) and heat.dtype == np.float32
    assert heat.min() >= 0 and all(h.max() in (0.0, pytest.approx(1.0)) for h in heat)


def test_model_input_pixel_back_to_the_original_image():
    # A 100 (high) × 50 (wide) film is padded 25 px left and right to 100², resized to 10².
    assert gradcam.to_original(0, 5, 10, (100, 50)) == (30.0, 5.0)
    assert gradcam.to_original(9, 0, 10, (100, 50)) == (-20.0, 95.0)  # in the padding
    assert gradcam.to_original(3, 3, 32, (64, 64)) == (7.0, 7.0)


def test_overlay_png(tmp_path):
    gray = np.full((32, 32), 100, np.uint8)
    heat = np.zeros((32, 32), np.float32)
    heat[4, 4] = 1.0
    rgb = gradcam.overlay(gray, heat)
    assert rgb.shape == (32, 32, 3)
    assert rgb[4, 4].tolist() != rgb[20, 20].tolist()  # the hot spot shows
    path = gradcam.save_overlay(str(tmp_path / "o.png"), gray, heat, "Effusion 0.91")
    with Image.open(path) as img:
        assert img.size == (256, 256)
        caption = np.asarray(img.crop((0, 0, 90, 20)).convert("L"))
        assert caption.min() == 0 and caption.max() > 200  # light text on a black box


def test_bbox_hit_rate_tool(kaggle_dir, tmp_path, capsys, make_run_dir):
    from cxr_tf.runs import checkpoints

    run = tmp_path / "run"
    make_run_dir(run, image_size=64)  # conv5 is 2×2 at 64 px: a map with a peak
    files = sorted(kaggle_dir.glob("images_*/images/*.png"))[:2]
    first = files[0].name
    with open(files[0], "rb") as f:
        gray, _ = images.decode_any(f.read(), first)
    pixels = images.resize(images.pad_to_square(gray)[0], 64)[None, :, :, None]
    loaded = checkpoints.load_model(str(run))
    effusion = gradcam.GradCam(loaded)(pixels, labels.LABELS.index("Effusion"))[0]
    x, y = gradcam.to_original(*gradcam.peak(effusion), 64, gray.shape)
    far_x, far_y = (50 if x < 32 else 2), (50 if y < 32 else 2)
    (tmp_path / "BBox_List_2017.csv").write_text(
        "Image Index,Finding Label,Bbox [x,y,w,h],,,,,\n"
        f"{first},Effusion,{x - 2},{y - 2},4,4,,,\n"  # a tight box around the maximum: hit
        f"{first},Effusion,{far_x},{far_y},10,10,,,\n"  # elsewhere: miss
        f"{files[1].name},Infiltrate,0,0,{gray.shape[1]},{gray.shape[0]},,,\n"  # whole film
        "99999999_000.png,Mass,0,0,10,10,,,\n")  # not in data_dir
    assert gradcam_bbox.main([f"--model_dir={run}", f"--bbox_csv={tmp_path / 'BBox_List_2017.csv'}",
                              f"--data_dir={kaggle_dir}", f"--overlay_dir={tmp_path / 'ov'}"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # The untrained model has no positive evidence for Infiltration on the second film: its
    # map is all zero and points nowhere, so the whole-film box is not scored (it used to be
    # a hit at pixel (0, 0)).
    assert not gradcam.GradCam(loaded)(
        images.resize(images.pad_to_square(images.decode_any(
            files[1].read_bytes(), files[1].name)[0])[0], 64)[None, :, :, None],
        labels.LABELS.index("Infiltration")).any()
    assert (result["boxes"], result["hits"]) == (2, 1)
    assert result["per_label"] == {
        "Effusion": {"boxes": 2, "hits": 1, "hit_rate": 0.5, "flat_maps": 0},
        "Infiltration": {"boxes": 0, "hits": 0, "hit_rate": None, "flat_maps": 1},
    }
    assert result["missing"] == ["99999999_000.png"]
    assert sorted(p.name for p in (tmp_path / "ov").glob("*.png")) == [
        f"{files[0].stem}_Effusion_hit.png", f"{files[0].stem}_Effusion_miss.png",
        f"{files[1].stem}_Infiltration_flat.png"]
