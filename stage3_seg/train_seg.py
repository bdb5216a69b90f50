"""Stage 3 — train DeepLab-v1 (ResNet-38) on pseudo labels (docs/METHOD.md section 6).

Per iteration, for a batch of crops x (N, 3, S, S) with pseudo labels y (N, S, S) (255 = void):

    logits, cam = net(x)                 logits (N, C+1, S, S) upsampled, cam (N, C+1, h, w)
    L = CE(logits, y; ignore 255)  +  FSL_WEIGHT * L_fs(x01, cam; FSL_MU, FSL_SIGMA)

where x01 is the crop bilinearly resized to the cam's (h, w) (stride 8; align_corners=True, the
original's, ``--no-fsl_align_corners`` for cell centres) and de-normalised, and L_fs
is ``lib.losses.feature_similarity.feature_similarity_loss``. SGD (momentum 0.9, wd 5e-4) over
the Conv2d parameters only, four groups with lr x1 / x2 / x10 / x20 (backbone weights, backbone
biases, new-layer weights conv_fov/conv_fov2/cls_conv, new biases), the learning rate
updated every iteration (lr_t = LR (1 - t/(ITERATIONS+1))^0.9, SEAM's
segmentation codebase). Every BatchNorm trains its running statistics with momentum BN_MOMENTUM.

Usage::

    python -m stage3_seg.train_seg --config voc/config_voc2012.py --data_root DIR \\
        --pseudo_gt EXP/plabels/train/rw --session_name EXP/ckpts/final \\
        [--crop_size 321 --batch_size 10 --lr 0.001 --max_steps 20000 ...] [--set KEY=VALUE ...]
    torchrun --nproc_per_node 4 -m stage3_seg.train_seg ...   # global BATCH split 3, 3, 2, 2

The config file holds the dataset's defaults; every setting a rerun changes is also a flag with
the name stages 1-2 use (``--crop_size`` = CROP, ``--batch_size`` = BATCH, ``--lr`` = LR,
``--max_steps`` = ITERATIONS, ``--num_workers`` = WORKERS, ``--backbone_width``, ``--data_root``,
``--weights`` = IMAGENET_WEIGHTS, ...); ``--set KEY=VALUE`` reaches every key and is applied last.

Writes ``<session_name>.pth`` (plain state_dict), ``<session_name>.state.pth`` (for --resume),
``<session_name>.config.json`` (effective config + arguments) and TensorBoard logs in
``<session_name>_tb`` (scalars every iteration, prediction overlays every --image_every steps).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.profiler import record_function

from lib import dist
from lib.cli import add_bool, not_in_paper
from lib.config import add_config_args, config_from_args
from lib.datasets import SegmentationDataset, resolve_list
from lib.datasets.transforms import denormalize
from lib.errors import UserError, check_args, check_writable_dir, run_main
from lib.losses.feature_similarity import feature_similarity_loss, fsl_image
from lib.models import build_model, disable_dropout
from lib.optim import build_optimizer
from lib.overlay import hstack_pad, overlay_label
from lib.training import (TrainingRun, add_common_train_args, autocast, channels_last,
                          iterate_steps, load_backbone_weights, make_loader)

IGNORE_INDEX = 255


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pseudo_gt", required=True,
                   help="folder of <id>.png pseudo labels (stage 2 random-walk output)")
    p.add_argument("--session_name", required=True, help="checkpoint path without .pth")
    p.add_argument("--train_list", default=None,
                   help="split name of the dataset layout, or a list file of ids "
                        "(default: config TRAIN_SPLIT)")
    add_bool(p, "fsl", True, "the feature similarity loss (--no-fsl: cross entropy only, same as "
             "--set FSL_WEIGHT=0)", old="--no_fsl")
    p.add_argument("--fsl_mode", default="blocked", choices=["blocked", "dense"],
                   help="blocked = the exact sum in pixel tiles, memory O(HW K); dense = the original (HW)^2 matrices")
    not_in_paper(p).add_argument(
        "--fsl_align_corners", action=argparse.BooleanOptionalAction, default=True,
        help="FSL colour input: the crop resized to the cam size with align_corners=True (the "
             "original); --no-fsl_align_corners samples at the cells' centres")
    p.add_argument("--tblog_dir", default=None, help="TensorBoard dir (default <session_name>_tb)")
    p.add_argument("--image_every", type=int, default=500,
                   help="log a prediction overlay to TensorBoard every N steps (0: never)")
    p.add_argument("--sync_bn", action=argparse.BooleanOptionalAction, default=True,
                   help="SyncBatchNorm under torchrun on CUDA: statistics over the global batch, "
                        "as the original's one-GPU configs (GPUS=1) compute them; --no-sync_bn: "
                        "per-process statistics, as its DataParallel over several GPUs (always "
                        "so on the CPU, where SyncBatchNorm is unavailable)")
    add_common_train_args(p)
    add_config_args(p)
    args = p.parse_args(argv)
    check_args(args, {"image_every": ">= 0", "save_every": ">= 0", "threads": ">= 0",
                      "lr_mults": ">= 0", "accum_steps": ">= 1"})
    return args


def seg_loss(model: nn.Module, image: torch.Tensor, label: torch.Tensor, fsl_weight: float,
             mu: float, sigma: float, fsl_mode: str = "blocked", fsl_align_corners: bool = True):
    """CE(logits, label; ignore 255) + fsl_weight * L_fs(image01 at the cam size, cam), over
    the global batch.

    image (N_r, 3, S, S) normalised, label (N_r, S, S) int64: this process's share. The CE is
    the mean over the non-void pixels of the *global* batch: CE_r = (this process's sum) /
    (all-reduced non-void count); the FSL is a per-image mean, weighted by N_r / N
    (``lib.dist.batch_share``); so the K local losses add up to the loss of the whole batch.
    Returns (K x the local loss, the loss to back-propagate: DDP averages its gradients into the
    global one; the loss itself on one process, parts: the logged terms of the whole batch,
    logits).
    """
    with record_function("forward"):
        logits, cam = model(image)
    with record_function("loss.ce"):
        n_valid = dist.all_reduce_sum((label != IGNORE_INDEX).sum().double())
        ce = F.cross_entropy(logits.float(), label, ignore_index=IGNORE_INDEX,
                             reduction="sum") / n_valid.float()
    total = ce
    parts = {"ce": ce.detach()}
    if fsl_weight:
        share = dist.batch_share(image.shape[0], image.device)
        with record_function("loss.fsl"):
            # The FSL compares colours at the prediction's resolution: the crop is resized to
            # the stride-8 cam, not the cam upsampled to the crop.
            image01 = fsl_image(image, cam.shape[-2:], align_corners=fsl_align_corners)
            fsl = share * feature_similarity_loss(image01, cam.float(), mu=mu, sigma=sigma,
                                                  mode=fsl_mode)
        total = total + fsl_weight * fsl
        parts["fsl"] = fsl.detach()
    parts["total"] = total.detach()
    # one read-back of the logged values per step (dist.global_parts)
    return total * dist.world_size(), dist.global_parts(parts, image.device), logits


def overlay_panel(image: torch.Tensor, logits: torch.Tensor, label: torch.Tensor) -> np.ndarray:
    """(H, 2W, 3) uint8 for TensorBoard: [prediction overlay | pseudo-label overlay] of one crop."""
    img = (denormalize(image.detach().float().cpu()) * 255).round().byte().permute(1, 2, 0).numpy()
    pred = logits.detach().argmax(0).cpu().numpy().astype(np.uint8)
    lab = label.detach().cpu().numpy().astype(np.uint8)
    return hstack_pad([overlay_label(img, pred), overlay_label(img, lab)])


def resolve_imagenet_weights(args: argparse.Namespace, cfg: dict) -> str | None:
    """ImageNet weights to load, or None for random init.

    An explicit ``--weights FILE`` must exist; ``--weights none`` (or IMAGENET_WEIGHTS None) is
    random init; the config's default path falls back to random init with a warning when the
    file is absent (CPU demos have no ImageNet weights).
    """
    path = cfg["IMAGENET_WEIGHTS"]
    if path is None:
        return None
    explicit = args.weights is not None or any(s.split("=", 1)[0].strip() == "IMAGENET_WEIGHTS"
                                                for s in args.config_set)
    if Path(path).is_file():
        return path
    if explicit:
        raise UserError(f"{path}: ImageNet weights do not exist")
    if dist.is_main():
        print(f"train_seg: WARNING: ImageNet weights {path} (config IMAGENET_WEIGHTS) not found; "
              f"training from RANDOM initialisation (pass --weights none to silence this)",
              file=sys.stderr)
    return None


def build_dataset(cfg: dict, args: argparse.Namespace) -> SegmentationDataset:
    """SegmentationDataset over the pseudo labels with the config's augmentation.

    ``--train_list`` (default: config TRAIN_SPLIT) is a split name of the layout or a list file
    of ids (``lib.datasets.resolve_list``, as in stages 1-2).
    """
    layout, ids = resolve_list(cfg["DATASET"], cfg["DATA_ROOT"],
                               args.train_list or cfg["TRAIN_SPLIT"])
    if layout.num_classes + 1 != cfg["NUM_CLASSES"]:
        raise UserError(f"config NUM_CLASSES={cfg['NUM_CLASSES']} but the dataset at "
                         f"{cfg['DATA_ROOT']} has {layout.num_classes} classes + background; "
                         f"pass --set NUM_CLASSES={layout.num_classes + 1}")
    if not Path(args.pseudo_gt).is_dir():
        raise UserError(f"{args.pseudo_gt}: --pseudo_gt is not a directory")
    # seed=--seed: each sample's augmentation draws from (seed, epoch, index), so they differ
    # between epochs (set_epoch reaches the loader's workers) and a resumed run repeats them.
    # The dataset checks that every image and pseudo label exists.
    return SegmentationDataset(layout, label_dir=args.pseudo_gt, crop=cfg["CROP"],
                               scale=cfg["RANDOM_SCALE"], flip=cfg["FLIP"], hsv=cfg["HSV"],
                               train=True, seed=args.seed, ids=ids)


def main(argv=None) -> None:
    args = parse_args(argv)
    cfg = config_from_args(args)
    check_writable_dir(Path(args.session_name).parent, "checkpoint folder (--session_name)")
    if not args.fsl:
        cfg["FSL_WEIGHT"] = 0.0
    if args.threads:
        torch.set_num_threads(args.threads)
    rank, world, device = dist.setup_distributed(args.device)
    dist.seed_everything(args.seed, rank)
    if world != cfg["GPUS"] and dist.is_main():
        print(f"train_seg: running {world} process(es) while config GPUS={cfg['GPUS']}; the global "
              f"batch {cfg['BATCH']} is split over the processes, so the effective batch is "
              f"unchanged", file=sys.stderr)

    dataset = build_dataset(cfg, args)
    loader, sampler = make_loader(dataset, cfg["BATCH"], rank, world, args.seed, cfg["WORKERS"])

    model = build_model("deeplabv1", num_classes=cfg["NUM_CLASSES"] - 1,
                        width=cfg["BACKBONE_WIDTH"], bn_momentum=cfg["BN_MOMENTUM"])
    if not args.dropout:
        disable_dropout(model)
    weights = load_backbone_weights(model, resolve_imagenet_weights(args, cfg), "train_seg")
    if weights is None and dist.is_main():
        if cfg["BN_MOMENTUM"] * cfg["ITERATIONS"] < 3.0:
            # Inference uses the running statistics; with a tiny momentum they stay at their
            # initial values (mean 0, var 1) unless the trunk was pretrained.
            print(f"train_seg: WARNING: BN_MOMENTUM={cfg['BN_MOMENTUM']} over {cfg['ITERATIONS']} "
                  "iterations leaves the BatchNorm running statistics near their random-init "
                  "values, and eval-mode predictions degrade (often to all background); from "
                  "scratch use --bn_momentum 0.1", file=sys.stderr)
    if world > 1 and device.type == "cuda" and args.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if args.channels_last and device.type == "cpu":
        # PyTorch's CPU kernels corrupt the heap intermittently when this network trains its
        # BatchNorms in channels_last (docs/PERFORMANCE.md); the layout pays off on GPUs only.
        raise UserError("--channels_last: stage 3 on the CPU crashes in channels_last (training "
                        "BatchNorm); use it on CUDA only")
    model = channels_last(model, args.channels_last)

    max_step = cfg["ITERATIONS"]
    # SEAM's segmentation schedule: lr_t = LR (1 - t / (ITERATIONS + 1))^POWER, t = 0..ITERATIONS-1.
    optimizer = build_optimizer(args.optimizer, model.param_groups(), lr=cfg["LR"],
                                weight_decay=cfg["WEIGHT_DECAY"], max_step=max_step + 1,
                                momentum=cfg["MOMENTUM"], power=cfg["POWER"],
                                lr_mults=args.lr_mults)
    run = TrainingRun(args, "train_seg", cfg["BATCH"], max_step)
    model, start = run.start(model, optimizer, device, world,
                             {"config": cfg, "num_images": len(dataset),
                              "imagenet_weights_loaded": weights})
    model.train()
    step = start
    last = {}  # the last micro-batch's crops, labels and logits, for the TensorBoard overlay

    def loss_fn(mb):
        img = channels_last(mb["image"].to(device, non_blocking=True), args.channels_last)
        label = mb["label"].to(device, non_blocking=True).long()
        with autocast(args.amp, device):
            loss, parts, logits = seg_loss(model, img, label, cfg["FSL_WEIGHT"], cfg["FSL_MU"],
                                           cfg["FSL_SIGMA"], args.fsl_mode, args.fsl_align_corners)
        last.update(img=img, label=label, logits=logits)
        return loss, parts

    for step, batch in iterate_steps(loader, sampler, max_step, start):
        run.accumulated_step(step, model, optimizer, batch, loss_fn)
        if run.logger.writer is not None and args.image_every and step % args.image_every == 0:
            run.logger.writer.add_image("train/pred_vs_pseudo_label",
                                        overlay_panel(last["img"][0], last["logits"][0],
                                                      last["label"][0]), step,
                                        dataformats="HWC")
        last.clear()
    run.finish(model, optimizer, step)


if __name__ == "__main__":
    run_main(main, "train_seg")
