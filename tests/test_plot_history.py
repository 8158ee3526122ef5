"""tools/plot_history.py: the paper's Figures 2 and 3 from history.csv files."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tools import plot_history


def write_history(run_dir, thresholds, epochs=4, first=1):
    """A history.csv with the columns cxr_tf.train writes (a subset of the per-class ones),
    epochs counted from `first` (0 before cxr_tf 0.3)."""
    run_dir.mkdir(parents=True)
    columns = ["epoch", "loss", "val_loss", "val/auc_mean", "val/auc/Effusion", "learning_rate"]
    for t in thresholds:
        columns += [f"val/f1@{t}/macro", f"val/f1@{t}/micro", f"val/precision@{t}/macro",
                    f"val/paper_auc@{t}"]
    rows = []
    for e in range(epochs):
        values = {"epoch": e + first, "loss": 0.4 - 0.05 * e, "val_loss": 0.42 - 0.03 * e,
                  "val/auc_mean": 0.6 + 0.05 * e, "val/auc/Effusion": 0.7, "learning_rate": 0.01}
        for t in thresholds:
            values.update({f"val/f1@{t}/macro": 0.2 + 0.02 * e, f"val/f1@{t}/micro": 0.3,
                           f"val/precision@{t}/macro": 0.4, f"val/paper_auc@{t}": 0.55 + 0.01 * e})
        rows.append(",".join(str(values[c]) for c in columns))
    (run_dir / "history.csv").write_text(",".join(columns) + "\n" + "\n".join(rows) + "\n")


def test_figures_for_the_three_paper_runs(tmp_path, capsys):
    for name, t in (("thr04", "0.4"), ("thr05", "0.5"), ("thr06", "0.6")):
        write_history(tmp_path / name, [t])
    out = tmp_path / "figures"
    assert plot_history.main([str(tmp_path / n) for n in ("thr04", "thr05", "thr06")] +
                             [f"--output_dir={out}"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result == {"figure2": str(out / "figure2_auc_f1.png"),
                      "figure3": str(out / "figure3_loss.png"),
                      "runs": ["thr04", "thr05", "thr06"], "thresholds": ["0.4", "0.5", "0.6"]}
    with Image.open(result["figure2"]) as fig2, Image.open(result["figure3"]) as fig3:
        assert fig2.format == fig3.format == "PNG"
        assert fig2.size == (1500, 420)  # three panels, one per threshold, 5 × 4.2 in at 100 dpi
        for img in (fig2, fig3):
            pixels = np.asarray(img.convert("RGB"))
            assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # drawn, not blank


def test_default_output_dir_is_the_runs_plots(tmp_path, capsys):
    write_history(tmp_path / "run", ["0.4", "0.5"], epochs=2)
    plot_history.main([str(tmp_path / "run")])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["figure2"] == str(tmp_path / "run" / "plots" / "figure2_auc_f1.png")
    assert result["thresholds"] == ["0.4", "0.5"]
    assert Path(result["figure3"]).stat().st_size > 10_000


def test_missing_history_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"history.csv: not found \(is .* a run dir\?\)"):
        plot_history.main([str(tmp_path)])


def test_epochs_count_from_1_in_new_and_older_files(tmp_path):
    write_history(tmp_path / "new", ["0.5"], epochs=3)
    write_history(tmp_path / "old", ["0.5"], epochs=3, first=0)
    for name in ("new", "old"):
        _, frame = plot_history.read_history(str(tmp_path / name))
        assert frame["epoch"].tolist() == [1, 2, 3]
        assert frame["loss"].tolist() == pytest.approx([0.4, 0.35, 0.3])


def test_a_damaged_history_is_one_error_line(tmp_path, capsys):
    write_history(tmp_path / "run", ["0.5"], epochs=2)
    with open(tmp_path / "run" / "history.csv", "a") as f:
        f.write("3,oops" + ",0.1" * 8 + "\n")
    assert plot_history.main([str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert err == (f"error: {tmp_path / 'run' / 'history.csv'}: line 4: loss is 'oops', not a "
                   "number. It is training's per-epoch log: restore it from a copy, or delete "
                   "the damaged line (that epoch's figures are lost; the run still resumes from "
                   "backup/)\n")
