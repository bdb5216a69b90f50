"""Interrupted and failed runs: checksummed byte-reproducible checkpoints, checkpoints that do not
fit, non-finite losses, exact resume after SIGKILL, and the runner's input, signals and failure
output (the runner's control flow with a stand-in interpreter, so those tests train nothing)."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import make_tiny_voc  # noqa: E402  (tests/helpers.py)
from lib.checkpoint import save_checkpoint
from lib.errors import RunError, UserError, run_main
from lib.weights import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
WIDTH = "0.0625"


pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- checkpoint files


def test_identical_saves_are_byte_identical_with_a_sha256_sidecar(tmp_path):
    sd = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(2)}
    save_checkpoint(sd, tmp_path / "a" / "cam.pth")
    save_checkpoint(sd, tmp_path / "b" / "other.pth")
    a, b = (tmp_path / "a/cam.pth").read_bytes(), (tmp_path / "b/other.pth").read_bytes()
    assert a == b
    assert (tmp_path / "a/cam.pth.sha256").read_text() == f"{hashlib.sha256(a).hexdigest()}  cam.pth\n"
    assert not list((tmp_path / "a").glob(".*tmp*"))  # no temporary file left behind
    # The premise: torch.save to a path records the file's name, so names change the bytes.
    torch.save(sd, tmp_path / "c.pth")
    torch.save(sd, tmp_path / "d.pth")
    assert (tmp_path / "c.pth").read_bytes() != (tmp_path / "d.pth").read_bytes()


def test_checkpoint_corrupted_in_place_is_refused_naming_the_file(tmp_path):
    p = tmp_path / "cam.pth"
    w = torch.linspace(0, 1, 1000)
    save_checkpoint({"w": w}, p)
    data = bytearray(p.read_bytes())
    at = data.find(w.numpy().tobytes()[:64])
    assert at > 0
    data[at + 200] ^= 0xFF  # one byte of the tensor payload; the zip stays valid
    p.write_bytes(bytes(data))
    # The premise: torch loads it silently, with another weight.
    assert not torch.equal(torch.load(p, weights_only=True)["w"], w)
    with pytest.raises(UserError, match=re.escape(f"{p}: checksum mismatch")):
        load_checkpoint(p)
    # A released checkpoint has no sidecar: it loads, unverified.
    (tmp_path / "cam.pth.sha256").unlink()
    assert load_checkpoint(p)["w"].shape == (1000,)


def test_save_weights_refuses_non_finite_weights(tmp_path):
    from lib.training import save_weights

    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.bias[1] = float("nan")
    with pytest.raises(RunError, match="non-finite values in bias"):
        save_weights(model, tmp_path / "cam.pth")
    assert not list(tmp_path.iterdir())


def test_check_loss_stops_on_nan_and_inf():
    from argparse import Namespace

    from lib.training import TrainingRun

    run = TrainingRun(Namespace(session_name="x"), "train_aff", 2, 10)
    run.check_loss(0, torch.tensor(1.5), {"loss": 1.5})
    for bad in (float("nan"), float("inf")):
        with pytest.raises(RunError, match="train_aff: non-finite loss at step 4"):
            run.check_loss(3, torch.tensor(bad), {"loss": bad})


# --------------------------------------------------------------------------- stage scripts


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return make_tiny_voc(tmp_path_factory.mktemp("reliability") / "voc")


def cam_train_argv(voc: Path, session: Path, steps: int, *extra: str) -> list[str]:
    return ["--data_root", str(voc), "--threads", "1", "--num_workers", "0", "--device", "cpu",
            "--weights", "none", "--backbone_width", WIDTH, "--crop_size", "64",
            "--resize_long", "64", "80", "--batch_size", "2", "--max_steps", str(steps),
            "--train_list", "train", "--session_name", str(session), *extra]


def test_checkpoint_of_another_class_count_is_one_clear_error(voc, tmp_path, capsys):
    """infer_cam with a 20-class checkpoint for the 5-class set: exit 2, one line naming the
    file and the first tensor that does not fit, nothing written."""
    from lib.models import build_model
    from stage1_cam.infer_cam import main

    weights = tmp_path / "cam20.pth"
    save_checkpoint(build_model("cam", num_classes=20, width=0.125).state_dict(), weights)
    out = tmp_path / "cam_out"
    with pytest.raises(SystemExit) as exit_:
        run_main(main, "infer_cam", ["--weights", str(weights), "--data_root", str(voc),
                                     "--infer_list", "val", "--out_cam", str(out),
                                     "--backbone_width", WIDTH, "--device", "cpu",
                                     "--num_workers", "0", "--threads", "1"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"infer_cam: error: {weights}: does not fit the model")
    assert re.search(r"fc8\.weight: checkpoint \[21, \d+, 1, 1\], model \[6, \d+, 1, 1\]", err[0])
    assert not out.exists() or not any(out.iterdir())


def test_non_finite_loss_stops_training_and_keeps_the_previous_checkpoint(voc, tmp_path, capsys,
                                                                          monkeypatch):
    """A rerun that diverges at its second step exits 1 with one line, and the earlier run's
    weights, config, state and sidecars stay byte for byte."""
    import stage1_cam.train_cam as train_cam

    session = tmp_path / "cam"
    with pytest.raises(SystemExit) as exit_:
        run_main(train_cam.main, "train_cam", cam_train_argv(voc, session, 1))
    assert exit_.value.code == 0
    kept = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert {"cam.pth", "cam.pth.sha256", "cam.config.json", "cam.state.pth"} <= set(kept)

    real, calls = train_cam.stage1_loss, []

    def diverging(*args, **kwargs):
        total, parts = real(*args, **kwargs)
        calls.append(1)
        return (total * float("nan"), {**parts, "total": float("nan")}) if len(calls) > 1 \
            else (total, parts)

    monkeypatch.setattr(train_cam, "stage1_loss", diverging)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        run_main(train_cam.main, "train_cam", cam_train_argv(voc, session, 3, "--seed", "1"))
    assert exit_.value.code == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("train_cam: error: train_cam: non-finite loss at step 2 (")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == kept


# --------------------------------------------------------------------------- the runner

STUB = r"""#!/usr/bin/env bash
# Stand-in interpreter: records each call's arguments (NUL-separated) and plays the step named by
# FAKE_TRAIN when it is stage 1's training; the module FAKE_FAIL fails.
f=$(mktemp "$FAKE_DIR/call.XXXXXX"); printf '%s\0' "$@" > "$f"
if [ "$1" = -c ]; then echo 6; exit 0; fi
if [ -n "${FAKE_FAIL:-}" ] && [ "$2" = "$FAKE_FAIL" ]; then echo "$2: error: failed on purpose" >&2; exit 2; fi
if [ "$2" = stage1_cam.train_cam ]; then
  case ${FAKE_TRAIN:-ok} in
    sleep) sleep 300 & echo $! > "$FAKE_DIR/grandchild.pid"; echo $$ > "$FAKE_DIR/train.pid"; wait;;
    fail) for i in $(seq 1 3000); do printf '\rtrain_cam:  %d%%|###  | %d/3000 [00:10<00:12, 13.2it/s]' $((i / 30)) $i; done
          printf '\nTraceback (most recent call last):\nValueError: boom\n'; exit 1;;
  esac
