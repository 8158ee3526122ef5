"""The paper's Figures 2 and 3 from one or more runs' history.csv.

    python tools/plot_history.py RUN [RUN ...] [--output_dir=DIR]

Figure 2 (figure2_auc_f1.png): validation mean AUC (on scores, solid), macro F1 at the threshold
(dashed) and the paper's AUC of thresholded predictions, `paper_auc@T` (dotted), per epoch;
one panel per threshold found in the runs (`val/f1@T/macro` columns). The paper's three
experiments (thr04/05/06) each land in their own panel.
Figure 3 (figure3_loss.png): training and validation loss per epoch, one colour per run.
(Figure 1, the label proportions, comes from `python -m cxr_tf.stats --plot`.)

Flags:
    RUN           run dirs (each with history.csv) or history.csv files.
    --output_dir  where to write the PNGs (default: RUN/plots of the first run).

history.csv is read as training reads it (`cxr_tf.runs.history`): epochs counted from 1 (an
older 0-based file too), a torn last row dropped with a warning, other damage one error line.

Ends with one JSON line: {"figure2": path, "figure3": path, "runs": [...], "thresholds": [...]}.
"""

import argparse
import json
import os
import re
import sys

_F1_COLUMN = re.compile(r"^val/f1@(?P<t>[^/]+)/macro$")
# The figures' default folder, inside the (first) run dir.
PLOTS_DIR = "plots"


def read_history(path):
    """(run name, DataFrame with epochs counted from 1) from a run dir or a history.csv path."""
    import pandas as pd

    from cxr_tf.runs import history, layout

    csv_path = layout.history_path(path) if os.path.isdir(path) else path
    if not os.path.isfile(csv_path):
        raise FileNotFoundError(f"{csv_path}: not found (is {path} a run dir?)")
    frame = pd.DataFrame(history.read_file(csv_path))
    if "epoch" not in frame.columns or frame.empty:
        raise ValueError(f"{csv_path}: no epochs (columns: {list(frame.columns)[:8]})")
    run_dir = os.path.dirname(os.path.abspath(csv_path))
    return os.path.basename(run_dir), frame


def thresholds_of(frame):
    return [m.group("t") for m in map(_F1_COLUMN.match, frame.columns) if m]


def figure2(runs, path):
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    thresholds = sorted({t for _, frame in runs for t in thresholds_of(frame)}, key=float)
    if not thresholds:
        raise ValueError("no val/f1@T/macro column in any history.csv: nothing to plot")
    fig = Figure(figsize=(5 * len(thresholds), 4.2), layout="constrained")
    axes = fig.subplots(1, len(thresholds), squeeze=False, sharey=True)[0]
    colours = {name: f"C{i}" for i, (name, _) in enumerate(runs)}
    for ax, t in zip(axes, thresholds):
        for name, frame in runs:
            if f"val/f1@{t}/macro" not in frame.columns:
                continue
            epochs = frame["epoch"]
            ax.plot(epochs, frame["val/auc_mean"], color=colours[name], label=f"{name}: AUC")
            ax.plot(epochs, frame[f"val/f1@{t}/macro"], color=colours[name], ls="--",
                    label=f"{name}: F1 macro")
            if f"val/paper_auc@{t}" in frame.columns:
                ax.plot(epochs, frame[f"val/paper_auc@{t}"], color=colours[name], ls=":",
                        label=f"{name}: paper_auc@{t}")
        ax.set(title=f"threshold {t}", xlabel="epoch", ylim=(0, 1))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    axes[0].set_ylabel("validation")
    fig.suptitle("Figure 2: validation AUC (scores) and F1 per epoch")
    fig.savefig(path, dpi=100)
    return thresholds


def figure3(runs, path):
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    for i, (name, frame) in enumerate(runs):
        epochs = frame["epoch"]
        if "loss" in frame.columns:
            ax.plot(epochs, frame["loss"], color=f"C{i}", marker="o", ms=3, label=f"{name}: train")
        if "val_loss" in frame.columns:
            ax.plot(epochs, frame["val_loss"], color=f"C{i}", marker="o", ms=3, ls="--",
                    label=f"{name}: validation")
    ax.set(title="Figure 3: training and validation loss", xlabel="epoch",
           ylabel="binary cross-entropy")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=100)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", metavar="RUN")
    parser.add_argument("--output_dir")
    args = parser.parse_args(argv)
    from cxr_tf.runs.history import HistoryError

    try:
        runs = [read_history(path) for path in args.runs]
    except HistoryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    first = args.runs[0] if os.path.isdir(args.runs[0]) else os.path.dirname(args.runs[0])
    out_dir = args.output_dir or os.path.join(first, PLOTS_DIR)
    os.makedirs(out_dir, exist_ok=True)
    fig2 = os.path.join(out_dir, "figure2_auc_f1.png")
    fig3 = os.path.join(out_dir, "figure3_loss.png")
    thresholds = figure2(runs, fig2)
    figure3(runs, fig3)
    for name, frame in runs:
        print(f"{name}: {len(frame)} epochs, thresholds {', '.join(thresholds_of(frame))}")
    print(json.dumps({"figure2": fig2, "figure3": fig3, "runs": [name for name, _ in runs],
                      "thresholds": thresholds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
