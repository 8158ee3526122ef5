"""Start-up of a training run: the wall and CPU time of its first `fit` step.

    python tools/bench_first_step.py [--arch=resnet50] [--image_size=224] [--batch_size=2] [--repeats=3]

Times, each in a fresh process as a user's run starts, one `fit` step of the model
`cxr_tf.training.runner.build_compiled_model` compiles (Adam, BCE, the progress-bar AUC) on one
device, two ways:
- cxr_tf: as the runner leaves it, with the optimizer's slots built before fit;
- keras_default: the same model recompiled with a fresh, unbuilt optimizer, so that Keras
  creates the slots while tracing the first step, and TensorFlow traces that step again.
The first step is almost all tracing and graph optimisation; `traces` counts the calls of
`train_step` (tracing runs it in Python; executing the graph does not). The variants alternate
between repeats. Reported: the median of each and the ratio cxr_tf / keras_default.

The last line printed is one JSON object; the lines before it are a human table.
"""

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
VARIANTS = ("cxr_tf", "keras_default")


def parse_args(argv):
    from cxr_tf.archs import ARCHS

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="resnet50", choices=ARCHS)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("image_size", "batch_size", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1; received {getattr(args, name)}")
    return args


def first_step(variant, arch, image_size, batch_size):
    """One variant's first fit step in this process: {first_fit_s, cpu_s, traces}."""
    import time

    import keras
    import numpy as np
    import tensorflow as tf

    from cxr_tf.runs.config import RunConfig
    from cxr_tf.training import runner

    config = RunConfig(data_dir="unused", model_dir="unused", arch=arch, image_size=image_size,
                       batch_size=batch_size)
    net, _ = runner.build_compiled_model(config, None, tf.distribute.get_strategy(), 1)
    if variant == "keras_default":
        net.compile(optimizer=runner.optimizer_for(config, 1), loss=net.loss, metrics=[
            keras.metrics.AUC(multi_label=True, from_logits=True, name="auc",
                              num_labels=config.num_outputs)])
    traced = []
    step = net.train_step
    net.train_step = lambda data: traced.append(1) or step(data)
    images = np.zeros((batch_size, image_size, image_size, 1), np.uint8)
    labels = np.zeros((batch_size, config.num_outputs), np.float32)
    wall, cpu = time.perf_counter(), time.process_time()
    net.fit(images, labels, batch_size=batch_size, epochs=1, verbose=0)
    return {"first_fit_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
            "traces": len(traced)}


def run_child(variant, args):
    cmd = [sys.executable, __file__, f"--child={variant}", f"--arch={args.arch}",
           f"--image_size={args.image_size}", f"--batch_size={args.batch_size}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"bench_first_step: the {variant} run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarize(runs, args):
    """The result dict from {variant: [child results]}."""
    result = {"arch": args.arch, "image_size": args.image_size, "batch_size": args.batch_size,
              "repeats": args.repeats}
    for variant, results in runs.items():
        result[variant] = {
            "first_fit_s": statistics.median(r["first_fit_s"] for r in results),
            "cpu_s": statistics.median(r["cpu_s"] for r in results),
            "traces": sorted({r["traces"] for r in results}),
            "first_fit_s_all": [r["first_fit_s"] for r in results]}
    result["ratio_first_fit"] = (result["cxr_tf"]["first_fit_s"]
                                 / result["keras_default"]["first_fit_s"])
    result["ratio_cpu"] = result["cxr_tf"]["cpu_s"] / result["keras_default"]["cpu_s"]
    return result


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.child:
        print(json.dumps(first_step(args.child, args.arch, args.image_size, args.batch_size)))
        return
    runs = {variant: [] for variant in VARIANTS}
    for repeat in range(args.repeats):
        order = VARIANTS if repeat % 2 == 0 else VARIANTS[::-1]
        for variant in order:
            runs[variant].append(run_child(variant, args))
    result = summarize(runs, args)
    print(f"{'variant':<14} {'first fit s':>11} {'CPU s':>7} traces")
    for variant in VARIANTS:
        r = result[variant]
        print(f"{variant:<14} {r['first_fit_s']:>11.2f} {r['cpu_s']:>7.2f} {r['traces']}")
    print(f"ratio cxr_tf/keras_default: first fit {result['ratio_first_fit']:.3f}, "
          f"CPU {result['ratio_cpu']:.3f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
