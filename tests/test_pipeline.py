"""End-to-end: the demo runner on a tiny synthetic set, results.json, and idempotent reruns."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

TINY = {"DEMO_NUM_TRAIN": "8", "DEMO_NUM_VAL": "4", "DEMO_SIZE": "64", "DEMO_WIDTH": "0.0625",
        "DEMO_CAM_STEPS": "2", "DEMO_AFF_STEPS": "2", "DEMO_SEG_STEPS": "2", "DEMO_BATCH": "2",
        "OMP_NUM_THREADS": "1", "EVAL_WORKERS": "1",
        "DEMO_WEIGHTS": "none"}  # the paper regime's flags from random init: the plumbing, fast


def run_demo(expdir: Path, **extra) -> subprocess.CompletedProcess:
    env = {**os.environ, **TINY, "EXPDIR": str(expdir), "PYTHON": sys.executable, **extra}
    return subprocess.run(["bash", "run_all_demo.sh"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    expdir = tmp_path_factory.mktemp("demo")
    first = run_demo(expdir)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    return expdir, first


def test_results_json_schema(demo):
    expdir, first = demo
    res = json.loads((expdir / "results.json").read_text())
    for key in ("cam", "crf", "rw", "final"):
        for metric in ("miou", "contour_f"):
            v = res[key][metric]
            assert isinstance(v, float) and 0.0 <= v <= 1.0, (key, metric, v)
        # The demo scores the final network on val only (FINAL_EVAL_TRAIN=0), as the paper does.
        if key == "final":
            assert res[key]["train"] is None
        else:
            assert res[key]["train"]["num_images"] == 8
    assert set(res["wall_time_s"]) == {"stage1", "stage2", "stage3", "total"}
    assert res["wall_time_s"]["total"] == pytest.approx(
        sum(res["wall_time_s"][f"stage{i}"] for i in (1, 2, 3)))
    # The printed table carries the same numbers as results.json (in percent).
    assert f"{100 * res['final']['miou']:6.2f}" in first.stdout


def test_demo_notes_a_final_miou_below_its_target(demo):
    """The demo prints a note when the final val mIoU misses TARGET_MIOU (0.70 by default)."""
    expdir, first = demo
    miou = json.loads((expdir / "results.json").read_text())["final"]["miou"]
    assert miou < 0.70  # 2 steps per stage on 8 images
    assert f"note: the final val mIoU, {100 * miou:.2f} %, is below the target of 70.00 %" in first.stdout
    # ... after the per-class table that says which class each stage lost.
    final = json.loads((expdir / "eval" / "final_val.json").read_text())["per_class_iou"]
    table = first.stdout[first.stdout.index("per-class IoU on val (%)"):first.stdout.index("note:")]
    assert len(table.strip().splitlines()) == 3 + len(final)   # title, header, rule, a row per class
    for name, iou in final.items():
        assert f"{100 * iou:8.2f}\n" in table.split(f"\n{name:<16}", 1)[1][:42]


def test_per_class_table(tmp_path, capsys):
    """Rows are classes, columns the evaluated stages in pipeline order; a missing stage has no
    column and a class missing from one stage's file shows '-'."""
    from tools.collect_results import main, per_class_table

    assert per_class_table(tmp_path) is None
    (tmp_path / "eval").mkdir()
    for key, ious in {"final": {"background": 0.9648, "triangle": 0.0766},
                      "cam": {"background": 0.8964, "triangle": 0.2712},
                      "rw": {"background": 0.8629}}.items():
        (tmp_path / "eval" / f"{key}_val.json").write_text(json.dumps(
            {"per_class_iou": ious, "miou": 0.5, "contour_f": 0.5, "num_images": 2}))
    assert per_class_table(tmp_path).splitlines() == [
        "per-class IoU on val (%)",
        "class                cam      rw   final",
        "-" * 40,
        "background         89.64   86.29   96.48",
        "triangle           27.12       -    7.66"]
    main(["--expdir", str(tmp_path)])                      # above no target: no table
    assert "per-class" not in capsys.readouterr().out
    main(["--expdir", str(tmp_path), "--per_class"])
    assert "triangle           27.12       -    7.66" in capsys.readouterr().out


