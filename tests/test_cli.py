"""The shared command-line vocabulary (lib/cli.py): every old name of a flag parses to the same
namespace as its canonical name, the demo/from-scratch options sit in their own group, and the
flags the runners pass parse in every script."""
from __future__ import annotations

import argparse

import pytest

from lib.cli import NOT_IN_PAPER
from lib.config import config_from_args
from lib.training import config_differences, renamed_flags, run_config
from stage1_cam import infer_cam, train_cam
from stage2_aff import infer_aff, train_aff
from stage3_seg import infer_seg, train_seg
from test_interrupted_runs import calls, run_runner  # the runner with a recording python stub
from tools import evaluate
from tools.data import make_cls_labels, make_train_aug, process_coco

# script -> (parse(argv), the arguments it requires)
SCRIPTS = {
    "train_cam": (train_cam.parse_args, ["--data_root", "d"]),
    "infer_cam": (infer_cam.parse_args, ["--data_root", "d", "--weights", "w", "--out_cam", "o"]),
    "train_aff": (train_aff.parse_args, ["--data_root", "d", "--la_crf_dir", "a",
                                         "--ha_crf_dir", "b"]),
    "infer_aff": (infer_aff.parse_args, ["--data_root", "d", "--weights", "w", "--cam_dir", "c",
                                         "--out_rw", "o"]),
    "train_seg": (train_seg.parse_args, ["--config", "c.py", "--pseudo_gt", "p",
                                         "--session_name", "s"]),
    "infer_seg": (infer_seg.parse_args, ["--weights", "w", "--out_pred", "o"]),
    "evaluate": (lambda argv: evaluate.build_parser().parse_args(argv),
                 ["--pred_dir", "p", "--gt_dir", "g", "--list", "l", "--num_classes", "2"]),
}

# (script, the canonical spelling, the old spelling): both must give the same namespace.
ALIASES = [
    *[(s, ["--data_root", "root2"], ["--voc12_root", "root2"])
      for s in ("train_cam", "infer_cam", "train_aff", "infer_aff", "train_seg", "infer_seg")],
    *[(s, ["--crop_size", "96"], ["--crop", "96"]) for s in ("train_cam", "train_aff", "train_seg")],
    *[(s, ["--num_workers", "3"], ["--workers", "3"])
      for s in ("train_cam", "infer_cam", "train_aff", "infer_aff", "train_seg")],
    *[(s, ["--wt_dec", "0.1"], ["--weight_decay", "0.1"])
      for s in ("train_cam", "train_aff", "train_seg")],
    *[(s, ["--no-color_jitter"], ["--no_color_jitter"]) for s in ("train_cam", "train_aff")],
    *[(s, ["--no-fsl"], ["--no_fsl"]) for s in ("train_cam", "train_seg")],
    *[(s, ["--no-flip"], ["--no_flip"]) for s in ("infer_cam", "infer_seg")],
    ("infer_seg", ["--no-crf"], ["--no_crf"]),
    ("infer_seg", ["--crf_workers", "5"], ["--workers", "5"]),
    ("infer_seg", ["--infer_list", "train"], ["--split", "train"]),
    ("infer_seg", ["--infer_list", "a/l.txt"], ["--list", "a/l.txt"]),
    ("infer_seg", ["--out_pred", "o2"], ["--out_dir", "o2"]),
    ("evaluate", ["--eval_workers", "3"], ["--workers", "3"]),
    ("evaluate", ["--no-progress"], ["--no_progress"]),
]


@pytest.mark.parametrize("script, canonical, old", ALIASES,
                         ids=[f"{s}:{o[0]}" for s, _, o in ALIASES])
def test_an_old_flag_name_parses_like_the_canonical_one(script, canonical, old):
    parse, required = SCRIPTS[script]
    default = vars(parse(required))
    new = vars(parse([*required, *canonical]))
    assert new != default  # the flag does something, so the comparison below can fail
    assert vars(parse([*required, *old])) == new


@pytest.mark.parametrize("main, argv, dest, value", [
    (make_cls_labels, ["--voc_root", "r"], "data_root", "r"),
    (make_train_aug, ["--voc_root", "r", "--no_check_images"], "check_images", False),
    (process_coco, ["--coco_root", "r", "--split", "x", "--no_progress"], "progress", False),
])
def test_tools_accept_their_old_flag_names(monkeypatch, main, argv, dest, value):
    seen = {}

    def stop(self, args=None, namespace=None):
        seen.update(vars(real(self, args, namespace)))
        raise SystemExit(0)

    real = argparse.ArgumentParser.parse_args
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", stop)
    with pytest.raises(SystemExit):
        main.main(argv)
    assert seen[dest] == value


def test_old_boolean_spellings_are_hidden_from_help(capsys):
    with pytest.raises(SystemExit):
        train_cam.parse_args(["--help"])
    text = capsys.readouterr().out
    assert "--no-color_jitter" in text and "--no_color_jitter" not in text
    assert "--no-fsl" in text and "--no_fsl" not in text


