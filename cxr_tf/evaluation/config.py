"""How to evaluate a run: the evaluate app's arguments as one checked, frozen value.

    config = EvalConfig(model_dir="runs/demo", split="test", tune_thresholds="f1")
    report = runner.evaluate(config)

The evaluate app generates its flags from these fields (`cxr_tf.flags.define_config`), so
each default, choice and help is written here once, and a value is checked here once, however
the config is built (app, test or tool). Arguments that do not go together (CheXpert's with
NIH's) are refused by an `ArgumentsError` that names them; the app spells the names as flags.

Pure Python: the apps import this before TensorFlow starts.
"""

import dataclasses
import string

from cxr_tf import errors, options, schema
from cxr_tf.schema import option

SPLITS = ("test", "validation")
DATASETS = ("nih", "chexpert")
TUNING_METHODS = ("f1", "youden")  # metrics.tune_thresholds
CALIBRATION_METHODS = ("temperature", "platt", "isotonic", "none")  # calibration.METHODS + none
UNCERTAIN_POLICIES = ("ignore", "zeros", "ones")  # external.apply_policy
VIEWS = ("frontal", "lateral")  # data.chexpert.VIEWS (which imports TensorFlow)
# The resamples' AUCs are held as replicates × findings float64s (8 MB per 100,000 for 14
# findings); a percentile interval's Monte Carlo error is already ~0.001 at 10,000.
MAX_BOOTSTRAP = 1_000_000


class ArgumentsError(errors.UserError, ValueError):
    """Arguments that do not go together, or one that is missing.

    `template` names each argument as {name}: str() shows the bare names ("split, ... work on
    NIH data"), and an app shows its own spelling with `spelled(lambda name: f"--{name}")`.
    """

    def __init__(self, template):
        self.template = template
        super().__init__(self.spelled(str))

    def spelled(self, spell):
        """The message with each argument name passed through `spell`."""
        names = {name for _, name, _, _ in string.Formatter().parse(self.template) if name}
        return self.template.format(**{name: spell(name) for name in names})

    def __reduce__(self):  # picklable across worker processes
        return type(self), (self.template,)


def _not_empty(values):
    if not values:
        raise ValueError(f"must name at least one of {', '.join(VIEWS)}")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """What one evaluation does: the run, the data, and the report's extra sections.

    `given` lists the arguments the user set explicitly (the app: the flags on the command
    line), so an argument that does not apply to the dataset is refused even when it was
    given at its default value; an argument away from its default counts as given anyway.
    """

    model_dir: str | None = options.model_dir()
    split: str = option("test", "Split to evaluate.", choices=SPLITS)
    data_dir: str | None = options.data_dir(
        "Prepared TFDS dir or Kaggle folder (default: the run's config.json data_dir).")
    checkpoint: str = options.checkpoint()
    bootstrap: int = option(1000, "Patient-level bootstrap replicates for the AUC 95% CI "
                            "(0: none).", lower=0, upper=MAX_BOOTSTRAP)
    tune_thresholds: str | None = option(
        None, "Tune per-class thresholds on the VALIDATION split (whatever --split says) and "
        "write RUN/thresholds.json.", choices=TUNING_METHODS)
    threshold: float = options.threshold(
        "Decision threshold of a finding whose validation split has too few cases to tune "
        "one (fewer than 10 positives or negatives).")
    calibrate: str = option(
        "none", "Fit a per-finding probability calibration on the VALIDATION split and write "
        "RUN/calibration.json, which the report, export and predict then apply (none: fit "
        "nothing; a calibration.json already there still applies).",
        choices=CALIBRATION_METHODS)
    fit_ood: bool = option(
        False, "Fit the out-of-distribution detector (Mahalanobis distance on the pooled "
        "features of the training split) and write RUN/ood.npz, which export and predict use.")
    ood_percentile: float = option(
        99.5, "The out-of-distribution cut: this percentile of the validation films' scores.",
        lower=50.0, upper=100.0)
    batch_size: int = options.batch_size("Images per prediction batch.")
    verify_data: bool = options.verify_data()
    expert_labels: str | None = options.path(
        "Google's radiologist labels CSV for the NIH test images: also score against them.")
    bbox_csv: str | None = options.path(
        "NIH's BBox_List_2017.csv: also report Grad-CAM localisation against its boxes.")
    dataset: str = option("nih", "Which dataset --data_dir holds.", choices=DATASETS)
    uncertain_labels: str = option(
        "ignore", "CheXpert's uncertain (-1) labels: left out of that finding's metrics, or "
        "read as 0 or 1.", choices=UNCERTAIN_POLICIES)
    views: tuple = option(("frontal",), "Views to evaluate (frontal, lateral).", choices=VIEWS,
                          check=_not_empty)
    given: tuple = option((), "The arguments set explicitly.", flag=False)

    def __post_init__(self):
        schema.check(self)
        if not self.model_dir:
            raise ArgumentsError("{model_dir} is required")
        if self.dataset == "chexpert":
            if not self.data_dir:
                raise ArgumentsError("{dataset}=chexpert needs {data_dir} (the TFDS dir "
                                     "holding the prepared chexpert dataset)")
            if (self.tune_thresholds or self.bbox_csv or self.expert_labels
                    or self._given("split")):
                raise ArgumentsError(
                    "{split}, {tune_thresholds}, {bbox_csv} and {expert_labels} work on NIH "
                    "data ({dataset}=chexpert always evaluates CheXpert's validation split)")
            if self._given("calibrate", "fit_ood", "ood_percentile", "threshold"):
                raise ArgumentsError(
                    "{calibrate}, {fit_ood}, {ood_percentile} and {threshold} fit on NIH's "
                    "validation split; they do not apply to {dataset}=chexpert")
        elif self._given("uncertain_labels", "views"):
            raise ArgumentsError("{uncertain_labels} and {views} apply to {dataset}=chexpert")

    def _given(self, *names):
        """Whether any of the arguments was set: listed in `given`, or not at its default."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        return any(name in self.given or getattr(self, name) != defaults[name]
                   for name in names)
