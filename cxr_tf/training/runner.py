"""One training run, from a RunConfig to a run dir, as a short sequence of named steps. The
train app is a thin wrapper.

    summary = runner.run(RunConfig(model_dir="runs/demo", synthetic=True, image_size=64))

`run` claims the run dir itself (`cxr_tf.runs.claim`: the lock; resume, refuse another run's
dir, or find the run complete or stopped), writes the run record (`cxr_tf.runs.record`) and
trains; rerunning the same config resumes from the run dir's backup. The record's status says
how training ended: complete, stopped (early stopping, a NaN loss), or interrupted / failed
(`errors.Interrupted` re-raised with the line to print: the epoch it was in, the epoch the
backup holds). Before each step that takes seconds, one line on stderr says what it does.
"""

import contextlib
import dataclasses
import functools
import json
import math
import os
import platform
import sys

import keras
import numpy as np
import tensorflow as tf

from cxr_tf import __version__, errors, labels, losses, model, pretrained
from cxr_tf.console import say
from cxr_tf.data import input_pipeline, metadata, source
from cxr_tf.evaluation import metrics
from cxr_tf.runs import RunDirError, claim, layout, record, status
from cxr_tf.runs import history as run_history
from cxr_tf.synthetic.dataset import synthetic_data_dir
from cxr_tf.training import callbacks, distribute, epoch_metrics, keras_compat

# Per-epoch evaluation predicts in batches this many times the training batch: inference keeps
# no activations for a backward pass, and fewer, larger steps cut the evaluation's share of an
# epoch (tools/bench_epoch.py).
EVAL_BATCH_FACTOR = 2


class NoDataError(errors.UserError, ValueError):
    """Nothing to train on: no data_dir, or an empty train or validation split."""


def make_optimizer(name, learning_rate, *, total_steps, warmup_steps=0, lr_schedule="cosine",
                   weight_decay=0.0):
    if lr_schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0 if warmup_steps else learning_rate,
            decay_steps=max(total_steps - warmup_steps, 1),
            warmup_target=learning_rate if warmup_steps else None,
            warmup_steps=warmup_steps,
        )
    elif lr_schedule in ("constant", "plateau"):
        # plateau: ReduceLROnPlateau assigns it, so a number (an optimizer variable, backed up).
        lr = learning_rate
    else:
        raise ValueError(f"lr_schedule must be 'cosine', 'constant' or 'plateau', got "
                         f"{lr_schedule!r}")
    wd = weight_decay or None
    if name == "adam":
        return keras.optimizers.Adam(lr, weight_decay=wd)
    if name == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=weight_decay)
    if name == "sgd":
        return keras.optimizers.SGD(lr, momentum=0.9, nesterov=True, weight_decay=wd)
    raise ValueError(f"optimizer must be adam, adamw or sgd, got {name!r}")


def optimizer_for(config, steps_per_epoch):
    """The run's optimizer: its learning-rate schedule counts optimizer steps (batches), so
    warmup and decay lengths given in epochs are multiplied by `steps_per_epoch`."""
    return make_optimizer(config.optimizer, config.learning_rate,
                          total_steps=steps_per_epoch * config.epochs,
                          warmup_steps=int(round(config.warmup_epochs * steps_per_epoch)),
                          lr_schedule=config.lr_schedule, weight_decay=config.weight_decay)


def package_versions():
    import sklearn
    import tensorflow_datasets as tfds

    return {"cxr_tf": __version__, "tensorflow": tf.__version__, "keras": keras.__version__,
            "tensorflow_datasets": tfds.__version__, "numpy": np.__version__,
            "scikit-learn": sklearn.__version__, "python": platform.python_version()}


