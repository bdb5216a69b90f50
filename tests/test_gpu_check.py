"""The measured side of tools/bench/gpu_check.sh on hand-made benchmark JSON: the goal lines
(tools.bench.gpu_goals), the measured time budget (tools.bench.time_budget --bench), and bench_pipeline's
time boxes, peak reset and TF32 tolerance."""
import json
import sys
import time

import pytest
import torch

from lib.errors import UserError
from tools.bench import bench_pipeline as bp
from tools.bench import gpu_goals, time_budget as tb


def _row(kind, stage, mode, ips, peak_gib=None, shape=None):
    shape = shape or ({"cam": "448x448 b8", "aff": "448x448 b8", "seg": "448x448 b10"}[stage]
                      if kind == "train" else "375x500")
    r = {"kind": kind, "stage": stage, "mode": mode, "shape": shape, "width": 1.0,
         "check": "ok", "img_per_s": ips}
    if peak_gib is not None:
        r["peak_mib"] = peak_gib * 1024
    return r


ROWS = [  # a made-up H200: images/s per (kind, stage, mode) and training peaks in GiB
    _row("train", "cam", "fp32", 50.0, 30.0), _row("train", "cam", "bf16_cl", 120.0, 6.0),
    _row("train", "aff", "fp32", 80.0, 25.0), _row("train", "aff", "bf16_cl", 150.0, 5.0),
    _row("train", "seg", "fp32", 40.0, 28.0), _row("train", "seg", "bf16", 70.0, 9.0),
    _row("train", "seg", "bf16_cl", 60.0, 8.0),
    _row("infer", "cam", "fp32", 20.0), _row("infer", "aff", "fp32", 40.0),
    _row("infer", "seg", "fp32", 15.0), _row("infer", "seg", "bf16", 25.0),
]
CRF = [{"case": "stage1", "workers": 1, "img_per_s": 1.5},
       {"case": "stage1", "workers": 14, "img_per_s": 14.7},
       {"case": "final", "workers": 1, "img_per_s": 1.2},
       {"case": "final", "workers": 14, "img_per_s": 12.0}]


def _write(folder, rows=ROWS, crf=CRF, device="cuda:0"):
    folder.mkdir(parents=True, exist_ok=True)
    env = {"device": device, "gpu": "NVIDIA H200"}
    (folder / "bench_pipeline.json").write_text(json.dumps({"environment": env, "rows": rows}))
    (folder / "bench_crf.json").write_text(json.dumps({"environment": env, "rows": crf}))
    return folder


def test_measured_budget_uses_only_the_measurements():
    rows = {r["step"]: r for r in tb.measured_budget(ROWS, CRF, cores=16)}
    # training: images / measured images/s (fp32 in the defaults, bf16_cl tuned)
    assert rows["train_cam"]["defaults_min"] == pytest.approx(84608 / 50.0 / 60)
    assert rows["train_cam"]["tuned_min"] == pytest.approx(84608 / 120.0 / 60)
    # infer_cam on 16 cores: auto = 2 loaders + 14 CRF workers; the pool (14.7/s) is slower
    # than the network (20/s), so it bounds the step
    assert rows["infer_cam_train_aug"]["defaults_min"] == pytest.approx(10582 / 14.7 / 60)
    assert rows["infer_cam_train_aug"]["bound"].startswith("CPU (14")
    # infer_seg: 16 CRF workers; only 14 measured -> the 14-worker rate (12/s) vs net 15/s
    assert rows["infer_seg_val"]["defaults_min"] == pytest.approx(1449 / 12.0 / 60)
    assert rows["total"]["source"] == "measured"
    assert rows["total"]["defaults_min"] == pytest.approx(
        sum(r["defaults_min"] for k, r in rows.items() if k != "total"))