def test_target_note():
    from tools.collect_results import target_note

    res = {"final": {"miou": 0.6543, "contour_f": 0.5}}
    note = target_note(res, 0.70)
    assert note.startswith("note: the final val mIoU, 65.43 %, is below the target of 70.00 %")
    assert target_note(res, 0.6543) is None      # reaching the target is not missing it
    assert target_note(res, 0.60) is None
    assert target_note(res, None) is None
    assert target_note({"final": {"miou": None, "contour_f": None}}, 0.70) is None  # no stage 3


def test_every_stage_wrote_its_artifacts(demo):
    expdir, _ = demo
    val_ids = (expdir / "data/synthetic/ImageSets/Segmentation/val.txt").read_text().split()
    for sub in ("plabels/val/cam", "plabels/val/crf/alpha_2.0", "plabels/val/crf/alpha_4.0"):
        assert sorted(p.stem for p in (expdir / sub).glob("*.npz")) == sorted(val_ids), sub
    for sub in ("plabels/val/rw", "results/val"):
        assert sorted(p.stem for p in (expdir / sub).glob("*.png")) == sorted(val_ids), sub
    for ck in ("cam", "aff", "final"):
        assert (expdir / "ckpts" / f"{ck}.pth").is_file()
    assert len(list((expdir / "logs").glob("*.log"))) >= 15


def test_second_run_skips_every_step(demo):
    expdir, first = demo
    ran = [l.split()[2] for l in first.stdout.splitlines() if l.startswith("[run ]")]
    assert len(ran) == 15            # 6 per stage 1 / 2 (train, 2 infers, 3-4 evals), 3 in stage 3
    mtimes = {p: p.stat().st_mtime_ns for p in (expdir / "ckpts").glob("*.pth")}
    second = run_demo(expdir)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "[run ]" not in second.stdout
    skipped = [l.split()[1] for l in second.stdout.splitlines() if l.startswith("[skip]")]
    assert skipped == ran
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    assert (expdir / "results.json").is_file()


def test_stages_variable_reruns_only_the_named_stage(demo):
    expdir, _ = demo
    (expdir / ".done" / "eval_final_val").unlink()
    out = run_demo(expdir, STAGES="3")
    assert out.returncode == 0, out.stderr[-2000:]
    ran = [l.split()[2] for l in out.stdout.splitlines() if l.startswith("[run ]")]
    assert ran == ["eval_final_val"]
    assert "train_cam" not in out.stdout  # stages 1 and 2 are not even visited


def test_final_eval_train_adds_the_train_split(demo, tmp_path):
    """FINAL_EVAL_TRAIN=1 also runs the final network on the train split and scores it; any other
    value than 0 or 1 is refused before a step runs."""
    expdir, first = demo
    assert "infer_seg_train" not in first.stdout
    both = tmp_path / "both"
    shutil.copytree(expdir, both)
    out = run_demo(both, STAGES="3", FINAL_EVAL_TRAIN="1")
    assert out.returncode == 0, out.stderr[-2000:]
    ran = [l.split()[2] for l in out.stdout.splitlines() if l.startswith("[run ]")]
    assert ran == ["infer_seg_train", "eval_final_train"]
    train_ids = (both / "data/synthetic/ImageSets/Segmentation/train.txt").read_text().split()
    assert sorted(p.stem for p in (both / "results/train").glob("*.png")) == sorted(train_ids)
    assert json.loads((both / "results.json").read_text())["final"]["train"]["num_images"] == 8

    bad = run_demo(both, STAGES="3", FINAL_EVAL_TRAIN="yes")
    assert bad.returncode == 2 and "FINAL_EVAL_TRAIN must be 0 or 1, not 'yes'" in bad.stderr


def test_demo_stage_3_scales_its_crops_up(demo):
    """The paper regime trains stage 3 on crops scaled by 1-2 (docs/DEMO.md, deviation 3), not
    the config's 0.5-1.5."""
    expdir, _ = demo
    config = json.loads((expdir / "ckpts/final.config.json").read_text())["config"]
    assert config["RANDOM_SCALE"] == [1.0, 2.0]
    assert config["CROP"] == 64