def run(config, *, strategy=None, command_line=None, verbose="auto"):
    """Trains as `config` (a RunConfig) says and returns the summary dict; when model_dir
    already holds this run complete, returns {"model_dir": ..., "complete": True} and writes
    nothing; when it holds it stopped by early stopping or a NaN loss, returns
    {"model_dir": ..., "complete": False, "stopped": reason, "epochs_done": n, "epochs": m}.

    strategy: a tf.distribute strategy (default: `distribute.make_strategy(config.strategy,
    config.cluster_timeout)`; a MultiWorkerMirroredStrategy must be made before any other TF
    op, so a caller that makes one passes it). command_line: recorded in config.json.
    verbose: Keras's fit verbosity.
    Raises runs.RunDirError (in use, another run's dir: claim.DifferingRunError, a folder
    overwrite may not empty), errors.Interrupted (with the line to print).
    """
    if not config.model_dir:
        raise errors.ConfigError("model_dir", config.model_dir, "is required")
    strategy = strategy or distribute.make_strategy(config.strategy, config.cluster_timeout)
    policy = seed_and_precision(config)
    # Every input is checked before the claim: a mistyped data_dir or weights file must fail
    # before overwrite deletes a run.
    pretrained.check_weights(config.arch, config.weights or None, config.imagenet_weights or None)
    data = open_data(config)
    with claim.claim(config.model_dir, config, chief=distribute.is_chief(strategy)) as claimed:
        if claimed.state == claim.COMPLETE:
            return {"model_dir": config.model_dir, "complete": True}
        if claimed.state == claim.STOPPED:
            return {"model_dir": config.model_dir, "complete": False,
                    "stopped": claimed.status.reason, "epochs_done": claimed.status.epochs_done,
                    "epochs": claimed.status.epochs}
        return train(config, data, strategy, policy, claimed.initial_epoch,
                     command_line=command_line, verbose=verbose)


def train(config, data, strategy, policy, initial_epoch, *, command_line=None, verbose="auto"):
    """Trains a claimed run dir from `initial_epoch` on; returns the summary dict."""
    run_dir = distribute.writable_run_dir(config.model_dir, strategy)
    os.makedirs(run_dir, exist_ok=True)
    steps_per_epoch = steps_in_epoch(config, data.split_sizes["train"])
    say(f"building {config.arch} at {config.image_size} px"
        + (f" from {config.weights}" if config.weights else ""))
    net, pos_weight = build_compiled_model(config, data, strategy, steps_per_epoch)
    run_record = make_record(config, data, strategy, policy, steps_per_epoch, pos_weight,
                             command_line)
    if initial_epoch == 0 or not record.exists(run_dir):
        record.write(run_dir, dataclasses.replace(run_record, status=record.Status(
            record.RUNNING, initial_epoch, config.epochs)))
    cbs = []
    try:
        cbs = make_callbacks(config, data, run_dir, initial_epoch)
        say(starting_line(config, initial_epoch))
        history = fit(net, config, data, strategy, cbs, steps_per_epoch=steps_per_epoch,
                      initial_epoch=initial_epoch, verbose=verbose)
    except KeyboardInterrupt as e:
        raise interrupted(errors.Interrupted.of(e), config, run_dir, cbs) from None
    except Exception as e:
        status.stop(run_dir, record.ERROR, f"{type(e).__name__}: {e}"[:500])
        raise
    finally:
        distribute.cleanup_run_dir(run_dir, config.model_dir)
    return _summary(net, history, run_record, initial_epoch,
                    data.labels("validation")[:, :len(labels.LABELS)])


def starting_line(config, initial_epoch):
    """What the run starts from: `resuming RUN from backup/epoch-0002.weights.h5 at epoch 3
    of 50`, or `training RUN: 50 epochs`."""
    first_step = "the first step compiles the model"
    if not initial_epoch:
        return f"training {config.model_dir}: {config.epochs} epochs ({first_step})"
    backup = os.path.relpath(layout.backup_path(config.model_dir, initial_epoch),
                             config.model_dir)
    return (f"resuming {config.model_dir} from {backup} at epoch {initial_epoch + 1} of "
            f"{config.epochs} ({first_step})")


