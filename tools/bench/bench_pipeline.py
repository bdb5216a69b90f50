"""Throughput and peak memory of every stage's training step and inference, per precision mode.

Training (one optimiser step on a random batch, the stage's own loss function):

    cam  stage1_cam.train_cam.stage1_loss    (2 views, importance sampling, SEAM terms, FSL)
    aff  stage2_aff.train_aff: affinity_loss over the radius-5 pair labels of a label map
    seg  stage3_seg.train_seg.seg_loss       (CE + FSL)

    images/s = batch / median(step seconds); forward + backward + SGD step.

Inference (one image of --infer_size, the stage's own inference function):

    cam  stage1_cam.infer_cam.multiscale_cam    4 scales x flip (0.5, 1, 1.5, 2)
    aff  stage2_aff.infer_aff.rw_scores         AffinityNet features + random walk (beta 8, T^64)
    seg  stage3_seg.infer_seg.multiscale_flip_probs   the config's TEST_SCALES x flip

Modes (each starts from the same weights and inputs as fp32):

    fp32      the default of the stage scripts
    fp32_cl   fp32, weights and inputs in channels_last memory format
    bf16      bf16 autocast (``torch.autocast(device, bfloat16)``; the scripts' --amp on CUDA)
    bf16_cl   bf16 autocast + channels_last
    compile   bf16_cl + ``torch.compile`` (run in a subprocess with --compile_timeout; a failure
              or a timeout is reported as n/a with the reason)

Before a mode is timed, its result is compared with fp32 on the same batch (dropout off):

    training:  |loss - loss_fp32| / |loss_fp32|          <= 1e-4 (fp32_cl), 3e-2 (bf16 modes)
    inference: max |out - out_fp32| (probabilities/CAMs) <= 1e-3 (fp32_cl), 5e-2 (bf16 modes)
               and argmax agreement                      >= 0.999 (fp32_cl), 0.98 (bf16 modes)
               (a pixel agrees when its label is fp32's or ties with it within the max-abs
               tolerance in the fp32 scores: near-ties of random-init networks are not errors)

A mode that fails its check is not timed (row "FAIL"); the exit status is then 1.
Peak memory: CUDA max_memory_allocated over the timed runs, reset after the warm-up steps
(the mode's weights, gradients, optimiser state, activations and the workspace of the
convolution algorithms cuDNN chose; not the trial workspaces of cuDNN's benchmark, which the
first steps allocate); on the CPU the child process's peak RSS, torch included. cuDNN's
benchmark tries algorithms with at most ``--cudnn_ws_cap_mib`` MiB of workspace each
(``CUDNN_CONV_WSCAP_DBG``; 0 = no cap) and ``--cudnn_benchmark_limit`` algorithms per layer.

Time boxes: ``--case_timeout`` bounds the timed part of one (kind, stage) in its child
process; the warm-up of each mode (building the case, the fp32 reference, the tolerance check
and the first steps: cuDNN autotuning) has its own box, ``--warmup_timeout`` per mode.

    python -m tools.bench.bench_pipeline                       # CPU, demo width (0.125), ~1-2 min
    python -m tools.bench.bench_pipeline --preset paper --device cuda --json bench.json
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from lib.errors import UserError, run_main
from lib.models import build_model, disable_dropout
from lib.optim import build_optimizer
from tools.bench._bench import format_table, peak_bytes, reset_peak, time_fn, write_json

MODES = ("fp32", "fp32_cl", "bf16", "bf16_cl", "compile")
STAGES = ("cam", "aff", "seg")
# (loss relative, output max abs, argmax agreement) per mode family; module docstring.
TOLERANCE = {"fp32": (1e-4, 1e-3, 0.999), "bf16": (3e-2, 5e-2, 0.98),
             # fp32 on CUDA with TF32 convolutions (PyTorch's default): inputs rounded to a
             # 10-bit mantissa (unit roundoff 2^-11 ~ 4.9e-4), and channels_last picks other
             # algorithms, so fp32 and fp32_cl differ by TF32 rounding, not by 1e-4.
             "tf32": (2e-3, 5e-3, 0.995)}
NUM_CLASSES = 20  # VOC foreground classes

# Sizes per preset: width, (crop, batch) per training stage, inference image (H, W).
PRESETS = {
    # The CPU demo's network width and crop (run_all_demo.sh): seconds per mode on 2 cores.
    "demo": dict(width=0.125, cam=(96, 8), aff=(96, 8), seg=(96, 8), infer_size=(96, 128)),
    # The paper's sizes: stage 1 and 2 crop 448 batch 8 (train_cam/train_aff defaults), stage 3
    # CROP/BATCH of voc/config_voc2012.py (448, 10); a typical VOC image is 500x375.
    "paper": dict(width=1.0, cam=(448, 8), aff=(448, 8), seg=(448, 10), infer_size=(375, 500)),
}


def family(mode: str, device: torch.device | None = None) -> str:
    """The tolerance family of ``mode``: bf16, fp32, or tf32 (fp32 on CUDA where cuDNN runs
    fp32 convolutions as TF32)."""
    if not mode.startswith("fp32"):
        return "bf16"
    if device is not None and device.type == "cuda" and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return "fp32"


def loss_rel_err(loss: float, ref: float) -> float:
    """|loss - ref| / |ref| (the losses are sums of positive terms: no cancellation)."""
    return abs(loss - ref) / max(abs(ref), 1e-12)


def autocast_ctx(mode: str, device: torch.device):
    if family(mode) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def channels_last(mode: str) -> bool:
    return mode.endswith("_cl") or mode == "compile"


def to_mode(x: torch.Tensor, mode: str) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last(mode) and x.dim() == 4 else x


def prepare(model: torch.nn.Module, mode: str, device: torch.device,
            methods: tuple[str, ...] = ()) -> torch.nn.Module:
    """A copy of ``model`` (kept on the CPU, so that a case's peak memory is its own) on
    ``device`` in the memory format of ``mode``; compiled ``forward`` (and the named inference
    ``methods``, which are not reached through ``__call__``) for 'compile'."""
    model = copy.deepcopy(model).to(device)
    if channels_last(mode):
        model = model.to(memory_format=torch.channels_last)
    if mode == "compile":
        model.compile()
        for name in methods:
            setattr(model, name, torch.compile(getattr(model, name)))
    return model


# ----------------------------------------------------------------------------------- inputs
def random_images(n: int, size: tuple[int, int], device, seed: int) -> torch.Tensor:
    """Smooth random normalised images (N, 3, H, W): upsampled noise, like image content."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, 3, max(2, size[0] // 16), max(2, size[1] // 16), generator=g)
    return F.interpolate(coarse, size=size, mode="bilinear", align_corners=False).to(device)


def block_labels(n: int, size: int, classes: int, seed: int, void: bool = True) -> torch.Tensor:
    """(N, size, size) int64 label maps of random 1/4-size blocks (0 bg, 1..classes, 255 void)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, classes + 1, (n, 1, 4, 4), generator=g).float()
    lab = F.interpolate(coarse, size=(size, size), mode="nearest")[:, 0].long()
    if void:
        lab[:, : max(1, size // 16)] = 255
    return lab


# ----------------------------------------------------------------------------------- training
def _cam_args():
    from stage1_cam.train_cam import parse_args

    return parse_args(["--data_root", "-"])  # the paper's loss settings (script defaults)


def train_case(stage: str, width: float, crop: int, batch: int, device: torch.device, seed: int = 0):
    """(model on the CPU, loss_fn(model, images, generator) -> loss, images on ``device``).
    Weights are seeded."""
    torch.manual_seed(seed)
    if stage == "cam":
        from stage1_cam.train_cam import stage1_loss

        model = build_model("cam", num_classes=NUM_CLASSES, width=width)
        args = _cam_args()
        label = torch.zeros(batch, NUM_CLASSES)
        label[torch.arange(batch), torch.arange(batch) % NUM_CLASSES] = 1
        label[:, 14] = 1  # 'person' in every crop: two classes per image
        label = label.to(device)

        def loss_fn(m, img, gen):
            return stage1_loss(m, img, label, args, generator=gen)[0]
    elif stage == "aff":
        from lib.affinity import extract_pair_labels
        from lib.losses.affinity import affinity_loss
        from stage2_aff.train_aff import RADIUS

        if crop % 8:
            raise ValueError(f"aff crop {crop} must be a multiple of 8")
        model = build_model("aff", width=width)
        bg, fg, neg = (t.to(device) for t in extract_pair_labels(
            block_labels(batch, crop // 8, 3, seed), RADIUS))

        def loss_fn(m, img, gen):
            return affinity_loss(m(img).float(), bg, fg, neg)[0]
    elif stage == "seg":
        from lib.config import load_config
        from stage3_seg.train_seg import seg_loss

        cfg = load_config(Path(__file__).resolve().parents[2] / "voc" / "config_voc2012.py")
        model = build_model("deeplabv1", num_classes=NUM_CLASSES, width=width,
                            bn_momentum=cfg["BN_MOMENTUM"])
        label = block_labels(batch, crop, NUM_CLASSES, seed).to(device)

        def loss_fn(m, img, gen):
            return seg_loss(m, img, label, cfg["FSL_WEIGHT"], cfg["FSL_MU"], cfg["FSL_SIGMA"])[0]
    else:
        raise ValueError(f"unknown stage {stage!r}")
    images = random_images(batch, (crop, crop), device, seed + 1)
    return model.train(), loss_fn, images


def check_train(model, loss_fn, images, mode: str, device: torch.device, ref: float | None):
    """Loss of ``mode`` on the batch with dropout off; (loss, relative error vs ``ref``)."""
    m = prepare(model, mode, device)
    disable_dropout(m)
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad(), autocast_ctx(mode, device):
        loss = float(loss_fn(m, to_mode(images, mode), gen))
    err = None if ref is None else loss_rel_err(loss, ref)
    return loss, err


def time_train(model, loss_fn, images, mode: str, device: torch.device, repeats: int,
               on_warm=None):
    m = prepare(model, mode, device)
    opt = build_optimizer("sgd", m.param_groups(), lr=1e-4, weight_decay=5e-4, max_step=10 ** 6,
                          momentum=0.9)
    x = to_mode(images, mode)
    gen = torch.Generator(device=device).manual_seed(0)

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast_ctx(mode, device):
            loss = loss_fn(m, x, gen)
        loss.backward()
        opt.step()

    def warm():
        reset_peak(device)  # the steady state's peak, not the warm-up's autotuning trials
        if on_warm:
            on_warm()

    best, med = time_fn(step, repeats, device, warmup=2 if mode == "compile" else 1,
                        on_warm=warm)
    return best, med, peak_bytes(device)


# ----------------------------------------------------------------------------------- inference
def infer_case(stage: str, width: float, size: tuple[int, int], device: torch.device, seed: int = 0):
    """(model on the CPU, run(model, mode) -> (scores (K, H, W), label map (H, W)), the methods
    to compile)."""
    torch.manual_seed(seed)
    image = random_images(1, size, device, seed + 2)
    if stage == "cam":
        from lib.datasets.datasets import MultiScaleInferenceDataset
        from stage1_cam.infer_cam import multiscale_cam

        scales = MultiScaleInferenceDataset.__init__.__defaults__[0]  # (0.5, 1.0, 1.5, 2.0)
        model = build_model("cam", num_classes=NUM_CLASSES, width=width)
        label = torch.zeros(NUM_CLASSES, device=device)
        label[[0, 14]] = 1

        def run(m, mode):
            ims = []
            for s in scales:
                x = F.interpolate(image, size=(round(size[0] * s), round(size[1] * s)),
                                  mode="bicubic", align_corners=False)
                ims.append(to_mode(torch.cat([x, x.flip(-1)]), mode))
            with autocast_ctx(mode, device):
                cam = multiscale_cam(m, ims, label, size, flip=True).float()
            return cam, cam.argmax(0)
        return model.eval(), run, ("forward_cam",)
    if stage == "aff":
        from stage2_aff.infer_aff import rw_scores

        model = build_model("aff", width=width)
        g = torch.Generator().manual_seed(seed + 3)
        cams = F.interpolate(torch.rand(1, 2, 6, 6, generator=g), size=size, mode="bilinear",
                             align_corners=False)[0].to(device)

        def run(m, mode):
            with autocast_ctx(mode, device):
                scores = rw_scores(m, to_mode(image, mode)[0], cams, alpha=6, beta=8, logt=6)
            scores = scores.float()
            return scores / scores.amax().clamp_min(1e-12), scores.argmax(0)
        return model.eval(), run, ("forward_features",)
    if stage == "seg":
        from lib.config import load_config
        from stage3_seg.infer_seg import multiscale_flip_probs

        cfg = load_config(Path(__file__).resolve().parents[2] / "voc" / "config_voc2012.py")
        model = build_model("deeplabv1", num_classes=NUM_CLASSES, width=width)

        def run(m, mode):
            with autocast_ctx(mode, device):
                p = multiscale_flip_probs(m, to_mode(image, mode), cfg["TEST_SCALES"],
                                          cfg["TEST_FLIP"]).float()
            return p, p.argmax(0)
        return model.eval(), run, ()
    raise ValueError(f"unknown stage {stage!r}")


def argmax_agreement(ref_scores: torch.Tensor, ref_label: torch.Tensor, label: torch.Tensor,
                     tie: float) -> float:
    """Fraction of pixels where ``label`` is fp32's argmax, or ties with it in the fp32 scores
    (K, H, W) within ``tie``: a random-init network's near-uniform maps have many pixels whose
    top two classes differ by less than bf16's rounding, and either choice is then correct."""
    chosen = ref_scores.gather(0, label[None].long())[0]
    best = ref_scores.gather(0, ref_label[None].long())[0]
    return float(((label == ref_label) | (best - chosen <= tie)).float().mean())


# ----------------------------------------------------------------------------------- driver
def bench_case(kind: str, stage: str, modes, sizes: dict, device: torch.device, repeats: int,
               emit=None) -> list[dict]:
    """Rows of one (kind, stage) for ``modes``, in this process. The fp32 result that every mode
    is checked against is always computed first. ``emit(event)`` is called with
    ``{"start": mode}`` before and the row after each mode (the parent's crash bookkeeping)."""
    emit = emit or (lambda event: None)
    width = sizes["width"]
    if kind == "train":
        crop, batch = sizes[stage]
        model, loss_fn, images = train_case(stage, width, crop, batch, device)
        ref = check_train(model, loss_fn, images, "fp32", device, None)[0]
    else:
        model, run, methods = infer_case(stage, width, sizes["infer_size"], device)
        batch = 1
        with torch.no_grad():
            ref = run(prepare(model, "fp32", device), "fp32")
    rows, shape = [], case_shape(kind, stage, sizes)
    for mode in modes:
        emit({"start": mode})
        row = {"kind": kind, "stage": stage, "mode": mode, "shape": shape, "width": width}
        try:
            tol_loss, tol_out, tol_agree = TOLERANCE[family(mode, device)]
            if kind == "train":
                loss, err = check_train(model, loss_fn, images, mode, device, ref)
                row.update(loss=loss, loss_rel_err=err, check="ok" if err <= tol_loss else "FAIL")
            else:
                m = prepare(model, mode, device, methods)
                with torch.no_grad():
                    out, lab = run(m, mode)
                err = float((out - ref[0]).abs().max())
                agree = argmax_agreement(ref[0], ref[1], lab, tol_out)
                row.update(out_max_err=err, argmax_agree=agree,
                           check="ok" if err <= tol_out and agree >= tol_agree else "FAIL")
            if row["check"] == "ok":
                warmup = 2 if mode == "compile" else 1

                def warm(mode=mode):
                    reset_peak(device)
                    emit({"timed": mode})  # the parent's time box starts counting here

                if kind == "train":
                    best, med, peak = time_train(model, loss_fn, images, mode, device, repeats,
                                                 on_warm=lambda mode=mode: emit({"timed": mode}))
                else:
                    with torch.no_grad():
                        best, med = time_fn(lambda: run(m, mode), repeats, device, warmup,
                                            on_warm=warm)
                        peak = peak_bytes(device)
                row.update(s_best=best, s_median=med, img_per_s=batch / med, peak_mib=mib(peak))
        except Exception as e:  # noqa: BLE001 - a mode that cannot run is reported, not fatal
            row.update(check="n/a", note=f"{type(e).__name__}: {str(e).splitlines()[0][:120]}")
        m = None  # free this mode's copy before the next one is measured
        if device.type == "cuda":
            torch.cuda.empty_cache()
        rows.append(row)
        emit(row)
    return rows


def case_shape(kind: str, stage: str, sizes: dict) -> str:
    if kind == "train":
        return "{0}x{0} b{1}".format(*sizes[stage])
    return "{}x{}".format(*sizes["infer_size"])


def run_boxed(cmd: list[str], events: Path, timeout: float, warmup_timeout: float,
              cwd: Path) -> tuple[int | None, str, str]:
    """Run ``cmd`` while following its events file: the time of its timed phases (from a
    ``{"timed": mode}`` event to the mode's row) is boxed by ``timeout``, each warm-up phase
    (everything else: start-up, references, checks, the first steps) by ``warmup_timeout``.
    Returns (exit status or None when killed, stdout + stderr tail, the phase that ran out)."""
    import time

    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, cwd=cwd)
        timed_used, phase, since, seen = 0.0, "warm-up", time.monotonic(), 0
        over = ""
        while proc.poll() is None:
            time.sleep(0.1)
            now = time.monotonic()
            lines = events.read_text().splitlines() if events.is_file() else []
            for line in lines[seen:]:
                ev = json.loads(line)
                if phase == "timed":
                    timed_used += now - since
                phase = "timed" if "timed" in ev else "warm-up"
                since = now
            seen = len(lines)
            used = timed_used + (now - since if phase == "timed" else 0.0)
            if used > timeout or (phase == "warm-up" and now - since > warmup_timeout):
                over = phase
                proc.kill()
                proc.wait()
                break
        log.seek(0)
        tail = log.read()[-2000:]
    return (None if over else proc.returncode), tail, over


