"""What every evaluation report takes, as three small values: the images the model scored
(with their labels and patients), the decision thresholds, and the bootstrap.

    scored = Scored(y_true, y_prob, labels.LABELS, patient_ids=ids, metadata=rows)
    report = reporting.build_report(scored, Thresholds((0.4, 0.5), tuned), Bootstrap(1000))

The NIH report (`reporting`), the external-labels report (`external`) and the radiologist
section (`expert_labels`) take the same three, so a new report section does too.
"""

import dataclasses

import numpy as np

from cxr_tf.evaluation import metrics


@dataclasses.dataclass(frozen=True, eq=False)
class Scored:
    """Images the model scored, one row each, with their labels.

    Args:
        y_true: (n, C) labels: 0/1 (and -1, uncertain, on an external set).
        y_prob: (n, C) probabilities (the sigmoid of the logits), columns as label_names.
        label_names: the C finding names.
        patient_ids: optional, one per row; a bootstrap then resamples patients, not images.
        metadata: optional per-row dicts with "sex", "age", "view" (the subgroup tables).
    """

    y_true: object
    y_prob: object
    label_names: list
    patient_ids: object = None
    metadata: object = None

    def select(self, rows, columns):
        """The rows where the bool mask `rows` holds, and the findings at indices `columns`."""
        rows = np.asarray(rows, bool)
        cells = np.ix_(rows, columns)
        return Scored(
            np.asarray(self.y_true)[cells], np.asarray(self.y_prob)[cells],
            [self.label_names[c] for c in columns],
            None if self.patient_ids is None else np.asarray(self.patient_ids)[rows].tolist(),
            None if self.metadata is None else [m for m, keep in zip(self.metadata, rows)
                                                if keep])


@dataclasses.dataclass(frozen=True, eq=False)
class Thresholds:
    """The decision thresholds a report scores at.

    Args:
        configured: numbers applied to every finding (the run's, e.g. (0.4, 0.5)), each
            reported under its own key (`f1@0.4`).
        tuned: optional, one per finding (from the run's thresholds.json), reported as
            `…@tuned`.
    """

    configured: tuple
    tuned: object = None

    def sets(self):
        """[(key, threshold or per-finding array)]: each configured one, then "tuned"."""
        sets = [(metrics.format_threshold(t), float(t)) for t in self.configured]
        if self.tuned is not None:
            sets.append(("tuned", np.asarray(self.tuned, dtype=np.float64)))
        return sets

    def select(self, columns):
        """The same thresholds for the findings at indices `columns`."""
        tuned = None if self.tuned is None else np.asarray(self.tuned, np.float64)[columns]
        return Thresholds(self.configured, tuned)


@dataclasses.dataclass(frozen=True)
class Bootstrap:
    """The percentile bootstrap behind every interval of a report.

    Args:
        replicates: resamples (0: no intervals).
        seed: the resamples' seed, so a report is repeatable.
        progress: show a progress bar while resampling.
    """

    replicates: int = 1000
    seed: int = 0
    progress: bool = False