def interrupted(error, config, run_dir, cbs):
    """Records the interruption, keeps history.csv to the epochs saved, and returns `error`
    saying what is saved: `interrupted in epoch N; the state after epoch M is saved in
    RUN/backup; rerun the same command to resume`."""
    recorded = status.stop(run_dir, record.INTERRUPTED, f"signal {error.signum}")
    epoch = next((cb.epoch for cb in cbs if isinstance(cb, callbacks.RunStatus)), None)
    if recorded is not None and recorded.state != record.RUNNING and recorded.reason not in (
            record.INTERRUPTED, record.ERROR):  # training had ended and said how
        return error.saying(f"interrupted after training ended ({recorded.state}); nothing "
                            "is lost")
    where = "before its first epoch" if epoch is None else f"in epoch {epoch}"
    saved = layout.resume_epoch(run_dir)
    # An epoch's row is written before its backup: one the backup lacks goes, so that
    # history.csv, the recorded status and the line below all speak of the same epochs (if
    # it cannot be rewritten now, the rerun drops that row as it starts).
    with contextlib.suppress(OSError, RunDirError):
        run_history.keep_epochs(layout.history_path(run_dir), saved or 0)
    if not saved:
        return error.saying(f"interrupted {where}; no epoch had finished, so there is nothing "
                            "to resume; rerun the same command to start again")
    return error.saying(f"interrupted {where}; the state after epoch {saved} is saved in "
                        f"{layout.backup_dir(config.model_dir)}; rerun the same command to "
                        "resume")


def seed_and_precision(config):
    """Seeds Python, NumPy and TF (and makes TF ops deterministic if asked); sets the mixed
    precision policy. Returns the policy's name."""
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    policy = distribute.mixed_precision_policy(config.mixed_precision)
    keras.mixed_precision.set_dtype_policy(policy)
    return policy


def open_data(config):
    """The run's dataset source, opened once: `data_dir`, or the synthetic set made (once) in
    the cache. A prepared dir must hold `image_size` (otherwise it would be resized away)."""
    data_dir = config.data_dir
    if not data_dir:
        if not config.synthetic:
            raise NoDataError("no data: give data_dir (a prepared TFDS dir or a Kaggle "
                              "folder) or synthetic=True")
        say(f"finding the synthetic dataset ({config.synthetic_num_images:,} images at "
            f"{config.image_size} px; made once, then cached)")
        data_dir = synthetic_data_dir(config.image_size, config.synthetic_num_images,
                                      config.synthetic_min_prevalence, config.seed)
    say(f"opening the dataset in {data_dir}")
    opened = source.open_source(data_dir, image_size=config.image_size,
                                val_fraction=config.val_fraction, seed=config.seed,
                                verify_data=config.verify_data)
    for split in ("train", "validation"):
        if not opened.split_sizes.get(split):
            raise NoDataError(f"{data_dir}: the {split} split is empty; training needs "
                              "examples in train and validation (val_fraction > 0)")
    return opened


