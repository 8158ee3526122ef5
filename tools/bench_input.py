"""Throughput of the training input pipeline (read, shuffle, decode, augment, batch).

    python tools/bench_input.py [--image_size=224] [--num_images=1024] [--batch_size=64]
        [--repeats=5] [--cache] [--no-augment] [--work_dir=DIR]

Generates the synthetic Kaggle-layout set (at 2x the size), prepares it at --image_size,
then times full passes of `input_pipeline.make_for_train` with augmentation on all cores,
as the train app builds it. The first pass warms up (file cache, autotuning) and
is not counted. Reports the median over --repeats passes of images/s, the cores used and the
rate per core. Target: >= 1,500 img/s per core at 224 px (a 16-core GPU host then feeds
> 20,000 img/s, more than the ~7,000 img/s an H100/H200 trains on at 224 px).
--no-augment times the same pipeline without augmentation, for comparison.
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


def synthetic_kaggle(work_dir, num_images, source_size):
    """A synthetic Kaggle-layout folder under work_dir (generated once, then reused)."""
    from cxr_tf import synthetic

    kaggle = os.path.join(work_dir, f"kaggle_{num_images}_{source_size}")
    if not os.path.exists(os.path.join(kaggle, "test_list.txt")):
        synthetic.generate(kaggle, num_images=num_images, image_size=source_size, seed=0,
                           progress=False)
    return kaggle


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--num_images", type=int, default=1024)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cache", action="store_true", help="cache stored records in memory")
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                        help="augment as training does (default); --no-augment to compare")
    parser.add_argument("--work_dir", default=os.path.join(tempfile.gettempdir(), "cxr_tf_bench"))
    args = parser.parse_args(argv)

    from cxr_tf.data import input_pipeline, source
    from cxr_tf.synthetic.dataset import synthetic_data_dir

    tfds_dir = synthetic_data_dir(args.image_size, args.num_images, cache_dir=args.work_dir)
    data = source.open_source(tfds_dir, image_size=args.image_size)
    n = data.split_sizes["train"]
    steps = n // args.batch_size
    ds = input_pipeline.make_for_train(
        data, batch_size=args.batch_size, epochs=args.repeats + 1, steps_per_epoch=steps,
        options=input_pipeline.TrainOptions(
            cache=args.cache, augment=input_pipeline.augment if args.augment else None))
    rates, iterator = [], iter(ds)
    for repeat in range(args.repeats + 1):
        start = time.perf_counter()
        for _ in range(steps):
            images, _ = next(iterator)
        _ = images.numpy()  # the last batch is really there
        if repeat:  # pass 0 warms up
            rates.append(steps * args.batch_size / (time.perf_counter() - start))
    cores = len(os.sched_getaffinity(0))
    result = {
        "benchmark": "input_pipeline", "image_size": args.image_size,
        "batch_size": args.batch_size, "train_images": n, "augment": args.augment,
        "cache": args.cache,
        "images_per_sec": round(statistics.median(rates), 1), "cores": cores,
        "per_core": round(statistics.median(rates) / cores, 1),
        "all_images_per_sec": [round(r, 1) for r in rates], "target_per_core": 1500,
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