def bench_in_child(kind: str, stage: str, modes, argv_base: list[str], timeout: float,
                   shape: str = "", warmup_timeout: float = 600) -> list[dict]:
    """:func:`bench_case` in child processes, so that a native crash (seen with channels_last
    training on the CPU) or a slow ``torch.compile`` costs one row, not the run. A crashed mode
    is retried once in a fresh process; after ``timeout`` seconds of timed steps, or a warm-up
    phase longer than ``warmup_timeout`` (:func:`run_boxed`), the remaining modes are n/a."""
    rows: list[dict] = []
    todo, retried = list(modes), set()
    root = Path(__file__).resolve().parents[2]
    while todo:
        with tempfile.TemporaryDirectory() as tmp:
            events = Path(tmp) / "events.jsonl"
            cmd = [sys.executable, "-m", "tools.bench.bench_pipeline", *argv_base, "--stages", stage,
                   "--kinds", kind, "--modes", *todo, "--child_events", str(events)]
            rc, out, over = run_boxed(cmd, events, timeout, warmup_timeout, root)
            if over:
                box = timeout if over == "timed" else warmup_timeout
                failure = f"over the {box:.0f} s time box ({over})"
            else:
                failure = None if rc == 0 else (
                    f"process died (exit {rc}): "
                    + (out.strip().splitlines() or ["no output"])[-1][:100])
            lines = events.read_text().splitlines() if events.is_file() else []
        started = None
        for line in lines:
            ev = json.loads(line)
            if "timed" in ev:
                continue
            if "start" in ev:
                started = ev["start"]
            else:
                rows.append(ev)
                print(format_table([ev], COLUMNS).splitlines()[-1], flush=True)
                todo.remove(ev["mode"])
                started = None
        if failure is None:
            break
        if started is None:  # died before the first mode (building the case, the fp32 reference)
            started = todo[0]
        if started in retried or failure.startswith("over"):
            rows.append({"kind": kind, "stage": stage, "mode": started, "shape": shape,
                         "check": "n/a", "note": failure})
            print(format_table([rows[-1]], COLUMNS).splitlines()[-1], flush=True)
            todo.remove(started)
            if failure.startswith("over"):
                for mode in list(todo):
                    rows.append({"kind": kind, "stage": stage, "mode": mode, "check": "n/a",
                                 "note": "not run: the time box was spent"})
                break
        else:
            retried.add(started)
            print(f"  ({kind}/{stage}/{started}: {failure}; retrying once)", flush=True)
    for r in rows:
        if r["mode"] in retried:
            r["note"] = (r.get("note", "") + " retried after a crash").strip()
    return sorted(rows, key=lambda r: list(modes).index(r["mode"]))