fi
exit 0
"""


def run_runner(tmp_path: Path, script="run_all_voc.sh", args=(), wait=True, **env):
    fake = tmp_path / "calls"
    fake.mkdir(exist_ok=True)
    stub = tmp_path / "python"
    stub.write_text(STUB)
    stub.chmod(0o755)
    (tmp_path / "it's data").mkdir(exist_ok=True)
    full = {**os.environ, "PYTHON": str(stub), "FAKE_DIR": str(fake), "EXPDIR": str(tmp_path / "exp"),
            "DATA_ROOT": str(tmp_path / "it's data"), "STOP_GRACE_S": "5", **env}
    cmd = ["bash", script, *args]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=full, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=ROOT, env=full, capture_output=True, text=True, timeout=120)


def calls(tmp_path: Path) -> list[list[str]]:
    return [p.read_text().split("\0")[:-1] for p in sorted((tmp_path / "calls").glob("call.*"))]


def module_call(tmp_path: Path, module: str) -> list[str] | None:
    found = [c for c in calls(tmp_path) if len(c) > 1 and c[:2] == ["-m", module]]
    return found[0] if found else None


@pytest.mark.parametrize("script", ["run_all_voc.sh", "run_all_coco.sh", "run_all_demo.sh"])
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_runner_help_prints_the_variables_and_runs_nothing(tmp_path, script, flag):
    r = run_runner(tmp_path, script, [flag])
    assert r.returncode == 0, r.stderr
    assert "Environment (defaults in brackets):" in r.stdout
    assert "SAVE_EVERY [500]" in r.stdout and "NPROC [1]" in r.stdout
    assert not (tmp_path / "exp").exists() and calls(tmp_path) == []


@pytest.mark.parametrize("venv, explicit, expect", [
    (True, False, "venv"), (False, False, "path"), (True, True, "explicit")])
def test_runner_interpreter_defaults_to_the_repository_venv(tmp_path, venv, explicit, expect):
    """PYTHON unset: a runner uses the repository's .venv/bin/python when it exists (the system
    python usually lacks the requirements), else `python` from PATH; a set PYTHON always wins."""
    repo = tmp_path / "repo"
    (repo / "tools" / "runner").mkdir(parents=True)
    for f in ("run_all_voc.sh", "tools/runner/runner_args.sh", "tools/runner/pipeline.sh"):
        shutil.copy(ROOT / f, repo / f)
    stubs = {"venv": repo / ".venv" / "bin" / "python", "path": tmp_path / "bin" / "python",
             "explicit": tmp_path / "explicit" / "python"}
    if not venv:
        del stubs["venv"]
    for name, stub in stubs.items():
        record = tmp_path / f"calls_{name}"
        record.mkdir()
        stub.parent.mkdir(parents=True)
        stub.write_text(STUB.replace("\nf=$(mktemp", f"\nFAKE_DIR={shlex.quote(str(record))}\nf=$(mktemp", 1))
        stub.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    (tmp_path / "data").mkdir()
    env.update(PATH=f"{tmp_path / 'bin'}{os.pathsep}{env['PATH']}", EXPDIR=str(tmp_path / "exp"),
               DATA_ROOT=str(tmp_path / "data"), STAGES="1")
    if explicit:
        env["PYTHON"] = str(stubs["explicit"])
    r = subprocess.run(["bash", "run_all_voc.sh"], cwd=repo, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    used = {name for name in stubs if any((tmp_path / f"calls_{name}").glob("call.*"))}
    assert used == {expect}


@pytest.mark.parametrize("env, message", [
    ({"NPROC": "four"}, "NPROC must be a positive integer, not 'four'"),
    ({"NPROC": "0"}, "NPROC must be a positive integer, not '0'"),
    ({"STAGES": "1,2,x"}, "STAGES must list stages 1 2 3 (spaces or commas), not '1,2,x'"),
    ({"STAGES": "4"}, "STAGES must list stages 1 2 3"),
    ({"STAGES": " , "}, "STAGES is empty"),
    ({"SAVE_EVERY": "often"}, "SAVE_EVERY must be a number of steps"),
    ({"_ARG": "--stages=1"}, "run_all_voc.sh: unknown argument '--stages=1'"),
])
def test_runner_refuses_bad_input_before_any_work(tmp_path, env, message):
    args = [env.pop("_ARG")] if "_ARG" in env else []
    r = run_runner(tmp_path, args=args, **env)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and message in r.stderr
    assert not (tmp_path / "exp").exists() and calls(tmp_path) == []


def test_runner_stages_with_commas_and_any_data_root_path(tmp_path):
    r = run_runner(tmp_path, STAGES="1,3", SAVE_EVERY="7")
    assert r.returncode == 0, r.stderr
    ran = [line.split()[2] for line in r.stdout.splitlines() if line.startswith("[run ]")]
    assert "train_cam" in ran and "train_seg" in ran and "train_aff" not in ran
    root = str(tmp_path / "it's data")
    # The apostrophe path reaches every Python call as one argument, never as source text.
    for c in calls(tmp_path):
        if c[0] == "-c":
            assert root in c[1:] and root not in c[1]
    cam = module_call(tmp_path, "stage1_cam.train_cam")
    assert cam[cam.index("--data_root") + 1] == root
    assert cam[cam.index("--save_every") + 1] == "7" and "--resume" not in cam
    seg = module_call(tmp_path, "stage3_seg.train_seg")
    assert seg[seg.index("--save_every") + 1] == "7"


def test_runner_resumes_an_unfinished_training_only(tmp_path):
    ckpts = tmp_path / "exp" / "ckpts"
    ckpts.mkdir(parents=True)
    (ckpts / "cam.state.pth").write_bytes(b"state of an interrupted run")
    r = run_runner(tmp_path, STAGES="1")
    assert r.returncode == 0, r.stderr
    cam = module_call(tmp_path, "stage1_cam.train_cam")
    assert cam[cam.index("--resume") + 1] == str(ckpts / "cam.state.pth")
    # A finished run wrote its weights after its state: a redo starts from scratch.
    (tmp_path / "exp" / ".done" / "train_cam").unlink()
    (ckpts / "cam.pth").write_bytes(b"final weights")
    os.utime(ckpts / "cam.state.pth", ns=(1, 1))
    for p in (tmp_path / "calls").iterdir():
        p.unlink()
    r = run_runner(tmp_path, STAGES="1")
    assert r.returncode == 0, r.stderr
    assert "--resume" not in module_call(tmp_path, "stage1_cam.train_cam")


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_for(path: Path, proc, timeout=60.0) -> None:
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout, f"{path} never appeared"
        time.sleep(0.02)


def test_sigterm_to_the_runner_stops_the_step_and_its_children(tmp_path):
    """`kill PID` of the runner (as timeout and schedulers do) leaves no orphan behind."""
    proc = run_runner(tmp_path, STAGES="1", FAKE_TRAIN="sleep", wait=False)
    _wait_for(tmp_path / "calls" / "train.pid", proc)
    _wait_for(tmp_path / "calls" / "grandchild.pid", proc)
    pids = [int((tmp_path / "calls" / f).read_text()) for f in ("train.pid", "grandchild.pid")]
    assert all(_alive(p) for p in pids)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert "[stop] SIGTERM: stopping train_cam" in err
    time.sleep(0.2)
    assert not any(_alive(p) for p in pids)
    assert not (tmp_path / "exp" / ".done" / "train_cam").exists()


def test_failed_step_shows_its_last_lines_without_progress_bars(tmp_path):
    r = run_runner(tmp_path, STAGES="1", FAKE_TRAIN="fail")
    assert r.returncode == 1
    assert "[FAIL] train_cam (exit 1)" in r.stderr and "ValueError: boom" in r.stderr
    assert "\r" not in r.stderr and "it/s" not in r.stderr and len(r.stderr) < 2000
    assert (tmp_path / "exp" / "logs" / "train_cam.log").stat().st_size > 100_000  # all of it


# --------------------------------------------------------------------------- fault injection

TINY = {"DEMO_NUM_TRAIN": "8", "DEMO_NUM_VAL": "4", "DEMO_SIZE": "64", "DEMO_WIDTH": WIDTH,
        "DEMO_CAM_STEPS": "16", "DEMO_BATCH": "2", "SAVE_EVERY": "3", "STAGES": "1",
        # dropout and importance sampling: the training step draws from the torch RNG and the
        # sampling generator, whose states the resumed run must restore
        "DEMO_CAM_TRAIN_ARGS": "--dropout --loss_weight 0.5",
        "OMP_NUM_THREADS": "1", "EVAL_WORKERS": "1",
        "DEMO_WEIGHTS": "none"}  # the paper regime's flags from random init: the plumbing, fast


def _demo(expdir: Path, data: Path, wait=True):
    env = {**os.environ, **TINY, "EXPDIR": str(expdir), "DATA_ROOT": str(data),
           "PYTHON": sys.executable}
    if not wait:
        return subprocess.Popen(["bash", "run_all_demo.sh"], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    r = subprocess.run(["bash", "run_all_demo.sh"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def _session_pids(sid: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # state ppid pgrp session ...
            pids.append(int(stat.parent.name))
    return pids


def _kill_session(sid: int) -> None:
    """SIGKILL every process of session ``sid`` (the runner, its steps and their workers):
    a node lost to pre-emption, not a polite stop."""
    for _ in range(50):
        pids = _session_pids(sid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)


def test_pipeline_killed_in_stage1_training_and_rerun_equals_an_uninterrupted_run(tmp_path):
    """SIGKILL the whole runner during stage-1 training, after its first periodic state save
    (step 3 of 16, in the first of 4 epochs), and rerun it: the rerun resumes, and cam.pth and
    every stage-1 metric equal those of an uninterrupted run bit for bit."""
    data = tmp_path / "data"
    _demo(tmp_path / "whole", data)

    killed = tmp_path / "killed"
    proc = _demo(killed, data, wait=False)
    state = killed / "ckpts" / "cam.state.pth"
    _wait_for(state, proc)
    _kill_session(proc.pid)
    proc.wait(timeout=30)
    assert not (killed / "ckpts" / "cam.pth").exists(), "training ended before the kill"
    saved = torch.load(state, weights_only=True)
    assert 0 < saved["step"] < 16

    rerun = _demo(killed, data)
    log = (killed / "logs" / "train_cam.log").read_text()
    assert f"resuming {state} at step {saved['step']}/16" in log, log[-2000:]
    assert "[run ] train_cam" in rerun.stdout
    assert (killed / "ckpts/cam.pth").read_bytes() == (tmp_path / "whole/ckpts/cam.pth").read_bytes()
    for name in ("cam_val", "crf_val", "cam_train", "crf_train"):
        a = json.loads((tmp_path / "whole" / "eval" / f"{name}.json").read_text())
        b = json.loads((killed / "eval" / f"{name}.json").read_text())
        assert a == b, name


@pytest.mark.parametrize("regime", ["scratch", "paper"])
def test_demo_regime_sets_the_weights_and_flags_of_every_training(tmp_path, regime):
    """paper (default): the shipped synthetic trunk, the paper's stage-1/2 training flags, stage 3
    on the random-walk labels (with the AdamW recipe, docs/DEMO.md); scratch: random
    initialisation with the from-scratch flags and stage 3 on the CRF maps."""
    r = run_runner(tmp_path, "run_all_demo.sh", DEMO_REGIME=regime)
    assert r.returncode == 0, r.stderr
    trunk = "pretrained/synthetic_trunk_w0.125.pth"
    for module in ("stage1_cam.train_cam", "stage2_aff.train_aff", "stage3_seg.train_seg"):
        call = module_call(tmp_path, module)
        assert call[call.index("--weights") + 1] == (trunk if regime == "paper" else "none")
        adamw = regime == "scratch" or module == "stage3_seg.train_seg"
        assert ("--optimizer" in call) == adamw, call
    cam = module_call(tmp_path, "stage1_cam.train_cam")
    assert ("--no-frozen_bn" in cam) == ("--no-fsl" in cam) == (regime == "scratch")
    seg = module_call(tmp_path, "stage3_seg.train_seg")
    labels = "rw" if regime == "paper" else "crf_labels/alpha_4.0"
    assert seg[seg.index("--pseudo_gt") + 1].endswith(labels), seg