def test_seg_labels_picks_stage_3_pseudo_labels(demo, tmp_path):
    """The demo trains stage 3 on the random walk (SEG_LABELS=rw, the paper's pipeline);
    SEG_LABELS=crf trains it on the alpha-4 CRF maps, as label PNGs equal to the CRF argmax."""
    from lib.io import crf_to_label, load_crf, load_label_png

    expdir, first = demo
    assert "crf_labels" not in first.stdout
    assert json.loads((expdir / "ckpts/final.config.json").read_text())["pseudo_gt"] == \
        str(expdir / "plabels/train/rw")

    rw = tmp_path / "rw"
    shutil.copytree(expdir, rw)
    for done in (rw / ".done").iterdir():
        if "seg" in done.name or "final" in done.name:
            done.unlink()
    out = run_demo(rw, STAGES="3", SEG_LABELS="crf")
    assert out.returncode == 0, out.stderr[-2000:]
    crf_png = rw / "plabels/train/crf_labels/alpha_4.0"
    assert "[run ] crf_labels" in out.stdout
    assert json.loads((rw / "ckpts/final.config.json").read_text())["pseudo_gt"] == str(crf_png)
    for npz in sorted((rw / "plabels/train/crf/alpha_4.0").glob("*.npz")):
        assert (load_label_png(crf_png / f"{npz.stem}.png") == crf_to_label(*load_crf(npz))).all()

    bad = run_demo(rw, STAGES="3", SEG_LABELS="cam")
    assert bad.returncode == 2 and "SEG_LABELS must be rw or crf, not 'cam'" in bad.stderr


def test_failed_step_stops_the_runner_with_its_log(tmp_path):
    env_extra = {"DEMO_CAM_TRAIN_ARGS": "--no_such_flag"}
    out = run_demo(tmp_path / "bad", **env_extra)
    assert out.returncode != 0
    assert "[FAIL] train_cam" in out.stderr and "--no_such_flag" in out.stderr
    assert not (tmp_path / "bad" / ".done" / "train_cam").exists()


def test_demo_seed_reaches_every_training(demo, tmp_path):
    expdir, _ = demo
    for ck in ("cam", "aff", "final"):
        assert json.loads((expdir / "ckpts" / f"{ck}.config.json").read_text())["seed"] == 0, ck
    out = run_demo(tmp_path / "seed7", DEMO_SEED="7", STAGES="1")
    assert out.returncode == 0, out.stderr[-2000:]
    config = json.loads((tmp_path / "seed7/ckpts/cam.config.json").read_text())
    assert config["seed"] == 7
    # Another seed is another initialisation: the trained weights differ from the seed-0 run's.
    a = torch.load(expdir / "ckpts/cam.pth", weights_only=True)
    b = torch.load(tmp_path / "seed7/ckpts/cam.pth", weights_only=True)
    assert a.keys() == b.keys()
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())


def test_a_changed_training_flag_redoes_the_stage_and_its_outputs(demo, tmp_path):
    """Issue 26, case 1: a rerun with another DEMO_CAM_STEPS redoes train_cam and rewrites
    every CAM (not '8 of 8 images already done' next to a new cam.pth); stage 2-3 results made
    from the old CAMs leave the results table."""
    expdir, _ = demo
    copy = tmp_path / "changed"
    shutil.copytree(expdir, copy)
    cams = {p: p.stat().st_mtime_ns for p in (copy / "plabels/train/cam").glob("*.npz")}
    out = run_demo(copy, STAGES="1", DEMO_CAM_STEPS="3")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "[redo] train_cam (--max_steps 2 -> 3)" in out.stdout
    ran = [l.split()[2] for l in out.stdout.splitlines() if l.startswith("[run ]")]
    assert ran[:3] == ["train_cam", "infer_cam_val", "infer_cam_train"]
    assert "infer_cam: 0 of 8 images already done" in (copy / "logs/infer_cam_train.log").read_text()
    assert all(p.stat().st_mtime_ns != t for p, t in cams.items())
    assert json.loads((copy / "ckpts/cam.config.json").read_text())["max_steps"] == 3
    res = json.loads((copy / "results.json").read_text())
    assert res["rw"]["miou"] is None and res["final"]["miou"] is None
    assert not (copy / ".done/train_seg").exists()
