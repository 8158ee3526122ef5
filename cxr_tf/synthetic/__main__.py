"""Generate the synthetic NIH ChestX-ray14 dataset in the exact Kaggle layout.

    python -m cxr_tf.synthetic --output_dir=/tmp/nih_synth --num_images=2000 --image_size=1024 --seed=0 [--faults] [--min_prevalence=0.0]

See `cxr_tf.synthetic.generator` for what it writes.
"""

from absl import app

from cxr_tf import cli, flags
from cxr_tf.synthetic.config import SyntheticConfig
from cxr_tf.synthetic.generator import generate

FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    config = flags.build_config(SyntheticConfig)
    if not config.output_dir:
        raise app.UsageError("--output_dir is required")
    s = generate(**config.generate_kwargs())
    print(f"Wrote {s['images']:,} images of {s['patients']:,} patients ({s['image_size']} px, "
          f"{s['folders']} folders) to {s['output_dir']} in {s['seconds']:.1f} s")
    for split, part in s["splits"].items():
        print(f"  {split:<10} {part['images']:>7,} images {part['patients']:>7,} patients")
    print(f"  No Finding {s['no_finding']:>7,}   multi-label {s['multi_label']:>7,}")
    for name, count in s["labels"].items():
        print(f"  {name:<19}{count:>7,}  {count / s['images']:6.1%}")
    if s["faults"]:
        print(f"  + {s['faults']} fault files/rows, listed in faults.json")


if __name__ == "__main__":
    cli.run(main, flags.define_synthetic_flags, outputs=lambda f: [f.output_dir])