def add_speedups(rows: list[dict]) -> None:
    for r in rows:
        base = next((q for q in rows if q["stage"] == r["stage"] and q["kind"] == r["kind"]
                     and q["mode"] == "fp32" and q.get("img_per_s")), None)
        if base and r.get("img_per_s"):
            r["speedup"] = r["img_per_s"] / base["img_per_s"]


def mib(n: int | None) -> float | None:
    return None if n is None else n / 2 ** 20


COLUMNS = ("kind", "stage", "mode", "shape", "check", "loss_rel_err", "out_max_err",
           "argmax_agree", "img_per_s", "speedup", "peak_mib", "note")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="demo", choices=sorted(PRESETS))
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--backbone_width", "--width", dest="backbone_width", type=float, default=None,
                   help="ResNet-38 width (preset's)")
    for s in STAGES:
        p.add_argument(f"--{s}_crop", type=int, default=None, help=f"{s} training crop (preset's)")
        p.add_argument(f"--{s}_batch", type=int, default=None, help=f"{s} training batch (preset's)")
    p.add_argument("--infer_size", type=int, nargs=2, default=None, metavar=("H", "W"))
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    p.add_argument("--kinds", nargs="+", default=["train", "infer"], choices=["train", "infer"])
    p.add_argument("--modes", nargs="+", default=None, choices=MODES,
                   help="default: all; on the CPU all but compile")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--case_timeout", type=float, default=600,
                   help="time box in seconds of the non-compiled modes of one (kind, stage)")
    p.add_argument("--compile_timeout", type=float, default=300,
                   help="time box in seconds of the compile mode of one (kind, stage)")
    p.add_argument("--warmup_timeout", type=float, default=300,
                   help="time box in seconds of each mode's warm-up (start-up, tolerance check, "
                        "first steps with cuDNN autotuning), outside --case_timeout")
    p.add_argument("--cudnn_ws_cap_mib", type=int, default=4096,
                   help="cap of cuDNN's workspace per convolution, MiB (CUDNN_CONV_WSCAP_DBG; "
                        "0 = no cap): bounds the benchmark's trial allocations")
    p.add_argument("--cudnn_benchmark_limit", type=int, default=10,
                   help="algorithms cuDNN's benchmark tries per layer (0 = all)")
    p.add_argument("--in_process", action="store_true",
                   help="no child processes (no crash isolation, no time boxes)")
    p.add_argument("--json", default=None, help="write the rows and the environment here")
    p.add_argument("--child_events", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def resolve_sizes(args) -> dict:
    sizes = copy.deepcopy(PRESETS[args.preset])
    if args.backbone_width is not None:
        sizes["width"] = args.backbone_width
    for s in STAGES:
        crop, batch = sizes[s]
        sizes[s] = (getattr(args, f"{s}_crop") or crop, getattr(args, f"{s}_batch") or batch)
    if args.infer_size:
        sizes["infer_size"] = tuple(args.infer_size)
    return sizes


def configure_cudnn(ws_cap_mib: int, benchmark_limit: int) -> None:
    """cuDNN benchmark on (the fastest algorithm per layer shape), with its trial workspaces
    bounded: ``CUDNN_CONV_WSCAP_DBG`` (MiB per convolution, read by PyTorch's cuDNN v8 path;
    set before the first convolution and inherited by the child processes) and
    ``torch.backends.cudnn.benchmark_limit``."""
    import os

    if ws_cap_mib > 0:
        os.environ.setdefault("CUDNN_CONV_WSCAP_DBG", str(ws_cap_mib))
    torch.backends.cudnn.benchmark = True
    if hasattr(torch.backends.cudnn, "benchmark_limit"):
        torch.backends.cudnn.benchmark_limit = benchmark_limit


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available")
    return device


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.repeats < 1:
        raise UserError(f"--repeats must be >= 1, got {args.repeats}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if device.type == "cuda":
        configure_cudnn(args.cudnn_ws_cap_mib, args.cudnn_benchmark_limit)
    sizes = resolve_sizes(args)
    if args.child_events:  # one (kind, stage) for the parent; rows as JSON lines as they finish
        with open(args.child_events, "a", encoding="utf-8") as f:
            def emit(event):
                f.write(json.dumps(event, default=str) + "\n")
                f.flush()
            bench_case(args.kinds[0], args.stages[0], args.modes or list(MODES), sizes, device,
                       args.repeats, emit)
        return 0

    # What a child needs to rebuild the same cases.
    base = ["--preset", args.preset, "--device", str(device), "--repeats", str(args.repeats),
            "--backbone_width", str(sizes["width"]), "--infer_size", *map(str, sizes["infer_size"])]
    for s in STAGES:
        base += [f"--{s}_crop", str(sizes[s][0]), f"--{s}_batch", str(sizes[s][1])]
    if args.threads:
        base += ["--threads", str(args.threads)]
    base += ["--cudnn_ws_cap_mib", str(args.cudnn_ws_cap_mib),
             "--cudnn_benchmark_limit", str(args.cudnn_benchmark_limit)]
    print(f"bench_pipeline: device {device}, width {sizes['width']}, train crop/batch "
          + ", ".join(f"{s} {sizes[s][0]}/{sizes[s][1]}" for s in STAGES)
          + f", inference {sizes['infer_size'][0]}x{sizes['infer_size'][1]}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, {args.repeats} repeats")
    print(format_table([], COLUMNS), flush=True)
    # torch.compile of ResNet-38 takes minutes per case on a few CPU cores: on the CPU it runs
    # only when asked for (--modes ... compile).
    modes = args.modes or [m for m in MODES if device.type == "cuda" or m != "compile"]
    rows = []
    for kind in args.kinds:
        for stage in args.stages:
            shape = case_shape(kind, stage, sizes)
            plain = [m for m in modes if m != "compile"]
            if args.in_process:
                rows += bench_case(kind, stage, modes, sizes, device, args.repeats,
                                   lambda ev: "start" in ev or "timed" in ev or print(
                                       format_table([ev], COLUMNS).splitlines()[-1], flush=True))
                continue
            if plain:
                rows += bench_in_child(kind, stage, plain, base, args.case_timeout, shape,
                                       args.warmup_timeout)
            if "compile" in modes:
                rows += bench_in_child(kind, stage, ["compile"], base, args.compile_timeout, shape,
                                       args.warmup_timeout)
    add_speedups(rows)
    print("\n" + format_table(rows, COLUMNS))
    print("img_per_s: training images (forward + backward + SGD step) or inference images per "
          "second, median of repeats; speedup vs fp32; peak_mib: "
          + ("CUDA max allocated" if device.type == "cuda" else "process peak RSS"))
    if args.json:
        write_json(args.json, rows, device, sizes=sizes, tolerance=TOLERANCE)
    failed = [r for r in rows if r.get("check") == "FAIL"]
    if failed:
        print(f"bench_pipeline: {len(failed)} mode(s) outside the fp32 tolerance: "
              + ", ".join(f"{r['kind']}/{r['stage']}/{r['mode']}" for r in failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    run_main(main, "bench_pipeline")
