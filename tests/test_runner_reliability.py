"""The runner's reliability (issue 26): a step's marker records its command and inputs, so a
rerun never reports a result of another configuration; one run per EXPDIR; the caller's paths;
runner variables checked before the first step. The runner's control flow with the recording
python stand-in of test_interrupted_runs (nothing is trained)."""
from __future__ import annotations

from pathlib import Path

import pytest

from test_interrupted_runs import calls, module_call, run_runner  # noqa: E402

ALL_STEPS = ["train_cam", "infer_cam_val", "infer_cam_train_aug", "eval_cam_val", "eval_crf_val",
             "eval_cam_train", "eval_crf_train", "train_aff", "infer_aff_val",
             "infer_aff_train_aug", "eval_rw_val", "eval_rw_train", "train_seg", "infer_seg_val",
             "eval_final_val", "infer_seg_train", "eval_final_train"]


def ran(r) -> list[str]:
    return [line.split()[2] for line in r.stdout.splitlines() if line.startswith("[run ]")]


def tagged(r, tag: str) -> list[str]:
    return [line.split()[1] for line in r.stdout.splitlines() if line.startswith(f"[{tag}]")]


def module_calls(tmp_path: Path) -> list[list[str]]:
    return [c for c in calls(tmp_path) if c[0] == "-m"]


def fresh(tmp_path: Path) -> None:
    for p in (tmp_path / "calls").iterdir():
        p.unlink()


def first_run(tmp_path: Path, **env):
    r = run_runner(tmp_path, **env)
    assert r.returncode == 0, r.stderr
    assert ran(r) == (ALL_STEPS[:7] if env.get("STAGES") == "1" else ALL_STEPS)
    fresh(tmp_path)
    return r


# --------------------------------------------------------------------------- provenance


def test_marker_records_the_command_and_a_rerun_skips_it(tmp_path):
    first_run(tmp_path, CAM_TRAIN_ARGS="--max_steps 2")
    marker = (tmp_path / "exp/.done/train_cam").read_text().splitlines()
    assert marker[0] == "# icam step marker v1"
    assert "arg --max_steps" in marker and "arg 2" in marker
    assert any(line.startswith("# ran:") and "stage1_cam.train_cam" in line for line in marker)
    again = run_runner(tmp_path, CAM_TRAIN_ARGS="--max_steps 2")
    assert again.returncode == 0, again.stderr
    assert ran(again) == [] and tagged(again, "skip") == ALL_STEPS
    assert module_calls(tmp_path) == [["-m", "tools.collect_results", *module_calls(tmp_path)[0][2:]]]


def test_changed_flag_redoes_the_step_and_everything_after_it(tmp_path):
    """Case 1: a changed CAM_TRAIN_ARGS redoes train_cam and every later step, and the inference
    steps overwrite their old per-image outputs (case 1b)."""
    first_run(tmp_path, CAM_TRAIN_ARGS="--max_steps 2")
    r = run_runner(tmp_path, CAM_TRAIN_ARGS="--max_steps 3 --dropout")
    assert r.returncode == 0, r.stderr
    assert "[redo] train_cam (--max_steps 2 -> 3; --dropout added)" in r.stdout
    assert ran(r) == ALL_STEPS
    assert set(tagged(r, "redo")) == set(ALL_STEPS)
    for module in ("stage1_cam.infer_cam", "stage2_aff.infer_aff", "stage3_seg.infer_seg"):
        assert "--overwrite" in module_call(tmp_path, module), module
    # A flag dropped again is a change too.
    fresh(tmp_path)
    r = run_runner(tmp_path, CAM_TRAIN_ARGS="--max_steps 3")
    assert "[redo] train_cam (--dropout removed)" in r.stdout and ran(r) == ALL_STEPS


def test_on_change_stop_names_the_step_and_flags_and_runs_nothing(tmp_path):
    first_run(tmp_path, AFF_INFER_ARGS="--beta 8")
    before = {p.name: p.read_bytes() for p in (tmp_path / "exp/.done").iterdir()}
    r = run_runner(tmp_path, AFF_INFER_ARGS="--beta 10", ON_CHANGE="stop")
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("infer_aff_val: its command or inputs changed")
    assert "--beta 8 -> 10" in err[0] and "ON_CHANGE=redo" in err[0]
    assert module_calls(tmp_path) == [] and ran(r) == []
    assert {p.name: p.read_bytes() for p in (tmp_path / "exp/.done").iterdir()} == before