def test_a_missing_measurement_is_not_measured_not_estimated():
    rows = {r["step"]: r for r in tb.measured_budget(ROWS, [], cores=16)}  # no CRF figures
    assert rows["infer_cam_val"]["defaults_min"] is None
    assert rows["infer_cam_val"]["source"] == "NOT MEASURED"
    assert rows["train_cam"]["source"] == "measured"
    assert rows["total"]["defaults_min"] is None and rows["total"]["source"] == "NOT MEASURED"


def test_load_bench_refuses_cpu_and_demo_width_files(tmp_path):
    with pytest.raises(UserError, match="not CUDA"):
        tb.load_bench(_write(tmp_path / "cpu", device="cpu"))
    with pytest.raises(UserError, match="width 1.0"):
        tb.load_bench(_write(tmp_path / "demo", rows=[{**ROWS[0], "width": 0.125}]))
    with pytest.raises(UserError, match="no bench_pipeline"):
        tb.load_bench(tmp_path / "nothing")
    rows, crf, env = tb.load_bench(_write(tmp_path / "ok"))
    assert len(rows) == len(ROWS) and crf == CRF and env["gpu"] == "NVIDIA H200"


def test_time_budget_cli_prints_the_measured_table(tmp_path, capsys):
    folder = _write(tmp_path / "gc")
    assert tb.main(["--bench", str(folder), "--markdown"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("MEASURED on NVIDIA H200") and "ESTIMATE" not in out
    total = next(line for line in out.splitlines() if line.startswith("| total"))
    want = tb.measured_budget(ROWS, CRF, 16)[-1]["defaults_min"]
    assert f"{want:.1f}" in total


def test_goal_lines_on_a_hand_made_bench():
    lines = gpu_goals.goal_lines(ROWS, CRF, cores=16)
    assert len(lines) == 6 and all(line.startswith("goal: ") for line in lines)
    assert lines[0].endswith("measured 120.0 img/s vs goal >= 100 img/s: PASS")
    assert lines[1].endswith("measured 2.40x vs goal >= 2x: PASS")
    assert lines[2].endswith("measured 70.0 img/s vs goal >= 80 img/s: FAIL")
    assert "measured 14.7 img/s (network 20.0, CRF pool 14.7)" in lines[3]
    assert lines[3].endswith("PASS")
    total = tb.measured_budget(ROWS, CRF, 16)[-1]["defaults_min"]
    assert f"measured {total:.0f} min vs goal <= 75 min" in lines[4]
    assert lines[4].endswith("FAIL") == (total > 75)
    # leanest modes: cam 6, aff 5, seg 8 GiB -> 8 GiB <= 24 GB
    assert "seg 8.0 GiB (bf16_cl)" in lines[5] and lines[5].endswith("PASS")


def test_goal_lines_without_measurements_say_not_measured(tmp_path, capsys):
    assert all(line.endswith(": NOT MEASURED") for line in gpu_goals.goal_lines([], [], 16))
    # a training row at demo size does not count for a goal stated at 448 / batch 8
    small = [_row("train", "cam", "bf16_cl", 500.0, shape="96x96 b8")]
    assert gpu_goals.goal_lines(small, [], 16)[0].endswith("NOT MEASURED")
    # the CLI on a CPU run: every goal NOT MEASURED, and it says why
    gpu_goals.main([str(_write(tmp_path / "cpu", device="cpu")), "--cores", "2"])
    out = capsys.readouterr().out.splitlines()
    assert "not CUDA" in out[0] and len(out) == 7
    assert all(line.endswith("NOT MEASURED") for line in out[1:])


def test_time_fn_calls_on_warm_between_warmup_and_timed_runs():
    from tools.bench._bench import time_fn

    calls = []
    time_fn(lambda: calls.append("run"), 2, torch.device("cpu"), warmup=1,
            on_warm=lambda: calls.append("warm"))
    assert calls == ["run", "warm", "run", "run"]


def test_tf32_tolerance_only_for_fp32_modes_on_cuda(monkeypatch):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    assert (bp.family("fp32_cl", cuda), bp.family("fp32_cl", cpu)) == ("tf32", "fp32")
    assert bp.family("bf16_cl", cuda) == "bf16"
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert bp.family("fp32_cl", cuda) == "fp32"
    assert bp.TOLERANCE["fp32"][0] < bp.TOLERANCE["tf32"][0] < bp.TOLERANCE["bf16"][0]


CHILD = """
import json, sys, time
events, warm, timed = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
def emit(ev):
    with open(events, "a") as f:
        f.write(json.dumps(ev) + "\\n")
emit({"start": "fp32"}); time.sleep(warm); emit({"timed": "fp32"}); time.sleep(timed)
emit({"kind": "train", "stage": "cam", "mode": "fp32"})
"""


@pytest.mark.parametrize("warm, timed, box, warm_box, over", [
    (1.5, 0.1, 1.0, 5.0, ""),          # a long warm-up does not count against the case box
    (0.1, 2.0, 0.8, 5.0, "timed"),     # the timed steps do
    (3.0, 0.1, 5.0, 0.8, "warm-up"),   # and the warm-up has its own box
])
def test_run_boxed_counts_timed_phases_against_the_case_box(tmp_path, warm, timed, box,
                                                            warm_box, over):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    events = tmp_path / "events.jsonl"
    t0 = time.monotonic()
    rc, _, got = bp.run_boxed([sys.executable, str(script), str(events), str(warm), str(timed)],
                              events, box, warm_box, tmp_path)
    assert got == over
    assert (rc == 0) == (over == "")
    assert time.monotonic() - t0 < warm + timed + 2.0


def test_profile_step_labels_the_real_training_step(tmp_path, capsys):
    """tools.bench.profile_step on the CPU: every labelled part of the stage-1 step is a row, the
    parts lie inside the step, and the files are written."""
    from tools.bench import profile_step

    md, js = tmp_path / "prof.md", tmp_path / "prof.json"
    assert profile_step.main(["--stages", "cam", "--device", "cpu", "--threads", "1",
                              "--markdown", str(md), "--json", str(js)]) == 0
    data = json.loads(js.read_text())
    labels = {r["label"]: r for r in data["labels"]}
    assert set(labels) == {"step", *profile_step.LABELS["cam"]}
    assert labels["step"]["share"] == pytest.approx(1.0)
    parts = sum(r["cpu_ms"] for k, r in labels.items() if k != "step")
    assert 0 < parts <= labels["step"]["cpu_ms"] * 1.01
    assert any(r["name"] == "aten::convolution" for r in data["rows"])
    assert "| cam | loss.fsl |" in md.read_text()


@pytest.mark.parametrize("gpus, local_world, backend, devices", [
    (1, 2, "gloo", [0, 0]),   # two processes share the one GPU: NCCL refuses that
    (2, 2, "nccl", [0, 1]),
    (4, 2, "nccl", [0, 1]),
])
def test_ddp_backend_gloo_when_processes_share_a_gpu(monkeypatch, gpus, local_world, backend,
                                                     devices):
    """lib.dist.setup_distributed's choice for the DDP smoke test of tools/bench/gpu_check.sh
    (CUDA mocked: which backend and which device each local rank gets)."""
    from lib import dist

    got = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: got.setdefault("set", []).append(i))
    monkeypatch.setattr(dist.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist.dist, "init_process_group", lambda b: got.setdefault("backend", b))
    for local_rank in range(local_world):
        monkeypatch.setenv("WORLD_SIZE", str(local_world))
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_world))
        monkeypatch.setenv("RANK", str(local_rank))
        monkeypatch.setenv("LOCAL_RANK", str(local_rank))
        rank, world, device = dist.setup_distributed("cuda")
        assert (rank, world, device) == (local_rank, local_world,
                                         torch.device("cuda", devices[local_rank]))
    assert got["backend"] == backend and got["set"] == devices
