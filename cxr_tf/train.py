"""Train the chest X-ray classifier.

    python -m cxr_tf.train --flagfile=demo.cfg
    python -m cxr_tf.train --flagfile=thr05.cfg --data_dir=TFDS_DIR --model_dir=runs/thr05

Flagfiles are found by bare name in the working directory or among the packaged configs
(cxr_tf/configs/). Rerunning the same command after a crash or Ctrl-C resumes from
model_dir/backup; a complete run, or one stopped by early stopping or a NaN loss, is not
trained again (--overwrite starts it afresh, and deletes only a cxr_tf run dir).
"""

import json
import os
import shlex
import sys

from absl import app

from cxr_tf import cli, errors, flags
from cxr_tf.runs.config import RunConfig

FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = flags.build_config(RunConfig)
    if FLAGS.dry_run:
        return dry_run(config)
    if not config.model_dir:
        raise app.UsageError("--model_dir is required")
    if not (config.data_dir or config.synthetic):
        raise app.UsageError("give --data_dir (a prepared TFDS dir or a Kaggle folder) or "
                             "--synthetic")
    from cxr_tf.data import source
    from cxr_tf.runs import claim
    from cxr_tf.training import runner  # TensorFlow starts here, after the flag checks

    try:
        summary = runner.run(config, command_line=shlex.join(sys.argv),
                             verbose="auto" if sys.stdout.isatty() else 2)
    except claim.DifferingRunError as e:
        raise errors.UserError(other_run_message(e)) from None
    except source.NotPreparedError as e:
        raise errors.UserError(not_prepared_message(e, config)) from None
    if summary.get("complete"):
        print(json.dumps(summary) if FLAGS.json
              else f"{config.model_dir}: run is complete, nothing to do (--overwrite trains it "
                   "again)")
        return 0
    if "stopped" in summary:
        print(json.dumps(summary) if FLAGS.json else stopped_message(summary))
        return 1 if summary["stopped"] == "nan_loss" else 0
    print(json.dumps(summary, sort_keys=True) if FLAGS.json else format_summary(summary))
    return 1 if summary["terminated_on_nan"] else 0


def stopped_message(summary):
    """A rerun of a run that stopped by its own rule: what stopped it, and what to do."""
    why = {"early_stop": "early stopping: no val/auc_mean gain for --early_stop_patience "
                         "epochs", "nan_loss": "the loss became NaN"}[summary["stopped"]]
    return (f"{summary['model_dir']}: the run stopped after epoch {summary['epochs_done']} of "
            f"{summary['epochs']} ({why}); nothing to do (--overwrite trains it again)")


def not_prepared_message(error, config):
    """No prepared dataset at --image_size: the prepare command that makes it."""
    return (f"{error.data_dir}: no prepared dataset at --image_size={config.image_size}; "
            "prepare it: python -m cxr_tf.prepare --data_dir=KAGGLE_DIR "
            f"--output_dir={error.data_dir} --image_size={config.image_size}")


def other_run_message(error):
    """A DifferingRunError in flags: `RUN holds a run with other flags: --epochs: 1 (run) !=
    2 (now); ...`."""
    from cxr_tf.runs import claim

    shown = "; ".join(f"--{name}: {claim.show(was)} (run) != {claim.show(now)} (now)"
                      for name, was, now in error.differences)
    return (f"{error.model_dir} holds a run with other flags: {shown}. Rerun with the run's "
            "flags to resume it, --overwrite to start afresh, or use another --model_dir")


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


def format_summary(summary):
    """The human summary of a trained run: per-finding validation AUCs and what to run next."""
    lines = ["", f"{'finding':<20} {'val AUC':>8}", "-" * 29]
    for name, auc in summary["val_auc"].items():
        lines.append(f"{name:<20} {'n/a' if auc is None or auc != auc else f'{auc:8.3f}':>8}")
    mean = summary["val_auc_mean"]
    lines += ["-" * 29, f"{'mean':<20} {mean if mean is None else f'{mean:8.3f}':>8}", ""]
    if summary["terminated_on_nan"]:
        lines.append("Training stopped: the loss became NaN (TerminateOnNaN).")
    lines.append(f"Run dir:      {summary['model_dir']}")
    lines.append(f"TensorBoard:  tensorboard --logdir {os.path.join(summary['model_dir'], 'logs')}")
    lines.append(f"Evaluate:     python -m cxr_tf.evaluate --model_dir={summary['model_dir']} "
                 "--split=validation")
    return "\n".join(lines)


if __name__ == "__main__":
    cli.run(main, flags.define_train_flags, outputs=lambda f: [f.model_dir])