def test_on_change_keep_records_the_new_command_and_keeps_the_results(tmp_path):
    first_run(tmp_path, SEG_INFER_ARGS="--crf_workers 2")
    r = run_runner(tmp_path, SEG_INFER_ARGS="--crf_workers 14", ON_CHANGE="keep")
    assert r.returncode == 0, r.stderr
    # What reads the kept steps' results is kept too (its record names theirs).
    assert ran(r) == [] and tagged(r, "keep") == ALL_STEPS[-4:]
    assert "--crf_workers 2 -> 14" in r.stdout
    assert "arg 14" in (tmp_path / "exp/.done/infer_seg_val").read_text()
    fresh(tmp_path)
    r = run_runner(tmp_path, SEG_INFER_ARGS="--crf_workers 14")
    assert r.returncode == 0 and ran(r) == []


def test_a_keep_marker_keeps_its_step_whatever_changed(tmp_path):
    """`echo keep > .done/train_cam`: e.g. a released cam.pth copied into ckpts/."""
    first_run(tmp_path)
    (tmp_path / "exp/.done/train_cam").write_text("keep\n")
    r = run_runner(tmp_path, CAM_TRAIN_ARGS="--max_steps 99")
    assert r.returncode == 0, r.stderr
    assert "[skip] train_cam (kept:" in r.stdout
    # The keep marker's record is not the earlier one: what read train_cam's result is redone.
    assert ran(r) == ALL_STEPS[1:]


def test_a_changed_upstream_checkpoint_redoes_its_readers(tmp_path):
    """Inputs are identified by content: a new cam.pth (its sha256) redoes infer_cam even
    with the same command and train_cam's marker in place."""
    ckpts = tmp_path / "exp/ckpts"
    ckpts.mkdir(parents=True)
    (ckpts / "cam.pth").write_bytes(b"weights A")
    first_run(tmp_path, STAGES="1")
    (ckpts / "cam.pth").write_bytes(b"weights B")
    r = run_runner(tmp_path, STAGES="1")
    assert r.returncode == 0, r.stderr
    assert "[skip] train_cam" in r.stdout
    assert ran(r) == ALL_STEPS[1:7]
    assert "input $EXPDIR/ckpts/cam.pth changed (sha256" in r.stdout


def test_markers_made_from_a_redone_step_go_stale_outside_the_stages_run(tmp_path):
    """STAGES=1 with a new stage-1 flag: stage 2-3 markers and evaluations from the old CAMs
    are removed (the results table never shows them next to the new ones), and a later run of
    those stages redoes them with --overwrite."""
    first_run(tmp_path)
    evals = tmp_path / "exp/eval"
    for name in ("cam_val", "rw_val", "final_val"):
        (evals / f"{name}.json").write_text("{}")
    r = run_runner(tmp_path, STAGES="1", CAM_INFER_ARGS="--cam_power 2")
    assert r.returncode == 0, r.stderr
    assert ran(r) == ALL_STEPS[1:7]
    stale = [line for line in r.stdout.splitlines() if line.startswith("[stale]")]
    assert len(stale) == 1 and all(s in stale[0] for s in ALL_STEPS[7:])
    assert sorted(p.name for p in (tmp_path / "exp/.done").iterdir()) == sorted(ALL_STEPS[:7])
    assert not (evals / "rw_val.json").exists() and not (evals / "final_val.json").exists()
    fresh(tmp_path)
    r = run_runner(tmp_path, STAGES="2 3", CAM_INFER_ARGS="--cam_power 2")
    assert r.returncode == 0 and ran(r) == ALL_STEPS[7:]
    assert "--overwrite" in module_call(tmp_path, "stage2_aff.infer_aff")