def steps_in_epoch(config, train_examples):
    """Full batches per epoch (at least 1), capped by config.steps_per_epoch."""
    steps = max(train_examples // config.batch_size, 1)
    return min(steps, config.steps_per_epoch) if config.steps_per_epoch else steps


def build_compiled_model(config, data, strategy, steps_per_epoch):
    """The model, built and compiled under `strategy`; returns (model, pos_weight or None)."""
    with strategy.scope():
        # With several replicas, BatchNorm uses the statistics of the global batch, as on one
        # device: per-replica statistics of a few images would make the run depend on how
        # many devices share the batch.
        # An empty weights (given as to drop a flagfile's imagenet) means none.
        net = model.build_model(config.arch, config.image_size, config.num_outputs,
                                weights=config.weights or None,
                                imagenet_weights=config.imagenet_weights or None,
                                sync_batchnorm=strategy.num_replicas_in_sync > 1)
        pos_weight = None
        if config.pos_weight == "balanced":
            pos_weight = losses.balanced_pos_weight(data.labels("train").astype(np.float32))
            if config.no_finding_output:
                pos_weight = np.append(pos_weight, 1.0)
        net.compile(
            optimizer=optimizer_for(config, steps_per_epoch),
            loss=losses.make_loss(pos_weight),
            # Drives the progress bar only; reported AUCs come from EpochMetrics (exact).
            metrics=[keras.metrics.AUC(multi_label=True, from_logits=True, name="auc",
                                       num_labels=config.num_outputs)],
            jit_compile=config.jit_compile,
        )
        # Keras would create the optimizer's slots while tracing the first train step, and
        # TensorFlow then traces that step a second time (a variable made in a trace forces
        # another): 2-3 s more start-up for ResNet-18 on 2 CPU cores, more for larger nets.
        net.optimizer.build(net.trainable_variables)
    return net, pos_weight


def make_record(config, data, strategy, policy, steps_per_epoch, pos_weight, command_line):
    """The run record (config.json): the config as given, what the run resolved it to, and
    the environment it runs in."""
    resolved = record.Resolved(
        data_dir=os.path.abspath(data.data_dir), model_dir=os.path.abspath(config.model_dir),
        steps_per_epoch=steps_per_epoch, label_names=tuple(labels.LABELS),
        num_outputs=config.num_outputs, num_replicas_in_sync=strategy.num_replicas_in_sync,
        num_workers=_num_workers(strategy), dtype_policy=policy,
        train_examples=data.split_sizes["train"],
        validation_examples=data.split_sizes["validation"],
        pos_weight_values=None if pos_weight is None else tuple(float(w) for w in pos_weight),
        dataset=dataset_identity(data))
    environment = record.Environment(package_versions=package_versions(),
                                     command_line=command_line, argv=tuple(sys.argv))
    return record.RunRecord(config=config, resolved=resolved, environment=environment)


def dataset_identity(data):
    """Which data `data` is: a prepared dataset's version dir and the fingerprint of the
    metadata it was prepared from (prepare_report.json's `source`), or a raw Kaggle folder
    and the fingerprint of its metadata now."""
    if not data.prepared:
        return record.Dataset(dir=os.path.abspath(data.data_dir), prepared=False,
                              source=metadata.source_fingerprint(data.data_dir))
    from cxr_tf.datasets.nih_chest_xray14 import REPORT_FILE

    version_dir = os.path.abspath(os.fspath(data.builder.data_dir))
    report_path = os.path.join(version_dir, REPORT_FILE)
    fingerprint = None
    if os.path.isfile(report_path):
        with open(report_path) as f:
            fingerprint = json.load(f).get("source")
    return record.Dataset(dir=version_dir, prepared=True, source=fingerprint)


def make_callbacks(config, data, run_dir, initial_epoch):
    """EpochMetrics on validation (and test, if asked), then the run dir's standard ones."""
    thresholds = list(config.thresholds)
    hparams = {"learning_rate": config.learning_rate, "batch_size": config.batch_size,
               "thresholds": ",".join(config.to_dict()["thresholds"]),
               "image_size": config.image_size, "optimizer": config.optimizer,
               "arch": config.arch, "pos_weight": config.pos_weight}
    metric_logdir = layout.logs_dir(run_dir, "metrics")
    measured = [epoch_metrics.EpochMetrics(*eval_split(config, data, "validation"), thresholds,
                                           labels.LABELS, metric_logdir, "val", hparams)]
    if config.eval_test_each_epoch:
        measured.append(epoch_metrics.EpochMetrics(*eval_split(config, data, "test"), thresholds,
                                                   labels.LABELS, metric_logdir, "test"))
    plateau = (callbacks.Plateau(config.lr_plateau_factor, config.lr_plateau_patience,
                                 config.lr_plateau_min_delta, config.lr_plateau_min)
               if config.lr_schedule == "plateau" else None)
    return callbacks.standard_callbacks(run_dir, epoch_metrics=measured, epochs=config.epochs,
                                        initial_epoch=initial_epoch,
                                        early_stop_patience=config.early_stop_patience,
                                        monitor=config.monitor, plateau=plateau)


def eval_split(config, data, split):
    """(batches of one split, its targets in the same order) for per-epoch metrics."""
    target_fn = input_pipeline.with_no_finding if config.no_finding_output else None
    ds = input_pipeline.make_for_eval(data, split, target_fn=target_fn,
                                      batch_size=EVAL_BATCH_FACTOR * config.batch_size)
    y_true = data.labels(split).astype(np.float32)
    return ds, y_true if target_fn is None else target_fn(y_true).numpy()


def train_stream(config, data, strategy, *, steps_per_epoch, initial_epoch):
    """The training batches as `strategy` distributes them: each replica gets
    batch_size / num_replicas_in_sync examples per step."""
    options = input_pipeline.TrainOptions(
        seed=config.seed,
        augment=augment_fn(config),
        target_fn=input_pipeline.with_no_finding if config.no_finding_output else None,
        cache=config.cache, deterministic=config.deterministic)

    def train_fn(input_context):
        # A step takes one per-replica batch from this pipeline for each replica it feeds
        # (two for MirroredStrategy on two devices, one per worker under multi-worker).
        per_step = input_context.num_replicas_in_sync // input_context.num_input_pipelines
        return input_pipeline.make_for_train(
            data, batch_size=config.batch_size, initial_epoch=initial_epoch,
            # max(): a crash after the last epoch's backup resumes with nothing left to train.
            epochs=max(config.epochs, initial_epoch + 1),
            steps_per_epoch=steps_per_epoch * per_step, options=options,
            input_context=input_context)

    return strategy.distribute_datasets_from_function(train_fn)


def augment_fn(config):
    """The training batches' augmentation: none, the mild set (with a flip if hflip), or a
    random horizontal flip alone (augment_ops flip, which needs hflip)."""
    if not config.augment:
        return None
    if config.augment_ops == "flip":
        return input_pipeline.random_flip
    return functools.partial(input_pipeline.augment, hflip=config.hflip)


def fit(net, config, data, strategy, cbs, *, steps_per_epoch, initial_epoch, verbose="auto"):
    """Keras fit on the training stream, epochs initial_epoch .. config.epochs - 1."""
    train_ds = train_stream(config, data, strategy, steps_per_epoch=steps_per_epoch,
                            initial_epoch=initial_epoch)
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        keras_compat.prepare_for_multi_worker(net, strategy, config.image_size,
                                              config.num_outputs)
    with data.reading():  # a shard damaged since it was opened: one error naming it
        return net.fit(train_ds, epochs=config.epochs, steps_per_epoch=steps_per_epoch,
                       initial_epoch=initial_epoch, callbacks=cbs, verbose=verbose,
                       shuffle=False)  # the stream is already shuffled, per epoch and seeded


def _num_workers(strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return 1
    return max(len(resolver.cluster_spec().as_dict().get("worker", [])), 1)


def weights_digest(net):
    """sha256 over all weights, for checking that two runs or workers ended identical."""
    import hashlib

    digest = hashlib.sha256()
    for w in net.weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(w)).tobytes())
    return digest.hexdigest()


def _summary(net, history, run_record, initial_epoch, val_labels):
    logs = {k: v[-1] for k, v in history.history.items() if v}
    nan_stop = not all(math.isfinite(v) for v in history.history.get("loss", [0.0]))
    per_class = {name: logs.get(f"val/auc/{name}") for name in labels.LABELS}
    positives, negatives = metrics.class_counts(val_labels)
    return {
        "model_dir": run_record.resolved.model_dir,
        "data_dir": run_record.resolved.data_dir,
        "epochs_run": len(history.history.get("loss", [])),
        "resumed_from_epoch": initial_epoch,
        "val_auc_mean": logs.get(epoch_metrics.MONITOR),
        "val_auc": per_class,
        # Every AUC says how many cases it rests on (the end-of-training table shows them).
        "val_positives": dict(zip(labels.LABELS, positives.tolist())),
        "val_negatives": dict(zip(labels.LABELS, negatives.tolist())),
        "val_loss": logs.get("val_loss"),
        "final": {k: v for k, v in logs.items() if "/" in k and k.count("/") == 1},
        "num_replicas_in_sync": run_record.resolved.num_replicas_in_sync,
        "terminated_on_nan": nan_stop,
        "weights_sha256": weights_digest(net),
    }
