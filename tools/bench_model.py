"""Train-step and inference throughput of a cxr_tf arch against the same keras.applications
network, and XLA FLOP counts per image.

    KERAS_BACKEND=jax python tools/bench_model.py --image_size=224 --batch_size=256 \
        --precision=bfloat16
    KERAS_BACKEND=jax python tools/bench_model.py --arch=densenet121 --image_size=224

Runs under whatever KERAS_BACKEND says (jax, tensorflow, torch) and imports only Keras and
`cxr_tf.model`, never TensorFlow unless it is the backend, so it runs on the JAX-only GPU
machine (`tools/gpu_check.sh`). The figure to watch is the ratio ours / reference, measured in
the same process on the same data. The reference (`REFERENCES`), built with `weights=None,
classes=14, classifier_activation=None` so both train on the same loss:
- for the ResNets, `keras.applications.ResNet50` with a one-channel stem
  (`input_shape=(S, S, 1)`), as this benchmark has always compared; our `resnet50_v1` has
  its geometry (stride on the first 1×1), so the default run compares like with like;
- for densenet121/169, efficientnetv2_s and convnext_tiny, the same keras.applications
  network as a user would run it on a gray image replicated to RGB: three channels, its own
  stem and its own in-model preprocessing (EfficientNetV2, ConvNeXt). It is fed the same
  images repeated to three channels, on the device.

Flags:
    --arch            cxr_tf architecture to time (default resnet50_v1). Every ResNet is
                      compared with keras.applications' ResNet-50 v1, so the ratio only
                      compares like with like for resnet50_v1 (resnet50, v1.5, does ~7 %
                      more work); the other archs with their own application.
    --image_size      side S of the S×S×1 images (default 224).
    --batch_size      images per step (default 256).
    --precision       bfloat16 | float16 | float32: the global Keras dtype policy
                      (mixed_bfloat16, mixed_float16 with loss scaling, or float32).
    --steps           steps per timed repeat (default 20).
    --warmup          untimed steps run first, compilation included (default 5; at least
                      one always runs, so compilation is never timed).
    --repeats         timed repeats; the figures are their medians (default 5).
    --jit_compile / --no-jit_compile
                      force XLA on or off; left out, Keras decides ("auto": on under JAX, and
                      under TensorFlow when every layer supports it).
    --steps_per_execution
                      steps per compiled call, passed to `compile` (default 1).

What is timed:
- train: `model.fit(..., steps_per_epoch=steps, epochs=1)` with Adam and BCE from logits, the
  path the train app takes (forward, backward and optimizer update in one compiled step).
  Each repeat is one `fit` call, so its fixed cost (a few ms) is included.
- infer: `model.predict(..., steps=steps)`, the path the evaluate app takes.
- The batch is one random uint8 image tensor (what the input pipeline yields) and 0/1
  labels, made on the accelerator once and fed again every step, so no host-to-device copy
  is timed. (Under TensorFlow the batch comes from `tf.data.Dataset.from_tensors`; on a CPU
  host that copies nothing, and TensorFlow is not what runs on the GPU machine.)
- Each repeat ends by reading a weight back to the host, so asynchronous dispatch cannot hide
  unfinished work. The two models alternate within each repeat, so clock drift hits both.
- flops (JAX backend only, `null` with a note otherwise): XLA's `cost_analysis()["flops"]`
  of `jax.jit(model.stateless_call)` in inference mode on one image, for `ours` (--arch) and
  the reference (`keras_applications`), and for a ResNet arch also `resnet50` (v1.5) and
  `resnet50_v1`, under the same dtype policy; not timed.

The last line printed is one JSON object; the lines before it are a human table.
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

# Benchmark the checkout this file sits in, also when cxr_tf is not installed (GPU machine).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxr_tf.archs import ARCHS  # noqa: E402 (a list of names: imports nothing heavy)

NUM_CLASSES = 14
# arch -> (keras.applications function, input channels of the reference); see the docstring.
REFERENCES = {arch: ("ResNet50", 1) for arch in ARCHS if arch.startswith("resnet")}
REFERENCES.update({"densenet121": ("DenseNet121", 3), "densenet169": ("DenseNet169", 3),
                   "efficientnetv2_s": ("EfficientNetV2S", 3),
                   "convnext_tiny": ("ConvNeXtTiny", 3)})
_POLICIES = {"bfloat16": "mixed_bfloat16", "float16": "mixed_float16", "float32": "float32"}
_TRAIN_METHOD = "model.fit(steps_per_epoch=steps) on one on-device batch, Adam, BCE from logits"
_INFER_METHOD = "model.predict(steps=steps) on one on-device batch"
_FLOPS_METHOD = ("XLA cost_analysis()['flops'] of jax.jit(model.stateless_call), inference "
                 "mode, one image")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", choices=ARCHS, default="resnet50_v1")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--precision", choices=sorted(_POLICIES), default="bfloat16")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--jit_compile", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--steps_per_execution", type=int, default=1)
    args = parser.parse_args(argv)
    for name in ("image_size", "batch_size", "steps", "repeats", "steps_per_execution"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1; received {getattr(args, name)}")
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0; received {args.warmup}")
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    import keras

    from cxr_tf.model import build_model

    def ours():
        return build_model(args.arch, args.image_size, NUM_CLASSES)

    application, channels = REFERENCES[args.arch]

    def reference():
        return getattr(keras.applications, application)(
            weights=None,
            input_shape=(args.image_size, args.image_size, channels),
            classes=NUM_CLASSES,
            classifier_activation=None,
        )

    keras.mixed_precision.set_dtype_policy(_POLICIES[args.precision])
    images, labels = _device_batch(keras, args.batch_size, args.image_size)
    models = {
        "ours": _compiled(keras, ours, args),
        "keras_applications": _compiled(keras, reference, args),
    }
    # The reference's images: the same gray pixels, repeated to its channels on the device.
    inputs = {"ours": images, "keras_applications": keras.ops.repeat(images, channels, axis=-1)}
    train_data = {name: _repeating(keras, (x, labels)) for name, x in inputs.items()}
    infer_data = {name: _repeating(keras, (x,)) for name, x in inputs.items()}

    # Warm-up compiles both functions; it also runs BN updates and Adam steps, as training does.
    for name, model in models.items():
        warmup = max(args.warmup, 1)
        model.fit(train_data[name](), steps_per_epoch=warmup, epochs=1, verbose=0, shuffle=False)
        model.predict(infer_data[name](), steps=warmup, verbose=0)
        _sync(keras, model)
    times = {name: {"train": [], "infer": []} for name in models}
    for _ in range(args.repeats):
        for name, model in models.items():
            start = time.perf_counter()
            model.fit(train_data[name](), steps_per_epoch=args.steps, epochs=1, verbose=0,
                      shuffle=False)
            _sync(keras, model)
            times[name]["train"].append(time.perf_counter() - start)
        for name, model in models.items():
            start = time.perf_counter()
            model.predict(infer_data[name](), steps=args.steps, verbose=0)
            _sync(keras, model)
            times[name]["infer"].append(time.perf_counter() - start)

    images_per_repeat = args.steps * args.batch_size
    result = {
        "backend": keras.backend.backend(),
        "device": _device_name(keras),
        "keras": keras.__version__,
        "arch": args.arch,
        "reference": f"keras.applications.{application}",
        "reference_channels": channels,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "precision": args.precision,
        "jit_compile": models["ours"].jit_compile,
        "steps": args.steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "steps_per_execution": args.steps_per_execution,
        "train_method": _TRAIN_METHOD,
        "infer_method": _INFER_METHOD,
        # False under JAX is the promise that this runs on the GPU machine, which lacks TF.
        "tensorflow_imported": "tensorflow" in sys.modules,
    }
    for name, model in models.items():
        result[name] = {
            "params": model.count_params(),
            "train_img_s": images_per_repeat / statistics.median(times[name]["train"]),
            "infer_img_s": images_per_repeat / statistics.median(times[name]["infer"]),
            "train_img_s_all": [round(images_per_repeat / t, 1) for t in times[name]["train"]],
            "infer_img_s_all": [round(images_per_repeat / t, 1) for t in times[name]["infer"]],
        }
    for kind in ("train", "infer"):
        ours_rate = result["ours"][f"{kind}_img_s"]
        result[f"ratio_{kind}"] = ours_rate / result["keras_applications"][f"{kind}_img_s"]
    result.update(_flops(keras, args, build_model, models, channels))
    _print_table(result)
    print(json.dumps(result), flush=True)
    return result


def _compiled(keras, builder, args):
    model = builder()
    model.compile(
        # compile wraps Adam in a LossScaleOptimizer under mixed_float16.
        optimizer=keras.optimizers.Adam(1e-4),
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
        jit_compile="auto" if args.jit_compile is None else args.jit_compile,
        steps_per_execution=args.steps_per_execution,
    )
    return model


def _flops(keras, args, build_model, models, channels):
    """XLA's FLOP count per image of ours, the reference and, for a ResNet arch, our v1.5 and
    v1 ResNet-50s (JAX only)."""
    if keras.backend.backend() != "jax":
        return {"flops": None, "flops_method": "XLA FLOP counts need KERAS_BACKEND=jax: "
                                               f"not counted under {keras.backend.backend()}"}
    import jax

    size = args.image_size
    counted = [("ours", models["ours"], 1), ("keras_applications", models["keras_applications"],
                                             channels)]
    if args.arch.startswith("resnet"):
        counted += [(name, build_model(name, size, NUM_CLASSES), 1)
                    for name in ("resnet50", "resnet50_v1")]
    flops = {}
    for name, model, model_channels in counted:
        def forward(trainable, non_trainable, images, model=model):
            return model.stateless_call(trainable, non_trainable, images, training=False)[0]

        image = jax.ShapeDtypeStruct((1, size, size, model_channels), "float32")
        trainable = [v.value for v in model.trainable_variables]
        non_trainable = [v.value for v in model.non_trainable_variables]
        cost = jax.jit(forward).lower(trainable, non_trainable, image).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost  # older JAX: a list of one dict
        flops[name] = cost["flops"]
    result = {"flops": flops, "flops_method": _FLOPS_METHOD,
              "flops_ratio_ours_reference": flops["ours"] / flops["keras_applications"]}
    if "resnet50" in flops:
        result["flops_ratio_v1_5_v1"] = flops["resnet50"] / flops["resnet50_v1"]
    return result


def _device_batch(keras, batch_size, image_size):
    """One random uint8 image batch and 0/1 labels, created on the default device."""
    images = keras.ops.cast(
        keras.random.randint((batch_size, image_size, image_size, 1), 0, 256, seed=0), "uint8"
    )
    labels = keras.random.uniform((batch_size, NUM_CLASSES), seed=1) < 0.1
    labels = keras.ops.cast(labels, "float32")
    return images, labels


def _repeating(keras, batch):
    """A zero-argument callable giving a fresh endless source of `batch` for fit/predict."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf  # only under the TensorFlow backend

        return lambda: tf.data.Dataset.from_tensors(batch).repeat()

    def generator():
        while True:
            yield batch

    return generator