def test_markers_of_an_earlier_version_need_an_explicit_choice(tmp_path):
    first_run(tmp_path)
    for m in (tmp_path / "exp/.done").iterdir():
        m.write_text("")                                     # `touch`ed by an earlier version
    r = run_runner(tmp_path)
    assert r.returncode == 2 and ran(r) == []
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("train_cam: ") and "earlier version" in err[0]
    assert "ON_CHANGE=redo" in err[0] and "ON_CHANGE=keep" in err[0]
    kept = run_runner(tmp_path, ON_CHANGE="keep")
    assert kept.returncode == 0 and ran(kept) == [] and tagged(kept, "keep") == ALL_STEPS
    assert run_runner(tmp_path).returncode == 0                # adopted: recorded now
    for m in (tmp_path / "exp/.done").iterdir():
        m.write_text("")
    fresh(tmp_path)
    redo = run_runner(tmp_path, ON_CHANGE="redo")
    assert redo.returncode == 0 and ran(redo) == ALL_STEPS
    assert "--overwrite" in module_call(tmp_path, "stage1_cam.infer_cam")


def test_an_interrupted_inference_resumes_without_overwrite(tmp_path):
    """Only a step's own interrupted run (same record) keeps its per-image outputs."""
    cams = tmp_path / "exp/plabels/val/cam"
    cams.mkdir(parents=True)
    (cams / "old.npz").write_bytes(b"a CAM of an earlier configuration")
    r = run_runner(tmp_path, STAGES="1", FAKE_FAIL="stage1_cam.infer_cam")
    assert r.returncode == 1 and "[FAIL] infer_cam_val" in r.stderr
    assert "--overwrite" in module_call(tmp_path, "stage1_cam.infer_cam")   # a first run
    assert not cams.exists()                       # ... starts from no outputs at all
    cams.mkdir(parents=True)
    (cams / "mine.npz").write_bytes(b"written by the interrupted run")
    fresh(tmp_path)
    r = run_runner(tmp_path, STAGES="1")
    assert r.returncode == 0, r.stderr
    assert [p.name for p in cams.iterdir()] == ["mine.npz"]
    infer = {c[c.index("--infer_list") + 1]: c for c in module_calls(tmp_path)
             if c[1] == "stage1_cam.infer_cam"}    # (the stub's records are not in call order)
    assert "--overwrite" not in infer["val"]        # infer_cam_val resumes its own run
    assert "--overwrite" in infer["train_aug"]      # infer_cam_train_aug starts afresh
    # ... but not after its command changed.
    (tmp_path / "exp/.done/infer_cam_val").unlink()
    (tmp_path / "exp/.started/infer_cam_val").write_text("arg something else\n")
    fresh(tmp_path)
    r = run_runner(tmp_path, STAGES="1")
    assert "--overwrite" in module_call(tmp_path, "stage1_cam.infer_cam")


def test_training_resumes_only_its_own_interrupted_run(tmp_path):
    ckpts = tmp_path / "exp/ckpts"
    ckpts.mkdir(parents=True)
    (ckpts / "cam.state.pth").write_bytes(b"state")
    r = run_runner(tmp_path, STAGES="1", CAM_TRAIN_ARGS="--max_steps 5", FAKE_FAIL="stage1_cam.infer_cam")
    assert "--resume" in module_call(tmp_path, "stage1_cam.train_cam")   # an earlier version's run
    (tmp_path / "exp/.done/train_cam").unlink()
    (tmp_path / "exp/.started/train_cam").write_text("arg other\n")
    fresh(tmp_path)
    r = run_runner(tmp_path, STAGES="1", CAM_TRAIN_ARGS="--max_steps 5")
    assert r.returncode == 0, r.stderr
    assert "--resume" not in module_call(tmp_path, "stage1_cam.train_cam")


# --------------------------------------------------------------------------- one run per EXPDIR


