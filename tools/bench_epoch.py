"""Share of a training epoch spent waiting for input, and the cost of per-epoch evaluation
and of the epoch-end save.

    python tools/bench_epoch.py [--arch=resnet18] [--image_size=64] [--num_images=1200]
        [--batch_size=32] [--repeats=3] [--work_dir=DIR] [--save_only]

On the synthetic set prepared at --image_size, with a small model on this CPU:
- epoch_s: median time of one training epoch fed by the real pipeline (read, decode, augment);
- compute_s: the same steps fed from batches already in memory (no input work at all);
- input_wait_share = (epoch_s - compute_s) / epoch_s: the time the step waited for data.
  Target < 5 %.
- eval_share: the EpochMetrics callback (predict the validation split once, in batches of
  2x --batch_size as the train app does, then exact AUC, F1, precision, recall at 3
  thresholds) relative to epoch_s. The validation split is ~10 % of train_val, as in real
  runs. Target < 5 %.
- save_s: the epoch-end save as a run does it (AtomicCheckpoint: last.keras without optimizer
  state, best.keras linked to it, every epoch counted as a new best; EpochBackup: the full
  training state with Adam's slots) into --work_dir, and save_mb, the bytes it writes;
  save_share = save_s / epoch_s. --save_only times only the save (e.g. --arch=resnet50
  --image_size=224, the paper's model, whose epoch this CPU cannot time usefully).
The last line printed is one JSON object.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--num_images", type=int, default=1200)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work_dir", default=os.path.join(tempfile.gettempdir(), "cxr_tf_bench"))
    parser.add_argument("--save_only", action="store_true",
                        help="Time only the epoch-end save (no dataset is made).")
    args = parser.parse_args(argv)
    if args.save_only:
        result = {"benchmark": "epoch_save", "arch": args.arch, "image_size": args.image_size,
                  **_save_time(args.arch, args.image_size, args.repeats, args.work_dir)}
        print(json.dumps(result), flush=True)
        return result

    import keras
    import numpy as np
    import tensorflow as tf

    from cxr_tf import labels, losses, model
    from cxr_tf.data import input_pipeline, source
    from cxr_tf.synthetic.dataset import synthetic_data_dir
    from cxr_tf.training import epoch_metrics, runner

    data = source.open_source(
        synthetic_data_dir(args.image_size, args.num_images, cache_dir=args.work_dir),
        image_size=args.image_size)
    n = data.split_sizes["train"]
    steps = n // args.batch_size
    net = model.build_model(args.arch, args.image_size, labels.NUM_CLASSES)
    net.compile(keras.optimizers.Adam(1e-3), losses.make_loss(None))
    stream = input_pipeline.make_for_train(
        data, batch_size=args.batch_size, epochs=args.repeats + 2, steps_per_epoch=steps,
        options=input_pipeline.TrainOptions(augment=input_pipeline.augment))
    in_memory = tf.data.Dataset.from_tensor_slices(
        tuple(np.stack(t) for t in zip(*[(x.numpy(), y.numpy()) for x, y in stream.take(steps)]))
    ).repeat()
    y_val = data.labels("validation")
    val = input_pipeline.make_for_eval(data, "validation",
                                       batch_size=runner.EVAL_BATCH_FACTOR * args.batch_size)
    metrics_cb = epoch_metrics.EpochMetrics(val, y_val, [0.4, 0.5, 0.6], labels.LABELS)
    metrics_cb.set_model(net)

    # Each fit runs repeats + 1 epochs; the first (compilation, pipeline start-up) is dropped.
    epoch = _epoch_times(net, stream, steps, args.repeats + 1)[1:]
    compute = _epoch_times(net, in_memory, steps, args.repeats + 1)[1:]
    evaluation = []
    for _ in range(args.repeats + 1):
        start = time.perf_counter()
        metrics_cb.on_epoch_end(0, {})
        evaluation.append(time.perf_counter() - start)
    evaluation = evaluation[1:]
    epoch_s, compute_s, eval_s = (statistics.median(v) for v in (epoch, compute, evaluation))
    save = _save_time(args.arch, args.image_size, args.repeats, args.work_dir, net=net)
    result = {
        "benchmark": "epoch", "arch": args.arch, "image_size": args.image_size,
        "batch_size": args.batch_size, "train_images": n, "validation_images": len(y_val),
        "cores": len(os.sched_getaffinity(0)), "epoch_s": round(epoch_s, 3),
        "compute_s": round(compute_s, 3), "eval_s": round(eval_s, 3),
        "input_wait_share": round(max(epoch_s - compute_s, 0.0) / epoch_s, 4),
        "eval_share": round(eval_s / epoch_s, 4), "target_share": 0.05,
        **save, "save_share": round(save["save_s"] / epoch_s, 4),
    }
    print(json.dumps(result), flush=True)
    return result


def _save_time(arch, image_size, repeats, work_dir, net=None):
    """{"save_s": median seconds of the epoch-end save, "save_mb": MB it writes} for a
    compiled model (`net`, or `arch` built here) whose optimizer holds its slots."""
    import shutil

    import keras

    from cxr_tf import labels, losses, model
    from cxr_tf.runs import checkpoints, layout
    from cxr_tf.training import callbacks, epoch_metrics

    if net is None:
        net = model.build_model(arch, image_size, labels.NUM_CLASSES)
        net.compile(keras.optimizers.Adam(1e-3), losses.make_loss(None))
    if not net.optimizer.built:
        net.optimizer.build(net.trainable_variables)
    os.makedirs(work_dir, exist_ok=True)
    model_dir = tempfile.mkdtemp(prefix="save_", dir=work_dir)
    savers = [callbacks.AtomicCheckpoint(model_dir), callbacks.EpochBackup(model_dir)]
    for saver in savers:
        saver.set_model(net)
    times = []
    try:
        for epoch in range(repeats + 1):  # the first save (directories, tracing) is dropped
            start = time.perf_counter()
            for saver in savers:
                saver.on_epoch_end(epoch, {epoch_metrics.MONITOR: float(epoch)})
            times.append(time.perf_counter() - start)
        written = os.path.getsize(checkpoints.checkpoint_path(model_dir, "last")) + sum(
            os.path.getsize(p) for p in layout.backup_files(model_dir).values())
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)
    return {"save_s": round(statistics.median(times[1:]), 3), "save_mb": round(written / 1e6, 1)}


def _epoch_times(net, dataset, steps, epochs):
    import keras

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    times = []
    net.fit(dataset, steps_per_epoch=steps, epochs=epochs, verbose=0, callbacks=[Clock()])
    return times


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