def _sync(keras, model):
    """Blocks until every queued step is done by reading the last-updated weight."""
    keras.ops.convert_to_numpy(model.weights[-1].value)


def _device_name(keras):
    backend = keras.backend.backend()
    try:
        if backend == "jax":
            import jax

            device = jax.devices()[0]
            if device.platform != "cpu":
                return f"{device.platform}: {device.device_kind}"
        if backend == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            if gpus:
                details = tf.config.experimental.get_device_details(gpus[0])
                return "gpu: " + details.get("device_name", "?")
        if backend == "torch":
            import torch

            if torch.cuda.is_available():
                return "gpu: " + torch.cuda.get_device_name(0)
    except Exception as error:  # the device name is a label; never fail the benchmark on it
        return f"unknown ({error})"
    return f"cpu: {len(os.sched_getaffinity(0))} cores"


def _print_table(result):
    print(
        f"{result['backend']} on {result['device']}: {result['arch']} vs "
        f"{result['reference']} ({result['reference_channels']}-channel), "
        f"{result['image_size']} px, batch {result['batch_size']}, "
        f"{result['precision']}, jit_compile={result['jit_compile']}, "
        f"median of {result['repeats']} x {result['steps']} steps"
    )
    flops = result["flops"]
    if flops and "resnet50" in flops:
        print(f"XLA GFLOP per image (inference): resnet50 (v1.5) {flops['resnet50'] / 1e9:.3f}, "
              f"resnet50_v1 {flops['resnet50_v1'] / 1e9:.3f} (ratio "
              f"{result['flops_ratio_v1_5_v1']:.3f}), keras.applications "
              f"{flops['keras_applications'] / 1e9:.3f}")
    elif flops:
        print(f"XLA GFLOP per image (inference): {result['arch']} {flops['ours'] / 1e9:.3f}, "
              f"keras.applications {flops['keras_applications'] / 1e9:.3f} (ratio "
              f"{result['flops_ratio_ours_reference']:.3f})")
    else:
        print(result["flops_method"])
    print(f"{'':22}{'train img/s':>14}{'infer img/s':>14}")
    for name in ("ours", "keras_applications"):
        train, infer = result[name]["train_img_s"], result[name]["infer_img_s"]
        print(f"{name:22}{train:>14,.1f}{infer:>14,.1f}")
    ratio_train, ratio_infer = result["ratio_train"], result["ratio_infer"]
    print(f"{'ratio ours/reference':22}{ratio_train:>14.3f}{ratio_infer:>14.3f}")


if __name__ == "__main__":
    main()
