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
    if config.strategy == "multi_worker":
        from cxr_tf.training import tf_config

        tf_config.read()  # a bad cluster spec fails now, before TensorFlow starts
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
        print(json.dumps(summary) if FLAGS.json else stopped_message(summary, config.monitor))
        return 1 if summary["stopped"] == "nan_loss" else 0
    print(json.dumps(summary, sort_keys=True) if FLAGS.json else format_summary(summary))
    return 1 if summary["terminated_on_nan"] else 0


def stopped_message(summary, monitor="val_auc_mean"):
    """A rerun of a run that stopped by its own rule: what stopped it, and what to do."""
    change = {"val_auc_mean": "val/auc_mean gain", "val_loss": "val_loss decrease"}[monitor]
    why = {"early_stop": f"early stopping: no {change} for --early_stop_patience epochs",
           "nan_loss": "the loss became NaN"}[summary["stopped"]]
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
    """The human summary of a trained run: per-finding validation AUCs with the counts they
    rest on, and what to run next."""
    lines = auc_table(summary)
    if summary["terminated_on_nan"]:
        lines.append("Training stopped: the loss became NaN (TerminateOnNaN).")
    lines.append(f"Run dir:      {summary['model_dir']}")
    lines.append(f"TensorBoard:  tensorboard --logdir {os.path.join(summary['model_dir'], 'logs')}")
    lines.append(f"Evaluate:     python -m cxr_tf.evaluate --model_dir={summary['model_dir']} "
                 "--split=validation")
    return "\n".join(lines)


def auc_table(summary):
    """Lines: each finding's validation AUC with its positives and negatives; "n/a (k
    positives)" below the evaluate report's small-count rule; a mean over the findings shown."""
    from cxr_tf.evaluation.metrics import MIN_CLASS_COUNT

    rule = "-" * 60
    lines = ["", f"{'finding':<20} {'val AUC':>18} {'positives':>10} {'negatives':>10}", rule]
    shown, cells = [], set()
    for name, auc in summary["val_auc"].items():
        pos, neg = summary["val_positives"][name], summary["val_negatives"][name]
        text = _auc_cell(auc, pos, neg, MIN_CLASS_COUNT)
        if not text.startswith("n/a"):
            shown.append(auc)
        cells.add(text)
        lines.append(f"{name:<20} {text:>18} {pos:>10} {neg:>10}")
    lines.append(rule)
    if shown:
        mean_label = f"mean of {len(shown)} finding{'' if len(shown) == 1 else 's'}"
        lines.append(f"{mean_label:<20} {sum(shown) / len(shown):>18.3f}")
    if any(cell.startswith("n/a") and cell != _NO_SCORES for cell in cells):
        lines.append(f"n/a: fewer than {MIN_CLASS_COUNT} positives or negatives in validation, "
                     "too few for an AUC.")
    if _NO_SCORES in cells:
        lines.append("n/a (no scores): the model's outputs were NaN.")
    defined = [a for a in summary["val_auc"].values() if a is not None and a == a]
    monitored = summary["val_auc_mean"]
    if len(defined) != len(shown) and monitored is not None and monitored == monitored:
        lines.append(f"val/auc_mean (history.csv; picks best.keras) = {monitored:.3f}, over the "
                     f"{len(defined)} findings with both labels.")
    return lines + [""]


_NO_SCORES = "n/a (no scores)"


def _auc_cell(auc, positives, negatives, min_count):
    if positives < min_count:
        return f"n/a ({positives} positive{'' if positives == 1 else 's'})"
    if negatives < min_count:
        return f"n/a ({negatives} negative{'' if negatives == 1 else 's'})"
    if auc is None or auc != auc:
        return _NO_SCORES  # a diverged model's NaN outputs
    return f"{auc:.3f}"


if __name__ == "__main__":
    cli.run(main, flags.define_train_flags, outputs=lambda f: [f.model_dir])
