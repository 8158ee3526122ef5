"""Tests for cxr_tf.flags: flagfile lookup and nesting, one definition per shared flag, and
the checks run when flags are parsed. Every app's flags go into a fresh FlagValues, so
nothing here touches the process's FLAGS."""

import os
import sys

import pytest
from absl import flags as absl_flags

from cxr_tf import flags, schema
from cxr_tf.evaluation.config import EvalConfig

APPS = ("synthetic", "prepare", "stats", "train", "evaluate", "export", "predict")
# Apps whose flags are generated from a config's fields (flags.define_config): the config
# holds the bounds and checks them when it is built, so absl's parser has none.
FROM_CONFIG = {"evaluate": EvalConfig}


def app_flags(app):
    """A fresh FlagValues holding exactly `app`'s flags."""
    fv = absl_flags.FlagValues()
    getattr(flags, f"define_{app}_flags")(fv)
    return fv


def parse(app, *args):
    fv = app_flags(app)
    fv(flags.expand_flagfiles(["prog", *args]))
    return fv


def write(path, *lines):
    path.write_text("\n".join(lines) + "\n")
    return path


# --- flagfiles ----------------------------------------------------------------------------

def test_nested_flagfile_is_found_beside_its_includer_and_later_lines_win(tmp_path, monkeypatch):
    write(tmp_path / "base.cfg", "# the paper's values", "--epochs=50", "--learning_rate=0.01",
          "// absl's other comment", "--arch=resnet18")
    write(tmp_path / "child.cfg", "--flagfile=base.cfg", "--epochs=5")
    monkeypatch.chdir("/")  # base.cfg is not in the working directory: found beside child.cfg
    argv = flags.expand_flagfiles(["prog", f"--flagfile={tmp_path / 'child.cfg'}",
                                   "--learning_rate=0.5"])
    assert argv == ["prog", "--epochs=50", "--learning_rate=0.01", "--arch=resnet18",
                    "--epochs=5", "--learning_rate=0.5"]
    fv = app_flags("train")
    fv(argv)
    # The flagfile's own later line, then the command line, override the included file.
    assert (fv.epochs, fv.learning_rate, fv.arch) == (5, 0.5, "resnet18")


def test_flagfile_given_as_a_separate_argument(tmp_path):
    cfg = write(tmp_path / "a.cfg", "--epochs=3")
    assert flags.expand_flagfiles(["prog", "--flagfile", str(cfg)]) == ["prog", "--epochs=3"]


def test_packaged_flagfile_is_found_by_bare_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert flags.resolve_flagfile("thr05.cfg") == os.path.join(flags.CONFIG_DIR, "thr05.cfg")
    fv = parse("train", "--flagfile=thr05.cfg")
    # thr05.cfg is `--flagfile=paper.cfg` plus `--thresholds=0.5`; paper.cfg says 0.01.
    assert (fv.thresholds, fv.learning_rate) == (["0.5"], 0.01)


def test_a_file_in_the_working_directory_wins_over_a_packaged_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "demo.cfg", "--epochs=7")
    assert parse("train", "--flagfile=demo.cfg").epochs == 7


def test_missing_flagfile_names_every_place_looked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(flags.FlagfileError) as e:
        flags.expand_flagfiles(["prog", "--flagfile=nope.cfg"])
    assert str(e.value) == (f"flagfile 'nope.cfg' not found (looked in nope.cfg, "
                            f"{os.path.join(flags.CONFIG_DIR, 'nope.cfg')})")


def test_missing_nested_flagfile_names_the_includers_folder(tmp_path):
    cfg = write(tmp_path / "a.cfg", "--flagfile=gone.cfg")
    with pytest.raises(flags.FlagfileError, match=f"looked in gone.cfg, {tmp_path}/gone.cfg, "):
        flags.expand_flagfiles(["prog", f"--flagfile={cfg}"])


