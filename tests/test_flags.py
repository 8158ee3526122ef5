"""Tests for cxr_tf.flags: flagfile lookup and nesting, each app's flags generated from its
config class with one definition per shared option, and the one check of every value when the
config is built. Every app's flags go into a fresh FlagValues, so nothing here touches the
process's FLAGS."""

import os
import sys

import pytest
from absl import app as absl_app
from absl import flags as absl_flags

from cxr_tf import flags, options, schema
from cxr_tf.datasets.config import PrepareConfig, StatsConfig
from cxr_tf.evaluation.config import EvalConfig
from cxr_tf.runs.config import RunConfig
from cxr_tf.serving.config import ExportConfig, PredictConfig
from cxr_tf.synthetic.config import SyntheticConfig

APPS = ("synthetic", "prepare", "stats", "train", "evaluate", "export", "predict")
CONFIGS = {"synthetic": SyntheticConfig, "prepare": PrepareConfig, "stats": StatsConfig,
           "train": RunConfig, "evaluate": EvalConfig, "export": ExportConfig,
           "predict": PredictConfig}


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


def test_a_path_with_a_folder_is_read_from_there_never_from_the_packaged_configs(
        tmp_path, monkeypatch):
    # Issue: --flagfile=/home/u/exp/v7/recommended.cfg, a path that does not exist, loaded
    # the packaged recommended.cfg.
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "exp" / "v7" / "recommended.cfg"
    with pytest.raises(flags.FlagfileError) as e:
        flags.expand_flagfiles(["prog", f"--flagfile={missing}"])
    assert str(e.value) == (f"flagfile '{missing}' not found (looked in {missing}); a path "
                            "is read only from its folder: for the packaged recommended.cfg "
                            "give its bare name")
    with pytest.raises(flags.FlagfileError, match=r"^flagfile 'exp/demo.cfg' not found "
                                                  r"\(looked in exp/demo.cfg\); a path"):
        flags.expand_flagfiles(["prog", "--flagfile=exp/demo.cfg"])
    (tmp_path / "exp").mkdir()
    write(tmp_path / "exp" / "demo.cfg", "--epochs=9")
    assert flags.expand_flagfiles(["prog", "--flagfile=exp/demo.cfg"]) == ["prog", "--epochs=9"]
    assert flags.expand_flagfiles(["prog", "--flagfile=./exp/demo.cfg"]) == ["prog",
                                                                             "--epochs=9"]


def test_a_nested_path_with_a_folder_is_read_beside_its_includer_or_refused(tmp_path,
                                                                            monkeypatch):
    monkeypatch.chdir("/")
    (tmp_path / "common").mkdir()
    write(tmp_path / "common" / "base.cfg", "--seed=5")
    top = write(tmp_path / "top.cfg", "--flagfile=common/base.cfg", "--epochs=2")
    assert flags.expand_flagfiles(["prog", f"--flagfile={top}"]) == ["prog", "--seed=5",
                                                                     "--epochs=2"]
    write(top, "--flagfile=other/paper.cfg")
    with pytest.raises(flags.FlagfileError) as e:
        flags.expand_flagfiles(["prog", f"--flagfile={top}"])
    assert str(e.value) == (f"flagfile 'other/paper.cfg' not found (looked in other/paper.cfg, "
                            f"{tmp_path}/other/paper.cfg); a path is read only from its folder: "
                            "for the packaged paper.cfg give its bare name")


def test_a_byte_order_mark_is_ignored_and_text_that_is_not_utf8_is_refused(tmp_path):
    cfg = tmp_path / "bom.cfg"
    cfg.write_bytes(b"\xef\xbb\xbf--epochs=4\n# caf\xc3\xa9\n--seed=1\n")
    assert flags.expand_flagfiles(["prog", f"--flagfile={cfg}"]) == ["prog", "--epochs=4",
                                                                     "--seed=1"]
    assert parse("train", f"--flagfile={cfg}").epochs == 4
    cfg.write_bytes(b"--epochs=4\n# caf\xe9 (Latin-1)\n")
    with pytest.raises(flags.FlagfileError) as e:
        flags.expand_flagfiles(["prog", f"--flagfile={cfg}"])
    assert str(e.value) == f"flagfile {cfg}, line 2: not UTF-8 text (byte 0xe9)"


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

def describe(config_class, name):
    """What must agree between two apps' copies of an option (help may differ): its type,
    default, bounds, choices and checks."""
    for field, spec, kind in schema.specs(config_class):
        if field.name == name:
            return (kind, field.default, spec.lower, spec.upper, spec.choices, spec.convert,
                    spec.check)
    raise AssertionError(f"{config_class.__name__} has no field {name}")


def test_each_app_defines_exactly_its_configs_fields():
    for app, config_class in CONFIGS.items():
        fields = {field.name for field, spec, _ in schema.specs(config_class) if spec.flag}
        own = {"tf_logs"} | ({"json"} if app != "synthetic" else set()) | \
            ({"dry_run"} if app == "train" else set())
        assert set(app_flags(app)) == fields | own, app


