"""Stage-3 config files: the original values, validation, and command-line overrides."""
import argparse
import json

import pytest

from lib.config import (SCHEMA, add_config_args, apply_overrides, config_from_args, load_config)
from lib.training import add_common_train_args

VOC = "voc/config_voc2012.py"


@pytest.fixture()
def voc(repo_root):
    return load_config(repo_root / VOC)


def test_voc_config_has_the_original_values(voc):
    assert voc["DATASET"] == "voc" and voc["NUM_CLASSES"] == 21
    assert voc["CROP"] == 448 and voc["RANDOM_SCALE"] == (0.5, 1.5) and voc["FLIP"] == 0.5
    assert voc["HSV"] == (10, 10, 10)
    assert (voc["LR"], voc["MOMENTUM"], voc["WEIGHT_DECAY"], voc["POWER"]) == (0.001, 0.9, 5e-4, 0.9)
    assert (voc["BATCH"], voc["ITERATIONS"], voc["BN_MOMENTUM"]) == (10, 20000, 0.0003)
    assert (voc["WORKERS"], voc["GPUS"]) == (4, 1)
    assert voc["TEST_SCALES"] == (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
    assert voc["TEST_FLIP"] is True and voc["TEST_CRF"] is True
    assert (voc["FSL_WEIGHT"], voc["FSL_MU"], voc["FSL_SIGMA"]) == (0.5, 2.5, 5.0)
    assert voc["IMAGENET_WEIGHTS"] == "pretrained/ilsvrc-cls_rna-a1_cls1000_ep-0001.params"
    assert voc["DATA_ROOT"] == "data/VOCdevkit/VOC2012" and voc["TRAIN_SPLIT"] == "train_aug"
    assert voc["BACKBONE_WIDTH"] == 1.0 and isinstance(voc["BACKBONE_WIDTH"], float)


@pytest.mark.parametrize("year", ["2014", "2017"])
def test_coco_configs_differ_from_voc_only_where_the_original_does(repo_root, voc, year):
    coco = load_config(repo_root / f"coco/config_coco{year}.py")
    assert coco["DATASET"] == "coco" and coco["NUM_CLASSES"] == 81
    assert coco["ITERATIONS"] == 200000 and coco["DATA_ROOT"] == "data/coco"
    assert (coco["TRAIN_SPLIT"], coco["VAL_SPLIT"]) == (f"train{year}", f"val{year}")
    differ = {k for k in SCHEMA if coco[k] != voc[k]}
    assert differ == {"DATASET", "NUM_CLASSES", "ITERATIONS", "DATA_ROOT", "TRAIN_SPLIT", "VAL_SPLIT"}


def test_overrides_are_coerced_to_the_declared_types(voc):
    out = apply_overrides(voc, ["LR=1", "ITERATIONS=100.0", "RANDOM_SCALE=[0.5, 2]",
                                "TEST_SCALES=(1,)", "TEST_FLIP=false", "TEST_CRF=0",
                                "DATA_ROOT=data/my voc", "IMAGENET_WEIGHTS=none", "HSV=(1,2,3)"])
    assert out["LR"] == 1.0 and type(out["LR"]) is float
    assert out["ITERATIONS"] == 100 and type(out["ITERATIONS"]) is int
    assert out["RANDOM_SCALE"] == (0.5, 2.0) and all(type(v) is float for v in out["RANDOM_SCALE"])
    assert out["TEST_SCALES"] == (1.0,)
    assert out["TEST_FLIP"] is False and out["TEST_CRF"] is False
    assert out["DATA_ROOT"] == "data/my voc"
    assert out["IMAGENET_WEIGHTS"] is None
    assert out["HSV"] == (1, 2, 3)
    assert voc["LR"] == 0.001 and voc["TEST_FLIP"] is True  # the input is not modified


@pytest.mark.parametrize("item, needle", [
    ("ITERATIONS=1.5", "ITERATIONS"),            # a fraction is not an int
    ("BATCH=True", "BATCH"),                     # a bool is not an int
    ("RANDOM_SCALE=(1.0,)", "2 values"),         # wrong tuple length
    ("TEST_SCALES=()", "at least one"),
    ("LR=fast", "LR"),                           # a bare word is a string, not a float
    ("TEST_FLIP=maybe", "TEST_FLIP"),
    ("HSV=(1.5,2,3)", "HSV"),
    ("LR", "KEY=VALUE"),
])
def test_bad_override_values_are_rejected(voc, item, needle):
    with pytest.raises(ValueError, match=needle):
        apply_overrides(voc, [item])


def test_unknown_override_key_lists_the_valid_keys(voc):
    with pytest.raises(ValueError) as e:
        apply_overrides(voc, ["ITERATION=5"])
    msg = str(e.value)
    assert "ITERATION" in msg and "ITERATIONS" in msg and "TEST_SCALES" in msg


def _write(tmp_path, text, name="cfg.py"):
    p = tmp_path / name
    p.write_text(text)
    return p


def _as_py(cfg, upper_names=False):
    if upper_names:
        return "\n".join(f"{k} = {v!r}" for k, v in cfg.items()) + "\n"
    return f"CONFIG = {cfg!r}\n"


def test_module_level_uppercase_names_and_config_dict_load_the_same(tmp_path, voc):
    a = load_config(_write(tmp_path, _as_py(voc), "a.py"))
    b = load_config(_write(tmp_path, "import math\n_hidden = 1\n" + _as_py(voc, True), "b.py"))
    assert a == voc and b == voc


def test_invalid_config_files_raise_errors_naming_the_file(tmp_path, voc):
    missing = {k: v for k, v in voc.items() if k != "CROP"}
    p = _write(tmp_path, _as_py(missing), "missing.py")
    with pytest.raises(ValueError, match=r"missing\.py.*CROP"):
        load_config(p)
    p = _write(tmp_path, _as_py({**voc, "CROPS": 3}), "extra.py")
    with pytest.raises(ValueError, match=r"extra\.py.*CROPS"):
        load_config(p)
    p = _write(tmp_path, _as_py({**voc, "BATCH": "ten"}), "badtype.py")
    with pytest.raises(ValueError, match=r"badtype\.py.*BATCH"):
        load_config(p)
    p = _write(tmp_path, "CONFIG = dict(\n", "syntax.py")
    with pytest.raises(ValueError, match=r"syntax\.py"):
        load_config(p)
    p = _write(tmp_path, _as_py({**voc, "DATASET": "cityscapes"}), "ds.py")
    with pytest.raises(ValueError, match="DATASET"):
        load_config(p)
    with pytest.raises(FileNotFoundError, match="nope.py"):
        load_config(tmp_path / "nope.py")


def test_recorded_json_run_config_round_trips(tmp_path, voc):
    p = tmp_path / "final.config.json"
    p.write_text(json.dumps({"lr": None, "config": voc}))  # tuples become JSON lists
    assert load_config(p) == voc


def _train_parser():
    p = argparse.ArgumentParser()
    add_common_train_args(p)  # defines --max_steps and --backbone_width with defaults of its own
    add_config_args(p)
    return p


def test_flags_override_config_only_when_given(repo_root):
    p = _train_parser()
    cfg = config_from_args(p.parse_args(["--config", str(repo_root / VOC)]))
    assert cfg["ITERATIONS"] == 20000 and cfg["BACKBONE_WIDTH"] == 1.0 and cfg["BATCH"] == 10
    args = p.parse_args(["--config", str(repo_root / VOC), "--max_steps", "7", "--lr", "0.5",
                         "--batch_size", "4", "--crop_size", "96", "--backbone_width", "0.125",
                         "--weights", "none", "--data_root", "/d",
                         "--set", "LR=0.25", "--set", "TEST_SCALES=(1.0, 2.0)"])
    cfg = config_from_args(args)
    assert cfg["ITERATIONS"] == 7 and cfg["BATCH"] == 4 and cfg["CROP"] == 96
    assert cfg["BACKBONE_WIDTH"] == 0.125 and cfg["IMAGENET_WEIGHTS"] is None
    assert cfg["DATA_ROOT"] == "/d"
    assert cfg["LR"] == 0.25  # --set is applied after the shorthand flags
    assert cfg["TEST_SCALES"] == (1.0, 2.0)


def test_effective_config_is_validated(repo_root):
    p = _train_parser()
    with pytest.raises(ValueError, match="FLIP"):
        config_from_args(p.parse_args(["--config", str(repo_root / VOC), "--set", "FLIP=2"]))
    with pytest.raises(ValueError, match="BATCH"):
        config_from_args(p.parse_args(["--config", str(repo_root / VOC), "--batch_size", "0"]))
