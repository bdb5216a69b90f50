"""Stage 3 — multi-scale + flip inference of DeepLab-v1, optional dense CRF (docs/METHOD.md section 6.5).

For an image I (H, W), scales S (TEST_SCALES) and flips F = {id, mirror} (TEST_FLIP):

    P = 1 / (|S| |F|) * sum_{s in S} sum_{f in F}  f^-1( up_{H,W}( softmax(net(f(resize_s(I)))) ) )
    label = argmax_k  CRF(I, P)_k    (or argmax_k P_k with --no-crf)

resize_s: bicubic to (round(H s), round(W s)) (the cv2 bicubic of the training rescale);
up_{H,W}: bilinear, align_corners=True (the network's own upsampling convention). The CRF is
``lib.crf.dense_crf`` (the stage-1 pairwise settings) and runs in a pool of ``--crf_workers`` CPU
processes while the main process runs the network; labels are saved as palette PNGs.

Usage::

    python -m stage3_seg.infer_seg --config voc/config_voc2012.py --weights EXP/ckpts/final.pth \\
        --infer_list val --out_pred EXP/results/val [--no-crf] [--scales 1.0] [--no-flip] \\
        [--crf_workers 4] [--overwrite] [--eval [--out_json F]]
    torchrun --nproc_per_node 4 -m stage3_seg.infer_seg ...     # images sharded over ranks

Without ``--config`` the run config recorded by train_seg next to the weights
(``<weights minus .pth>.config.json``) is used; with it, the architecture keys NUM_CLASSES and
BACKBONE_WIDTH still come from that run config unless given on the command line. Finished
outputs are skipped unless --overwrite.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from lib import dist
from lib.cli import add_bool
from lib.config import add_config_args, coerce_value, config_from_args, load_config
from lib.crf import dense_crf
from lib.datasets import InferenceDataset, resolve_list
from lib.datasets.layout import check_files_exist
from lib.errors import UserError, check_args, check_writable_dir, run_main
from lib.evaluation import evaluate_dir, format_results, save_results_json
from lib.inference import InferenceRun
from lib.io import check_finite_output, save_label_png
from lib.models import build_model
from lib.training import autocast
from lib.workers import crf_workers, workers_arg


def _logits_of(out) -> torch.Tensor:
    """The logits of a model output: SegOutput / tuple -> first entry, tensor -> itself."""
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def multiscale_flip_probs(model: nn.Module, image: torch.Tensor, scales: Sequence[float],
                          flip: bool = True) -> torch.Tensor:
    """Average class probabilities over scales and horizontal flips.

    image (1, 3, H, W) normalised -> (K, H, W) float32, K = C + 1:

        P = mean_{s, f} f^-1( up_{H,W}( softmax_k( logits(f(resize_s(image))) ) ) )

    ``model(x)`` returns logits (N, K, h, w) at x's size (or a tuple whose first entry is that).
    The image and its mirror go through the network as one batch of two (the net is in eval
    mode, so the two samples do not interact).
    """
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f"image must be (1, 3, H, W), got {tuple(image.shape)}")
    if not scales:
        raise ValueError("at least one test scale is needed")
    h, w = image.shape[-2:]
    total = None
    count = 0
    for s in scales:
        if s <= 0:
            raise ValueError(f"test scale must be positive, got {s}")
        size = (max(1, round(h * s)), max(1, round(w * s)))
        x = image if size == (h, w) else F.interpolate(image, size=size, mode="bicubic",
                                                       align_corners=False)
        batch = torch.cat([x, x.flip(-1)], 0) if flip else x
        prob = torch.softmax(_logits_of(model(batch)).float(), dim=1)
        if prob.shape[-2:] != (h, w):
            prob = F.interpolate(prob, size=(h, w), mode="bilinear", align_corners=True)
        if flip:
            prob = torch.stack([prob[0], prob[1].flip(-1)], 0)
        part = prob.sum(0)
        total = part if total is None else total + part
        count += prob.shape[0]
    return total / count


def probs_to_label(probs: np.ndarray, image_uint8: np.ndarray | None = None,
                   use_crf: bool = False) -> np.ndarray:
    """Label map (H, W) uint8 = argmax_k of P (K, H, W), or of dense_crf(image, P) with ``use_crf``."""
    probs = np.asarray(probs, np.float32)
    if use_crf:
        if image_uint8 is None:
            raise ValueError("the CRF needs the uint8 image")
        probs = dense_crf(image_uint8, probs)
    return probs.argmax(0).astype(np.uint8)


def _finish(out_path: str, probs: np.ndarray, image_uint8: np.ndarray, use_crf: bool) -> str:
    """Worker task: post-process one image and write its PNG (atomically)."""
    save_label_png(out_path, probs_to_label(probs, image_uint8, use_crf))
    return out_path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="trained DeepLab checkpoint (<session>.pth)")
    p.add_argument("--infer_list", "--split", "--list", dest="infer_list", default=None,
                   help="split name of the layout or image list file (default: config VAL_SPLIT)")
    p.add_argument("--out_pred", "--out_dir", dest="out_pred", required=True,
                   help="folder of <id>.png label maps")
    add_bool(p, "crf", None, "the dense CRF (default: config TEST_CRF)", old="--no_crf")
    p.add_argument("--scales", type=float, nargs="+", default=None,
                   help="test scales (config TEST_SCALES)")
    add_bool(p, "flip", None, "the horizontal-flip pass (default: config TEST_FLIP)",
             old="--no_flip")
    p.add_argument("--crf_workers", "--workers", dest="crf_workers", type=workers_arg,
                   default="auto",
                   help="CPU processes for the CRF and PNG writing (0: in the main process; "
                        "auto (default): every core of this process's share, lib/workers.py)")
    p.add_argument("--overwrite", action="store_true", help="recompute existing outputs")
    p.add_argument("--eval", action="store_true",
                   help="then evaluate the split's predictions against its ground truth")
    p.add_argument("--out_json", default=None, help="with --eval: write the result dict here")
    p.add_argument("--eval_workers", type=int, default=None, help="evaluation processes")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    add_config_args(p, flags=["data_root", "dataset", "backbone_width"], config_required=False)
    args = p.parse_args(argv)
    args.crf_workers = crf_workers(args.crf_workers)
    check_args(args, {"scales": "> 0", "crf_workers": ">= 0", "eval_workers": ">= 1",
                      "threads": ">= 0"})
    return args


ARCH_KEYS = ("NUM_CLASSES", "BACKBONE_WIDTH")


def recorded_config_path(weights: str) -> Path:
    """``<weights minus .pth>.config.json``: the run config train_seg writes next to a checkpoint."""
    return Path(str(Path(weights).with_suffix("")) + ".config.json")


def resolve_config(args: argparse.Namespace) -> dict:
    """Effective inference config.

    Base: --config, else the run config recorded next to --weights. Then shorthand flags and
    --set, then --scales / --no-flip / --no-crf. The architecture keys (NUM_CLASSES,
    BACKBONE_WIDTH) follow the recorded run config when it exists and they were not set on the
    command line, so a checkpoint trained with overrides loads without repeating them.
    """
    recorded = recorded_config_path(args.weights)
    if args.config:
        base = load_config(args.config)
    elif recorded.is_file():
        base = load_config(recorded)
    else:
        raise UserError(f"{recorded}: no --config given and no run config next to the weights")
    explicit = {s.split("=", 1)[0].strip() for s in args.config_set}
    if args.backbone_width is not None:
        explicit.add("BACKBONE_WIDTH")
    if args.config and recorded.is_file():
        trained = load_config(recorded)
        for key in ARCH_KEYS:
            if key not in explicit and trained[key] != base[key]:
                print(f"infer_seg: {key}={trained[key]} from {recorded} (config file says "
                      f"{base[key]})", file=sys.stderr)
                base[key] = trained[key]
    cfg = config_from_args(args, base)
    if args.scales is not None:
        cfg["TEST_SCALES"] = coerce_value("TEST_SCALES", args.scales)
    if args.flip is not None:
        cfg["TEST_FLIP"] = args.flip
    if args.crf is not None:
        cfg["TEST_CRF"] = args.crf
    return cfg


def main(argv=None) -> None:
    args = parse_args(argv)
    cfg = resolve_config(args)
    run = InferenceRun("infer_seg", args.device, args.threads)
    split = args.infer_list or cfg["VAL_SPLIT"]
    layout, ids = resolve_list(cfg["DATASET"], cfg["DATA_ROOT"], split)

    out_dir = Path(args.out_pred)
    todo = run.select(ids, lambda i: [out_dir / f"{i}.png"], args.overwrite)
    if args.out_json:
        check_writable_dir(Path(args.out_json).parent, "folder of --out_json")
    # Cheap checks before the network runs: every image (and, for --eval, every GT) exists.
    dataset = InferenceDataset(layout, todo)
    if args.eval:
        check_files_exist([layout.gt_path(i) for i in ids], "ground truth")
    model = run.load_model(build_model("deeplabv1", num_classes=cfg["NUM_CLASSES"] - 1,
                                       width=cfg["BACKBONE_WIDTH"]), args.weights,
                           built_with=f"DeepLab-v1 built with NUM_CLASSES={cfg['NUM_CLASSES']}, "
                                      f"BACKBONE_WIDTH={cfg['BACKBONE_WIDTH']}")
    if dist.is_main():
        print(f"infer_seg: {len(ids)} images; scales {cfg['TEST_SCALES']}, flip {cfg['TEST_FLIP']}, "
              f"CRF {cfg['TEST_CRF']}, {run.world} process(es)", file=sys.stderr)

    # Bound the probability maps waiting in the queue (each is K x H x W floats).
    with run.pool(args.crf_workers if todo else 0, max_pending=2 * args.crf_workers) as pool:
        for item in run.progress(run.loader(dataset, 0), len(todo)):
            with autocast(args.amp, run.device):
                probs = multiscale_flip_probs(model, item["image"][None].to(run.device),
                                              cfg["TEST_SCALES"], cfg["TEST_FLIP"])
            check_finite_output(probs, f"{out_dir / item['id']}.png (image {item['id']})")
            pool.submit(_finish, str(out_dir / f"{item['id']}.png"), probs.float().cpu().numpy(),
                        item["image_uint8"], cfg["TEST_CRF"])
    run.finish()  # every process has written its share

    if args.eval and run.rank == 0:
        gt_dir = layout.gt_path(ids[0]).parent
        res = evaluate_dir(out_dir, gt_dir, ids, cfg["NUM_CLASSES"] - 1, pred_type="png",
                           workers=args.eval_workers, class_names=list(layout.class_names))
        print(format_results(res, title=f"DeepLab-v1 {split} ({out_dir})"))
        if args.out_json:
            save_results_json(res, args.out_json)


if __name__ == "__main__":
    run_main(main, "infer_seg")