def test_each_shared_flag_has_one_type_default_and_bound():
    defined = {app: app_flags(app) for app in APPS}
    owners = {}
    for app, fv in defined.items():
        for name in fv:
            owners.setdefault(name, []).append(app)
    shared = {name: apps for name, apps in owners.items() if len(apps) > 1}
    assert set(shared) == {"tf_logs", "json", "seed", "val_fraction", "data_dir", "output_dir",
                           "model_dir", "image_size", "batch_size", "checkpoint", "threshold",
                           "max_pixels", "overwrite", "verify_data"}
    assert shared["batch_size"] == ["train", "evaluate", "predict"]
    assert shared["verify_data"] == ["train", "evaluate"]
    assert shared["max_pixels"] == ["prepare", "export", "predict"]
    assert shared["overwrite"] == ["prepare", "train"]
    for name, apps in shared.items():
        if name in ("tf_logs", "json"):
            continue  # defined once, in flags.py
        kinds = {describe(CONFIGS[app], name)[2:] for app in apps}
        assert len(kinds) == 1, f"--{name} differs between {apps}: {kinds}"
        defaults = {app: defined[app][name].default for app in apps}
        if name == "image_size":  # the documented exceptions (see options.py)
            assert defaults == {"synthetic": 1024, "prepare": 224, "stats": None,
                                "train": 224}
        else:
            assert len(set(map(str, defaults.values()))) == 1, \
                f"--{name} defaults differ: {defaults}"
    assert describe(RunConfig, "image_size")[2] == options.MIN_IMAGE_SIZE == 32
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


# --- values checked once, when the app builds its config -----------------------------------

def build(app, *args):
    return flags.build_config(CONFIGS[app], parse(app, *args))


@pytest.mark.parametrize("app, arg, message", [
    ("train", "--learning_rate=nan", "flag --learning_rate=nan: must be a finite number"),
    ("train", "--learning_rate=inf", "flag --learning_rate=inf: must be a finite number"),
    ("train", "--learning_rate=0", "flag --learning_rate=0.0: must be > 0"),
    ("train", "--learning_rate=-0.1", "flag --learning_rate=-0.1: must be > 0"),
    ("train", "--weight_decay=nan", "flag --weight_decay=nan: must be a finite number"),
    ("train", "--warmup_epochs=-1", "flag --warmup_epochs=-1.0: must be at least 0.0"),
    ("train", "--thresholds=abc", "flag --thresholds=abc: must be numbers ('abc' is not)"),
    ("train", "--thresholds=", "flag --thresholds=: must hold at least one value"),
    ("train", "--thresholds=0.5,1", "flag --thresholds=0.5,1: must lie in (0, 1)"),
    ("train", "--image_size=16", "flag --image_size=16: must be at least 32"),
    ("prepare", "--image_size=1048577", "flag --image_size=1048577: must be at most 1048576"),
    ("train", "--steps_per_epoch=0", "flag --steps_per_epoch=0: must be at least 1"),
    # Issue: --seed=4294967296 and --batch_size=2**63 were tracebacks deep in numpy and TF.
    ("train", "--seed=4294967296", "flag --seed=4294967296: must be at most 4294967295"),
    ("train", f"--batch_size={2**63}", f"flag --batch_size={2**63}: must be at most "
                                       "2147483647"),
    ("train", "--epochs=2147483648", "flag --epochs=2147483648: must be at most 2147483647"),
    ("train", f"--steps_per_epoch={2**40}", f"flag --steps_per_epoch={2**40}: must be at most "
                                            "2147483647"),
    ("train", "--early_stop_patience=-1", "flag --early_stop_patience=-1: must be at least 0"),
    ("train", "--synthetic_num_images=100000000", "flag --synthetic_num_images=100000000: must "
                                                  "be at most 99999999"),
    ("evaluate", "--bootstrap=1000001", "flag --bootstrap=1000001: must be at most 1000000"),
    ("evaluate", f"--batch_size={2**31}", f"flag --batch_size={2**31}: must be at most "
                                          "2147483647"),
    ("predict", "--gradcam_top_k=16", "flag --gradcam_top_k=16: must be at most 15"),
    ("prepare", f"--seed={2**32}", f"flag --seed={2**32}: must be at most 4294967295"),
    ("prepare", "--num_workers=1025", "flag --num_workers=1025: must be at most 1024"),
    ("synthetic", "--num_images=0", "flag --num_images=0: must be at least 1"),
    ("train", "--synthetic_min_prevalence=1", "flag --synthetic_min_prevalence=1.0: must lie "
                                              "in [0, 1)"),
    ("prepare", "--val_fraction=nan", "flag --val_fraction=nan: must be a finite number"),
    ("prepare", "--num_workers=-1", "flag --num_workers=-1: must be at least 0"),
    ("predict", "--threshold=0", "flag --threshold=0.0: must lie in (0, 1)"),
    ("export", "--threshold=1", "flag --threshold=1.0: must lie in (0, 1)"),
    ("export", "--max_pixels=0", "flag --max_pixels=0: must be at least 1"),
    ("export", f"--max_pixels={2**40 + 1}", f"flag --max_pixels={2**40 + 1}: must be at most "
                                            "1099511627776"),
    ("evaluate", "--views=frontal,oblique", "flag --views=frontal,oblique: must be one of "
                                            "frontal, lateral"),
    ("evaluate", "--views=", "flag --views=: must name at least one of frontal, lateral"),
    ("synthetic", "--seed=-1", "flag --seed=-1: must be at least 0"),
])
def test_bad_values_are_usage_errors_naming_the_flag(app, arg, message):
    with pytest.raises(absl_app.UsageError) as e:
        build(app, arg)
    assert str(e.value) == message


def test_a_value_outside_an_enum_is_refused_when_parsed():
    with pytest.raises(absl_flags.IllegalFlagValueError, match=r"value should be one of "
                                                               r"<resnet18\|resnet34"):
        parse("train", "--arch=vgg16")


def test_good_values_pass():
    config = build("train", "--learning_rate=1e-4", "--thresholds=0.4,0.5,0.6",
                   "--synthetic_min_prevalence=0.05")
    assert (config.learning_rate, config.thresholds) == (1e-4, (0.4, 0.5, 0.6))
    assert build("predict", "--threshold=0.999").threshold == 0.999
    assert build("evaluate", "--model_dir=R", "--views=frontal,lateral", "--dataset=chexpert",
                 "--data_dir=D").views == ("frontal", "lateral")