def test_flagfile_that_includes_itself_is_an_error_naming_the_cycle(tmp_path):
    a, b = tmp_path / "a.cfg", tmp_path / "b.cfg"
    write(a, "--epochs=1", "--flagfile=b.cfg")
    write(b, "--flagfile=a.cfg")
    with pytest.raises(flags.FlagfileError) as e:
        flags.expand_flagfiles(["prog", f"--flagfile={a}"])
    assert str(e.value) == f"flagfile {a} includes itself via {a} -> {b}"
    write(a, f"--flagfile={a}")
    with pytest.raises(flags.FlagfileError) as e:
        flags.expand_flagfiles(["prog", f"--flagfile={a}"])
    assert str(e.value) == f"flagfile {a} includes itself via {a}"


def test_a_flagfile_included_twice_without_a_cycle_is_fine(tmp_path):
    write(tmp_path / "common.cfg", "--seed=3")
    write(tmp_path / "x.cfg", "--flagfile=common.cfg")
    top = write(tmp_path / "top.cfg", "--flagfile=x.cfg", "--flagfile=common.cfg")
    assert flags.expand_flagfiles(["prog", f"--flagfile={top}"]) == ["prog", "--seed=3",
                                                                     "--seed=3"]


# --- one definition per flag --------------------------------------------------------------

def describe(flag, app=None):
    """What must agree between two apps' copies of a flag (help may differ)."""
    parser = flag.parser
    lower, upper = getattr(parser, "lower_bound", None), getattr(parser, "upper_bound", None)
    spec = {f.name: spec for f, spec, _ in schema.specs(FROM_CONFIG[app])}.get(flag.name) \
        if app in FROM_CONFIG else None
    if spec is not None:
        lower, upper = spec.lower, spec.upper
    return (type(flag).__name__, type(parser).__name__, lower, upper,
            tuple(getattr(parser, "enum_values", ())), flag.default)


def test_each_shared_flag_has_one_type_default_and_bound():
    defined = {app: app_flags(app) for app in APPS}
    owners = {}
    for app, fv in defined.items():
        for name in fv:
            owners.setdefault(name, []).append(app)
    shared = {name: apps for name, apps in owners.items() if len(apps) > 1}
    assert set(shared) == {"tf_logs", "json", "seed", "val_fraction", "data_dir", "output_dir",
                           "model_dir", "image_size", "batch_size", "checkpoint", "threshold",
                           "max_pixels", "overwrite"}
    assert shared["batch_size"] == ["train", "evaluate", "predict"]
    assert shared["max_pixels"] == ["prepare", "export", "predict"]
    assert shared["overwrite"] == ["prepare", "train"]
    for name, apps in shared.items():
        kinds = {describe(defined[app][name], app)[:-1] for app in apps}
        assert len(kinds) == 1, f"--{name} differs between {apps}: {kinds}"
        defaults = {app: defined[app][name].default for app in apps}
        if name == "image_size":  # the documented exceptions (see flags.py)
            assert defaults == {"synthetic": 1024, "prepare": 224, "stats": None,
                                "train": 224}
        else:
            assert len(set(defaults.values())) == 1, f"--{name} defaults differ: {defaults}"
    assert describe(defined["train"]["image_size"])[2] == 32
    assert defined["predict"]["batch_size"].default == 64


def test_defining_an_apps_flags_twice_fails_instead_of_keeping_the_first():
    fv = app_flags("train")
    with pytest.raises(absl_flags.DuplicateFlagError, match="learning_rate|tf_logs"):
        flags.define_train_flags(fv)


def test_importing_the_apps_defines_no_flag():
    import cxr_tf.evaluate  # noqa: F401
    import cxr_tf.export  # noqa: F401
    import cxr_tf.predict  # noqa: F401
    import cxr_tf.prepare  # noqa: F401
    import cxr_tf.stats  # noqa: F401
    import cxr_tf.synthetic.__main__  # noqa: F401
    import cxr_tf.train  # noqa: F401

    for app in APPS:
        for name in app_flags(app):
            assert name not in flags.FLAGS, f"importing the apps defined --{name}"


