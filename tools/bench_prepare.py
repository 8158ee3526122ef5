"""Throughput of `prepare` against the bare parallel decode + resize rate, in one run.

    python tools/bench_prepare.py [--num_images=600] [--source_size=1024] [--image_size=224]
        [--repeats=3] [--warmup=1] [--image_encoding=raw|png] [--work_dir=DIR]

Generates synthetic Kaggle-layout PNGs at --source_size (NIH films are ~1024² after the
Kaggle downscale), then per repeat times (a) the bare rate: `parallel_decode.decode_files`
over every file on all cores, decode + pad + resize only, nothing written; (b) `prepare`
into a fresh TFDS dir: the same decode plus storing (--image_encoding: raw bytes, or PNG
encoding), TFDS serialisation, shuffling and sharding. The figure is the ratio of the
medians, prepare / bare (target >= 0.9). --warmup untimed rounds of both come first: the
first prepare of a process pays TFDS's start-up, which a 112,120-image run amortises.
The last line printed is one JSON object.
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num_images", type=int, default=600)
    parser.add_argument("--source_size", type=int, default=1024)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--image_encoding", default="raw", choices=("raw", "png"))
    parser.add_argument("--work_dir", default=os.path.join(tempfile.gettempdir(), "cxr_tf_bench"))
    args = parser.parse_args(argv)

    from bench_input import synthetic_kaggle
    from cxr_tf.datasets.config import PrepareConfig
    from cxr_tf.datasets.nih_chest_xray14 import build
    from cxr_tf.data import metadata, parallel_decode

    kaggle = synthetic_kaggle(args.work_dir, args.num_images, args.source_size)
    index = metadata.build_index(kaggle)
    items = list(zip(index.frame["image_id"], index.frame["path"]))
    bare, full = [], []
    for _ in range(args.warmup + args.repeats):
        start = time.perf_counter()
        for _ in parallel_decode.decode_files(items, args.image_size, encoding=None):
            pass
        bare.append(len(items) / (time.perf_counter() - start))
        out = tempfile.mkdtemp(dir=args.work_dir)
        start = time.perf_counter()
        report = build.prepare(PrepareConfig(data_dir=kaggle, output_dir=out,
                                             image_size=args.image_size,
                                             image_encoding=args.image_encoding))
        full.append(sum(report["written"].values()) / (time.perf_counter() - start))
        shutil.rmtree(out)
    bare, full = bare[args.warmup:], full[args.warmup:]
    result = {
        "benchmark": "prepare", "images": len(items), "source_size": args.source_size,
        "image_size": args.image_size, "image_encoding": args.image_encoding,
        "cores": parallel_decode.default_workers(),
        "bare_images_per_sec": round(statistics.median(bare), 1),
        "prepare_images_per_sec": round(statistics.median(full), 1),
        "ratio": round(statistics.median(full) / statistics.median(bare), 3),
        "bare_all": [round(r, 1) for r in bare], "prepare_all": [round(r, 1) for r in full],
        "target_ratio": 0.9,
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
