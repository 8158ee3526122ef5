"""Train the chest X-ray classifier.

    python -m cxr_tf.train --flagfile=demo.cfg
    python -m cxr_tf.train --flagfile=thr05.cfg --data_dir=TFDS_DIR --model_dir=runs/thr05

Flagfiles are found by bare name in the working directory or among the packaged configs
(cxr_tf/configs/). Rerunning the same command after a crash resumes from model_dir/backup.
"""

import json
import shlex
import sys

from absl import app

from cxr_tf import cli, flags
from cxr_tf.training.config import RunConfig

FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        config = RunConfig(**flags.flag_values_dict(flags.TRAIN_FLAG_NAMES))
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    if FLAGS.dry_run:
        return dry_run(config)
    if not config.model_dir:
        raise app.UsageError("--model_dir is required")
    if not (config.data_dir or config.synthetic):
        raise app.UsageError("give --data_dir (a prepared TFDS dir or a Kaggle folder) or "
                             "--synthetic")
    from cxr_tf.training import distribute, runner  # TensorFlow starts here, after flag checks

    # Created first: MultiWorkerMirroredStrategy must exist before any other TF op.
    strategy = distribute.make_strategy(config.strategy)
    # The run dir is locked until training ends; a finished run is not trained again.
    with distribute.claimed_run_dir(config, strategy) as complete:
        if complete:
            print(json.dumps({"model_dir": config.model_dir, "complete": True}) if FLAGS.json
                  else f"{config.model_dir}: run is complete, nothing to do (--overwrite "
                       "trains it again)")
            return 0
        summary = runner.run(config, strategy=strategy, command_line=shlex.join(sys.argv),
                             verbose="auto" if sys.stdout.isatty() else 2)
    print(json.dumps(summary, sort_keys=True) if FLAGS.json else runner.format_summary(summary))
    return 1 if summary["terminated_on_nan"] else 0


def dry_run(config):
    """The resolved config as one JSON line, then the model summary and parameter count."""
    from cxr_tf import model, pretrained

    print(json.dumps(config.to_dict(), sort_keys=True))
    # The weights arguments are checked, not loaded: a dry run downloads nothing.
    pretrained.check_weights(config.arch, config.weights or None, config.imagenet_weights or None)
    net = model.build_model(config.arch, config.image_size, config.num_outputs)
    net.summary(line_length=110)
    print(f"parameters: {net.count_params():,}")
    return 0


if __name__ == "__main__":
    cli.run(main, flags.define_train_flags)