def test_train_flag_names_are_train_flags():
    assert set(flags.TRAIN_FLAG_NAMES) <= set(app_flags("train"))
    assert {"overwrite", "imagenet_weights"} <= set(flags.TRAIN_FLAG_NAMES)


def test_help_lists_the_running_apps_flags():
    fv = app_flags("export")
    text = fv.module_help(sys.argv[0])
    assert "--export_dir" in text and "--max_pixels" in text and "--learning_rate" not in text


def test_new_flags_and_their_defaults():
    train, evaluate = parse("train"), parse("evaluate")
    assert (train.overwrite, train.imagenet_weights) == (False, None)
    assert "resnet101_v1" in train["arch"].parser.enum_values
    assert (evaluate.dataset, evaluate.uncertain_labels, evaluate.views) == ("nih", "ignore",
                                                                             ["frontal"])
    assert parse("evaluate", "--views=frontal,lateral").views == ["frontal", "lateral"]
    for app in ("prepare", "export", "predict"):
        assert parse(app).max_pixels == 50_000_000


# --- values checked when parsed -----------------------------------------------------------

@pytest.mark.parametrize("app, arg, message", [
    ("train", "--learning_rate=nan", "flag --learning_rate=nan: must be a finite number, not nan"),
    ("train", "--learning_rate=inf", "flag --learning_rate=inf: must be a finite number, not inf"),
    ("train", "--learning_rate=0", "flag --learning_rate=0.0: must be a finite number > 0, "
                                   "not 0.0"),
    ("train", "--learning_rate=-0.1", "flag --learning_rate=-0.1: must be a finite number > 0, "
                                      "not -0.1"),
    ("train", "--weight_decay=nan", "flag --weight_decay=nan: must be a finite number, not nan"),
    ("train", "--warmup_epochs=-1", "flag --warmup_epochs=-1: -1.0 is not a non-negative "
                                    "number"),
    ("train", "--thresholds=abc", "flag --thresholds=['abc']: 'abc' is not a number"),
    ("train", "--thresholds=", "flag --thresholds=[]: give at least one threshold, e.g. 0.5 or "
                               "0.4,0.5,0.6"),
    ("train", "--thresholds=0.5,1", "flag --thresholds=['0.5', '1']: each threshold must lie in "
                                    "(0, 1), not 1"),
    ("train", "--image_size=16", "flag --image_size=16: 16 is not integer >= 32"),
    ("train", "--synthetic_min_prevalence=1", "flag --synthetic_min_prevalence=1.0: must lie "
                                              "in [0, 1), not 1.0"),
    ("prepare", "--val_fraction=nan", "flag --val_fraction=nan: must be a finite number, "
                                      "not nan"),
    ("prepare", "--num_workers=-1", "flag --num_workers=-1: -1 is not a non-negative integer"),
    ("predict", "--threshold=0", "flag --threshold=0.0: must lie in (0, 1), not 0.0"),
    ("export", "--threshold=1", "flag --threshold=1.0: must lie in (0, 1), not 1.0"),
    ("export", "--max_pixels=0", "flag --max_pixels=0: 0 is not a positive integer"),
    ("synthetic", "--seed=-1", "flag --seed=-1: -1 is not a non-negative integer"),
])
def test_bad_values_are_refused_when_parsed(app, arg, message):
    with pytest.raises(absl_flags.IllegalFlagValueError) as e:
        parse(app, arg)
    assert str(e.value) == message


def test_good_values_pass():
    fv = parse("train", "--learning_rate=1e-4", "--thresholds=0.4,0.5,0.6",
               "--synthetic_min_prevalence=0.05")
    assert (fv.learning_rate, fv.thresholds) == (1e-4, ["0.4", "0.5", "0.6"])
    assert parse("predict", "--threshold=0.999").threshold == 0.999