def test_a_second_runner_on_the_same_expdir_stops_at_once(tmp_path):
    """Case 2: the second runner exits 2 with one line naming the running one (pid, command,
    start time) and runs nothing; once the first is killed (SIGKILL, no cleanup), its lock
    does not block."""
    import os
    import signal
    import time

    from test_interrupted_runs import _alive, _wait_for

    first = run_runner(tmp_path, STAGES="1", FAKE_TRAIN="sleep", wait=False)
    try:
        _wait_for(tmp_path / "calls" / "grandchild.pid", first)
        n_calls = len(calls(tmp_path))
        t0 = time.monotonic()
        second = run_runner(tmp_path, STAGES="1")
        assert time.monotonic() - t0 < 20
        assert second.returncode == 2
        err = second.stderr.strip().splitlines()
        assert len(err) == 1, second.stderr
        assert err[0].startswith(f"{tmp_path / 'exp'} is in use by another run (pid {first.pid}, "
                                 f"bash run_all_voc.sh from ")
        assert ", started 20" in err[0] and second.stdout == ""
        assert len(calls(tmp_path)) == n_calls        # the second ran no step
    finally:
        pids = [first.pid] + [int((tmp_path / "calls" / f).read_text())
                              for f in ("train.pid", "grandchild.pid")]
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        first.communicate(timeout=30)
    while any(_alive(p) for p in pids[1:]):
        time.sleep(0.05)
    assert (tmp_path / "exp/.lock").read_text().startswith(f"pid {first.pid},")   # left behind
    third = run_runner(tmp_path, STAGES="1")
    assert third.returncode == 0, third.stderr
    assert "[run ] train_cam" in third.stdout


# --------------------------------------------------------------------------- the caller's paths


def test_relative_paths_are_the_callers(tmp_path):
    """Case 4: relative EXPDIR, DATA_ROOT, WEIGHTS, SEG_CONFIG and PYTHON name paths under the
    directory the runner is started from, not under the repository."""
    import os
    import subprocess

    from test_interrupted_runs import ROOT, STUB

    work = tmp_path / "work"
    (work / "bin").mkdir(parents=True)
    (work / "mydata").mkdir()
    (work / "w.pth").write_bytes(b"weights")
    (work / "seg.py").write_text("")
    (work / "bin/python").write_text(STUB)
    (work / "bin/python").chmod(0o755)
    (tmp_path / "calls").mkdir()
    env = {**os.environ, "FAKE_DIR": str(tmp_path / "calls"), "PYTHON": "bin/python",
           "EXPDIR": "exp", "DATA_ROOT": "./mydata", "WEIGHTS": "w.pth", "SEG_CONFIG": "seg.py"}
    r = subprocess.run(["bash", str(ROOT / "run_all_voc.sh")], cwd=work, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (work / "exp/.done/train_seg").is_file()
    cam = module_call(tmp_path, "stage1_cam.train_cam")
    assert cam[cam.index("--data_root") + 1] == str(work / "mydata")
    assert cam[cam.index("--weights") + 1] == str(work / "w.pth")
    assert cam[cam.index("--session_name") + 1] == str(work / "exp/ckpts/cam")
    seg = module_call(tmp_path, "stage3_seg.train_seg")
    assert seg[seg.index("--config") + 1] == str(work / "seg.py")
    # The demo: a relative DATA_ROOT holding no data yet is generated there, not in the repo.
    for p in (tmp_path / "calls").iterdir():
        p.unlink()
    env.update(EXPDIR="demo", DATA_ROOT="synth", DEMO_WEIGHTS="w.pth")
    r = subprocess.run(["bash", str(ROOT / "run_all_demo.sh")], cwd=work, env=env,
                       capture_output=True, text=True, timeout=120)
    gen = module_call(tmp_path, "tools.data.make_synthetic_voc")
    assert gen[gen.index("--out") + 1] == str(work / "synth")
    assert (work / "demo/logs").is_dir()


# --------------------------------------------------------------------------- checked at once


@pytest.mark.parametrize("script, env, message", [
    ("run_all_voc.sh", {"TARGET_MIOU": "70"},
     "TARGET_MIOU must be a fraction in 0..1, not '70' (it looks like a percentage: write 0.7 for 70 %)"),
    ("run_all_demo.sh", {"TARGET_MIOU": "abc"}, "TARGET_MIOU must be a fraction in 0..1, not 'abc'"),
    ("run_all_voc.sh", {"TARGET_MIOU": "-0.5"}, "TARGET_MIOU must be a fraction in 0..1, not '-0.5'"),
    ("run_all_voc.sh", {"EVAL_WORKERS": "abc"}, "EVAL_WORKERS must be a positive integer, not 'abc'"),
    ("run_all_coco.sh", {"EVAL_WORKERS": "0"}, "EVAL_WORKERS must be a positive integer, not '0'"),
    ("run_all_voc.sh", {"STOP_GRACE_S": "soon"}, "STOP_GRACE_S must be a number (0 or more), not 'soon'"),
    ("run_all_voc.sh", {"ON_CHANGE": "ignore"}, "ON_CHANGE must be redo, stop or keep, not 'ignore'"),
    ("run_all_coco.sh", {"COCO_YEAR": "2015"}, "COCO_YEAR must be 2014 or 2017, not '2015'"),
    ("run_all_demo.sh", {"DEMO_CAM_STEPS": "1e3"}, "DEMO_CAM_STEPS must be a positive integer, not '1e3'"),
    ("run_all_demo.sh", {"DEMO_WIDTH": "wide"}, "DEMO_WIDTH must be a number (0 or more), not 'wide'"),
    ("run_all_demo.sh", {"DEMO_SEED": "-1"}, "DEMO_SEED must be a whole number (0 or more), not '-1'"),
])
def test_runner_variables_are_checked_before_the_first_step(tmp_path, script, env, message):
    """Case 9: one line, exit 2, nothing run or written (not a failure after the whole run)."""
    r = run_runner(tmp_path, script, **env)
    assert r.returncode == 2
    assert r.stderr.strip() == message
    assert not (tmp_path / "exp").exists() and calls(tmp_path) == []


@pytest.mark.parametrize("value", ["0", "1", "0.7", ".65", "7e-1"])
def test_fractions_in_range_pass(tmp_path, value):
    r = run_runner(tmp_path, STAGES="1", TARGET_MIOU=value)
    assert r.returncode == 0, r.stderr
    collect = module_call(tmp_path, "tools.collect_results")
    assert collect[collect.index("--target_miou") + 1] == value


# --------------------------------------------------------------------------- one line, not silence


def test_a_missing_data_root_is_one_line(tmp_path):
    """Case 7: run_all_voc.sh with a DATA_ROOT that does not exist."""
    r = run_runner(tmp_path, DATA_ROOT=str(tmp_path / "no data"))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"DATA_ROOT {tmp_path / 'no data'} does not exist: prepare the dataset first "
        "(config_voc.sh / config_coco.sh) or set DATA_ROOT to its folder"]
    assert [c for c in calls(tmp_path) if c[0] == "-m"] == []