@pytest.mark.parametrize("script, flags", [
    ("train_cam", {"--dropout", "--optimizer", "--lr_mults", "--frozen_bn", "--rv_pooling",
                   "--view2_scale", "--loss_weight_warmup", "--fsl_align_corners"}),
    ("train_aff", {"--dropout", "--optimizer", "--lr_mults", "--frozen_bn", "--resize_long"}),
    ("infer_cam", {"--cam_source", "--cam_power"}),
    ("infer_aff", {"--crf", "--crf_iters"}),
    ("train_seg", {"--dropout", "--optimizer", "--lr_mults", "--bn_momentum",
                   "--fsl_align_corners"}),
])
def test_demo_options_sit_in_the_not_in_the_paper_group(monkeypatch, script, flags):
    parsers = []
    real = argparse.ArgumentParser.parse_args
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args",
                        lambda self, *a, **k: parsers.append(self) or real(self, *a, **k))
    parse, required = SCRIPTS[script]
    defaults = vars(parse(required))
    group = [g for g in parsers[0]._action_groups if g.title == NOT_IN_PAPER]
    assert len(group) == 1
    grouped = {o for a in group[0]._group_actions for o in a.option_strings if o.startswith("--")}
    assert flags <= grouped
    # the paper's flags stay outside it
    assert not grouped & {"--lr", "--batch_size", "--weights", "--fsl", "--data_root"}
    assert defaults.get("optimizer", "sgd") == "sgd" and defaults.get("dropout", True) is True


PARSERS = {"stage1_cam.train_cam": train_cam.parse_args, "stage1_cam.infer_cam": infer_cam.parse_args,
           "stage2_aff.train_aff": train_aff.parse_args, "stage2_aff.infer_aff": infer_aff.parse_args,
           "stage3_seg.train_seg": train_seg.parse_args, "stage3_seg.infer_seg": infer_seg.parse_args,
           "tools.evaluate": lambda argv: evaluate.build_parser().parse_args(argv)}


@pytest.mark.parametrize("regime", ["scratch", "paper"])
def test_every_flag_of_the_demo_runner_parses(tmp_path, regime, repo_root):
    """run_all_demo.sh with a python stub records every command; each one parses, and stage 3's
    flags give the config its old ``--set`` spelling gave."""
    r = run_runner(tmp_path, "run_all_demo.sh", DEMO_REGIME=regime)
    assert r.returncode == 0, r.stderr
    parsed = {}
    for call in calls(tmp_path):
        if call[0] == "-m" and call[1] in PARSERS:
            parsed.setdefault(call[1], []).append(PARSERS[call[1]](call[2:]))
    assert set(parsed) == set(PARSERS)
    seg = parsed["stage3_seg.train_seg"][0]
    seg.config = str(repo_root / seg.config)
    cfg = config_from_args(seg)
    # the paper regime trains stage 3 for 600 steps on crops scaled by 1-2 (docs/DEMO.md,
    # deviation 3); the scratch regime keeps 800 steps and the config's 0.5-1.5
    steps, scale = (600, (1.0, 2.0)) if regime == "paper" else (800, (0.5, 1.5))
    assert (cfg["BACKBONE_WIDTH"], cfg["CROP"], cfg["BATCH"], cfg["WORKERS"],
            cfg["ITERATIONS"], cfg["RANDOM_SCALE"]) == (0.125, 96, 8, 1, steps, scale)
    # both regimes train stage 3 with the scratch recipe (docs/DEMO.md says why)
    assert (cfg["LR"], cfg["BN_MOMENTUM"], seg.optimizer, seg.dropout) == (0.001, 0.1, "adamw", False)
    if regime == "paper":                            # the paper's stage-1 and stage-2 training flags
        cam = parsed["stage1_cam.train_cam"][0]
        assert (cam.loss_weight, cam.fsl, cam.rv_pooling, cam.frozen_bn, cam.optimizer) == (
            0.8, True, "max", True, "sgd")
        aff = parsed["stage2_aff.infer_aff"][0]
        assert (aff.upscale, aff.logt, aff.crf) == (2, 3, True)
    assert {a.backbone_width for a in parsed["stage3_seg.infer_seg"]} == {0.125}
    assert {a.crf_workers for a in parsed["stage3_seg.infer_seg"]} == {2}


def test_a_state_recorded_with_the_old_flag_names_still_resumes():
    now = run_config(train_cam.parse_args(["--data_root", "d", "--no-color_jitter",
                                           "--crop_size", "96"]))
    old = dict(now)
    old["voc12_root"] = old.pop("data_root")
    old["no_color_jitter"] = not old.pop("color_jitter")
    old["crop"] = old.pop("crop_size")
    assert len(config_differences(old, now)) == 6  # without the translation, all differ
    assert config_differences(renamed_flags(old), now) == []
    old["no_color_jitter"] = False  # a different setting is still reported
    assert config_differences(renamed_flags(old), now) == ["color_jitter: state True, now False"]