def test_the_demo_refuses_a_foreign_data_root_without_labels(tmp_path):
    """Case 7: a DATA_ROOT lacking cls_labels.npz: one line saying so, not only a header."""
    data = tmp_path / "voc"
    (data / "JPEGImages").mkdir(parents=True)
    r = run_runner(tmp_path, "run_all_demo.sh", DATA_ROOT=str(data))
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"DATA_ROOT {data} has no cls_labels.npz")
    assert "tools.data.make_cls_labels" in err[0]
    assert [c for c in calls(tmp_path) if c[0] == "-m"] == [] and list(data.iterdir()) == [data / "JPEGImages"]


def test_a_failing_data_step_of_the_demo_prints_its_reason(tmp_path):
    r = run_runner(tmp_path, "run_all_demo.sh", DATA_ROOT=str(tmp_path / "new"),
                   FAKE_FAIL="tools.data.make_synthetic_voc")
    assert r.returncode == 1
    assert "[FAIL] make_synthetic_voc (exit 2)" in r.stderr
    assert "tools.data.make_synthetic_voc: error: failed on purpose" in r.stderr


def test_a_copied_expdir_keeps_its_records(tmp_path):
    """Paths inside EXPDIR are recorded as $EXPDIR/...: a moved or copied EXPDIR is done."""
    import shutil

    first_run(tmp_path)
    shutil.copytree(tmp_path / "exp", tmp_path / "copy")
    r = run_runner(tmp_path, EXPDIR=str(tmp_path / "copy"))
    assert r.returncode == 0, r.stderr
    assert ran(r) == [] and tagged(r, "skip") == ALL_STEPS
    assert "arg $EXPDIR/ckpts/cam" in (tmp_path / "copy/.done/train_cam").read_text()
